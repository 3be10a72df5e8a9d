"""QA-gated re-render: after a pass is blended, windows that its seam QA or a fidelity check
finds bad are sampled again with new noise (optionally at a lower denoise and with more
context), up to `rounds` times; every round is recorded with its reasons.

Blame goes to windows, not seams. A window's seam scores are those of the seam segments on
its own borders (the middle of its overlap with each neighbour; a border cut in several
segments counts its worst): its level step is the lower median of its borders' (a window
painted too bright has every border bad; its neighbours have one bad border out of two to
four, so they are not blamed), its texture ratio the upper median; and a window is blamed
only where its score is the worst of its neighbourhood (a very bad window spoils a little
of the neighbours' other borders too; they are judged again after it is re-rendered).
Its fidelity is the
largest share, over 64-pixel cells of the window as refined, of pixels where the
refinement's edges are stronger than the SR base's by more than `edge_margin` grey levels
per pixel: a new stroke the base does not have (the texture a refinement paints is much
weaker than a stroke).

A re-rendered window keeps the pass's noise in its overlaps and draws a new generation in
its interior (noise.RerollNoise: generation r of kind "qa"), so it stays continuous with its
neighbours. The window store's slot and the output blocks its footprint touches are
rewritten, after the original slot is saved: a rerun of the QA job (a crash, changed QA
settings) first puts every original back, so its result depends only on the pass and the
settings. The seam QA is then measured again where the canvas changed.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from blkassist import canvas
from blkassist.refine import seams
from blkassist.refine.blend import blend_blocks
from blkassist.refine.noise import NoiseField, RerollNoise, generation_seed
from blkassist.refine.plan import RefinePass, Window
from blkassist.refine.refiner import Refiner
from blkassist.refine.settings import QaSettings
from blkassist.refine.windows import read_window, resample_window

log = logging.getLogger(__name__)

FIDELITY_CELL = 64  # pixels: a stroke is judged against the cell it crosses, not the window


def _luma(pixels: np.ndarray) -> np.ndarray:
    colour = pixels[..., :3].astype(np.float32)
    if colour.shape[-1] < 3:
        return colour[..., 0]
    return colour @ np.float32([0.299, 0.587, 0.114])


def edge_strength(pixels: np.ndarray) -> np.ndarray:
    """Gradient magnitude of the luminance (central differences, edges repeated), in grey
    levels per pixel."""
    luma = np.pad(_luma(pixels), 1, mode="edge")
    dx = (luma[1:-1, 2:] - luma[1:-1, :-2]) / 2
    dy = (luma[2:, 1:-1] - luma[:-2, 1:-1]) / 2
    return np.hypot(dx, dy)


def fidelity(refined: np.ndarray, base: np.ndarray, margin: float,
             cell: int = FIDELITY_CELL) -> float:  # fmt: skip
    """The largest share, over `cell`-pixel cells, of pixels whose edges the refinement made
    stronger than the base's by more than `margin`."""
    new = (edge_strength(refined) - edge_strength(base)) > margin
    height, width = new.shape
    worst = 0.0
    for y in range(0, height, cell):
        for x in range(0, width, cell):
            part = new[y : y + cell, x : x + cell]
            worst = max(worst, float(part.mean()))
    return round(worst, 4)


