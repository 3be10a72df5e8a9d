"""A small synthetic training split in the datasets/NAME/{train,validation} layout, for
demos, tests and GPU checks where the artist's corpus is not at hand."""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

_COLOURS = {
    "red": (200, 40, 30),
    "blue": (30, 70, 190),
    "ochre": (200, 150, 40),
    "green": (40, 140, 60),
    "black": (20, 20, 20),
}
_SHAPES = ("circle", "square", "stripes")


def demo_image(size: tuple[int, int], shape: str, colour: str, seed: int) -> Image.Image:
    """A paper-toned background with one bold motif: simple, but not flat."""
    rng = random.Random(seed)
    width, height = size
    image = Image.new("RGB", size, (235, 228, 210))
    draw = ImageDraw.Draw(image)
    for y in range(0, height, 4):  # faint paper grain
        tone = 225 + rng.randint(-6, 6)
        draw.line([(0, y), (width, y)], fill=(tone, tone - 6, tone - 20))
    fill = _COLOURS[colour]
    box = [width * 0.2, height * 0.2, width * 0.8, height * 0.8]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        for x in range(0, width, max(4, width // 8)):
            draw.rectangle([x, 0, x + max(2, width // 16), height], fill=fill)
    return image


def write_demo_split(
    split_dir: str | Path,
    count: int = 3,
    buckets: tuple[tuple[int, int], ...] = ((64, 64),),
    seed: int = 0,
) -> Path:
    """`count` PNGs with .txt captions and metadata.jsonl; sample i uses buckets[i % n]."""
    split_dir = Path(split_dir)
    rows = []
    for index in range(count):
        shape = _SHAPES[index % len(_SHAPES)]
        colour = list(_COLOURS)[(index + seed) % len(_COLOURS)]
        bucket = buckets[index % len(buckets)]
        name = f"{bucket[0]}/{bucket[0]}x{bucket[1]}/demo{index}-full0.png"
        caption = f"ink drawing, {colour} {shape}, paper texture, bold shape"
        path = split_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        demo_image(bucket, shape, colour, seed * 1000 + index).save(path)
        path.with_suffix(".txt").write_text(caption + "\n")
        rows.append(
            {
                "file_name": name,
                "text": caption,
                "bucket": list(bucket),
                "resolution": bucket[0],
                "kind": "full",
                "flipped": False,
                "source_id": f"demo{index}",
            }
        )
    with open(split_dir / "metadata.jsonl", "w") as handle:
        handle.writelines(json.dumps(row, sort_keys=True) + "\n" for row in rows)
    return split_dir
