"""Embedding backbones of the few-shot literature: Conv-4 and ResNet-12.

* :class:`Conv4` -- four blocks ``conv3x3(64) -> BatchNorm -> ReLU -> maxpool2`` (Vinyals et al.;
  Snell et al.). By default the feature map is global-average-pooled to a 64-d embedding, as in
  the SuSana Distancia code; ``flatten=True`` flattens it instead as the original ProtoNet
  (1600-d for 84x84 inputs: 64 x 5 x 5; 64-d for 28x28 inputs, whose last map is 1 x 1).
* :class:`ResNet12` -- four residual blocks of three ``conv3x3 -> BN -> LeakyReLU(0.1)`` with a
  ``1x1`` projection shortcut and ``maxpool2`` (widths 64-128-256-512 by default, as TADAM and
  the SuSana Distancia ResNet-12 runs), global average pooling -> 512-d. Meant for GPU users.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["BACKBONES", "Conv4", "ResNet12", "build_backbone"]


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class Conv4(nn.Module):
    """Conv-4 embedding network: ``[B, C, H, W] -> [B, 64]`` (or flattened with ``flatten``)."""

    def __init__(self, in_channels: int = 3, hidden: int = 64, *, flatten: bool = False) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            _conv_block(in_channels, hidden),
            _conv_block(hidden, hidden),
            _conv_block(hidden, hidden),
            _conv_block(hidden, hidden),
        )
        self.flatten = flatten

    def forward(self, x: Tensor) -> Tensor:
        h = self.encoder(x)
        return h.flatten(1) if self.flatten else h.mean(dim=(2, 3))


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(3):
            layers += [
                nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
            ]
            if i < 2:
                layers.append(nn.LeakyReLU(0.1))
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.out = nn.Sequential(nn.LeakyReLU(0.1), nn.MaxPool2d(2))

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(x) + self.shortcut(x))


class ResNet12(nn.Module):
    """ResNet-12 embedding network: ``[B, C, H, W] -> [B, widths[-1]]``."""

    def __init__(self, in_channels: int = 3, widths: Sequence[int] = (64, 128, 256, 512)) -> None:
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"widths must have 4 entries, got {tuple(widths)}")
        chans = [in_channels, *widths]
        self.blocks = nn.Sequential(*[_ResBlock(chans[i], chans[i + 1]) for i in range(4)])

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x).mean(dim=(2, 3))


BACKBONES = ("conv4", "resnet12")


def build_backbone(name: str, in_channels: int, *, flatten: bool = False) -> nn.Module:
    """Build a backbone by name (``"conv4"`` or ``"resnet12"``)."""
    if name == "conv4":
        return Conv4(in_channels, flatten=flatten)
    if name == "resnet12":
        if flatten:
            raise ValueError("flatten applies to conv4 only")
        return ResNet12(in_channels)
    raise ValueError(f"backbone must be one of {BACKBONES}, got {name!r}")


def embedding_dim(model: nn.Module, in_channels: int, image_size: int) -> int:
    """Output dimension of ``model`` for ``[1, in_channels, image_size, image_size]`` inputs."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        d = model(torch.zeros(1, in_channels, image_size, image_size)).shape[1]
    model.train(was_training)
    return int(d)
