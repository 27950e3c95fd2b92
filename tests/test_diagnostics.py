"""The lazy-regime diagnostics on hand-built cases with known answers, and where they show up:
the training loop, the client's reply, the server's aggregation and per-round record, and the
one-process reference."""

from __future__ import annotations

import json

import pytest
import torch

import tasks
from client import app as client_app
from client import protocol as P
from conf import load_config
from engine import run
from server.app import diagnostics_of
from server.results import METRICS_FILE, RunFolder
from tasks.base import Split
from tasks.diagnostics import (
    Tracker,
    activation_pattern,
    drift,
    flip_fraction,
    full_gradient,
    numerical_rank,
    relative_change,
)
from tasks.models import MLP
from tests.helpers import train_steps
from tests.test_fedavg import ONE_NODE, client_context, reply_to, setup_round

TEACHER = {"task.name": "teacher", "data.num_samples": 128, "model.width": 32}
SERVER_KEYS = {"weight_change", "weight_change_l0", "weight_change_l1", "rank_l0", "rank_l1",
               "activation_flips", "global_train_loss"}


# ----------------------------------------------------------------------------- pure functions
def test_numerical_rank_of_known_matrices():
    gen = torch.Generator().manual_seed(0)
    low = torch.randn(6, 2, generator=gen) @ torch.randn(2, 9, generator=gen)
    assert numerical_rank(low) == 2
    assert numerical_rank(torch.eye(5)) == 5
    assert numerical_rank(torch.zeros(3, 4)) == 0
    # eps = 1e-3 relative to sigma_max: 1e-4 is below it, 1e-2 above
    assert numerical_rank(torch.diag(torch.tensor([1.0, 1e-2, 1e-4]))) == 2
    assert numerical_rank(torch.diag(torch.tensor([1.0, 1e-2, 1e-4])), eps=1e-5) == 3
    assert numerical_rank(torch.ones(4, 2, 3, 3)) == 1  # a conv kernel, flattened per output
    with pytest.raises(ValueError, match="needs a matrix"):
        numerical_rank(torch.ones(3))


def test_relative_change_is_exact():
    initial = {"w": torch.tensor([[3.0, 0.0]]), "b": torch.tensor([0.0, 4.0]), "steps": torch.tensor(7)}
    current = {"w": torch.tensor([[3.0, 1.0]]), "b": torch.tensor([0.0, 4.0]), "steps": torch.tensor(9)}
    assert relative_change(current, initial) == pytest.approx(1.0 / 5.0)  # integer buffers ignored
    assert relative_change(initial, initial) == 0.0
    zero = {"w": torch.zeros(2)}
    assert relative_change(zero, zero) == 0.0
    assert relative_change({"w": torch.ones(2)}, zero) == float("inf")


def test_flip_fraction_counts_unit_example_pairs():
    before = [torch.tensor([[True, False], [True, True]])]
    after = [torch.tensor([[True, True], [True, True]])]
    assert flip_fraction(before, after) == 0.25
    assert flip_fraction(before, before) == 0.0
    with pytest.raises(ValueError, match="different shapes"):
        flip_fraction(before, [torch.ones(3, 2, dtype=torch.bool)])


def test_flips_zero_for_identical_models_and_exact_for_sign_flipped_units():
    torch.manual_seed(0)
    model = MLP(5, 8, 1, 1)
    x = torch.randn(64, 5)
    tracker = Tracker(model, x)
    assert tracker.measure(model)["activation_flips"] == 0.0
    # negating the incoming weights and bias of 3 of the 8 units negates their
    # pre-activations: every (example, unit) pair of those units flips, no other
    first = model.net[1]
    with torch.no_grad():
        first.weight[:3] *= -1
        first.bias.normal_()
        first.bias[:3] *= -1
    before = activation_pattern(model, x)
    with torch.no_grad():
        first.weight[:3] *= -1
        first.bias[:3] *= -1
    assert flip_fraction(before, activation_pattern(model, x)) == pytest.approx(3 / 8)


