"""ESRGAN's generator (RRDBNet: residual-in-residual dense blocks), for inference, in torch
alone.

The network is the one Real-ESRGAN's weights are trained for, with basicsr's state-dict
names (conv_first, body.N.rdbK.convI, conv_body, conv_up1/2, conv_hr, conv_last), so its
.pth files load strictly. It is written here rather than imported from basicsr because
importing basicsr (which imports torchvision, its datasets, losses and metrics, and
scipy.stats) costs ~3.5 s of CPU in every tile job; basicsr remains the training code's
and a test keeps this network's output equal to basicsr's for every scale.

x4 works on the image itself; x2 and x1 models first fold each 2x2 or 4x4 block of pixels
into channels (pixel unshuffle), so every model upsamples 4x inside.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from blkassist.sr.weights import UNSHUFFLE

_RESIDUAL_SCALE = 0.2  # each dense block's and each RRDB's residual is scaled by this
_SLOPE = 0.2  # LeakyReLU's negative slope


def _conv(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, 1, 1)


class DenseBlock(nn.Module):
    """Five 3x3 convolutions, each seeing the block's input and every earlier output."""

    def __init__(self, num_feat: int, num_grow_ch: int):
        super().__init__()
        for i in range(1, 6):
            out_ch = num_feat if i == 5 else num_grow_ch
            self.add_module(f"conv{i}", _conv(num_feat + (i - 1) * num_grow_ch, out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for i in range(1, 5):
            conv = getattr(self, f"conv{i}")
            features.append(F.leaky_relu(conv(torch.cat(features, 1)), _SLOPE))
        return self.conv5(torch.cat(features, 1)) * _RESIDUAL_SCALE + x


class RRDB(nn.Module):
    """Three dense blocks in a row, with a scaled residual around them."""

    def __init__(self, num_feat: int, num_grow_ch: int):
        super().__init__()
        self.rdb1 = DenseBlock(num_feat, num_grow_ch)
        self.rdb2 = DenseBlock(num_feat, num_grow_ch)
        self.rdb3 = DenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * _RESIDUAL_SCALE + x


class RRDBNet(nn.Module):
    """The generator; the constructor takes basicsr's RRDBNet arguments
    (blkassist.sr.weights.rrdbnet_arch reads them off a state dict)."""

    def __init__(self, num_in_ch: int, num_out_ch: int, scale: int = 4, num_feat: int = 64,
                 num_block: int = 23, num_grow_ch: int = 32):  # fmt: skip
        super().__init__()
        self.scale = scale
        self.conv_first = _conv(num_in_ch * UNSHUFFLE[scale] ** 2, num_feat)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = _conv(num_feat, num_feat)
        self.conv_up1 = _conv(num_feat, num_feat)
        self.conv_up2 = _conv(num_feat, num_feat)
        self.conv_hr = _conv(num_feat, num_feat)
        self.conv_last = _conv(num_feat, num_out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if UNSHUFFLE[self.scale] > 1:
            x = F.pixel_unshuffle(x, UNSHUFFLE[self.scale])
        features = self.conv_first(x)
        features = features + self.conv_body(self.body(features))
        for conv in (self.conv_up1, self.conv_up2):
            features = F.interpolate(features, scale_factor=2, mode="nearest")
            features = F.leaky_relu(conv(features), _SLOPE)
        return self.conv_last(F.leaky_relu(self.conv_hr(features), _SLOPE))
