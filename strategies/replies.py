"""Checks on what clients send back, as plain functions (no flwr import).

A client is untrusted: every field of its reply is input. ``parse_train_reply`` takes a
reply's records (anything shaped like Flower's ``RecordDict``: ``array_records``,
``metric_records``, ``config_records``) and returns the arrays and metrics the server may
use, or raises ``ReplyError`` saying what is wrong, so that the strategy rejects that reply
alone, names the node, and goes on:

- exactly one ArrayRecord and one MetricRecord, under the names the protocol gives them;
- the model's array names in the model's order; each Array serialised as NumPy's ``.npy``
  (Flower's ``numpy.ndarray`` type), its header read *before* anything is materialised:
  the declared shape must be the model's and the byte count must match it, so a header
  that declares a huge shape costs nothing; object, string and complex dtypes are refused
  (``np.load`` is never called, so nothing is unpickled);
- the values converted to the model's dtype and then checked finite (a float64 1e300
  becomes inf in a float32 model and is refused);
- metrics: unknown keys are dropped; a known key must be a finite number; the ones the
  strategy needs (``train_loss``, ``num_examples`` when weighting by examples,
  ``partition-id`` in Gossip-PGA) must be there; counts and ids must be integers.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from client import protocol as P

NUMPY_STYPE = "numpy.ndarray"  # Flower's SType.NUMPY
MAX_HEADER = 10_000  # bytes of an .npy header (numpy's own default limit)
NUMERIC_KINDS = "biuf"  # bool, signed and unsigned integers, floats


class ReplyError(ValueError):
    """Why a client's reply cannot be used."""


@dataclass(frozen=True)
class ArraySpec:
    """What one array of a reply must look like: the model's own array."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype


def specs_of(arrays: Mapping[str, np.ndarray]) -> list[ArraySpec]:
    """The specs of the model the server sent (its own arrays, trusted)."""
    return [ArraySpec(name, tuple(np.shape(v)), np.asarray(v).dtype) for name, v in arrays.items()]


def decode_array(stype: str, data, spec: ArraySpec) -> np.ndarray:
    """One reply Array as an array of ``spec``'s shape and dtype, read without trusting it."""
    name = spec.name
    if stype != NUMPY_STYPE:
        raise ReplyError(f"array '{name}' has serialization type {stype!r}, expected {NUMPY_STYPE!r}")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ReplyError(f"array '{name}' carries {type(data).__name__}, not bytes")
    buffer = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buffer)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:
            raise ValueError(f"unsupported .npy version {version}")
        shape, fortran, dtype = read_header(buffer, max_header_size=MAX_HEADER)
    except (ValueError, SyntaxError, TypeError, EOFError) as err:
        raise ReplyError(f"array '{name}' is not a valid .npy array ({err})") from None
    if dtype.hasobject or dtype.kind not in NUMERIC_KINDS or dtype.subdtype is not None:
        raise ReplyError(f"array '{name}' has dtype {dtype}, not a real number type")
    if tuple(shape) != spec.shape:
        raise ReplyError(f"array '{name}' has shape {tuple(shape)}, expected {spec.shape}")
    count = math.prod(spec.shape)
    if len(data) - buffer.tell() != count * dtype.itemsize:
        raise ReplyError(
            f"array '{name}' holds {len(data) - buffer.tell()} data bytes, its header "
            f"declares {count * dtype.itemsize}"
        )
    raw = np.frombuffer(data, dtype=dtype, count=count, offset=buffer.tell())
    raw = raw.reshape(spec.shape, order="F" if fortran else "C")
    with np.errstate(over="ignore", invalid="ignore"):
        value = raw.astype(spec.dtype)
    if not np.isfinite(value).all():
        raise ReplyError(f"array '{name}' holds NaN or infinite values (as {spec.dtype})")
    return value


def decode_arrays(items: Iterable[tuple[str, object]], specs: list[ArraySpec]) -> dict[str, np.ndarray]:
    """A reply's ArrayRecord items (name, Array with ``stype``/``data``) checked against
    the model's specs, in the model's order."""
    items = list(items)
    names, expected = [name for name, _ in items], [s.name for s in specs]
    if names != expected:
        missing = [k for k in expected if k not in names]
        extra = [k for k in names if k not in expected]
        raise ReplyError(
            f"array names differ from the model's (missing {missing}, unexpected {extra}"
            + (", or in another order" if not missing and not extra else "") + ")"
        )
    return {spec.name: decode_array(getattr(array, "stype", None), getattr(array, "data", None), spec)
            for spec, (_, array) in zip(specs, items, strict=True)}


