"""Concept generation with the base model and the artist's LoRA: prompts at any aspect
ratio near one megapixel, several seeds each, one PNG per image with a provenance sidecar
that is enough to regenerate it, and a contact sheet to choose from.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageOps

from blkassist.errors import ConfigError, ModelFileError
from blkassist.fsutil import atomic_path, write_json
from blkassist.probe import sha256_file
from blkassist.provenance import versions as provenance_versions

log = logging.getLogger(__name__)

MEGAPIXEL = 1024 * 1024  # Flux's "1 MP" is its 1024x1024 training size
ADAPTER_NAME = "concept"
_PACKAGES = (
    "blkassist",
    "torch",
    "diffusers",
    "transformers",
    "peft",
    "optimum-quanto",
    "safetensors",
    "pillow",
)


def versions() -> dict[str, str]:
    return provenance_versions(_PACKAGES)


def parse_aspect(aspect: float | str) -> float:
    """Width over height from 1.5, "1.5", "3:2" or "3x2"."""
    try:
        if isinstance(aspect, str) and re.fullmatch(r"\s*[\d.]+\s*[:x/]\s*[\d.]+\s*", aspect):
            width, height = (float(v) for v in re.split(r"[:x/]", aspect))
            value = width / height
        else:
            value = float(aspect)
    except (ValueError, ZeroDivisionError):
        value = float("nan")
    if not (0.1 <= value <= 10):  # also rejects nan
        raise ConfigError(f"aspect {aspect!r}: expected a width:height ratio such as 16:9 or 1.5")
    return value


def size_near_megapixel(
    aspect: float | str, megapixels: float = 1.0, multiple: int = 16
) -> tuple[int, int]:
    """(width, height), multiples of `multiple` (16 for Flux: VAE x8, 2x2 patches), with
    about `megapixels` x 1024^2 pixels at `aspect`."""
    ratio = parse_aspect(aspect)
    area = megapixels * MEGAPIXEL
    width = max(multiple, round(math.sqrt(area * ratio) / multiple) * multiple)
    height = max(multiple, round(math.sqrt(area / ratio) / multiple) * multiple)
    return width, height


def adapter_is_lokr(path: str | os.PathLike) -> bool:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return any(".lokr_" in key for key in handle.keys())  # noqa: SIM118 - not a dict


def load_adapter(pipe, path: str | os.PathLike, scale: float = 1.0, name=ADAPTER_NAME) -> str:
    """Load a LoRA (or LoKr) .safetensors into the pipeline's transformer at `scale`;
    returns the file's sha256 for provenance."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: LoRA file not found. Train one or fix the lora setting.")
    # Folder + weight_name: diffusers then reads the file's adapter metadata (rank, alpha,
    # targets); given the file path alone it infers alpha = rank, which applies an adapter
    # trained with alpha != rank at rank/alpha times its strength.
    where = {"weight_name": path.name, "adapter_name": name}
    if adapter_is_lokr(path):
        # FluxPipeline.load_lora_weights only accepts keys with "lora" in them.
        pipe.transformer.load_lora_adapter(str(path.parent), prefix="transformer", **where)
    else:
        pipe.load_lora_weights(str(path.parent), **where)
    pipe.set_adapters([name], adapter_weights=[scale])
    return sha256_file(path)


def render(
    pipe,
    *,
    seed: int,
    width: int,
    height: int,
    steps: int,
    guidance: float,
    prompt: str | None = None,
    prompt_embeds: torch.Tensor | None = None,
    pooled_prompt_embeds: torch.Tensor | None = None,
    max_sequence_length: int = 512,
    output_type: str = "pil",
) -> Image.Image | torch.Tensor:
    """One image. The starting noise comes from a CPU generator, so a seed gives the same
    image on any device (up to the device's arithmetic). With output_type "latent", the
    packed latents (1, tokens, 64) instead, for a decoder of one's own."""
    multiple = pipe.vae_scale_factor * 2
    if width % multiple or height % multiple:
        raise ConfigError(f"size {width}x{height}: both sides must be multiples of {multiple}")
    images = pipe(
        prompt=prompt,
        prompt_embeds=prompt_embeds,
        pooled_prompt_embeds=pooled_prompt_embeds,
        width=width,
        height=height,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator("cpu").manual_seed(seed),
        max_sequence_length=max_sequence_length,
        output_type=output_type,
    ).images
    return images if output_type == "latent" else images[0]


