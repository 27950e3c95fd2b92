"""The config funnel: YAML layers + Flower's flat overrides -> one validated ``Config``.

Merge order, later wins::

    conf/base.yaml  <  conf/task/<task.name>.yaml  <  conf/strategy/<strategy.name>.yaml
                    <  conf/preset/<run.preset>.yaml  <  overrides (e.g. --run-config)

``task.name``, ``strategy.name`` and ``run.preset`` are themselves taken from the highest
layer that sets them, so ``--run-config "task.name='fmnist'"`` pulls in
``conf/task/fmnist.yaml``. Any unknown key, wrong type or value out of range raises
``ConfigError`` naming the key and what is allowed, before anything is trained.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from conf.schema import Config, iter_fields

CONF_DIR = Path(__file__).resolve().parent
SCALAR = (bool, int, float, str)


class ConfigError(ValueError):
    """A configuration problem, with a message that says which key and what to do."""


# ----------------------------------------------------------------------------- helpers
def flatten(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1} -> {"a": {"b": 1}}`` (Flower's run_config is flat with dotted keys)."""
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = nested
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"Config key '{dotted}' nests under a value, not a section.")
        node[leaf] = value
    return nested


FIELDS = dict(iter_fields())
SECTIONS = sorted({key.split(".")[0] for key in FIELDS})


def _check_known(flat: Mapping[str, Any], source: str) -> None:
    for key in flat:
        if key in FIELDS:
            continue
        section = key.split(".")[0]
        if section in SECTIONS:
            known = ", ".join(k.split(".", 1)[1] for k in FIELDS if k.startswith(section + "."))
            raise ConfigError(
                f"Unknown config key '{key}' in {source}. Keys of '{section}': {known}."
            )
        raise ConfigError(
            f"Unknown config key '{key}' in {source}. Sections: {', '.join(SECTIONS)}."
        )


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    try:
        data = OmegaConf.to_container(OmegaConf.load(path))
    except FileNotFoundError:
        options = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(
            f"No {what} file {path.name} in {path.parent}; available: {', '.join(options)}."
        ) from None
    except Exception as err:  # a YAML syntax error
        raise ConfigError(f"Cannot parse {path}: {err}") from err
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, not {type(data).__name__}.")
    flat = flatten(data)
    _check_known(flat, str(path))
    return flat


def _check_type(key: str, value: Any, source: str) -> Any:
    """Return ``value`` converted to the declared type, or raise a ConfigError."""
    declared = FIELDS[key].type
    declared = declared if isinstance(declared, str) else declared.__name__
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "str": isinstance(value, str),
    }[declared]
    if not ok:
        raise ConfigError(
            f"Config key '{key}' ({source}) must be {declared}, got {value!r} "
            f"({type(value).__name__})."
        )
    return float(value) if declared == "float" else value


def _check_value(key: str, value: Any) -> None:
    meta = FIELDS[key].metadata
    if meta["choices"] and value not in meta["choices"]:
        raise ConfigError(
            f"Config key '{key}' = {value!r} is not allowed; choose one of: "
            f"{', '.join(map(str, meta['choices']))}."
        )
    bounds = [
        (meta["ge"], lambda v, b: v >= b, ">="),
        (meta["gt"], lambda v, b: v > b, ">"),
        (meta["le"], lambda v, b: v <= b, "<="),
    ]
    for bound, holds, sign in bounds:
        if bound is not None and not holds(value, bound):
            raise ConfigError(f"Config key '{key}' = {value!r} is out of range; it must be {sign} {bound}.")


