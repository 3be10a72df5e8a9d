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


def screen_point(page, x: float, y: float) -> list[float]:
    """Where the second panel shows its image's pixel (x, y), in page pixels."""
    return page.evaluate(
        """([x, y]) => {
          const v = blkViewer.viewers[1], item = v.world.getItemAt(0);
          const p = v.viewport.pixelFromPoint(item.imageToViewportCoordinates(x, y), true);
          const r = v.element.getBoundingClientRect();
          return [r.left + p.x, r.top + p.y];
        }""",
        [x, y],
    )


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
            origin = screen_point(page, x0, y0)
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


def test_viewer_picks_windows_into_a_saved_reroll_list_links_worst_seams_and_shows_before(
    tmp_path,
):
    """The result panel of a refined mural knows its last pass's window grid: hovering names
    the window(s) under the cursor, clicks at known mural positions build the re-roll list
    (click again removes), and the saved file is what the workflow reads; a worst-seam link
    pans there; the before/after toggle shows the last pass before its re-roll."""
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed: `make system-deps` as root installs it")
    from playwright.sync_api import sync_playwright

    from blkassist.config import load_schema
    from blkassist.refine.plan import RefinePass
    from blkassist.refine.reroll import gather_entries, resolve_entries

    build = REPO / "viewer/node_modules/openseadragon/build/openseadragon"
    if not (build / "openseadragon.min.js").is_file():
        pytest.skip("OpenSeadragon is not installed: `make viewer-deps`")
    grid = {"step": 1, "number": 2, "coherence": True, "width": 640, "height": 480,
            "tile": 128, "overlap": 32}  # fmt: skip
    plan = RefinePass(**grid, tiles_per_job=1, blocks_per_job=1)
    result = textured(480, 640, seed=5)
    Image.fromarray(result).save(tmp_path / "result.png")
    Image.fromarray(255 - result).save(tmp_path / "before.png")
    view = tmp_path / "results/view/m"
    for name, image in (
        ("source", "result.png"),
        ("final", "result.png"),
        ("before", "before.png"),
    ):
        deep_zoom(tmp_path / image, view / f"{name}.dzi", view / f"{name}_files", 254, 1, 95)
    worst = plan.window(9)
    wx0, wy0, wx1, wy1 = plan.cell(worst)
    seams = tmp_path / "results/m_seams.json"
    seams.write_text(json.dumps({"passes": [{"worst_windows": [
        {"window": 9, "pass": "1.2", "level": 4.5, "texture": 0.8,
         "x": (wx0 + wx1) // 2, "y": (wy0 + wy1) // 2}]}]}))  # fmt: skip
    region = list(plan.footprint(plan.window(14)))
    write_viewer(
        page=view / "index.html",
        template=REPO / "resources/viewer/index.html",
        title="Mural m",
        panels=[
            {"name": "source", "label": "Source", "dzi": str(view / "source.dzi")},
            {"name": "final", "label": "Result", "dzi": str(view / "final.dzi"), "grid": grid},
        ],
        overlays=[],
        openseadragon_build=build,
        openseadragon_copy=view / "openseadragon",
        before={
            "name": "before",
            "label": "Before the re-roll",
            "dzi": str(view / "before.dzi"),
            "regions": [region],
        },
        seams=seams,
        mural="m",
        grids=[grid],
    )
    picks = [plan.window(i) for i in (6, 14, 20, 14)]  # 14 twice: picked, then removed
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=PANEL, device_scale_factor=1)
            problems = []
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.goto((view / "index.html").as_uri())
            page.wait_for_function(WAIT_DRAWN, timeout=30_000)

            hovered = []
            for window in picks:
                x0, y0, x1, y1 = plan.cell(window)
                x, y = screen_point(page, (x0 + x1) / 2, (y0 + y1) / 2)
                page.mouse.move(x, y)
                hovered.append(page.locator("#hover").inner_text())
                page.mouse.click(x, y)
                page.wait_for_timeout(150)
            assert all(text.startswith(f"pass 1.2: window {w.index} at ")
                       for w, text in zip(picks, hovered, strict=True))  # fmt: skip
            # In an overlap the window whose cell holds the point comes first.
            page.mouse.move(*screen_point(page, plan.seams_x[0] - 3, 10))
            assert (
                page.locator("#hover")
                .inner_text()
                .startswith("pass 1.2: window 0 (overlapping 1) at ")
            )
            with page.expect_download() as download:
                page.click("#reroll-save")
            saved = tmp_path / download.value.suggested_filename
            download.value.save_as(saved)
            assert saved.name == "m.reroll.json"
            assert json.loads(saved.read_text()) == {
                "mural": "m",
                "reroll": [{"pass": "1.2", "windows": [6, 20]}],
            }
            outlines = page.evaluate("() => document.querySelectorAll('.picked').length")
            assert outlines == 2

            # A worst-seam link pans every panel to its window.
            page.click(".worst-window")
            page.wait_for_timeout(300)
            centres = page.evaluate(
                "() => blkViewer.viewers.map(v => [v.viewport.getCenter(true).x,"
                " v.viewport.getCenter(true).y])"
            )
            expected = [(wx0 + wx1) // 2 / 640, (wy0 + wy1) // 2 / 640]
            assert all(np.allclose(c, expected, atol=2e-3) for c in centres), centres

            # Before/after: the last pass before its re-roll, only inside the re-rolled region.
            page.wait_for_function("() => blkViewer.before.length === 1", timeout=30_000)
            assert page.evaluate("() => blkViewer.before.map(i => i.getOpacity())") == [0]
            page.click("#before-toggle")
            assert page.evaluate("() => blkViewer.before.map(i => i.getOpacity())") == [1]
            clip = page.evaluate("() => { const c = blkViewer.before[0].getClip();"
                                 " return [c.x, c.y, c.width, c.height]; }")  # fmt: skip
            assert clip == [region[0], region[1], region[2] - region[0], region[3] - region[1]]
        finally:
            browser.close()
    assert problems == []
    # The saved file is a re-roll file the workflow accepts, naming those windows.
    schema = load_schema(REPO / "config" / "schema.yaml")
    raw = gather_entries("m", [], str(saved), schema)
    chosen = resolve_entries(raw, [plan], (640, 480))
    assert sorted(chosen) == [("1.2", 6), ("1.2", 20)]
