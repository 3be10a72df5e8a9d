"""Training sets from the normalised corpus: full compositions and detail crops at a set
ratio, multi-resolution aspect buckets, optional mirrored copies, a held-out split.

Layout (accepted by diffusers' imagefolder loader and by sidecar-caption trainers):

    datasets/NAME/{train,validation}/RES/WxH/ID-KIND[-flip].png   + .txt caption beside it
    datasets/NAME/{train,validation}/metadata.jsonl               file_name, text, bucket...
    datasets/NAME/dataset.json                                    counts, settings, sources

The plan is a pure function of the manifest, the captions and the settings; rendering
holds one source image in memory at a time.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import pyvips

from blkassist.fsutil import atomic_path

MAX_ASPECT = 2.5
MAX_UPSCALE = 1.25  # a bucket may enlarge its crop at most this much
DETAIL_ZOOM = (1.0, 1.6)  # detail crop side in source pixels, relative to the bucket side


@dataclass(frozen=True)
class SourceImage:
    id: str
    sha256: str
    image: str
    width: int
    height: int
    caption: str


@dataclass(frozen=True)
class Sample:
    source_id: str
    split: str
    kind: str  # "full" or "detail"
    number: int
    resolution: int
    bucket: tuple[int, int]
    box: tuple[int, int, int, int]  # crop in source pixels: x0, y0, x1, y1
    flipped: bool
    caption: str

    @property
    def file_name(self) -> str:
        flip = "-flip" if self.flipped else ""
        w, h = self.bucket
        return f"{self.resolution}/{w}x{h}/{self.source_id}-{self.kind}{self.number}{flip}.png"


def aspect_buckets(resolution: int, step: int) -> list[tuple[int, int]]:
    """Bucket sizes (multiples of `step`) with about resolution^2 pixels, aspect <= 2.5."""
    buckets = set()
    for width in range(step, int(resolution * math.sqrt(MAX_ASPECT)) + step, step):
        height = (resolution * resolution // width) // step * step
        if height >= step and 1 / MAX_ASPECT <= width / height <= MAX_ASPECT:
            buckets.add((width, height))
    return sorted(buckets)


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    aspect = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - aspect), -b[0] * b[1]))


def _unit(*parts) -> float:
    """A deterministic number in [0, 1) from `parts`."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(image_id: str, fraction: float, seed: int) -> str:
    return "validation" if _unit("split", seed, image_id) < fraction else "train"


_LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def mirrored_caption(caption: str) -> str:
    def swap(match: re.Match) -> str:
        word = {"left": "right", "right": "left"}[match.group(0).lower()]
        return word.capitalize() if match.group(0)[0].isupper() else word

    return _LEFT_RIGHT.sub(swap, caption)


def _centre_crop(width: int, height: int, bucket: tuple[int, int]) -> tuple[int, int, int, int]:
    target = bucket[0] / bucket[1]
    if width / height > target:
        crop_w, crop_h = round(height * target), height
    else:
        crop_w, crop_h = width, round(width / target)
    x0, y0 = (width - crop_w) // 2, (height - crop_h) // 2
    return x0, y0, x0 + crop_w, y0 + crop_h


def plan_samples(images: list[SourceImage], settings: dict, seed: int) -> list[Sample]:
    resolutions = sorted(settings["resolutions"])
    buckets = {r: aspect_buckets(r, settings["bucket_step"]) for r in resolutions}
    samples: list[Sample] = []
    full_count = Counter()
    for image in images:
        split = split_of(image.id, settings["validation_fraction"], seed)
        for r in resolutions:
            bucket = nearest_bucket(image.width, image.height, buckets[r])
            box = _centre_crop(image.width, image.height, bucket)
            if bucket[0] > (box[2] - box[0]) * MAX_UPSCALE:
                continue  # too small for this resolution: do not invent pixels
            samples.append(Sample(image.id, split, "full", 0, r, bucket, box, False,
                                  image.caption))  # fmt: skip
            full_count[split] += 1
    ratio = settings["detail_ratio"]
    for split in ("train", "validation"):
        pool = [i for i in images if split_of(i.id, settings["validation_fraction"], seed) == split]
        wanted = round(full_count[split] * ratio / (1 - ratio)) if pool else 0
        pool.sort(key=lambda i: _unit("order", seed, i.id))
        for n in range(wanted):
            image = pool[n % len(pool)]
            fitting = [r for r in resolutions if r <= min(image.width, image.height)]
            if not fitting:
                continue
            r = fitting[int(_unit("res", seed, image.id, n) * len(fitting))]
            zoom = DETAIL_ZOOM[0] + _unit("zoom", seed, image.id, n) * (
                DETAIL_ZOOM[1] - DETAIL_ZOOM[0]
            )
            side = min(round(r * zoom), image.width, image.height)
            x0 = int(_unit("x", seed, image.id, n) * (image.width - side + 1))
            y0 = int(_unit("y", seed, image.id, n) * (image.height - side + 1))
            samples.append(Sample(image.id, split, "detail", n, r, (r, r),
                                  (x0, y0, x0 + side, y0 + side), False,
                                  f"close-up detail, {image.caption}"))  # fmt: skip
    if settings["flip"]:
        samples += [
            Sample(**{**asdict(s), "bucket": s.bucket, "box": s.box, "flipped": True,
                      "caption": mirrored_caption(s.caption)})
            for s in samples
            if s.split == "train"
        ]  # fmt: skip
    return sorted(samples, key=lambda s: (s.source_id, s.split, s.file_name))