def check_metrics(metrics: Mapping, required: Iterable[str], known: Iterable[str]) -> dict[str, float]:
    """The known metrics of a reply, each a finite number; unknown keys are dropped."""
    known = set(known)
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if key not in known:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ReplyError(f"metric '{key}' is a {type(value).__name__}, not a number")
        if not math.isfinite(value):
            raise ReplyError(f"metric '{key}' is {value}")
        out[key] = value
    missing = [key for key in required if key not in out]
    if missing:
        raise ReplyError(f"metric(s) {missing} missing")
    return out


def as_integer(key: str, value: float) -> int:
    """A count or id sent as a metric: an integer (2.0 is fine, 2.7 is refused)."""
    if isinstance(value, float) and not value.is_integer():
        raise ReplyError(f"metric '{key}' = {value} is not an integer")
    return int(value)


def example_weight(metrics: Mapping[str, float], cap: int) -> float:
    """The weight of a reply under ``weighting='examples'``: its ``num_examples``, a
    positive integer, capped at ``cap`` (0 = no cap)."""
    count = as_integer(P.NUM_EXAMPLES, metrics[P.NUM_EXAMPLES])
    if count < 1:
        raise ReplyError(f"metric '{P.NUM_EXAMPLES}' = {count} is not positive")
    return float(min(count, cap) if cap > 0 else count)


@dataclass
class Reply:
    """What the server takes from one sound reply."""

    arrays: dict[str, np.ndarray]
    metrics: dict[str, float]


def parse_reply(content, specs: list[ArraySpec] | None, required: Iterable[str],
                known: Iterable[str]) -> Reply:
    """Check a reply's records. ``specs=None``: a metrics-only reply (evaluation)."""
    array_records = dict(content.array_records)
    metric_records = dict(content.metric_records)
    expected_arrays = [P.ARRAYS] if specs is not None else []
    if list(array_records) != expected_arrays or list(metric_records) != [P.METRICS] \
            or len(content.config_records):
        raise ReplyError(
            f"it holds array records {list(array_records)}, metric records "
            f"{list(metric_records)} and config records {list(content.config_records)}; "
            f"expected array records {expected_arrays} and metric records ['{P.METRICS}'] only"
        )
    metrics = check_metrics(metric_records[P.METRICS], required, known)
    arrays = decode_arrays(array_records[P.ARRAYS].items(), specs) if specs is not None else {}
    return Reply(arrays, metrics)


def parse_cohort_reply(content, clients: list[int], specs: list[ArraySpec], required: Iterable[str],
                       known: Iterable[str]) -> dict[int, Reply | ReplyError]:
    """A SuperNode's reply for the cohort of logical ``clients`` it was sent: exactly one
    array record and one metric record per client (``cohort_keys``), nothing else, or
    the whole reply is rejected (ReplyError); then each client's records are checked as a
    reply of its own, and a client whose records fail holds its ReplyError."""
    expected_arrays = {P.cohort_keys(c)[0] for c in clients}
    expected_metrics = {P.cohort_keys(c)[1] for c in clients}
    array_records, metric_records = dict(content.array_records), dict(content.metric_records)
    if set(array_records) != expected_arrays or set(metric_records) != expected_metrics \
            or len(content.config_records):
        raise ReplyError(
            f"it holds array records {sorted(array_records)} and metric records "
            f"{sorted(metric_records)} (and {len(content.config_records)} config records); "
            f"expected one '{P.ARRAYS}/<client>' and one '{P.METRICS}/<client>' for each of the "
            f"clients {clients} it was sent, and nothing else")
    out: dict[int, Reply | ReplyError] = {}
    for client in clients:
        arrays_key, metrics_key = P.cohort_keys(client)
        try:
            metrics = check_metrics(metric_records[metrics_key], required, known)
            out[client] = Reply(decode_arrays(array_records[arrays_key].items(), specs), metrics)
        except ReplyError as err:
            out[client] = err
    return out


def flat(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """All arrays as one float64 vector, in their order."""
    return np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in arrays.values()])


def unflat(vector: np.ndarray, specs: list[ArraySpec]) -> dict[str, np.ndarray]:
    """The inverse of ``flat``, in the specs' dtypes."""
    out, start = {}, 0
    for spec in specs:
        size = math.prod(spec.shape)
        out[spec.name] = np.ascontiguousarray(
            vector[start : start + size].reshape(spec.shape).astype(spec.dtype))
        start += size
    return out


def weighted_metrics(replies: list[Reply], weights: list[float], max_keys: Iterable[str] = ()) -> dict:
    """Each metric's weighted mean over the replies that carry it (``max_keys``: the max)."""
    max_keys = set(max_keys)
    keys = dict.fromkeys(k for r in replies for k in r.metrics)
    out = {}
    for key in keys:
        pairs = [(r.metrics[key], w) for r, w in zip(replies, weights, strict=True) if key in r.metrics]
        if key in max_keys:
            out[key] = max(v for v, _ in pairs)
        else:
            total = sum(w for _, w in pairs)
            out[key] = sum(v * w for v, w in pairs) / total if total > 0 else 0.0
    return out
