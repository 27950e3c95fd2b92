"""The config funnel: YAML layers + Flower's flat overrides -> one validated ``Config``.

Merge order, later wins::

    conf/base.yaml  <  conf/task/<task.name>.yaml  <  conf/strategy/<strategy.name>.yaml
                    <  conf/preset/<run.preset>.yaml  <  overrides (e.g. --run-config)

``task.name``, ``strategy.name`` and ``run.preset`` are themselves taken from the highest
layer that sets them, so ``--run-config "task.name='fmnist'"`` pulls in
``conf/task/fmnist.yaml``. Any unknown key, wrong type or value out of range (a float
that is not finite, an integer beyond 64 bits, a name that is not a plain file name),
a combination of keys that cannot run, or a model too large to hold raises ``ConfigError``
naming the key and what is allowed, before anything is trained; given the number of
nodes (``num_nodes``), so do node counts the federation cannot meet. Keys that have no
effect for the chosen strategy give a ``ConfigWarning``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
import warnings
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


class ConfigWarning(UserWarning):
    """A config that runs but probably not as meant (e.g. a key the strategy ignores)."""


INT64 = 2**63  # Flower passes run-config integers as signed 64-bit: -2^63 <= v < 2^63
MAX_PARAMETERS = 2**31  # 8 GiB of float32 per model copy; the server holds several


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
    if declared == "int" and not -INT64 <= value < INT64:
        sign = "<" if value > 0 else ">="
        raise ConfigError(
            f"Config key '{key}' = {value} is out of range; it must be {sign} "
            f"{'' if value > 0 else '-'}2^63 (Flower passes integers as 64-bit)."
        )
    if declared == "float":
        try:
            value = float(value)
        except OverflowError:  # an int beyond the float range
            value = math.inf
        if not math.isfinite(value):
            raise ConfigError(
                f"Config key '{key}' ({source}) must be a finite number, got {value!r}."
            )
    return value


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
    if meta["pattern"] and not (isinstance(value, str) and re.fullmatch(meta["pattern"], value)):
        raise ConfigError(
            f"Config key '{key}' = {value!r} is not a plain name: use 1-128 letters, digits, "
            "'.', '_' or '-', not starting with '.' (it names a file or folder, so no '/' "
            "or '..'), e.g. 'lr-0.1'."
        )


def _check_consistency(cfg: Config, num_nodes: int | None = None) -> None:
    """Rules that involve more than one key; with ``num_nodes`` (the SuperNodes, = the
    partitions), also the node counts the federation must meet."""
    import tasks  # torch; the task's record holds its rules

    try:  # the partition, model and loss must fit the task (its record says which do)
        tasks.get_task(cfg.task.name).check(cfg)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    out = cfg.run.output_dir
    if not (out.startswith("~") or Path(out).is_absolute()):
        raise ConfigError(
            f"run.output_dir = {out!r} is relative. Give an absolute path or one starting "
            "with '~': the ServerApp may run in another process and working directory."
        )
    clients = cfg.data.num_clients
    if clients and cfg.strategy.min_train_nodes > clients:
        raise ConfigError(
            f"strategy.min_train_nodes = {cfg.strategy.min_train_nodes} logical clients a round, "
            f"but data.num_clients = {clients}: lower strategy.min_train_nodes.")
    if not clients and cfg.strategy.min_available_nodes < cfg.strategy.min_train_nodes:
        raise ConfigError(
            "strategy.min_available_nodes must be >= strategy.min_train_nodes "
            f"({cfg.strategy.min_available_nodes} < {cfg.strategy.min_train_nodes})."
        )
    import algorithms

    try:  # what the algorithm itself cannot run
        algorithms.get(cfg.strategy.name).check(cfg)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    check_nodes(cfg.strategy, num_nodes, clients)
    _check_model_size(cfg)


def check_nodes(s, num_nodes: int | None, num_clients: int = 0) -> None:
    """Node counts (``s``: the strategy section): gossip needs a graph, a round needs the
    replies it asks for. ``load_config(..., num_nodes)`` runs it; the ServerApp runs it again
    once it knows how many nodes are connected. With cohorts (``num_clients`` logical
    clients, ``data.num_clients``) the work is sent to clients, not nodes."""
    import algorithms

    gossip = algorithms.get(s.name).decentralized  # one model per node, on a graph
    if s.min_replies >= 1 and s.min_replies != int(s.min_replies):
        raise ConfigError(
            f"strategy.min_replies = {s.min_replies:g}: from 1 on it is a count of replies and "
            "must be a whole number (below 1 it is a fraction of the nodes sent work)."
        )
    if num_nodes is not None and num_nodes < 1:
        raise ConfigError(f"{num_nodes} nodes: a federation needs at least one node.")
    if gossip and num_nodes is not None and num_nodes < 2:
        raise ConfigError(
            f"{s.name} needs at least 2 nodes (a graph to gossip on) but the federation has "
            f"{num_nodes} node; start more SuperNodes or use strategy.name = 'fedavg'."
        )
    if gossip and s.min_available_nodes < 2:
        raise ConfigError(
            f"strategy.name = '{s.name}' builds its graph on the nodes connected when the run "
            f"starts, and strategy.min_available_nodes = {s.min_available_nodes} lets it start "
            "with one node (no neighbour to gossip with); set strategy.min_available_nodes to "
            "the number of nodes, at least 2."
        )
    if num_nodes is None:
        return
    if s.min_available_nodes > num_nodes:
        raise ConfigError(
            f"strategy.min_available_nodes = {s.min_available_nodes} but the federation has "
            f"{num_nodes} node(s): the run would wait strategy.node_wait = {s.node_wait:g} s "
            "for nodes that never come, then stop. Lower it or start more SuperNodes."
        )
    # Flower's FedAvg sends work to max(int(n * fraction_train), min_train_nodes) nodes
    # (cohorts: logical clients)
    workers = num_clients or num_nodes
    sent = min(workers, max(int(workers * s.fraction_train), s.min_train_nodes))
    if not gossip and s.min_replies >= 1 and int(s.min_replies) > sent:
        raise ConfigError(
            f"strategy.min_replies = {s.min_replies:g} asks for {int(s.min_replies)} sound "
            f"replies a round, but only {sent} node(s) get work each round ({num_nodes} nodes x "
            f"strategy.fraction_train = {s.fraction_train:g}, at least strategy.min_train_nodes "
            f"= {s.min_train_nodes}): every round would fail. Lower strategy.min_replies (below "
            "1 it is a fraction of the nodes sent work, e.g. 0.5) or start more SuperNodes."
        )


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # pragma: no cover - not POSIX
        return None


def _check_model_size(cfg: Config) -> None:
    """Refuse a model (or teacher network) whose float32 parameters alone exceed
    ``MAX_PARAMETERS`` or this machine's memory, before anything tries to build it."""
    import tasks  # torch, imported only in the checks: the rest of the funnel is plain data
    from tasks.models import parameter_count

    task = tasks.get_task(cfg.task.name)
    spec, name, m = task.spec(cfg), tasks.model_name(cfg), cfg.model
    memory = _memory_bytes()
    limit = MAX_PARAMETERS if memory is None else min(MAX_PARAMETERS, memory // 4)
    why = "2^31" if limit == MAX_PARAMETERS else "this machine's memory in float32"
    keys = {"mlp": ["model.width", "model.depth"], "cnn": ["model.width"]}.get(
        name, ["model.width", "model.depth", "model.embed_dim"])
    keys += task.size_keys
    networks = [(f"The {name} model", parameter_count(
        name, spec.input_shape, spec.num_outputs, m.width, m.depth, m.embed_dim), keys)]
    if task.other_networks is not None:  # e.g. teacher's random teacher network
        networks += task.other_networks(cfg)
    for what, count, knobs in networks:
        if count > limit:
            settings = ", ".join(f"{k} = {_get(cfg, k)}" for k in knobs)
            raise ConfigError(
                f"{what} ({settings}) has {count:,} parameters ({count * 4 / 2**30:,.1f} GiB "
                f"as float32); the limit is {limit:,} ({why}). Lower {' or '.join(knobs)}."
            )


def _get(cfg: Config, dotted: str) -> Any:
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)


