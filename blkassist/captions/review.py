"""A caption review sheet for the artist: one self-contained HTML page, thumbnail and
caption side by side, the artist's own edits marked."""

from __future__ import annotations

import base64
import html

import pyvips

from blkassist.fsutil import atomic_path

THUMB_SIDE = 256

_STYLE = """
body{font-family:sans-serif;margin:2em;background:#f4f1ea;color:#222}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:1.2em}
figure{margin:0;background:#fff;padding:.8em;border-radius:6px}
img{max-width:100%;display:block;margin:0 auto .6em}
figcaption{font-size:.9em;line-height:1.35}
.tag{font-size:.75em;padding:.1em .5em;border-radius:3px;background:#ddd}
.edited{background:#c9e7c3}.generated{background:#f6dfb0}
code{font-size:.8em;color:#666}
"""


def thumbnail_url(path: str) -> str:
    image = pyvips.Image.thumbnail(path, THUMB_SIDE)
    if image.hasalpha():
        image = image.flatten(background=255)
    return "data:image/jpeg;base64," + base64.b64encode(image.jpegsave_buffer(Q=80)).decode()


def caption_card(image_id: str, entry: dict, tags: str = "") -> str:
    """A figure: thumbnail, caption status (and any further `tags` HTML), caption, source,
    the sidecar to edit."""
    return (
        "<figure>"
        f'<img src="{thumbnail_url(entry["image"])}" alt="{html.escape(image_id)}">'
        f'<figcaption><span class="tag {entry["status"]}">{entry["status"]}</span> {tags}'
        f"{html.escape(entry['caption'])}<br>"
        f"<code>{html.escape(entry['source'])}</code><br>"
        f"<code>edit: {html.escape(entry['sidecar'])}</code></figcaption></figure>"
    )


def review_page(title: str, intro: str, cards: list[str]) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{intro}</p>"
        f"<div class='grid'>{''.join(cards)}</div></body></html>\n"
    )


def write_review_sheet(index: dict, collection: str, output: str) -> None:
    cards = [
        caption_card(image_id, entry)
        for image_id, entry in sorted(index.items(), key=lambda item: item[1]["source"])
    ]
    intro = (
        f"{len(cards)} images. Edit a caption in its .txt file; the workflow never "
        "overwrites your edits."
    )
    with atomic_path(output) as tmp:
        tmp.write_text(review_page(f"Captions: {collection}", intro, cards))
