"""BLK-Stencil training sets: synthetic ink assets (and the artist's own RGBA assets) in a
folder per category, a sidecar caption per PNG, curriculum stage lists and a manifest that
holds every parameter, so that each asset can be rendered again from its entry.

Layout of datasets/stencil-NAME/ (paths in lists and the manifest are relative to it):

    solids/single/SOLID/ID.png        one solid          + ID.txt caption beside each PNG
    solids/pair/ID.png                two solids, the nearer one hiding the other
    solids/triple/ID.png              three solids
    clouds/ID.png                     stylised clouds
    shapes/SHAPE/ID.png               disc, star, crescent, ring
    collections/COLLECTION/.../ID.png the artist's consented RGBA assets (folder taxonomy kept)
      ID-flip.png                     mirrored copy (left/right swapped in its caption)
      ID-augK.png                     alpha-safe augmented copy K
    stages/1-singles.txt              curriculum stage lists: one PNG path per line; each
    stages/2-pairs.txt                stage adds categories to the one before (singles; +
    stages/3-triples.txt              pairs; + triples, clouds, shapes and collections)
    metadata.jsonl                    file_name, text, category, z_role, stage (imagefolder)
    manifest.json                     settings, counts, stages and one entry per PNG

PNGs are straight (unpremultiplied) 8-bit RGBA; colour under alpha 0 is 0. Every image is
one of the 64-px aspect buckets of about `resolution` squared pixels.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from blkassist.corpus.datasets import aspect_buckets, mirrored_caption, nearest_bucket
from blkassist.errors import ConfigError
from blkassist.fsutil import atomic_path
from blkassist.provenance import versions
from blkassist.stencil.augment import Augmentation, augment, draw_augmentation, fit_scale
from blkassist.stencil.composite import resize
from blkassist.stencil.geometry import SOLIDS, random_rotation
from blkassist.stencil.render import InkStyle, paint, render_solids
from blkassist.stencil.shapes import cloud_drawing, shape_drawing

log = logging.getLogger(__name__)

FORMAT = "blkassist-stencil/1"
CATEGORIES = ("single", "pair", "triple", "cloud", "shape", "collection")
STAGES = (
    ("1-singles", ("single",)),
    ("2-pairs", ("pair",)),
    ("3-triples", ("triple", "cloud", "shape", "collection")),
)
ASPECTS = {  # bucket aspect ranges (width / height) per category
    "single": (0.8, 1.25),
    "shape": (0.8, 1.25),
    "pair": (1.25, 2.0),
    "triple": (1.6, 2.5),
    "cloud": (1.4, 2.5),
}
REFERENCE_SIDE = 1024  # synthetic lengths in the config are pixels at about 1 Mpx
ARTICLE = {solid: ("an " if solid[0] in "aeiou" else "a ") + solid for solid in SOLIDS}
SHAPE_NAMES = {"disc": "disc", "star": "five-pointed star", "crescent": "crescent", "ring": "ring"}


def stage_of(category: str) -> str:
    return next(name for name, members in STAGES if category in members)


def category_counts(size: int, shares: dict) -> dict[str, int]:
    """Base-asset count per category: `shares` of the set (largest remainders, so the counts
    add up to `size`); singles take what the other shares leave."""
    taken = sum(shares.values())
    if taken > 1 + 1e-9:
        raise ConfigError(
            f"stencil.datasets.NAME.shares add up to {taken:.3f} (> 1): singles take the rest, "
            "so lower the pair, triple, cloud or shape share"
        )
    wanted = {"single": max(0.0, 1 - taken), **shares}
    counts = {k: math.floor(v * size) for k, v in wanted.items()}
    order = sorted(wanted, key=lambda k: (-(wanted[k] * size - counts[k]), CATEGORIES.index(k)))
    for k in order[: size - sum(counts.values())]:
        counts[k] += 1
    return counts


# -- planning: every random choice is made here, from the dataset seed ----------------------


def _bucket(rng, category: str, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    low, high = ASPECTS[category]
    if category == "pair" and rng.random() < 0.25:  # some pairs stacked vertically
        low, high = 1 / high, 1 / low
    fitting = [b for b in buckets if low <= b[0] / b[1] <= high] or buckets
    return fitting[int(rng.integers(len(fitting)))]


def _style(rng, synthetic: dict, role: str, weight: str, size) -> dict:
    scale = math.sqrt(size[0] * size[1]) / REFERENCE_SIDE
    look = synthetic["z_roles"][role]
    ink, paper = np.array(synthetic["ink"]), np.array(synthetic["paper"])
    return {
        "ink": (ink + (paper - ink) * look["lighten"]).round(4).tolist(),
        "paper": synthetic["paper"],
        "width": round(
            max(1.0, synthetic["line_weights"][weight] * look["width_scale"] * scale), 3
        ),
        "opacity": look["opacity"],
        "silhouette_scale": synthetic["silhouette_scale"],
        "wobble": round(synthetic["wobble"] * scale, 3),
        "pressure": synthetic["pressure"],
        "overshoot": synthetic["overshoot"],
        "hatching": bool(rng.random() < synthetic["hatching_probability"]),
        "hatch_spacing": round(max(3.0, synthetic["hatch_spacing"] * scale), 3),
        "hatch_width": synthetic["hatch_width"],
        "supersample": synthetic["supersample"],
    }


def _light(rng) -> list[float]:
    """From above and from the camera's side, left or right."""
    light = np.array([rng.uniform(-0.8, 0.8), rng.uniform(0.3, 1.0), -rng.uniform(0.3, 1.0)])
    return (light / np.linalg.norm(light)).round(5).tolist()


