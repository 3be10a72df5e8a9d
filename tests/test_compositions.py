"""Layered compositions: .ora and .psd read back layer by layer, the flattened PNG equals an
independent "over", no fringes from scaling, Z-role order, clear errors."""

from __future__ import annotations

import itertools
import zipfile
from xml.etree import ElementTree

import numpy as np
import pytest
from PIL import Image, ImageDraw

from blkassist.errors import ConfigError, InputImageError
from blkassist.fsutil import write_json
from blkassist.stencil_model.compose import compose, place
from blkassist.stencil_model.shapes import ink_shape

INK = (200, 60, 30)
WHITE = (255, 255, 255)


def _ink_disc(size=40, garbage=(0, 0, 0)):
    """A red anti-aliased disc whose clear pixels hold `garbage` colour (as many tools
    leave it): a straight-alpha resize would drag that colour into the edge."""
    big = Image.new("RGBA", (size * 4, size * 4), (*garbage, 0))
    ImageDraw.Draw(big).ellipse([20, 20, size * 4 - 20, size * 4 - 20], fill=(*INK, 255))
    small = big.convert("RGBa").resize((size, size), Image.Resampling.BOX).convert("RGBA")
    array = np.asarray(small).copy()
    array[array[..., 3] == 0, :3] = garbage
    return Image.fromarray(array, "RGBA")


@pytest.fixture
def scene(tmp_path):
    background = Image.new("RGB", (96, 64), (230, 220, 200))
    ImageDraw.Draw(background).rectangle([10, 10, 50, 40], fill=(30, 60, 120))
    background.save(tmp_path / "background.png")
    paths = []
    for index, kind in enumerate(("cloud", "ring", "polygon")):
        path = tmp_path / f"asset{index}.png"
        ink_shape(32, kind, seed=index).save(path)
        paths.append(str(path))
    elements = [
        {"image": paths[0], "role": "FG", "x": 0.6, "y": 0.5, "scale": 1.5, "opacity": 1.0},
        {"image": paths[1], "role": "BG-overlay", "x": 0.3, "y": 0.4, "scale": 1.0,
         "opacity": 0.5},
        {"image": paths[2], "role": "MG", "x": 0.5, "y": 0.7, "scale": 0.75, "opacity": 0.8,
         "name": "solid"},
        {"image": paths[0], "role": "FG", "x": 0.1, "y": 0.1, "scale": 1.0, "opacity": 1.0},
    ]  # fmt: skip
    outputs = {ext: str(tmp_path / f"scene.{ext}") for ext in ("ora", "psd", "png")}
    outputs["provenance"] = str(tmp_path / "scene.json")
    record = compose("scene", str(tmp_path / "background.png"), elements, outputs)
    return record, outputs, elements


EXPECTED_NAMES = ["background", "BG-overlay", "MG solid", "FG", "FG 2"]
EXPECTED_OPACITY = [1.0, 0.5, 0.8, 1.0, 1.0]


def _ora_layers(path):
    """(name, opacity, RGBA array) bottom first, read with zipfile + ElementTree only."""
    with zipfile.ZipFile(path) as archive:
        first = archive.infolist()[0]
        assert first.filename == "mimetype" and first.compress_type == zipfile.ZIP_STORED
        assert archive.read("mimetype") == b"image/openraster"
        root = ElementTree.fromstring(archive.read("stack.xml"))
        layers = []
        for node in root.find("stack"):
            with Image.open(archive.open(node.get("src"))) as image:
                array = np.asarray(image.convert("RGBA"))
            offset = (int(node.get("x")), int(node.get("y")))
            layers.append((node.get("name"), float(node.get("opacity")), array, offset))
        with Image.open(archive.open("mergedimage.png")) as merged:
            merged_array = np.asarray(merged)
        size = (int(root.get("w")), int(root.get("h")))
    return layers[::-1], merged_array, size  # stack.xml lists the top layer first


