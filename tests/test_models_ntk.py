"""The theory's two-layer model (``model.parametrization='ntk'``) and a frozen output layer.

Deng, Kamani, Mahdavi (AISTATS 2022, v1) after Du et al. (2019):
f(x) = m^-1/2 sum_r a_r relu(w_r^T x), w_r ~ N(0, I), a_r in {-1, +1} fixed, W trained.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import engine
import tasks
from client import protocol as P
from conf import load_config
from tasks.models import MLP, build_model
from tests.test_fedavg import client_round, setup_round

THEORY = {"task.name": "teacher", "model.depth": 1, "model.width": 64,
          "model.parametrization": "ntk", "model.freeze_output": True,
          "data.max_train": 24, "data.partition": "iid", "data.min_partition_size": 2,
          "train.batch_size": 4096, "train.local_steps": 3, "train.lr": 2.0}


def test_ntk_model_is_the_formula():
    cfg = load_config(THEORY)
    data = tasks.load_task(cfg)
    model = tasks.make_model(cfg, data)
    assert sorted(model.state_dict()) == ["net.1.weight", "net.3.weight"]  # no biases
    W, a = model.net[1].weight.detach().double(), model.net[3].weight.detach().double()
    assert W.shape == (64, 16) and a.shape == (1, 64)
    assert set(a.flatten().tolist()) == {-1.0, 1.0}
    assert abs(float(W.mean())) < 0.1 and abs(float(W.std()) - 1.0) < 0.1  # N(0, 1), 1024 draws
    x = data.train.x.double()
    torch.testing.assert_close(x.norm(dim=1), torch.ones(len(x), dtype=torch.float64))
    expected = torch.relu(x @ W.T) @ a.T / 64**0.5
    torch.testing.assert_close(model(data.train.x).double(), expected, rtol=1e-5, atol=1e-6)
    assert [p.requires_grad for p in model.parameters()] == [True, False]


def test_ntk_refuses_what_it_is_not():
    with pytest.raises(ValueError, match="model.depth=1"):
        MLP(16, 8, 2, 1, "ntk")
    with pytest.raises(ValueError, match="is for the mlp"):
        build_model("cnn", (1, 8, 8), 10, 8, 1, 4, parametrization="ntk")
    with pytest.raises(ValueError, match="parametrization"):
        load_config({"model.parametrization": "mup"})


def test_default_model_is_unchanged():
    """The standard MLP is built exactly as before the option existed: Linear layers
    created in order, then He-normal weights and zero biases, all trained."""
    cfg = load_config({"task.name": "teacher"})
    assert (cfg.model.parametrization, cfg.model.freeze_output) == ("standard", False)
    model = tasks.make_model(cfg, tasks.task_spec(cfg))
    torch.manual_seed(cfg.run.seed)
    layers = [nn.Linear(16, 256), nn.Linear(256, 1)]
    for layer in layers:
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        nn.init.zeros_(layer.bias)
    reference = {"net.1.weight": layers[0].weight, "net.1.bias": layers[0].bias,
                 "net.3.weight": layers[1].weight, "net.3.bias": layers[1].bias}
    state = model.state_dict()
    assert list(state) == list(reference)
    for name, value in reference.items():
        assert torch.equal(state[name], value.detach())
    assert all(p.requires_grad for p in model.parameters()) and model.output_scale == 1.0


@pytest.mark.parametrize("name", ["mlp", "cnn", "rnn"])
def test_freeze_output_freezes_the_last_layer_only(name):
    shape = {"mlp": (16,), "cnn": (1, 8, 8), "rnn": (5,)}[name]
    model = build_model(name, shape, 10, 8, 1, 4, freeze_output=True)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith({"mlp": "net.3", "cnn": "head.3", "rnn": "out"}[name])
                          for n in frozen)


def test_output_layer_stays_fixed_through_a_round_engine_and_flower(flower_identity):
    """One round of FedAvg on 2 clients: the engine averages only W, the Flower clients
    send a back unchanged and the strategy's average keeps it bit-exact; both drivers give
    the same W."""
    clients = 2
    cfg = load_config({**THEORY, "strategy.min_train_nodes": clients,
                       "strategy.min_available_nodes": clients, "strategy.weighting": "examples"})
    data = tasks.load_task(cfg)
    start = {k: v.clone() for k, v in tasks.make_model(cfg, data).state_dict().items()}
    run = engine.run(cfg, clients, rounds=1)
    assert torch.equal(run.state["net.3.weight"], start["net.3.weight"])
    moved = float((run.state["net.1.weight"] - start["net.1.weight"]).abs().max())
    assert moved > 1e-3

    strategy, messages = setup_round(cfg, start, range(clients))
    replies = [client_round(cfg, m, i, clients) for i, m in enumerate(messages)]
    assert [int(r.content[P.METRICS][P.NUM_STEPS]) for r in replies] == [3] * clients
    arrays, _ = strategy.aggregate_train(1, replies)
    assert np.array_equal(arrays["net.3.weight"].numpy(), start["net.3.weight"].numpy())
    np.testing.assert_allclose(arrays["net.1.weight"].numpy(), run.state["net.1.weight"].numpy(),
                               rtol=0, atol=1e-6)
