"""Re-rolls: the artist names windows of a refinement pass to sample again, and only what
they change is redone.

An entry names windows of one pass (by id, or as a rectangle in the final mural's pixels:
the windows whose cells meet it) with a new seed generation, and optionally its own denoise
or prompt. This plan, a pure function of the entries and the mural's plans (evaluated when
the DAG is built), follows the change downstream:

- a re-rolled window changes the pass's canvas only inside its footprint (where its blend
  weight is not zero); the output blocks meeting a footprint are blended again;
- a later pass's window that reads a changed pixel (in its input, the previous pass's
  canvas, or its anchor, the SR step's canvas) is sampled again with its own noise;
- the next SR step's tiles whose padded input meets a changed pixel are upscaled again,
  and so on through that step's passes.

Nothing of the pass itself is written: re-sampled windows, re-blended blocks and re-upscaled
SR tiles are pieces kept beside it (work/MURAL/refineS.P/reroll/), each named by a key that
digests everything that defines it (the pass's settings, the entry, the keys of the pieces
it reads). A reader (the next re-roll step, the assembly, the viewer) sees a pass's canvas
with its re-rolled blocks laid over it (canvas.LayeredCanvas). Removing an entry removes
its pieces from the view, so the original bytes come back with no work; putting it back
finds its pieces still there.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from blkassist.errors import ConfigError
from blkassist.refine.plan import RefinePass
from blkassist.tiling import PassPlan

Box = tuple[int, int, int, int]
FOLDER = "reroll"


def digest(value) -> str:
    """16 hex digits of the SHA-256 of `value` as canonical JSON."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def meets(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@dataclass(frozen=True)
class Entry:
    """One window the artist asked to re-roll."""

    stage: str  # the pass, "S.P"
    window: int
    generation: int  # the entry's seed: generation 1, 2, ... of the pass's noise
    denoise: float | None  # None: the pass's
    prompt: str | None  # None: the pass's
    origin: str  # where it was asked for (config key or file)

    def defining(self) -> dict:
        return {"generation": self.generation, "denoise": self.denoise, "prompt": self.prompt}


# -- reading and checking the entries -------------------------------------------------------
def load_entries_file(path: str | os.PathLike, schema: Mapping) -> list[dict]:
    """Entries from a re-roll file (JSON or YAML, as the viewer saves it: {"reroll": [...]}
    or a bare list), checked against the schema's reroll_entry, defaults filled."""
    import jsonschema

    from blkassist.config import _describe, _fill_defaults

    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"re-roll file {path} does not exist: save it from the mural's viewer "
            "(results/view/NAME/index.html, Save re-roll list) or remove refine.reroll_file"
        )
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"re-roll file {path} is not JSON or YAML: {error}") from error
    entries = loaded.get("reroll") if isinstance(loaded, dict) else loaded
    wrapper = {"type": "array", "items": {"$ref": "#/$defs/reroll_entry"}}
    validator = jsonschema.Draft202012Validator({**wrapper, "$defs": schema["$defs"]})
    errors = sorted(validator.iter_errors(entries), key=lambda e: list(map(str, e.path)))
    if entries is None or errors:
        problems = "; ".join(_describe(e) for e in errors) or "no `reroll` list"
        raise ConfigError(
            f're-roll file {path}: {problems} (expected {{"reroll": [{{"pass": "1.2", '
            '"windows": [3, 4]}]}, as the viewer saves it)'
        )
    _fill_defaults(entries, wrapper, {**wrapper, "$defs": schema["$defs"]})
    return entries