def _reference_over(layers) -> np.ndarray:
    """The flattening done independently: PIL's 8-bit straight-alpha alpha_composite, layer
    opacity folded into the layer's alpha."""
    result = Image.new("RGBA", Image.fromarray(layers[0][2]).size, (0, 0, 0, 0))
    for _, opacity, array, _ in layers:
        layer = array.copy()
        layer[..., 3] = np.round(layer[..., 3] * opacity).astype(np.uint8)
        result = Image.alpha_composite(result, Image.fromarray(layer, "RGBA"))
    return np.asarray(result)


def test_ora_reads_back_layer_by_layer(scene):
    record, outputs, _ = scene
    layers, merged, size = _ora_layers(outputs["ora"])
    assert size == (96, 64)
    assert [name for name, *_ in layers] == EXPECTED_NAMES
    assert [opacity for _, opacity, *_ in layers] == pytest.approx(EXPECTED_OPACITY)
    assert all(array.shape == (64, 96, 4) and offset == (0, 0) for *_, array, offset in layers)
    with Image.open(outputs["png"]) as png:
        flat = np.asarray(png)
    assert np.array_equal(merged, flat)
    assert [layer["name"] for layer in record["layers"]] == EXPECTED_NAMES


def test_psd_reads_back_with_the_same_layers_and_pixels(scene):
    from psd_tools import PSDImage

    _, outputs, _ = scene
    ora_layers, _, _ = _ora_layers(outputs["ora"])
    document = PSDImage.open(outputs["psd"])
    assert document.size == (96, 64)
    layers = list(document)  # bottom first
    assert [layer.name for layer in layers] == EXPECTED_NAMES
    assert [layer.opacity for layer in layers] == [round(o * 255) for o in EXPECTED_OPACITY]
    for layer, (_, _, array, _) in zip(layers, ora_layers, strict=True):
        assert layer.kind == "pixel" and layer.offset == (0, 0)
        assert not layer.has_mask()  # alpha is the layer's transparency, not a mask
        assert np.array_equal(np.asarray(layer.topil().convert("RGBA")), array), layer.name


def test_flattened_png_equals_a_reference_over(scene):
    _, outputs, _ = scene
    layers, _, _ = _ora_layers(outputs["ora"])
    reference = _reference_over(layers)
    with Image.open(outputs["png"]) as png:
        assert png.mode == "RGB"  # the opaque background makes the result opaque
        flat = np.asarray(png.convert("RGBA")).astype(int)
    difference = np.abs(flat - reference.astype(int))
    assert difference.max() <= 2  # 8-bit rounding inside PIL's composite
    assert difference.mean() < 0.3
    # The elements changed the picture where they are, and only there.
    changed = np.abs(flat[..., :3] - layers[0][2][..., :3].astype(int)).max(axis=2) > 2
    covered = np.zeros(changed.shape, bool)
    for _, opacity, array, _ in layers[1:]:
        covered |= array[..., 3] * opacity >= 3
    assert changed.any() and not (changed & ~covered).any()


@pytest.mark.parametrize(
    ("scale", "garbage"), list(itertools.product((0.45, 1.0, 1.7), [(0, 0, 0), (0, 255, 0)]))
)
def test_no_fringes_when_scaling_and_flattening(tmp_path, scale, garbage):
    """Every flattened pixel is a mix of the ink and the white ground, never darker or
    tinted by the colour under clear pixels."""
    Image.new("RGB", (80, 80), WHITE).save(tmp_path / "white.png")
    _ink_disc(garbage=garbage).save(tmp_path / "disc.png")
    element = {"image": str(tmp_path / "disc.png"), "role": "FG", "x": 0.5, "y": 0.5,
               "scale": scale, "opacity": 1.0}  # fmt: skip
    outputs = {ext: str(tmp_path / f"c.{ext}") for ext in ("ora", "psd", "png")}
    outputs["provenance"] = str(tmp_path / "c.json")
    compose("c", str(tmp_path / "white.png"), [element], outputs)
    with Image.open(outputs["png"]) as png:
        flat = np.asarray(png.convert("RGB"), np.float64)
    ink, white = np.array(INK, np.float64), np.array(WHITE, np.float64)
    t = np.clip(((flat - white) @ (ink - white)) / ((ink - white) @ (ink - white)), 0, 1)
    off_line = np.linalg.norm(flat - (white + t[..., None] * (ink - white)), axis=2)
    assert off_line.max() <= 3.0, off_line.max()
    assert (t > 0.9).any() and (t < 0.1).any()