def window_scores(plan: RefinePass, segments: list[dict]) -> dict[int, dict]:
    """{window: {"level": lower median of its borders' worst level steps, "texture": upper
    median of its borders' lowest texture ratios}} from the pass's own seam segments."""
    borders: dict[tuple[int, str], list[tuple[float, float]]] = {}
    columns = {line: c for c, line in enumerate(plan.seams_x)}
    rows = {line: r for r, line in enumerate(plan.seams_y)}
    for segment in segments:
        if segment["grid"] != "own":
            continue
        middle = (segment["from"] + segment["to"]) / 2
        if segment["axis"] == "x":
            column = columns[segment["at"]]
            row = plan.window_at(0, middle).row
            sides = (((row, column), "right"), ((row, column + 1), "left"))
        else:
            row = rows[segment["at"]]
            column = plan.window_at(middle, 0).column
            sides = (((row, column), "bottom"), ((row + 1, column), "top"))
        for (r, c), side in sides:
            borders.setdefault((r * plan.columns + c, side), []).append(
                (segment["score"], segment["texture"])
            )
    per_window: dict[int, list[tuple[float, float]]] = {}
    for (index, _), scored in borders.items():
        per_window.setdefault(index, []).append(
            (max(s for s, _ in scored), min(t for _, t in scored))
        )
    scores = {}
    for index, sides in per_window.items():
        levels = sorted(level for level, _ in sides)
        textures = sorted(texture for _, texture in sides)
        scores[index] = {
            "level": levels[(len(levels) - 1) // 2],
            "texture": textures[len(textures) // 2],
        }
    return scores


def neighbours(plan: RefinePass, index: int) -> list[int]:
    """The (up to 8) windows around window `index`."""
    row, column = divmod(index, plan.columns)
    return [
        r * plan.columns + c
        for r in range(max(row - 1, 0), min(row + 2, plan.rows))
        for c in range(max(column - 1, 0), min(column + 2, plan.columns))
        if (r, c) != (row, column)
    ]


def judge(plan: RefinePass, scores: dict[int, dict], qa: QaSettings) -> dict[int, list[str]]:
    """Windows to re-render, each with why. A seam score blames a window only where it is
    the worst around (a very bad window spoils a little of its neighbours' borders too;
    they are judged again once it is re-rendered)."""

    def worst_around(index: int, name: str, sign: int) -> bool:
        own = sign * scores[index].get(name, sign)
        return all(own >= sign * scores.get(n, {}).get(name, sign) for n in neighbours(plan, index))

    flagged: dict[int, list[str]] = {}
    for index in sorted(scores):
        score, reasons = scores[index], []
        level, texture = score.get("level", 0), score.get("texture", 1)
        if qa.level is not None and level > qa.level and worst_around(index, "level", 1):
            reasons.append(f"level step {level:.2f} > {qa.level:g}")
        if qa.texture is not None and texture < qa.texture and worst_around(index, "texture", -1):
            reasons.append(f"texture ratio {texture:.2f} < {qa.texture:g}")
        if qa.fidelity is not None and score.get("fidelity", 0) > qa.fidelity:
            reasons.append(f"new strokes {score['fidelity']:.3f} > {qa.fidelity:g}")
        if reasons:
            flagged[index] = reasons
    return flagged


def worst_windows(plan: RefinePass, scores: dict[int, dict], count: int = 10) -> list[dict]:
    """The `count` windows with the worst seams, worst first (level steps over 1 and
    texture ratios under 1 weigh alike), with their centres in canvas pixels."""

    def badness(index):
        score = scores[index]
        return max(score.get("level", 1) - 1, (1 - score.get("texture", 1)) * 5)

    ranked = sorted(scores, key=lambda index: (-badness(index), index))[:count]
    out = []
    for index in ranked:
        window = plan.window(index)
        x0, y0, x1, y1 = plan.cell(window)
        out.append({"window": index, "pass": plan.name, **scores[index],
                    "x": (x0 + x1) // 2, "y": (y0 + y1) // 2})  # fmt: skip
    return out


class QaStore:
    """Where a pass's QA keeps the original slots of the windows it re-rendered."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder) / "qa-originals"

    def path(self, index: int) -> Path:
        return self.folder / f"{index}.zarr"

    def save(self, index: int, pixels: np.ndarray) -> None:
        if not self.path(index).exists():  # the first save is the pass's own window
            canvas.save_piece(self.path(index), pixels)

    def saved(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        return sorted(int(p.stem) for p in self.folder.glob("*.zarr") if p.stem.isdigit())

    def restore(self, plan: RefinePass, store, target) -> list[int]:
        """Put every saved original back and re-blend the blocks it touches."""
        indices = self.saved()
        if not indices:
            return []
        for index in indices:
            store[index] = np.asarray(canvas.open_canvas(self.path(index))[:])
        reblend(plan, [plan.window(i) for i in indices], store, target)
        shutil.rmtree(self.folder)
        return indices


def reblend(plan: RefinePass, windows: list[Window], store, target) -> list[int]:
    """Compose again the output blocks the windows' footprints touch."""
    blocks = sorted({b for w in windows for b in plan.block_ids(plan.footprint(w))})
    for block in blocks:
        blend_blocks(plan, range(block, block + 1), store, target)
    return blocks


def qa_noise(field: NoiseField, plan: RefinePass, window: Window, generation: int):
    """The noise of generation `generation` of the QA's re-render of `window`."""
    new = NoiseField(generation_seed(field.seed, "qa", generation))
    interior = plan.interior(window)
    return new, (lambda box: RerollNoise(field, new, box.x, box.y, interior))


def run_rounds(
    plan: RefinePass,
    record: dict,
    measured: dict,
    make_refiner: Callable[[], Refiner],
    qa: QaSettings,
    *,
    field: NoiseField,
    denoise: float,
    anchor_strength: float,
    anchor_levels: int,
    device: str | Callable[[], str] = "cpu",
) -> tuple[dict, dict]:
    """Judge the pass's windows and re-render the bad ones, at most `qa.rounds` times
    (`device`: where to anchor, or what says so once the refiner is made). Returns the
    final seam report and the QA record (rounds, reasons, what each re-rendered window
    finally drew from)."""
    import zarr

    store = zarr.open_array(record["windows"], mode="r+")
    target = canvas.open_canvas(record["canvas"], mode="r+")
    source = canvas.open_canvas(record["input_canvas"])
    base = canvas.open_canvas(record["base_canvas"])
    originals = QaStore(Path(record["windows"]).parent)
    started = time.perf_counter()

    def fidelity_of(index: int) -> float:
        window = plan.window(index)
        return fidelity(np.asarray(store[index]), read_window(base, window), qa.edge_margin)

    scores = window_scores(plan, measured["segments"])
    if qa.fidelity is not None:
        for index in range(plan.window_count):
            scores.setdefault(index, {})["fidelity"] = fidelity_of(index)
    refiner = None
    rounds, regenerated = [], {}
    for number in range(1, qa.rounds + 1):
        flagged = judge(plan, scores, qa)
        if not flagged:
            break
        if refiner is None:
            refiner = make_refiner()
            anchor_device = device() if callable(device) else device
        round_denoise = round(denoise * qa.denoise_scale**number, 6)
        entries = []
        for index, reasons in flagged.items():
            window = plan.window(index)
            new, noise = qa_noise(field, plan, window, number)
            pixels = resample_window(
                plan, window, source, base, refiner, noise, denoise=round_denoise,
                anchor_strength=anchor_strength, anchor_levels=anchor_levels,
                context=qa.context, device=anchor_device,
            )  # fmt: skip
            originals.save(index, np.asarray(store[index]))
            store[index] = pixels
            regenerated[index] = {"round": number, "field_seed": new.seed,
                                  "denoise": round_denoise, "context": qa.context}  # fmt: skip
            entries.append({"window": index, "reasons": reasons, **regenerated[index]})
            log.info("QA round %d: window %d re-rendered (%s)", number, index, "; ".join(reasons))
        windows = [plan.window(i) for i in flagged]
        reblend(plan, windows, store, target)
        changed = [plan.footprint(w) for w in windows]
        measured = seams.measure(plan, target, base, only=changed, reference=measured)
        fresh = window_scores(plan, measured["segments"])
        for index, score in fresh.items():
            scores.setdefault(index, {}).update(score)
        if qa.fidelity is not None:
            for index in flagged:
                scores[index]["fidelity"] = fidelity_of(index)
        after = {i: scores[i] for i in flagged}
        rounds.append({"round": number, "denoise": round_denoise, "windows": entries,
                       "after": {str(i): s for i, s in after.items()}})  # fmt: skip
    remaining = judge(plan, scores, qa)
    outcome = (
        "clean" if not remaining else f"{len(remaining)} window(s) still beyond the thresholds "
        f"after {qa.rounds} round(s): {sorted(remaining)}"
    )  # fmt: skip
    log.info("pass %s QA: %d round(s) of re-rendering, %d window(s) re-rendered, %s (%.1f s)",
             plan.name, len(rounds), len(regenerated), outcome,
             time.perf_counter() - started)  # fmt: skip
    return measured, {
        "rounds": rounds,
        "outcome": outcome,
        "still_flagged": {str(i): r for i, r in remaining.items()},
        "regenerated": {str(i): r for i, r in regenerated.items()},
        "worst_windows": worst_windows(plan, scores),
    }