def _check_consistency(cfg: Config) -> None:
    """Rules that involve more than one key."""
    task, model = cfg.task.name, cfg.model.name
    if cfg.data.partition == "natural" and task != "shakespeare":
        raise ConfigError(
            "data.partition = 'natural' (split by speaking role) needs task.name = "
            f"'shakespeare', not {task!r}; use iid, dirichlet or classes."
        )
    sequence_models, image_models = ("lstm", "rnn"), ("cnn",)
    if task == "shakespeare" and model not in ("auto",) + sequence_models:
        raise ConfigError(f"model.name = {model!r} does not fit task 'shakespeare'; use lstm or rnn.")
    if task != "shakespeare" and model in sequence_models:
        raise ConfigError(f"model.name = {model!r} is for task 'shakespeare' only; use mlp.")
    if model in image_models and task not in ("fmnist", "digits"):
        raise ConfigError(f"model.name = 'cnn' needs an image task (fmnist, digits), not {task!r}.")
    if task == "shakespeare" and cfg.task.loss == "mse":
        raise ConfigError("task.loss = 'mse' is not supported for 'shakespeare'; use auto.")
    if task == "teacher" and cfg.task.loss == "cross_entropy":
        raise ConfigError("task.loss = 'cross_entropy' does not fit the regression task 'teacher'.")
    if task == "shakespeare" and cfg.data.partition in ("classes", "dirichlet"):
        raise ConfigError(
            f"data.partition = {cfg.data.partition!r} is not defined for 'shakespeare'; "
            "use natural (by speaking role) or iid."
        )
    out = cfg.run.output_dir
    if not (out.startswith("~") or Path(out).is_absolute()):
        raise ConfigError(
            f"run.output_dir = {out!r} is relative. Give an absolute path or one starting "
            "with '~': the ServerApp may run in another process and working directory."
        )
    if cfg.strategy.min_available_nodes < cfg.strategy.min_train_nodes:
        raise ConfigError(
            "strategy.min_available_nodes must be >= strategy.min_train_nodes "
            f"({cfg.strategy.min_available_nodes} < {cfg.strategy.min_train_nodes})."
        )


def parse_run_config(text: str) -> dict:
    """``"a.b=1 c='x'"`` -> ``{"a.b": 1, "c": "x"}`` (values are TOML)."""
    pairs = re.findall(r"(\S+?)=('[^']*'|\"[^\"]*\"|\S+)", text)
    return {key: tomllib.loads(f"v = {value}")["v"] for key, value in pairs}


# ----------------------------------------------------------------------------- funnel
def resolve_layers(overrides: Mapping[str, Any] | None = None) -> list[tuple[str, dict]]:
    """The flat layers in merge order, each as ``(source, {dotted_key: value})``."""
    overrides = dict(overrides or {})
    _check_known(overrides, "the overrides")
    for key, value in overrides.items():
        if not isinstance(value, SCALAR):
            raise ConfigError(f"Override '{key}' must be a scalar, got {type(value).__name__}.")
    layers = [(str(CONF_DIR / "base.yaml"), _read_yaml(CONF_DIR / "base.yaml", "base"))]

    def current(key: str, extra: list[tuple[str, dict]]) -> Any:
        for _, layer in reversed(layers + extra + [("overrides", overrides)]):
            if key in layer:
                return layer[key]
        raise ConfigError(f"Config key '{key}' has no value in base.yaml.")  # pragma: no cover

    preset = current("run.preset", [])
    preset_layer = []
    if preset != "none":
        path = CONF_DIR / "preset" / f"{preset}.yaml"
        preset_layer = [(str(path), _read_yaml(path, "preset"))]
    for kind in ("task", "strategy"):
        name = current(f"{kind}.name", preset_layer)
        _check_value(f"{kind}.name", name)
        path = CONF_DIR / kind / f"{name}.yaml"
        if path.exists():
            layers.append((str(path), _read_yaml(path, kind)))
    return layers + preset_layer + [("the overrides", overrides)]


def _typed_config(typed: dict[str, Any], missing_hint: str) -> Config:
    """Every key present, every value allowed, then the typed ``Config`` and the rules that
    involve more than one key. ``typed`` has already passed ``_check_type``."""
    missing = [key for key in FIELDS if key not in typed]
    if missing:
        raise ConfigError(f"{missing_hint}: {', '.join(missing)}.")
    for key, value in typed.items():
        _check_value(key, value)
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), unflatten(typed)))
    except OmegaConfBaseException as err:  # pragma: no cover - types were checked above
        raise ConfigError(str(err)) from err
    _check_consistency(cfg)
    return cfg


def load_config(overrides: Mapping[str, Any] | None = None) -> Config:
    """Merge every layer, check every value and return the typed ``Config``."""
    merged: dict[str, Any] = {}
    for source, layer in resolve_layers(overrides):
        for key, value in layer.items():
            merged[key] = _check_type(key, value, source)
    return _typed_config(merged, "conf/base.yaml lacks a default for")


def to_flat(cfg: Config) -> dict[str, Any]:
    """The resolved config as flat ``{dotted_key: scalar}`` (for ConfigRecords and files)."""
    return flatten(dataclasses.asdict(cfg))


def from_flat(flat: Mapping[str, Any]) -> Config:
    """Rebuild a ``Config`` from ``to_flat`` output (e.g. on the client), fully checked."""
    source = "the received config"
    _check_known(flat, source)
    typed = {key: _check_type(key, value, source) for key, value in flat.items()}
    return _typed_config(typed, f"{source} lacks")


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
