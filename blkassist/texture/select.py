"""Choose texture crops from a corpus: where the texture is, a class per primitive, the
artist's masks obeyed, bounded overlap, the same crops for the same seed.

Per source: measure the cell grid once (blkassist.texture.measure), score every grid-aligned
crop of every configured size by its high-frequency energy times how clear an example of
its class it is (times the artist's mask, read the way the Real-ESRGAN patch sampler reads
it: blkassist.sr.train.patches.read_mask), and keep a best-first list of crops that
overlap no kept crop by more than `max_overlap`. Across sources: fill each class's share of `count`
round-robin over the sources (each source's best crop of a class first), so one dense
scan does not supply the whole set. Crops are never resampled: a texture's pixel scale is
what the LoRA is meant to learn. A source smaller than a crop size gets no crops of that
size; one smaller than every size is skipped (and logged).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyvips

from blkassist.corpus.collections import mask_for
from blkassist.corpus.datasets import split_of, with_sources
from blkassist.corpus.normalise import distinct_rows
from blkassist.errors import ConfigError, InputImageError
from blkassist.fsutil import atomic_path, write_json
from blkassist.sr.train.patches import read_mask
from blkassist.texture.measure import (
    PRIMITIVES,
    cell_grid,
    classify,
    read_luma,
    window_features,
    window_sums,
)

log = logging.getLogger(__name__)

SCORE_JITTER = 0.1  # the seed reorders crops whose scores are within ~10% of each other


@dataclass(frozen=True)
class TextureSource:
    id: str
    sha256: str
    image: str  # the normalised PNG
    source: str  # the artist's scan
    width: int
    height: int
    mask: str | None


@dataclass(frozen=True)
class TextureCrop:
    id: str
    source_id: str
    split: str
    primitive: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in source pixels
    orientation: float  # stroke direction of the strongest peak, degrees in [0, 180)
    energy: float
    cell_coherence: float
    purity: float
    score: float

    @property
    def size(self) -> int:
        return self.box[2] - self.box[0]


def texture_sources(manifests: list[str]) -> list[TextureSource]:
    """Corpus images (each distinct scan once, across collections) with their masks."""
    sources = []
    for row in distinct_rows(manifests):
        mask = mask_for(row.source)
        sources.append(TextureSource(row.id, row.sha256, row.image, row.source, row.width,
                                     row.height, str(mask) if mask else None))  # fmt: skip
    return sources


def check_settings(settings: dict, key: str) -> None:
    """Cross-field checks the schema cannot express; `key` names the config block."""
    bad = [size for size in settings["crop_sizes"] if size % settings["cell"]]
    if bad:
        raise ConfigError(
            f"{key}.crop_sizes {bad} are not multiples of {key}.cell ({settings['cell']}): "
            "crops lie on the measuring grid; pick sizes that are"
        )
    if not any(settings["classes"].values()):
        raise ConfigError(f"{key}.classes: every share is 0; give at least one class a share")


def check_masks(sources: list[TextureSource], mask_mode: str) -> None:
    """Every artist mask opens, before any scan is measured; a bad one is named."""
    if mask_mode == "ignore":
        return
    bad = []
    for source in sources:
        if source.mask:
            try:
                pyvips.Image.new_from_file(source.mask)
            except pyvips.Error:
                bad.append(f"{source.mask}: not a readable image")
    if bad:
        listing = "\n".join(f"  - {line}" for line in bad)
        raise InputImageError(
            f"{len(bad)} artist mask(s) cannot be read; fix or remove them (a mask is a "
            f"grayscale image beside its scan, white = use):\n{listing}"
        )


def _overlaps(box: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Overlap of `box` with each kept box, as a share of the smaller one's area."""
    w = np.minimum(box[2], kept[:, 2]) - np.maximum(box[0], kept[:, 0])
    h = np.minimum(box[3], kept[:, 3]) - np.maximum(box[1], kept[:, 1])
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    side = np.minimum(box[2] - box[0], kept[:, 2] - kept[:, 0])
    return inter / (side * side)