def resolve_entries(
    raw: Iterable[tuple[str, dict]],
    stages: list[RefinePass],
    final_size: tuple[int, int],
) -> dict[tuple[str, int], Entry]:
    """(pass, window) -> Entry, from (origin, entry) pairs; a rectangle names the windows
    whose cells meet it (scaled from the final mural to the pass's canvas). Unknown passes
    and windows, and a window named twice, are refused naming the entries."""
    by_name = {stage.name: stage for stage in stages}
    chosen: dict[tuple[str, int], Entry] = {}
    for origin, entry in raw:
        name = stages[-1].name if entry["pass"] == "last" else entry["pass"]
        if name not in by_name:
            raise ConfigError(
                f"{origin}.pass: {entry['pass']!r} is not a refinement pass of this mural "
                f"(its passes: {', '.join(by_name)}; or 'last')"
            )
        stage = by_name[name]
        if "windows" in entry:
            outside = [w for w in entry["windows"] if w >= stage.window_count]
            if outside:
                raise ConfigError(
                    f"{origin}.windows: {outside} outside pass {name}'s {stage.window_count} "
                    f"windows ({stage.columns} x {stage.rows}, numbered row by row from 0)"
                )
            windows = list(entry["windows"])
        else:
            x0, y0, x1, y1 = entry["box"]
            if x1 <= x0 or y1 <= y0 or x0 >= final_size[0] or y0 >= final_size[1]:
                raise ConfigError(
                    f"{origin}.box: {entry['box']} is not a rectangle [x0, y0, x1, y1] inside "
                    f"the {final_size[0]}x{final_size[1]} mural"
                )
            sx, sy = stage.width / final_size[0], stage.height / final_size[1]
            windows = [w.index for w in stage.windows_in(x0 * sx, y0 * sy, x1 * sx, y1 * sy)]
        for window in windows:
            if (name, window) in chosen:
                raise ConfigError(
                    f"{origin}: window {window} of pass {name} is re-rolled already by "
                    f"{chosen[name, window].origin}; keep one entry per window"
                )
            chosen[name, window] = Entry(name, window, entry["seed"], entry.get("denoise"),
                                         entry.get("prompt"), origin)  # fmt: skip
    return chosen


# -- the plan ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """A window sampled again: chosen (entry) or reading a changed pixel (propagated)."""

    stage: str
    window: int
    key: str
    entry: Entry | None
    reads: tuple[str, ...]  # keys of the changed pieces upstream it reads


@dataclass(frozen=True)
class Block:
    """An output block blended again from the pass's windows and its variants."""

    stage: str
    block: int
    key: str
    box: Box
    windows: tuple[tuple[int, str], ...]  # (window, variant key) of the variants in it


@dataclass(frozen=True)
class SrTile:
    """An SR tile upscaled again from a changed canvas."""

    step: int
    tile: int
    key: str
    box: Box  # in its output canvas
    reads: tuple[str, ...]


@dataclass
class RerollPlan:
    variants: dict[str, dict[int, Variant]] = field(default_factory=dict)
    blocks: dict[str, dict[int, Block]] = field(default_factory=dict)
    tiles: dict[int, dict[int, SrTile]] = field(default_factory=dict)
    regions: dict[str, list[Box]] = field(default_factory=dict)  # changed footprints

    def __bool__(self) -> bool:
        return any(self.variants.values())

    def cost(self) -> dict:
        """GPU work (windows sampled again, per pass: chosen and propagated), SR tiles
        upscaled again and blocks blended again."""
        per_pass = {
            name: {
                "chosen": sum(1 for v in variants.values() if v.entry),
                "propagated": sum(1 for v in variants.values() if not v.entry),
            }
            for name, variants in self.variants.items()
            if variants
        }
        return {
            "windows": sum(len(v) for v in self.variants.values()),
            "passes": per_pass,
            "sr_tiles": {step: len(t) for step, t in self.tiles.items() if t},
            "blocks": sum(len(b) for b in self.blocks.values()),
        }


def plan_rerolls(
    entries: Mapping[tuple[str, int], Entry],
    stages: list[RefinePass],
    sr_passes: list[PassPlan],
    pad: int,
    stage_settings: Mapping[str, dict],
    sr_settings: dict,
) -> RerollPlan:
    """Every piece the entries make necessary, pass by pass and through the SR steps."""
    plan = RerollPlan()
    if not entries:
        return plan
    last_region: list[tuple[Box, str]] = []  # the previous SR step's last changed pixels
    for step in sorted({stage.step for stage in stages}):
        sr_region: list[tuple[Box, str]] = []
        if step > 1 and last_region:
            tiles = _sr_tiles(sr_passes[step - 1], pad, last_region, sr_settings)
            plan.tiles[step] = tiles
            sr_region = [(t.box, t.key) for t in tiles.values()]
        previous = sr_region  # what the step's first pass reads
        for stage in (s for s in stages if s.step == step):
            variants = _variants(stage, entries, previous, sr_region, stage_settings[stage.name])
            plan.variants[stage.name] = variants
            region = [(stage.footprint(stage.window(i)), v.key) for i, v in variants.items()]
            plan.regions[stage.name] = [box for box, _ in region]
            plan.blocks[stage.name] = _blocks(stage, variants)
            previous = region
        last_region = previous
    return plan


def _reads(box: Box, *regions: list[tuple[Box, str]]) -> tuple[str, ...]:
    return tuple(sorted({key for region in regions for piece, key in region if meets(box, piece)}))