def contact_sheet(
    rows: list[list[Image.Image]], labels: list[str] | None = None, cell: int = 256
) -> Image.Image:
    """A grid (one row per prompt, one column per seed); each image scaled to fit a square
    cell, the row's label above it."""
    label_h = 14 if labels else 0
    columns = max(len(row) for row in rows)
    sheet = Image.new("RGB", (columns * cell, len(rows) * (cell + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(rows):
        top = r * (cell + label_h)
        if labels:
            draw.text((2, top + 1), labels[r][: cell * columns // 6], fill="black")
        for c, image in enumerate(row):
            thumb = ImageOps.contain(image.convert("RGB"), (cell, cell), Image.Resampling.LANCZOS)
            x = c * cell + (cell - thumb.width) // 2
            y = top + label_h + (cell - thumb.height) // 2
            sheet.paste(thumb, (x, y))
    return sheet


def save_png(image: Image.Image, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def _slug(text: str, length: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:length].strip("-") or "prompt"


@dataclass(frozen=True)
class SweepRow:
    """One prompt of a sweep: a contact-sheet row, an image per seed."""

    prompt: str  # as configured: it names the files
    text: str  # as encoded
    width: int
    height: int
    label: str  # the row's label on the contact sheet
    fields: dict  # what each of the row's records adds after "prompt"


def prompt_items(prompts: list[str | dict]) -> list[dict]:
    """Prompts as dicts: a string is {"prompt": it}; a dict may carry its own settings."""
    return [{"prompt": item} if isinstance(item, str) else dict(item) for item in prompts]


def prompt_size(
    item: dict, size: tuple[int, int] | None, aspect: float | str, megapixels: float, multiple: int
) -> tuple[int, int]:
    """A prompt's (width, height): its own "size", else `size`, else its own "aspect" (or
    `aspect`) at `megapixels`. Sides are multiples of `multiple`."""
    chosen = item.get("size") or size
    if chosen:
        width, height = chosen
        if width % multiple or height % multiple:
            raise ConfigError(f"size {width}x{height}: sides must be multiples of {multiple}")
        return width, height
    return size_near_megapixel(item.get("aspect", aspect), megapixels, multiple)


def encode_prompts(components, pipe, texts: list[str], max_sequence_length: int) -> list[tuple]:
    """(prompt_embeds, pooled) of every text. All are encoded first; then the text encoders
    leave the device before the transformer comes: the device never holds T5 and the
    transformer at once."""
    components.to_device("text_encoder", "text_encoder_2")
    with torch.no_grad():
        encoded = [
            pipe.encode_prompt(text, prompt_2=None, device=components.device,
                               max_sequence_length=max_sequence_length)[:2]
            for text in texts
        ]  # fmt: skip
    components.park_text_encoders()
    components.to_device("transformer", "vae")
    return encoded


def sweep(
    pipe,
    rows: list[SweepRow],
    encoded: list[tuple],
    output_dir: str | os.PathLike,
    *,
    seeds,
    rendering: dict,
    shared: dict,
    index: str,
    output_type: str = "pil",
    finish: Callable | None = None,
) -> list[dict]:
    """Every row (prompt) x seed: render (`rendering`: steps, guidance, max_sequence_length),
    `finish(rendered, row)` -> (PNG image, record fields, contact-sheet cell) (default: the
    image as it is), then the PNG and its sidecar (the row's fields, the rendering, the
    finish's fields, then `shared`); at the end the contact sheet and `index`, the list of
    all records."""
    output_dir = Path(output_dir)
    finish = finish or (lambda image, row: (image, {}, image))
    records, sheet, labels = [], [], []
    for number, (row, (embeds, pooled)) in enumerate(zip(rows, encoded, strict=True)):
        cells = []
        for seed in seeds:
            rendered = render(pipe, seed=seed, width=row.width, height=row.height,
                              prompt_embeds=embeds, pooled_prompt_embeds=pooled,
                              output_type=output_type, **rendering)  # fmt: skip
            image, fields, cell = finish(rendered, row)
            name = f"{number:02d}-{_slug(row.prompt)}-seed{seed}"
            save_png(image, output_dir / f"{name}.png")
            record = {
                "image": f"{name}.png",
                "prompt": row.prompt,
                **row.fields,
                "seed": seed,
                "width": row.width,
                "height": row.height,
                **rendering,
                **fields,
                **shared,
            }
            write_json(output_dir / f"{name}.json", record)
            records.append(record)
            cells.append(cell)
        sheet.append(cells)
        labels.append(row.label)
    save_png(contact_sheet(sheet, labels), output_dir / "contact_sheet.png")
    write_json(output_dir / index, records)
    return records


def generate_concepts(
    components,
    prompts: list[str | dict],
    output_dir: str | os.PathLike,
    *,
    seeds: tuple[int, ...] | list[int] = (0, 1, 2, 3),
    aspect: float | str = 1.0,
    megapixels: float = 1.0,
    size: tuple[int, int] | None = None,
    steps: int = 28,
    guidance: float = 3.5,
    lora: str | os.PathLike | None = None,
    lora_scale: float = 1.0,
    max_sequence_length: int = 512,
    licences: list[dict] | None = None,
) -> list[dict]:
    """Images for every prompt and seed, with sidecars (`licences`: the terms of the models
    used, blkassist.licences) and a contact sheet.

    A prompt may be a dict with its own "aspect" or "size" [w, h]. The LoRA is removed
    from the model again afterwards, so `components` can be reused.
    """
    pipe = components.pipeline()
    lora_record = None
    if lora is not None:
        digest = load_adapter(pipe, lora, lora_scale)
        lora_record = {"file": str(lora), "sha256": digest, "scale": lora_scale}
    multiple = components.vae_scale_factor * 2
    rows = [
        SweepRow(item["prompt"], item["prompt"],
                 *prompt_size(item, size, aspect, megapixels, multiple),
                 label=f"{number:02d} {item['prompt']}", fields={})
        for number, item in enumerate(prompt_items(prompts))
    ]  # fmt: skip
    shared = {"lora": lora_record, "model": components.describe(), "licences": licences,
              "versions": versions()}  # fmt: skip
    try:
        encoded = encode_prompts(components, pipe, [r.text for r in rows], max_sequence_length)
        rendering = {"steps": steps, "guidance": guidance,
                     "max_sequence_length": max_sequence_length}  # fmt: skip
        records = sweep(pipe, rows, encoded, output_dir, seeds=seeds, rendering=rendering,
                        shared=shared, index="concepts.json")  # fmt: skip
    finally:
        if lora is not None:
            pipe.delete_adapters(ADAPTER_NAME)
    log.info("%d concept images in %s", len(records), output_dir)
    return records


def generate_run(
    model: str,
    prompts: list[str | dict],
    output_dir: str,
    lock_dir: str,
    threads: int,
    quantize: bool = False,
    **options,
) -> list[dict]:
    """A workflow job: lease a device, load the model, generate (options as above)."""
    from blkassist.devices import lease_device
    from blkassist.flux.loader import load_flux

    torch.set_num_threads(max(1, threads))
    with lease_device(lock_dir) as lease:
        # Deferred: generate_concepts places the parts in the order that needs least memory.
        components = load_flux(model, lease.torch_device, quantize=quantize, defer=True)
        return generate_concepts(components, prompts, output_dir, **options)
