"""Generated tokenizers for the random and the ink Flux models: small vocabularies built in
code (no download), whose ids are valid in the real models' vocabularies."""

from __future__ import annotations

import string


def tiny_clip_tokenizer():
    """A byte-level CLIP tokenizer without merges: every character is a token."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for char in alphabet:
            vocab[char + suffix] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def tiny_t5_tokenizer():
    """A unigram T5 tokenizer over printable ASCII (pad 0, eos 1, unk 2, like T5's)."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    for char in string.ascii_letters + string.digits + string.punctuation:
        pieces += [(char, -3.0), ("▁" + char, -3.5)]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)