def _variants(stage, entries, previous, sr_region, settings) -> dict[int, Variant]:
    candidates = {window for (name, window) in entries if name == stage.name}
    for box, _ in [*previous, *sr_region]:
        candidates |= {w.index for w in stage.covering(*box)}
    variants = {}
    for index in sorted(candidates):
        window = stage.window(index)
        box = (window.x, window.y, window.x + window.width, window.y + window.height)
        reads = _reads(box, previous, sr_region)
        entry = entries.get((stage.name, index))
        if entry is None and not reads:
            continue
        key = digest({"pass": stage.name, "settings": settings, "window": index,
                      "entry": entry.defining() if entry else None, "reads": reads})  # fmt: skip
        variants[index] = Variant(stage.name, index, key, entry, reads)
    return variants


def _blocks(stage: RefinePass, variants: dict[int, Variant]) -> dict[int, Block]:
    touched: dict[int, list[tuple[int, str]]] = {}
    for index, variant in variants.items():
        for block in stage.block_ids(stage.footprint(stage.window(index))):
            touched.setdefault(block, []).append((index, variant.key))
    blocks = {}
    for block, windows in sorted(touched.items()):
        windows = tuple(sorted(windows))
        key = digest({"pass": stage.name, "block": block, "windows": windows})
        blocks[block] = Block(stage.name, block, key, stage.block_box(block), windows)
    return blocks


def _sr_tiles(sr: PassPlan, pad: int, region, settings: dict) -> dict[int, SrTile]:
    tiles = {}
    for tile in sr.tiles_between(0, sr.tile_count):
        padded = tile.padded(pad, sr.input_width, sr.input_height)
        reads = _reads(padded, region)
        if not reads:
            continue
        key = digest({"sr": settings, "geometry": sr.geometry(), "tile": tile.index,
                      "reads": reads})  # fmt: skip
        s = sr.scale
        box = (tile.x * s, tile.y * s, (tile.x + tile.width) * s, (tile.y + tile.height) * s)
        tiles[tile.index] = SrTile(sr.number, tile.index, key, box, reads)
    return tiles


# -- where the pieces live, and how jobs take them ----------------------------------------
def piece(folder: str, kind: str, index: int, key: str) -> str:
    """A piece's path without suffix (.zarr: its pixels; .json: its record, written last)."""
    return f"{folder}/{FOLDER}/{kind}/{index}-{key}"


def is_done(folder: str, kind: str, index: int, key: str) -> bool:
    return Path(piece(folder, kind, index, key) + ".json").is_file()


def overlays(folder: str, blocks: Mapping[int, Block], within: Iterable[Box] | None = None):
    """A pass's re-blended blocks as canvas overlays ({"box", "path"}), only those meeting
    `within` if given."""
    boxes = None if within is None else list(within)
    return [
        {"box": list(block.box), "path": piece(folder, "blocks", index, block.key) + ".zarr"}
        for index, block in sorted(blocks.items())
        if boxes is None or any(meets(block.box, box) for box in boxes)
    ]


def tile_overlays(folder: str, tiles: Mapping[int, SrTile], within: Iterable[Box] | None = None):
    boxes = None if within is None else list(within)
    return [
        {"box": list(tile.box), "path": piece(folder, "tiles", index, tile.key) + ".zarr"}
        for index, tile in sorted(tiles.items())
        if boxes is None or any(meets(tile.box, box) for box in boxes)
    ]


@dataclass(frozen=True)
class Chunk:
    """The pieces one re-roll job makes: those not made yet, grouped as the pass's own jobs
    group their windows (blocks, tiles), so an unrelated change leaves a job's name alone."""

    name: str  # "F-L-DIGEST"
    members: tuple[int, ...]


def chunks(pieces: Mapping[int, object], per_job: int, done) -> list[Chunk]:
    """Jobs for the pieces `done(index, piece)` says are not made yet."""
    groups: dict[int, list[int]] = {}
    for index, unit in sorted(pieces.items()):
        if not done(index, unit):
            groups.setdefault(index // per_job, []).append(index)
    out = []
    for members in groups.values():
        name = digest([(i, pieces[i].key) for i in members])
        out.append(Chunk(f"{members[0]}-{members[-1]}-{name}", tuple(members)))
    return out


def gather_entries(mural: str, configured, file: str | None, schema: Mapping) -> list:
    """(origin, entry) pairs: the config's `reroll` list, then the re-roll file's."""
    raw = [(f"murals.{mural}.refine.reroll.{i}", entry) for i, entry in enumerate(configured)]
    if file:
        loaded = load_entries_file(file, schema)
        raw += [(f"{file}: reroll.{i}", entry) for i, entry in enumerate(loaded)]
    return raw