def source_candidates(source: TextureSource, settings: dict, seed: int) -> list[TextureCrop]:
    """The source's crops, best first, pairwise within the overlap bound."""
    cell = settings["cell"]
    sizes = [s for s in sorted(settings["crop_sizes"]) if s <= min(source.width, source.height)]
    if not sizes:
        return []
    grid = cell_grid(read_luma(source.image), cell)
    mask = None
    if source.mask and settings["mask_mode"] != "ignore":
        mask = read_mask(source.mask, source.width, source.height, cell).astype(np.float64)
    textured_cells = (grid.tensor[..., 0] + grid.tensor[..., 1]) / cell**2 >= settings["min_energy"]
    split = split_of(source.id, settings["validation_fraction"], seed)
    shares = settings["classes"]
    boxes, fields = [], []
    for size in sizes:
        span = size // cell
        features = window_features(grid, span)
        primitive, purity = classify(features)
        score = features.energy * purity  # much texture, and a clear example of its class
        allowed = features.energy >= settings["min_energy"]
        coverage = window_sums(textured_cells.astype(np.float64), span) / (span * span)
        allowed &= coverage >= settings["min_coverage"]  # texture throughout, not an edge
        allowed &= np.isin(primitive, [i for i, p in enumerate(PRIMITIVES) if shares[p] > 0])
        if mask is not None:
            if settings["mask_mode"] == "restrict":  # every cell mostly inside the mask
                allowed &= window_sums((mask <= 0.5).astype(np.float64), span) == 0
            else:
                score = score * window_sums(mask, span) / (span * span)
                allowed &= score > 0
        r, c = np.nonzero(allowed)
        for name, values in (("primitive", primitive), ("score", score), ("purity", purity),
                             ("energy", features.energy),
                             ("cell_coherence", features.cell_coherence),
                             ("orientation", features.orientation)):  # fmt: skip
            fields.append((size, name, values[r, c]))
        boxes.append(np.stack([c * cell, r * cell, c * cell + size, r * cell + size], axis=1))
    if not any(len(b) for b in boxes):
        return []
    box = np.concatenate(boxes)
    column = {
        name: np.concatenate([v for s, n, v in fields if n == name])
        for name in ("primitive", "score", "purity", "energy", "cell_coherence", "orientation")
    }
    rng = np.random.default_rng([seed, int(source.sha256[:12], 16)])
    ranked = column["score"] * (1 + SCORE_JITTER * rng.random(len(box)))
    order = np.argsort(-ranked, kind="stable")
    kept: list[int] = []
    kept_boxes = np.empty((0, 4), np.int64)
    for index in order:
        if len(kept) >= settings["count"]:
            break
        if len(kept) and _overlaps(box[index], kept_boxes).max() > settings["max_overlap"]:
            continue
        kept.append(int(index))
        kept_boxes = np.vstack([kept_boxes, box[index]])
    return [
        TextureCrop(
            id=f"{source.id}-x{box[i][0]}-y{box[i][1]}-s{box[i][2] - box[i][0]}",
            source_id=source.id,
            split=split,
            primitive=PRIMITIVES[int(column["primitive"][i])],
            box=tuple(int(v) for v in box[i]),
            orientation=round(float(column["orientation"][i]), 1),
            energy=round(float(column["energy"][i]), 6),
            cell_coherence=round(float(column["cell_coherence"][i]), 4),
            purity=round(float(column["purity"][i]), 4),
            score=round(float(ranked[i]), 6),
        )
        for i in kept
    ]


def class_quotas(count: int, shares: dict[str, float], available: dict[str, int]) -> dict:
    """Crops per class: each class its share of `count`, what a class cannot fill going to
    the others in proportion to their shares."""
    quota = dict.fromkeys(shares, 0)
    open_classes = {p for p, s in shares.items() if s > 0 and available.get(p, 0) > 0}
    left = count
    while left > 0 and open_classes:
        total = sum(shares[p] for p in open_classes)
        handed = 0
        for p in sorted(open_classes, key=PRIMITIVES.index):
            give = min(available[p] - quota[p], max(1, round(left * shares[p] / total)),
                       left - handed)  # fmt: skip
            quota[p] += give
            handed += give
        left -= handed
        open_classes = {p for p in open_classes if quota[p] < available[p]}
        if handed == 0:
            break
    return quota


def choose_crops(per_source: list[list[TextureCrop]], settings: dict) -> list[TextureCrop]:
    """Fill each class's quota round-robin over sources and crop sizes, best crop of each
    source and size first (smaller crops are often purer examples; this keeps every size)."""
    pools: dict[str, list[tuple[int, float, str, TextureCrop]]] = {p: [] for p in PRIMITIVES}
    for crops in per_source:
        rank: dict[tuple[str, int], int] = {}
        for crop in crops:  # best first
            key = (crop.primitive, crop.size)
            rank[key] = rank.get(key, -1) + 1
            pools[crop.primitive].append((rank[key], -crop.score, crop.id, crop))
    quotas = class_quotas(
        settings["count"], settings["classes"], {p: len(v) for p, v in pools.items()}
    )
    chosen = []
    for primitive, pool in pools.items():
        chosen += [entry[-1] for entry in sorted(pool)[: quotas[primitive]]]
    return sorted(chosen, key=lambda crop: crop.id)


