"""datasets/texture-RUN in the layout of every BLK-Assist training set (see
blkassist.corpus.datasets): {train,validation}/RES/RESxRES/CROP.png with its caption .txt,
metadata.jsonl per split, dataset.json. RES is the crop side: crops are never resampled."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from functools import partial
from pathlib import Path

from blkassist.corpus.datasets import DatasetImage, write_image_folder
from blkassist.fsutil import read_json


def _link_or_copy(source: str, path: Path) -> None:
    """Hard-link the crop (no second copy on disk; crops are replaced, never edited in
    place), or copy it across file systems."""
    try:
        os.link(source, path)
    except OSError:
        shutil.copyfile(source, path)


def build_texture_dataset(name: str, plan_path: str, caption_index: str, output: str) -> dict:
    plan = read_json(plan_path)
    captions = read_json(caption_index)

    def images():
        for crop in plan["crops"]:
            size = crop["box"][2] - crop["box"][0]
            # The sidecar itself: the artist may have edited it since captioning.
            caption = " ".join(Path(captions[crop["id"]]["sidecar"]).read_text().split())
            yield DatasetImage(
                crop["split"], f"{size}/{size}x{size}/{crop['id']}.png", caption,
                {"bucket": [size, size], "resolution": size, "kind": "texture",
                 "flipped": False, "source_id": crop["source_id"],
                 "primitive": crop["primitive"], "box": crop["box"]},
                partial(_link_or_copy, crop["image"]),
            )  # fmt: skip

    def summarise(metadata: dict[str, list[dict]]) -> dict:
        return {
            "name": name,
            "settings": plan["settings"],
            "sources": sorted(
                ({"id": s["id"], "sha256": s["sha256"]} for s in plan["sources"]),
                key=lambda d: d["id"],
            ),
            "counts": {
                split: dict(Counter(row["primitive"] for row in rows))
                for split, rows in metadata.items()
            },
            "buckets": dict(
                Counter(
                    f"{r['bucket'][0]}x{r['bucket'][1]}" for rows in metadata.values() for r in rows
                )
            ),
        }

    return write_image_folder(output, images(), summarise)