def _render(source: pyvips.Image, sample: Sample) -> pyvips.Image:
    x0, y0, x1, y1 = sample.box
    crop = source.crop(x0, y0, x1 - x0, y1 - y0)
    w, h = sample.bucket
    crop = crop.resize(w / crop.width, vscale=h / crop.height, kernel="lanczos3")
    if (crop.width, crop.height) != (w, h):  # libvips rounds; pad or trim the last pixel
        crop = crop.gravity("centre", w, h, extend="copy")
    return crop.fliphor() if sample.flipped else crop


@dataclass(frozen=True)
class DatasetImage:
    """One image of a training set: where it goes, its caption, its further metadata.jsonl
    fields, and how to write its PNG (called once, with the path to write)."""

    split: str
    file_name: str  # relative to the split folder: RES/WxH/NAME.png
    caption: str
    fields: dict
    write_png: Callable[[Path], None]


def write_image_folder(
    output: str,
    images: Iterable[DatasetImage],
    summarise: Callable[[dict[str, list[dict]]], dict],
) -> dict:
    """Write a training set in the layout above, atomically: each PNG with its .txt caption,
    metadata.jsonl per split, and dataset.json from `summarise(rows by split)`."""
    with atomic_path(output) as tmp:
        metadata: dict[str, list[dict]] = {"train": [], "validation": []}
        for image in images:
            path = tmp / image.split / image.file_name
            path.parent.mkdir(parents=True, exist_ok=True)
            image.write_png(path)
            path.with_suffix(".txt").write_text(image.caption + "\n")
            metadata[image.split].append(
                {"file_name": image.file_name, "text": image.caption, **image.fields}
            )
        for split, rows in metadata.items():
            if rows:
                with open(tmp / split / "metadata.jsonl", "w") as handle:
                    handle.writelines(json.dumps(row, sort_keys=True) + "\n" for row in rows)
        summary = summarise(metadata)
        (tmp / "dataset.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def with_sources(items: Iterable, image_of: Callable[[object], str]) -> Iterator[tuple]:
    """(item, its decoded source) for items sorted by source: each source decoded once, alpha
    flattened onto white, and only one in memory at a time."""
    current, source = None, None
    for item in items:
        path = image_of(item)
        if path != current:
            current = path
            source = pyvips.Image.new_from_file(path)
            if source.hasalpha():
                source = source.flatten(background=255)
            source = source.copy_memory()
        yield item, source


def _rendered(samples: list[Sample], by_id: dict[str, SourceImage]) -> Iterator[DatasetImage]:
    for sample, source in with_sources(samples, lambda s: by_id[s.source_id].image):
        yield DatasetImage(
            sample.split, sample.file_name, sample.caption,
            {"bucket": list(sample.bucket), "resolution": sample.resolution,
             "kind": sample.kind, "flipped": sample.flipped, "source_id": sample.source_id},
            partial(_save_png, _render(source, sample)),
        )  # fmt: skip


def _save_png(image: pyvips.Image, path: Path) -> None:
    image.pngsave(str(path), compression=3, keep="none")


def build_dataset(name: str, images: list[SourceImage], settings: dict, output: str) -> dict:
    seed = settings["seed"]
    samples = plan_samples(images, settings, seed)
    by_id = {image.id: image for image in images}

    def summarise(metadata: dict[str, list[dict]]) -> dict:
        return {
            "name": name,
            "settings": settings,
            "sources": sorted(
                ({"id": i.id, "sha256": i.sha256} for i in images), key=lambda d: d["id"]
            ),
            "counts": {
                split: dict(Counter(f"{r['kind']}" for r in rows))
                for split, rows in metadata.items()
            },
            "buckets": dict(Counter(f"{s.bucket[0]}x{s.bucket[1]}" for s in samples)),
            "detail_share": _share(samples),
        }

    return write_image_folder(output, _rendered(samples, by_id), summarise)


def _share(samples: list[Sample]) -> float:
    unflipped = [s for s in samples if not s.flipped]
    return round(sum(s.kind == "detail" for s in unflipped) / max(len(unflipped), 1), 4)


def source_images(manifests: list[str], captions: dict[str, str]) -> list[SourceImage]:
    """Corpus images with their captions (image id -> caption, as
    blkassist.captions.sidecars.read_captions gives them), each distinct scan once (across
    collections). The caller reads the captions: the corpus never imports captions (which
    import the corpus's manifests)."""
    from blkassist.corpus.normalise import distinct_rows

    images = []
    for row in distinct_rows(manifests):
        images.append(
            SourceImage(row.id, row.sha256, row.image, row.width, row.height, captions[row.id])
        )
    return images
