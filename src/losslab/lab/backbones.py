"""The networks of the lab tasks.

Embedding backbones of the few-shot literature (``fewshot`` and ``retrieval`` tasks):

* :class:`Conv4` -- four blocks ``conv3x3(64) -> BatchNorm -> ReLU -> maxpool2`` (Vinyals et al.;
  Snell et al.). By default the feature map is global-average-pooled to a 64-d embedding, as in
  the SuSana Distancia code; ``flatten=True`` flattens it instead as the original ProtoNet
  (1600-d for 84x84 inputs: 64 x 5 x 5; 64-d for 28x28 inputs, whose last map is 1 x 1).
* :class:`ResNet12` -- four residual blocks of three ``conv3x3 -> BN -> LeakyReLU(0.1)`` with a
  ``1x1`` projection shortcut and ``maxpool2`` (widths 64-128-256-512 by default, as TADAM and
  the SuSana Distancia ResNet-12 runs), global average pooling -> 512-d. Meant for GPU users.

:class:`EmbeddingNet` (``retrieval``): a backbone, an optional linear head and an optional L2
normalisation. Classifiers (``noisy``, :func:`build_classifier`): :class:`SmallCNN` -- 2 x
(conv3x3-32 -> BN -> ReLU -> maxpool2) -> FC-128 -> ReLU -> FC-C, channels-last; ``mlp`` --
flatten -> 256 -> ReLU -> 256 -> ReLU -> C.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "BACKBONES",
    "CLASSIFIERS",
    "Conv4",
    "EmbeddingNet",
    "ResNet12",
    "SmallCNN",
    "build_backbone",
    "build_classifier",
    "embedding_dim",
]


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


class EmbeddingNet(nn.Module):
    """Backbone, optional linear head (``out_dim``; 0: none), optional L2 normalisation."""

    def __init__(self, backbone: nn.Module, in_dim: int, out_dim: int, normalize: bool) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(in_dim, out_dim) if out_dim else nn.Identity()
        self.normalize = normalize

    def forward(self, x: Tensor) -> Tensor:
        z = self.head(self.backbone(x))
        return nn.functional.normalize(z, dim=1) if self.normalize else z


# --------------------------------------------------------------------------------------------
# Classifiers
# --------------------------------------------------------------------------------------------


class SmallCNN(nn.Module):
    """2 x (conv3x3-``width`` -> BN -> ReLU -> maxpool2) -> FC-``hidden`` -> ReLU -> FC-C."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int, *,
                 width: int = 32, hidden: int = 128) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(2):
            layers += [nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c = width
        self.features = nn.Sequential(*layers)
        side = image_size // 4
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(width * side * side, hidden),
                                  nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        # channels-last activations: 2-4x faster convolutions on CPU (oneDNN) than NCHW
        return self.head(self.features(x.contiguous(memory_format=torch.channels_last)))


CLASSIFIERS = ("cnn", "mlp")


def build_classifier(name: str, in_channels: int, image_size: int, num_classes: int
                     ) -> nn.Module:
    """``cnn`` (:class:`SmallCNN`, channels-last) or ``mlp`` (``D -> 256 -> 256 -> C``, ReLU)."""
    if name == "cnn":
        model = SmallCNN(in_channels, image_size, num_classes)
        return model.to(memory_format=torch.channels_last)  # pyright: ignore[reportCallIssue]
    if name == "mlp":
        d = in_channels * image_size * image_size
        return nn.Sequential(nn.Flatten(), nn.Linear(d, 256), nn.ReLU(inplace=True),
                             nn.Linear(256, 256), nn.ReLU(inplace=True),
                             nn.Linear(256, num_classes))
    raise ValueError(f"model must be one of {CLASSIFIERS}, got {name!r}")
