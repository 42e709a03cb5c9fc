"""VGG with batch norm for small images (Simonyan & Zisserman, ICLR 2015), in the CIFAR layout
used by the KD literature (CRD/RepDistiller): five conv stages of 64/128/256/512/512 channels,
max-pooling after the first four, global average pooling and one linear classifier.
VGG-8 has one conv per stage, VGG-13 two.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from daqkd.models import register_model

STAGES = {"vgg8": [1, 1, 1, 1, 1], "vgg13": [2, 2, 2, 2, 2]}
WIDTHS = [64, 128, 256, 512, 512]


class VGG(nn.Module):
    """Input [B, in_channels, H, W] (H, W ≥ 16) → logits [B, num_classes]."""

    def __init__(self, depths: list[int], num_classes: int, in_channels: int = 3):
        super().__init__()
        c_in = in_channels
        for i, (n, c) in enumerate(zip(depths, WIDTHS)):
            layers: list[nn.Module] = []
            for _ in range(n):
                layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
                c_in = c
            if i < 4:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            setattr(self, f"block{i}", nn.Sequential(*layers))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(5):
            x = getattr(self, f"block{i}")(x)
        return self.classifier(self.flatten(self.pool(x)))


_TAPS = ("block1", "block2", "block4", "flatten")


@register_model("vgg8", feature_layers=_TAPS)
def vgg8(num_classes: int, in_channels: int = 3, image_size: int | None = None) -> VGG:
    return VGG(STAGES["vgg8"], num_classes, in_channels)


@register_model("vgg13", feature_layers=_TAPS)
def vgg13(num_classes: int, in_channels: int = 3, image_size: int | None = None) -> VGG:
    return VGG(STAGES["vgg13"], num_classes, in_channels)