def test_tracker_at_init_and_after_a_change():
    torch.manual_seed(1)
    model = MLP(4, 16, 2, 3)
    tracker = Tracker(model, torch.randn(10, 4))
    first = tracker.measure(model)
    assert first["weight_change"] == 0.0 and first["activation_flips"] == 0.0
    assert [first[f"rank_l{i}"] for i in range(3)] == [4, 16, 3]  # full rank at init
    assert set(first) == {"weight_change", "activation_flips"} | {
        f"{k}_l{i}" for k in ("weight_change", "rank") for i in range(3)}
    with torch.no_grad():
        model.net[3].weight.mul_(1.5)  # the second hidden layer only
    after = tracker.measure(model)
    assert after["weight_change_l1"] == pytest.approx(0.5)
    assert after["weight_change_l0"] == 0.0 and after["weight_change_l2"] == 0.0
    # a CNN has no hidden(x): no flip metric, the rest still works
    cnn = tasks.models.CNN((1, 8, 8), 8, 2)
    assert "activation_flips" not in Tracker(cnn, torch.randn(2, 1, 8, 8)).measure(cnn)


def test_drift_helper_and_full_gradient():
    assert drift([torch.tensor([2.0, 0.0])], [torch.tensor([1.0, 0.0])]) == 1.0
    assert drift([torch.zeros(2)], [torch.zeros(2)]) == 0.0
    linear = torch.nn.Linear(3, 1)
    data = Split(torch.randn(10, 3), torch.randn(10, 1))
    loss_fn = lambda out, y: 0.5 * (out - y).pow(2).sum(1).mean()
    whole = torch.autograd.grad(loss_fn(linear(data.x), data.y), list(linear.parameters()))
    for chunked, direct in zip(full_gradient(linear, data, loss_fn, chunk=3), whole, strict=True):
        torch.testing.assert_close(chunked, direct)


# ----------------------------------------------------------------------------- the training loop
def quadratic(duplicate: bool):
    """F(w) = 0.5 mean_i (w^T x_i)^2 with A = mean x x^T = e1 e1^T (duplicated rows) or I:
    GD gives grad_t = (I - eta A)^t grad_0 and drift_t = 1 - (1 - eta)^t."""
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0]]) if duplicate else torch.eye(2) * 2**0.5
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    return model, Split(x, torch.zeros(2, 1)), lambda out, y: 0.5 * (out - y).pow(2).sum(1).mean()


@pytest.mark.parametrize("duplicate", [False, True])
@pytest.mark.parametrize(("steps", "every", "expected"), [
    (1, 1, 0.0),  # tau = 1: the only gradient is taken at W_bar
    (4, 1, 1 - 0.9**3),  # max over t < 4 is at t = 3
    (4, 2, 1 - 0.9**2),  # measured at t = 0, 2 only
])
def test_drift_on_a_quadratic_has_its_closed_form(duplicate, steps, every, expected):
    model, data, loss_fn = quadratic(duplicate)
    # batch 2 = full batch (reuses the step's gradient); with duplicated rows, batch 1 has the
    # same gradient, so the separate full-data gradient path must give the same answer
    for batch in ([2, 1] if duplicate else [2]):
        model, data, loss_fn = quadratic(duplicate)
        result = train_steps(model, data, loss_fn, steps=steps, batch_size=batch, lr=0.1,
                             drift_every=every)
        assert result.drift == pytest.approx(expected, abs=1e-6)


def test_drift_off_costs_nothing_and_changes_nothing():
    model, data, loss_fn = quadratic(False)
    off = train_steps(model, data, loss_fn, steps=3, batch_size=2, lr=0.1)
    model_on, _, _ = quadratic(False)
    on = train_steps(model_on, data, loss_fn, steps=3, batch_size=2, lr=0.1, drift_every=1)
    assert off.drift is None and on.drift > 0
    torch.testing.assert_close(model.weight, model_on.weight, rtol=0, atol=0)
    with pytest.raises(ValueError, match="drift_every must be >= 0"):
        train_steps(model, data, loss_fn, steps=1, batch_size=2, lr=0.1, drift_every=-1)


