"""Models: every architecture registers a builder under a short name (daqkd.registry.MODELS,
``list_models``); ``create_model`` is the one way to build a model, and ``default_feature_layers``
names each model's default KD feature taps.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch.nn as nn

from daqkd.registry import MODELS


@dataclass(frozen=True)
class ModelEntry:
    builder: Callable[..., nn.Module]
    feature_layers: tuple[str, ...] = field(default_factory=tuple)


def register_model(name: str, feature_layers: tuple[str, ...] = ()):
    """Decorator: register ``builder(num_classes, in_channels, **kw)`` as model ``name`` (daqkd.registry.MODELS)."""

    def wrap(builder):
        MODELS.add(name, ModelEntry(builder, tuple(feature_layers)))
        return builder

    return wrap


def create_model(name: str, num_classes: int, in_channels: int = 3, **kw) -> nn.Module:
    """Build model ``name`` for ``num_classes`` outputs and ``in_channels`` input channels.

    ``image_size`` (optional) lets a model pick its stem for the input resolution (ResNet-18,
    MobileNetV2); the CIFAR-style models ignore it."""
    return MODELS.get(name).builder(num_classes=num_classes, in_channels=in_channels, **kw)


def default_feature_layers(name: str) -> tuple[str, ...]:
    """Names of the modules whose outputs feature-KD losses tap by default."""
    return MODELS.get(name).feature_layers


# Importing the model files fills the registry.
from daqkd.models import mobilenetv2, resnet, resnet_cifar, vgg  # noqa: E402,F401
