"""Checks on what clients send back, as plain functions (no flwr import).

A reply whose arrays do not match the model that was sent (names, shapes) or that holds
NaN/inf must never enter an average: one bad client would poison the global model.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def shapes_of(arrays: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(np.shape(value)) for name, value in arrays.items()}


def reply_problem(expected: Mapping[str, tuple[int, ...]], arrays: Mapping[str, np.ndarray]) -> str | None:
    """Why ``arrays`` cannot be averaged with a model of ``expected`` shapes, or None."""
    if list(arrays) != list(expected):
        missing = [k for k in expected if k not in arrays]
        extra = [k for k in arrays if k not in expected]
        return f"array names differ from the model's (missing {missing}, unexpected {extra})"
    for name, value in arrays.items():
        if tuple(np.shape(value)) != tuple(expected[name]):
            return f"array '{name}' has shape {tuple(np.shape(value))}, expected {tuple(expected[name])}"
        if np.issubdtype(np.asarray(value).dtype, np.floating) and not np.isfinite(value).all():
            return f"array '{name}' holds NaN or infinite values"
    return None