def select_crops(
    sources: list[TextureSource], settings: dict, seed: int
) -> tuple[list[TextureCrop], list[dict]]:
    """The chosen crops, and a line per source saying what was done with it."""
    smallest = min(settings["crop_sizes"])
    per_source, report = [], []
    for source in sources:
        entry = {"id": source.id, "source": source.source, "mask": source.mask}
        if min(source.width, source.height) < smallest:
            log.info("%s (%dx%d) is smaller than the smallest crop (%d px): skipped",
                     source.source, source.width, source.height, smallest)  # fmt: skip
            per_source.append([])
            report.append({**entry, "skipped": f"smaller than {smallest} px"})
            continue
        crops = source_candidates(source, settings, seed)
        log.info("%s: %d candidate crops %s", source.source, len(crops),
                 dict(Counter(crop.primitive for crop in crops)))  # fmt: skip
        per_source.append(crops)
        report.append({**entry, "candidates": len(crops)})
    return choose_crops(per_source, settings), report


def write_crops(
    run: str,
    sources: list[TextureSource],
    settings: dict,
    crops_dir: str,
    plan_path: str,
    key: str = "texture.runs.RUN.dataset",
) -> dict:
    """Select, then write each crop as a PNG (named by its id) and the plan as JSON."""
    check_settings(settings, key)
    check_masks(sources, settings["mask_mode"])
    seed = settings["seed"]
    started = time.monotonic()
    crops, report = select_crops(sources, settings, seed)
    selected_s = time.monotonic() - started
    counts = {p: sum(c.primitive == p for c in crops) for p in PRIMITIVES}
    log.info("%d sources -> %d crops %s in %.1f s", len(sources), len(crops), counts, selected_s)
    if len(crops) < settings["min_count"]:
        raise ConfigError(
            f"{key}: only {len(crops)} texture crops found in {len(sources)} sources, fewer "
            f"than min_count ({settings['min_count']}); add scans to the collections, or "
            "lower min_energy, raise max_overlap, give smaller crop_sizes, or lower min_count"
        )
    by_id = {s.id: s for s in sources}
    with atomic_path(crops_dir) as tmp:
        tmp.mkdir(parents=True)
        ordered = sorted(crops, key=lambda c: (c.source_id, c.id))
        for crop, image in with_sources(ordered, lambda c: by_id[c.source_id].image):
            x0, y0, x1, y1 = crop.box
            image.crop(x0, y0, x1 - x0, y1 - y0).pngsave(
                str(tmp / f"{crop.id}.png"), compression=3, keep="none"
            )
    plan = {
        "run": run,
        "settings": settings,
        "sources": [{**asdict(by_id[entry["id"]]), **entry} for entry in report],
        "crops": [
            {
                **asdict(crop),
                "image": str(Path(crops_dir) / f"{crop.id}.png"),
                "crop_sha256": crop_digest(by_id[crop.source_id].sha256, crop.box),
            }
            for crop in crops
        ],
        "counts": counts,
    }
    write_json(plan_path, plan)
    log.info("wrote %d crops to %s and the plan to %s in %.1f s (selection included)",
             len(crops), crops_dir, plan_path, time.monotonic() - started)  # fmt: skip
    return plan


def crop_digest(source_sha256: str, box: tuple[int, int, int, int]) -> str:
    """Identity of a crop's pixels: its source's hash and where it was cut."""
    return hashlib.sha256(f"{source_sha256}:{list(box)}".encode()).hexdigest()


def check_runs(config: dict) -> None:
    """The cross-key checks of texture.runs: runs name declared collections and training
    sets, and their outputs collide with nothing."""
    collections = config["corpus"]["collections"]
    for run, settings in config["texture"]["runs"].items():
        key = f"texture.runs.{run}"
        for name in settings["collections"]:
            if name not in collections:
                raise ConfigError(
                    f"{key}.collections: {name!r} is not a collection; declare it under "
                    f"corpus.collections or remove it (known: {', '.join(collections) or 'none'})"
                )
        for block, where in (("datasets", "datasets/"), ("corpus.collections", "captions/")):
            names = config["datasets"] if block == "datasets" else collections
            if f"texture-{run}" in names:
                raise ConfigError(
                    f"{block}.texture-{run} and texture run {run!r} would both write "
                    f"{where}texture-{run}; rename one of them"
                )
        check_settings(settings["dataset"], f"{key}.dataset")
        if settings["training_set"] not in (None, *config["datasets"]):
            raise ConfigError(
                f"{key}.training_set: {settings['training_set']!r} is not a training set "
                f"under datasets: ({', '.join(config['datasets']) or 'none'}); add it or "
                "remove the setting (the run's texture crops are used)."
            )