def _solids(rng, names: list[str], count: int, aspect: float, perspective) -> list[dict]:
    """`count` solids in disjoint depth slabs, listed far to near, spread along the canvas's
    long side so that neighbours may overlap on screen. Like an artist arranging them, a
    farther solid is made larger so that all appear of comparable size."""
    distance = float(rng.uniform(*perspective))  # camera distance, in circumradii
    screen = rng.uniform(0.8, 1.2, count)  # projected sizes (radius / depth) * distance
    depths, radii = [distance * screen[0]], [screen[0]]
    for k in range(1, count):  # each next one wholly behind the one before
        gap = rng.uniform(1.05, 1.4)
        # z = z_prev + (r_prev + r) * gap with r = screen * z / distance, solved for z
        depth = (depths[-1] + radii[-1] * gap) / (1 - screen[k] * gap / distance)
        depths.append(depth)
        radii.append(screen[k] * depth / distance)
    depths, radii = np.array(depths[::-1]), np.array(radii[::-1])  # far to near
    slots = rng.permutation(count)  # left-to-right (or top-to-bottom) position of each
    spacing = float(rng.uniform(1.1, 1.8) * screen.mean() / distance)
    horizontal = aspect >= 1
    objects = []
    for k in range(count):
        along = (slots[k] - (count - 1) / 2) * spacing
        across = float(rng.uniform(-0.25, 0.25) * screen.mean() / distance)
        x, y = (along, across) if horizontal else (across, -along)
        objects.append(
            {
                "solid": names[int(rng.integers(len(names)))],
                "rotation": np.round(random_rotation(rng), 8).tolist(),
                "centre": [
                    round(x * depths[k], 6),
                    round(y * depths[k], 6),
                    round(float(depths[k]), 6),
                ],
                "radius": round(float(radii[k]), 6),
                "seed": int(rng.integers(2**31)),
            }
        )
    return objects


def _solid_subject(objects: list[dict], hatched: bool) -> str:
    shading = " with hatched shading" if hatched else ""
    if len(objects) == 1:
        return objects[0]["solid"] + shading
    # Screen position of each centre: x / z (left to right), y / z (top to bottom).
    xs = [o["centre"][0] / o["centre"][2] for o in objects]
    ys = [o["centre"][1] / o["centre"][2] for o in objects]
    horizontal = np.ptp(xs) >= np.ptp(ys)
    order = np.argsort(xs) if horizontal else np.argsort(ys)[::-1]
    names = [objects[i]["solid"] for i in order]
    if len(objects) == 2:
        near = objects[-1]["solid"]
        far = objects[0]["solid"]
        if horizontal:
            side = "left" if xs[-1] < xs[0] else "right"
        else:
            side = "top" if ys[-1] > ys[0] else "bottom"
        where = f"on the {side}" if horizontal else f"at the {side}"
        if near == far:
            return f"two {near}s{shading}, the nearer one {where}"
        return f"{near} in front of {ARTICLE[far]}{shading}, the {near} {where}"
    listing = ", ".join(ARTICLE[n] for n in names[:-1]) + " and " + ARTICLE[names[-1]]
    direction = "left to right" if horizontal else "top to bottom"
    return f"overlapping arrangement of {listing}{shading}, {direction}"


def _shaded(subject: str, style: dict) -> str:
    return subject + (" with hatched shading" if style["hatching"] else "")


