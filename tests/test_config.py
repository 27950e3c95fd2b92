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
        ({"task.name": "mnist"},
         "'task.name' = 'mnist' is not allowed; choose one of: cifar10, digits, fmnist"),
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


# ----------------------------------------------------------------------- issue #13, section 2
FLOAT_KEYS = [key for key, f in iter_fields() if f.type in ("float", float)]


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_non_finite_floats_are_refused_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=f"'{key}'.* must be a finite number"):
        load_config({key: value})


def test_non_finite_floats_are_refused_from_toml_and_the_received_config():
    assert len(FLOAT_KEYS) > 10 and "train.lr" in FLOAT_KEYS and "data.alpha" in FLOAT_KEYS
    with pytest.raises(ConfigError, match="'strategy.clip_gamma'.* finite number, got nan"):
        load_config(parse_run_config("strategy.clip_gamma=nan"))
    with pytest.raises(ConfigError, match="'data.alpha'.* finite"):
        from_flat({**to_flat(load_config()), "data.alpha": float("inf")})


@pytest.mark.parametrize(
    ("key", "value"),
    [("run.name", "../x"), ("run.name", "/tmp/x"), ("run.name", ""), ("run.name", "a/b/c"),
     ("run.name", ".hidden"), ("run.name", "x" * 200), ("run.preset", "../strategy/gossip_pga"),
     ("run.preset", "/etc/passwd"), ("run.preset", "")],
)
def test_names_that_build_paths_must_be_plain(key, value):
    with pytest.raises(ConfigError, match=f"Config key '{key}' = .* is not a plain name: use"):
        load_config({key: value})
    if key == "run.name":  # the client checks what it receives too
        with pytest.raises(ConfigError, match="not a plain name"):
            from_flat({**to_flat(load_config()), key: value})


def test_plain_names_are_accepted():
    assert load_config({"run.name": "lr-0.1_seed.3"}).run.name == "lr-0.1_seed.3"
    assert load_config({"run.name": "auto"}).run.name == "auto"
    assert load_config({"run.preset": "smoke"}).run.rounds == 3


@pytest.mark.parametrize(
    ("text", "leftover"),
    [("train.lr = 0.1", "train.lr = 0.1"), ("run.rounds=3 train.lr =0.1", "train.lr =0.1"),
     ("run.rounds=3 junk", "junk"), ("train.lr=", "train.lr="), ("task.name='fmnist'x", "x")],
)
def test_parse_run_config_never_ignores_text(text, leftover):
    with pytest.raises(ConfigError, match="Cannot read") as err:
        parse_run_config(text)
    assert repr(leftover) in str(err.value)


def test_parse_run_config_errors_say_what_to_write():
    with pytest.raises(ConfigError, match="strings need quotes: task.name='mnist'"):
        parse_run_config("task.name=mnist")
    with pytest.raises(ConfigError, match="'run.rounds' is set twice"):
        parse_run_config("run.rounds=3 run.rounds=4")
    assert parse_run_config("") == {} and parse_run_config("  ") == {}
    assert parse_run_config(' run.name="a b"  train.lr=1e-3 ') == {"run.name": "a b", "train.lr": 1e-3}


def test_python_m_conf_reports_errors_and_shows_the_quoted_form(capsys):
    from conf import __main__ as cli

    assert "task.name=fmnist " not in cli.__doc__ and "task.name='fmnist'" in cli.__doc__
    assert cli.main(["task.name=mnist"]) == 2
    assert "strings need quotes: task.name='mnist'" in capsys.readouterr().err
    assert cli.main(["train.lrr=0.1"]) == 2
    assert "Unknown config key 'train.lrr'" in capsys.readouterr().err
    assert cli.main(["--num-nodes", "1", "strategy.name='gossip_pga'"]) == 2
    assert "gossip_pga" in capsys.readouterr().err
    assert cli.main(["strategy.topology='torus'"]) == 0
    assert "config warning: " in capsys.readouterr().err