# ----------------------------------------------------------------------------- where they show up
def test_client_reply_carries_drift_only_when_on(flower_identity):
    for every, present in ((0, False), (2, True)):
        cfg = load_config({**TEACHER, **ONE_NODE, "train.drift_every": every, "train.local_steps": 4})
        start = tasks.make_model(cfg, tasks.load_task(cfg)).state_dict()
        _, messages = setup_round(cfg, start, [0])
        metrics = client_app.train(messages[0], client_context(0, 2)).content[P.METRICS]
        assert (P.GRADIENT_DRIFT in metrics) is present and (P.GRADIENT_DRIFT_MAX in metrics) is present
        if present:
            assert metrics[P.GRADIENT_DRIFT] == metrics[P.GRADIENT_DRIFT_MAX] > 0


def test_server_takes_the_max_of_drift_max_and_the_weighted_mean_of_the_rest(flower_identity):
    cfg = load_config({**TEACHER, "train.drift_every": 1, "strategy.weighting": "examples"})
    strategy, messages = setup_round(cfg, {"w": torch.zeros(2)}, [1, 2])
    replies = []
    for message, examples, value in zip(messages, (30, 10), (0.2, 0.6), strict=True):
        reply = reply_to(message, {"w": torch.ones(2)}, examples)
        reply.content[P.METRICS][P.GRADIENT_DRIFT] = reply.content[P.METRICS][P.GRADIENT_DRIFT_MAX] = value
        replies.append(reply)
    _, metrics = strategy.aggregate_train(1, replies)
    assert metrics[P.GRADIENT_DRIFT] == pytest.approx(0.75 * 0.2 + 0.25 * 0.6)
    assert metrics[P.GRADIENT_DRIFT_MAX] == pytest.approx(0.6)


def test_server_round_record_holds_the_diagnostics(tmp_path):
    """What central_evaluate does each round: measure, then write the record."""
    cfg = load_config({**TEACHER, "run.diagnostics": True, "run.output_dir": str(tmp_path)})
    data = tasks.load_task(cfg)
    model, loss_fn = tasks.make_model(cfg, data), tasks.make_loss(cfg, data)
    tracker = Tracker(model, data.train.x[: cfg.run.probe_examples])
    folder = RunFolder(cfg)
    with torch.no_grad():
        model.net[1].weight.add_(0.1)
    diagnostics = diagnostics_of(tracker, model, data, loss_fn, cfg)
    folder.record_round(1, {"loss": 1.0}, {"train_loss": 0.5, **diagnostics})
    record = json.loads((folder.path / METRICS_FILE).read_text().splitlines()[0])
    assert SERVER_KEYS <= set(record) and record["weight_change_l0"] > 0
    assert record["global_train_loss"] == pytest.approx(
        tasks.evaluate(model, data.train, loss_fn, data.kind)["loss"])
    assert diagnostics_of(None, model, data, loss_fn, cfg) == {}  # off: nothing measured


def test_reference_records_hold_the_diagnostics_only_when_on():
    cfg = load_config({**TEACHER, "train.local_steps": 3})
    records = run(cfg, 2, rounds=1).records
    assert not (SERVER_KEYS | {"gradient_drift", "gradient_drift_max"}) & set(records[0])
    cfg = load_config({**TEACHER, "train.local_steps": 3, "run.diagnostics": True, "train.drift_every": 1})
    records = run(cfg, 2, rounds=2).records
    for record in records:
        assert SERVER_KEYS | {"gradient_drift", "gradient_drift_max"} <= set(record)
        assert record["gradient_drift_max"] >= record["gradient_drift"] > 0
    assert 0 < records[0]["weight_change"] < records[1]["weight_change"]
