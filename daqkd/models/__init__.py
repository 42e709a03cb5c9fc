"""Model registry and factory.

Every architecture registers a builder under a short name; ``create_model`` is the one way to
build a model, and ``default_feature_layers`` names each model's default KD feature taps.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch.nn as nn


@dataclass(frozen=True)
class ModelEntry:
    builder: Callable[..., nn.Module]
    feature_layers: tuple[str, ...] = field(default_factory=tuple)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, feature_layers: tuple[str, ...] = ()):
    """Decorator: register ``builder(num_classes, in_channels, **kw)`` under ``name``."""

    def wrap(builder):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(builder, tuple(feature_layers))
        return builder

    return wrap


def available_models() -> list[str]:
    return sorted(_REGISTRY)


def _entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; available models: {', '.join(available_models())}"
        ) from None


def create_model(name: str, num_classes: int, in_channels: int = 3, **kw) -> nn.Module:
    """Build model ``name`` for ``num_classes`` outputs and ``in_channels`` input channels.

    ``image_size`` (optional) lets a model pick its stem for the input resolution (ResNet-18,
    MobileNetV2); the CIFAR-style models ignore it."""
    return _entry(name).builder(num_classes=num_classes, in_channels=in_channels, **kw)


def default_feature_layers(name: str) -> tuple[str, ...]:
    """Names of the modules whose outputs feature-KD losses tap by default."""
    return _entry(name).feature_layers


# Importing the model files fills the registry.
from daqkd.models import mobilenetv2, resnet, resnet_cifar, vgg  # noqa: E402,F401