@pytest.mark.parametrize("key", ["run.seed", "run.rounds", "strategy.max_examples"])
def test_int_keys_fit_flowers_64_bit_integers(key):
    load_config({key: 2**63 - 1})
    with pytest.raises(ConfigError, match=f"Config key '{key}' = 9223372036854775808 is out of range;"
                                          r" it must be < 2\^63"):
        load_config({key: 2**63})


def test_huge_ints_for_float_keys_are_a_config_error():
    with pytest.raises(ConfigError, match="'train.lr'.* finite number"):
        load_config({"train.lr": 10**400})


def test_gossip_only_keys_with_a_fedavg_strategy_warn_naming_them():
    with pytest.warns(conf_load.ConfigWarning, match="strategy.topology, strategy.period .*only.*gossip_pga"):
        load_config({"strategy.topology": "torus", "strategy.period": 2, "strategy.name": "clipped_fedavg"})
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config()  # defaults: nothing set
        load_config({"strategy.name": "gossip_pga", "strategy.topology": "torus"})
        load_config({"run.preset": "local_sgd"})  # a gossip preset


def test_gossip_pga_needs_two_nodes():
    with pytest.raises(ConfigError, match="'gossip_pga' .*strategy.min_available_nodes = 1 "):
        load_config({"strategy.name": "gossip_pga", "strategy.min_available_nodes": 1,
                     "strategy.min_train_nodes": 1})
    with pytest.raises(ConfigError, match="gossip_pga needs at least 2 nodes.* 1 node"):
        load_config({"strategy.name": "gossip_pga"}, num_nodes=1)
    assert load_config({"strategy.name": "gossip_pga"}, num_nodes=2).strategy.name == "gossip_pga"


def test_min_replies_and_node_counts_against_the_number_of_nodes():
    assert load_config({"strategy.min_replies": 4}, num_nodes=4).strategy.min_replies == 4
    assert load_config({"strategy.min_replies": 0.99}, num_nodes=2).strategy.min_replies == 0.99
    with pytest.raises(ConfigError, match=r"strategy.min_replies = 5 .* only 4 node\(s\) get work"):
        load_config({"strategy.min_replies": 5}, num_nodes=4)
    # fraction_train 0.5 of 10 nodes: 5 sent work each round
    with pytest.raises(ConfigError, match=r"strategy.min_replies = 6 .* only 5 node"):
        load_config({"strategy.min_replies": 6, "strategy.fraction_train": 0.5}, num_nodes=10)
    with pytest.raises(ConfigError, match="strategy.min_replies = 2.5: .* whole number"):
        load_config({"strategy.min_replies": 2.5})
    with pytest.raises(ConfigError, match="strategy.min_available_nodes = 2 .* 1 node"):
        load_config({}, num_nodes=1)
    with pytest.raises(ConfigError, match="strategy.min_available_nodes = 3 .* 2 node"):
        load_config({"strategy.min_train_nodes": 3, "strategy.min_available_nodes": 3}, num_nodes=2)
    with pytest.raises(ConfigError, match="at least one node"):
        load_config({}, num_nodes=0)


@pytest.mark.parametrize(
    "overrides",
    [{"model.width": 10**6}, {"model.depth": 10**6, "model.width": 2048},
     {"task.name": "teacher", "data.input_dim": 10**10},
     {"task.name": "shakespeare", "model.embed_dim": 10**10}],
)
def test_models_too_large_for_memory_are_refused_with_their_size(overrides):
    with pytest.raises(ConfigError, match=r"has [0-9,]+ parameters .* the limit is [0-9,]+"):
        load_config(overrides)


@pytest.mark.parametrize(
    ("name", "shape", "outputs"),
    [("mlp", (8, 8), 10), ("cnn", (1, 28, 28), 10), ("cnn", (1, 8, 8), 10),
     ("lstm", (20,), 65), ("rnn", (20,), 65)],
)
@pytest.mark.parametrize(("width", "depth"), [(7, 1), (16, 3)])
def test_parameter_count_is_the_built_models(name, shape, outputs, width, depth):
    from tasks.models import build_model, parameter_count

    model = build_model(name, shape, outputs, width, depth, 5)
    built = sum(p.numel() for p in model.parameters())
    assert parameter_count(name, shape, outputs, width, depth, 5) == built
