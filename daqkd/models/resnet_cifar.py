"""CIFAR-style ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, §4.2).

Three stages of 16/32/64 channels with n basic blocks each (depth = 6n + 2) and parameter-free
"option A" shortcuts (strided identity, zero-padded channels), which is what gives ResNet-20 its
published 0.27 M parameters.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from daqkd.models import register_model


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and zero-pad channels up to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.pad = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return x


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = PadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Input [B, in_channels, H, W] (any H, W ≥ 8) → logits [B, num_classes]."""

    def __init__(self, depth: int, num_classes: int, in_channels: int = 3, width: int = 16):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        channels = [width, 2 * width, 4 * width]
        layers, c_in = [], width
        for i, c in enumerate(channels):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(c_in, c, stride=2 if (i > 0 and j == 0) else 1))
                c_in = c
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


_TAPS = ("layer1", "layer2", "layer3", "flatten")


@register_model("resnet8", feature_layers=_TAPS)
def resnet8(num_classes: int, in_channels: int = 3, image_size: int | None = None) -> CifarResNet:
    """One block per stage: the smallest of the family (the test suite's stand-in for ResNet-20)."""
    return CifarResNet(8, num_classes, in_channels)


@register_model("resnet20", feature_layers=_TAPS)
def resnet20(num_classes: int, in_channels: int = 3, image_size: int | None = None) -> CifarResNet:
    return CifarResNet(20, num_classes, in_channels)


@register_model("resnet32", feature_layers=_TAPS)
def resnet32(num_classes: int, in_channels: int = 3, image_size: int | None = None) -> CifarResNet:
    return CifarResNet(32, num_classes, in_channels)


@register_model("resnet56", feature_layers=_TAPS)
def resnet56(num_classes: int, in_channels: int = 3, image_size: int | None = None) -> CifarResNet:
    return CifarResNet(56, num_classes, in_channels)