def _plan_solids(rng, spec: dict, settings: dict, synthetic: dict) -> None:
    count = {"single": 1, "pair": 2, "triple": 3}[spec["category"]]
    width, height = spec["size"]
    objects = _solids(rng, settings["solids"], count, width / height, synthetic["perspective"])
    spec.update(kind="solids", objects=objects)
    spec["subject"] = _solid_subject(objects, spec["style"]["hatching"])
    spec["folder"] = f"solids/{spec['category']}"
    if count == 1:
        spec["folder"] += f"/{objects[0]['solid']}"


def _plan_cloud(rng, spec: dict, settings: dict, synthetic: dict) -> None:
    positions = np.sort(rng.uniform(0.05, 0.95, int(rng.integers(3, 7))))
    light = _light(rng)
    spec["kind"] = "cloud"
    spec["cloud"] = {
        "centre": [0.5, 0.55],
        "width": 1 - 2 * synthetic["margin"],
        "height": round(float(rng.uniform(0.45, 0.6)), 4),
        "bumps": [
            [round(float(p), 4), round(float(rng.uniform(0.45, 0.85)), 4)] for p in positions
        ],
        "seed": int(rng.integers(2**31)),
        "light": [light[0], -light[1]],  # on the image plane, y down
    }
    spec["subject"] = _shaded("stylised cloud", spec["style"])
    spec["folder"] = "clouds"


def _plan_shape(rng, spec: dict, settings: dict, synthetic: dict) -> None:
    shape = settings["shapes"][int(rng.integers(len(settings["shapes"])))]
    light = _light(rng)
    spec["kind"] = "shape"
    spec["shape"] = {
        "shape": shape,
        "centre": [0.5, 0.5],
        "radius": round(0.5 - synthetic["margin"], 4),
        "angle": round(float(rng.uniform(0, 360)), 3),
        "inner": round(float(rng.uniform(0.4, 0.6)), 4),
        "seed": int(rng.integers(2**31)),
        "light": [light[0], -light[1]],
    }
    spec["subject"] = _shaded(SHAPE_NAMES[shape], spec["style"])
    spec["folder"] = f"shapes/{shape}"


PLANNERS = {"single": _plan_solids, "pair": _plan_solids, "triple": _plan_solids,
            "cloud": _plan_cloud, "shape": _plan_shape}  # fmt: skip


def plan_synthetic(settings: dict, synthetic: dict) -> list[dict]:
    """One spec per base asset: everything needed to render it again. Asset N draws from
    its own generator seeded by (seed, N)."""
    buckets = aspect_buckets(settings["resolution"], settings["bucket_step"])
    counts = category_counts(settings["size"], settings["shares"])
    categories = [c for c in CATEGORIES if c in PLANNERS for _ in range(counts.get(c, 0))]
    specs = []
    for number, category in enumerate(categories):
        rng = np.random.default_rng([settings["seed"], number])
        size = _bucket(rng, category, buckets)
        role = settings["z_roles"][int(rng.integers(len(settings["z_roles"])))]
        weight = settings["line_weights"][int(rng.integers(len(settings["line_weights"])))]
        spec = {
            "id": f"{number:05d}",
            "category": category,
            "size": list(size),
            "z_role": role,
            "line_weight": weight,
            "margin": synthetic["margin"],
            "style": _style(rng, synthetic, role, weight, size),
            "light": _light(rng),
        }
        PLANNERS[category](rng, spec, settings, synthetic)
        spec["augmentations"] = [
            draw_augmentation(rng, settings["augment"]).to_dict()
            for _ in range(settings["augment"]["copies"])
        ]
        specs.append(spec)
    return specs


def render_spec(spec: dict) -> np.ndarray:
    """The base asset of a synthetic spec, as straight uint8 RGBA."""
    style = InkStyle.from_dict(spec["style"])
    size = tuple(spec["size"])
    if spec["kind"] == "solids":
        return render_solids(spec["objects"], size, style, spec["light"], spec["margin"])
    if spec["kind"] == "cloud":
        return paint([cloud_drawing(spec["cloud"], size, style)], style, size)
    if spec["kind"] == "shape":
        return paint([shape_drawing(spec["shape"], size, style)], style, size)
    raise ValueError(f"unknown asset kind {spec['kind']!r}")


def caption(settings: dict, subject: str, weight: str, role: str) -> str:
    """A synthetic asset's caption from the set's template."""
    template = settings["caption"]
    fields = {
        "style": template["style"],
        "subject": subject,
        "rendering": template["rendering"],
        "weight": weight,
        "role": role,
    }
    try:
        return " ".join(template["template"].format(**fields).split())
    except (KeyError, IndexError) as error:
        raise ConfigError(
            f"stencil.datasets.NAME.caption.template: unknown field {error}; use "
            f"{{{'}, {'.join(sorted(fields))}}}"
        ) from None


