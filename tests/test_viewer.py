"""The mural viewer in a real headless Chromium (Debian's package), driven by Playwright.

A small mural is built by the workflow with its Deep Zoom pyramids and viewer page; the page
is served from localhost like any static folder.
"""

from __future__ import annotations

import functools
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

from blkassist.viewer import read_dzi
from tests.conftest import run_snakemake, textured, write_config

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
