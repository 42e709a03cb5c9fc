"""MobileNetV2 (Sandler et al., CVPR 2018), CIFAR variant: the ImageNet architecture with the
stem and the second stage at stride 1, so 32×32 inputs keep a 4×4 map before pooling.
Inverted residual blocks (expansion t, output c, repeats n, stride s) as in the paper's Table 2.
With 3 input channels and 1000 classes it has exactly torchvision's mobilenet_v2 parameter count
(3,504,872); strides change no parameter.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from daqkd.models import register_model

# (expansion t, channels c, repeats n, stride s); CIFAR: stride 1 in the 2nd stage (ImageNet: 2).
SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int):
        super().__init__()
        hidden = c_in * expansion
        layers = [] if expansion == 1 else [conv_bn(c_in, hidden, 1)]
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), conv_bn(hidden, c_out, 1, act=False)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, stem_stride: int = 1, settings=SETTINGS):
        super().__init__()
        self.stem = conv_bn(in_channels, 32, 3, stem_stride)
        blocks, c_in = [], 32
        for t, c, n, s in settings:
            for i in range(n):
                blocks.append(InvertedResidual(c_in, c, s if i == 0 else 1, t))
                c_in = c
        self.features = nn.Sequential(*blocks)
        self.head = conv_bn(c_in, 1280, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(1280, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.features(self.stem(x)))
        return self.classifier(self.flatten(self.pool(x)))


@register_model("mobilenetv2", feature_layers=("features.2", "features.6", "features.13", "flatten"))
def mobilenetv2(num_classes: int, in_channels: int = 3, image_size: int | None = None) -> MobileNetV2:
    """CIFAR variant below 64×64; at 64×64 and above (Tiny-ImageNet) the stem strides by 2."""
    stem = 2 if image_size is not None and image_size >= 64 else 1
    return MobileNetV2(num_classes, in_channels, stem_stride=stem)