# -- the artist's RGBA assets ---------------------------------------------------------------

Z_ROLE_FOLDERS = {"fg": "FG", "mg": "MG", "bg-overlay": "BG-overlay", "bg": "BG-overlay"}


def collection_assets(manifests: list[str], caption_indexes: list[str]) -> list[dict]:
    """The artist's normalised RGBA assets with their (possibly edited) sidecar captions; a
    folder named fg / mg / bg-overlay in the taxonomy sets the Z-role."""
    from blkassist.captions.sidecars import read_captions
    from blkassist.corpus.normalise import distinct_rows

    captions = read_captions(caption_indexes)
    assets = []
    for row in distinct_rows(manifests):
        folders = [f for f in row.taxonomy.split("/") if f]
        roles = [Z_ROLE_FOLDERS[f.lower()] for f in folders if f.lower() in Z_ROLE_FOLDERS]
        assets.append(
            {
                "id": row.id,
                "collection": row.collection,
                "sha256": row.sha256,
                "image": row.image,
                "taxonomy": row.taxonomy,
                "caption": captions[row.id],
                "z_role": roles[-1] if roles else None,
            }
        )
    return assets


def fit_to_bucket(rgba: np.ndarray, bucket: tuple[int, int], margin: float) -> np.ndarray:
    """The asset scaled (on premultiplied colour) to fit inside the bucket with `margin` free
    on each side, centred on a transparent canvas; never enlarged past 1.25x."""
    height, width = rgba.shape[:2]
    w, h = bucket
    scale = min(w * (1 - 2 * margin) / width, h * (1 - 2 * margin) / height, 1.25)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = resize(rgba, *size)
    out = np.zeros((h, w, 4), np.uint8)
    x0, y0 = (w - size[0]) // 2, (h - size[1]) // 2
    out[y0 : y0 + size[1], x0 : x0 + size[0]] = resized
    return out


# -- building -------------------------------------------------------------------------------


def _variants(base: np.ndarray, text: str, flip: bool, augmentations: list[dict]):
    """(suffix, image, caption, augmentation) for the base asset and its copies."""
    yield "", base, text, None
    if flip:
        yield "-flip", np.ascontiguousarray(base[:, ::-1]), mirrored_caption(text), None
    for k, values in enumerate(augmentations, start=1):
        aug = fit_scale(Augmentation(**values), base)
        text_k = mirrored_caption(text) if aug.flip else text
        yield f"-aug{k}", augment(base, aug), text_k, aug.to_dict()


def build_stencil_dataset(
    name: str, settings: dict, synthetic: dict, assets: list[dict], output: str
) -> dict:
    """Render the whole set into `output` (built under a temporary name, then renamed)."""
    started = time.monotonic()
    specs = plan_synthetic(settings, synthetic)
    entries: list[dict] = []
    with atomic_path(output) as tmp:
        for spec in specs:
            base = render_spec(spec)
            text = caption(settings, spec["subject"], spec["line_weight"], spec["z_role"])
            spec_record = {k: v for k, v in spec.items() if k not in ("augmentations",)}
            for suffix, image, text_v, aug in _variants(
                base, text, settings["flip"], spec["augmentations"]
            ):
                entries.append(
                    _write(
                        tmp,
                        f"{spec['folder']}/{spec['id']}{suffix}.png",
                        image,
                        text_v,
                        spec["category"],
                        spec["z_role"],
                        {"spec": spec_record, "augmentation": aug, "flipped": suffix == "-flip"},
                    )
                )
        entries += _write_collection_assets(tmp, settings, synthetic, assets)
        stages = _write_stages(tmp, entries)
        with open(tmp / "metadata.jsonl", "w") as handle:
            for e in entries:
                row = {
                    "file_name": e["file"],
                    "text": e["caption"],
                    "category": e["category"],
                    "z_role": e["z_role"],
                    "stage": e["stage"],
                }
                handle.write(json.dumps(row, sort_keys=True) + "\n")
        base_counts = Counter(e["category"] for e in entries if e["variant"] == "original")
        summary = {
            "format": FORMAT,
            "name": name,
            "settings": settings,
            "synthetic": synthetic,
            "counts": {"files": len(entries), "base": dict(sorted(base_counts.items()))},
            "shares": {
                k: round(v / max(1, sum(base_counts.values())), 4)
                for k, v in sorted(base_counts.items())
            },
            "stages": stages,
            "versions": versions(("numpy", "pillow", "scipy", "scikit-image")),
            "assets": entries,
        }
        (tmp / "manifest.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    log.info(
        "stencil-%s: %d PNGs (%s base assets) in %.1f s",
        name,
        len(entries),
        dict(sorted(base_counts.items())),
        time.monotonic() - started,
    )
    return summary


