"""The mural viewer in a real headless Chromium (Debian's package), driven by Playwright.

A small mural is built by the workflow with its Deep Zoom pyramids and viewer page; the page
is served from localhost like any static folder.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from blkassist.errors import BlkAssistError
from blkassist.viewer import deep_zoom, read_dzi, write_viewer
from tests.conftest import REPO, run_snakemake, textured, write_config

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# What a closed network needs: no background connections, no sandbox as root in a container.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
PANEL = {"width": 1000, "height": 520}


@pytest.fixture(scope="module")
def mural(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("viewer")
    Image.fromarray(textured(288, 384, seed=3)).save(workdir / "art.png")
    config = {
        "murals": {"m": {"source": "art.png", "model": "lanczos", "tile": 128}},
        "view": {"tile_size": 254},
    }
    run_snakemake(workdir, [write_config(workdir, config)], "results/view/m/index.html")
    return workdir


def test_pyramids_match_their_images(mural):
    for layer, (width, height) in {"source": (384, 288), "final": (1536, 1152)}.items():
        info = read_dzi(mural / f"results/view/m/{layer}.dzi")
        assert (info["width"], info["height"], info["tile_size"]) == (width, height, 254)
        levels = (mural / f"results/view/m/{layer}_files").glob("[0-9]*")
        top = max(int(p.name) for p in levels)
        assert top == int(np.ceil(np.log2(max(width, height))))


@pytest.fixture
def server(mural):
    """A static web server on localhost over results/, recording every path requested."""
    requested: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, format, *args):
            requested.append(self.path)

    handler = functools.partial(Handler, directory=str(mural / "results"))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", requested
    httpd.shutdown()
    httpd.server_close()


def levels_requested(requested: list[str], layer: str) -> set[int]:
    return {int(m[1]) for p in requested if (m := re.search(rf"/{layer}_files/(\d+)/", p))}


WAIT_DRAWN = """() => {
  const s = window.blkViewer;
  return s && s.opened === s.viewers.length &&
    s.viewers.every(v => v.world.getItemAt(0) && v.world.getItemAt(0).getFullyLoaded()) &&
    Object.values(s.drawn).every(n => n > 0);
}"""


def test_viewer_shows_synchronised_deep_zoom_panels_with_the_murals_pixels(mural, server):
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed: `make system-deps` as root installs it")
    from playwright.sync_api import sync_playwright

    base, requested = server
    with tifffile.TiffFile(mural / "results" / "m_final.tif") as tif:
        final = tif.pages[0].asarray()  # full resolution (the file is a pyramid)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=PANEL, device_scale_factor=1)
            problems = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
            page.goto(f"{base}/view/m/index.html")
            page.wait_for_function(WAIT_DRAWN, timeout=30_000)
            assert page.locator("section h2").all_inner_texts() == ["Source", "Result"]
            home = levels_requested(requested, "final")
            assert home and levels_requested(requested, "source")

            # A user zooms into the result with the mouse wheel: deeper tiles are fetched
            # and the source panel follows to the same place.
            box = page.locator("#panel-final").bounding_box()
            page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.4)
            for _ in range(4):
                page.mouse.wheel(0, -100)
                page.wait_for_timeout(300)
            page.wait_for_function(WAIT_DRAWN, timeout=30_000)
            assert max(levels_requested(requested, "final")) > max(home)
            views = page.evaluate(
                "() => blkViewer.viewers.map(v => [v.viewport.getZoom(true),"
                " v.viewport.getCenter(true).x, v.viewport.getCenter(true).y])"
            )
            assert views[0][0] > 1.5 and np.allclose(views[0], views[1], rtol=1e-3)

            # Full zoom (one mural pixel per screen pixel) on a chosen spot: the screen shows
            # the TIFF's pixels there, and not those a few pixels away.
            x0, y0, size = 700, 500, 96
            corner = page.evaluate(
                """([x0, y0, size]) => {
                  const v = blkViewer.viewers[1], item = v.world.getItemAt(0);
                  v.viewport.zoomTo(item.imageToViewportZoom(1), null, true);
                  const middle = item.imageToViewportCoordinates(x0 + size / 2, y0 + size / 2);
                  v.viewport.panTo(middle, true);
                  v.forceRedraw();
                  return true;
                }""",
                [x0, y0, size],
            )
            assert corner
            page.wait_for_timeout(300)
            page.wait_for_function(WAIT_DRAWN, timeout=30_000)
            origin = page.evaluate(
                """([x0, y0]) => {
                  const v = blkViewer.viewers[1], item = v.world.getItemAt(0);
                  const at = item.imageToViewportCoordinates(x0, y0);
                  const p = v.viewport.pixelFromPoint(at, true);
                  const r = v.element.getBoundingClientRect();
                  return [r.left + p.x, r.top + p.y];
                }""",
                [x0, y0],
            )
            assert max(levels_requested(requested, "final")) == 11  # 1536 px: the full level
            clip = {"x": round(origin[0]), "y": round(origin[1]), "width": size, "height": size}
            shot = np.asarray(Image.open(BytesIO(page.screenshot(clip=clip))).convert("RGB"))
            page.screenshot(path=str(mural / "full_zoom.png"))

            # The same page opened from disk (double-click): no server, still drawn.
            from_disk = browser.new_page(viewport=PANEL)
            from_disk.on(
                "console", lambda m: problems.append(m.text) if m.type == "error" else None
            )
            from_disk.on("pageerror", lambda error: problems.append(str(error)))
            from_disk.goto((mural / "results/view/m/index.html").as_uri())
            from_disk.wait_for_function(WAIT_DRAWN, timeout=30_000)
        finally:
            browser.close()
    assert problems == []

    def difference(dx, dy):
        region = final[y0 + dy : y0 + dy + size, x0 + dx : x0 + dx + size, :3]
        return np.abs(shot.astype(int) - region.astype(int)).mean()

    # within a pixel of where the page says (sub-pixel placement), up to JPEG's loss
    nearby = min(difference(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1))
    assert nearby < 6
    assert min(difference(dx, dy) for dx, dy in [(5, 0), (0, 5), (-5, -5)]) > 3 * nearby


# Sources come in every mode the corpus accepts; the pyramid is always 8-bit sRGB.
MODES = {
    "gray8": lambda: textured(40, 56, bands=1)[..., 0],
    "gray16": lambda: textured(40, 56, bands=1)[..., 0].astype(np.uint16) * 257,
    "rgb8": lambda: textured(40, 56),
    "rgb16": lambda: textured(40, 56).astype(np.uint16) * 257,
    "rgba8": lambda: np.dstack([textured(40, 56), np.full((40, 56), 128, np.uint8)]),
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_deep_zoom_of_every_source_mode_is_8_bit_srgb(tmp_path, mode):
    pixels = MODES[mode]()
    tifffile.imwrite(tmp_path / "in.tif", pixels)
    info = deep_zoom(tmp_path / "in.tif", tmp_path / "v/l.dzi", tmp_path / "v/l_files", 254, 1, 95)
    assert (info["width"], info["height"], info["format"]) == (56, 40, "jpg")
    top = np.asarray(Image.open(tmp_path / "v/l_files/6/0_0.jpg"))
    assert top.shape == (40, 56, 3) and top.dtype == np.uint8
    expected = pixels if pixels.dtype == np.uint8 else (pixels // 257).astype(np.uint8)
    if mode == "rgba8":  # half-transparent: flattened on white
        expected = (expected[..., :3].astype(int) * 128 + 255 * 127) // 255
    if expected.ndim == 2:
        expected = np.dstack([expected] * 3)
    assert np.abs(top.astype(int) - expected.astype(int)).mean() < 4
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == ["l.dzi", "l_files"]


def test_viewer_page_lists_panels_and_overlays_with_relative_paths(tmp_path):
    build = tmp_path / "osd"
    (build / "images").mkdir(parents=True)
    (build / "openseadragon.min.js").write_text("// stand-in build\n")
    (build / "images" / "home_rest.png").write_bytes(b"png")
    Image.fromarray(textured(30, 40)).save(tmp_path / "a.png")
    view = tmp_path / "results/view/m"
    for name in ("source", "final", "seams"):
        deep_zoom(tmp_path / "a.png", view / f"{name}.dzi", view / f"{name}_files", 254, 1, 90)
    write_viewer(
        page=view / "index.html",
        template=REPO / "resources/viewer/index.html",
        title="Mural <m>",
        panels=[
            {"name": "source", "label": "Source", "dzi": str(view / "source.dzi")},
            {"name": "final", "label": "Result", "dzi": str(view / "final.dzi")},
        ],
        overlays=[{"name": "seams", "label": "Seams", "dzi": str(view / "seams.dzi")}],
        openseadragon_build=build,
        openseadragon_copy=view / "openseadragon",
    )
    page = (view / "index.html").read_text()
    assert "<title>Mural &lt;m&gt;</title>" in page
    assert '<script src="openseadragon/openseadragon.min.js">' in page
    layout = json.loads(
        re.search(r'id="layout" type="application/json">(.*?)</script>', page, re.S)[1]
    )
    assert [p["name"] for p in layout["panels"]] == ["source", "final"]
    assert [(o["name"], o["on"]) for o in layout["overlays"]] == [("seams", True)]
    for layer in layout["panels"] + layout["overlays"]:
        assert (view / layer["source"]["Image"]["Url"]).is_dir()  # relative to the page
    assert (view / layout["prefixUrl"] / "home_rest.png").exists()


def test_viewer_without_openseadragon_says_how_to_install_it(tmp_path):
    with pytest.raises(BlkAssistError, match="make viewer-deps"):
        write_viewer(tmp_path / "index.html", REPO / "resources/viewer/index.html", "m", [], [],
                     tmp_path / "missing", tmp_path / "copy")  # fmt: skip