@pytest.mark.parametrize("roles", list(itertools.permutations(["FG", "MG", "BG-overlay"])))
def test_layers_stack_by_z_role_whatever_the_config_order(tmp_path, roles):
    Image.new("RGB", (32, 32), WHITE).save(tmp_path / "bg.png")
    ink_shape(16, "cloud", 0).save(tmp_path / "a.png")
    elements = [{"image": str(tmp_path / "a.png"), "role": role, "x": 0.5, "y": 0.5,
                 "scale": 1.0, "opacity": 1.0} for role in roles]  # fmt: skip
    outputs = {ext: str(tmp_path / f"z.{ext}") for ext in ("ora", "psd", "png")}
    outputs["provenance"] = str(tmp_path / "z.json")
    record = compose("z", str(tmp_path / "bg.png"), elements, outputs)
    assert [layer["name"] for layer in record["layers"]] == ["background", "BG-overlay", "MG", "FG"]


def test_place_cuts_off_what_falls_outside_the_canvas():
    asset = Image.new("RGBA", (10, 10), (*INK, 255))
    layer = np.asarray(place(asset, (20, 20), 0.0, 0.0, 1.0))
    assert layer[..., 3].sum() == 25 * 255  # a quarter of the asset is inside
    assert (layer[:5, :5, 3] == 255).all() and (layer[5:, :, 3] == 0).all()


def test_bad_inputs_name_the_file_or_key(tmp_path):
    outputs = {ext: str(tmp_path / f"b.{ext}") for ext in ("ora", "psd", "png", "json")}
    outputs["provenance"] = outputs.pop("json")
    with pytest.raises(InputImageError, match=r"missing\.png"):
        compose("b", str(tmp_path / "missing.png"), [], outputs)
    Image.new("RGB", (16, 16)).save(tmp_path / "bg.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    broken = {"image": str(tmp_path / "broken.png"), "role": "FG", "x": 0.5, "y": 0.5,
              "scale": 1.0, "opacity": 1.0}  # fmt: skip
    with pytest.raises(InputImageError, match=r"broken\.png"):
        compose("b", str(tmp_path / "bg.png"), [broken], outputs)
    write_json(tmp_path / "assets.json", [{"image": "00-cloud-seed1.png", "seed": 1}])
    unknown = {"index": str(tmp_path / "assets.json"), "set": "s", "prompt": 0, "seed": 3,
               "role": "FG", "x": 0.5, "y": 0.5, "scale": 1.0, "opacity": 1.0}  # fmt: skip
    with pytest.raises(ConfigError, match=r"compositions\.b\.elements\.0.*\(0, 1\)"):
        compose("b", str(tmp_path / "bg.png"), [unknown], outputs)
    assert not any((tmp_path / f"b.{ext}").exists() for ext in ("ora", "psd", "png"))


def test_config_fills_element_defaults_and_names_bad_keys():
    from blkassist.config import validate_config
    from tests.conftest import REPO

    schema = REPO / "config" / "schema.yaml"
    config = {"compositions": {"c": {"background": "bg.png", "elements": [
        {"set": "s", "prompt": 0, "seed": 1, "role": "FG"}, {"image": "a.png", "role": "MG",
                                                            "x": 0.2}]}}}  # fmt: skip
    validate_config(config, schema)
    first, second = config["compositions"]["c"]["elements"]
    assert (first["x"], first["y"], first["scale"], first["opacity"]) == (0.5, 0.5, 1.0, 1.0)
    assert second["x"] == 0.2 and config["stencil"]["vae"]["train"]["steps"] == 400
    bad = {"compositions": {"c": {"background": "bg.png", "elements": [
        {"image": "a.png", "role": "top"}, {"image": "a.png", "set": "s", "prompt": 0,
                                            "seed": 0, "role": "FG"}]}}}  # fmt: skip
    with pytest.raises(ConfigError) as error:
        validate_config(bad, schema)
    assert "compositions.c.elements.0.role" in str(error.value)
    assert "compositions.c.elements.1" in str(error.value)  # image and set: one or the other
