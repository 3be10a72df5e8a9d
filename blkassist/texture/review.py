"""The texture review sheet: every crop with its class, caption and source, so the artist
can check the classes and edit captions (sidecars) before training."""

from __future__ import annotations

import html
from pathlib import Path

from blkassist.captions.review import caption_card, review_page
from blkassist.fsutil import atomic_path, read_json
from blkassist.texture.measure import PRIMITIVES


def write_texture_review_sheet(run: str, plan_path: str, caption_index: str, output: str) -> None:
    plan, captions = read_json(plan_path), read_json(caption_index)
    crops = sorted(plan["crops"], key=lambda c: (PRIMITIVES.index(c["primitive"]), c["id"]))
    cards = [
        caption_card(
            crop["id"],
            _current(captions[crop["id"]]),
            f'<span class="tag">{html.escape(crop["primitive"])}</span> '
            f'<span class="tag">{crop["split"]}</span> '
            f'<span class="tag">{crop["box"][2] - crop["box"][0]} px</span><br>',
        )
        for crop in crops
    ]
    counts = ", ".join(f"{count} {name}" for name, count in plan["counts"].items() if count)
    skipped = [s for s in plan["sources"] if "skipped" in s]
    intro = (
        f"{len(crops)} crops ({counts or 'none'}) from {len(plan['sources'])} sources"
        + (f", {len(skipped)} skipped as smaller than every crop size" if skipped else "")
        + ". Edit a caption in its .txt file; the workflow never overwrites your edits."
    )
    with atomic_path(output) as tmp:
        tmp.write_text(review_page(f"Texture crops: {run}", intro, cards))


def _current(entry: dict) -> dict:
    """The index entry with the sidecar as it is now: the artist may have edited it since."""
    text = " ".join(Path(entry["sidecar"]).read_text().split())
    return entry if text == entry["caption"] else {**entry, "caption": text, "status": "edited"}
