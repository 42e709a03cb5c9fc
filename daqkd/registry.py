"""One way to register an extension, and one way to ask what exists.

Every kind of extension (models, data sources, DAs, selectors, quantizers, KD methods) lives in a
``Registry``: a module registers its entries where they are defined, with ``@REGISTRY.register(name)``,
and everything else asks ``list_<kind>()`` and ``get_<kind>(name)``, as timm's ``list_models`` and
``create_model`` do. Adding a quantizer or a KD method is one file (its class, registered) plus one
YAML (``conf/quantizer/<name>.yaml``, ``conf/kd/<name>.yaml``) that names it; the benchmark, the
report, the error messages and the tests iterate the registries, so nothing else changes.
"""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind, in registration order, each with optional metadata."""

    def __init__(self, kind: str, owner: str):
        self.kind, self.owner = kind, owner  # owner: the module whose import fills the registry
        self._entries: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._loaded = False

    def register(self, name: str, **meta) -> Callable[[T], T]:
        """Decorator: register the decorated object as ``name`` (``meta`` is kept beside it)."""

        def wrap(obj: T) -> T:
            self.add(name, obj, **meta)
            return obj

        return wrap

    def add(self, name: str, obj: T, **meta) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = obj
        self._meta[name] = meta

    def _load(self) -> None:
        """Import the owner and, when it is a package, every public module in it: a new extension's
        file registers itself without being imported anywhere else."""
        if self._loaded:
            return
        self._loaded = True  # set first: a module that fails is reported once, not re-run into "registered twice"
        owner = importlib.import_module(self.owner)
        for info in pkgutil.iter_modules(getattr(owner, "__path__", [])):
            if not info.name.startswith("_"):
                importlib.import_module(f"{self.owner}.{info.name}")

    def names(self) -> list[str]:
        self._load()
        return list(self._entries)

    def get(self, name: str) -> T:
        self._load()
        if name not in self._entries:
            from daqkd.errors import ConfigError

            raise ConfigError(f"unknown {self.kind} {name!r}; available: {', '.join(self._entries)}")
        return self._entries[name]

    def meta(self, name: str) -> dict[str, Any]:
        self.get(name)
        return self._meta[name]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


MODELS: Registry = Registry("model", "daqkd.models")
SOURCES: Registry = Registry("data set", "daqkd.data")
AUGMENTS: Registry = Registry("augmentation", "daqkd.augment")
SELECTORS: Registry = Registry("selector", "daqkd.metric")
QUANTIZERS: Registry = Registry("quantizer", "daqkd.quant")
KD_METHODS: Registry = Registry("KD method", "daqkd.kd")


def list_models() -> list[str]:
    return MODELS.names()


def get_model(name: str):
    return MODELS.get(name)


def list_sources() -> list[str]:
    return SOURCES.names()


def get_source(name: str):
    return SOURCES.get(name)


def list_augments() -> list[str]:
    return AUGMENTS.names()


def get_augment(name: str):
    return AUGMENTS.get(name)


def list_selectors() -> list[str]:
    return SELECTORS.names()


def get_selector(name: str):
    return SELECTORS.get(name)


def list_quantizers() -> list[str]:
    return QUANTIZERS.names()


def get_quantizer(name: str):
    return QUANTIZERS.get(name)


def list_kd_methods() -> list[str]:
    return KD_METHODS.names()


def get_kd_method(name: str):
    return KD_METHODS.get(name)
