"""The config funnel: merge order, every kind of bad input, and the copies kept in sync."""

from __future__ import annotations

import shutil
import tomllib

import pytest
import yaml

from conf import ConfigError, from_flat, load_config, to_flat
from conf import load as conf_load
from conf.__main__ import reference_table
from conf.load import CONF_DIR, flatten, parse_run_config, resolve_layers, unflatten
from conf.schema import iter_fields
from tests.conftest import REPO


def test_base_defaults_are_the_main_job():
    cfg = load_config()
    assert (cfg.task.name, cfg.strategy.name, cfg.data.partition) == ("digits", "fedavg", "dirichlet")
    assert cfg.data.alpha == 0.5 and cfg.run.rounds == 20


def test_merge_order_base_task_strategy_preset_overrides(tmp_path, monkeypatch):
    # fmnist's task file sets local_steps 50 over base's 20
    assert load_config().train.local_steps == 20
    assert load_config({"task.name": "fmnist"}).train.local_steps == 50
    # a preset beats the task file, an override beats the preset (on a copy of conf/)
    conf_copy = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf_copy, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    (conf_copy / "preset" / "order.yaml").write_text(
        "task:\n  name: fmnist\ntrain:\n  local_steps: 7\n  lr: 0.3\n"
    )
    monkeypatch.setattr(conf_load, "CONF_DIR", conf_copy)
    cfg = load_config({"run.preset": "order"})
    assert (cfg.task.name, cfg.train.local_steps, cfg.train.lr) == ("fmnist", 7, 0.3)
    cfg = load_config({"run.preset": "order", "train.lr": 0.01})
    assert (cfg.train.local_steps, cfg.train.lr) == (7, 0.01)
    # the preset's task.name pulled in the fmnist task layer, placed before the preset
    sources = [source for source, _ in resolve_layers({"run.preset": "order"})]
    assert [s.rsplit("/", 2)[-2:] for s in sources[:-1]] == [
        ["conf", "base.yaml"], ["task", "fmnist.yaml"], ["strategy", "fedavg.yaml"],
        ["preset", "order.yaml"],
    ]


def test_task_name_override_selects_its_layer():
    cfg = load_config({"task.name": "shakespeare"})
    assert cfg.data.partition == "natural" and cfg.train.lr == 1.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train.lrr": 0.1}, "Unknown config key 'train.lrr' in the overrides. Keys of 'train': "),
        ({"trian.lr": 0.1}, "Unknown config key 'trian.lr' in the overrides. Sections: attack, data, eval"),
        ({"train.lr": "fast"}, "Config key 'train.lr' (the overrides) must be float, got 'fast'"),
        ({"train.local_steps": 2.5}, "Config key 'train.local_steps' (the overrides) must be int"),
        ({"run.save_model": 1}, "Config key 'run.save_model' (the overrides) must be bool"),
        ({"train.lr": -0.1}, "Config key 'train.lr' = -0.1 is out of range; it must be > 0.0."),
        ({"data.test_fraction": 0.9}, "'data.test_fraction' = 0.9 is out of range; it must be <= 0.5"),
        ({"task.name": "mnist"}, "'task.name' = 'mnist' is not allowed; choose one of: digits, fmnist"),
        ({"run.preset": "nope"}, "No preset file nope.yaml in"),
        ({"run.output_dir": "outputs"}, "run.output_dir = 'outputs' is relative"),
        ({"data.partition": "natural"}, "data.partition = 'natural' (split by speaking role) needs"),
        ({"model.name": "lstm"}, "model.name = 'lstm' is for task 'shakespeare' only"),
        ({"task.name": "teacher", "task.loss": "cross_entropy"}, "does not fit the regression"),
    ],
)
def test_bad_input_is_one_clear_message(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(overrides)
    assert message in str(err.value)


def test_ints_are_accepted_for_floats_and_converted():
    cfg = load_config({"train.lr": 1})
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)


def test_flat_roundtrip_is_exact():
    cfg = load_config({"task.name": "teacher", "train.lr": 0.123, "model.width": 77})
    assert from_flat(to_flat(cfg)) == cfg
    with pytest.raises(ConfigError, match="Unknown config key 'train.bogus' in the received"):
        from_flat({**to_flat(cfg), "train.bogus": 1})


def test_unflatten_and_flatten_invert_each_other():
    flat = {"a.b": 1, "a.c.d": "x", "e": True}
    assert unflatten(flat) == {"a": {"b": 1, "c": {"d": "x"}}, "e": True}
    assert flatten(unflatten(flat)) == flat


def test_parse_run_config_reads_toml_values():
    assert parse_run_config("run.rounds=3 task.name='fmnist' train.lr=0.5 run.save_model=false") == {
        "run.rounds": 3, "task.name": "fmnist", "train.lr": 0.5, "run.save_model": False,
    }


def test_every_yaml_file_only_uses_declared_keys():
    declared = {key for key, _ in iter_fields()}
    for path in CONF_DIR.rglob("*.yaml"):
        keys = set(flatten(yaml.safe_load(path.read_text()) or {}))
        assert keys <= declared, f"{path} uses undeclared keys {keys - declared}"


def test_base_yaml_gives_every_key_a_default():
    base = flatten(yaml.safe_load((CONF_DIR / "base.yaml").read_text()))
    assert set(base) == {key for key, _ in iter_fields()}


def test_pyproject_app_config_equals_base_yaml():
    """Flower only accepts --run-config keys listed in [tool.flwr.app.config]."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    exposed = flatten(pyproject["tool"]["flwr"]["app"]["config"])
    base = flatten(yaml.safe_load((CONF_DIR / "base.yaml").read_text()))
    assert exposed == base


def test_readme_config_reference_is_current():
    """README.md carries `python -m conf --markdown` verbatim."""
    assert reference_table() in (REPO / "README.md").read_text()
