"""Name → (config dataclass, class) registries for models and training data sources.

A task package (``cdx``, ``mdx``) registers its data sources here when imported; ``demix``
never imports a task package statically: a registered name ``"cdx.film_mix"`` is resolved by
importing the module named before the first dot, which performs the registration.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from demix.config import from_dict


@dataclass(frozen=True)
class Entry:
    """One registered name: its config dataclass and the callable built from it."""

    config_cls: type
    factory: Callable[..., Any]


_MODELS: dict[str, Entry] = {}
_DATASETS: dict[str, Entry] = {}


def _register(table: dict[str, Entry], kind: str, name: str, config_cls: type):
    def deco(factory):
        if name in table and table[name].factory is not factory:
            raise KeyError(f"{kind} {name!r} is already registered")
        table[name] = Entry(config_cls, factory)
        return factory

    return deco


def _lookup(table: dict[str, Entry], kind: str, name: str) -> Entry:
    if name not in table and "." in name:
        importlib.import_module(name.split(".", 1)[0])
    if name not in table:
        known = ", ".join(sorted(table)) or "none"
        raise KeyError(f"unknown {kind} {name!r} (registered: {known})")
    return table[name]


def register_model(name: str, config_cls: type):
    """Class decorator: register a model class whose constructor takes one ``config_cls``."""
    return _register(_MODELS, "model", name, config_cls)


def register_dataset(name: str, config_cls: type):
    """Decorator: register a training data source built as ``factory(config, seed)``."""
    return _register(_DATASETS, "dataset", name, config_cls)


def build_model(name: str, config: Any | Mapping[str, Any] | None = None):
    """Build registered model ``name`` from a config instance or a plain mapping."""
    entry = _lookup(_MODELS, "model", name)
    if config is None:
        config = entry.config_cls()
    elif isinstance(config, Mapping):
        config = from_dict(entry.config_cls, config, name)
    return entry.factory(config)


def model_config_cls(name: str) -> type:
    """The config dataclass registered for model ``name``."""
    return _lookup(_MODELS, "model", name).config_cls


def dataset_entry(name: str) -> Entry:
    """The registered data source ``name`` (importing its task package on demand)."""
    return _lookup(_DATASETS, "dataset", name)


def model_names() -> list[str]:
    """Names of the registered models."""
    return sorted(_MODELS)
