"""ResNet-18 (He et al., CVPR 2016), ImageNet layout: four stages of two basic blocks,
64/128/256/512 channels, projection shortcuts. At 64×64 or larger the stem is the paper's 7×7
stride-2 conv plus 3×3 max-pool; for smaller inputs (CIFAR, Fashion-MNIST) a 3×3 stride-1 stem
without pooling keeps the feature maps usable. 11,689,512 parameters at 1000 classes (the paper's 11.7 M).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from daqkd.models import register_model


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, imagenet_stem: bool = True):
        super().__init__()
        if imagenet_stem:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(64)
        widths, c_in = [64, 128, 256, 512], 64
        for i, c in enumerate(widths):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(Block(c_in, c, stride), Block(c, c, 1)))
            c_in = c
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.pool(x)))


@register_model("resnet18", feature_layers=("layer2", "layer3", "layer4", "flatten"))
def resnet18(num_classes: int, in_channels: int = 3, image_size: int | None = None) -> ResNet18:
    return ResNet18(num_classes, in_channels, imagenet_stem=image_size is None or image_size >= 64)