def _write(tmp: Path, file: str, image: np.ndarray, text: str, category, role, extra) -> dict:
    path = tmp / file
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image, "RGBA").save(path, compress_level=3)
    path.with_suffix(".txt").write_text(text + "\n")
    variant = (
        "flip" if extra.get("flipped") else "augmented" if extra.get("augmentation") else "original"
    )
    return {
        "file": file,
        "caption_file": file[:-4] + ".txt",
        "caption": text,
        "category": category,
        "z_role": role,
        "stage": stage_of(category),
        "variant": variant,
        "size": [image.shape[1], image.shape[0]],
        **extra,
    }


def _write_collection_assets(tmp: Path, settings, synthetic, assets: list[dict]) -> list[dict]:
    if not settings["collections"]:
        return []
    buckets = aspect_buckets(settings["resolution"], settings["bucket_step"])
    entries = []
    for asset in assets:
        with Image.open(asset["image"]) as opened:
            rgba = np.asarray(opened.convert("RGBA"))
        bucket = nearest_bucket(rgba.shape[1], rgba.shape[0], buckets)
        base = fit_to_bucket(rgba, bucket, synthetic["margin"])
        text = asset["caption"]
        rendering = settings["caption"]["rendering"]
        if asset["z_role"] and f"{asset['z_role']} element" not in text:
            text += f", {asset['z_role']} element"
        if rendering and rendering not in text:
            text += f", {rendering}"
        rng = np.random.default_rng([settings["seed"], int(asset["sha256"][:12], 16)])
        augs = [
            draw_augmentation(rng, settings["augment"]).to_dict()
            for _ in range(settings["augment"]["copies"])
        ]
        folder = "/".join(["collections", asset["collection"], *filter(None, [asset["taxonomy"]])])
        source = {k: asset[k] for k in ("collection", "id", "sha256", "taxonomy")}
        for suffix, image, text_v, aug in _variants(base, text, settings["flip"], augs):
            entries.append(
                _write(
                    tmp,
                    f"{folder}/{asset['id']}{suffix}.png",
                    image,
                    text_v,
                    "collection",
                    asset["z_role"],
                    {
                        "source": source,
                        "bucket": list(bucket),
                        "augmentation": aug,
                        "flipped": suffix == "-flip",
                    },
                )
            )
    return entries


def _write_stages(tmp: Path, entries: list[dict]) -> list[dict]:
    (tmp / "stages").mkdir()
    stages, included = [], []
    for name, categories in STAGES:
        included += [e["file"] for e in entries if e["category"] in categories]
        (tmp / "stages" / f"{name}.txt").write_text("".join(f + "\n" for f in included))
        chosen = set(included)
        members = Counter(e["category"] for e in entries if e["file"] in chosen)
        stages.append(
            {
                "name": name,
                "list": f"stages/{name}.txt",
                "files": len(included),
                "categories": dict(sorted(members.items())),
            }
        )
    return stages


def check_stencil_config(config: dict) -> None:
    """Cross-key checks the schema cannot express, before any job runs."""
    stencil = config["stencil"]
    collections = config["corpus"]["collections"]
    for name in stencil["collections"]:
        if name not in collections:
            raise ConfigError(
                f"stencil.collections: {name!r} is not a collection; declare it under "
                "corpus.collections (path, artist, licence, consent, alpha: keep)"
            )
        if collections[name]["alpha"] != "keep":
            raise ConfigError(
                f"stencil.collections: {name!r} is a scan collection; set "
                f"corpus.collections.{name}.alpha: keep for transparent assets"
            )
    for name, settings in stencil["datasets"].items():
        if f"stencil-{name}" in config.get("datasets", {}):
            raise ConfigError(
                f"stencil.datasets.{name} and datasets.stencil-{name} would both build "
                f"datasets/stencil-{name}; rename one of them"
            )
        try:
            category_counts(settings["size"], settings["shares"])
            caption(settings, "cube", "thin", "FG")
        except ConfigError as error:
            raise ConfigError(str(error).replace(".NAME.", f".{name}.")) from None
