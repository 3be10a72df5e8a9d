"""Losses for Real-ESRGAN fine-tuning: L1, VGG19 perceptual, relativistic average GAN."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from blkassist.errors import ModelFileError

# Feature layers of torchvision's vgg19().features and their weights (Real-ESRGAN's choice).
VGG_LAYERS = {"conv1_2": (2, 0.1), "conv2_2": (7, 0.1), "conv3_4": (16, 1.0),
              "conv4_4": (25, 1.0), "conv5_4": (34, 1.0)}  # fmt: skip
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class PerceptualLoss(nn.Module):
    """L1 between VGG19 features (before ReLU) of output and target, weights from a local file."""

    def __init__(self, weights_path: str | Path):
        super().__init__()
        import torchvision

        path = Path(weights_path)
        if not path.is_file():
            raise ModelFileError(
                f"{path}: VGG19 weights not found; the perceptual loss needs torchvision's "
                "vgg19 state dict there, or set its weight to 0 (esrgan.RUN.loss.perceptual)"
            )
        vgg = torchvision.models.vgg19(weights=None)
        try:
            vgg.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as error:
            raise ModelFileError(f"{path}: not torchvision vgg19 weights ({error})") from None
        last = max(index for index, _ in VGG_LAYERS.values())
        self.features = vgg.features[: last + 1].eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))

    def _features(self, image: torch.Tensor) -> dict[int, torch.Tensor]:
        wanted = {index for index, _ in VGG_LAYERS.values()}
        out, x = {}, (image - self.mean) / self.std
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in wanted:
                out[index] = x
        return out

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        got, want = self._features(output), self._features(target.detach())
        return sum(weight * F.l1_loss(got[i], want[i]) for i, weight in VGG_LAYERS.values())


def relativistic_generator_loss(real_logits, fake_logits) -> torch.Tensor:
    """RaGAN, generator side: fakes should look more real than the average real."""
    real_rel = real_logits - fake_logits.mean()
    fake_rel = fake_logits - real_logits.mean()
    return 0.5 * (
        F.binary_cross_entropy_with_logits(real_rel, torch.zeros_like(real_rel))
        + F.binary_cross_entropy_with_logits(fake_rel, torch.ones_like(fake_rel))
    )


def relativistic_discriminator_loss(real_logits, fake_logits) -> torch.Tensor:
    real_rel = real_logits - fake_logits.mean()
    fake_rel = fake_logits - real_logits.mean()
    return 0.5 * (
        F.binary_cross_entropy_with_logits(real_rel, torch.ones_like(real_rel))
        + F.binary_cross_entropy_with_logits(fake_rel, torch.zeros_like(fake_rel))
    )
