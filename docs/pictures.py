"""The demo pictures of docs/ and the figures beside them, from a finished `make demo`.

    .venv/bin/python docs/pictures.py [WORKDIR]    # default: the repository (make demo's)

Writes docs/demo/*.png (small, for the docs pages) and docs/demo/figures.json: the ink
statistics of the concept sketches and of the refined mural against the demo corpus, the
seam texture ratio, and the Stencil assets' clear border and opaque share of covered pixels.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from blkassist.canvas import open_canvas  # noqa: E402
from blkassist.texture.ink import (  # noqa: E402
    distance,
    feature_distances,
    folder_crops,
    grid_crops,
    ink_stats,
    profile,
)

OUT = ROOT / "docs" / "demo"
CROP = 128


def small(image: Image.Image, width: int) -> Image.Image:
    if image.width > width:
        image = image.resize((width, round(image.height * width / image.width)),
                             Image.Resampling.LANCZOS)  # fmt: skip
    return image


def save(image: Image.Image, name: str, width: int = 640) -> str:
    path = OUT / name
    # 64 colours: ink on paper needs few, and the docs pages' pictures stay small.
    small(image.convert("RGB"), width).quantize(colors=64).save(path, optimize=True)
    return str(path.relative_to(ROOT))


def crops_profile(pixels: np.ndarray):
    return profile([ink_stats(c) for c in grid_crops(pixels, CROP)])


def rounded(values: dict) -> dict:
    return {k: round(float(v), 3) for k, v in values.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", nargs="?", type=Path, default=ROOT)
    workdir = parser.parse_args(argv).workdir
    results = workdir / "results"
    OUT.mkdir(parents=True, exist_ok=True)
    figures: dict = {}

    crops = folder_crops(workdir / "work" / "demo" / "corpus", CROP)
    corpus = profile([ink_stats(c) for c in crops])

    sheet = results / "concepts" / "sketches"
    save(Image.open(sheet / "contact_sheet.png").convert("RGB"), "concepts.png")
    sketches = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(sheet.glob("*.png"))
                if p.name != "contact_sheet.png"]  # fmt: skip
    figures["concepts"] = {"count": len(sketches),
                           "distance_to_corpus": round(distance(
                               profile([ink_stats(s) for s in sketches]), corpus), 3)}  # fmt: skip

    final = tifffile.imread(results / "mural_flux_final.tif")[..., :3]
    base = np.asarray(open_canvas(workdir / "work" / "mural_flux" / "canvas1.zarr")[:])[..., :3]
    side = min(256, *final.shape[:2])
    y, x = (final.shape[0] - side) // 2, (final.shape[1] - side) // 2
    pair = np.concatenate([base[y : y + side, x : x + side], np.full((side, 8, 3), 255, np.uint8),
                           final[y : y + side, x : x + side]], axis=1)  # fmt: skip
    save(Image.fromarray(pair), "refined.png", width=2 * side + 8)
    seams = json.loads((results / "mural_flux_seams.json").read_text())
    figures["refinement"] = {
        "base_to_corpus": rounded(feature_distances(crops_profile(base), corpus)),
        "refined_to_corpus": rounded(feature_distances(crops_profile(final), corpus)),
        "mean_change": round(float(np.abs(final.astype(int) - base).mean()), 2),
        "seam_texture_ratio": seams["final"]["texture_ratio"],
    }  # fmt: skip

    assets = sorted((results / "stencil" / "assets" / "ink").glob("*.png"))
    assets = [p for p in assets if p.name != "contact_sheet.png"]
    save(Image.open(results / "stencil" / "assets" / "ink" / "contact_sheet.png"), "stencil.png")
    alphas = [np.asarray(Image.open(p).convert("RGBA"))[..., 3] / 255 for p in assets]
    figures["stencil"] = {
        "assets": len(alphas),
        "clear_border_share": round(float(np.mean([
            np.concatenate([a[:4].ravel(), a[-4:].ravel(), a[:, :4].ravel(), a[:, -4:].ravel()])
            .__lt__(0.1).mean() for a in alphas])), 3),
        "opaque_share_of_covered": round(float(np.mean([
            (a > 0.9).sum() / max((a > 0.1).sum(), 1) for a in alphas])), 3),
    }  # fmt: skip
    save(Image.open(results / "compositions" / "ink-scene.png").convert("RGB"), "composition.png")
    (OUT / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
