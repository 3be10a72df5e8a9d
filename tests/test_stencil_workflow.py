"""BLK-Stencil through the real Snakemake engine: synthetic assets + the artist's own RGBA
assets (alpha kept, captioned by the sidecar store) -> a training set and a contact sheet."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from blkassist.corpus.normalise import normalise_collection
from blkassist.errors import InputImageError
from tests.conftest import run_snakemake, write_config

pytestmark = pytest.mark.slow

CONFIG = {
    "corpus": {
        "collections": {
            "assets": {
                "path": "assets",
                "artist": "Test Artist",
                "licence": "CC0-1.0",
                "consent": True,
                "alpha": "keep",
            }
        }
    },
    "stencil": {
        "collections": ["assets"],
        "datasets": {"mini": {"size": 6, "resolution": 192, "seed": 3}},
    },
}


def _artist_asset(path, seed: int) -> np.ndarray:
    """A translucent-edged ink blot with stray colour under its transparent pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:180, 0:240]
    distance = np.hypot((xx - 120) / 1.4, yy - 90) + rng.normal(0, 1.5, yy.shape)
    alpha = np.clip((60 - distance) * 40, 0, 255).astype(np.uint8)
    rgba = np.zeros((180, 240, 4), np.uint8)
    rgba[..., :3] = (30 + seed * 40, 25, 20)
    rgba[alpha == 0, :3] = (0, 255, 0)
    rgba[..., 3] = alpha
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgba, "RGBA").save(path)
    return rgba


def test_stencil_set_with_artist_assets_then_rerun_does_nothing(tmp_path):
    _artist_asset(tmp_path / "assets" / "fg" / "blot.png", 1)
    _artist_asset(tmp_path / "assets" / "bg-overlay" / "haze.png", 2)
    config = write_config(tmp_path, CONFIG)
    run_snakemake(tmp_path, [config])
    dataset = tmp_path / "datasets" / "stencil-mini"
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["counts"]["base"]["collection"] == 2
    artist = [e for e in manifest["assets"] if e["category"] == "collection"]
    assert {e["file"].split("/")[2] for e in artist} == {"fg", "bg-overlay"}
    for entry in artist:
        rgba = np.asarray(Image.open(dataset / entry["file"]))
        assert rgba.shape[2] == 4 and 0 < (rgba[..., 3] == 0).mean() < 1
        assert np.all(rgba[rgba[..., 3] == 0, :3] == 0)  # stray colour cleared
        edge = (rgba[..., 3] > 0) & (rgba[..., 3] < 128)
        assert edge.any() and rgba[edge, 1].max() < 60  # no green from under the alpha
        assert entry["caption"].endswith("transparent background")
        role = "FG" if "/fg/" in entry["file"] else "BG-overlay"
        assert entry["z_role"] == role and f"{role} element" in entry["caption"]
        assert entry["stage"] == "3-triples"
    stages = {s["name"]: (dataset / s["list"]).read_text().split() for s in manifest["stages"]}
    assert set(e["file"] for e in artist) <= set(stages["3-triples"])
    assert not set(e["file"] for e in artist) & set(stages["2-pairs"])
    sheet = np.asarray(Image.open(tmp_path / "results" / "stencil" / "mini_contact_sheet.png"))
    greys = {115, 140}  # the checkerboard's two tones show through transparency
    assert greys <= set(np.unique(sheet[..., 0]).tolist())

    again = run_snakemake(tmp_path, [config])
    assert "Nothing to be done" in again.stdout + again.stderr

    # An edited caption sidecar is the artist's: the set is rebuilt with it.
    index = json.loads((tmp_path / "captions" / "assets" / "index.json").read_text())
    image_id, entry = sorted(index.items())[0]
    (tmp_path / entry["sidecar"]).write_text("ink blot with a soft wet edge\n")
    rebuilt = run_snakemake(tmp_path, [config])
    assert "stencil_dataset" in rebuilt.stdout + rebuilt.stderr
    manifest = json.loads((dataset / "manifest.json").read_text())
    texts = [e["caption"] for e in manifest["assets"] if e.get("source", {}).get("id") == image_id]
    assert texts and all(t.startswith("ink blot with a soft wet edge") for t in texts)


def test_scan_collection_in_stencil_collections_is_refused_before_any_job(tmp_path):
    config = json.loads(json.dumps(CONFIG))
    config["corpus"]["collections"]["assets"]["alpha"] = "passthrough"
    path = write_config(tmp_path, config)
    result = run_snakemake(tmp_path, [path], "-n", check=False)
    assert result.returncode != 0
    assert "corpus.collections.assets.alpha: keep" in result.stdout + result.stderr


def test_alpha_keep_refuses_an_opaque_image_and_keeps_the_rest(tmp_path):
    kept = _artist_asset(tmp_path / "assets" / "ok.png", 1)
    Image.new("RGB", (64, 64), (200, 190, 180)).save(tmp_path / "assets" / "opaque.png")
    with pytest.raises(InputImageError, match=r"opaque\.png: no alpha channel"):
        normalise_collection(
            "assets",
            tmp_path / "assets",
            tmp_path / "images",
            tmp_path / "manifest.tsv",
            tmp_path / "report.json",
            10**8,
            alpha="keep",
        )
    (written,) = (tmp_path / "images").glob("*-rgba.png")
    rgba = np.asarray(Image.open(written))
    assert np.array_equal(rgba[..., 3], kept[..., 3])
    assert np.all(rgba[kept[..., 3] == 0, :3] == 0)
    covered = kept[..., 3] > 0
    assert np.array_equal(rgba[covered], kept[covered])
