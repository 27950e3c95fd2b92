"""Checkpoints: what the server needs to continue a run after a completed round, written
atomically to ``<run folder>/checkpoints/round-<N>.pt``, and the checks before a run
resumes from one. Plain Python + torch; no flwr.

A checkpoint holds the round, the global model (a torch ``state_dict``), the strategy's
``state_dict()`` (Gossip-PGA's node models by graph index, active nodes and averaging
schedule; naive clipping's server momentum; BGMD's memory; byte counters; the per-round
metrics), the server's RNG states (Python, NumPy, torch), the round records so far and the
run's elapsed seconds. It is a pickle (``torch.save`` of NumPy arrays and dicts): load only
checkpoints your own runs wrote.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
import yaml

from conf import ConfigError, to_flat
from conf.load import flatten

CHECKPOINT_DIR = "checkpoints"
# Keys a resumed run may change: how long it runs, where its folder is, and checkpointing.
RESUMABLE_KEYS = ("run.rounds", "run.name", "run.output_dir", "run.resume",
                  "run.checkpoint_every", "run.keep_checkpoints")
_NAME = re.compile(r"round-(\d+)\.pt")


def checkpoints(folder: str | Path) -> list[Path]:
    """The run folder's checkpoints, oldest round first."""
    found = [(int(m.group(1)), p) for p in (Path(folder) / CHECKPOINT_DIR).glob("round-*.pt")
             if (m := _NAME.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(folder: str | Path, server_round: int, state: dict, keep: int = 1) -> Path:
    """Write ``state`` as round ``server_round``'s checkpoint: to a temporary file, synced,
    then renamed over the target (a crash leaves the old checkpoint or the new one, never
    half of one); then delete all but the ``keep`` newest."""
    import torch

    directory = Path(folder) / CHECKPOINT_DIR
    directory.mkdir(exist_ok=True)
    target = directory / f"round-{server_round:06d}.pt"
    tmp = directory / f".{target.name}.tmp"
    with open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, target)
    for old in checkpoints(folder)[:-keep]:
        old.unlink()
    return target


def checkpoint_state(server_round: int, model_state: dict, strategy, records: list[dict],
                     initial: dict, elapsed: float) -> dict:
    """What a checkpoint holds after round ``server_round`` (module docstring): the global
    model's ``state_dict``, ``strategy.state_dict()``, the RNG states, the round records and
    the run's elapsed seconds."""
    return {"round": server_round, "model": model_state, "strategy": strategy.state_dict(),
            "rng": rng_state(), "records": records, "initial": initial, "elapsed": elapsed}


def load_checkpoint(path: str | Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def rng_state() -> dict:
    import torch

    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def config_differences(saved: dict, requested: dict) -> list[str]:
    """The keys (flat) whose values differ, ignoring ``RESUMABLE_KEYS``."""
    keys = sorted((set(saved) | set(requested)) - set(RESUMABLE_KEYS))
    return [k for k in keys if saved.get(k, "<missing>") != requested.get(k, "<missing>")]


def open_resume(cfg) -> tuple[Path, dict]:
    """The folder ``run.resume`` names and its newest checkpoint, after checking that the
    run may continue from it (ConfigError otherwise, saying what to change)."""
    folder = Path(cfg.run.resume).expanduser()
    if not (folder / "config.yaml").is_file():
        raise ConfigError(f"run.resume={cfg.run.resume!r} is not a fedlocal run folder (no "
                          "config.yaml there); give the folder a run printed as 'results in ...'.")
    found = checkpoints(folder)
    if not found:
        raise ConfigError(f"run.resume: {folder} has no checkpoint (its run had "
                          "run.checkpoint_every=0, or stopped before its first round ended).")
    if cfg.train.persist_optimizer_state and cfg.train.momentum:
        raise ConfigError(
            f"run.resume with train.persist_optimizer_state=true and train.momentum="
            f"{cfg.train.momentum:g}: each client's momentum buffer lives in its SuperNode's "
            "context.state, which a new run does not have, so the resumed run would not continue "
            "the same training. Resume only runs whose clients keep no state (momentum 0, or "
            "persist_optimizer_state=false).")
    saved = flatten(yaml.safe_load((folder / "config.yaml").read_text()) or {})
    differ = config_differences(saved, to_flat(cfg))
    if differ:
        shown = ", ".join(f"{k} ({saved.get(k, '<missing>')!r} there, "
                          f"{to_flat(cfg).get(k, '<missing>')!r} now)" for k in differ)
        raise ConfigError(f"run.resume: the config differs from the one {folder} ran with in "
                          f"{shown}. A resumed run may change only {', '.join(RESUMABLE_KEYS)}; "
                          "start a new run to change anything else.")
    if (cfg.train.lr_schedule in ("cosine", "warmup_cosine")
            and int(saved.get("run.rounds", cfg.run.rounds)) != cfg.run.rounds):
        raise ConfigError(
            f"run.resume with train.lr_schedule={cfg.train.lr_schedule!r}: the cosine runs over "
            f"run.rounds, so extending {saved.get('run.rounds')} rounds to {cfg.run.rounds} would "
            "change the learning rate of every round, including those already run. Resume with "
            f"run.rounds={saved.get('run.rounds')}, or use lr_schedule 'constant' or 'step' "
            "(which do not depend on run.rounds) for runs you mean to extend.")
    state = load_checkpoint(found[-1])
    if state["round"] > cfg.run.rounds:
        raise ConfigError(f"run.resume: {folder} has completed {state['round']} rounds; "
                          f"run.rounds={cfg.run.rounds} would shorten it. Give run.rounds >= "
                          f"{state['round']}.")
    return folder, state
