"""The few-shot captioning prompt, kept in resources/ so the artist can refine it."""

from __future__ import annotations

import base64
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import pyvips
import yaml

from blkassist.errors import ConfigError

INSTRUCTION = "Write the caption for this image."


@dataclass(frozen=True)
class Example:
    caption: str
    image: Path | None


@dataclass(frozen=True)
class FewShotPrompt:
    system: str
    examples: tuple[Example, ...]
    digest: str  # changes whenever the text, an example or an example image changes

    @classmethod
    def load(cls, system_path: str | Path, examples_path: str | Path) -> FewShotPrompt:
        system_path, examples_path = Path(system_path), Path(examples_path)
        for path, key in ((system_path, "system_prompt"), (examples_path, "examples")):
            if not path.is_file():
                raise ConfigError(f"{path}: not found; fix captions.{key} in your config")
        system = system_path.read_text().strip()
        entries = yaml.safe_load(examples_path.read_text()) or []
        digest = hashlib.sha256(system.encode())
        examples = []
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict) or not str(entry.get("caption", "")).strip():
                raise ConfigError(f"{examples_path}: example {index + 1} needs a 'caption'")
            image = entry.get("image")
            image_path = (examples_path.parent / image) if image else None
            if image_path is not None and not image_path.is_file():
                raise ConfigError(
                    f"{examples_path}: example {index + 1} image {image_path} not found"
                )
            caption = " ".join(str(entry["caption"]).split())
            digest.update(caption.encode())
            if image_path is not None:
                digest.update(image_path.read_bytes())
            examples.append(Example(caption, image_path))
        return cls(system, tuple(examples), digest.hexdigest())

    def messages(self, image_url: str) -> list[dict]:
        """Chat messages: system prompt (with text-only examples), image examples as
        earlier turns, then the image to caption."""
        text_examples = [e.caption for e in self.examples if e.image is None]
        system = self.system
        if text_examples:
            system += "\n\nExamples of good captions:\n" + "\n".join(
                f"- {c}" for c in text_examples
            )
        messages: list[dict] = [{"role": "system", "content": system}]
        for example in self.examples:
            if example.image is not None:
                messages.append(_user_turn(image_data_url(example.image)))
                messages.append({"role": "assistant", "content": example.caption})
        messages.append(_user_turn(image_url))
        return messages


def _user_turn(url: str) -> dict:
    return {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": INSTRUCTION},
        ],
    }


def image_data_url(path: str | Path, long_side: int = 512) -> str:
    """The image as an inline PNG data URL, reduced so its long side is `long_side`."""
    image = pyvips.Image.thumbnail(str(path), long_side)
    if image.hasalpha():
        image = image.flatten(background=255)
    buffer = io.BytesIO(image.pngsave_buffer(compression=6))
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