# Flower's own --run-config grammar (flwr.common.config.parse_config_args): key=value
# pairs, values TOML, separated by white space. Flower drops any text that does not match.
PAIR = re.compile(r"(\S+?)=('[^']*'|\"[^\"]*\"|\S+)")


def parse_run_config(text: str) -> dict:
    """``"a.b=1 c='x'"`` -> ``{"a.b": 1, "c": "x"}`` (values are TOML), as ``flwr run
    --run-config`` reads it, except that text Flower would silently drop (``a = 1``, a
    stray word) and a value that is not TOML (``task.name=mnist``) raise a ConfigError."""
    pairs: dict = {}
    end = 0
    for match in PAIR.finditer(text):
        _refuse_leftover(text[end:match.start()])
        if match.end() < len(text) and not text[match.end()].isspace():
            rest = text[match.end():].split()[0]
            raise ConfigError(f"Cannot read {rest!r} in the run config: separate key=value "
                              "pairs with spaces.")
        key, value = match.groups()
        if key in pairs:
            raise ConfigError(f"Config key '{key}' is set twice in the run config.")
        try:
            pairs[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            hint = (f"strings need quotes: {key}='{value}'" if re.fullmatch(r"[\w./~-]+", value)
                    else "values are TOML: 3, 0.1, true, 'text'")
            raise ConfigError(f"Cannot read the value of '{key}' ({value}): {hint}.") from None
        end = match.end()
    _refuse_leftover(text[end:])
    return pairs


def _refuse_leftover(text: str) -> None:
    if text.strip():
        raise ConfigError(
            f"Cannot read {text.strip()!r} in the run config: write key=value pairs with no "
            "spaces around '=', separated by spaces, e.g. \"train.lr=0.1 task.name='fmnist'\"."
        )


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
    _check_value("run.preset", _check_type("run.preset", preset, "the overrides"))
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


def _typed_config(typed: dict[str, Any], missing_hint: str, num_nodes: int | None = None) -> Config:
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
    _check_consistency(cfg, num_nodes)
    return cfg


def load_config(overrides: Mapping[str, Any] | None = None, num_nodes: int | None = None) -> Config:
    """Merge every layer, check every value and return the typed ``Config``. ``num_nodes``:
    the federation's SuperNodes (= partitions), when known, to check node counts against."""
    merged: dict[str, Any] = {}
    layers = resolve_layers(overrides)
    for source, layer in layers:
        for key, value in layer.items():
            merged[key] = _check_type(key, value, source)
    cfg = _typed_config(merged, "conf/base.yaml lacks a default for", num_nodes)
    _warn_ignored(cfg, layers[1:])
    return cfg


def _warn_ignored(cfg: Config, layers: list[tuple[str, dict]]) -> None:
    """Warn about keys set above base.yaml that the chosen strategy ignores."""
    set_by = {key: source for source, layer in layers for key in layer}
    ignored = [key for key, f in FIELDS.items()
               if key in set_by and f.metadata["strategies"]
               and cfg.strategy.name not in f.metadata["strategies"]]
    if ignored:
        only = " / ".join(sorted({s for key in ignored for s in FIELDS[key].metadata["strategies"]}))
        sources = ", ".join(sorted({set_by[key] for key in ignored}))
        have, them = ("has", "it") if len(ignored) == 1 else ("have", "them")
        warnings.warn(
            f"{', '.join(ignored)} (set by {sources}) {have} an effect only with strategy.name = "
            f"{only}; strategy.name = {cfg.strategy.name!r} ignores {them}.",
            ConfigWarning, stacklevel=3,
        )


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
