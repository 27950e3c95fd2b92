"""The algorithms, each defined once: a client half (what a client does with the model it
receives: the one training loop, ``client.train.local_train``, with this round's
``RoundSettings``) and a server half (pure math over flat arrays: what the server makes of
the combined replies). No flwr imports: the Flower strategies (``strategies``) and the
one-process engine (``engine``) are two thin drivers over the same objects.

Each algorithm registers itself under its ``strategy.name`` in its own module
(``@register``); ``get(name)`` finds it, ``names()`` lists them (the config's allowed
values). Adding one is its own module and its test.
"""

from __future__ import annotations

import importlib
import pkgutil

_REGISTRY: dict[str, type] = {}
_INTERNAL = {"base", "settings"}  # modules that define no algorithm


def register(cls):
    """Class decorator: make ``cls`` the algorithm named ``cls.name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"Two algorithms are registered as {cls.name!r}.")
    _REGISTRY[cls.name] = cls
    return cls


_discovered = False


def _discover() -> None:
    """Import every algorithm module once (each registers itself); later lookups, one per
    client and round in a cohort, do not list the package again."""
    global _discovered
    if _discovered:
        return
    for module in pkgutil.iter_modules(__path__):
        if module.name not in _INTERNAL:
            importlib.import_module(f"{__name__}.{module.name}")
    _discovered = True


def names() -> list[str]:
    """Every registered algorithm's name, sorted."""
    _discover()
    return sorted(_REGISTRY)


def get(name: str) -> type:
    """The algorithm class registered as ``name`` (ValueError naming the choices)."""
    _discover()
    if name not in _REGISTRY:
        raise ValueError(f"Unknown strategy.name {name!r}; choose one of {sorted(_REGISTRY)}.")
    return _REGISTRY[name]
