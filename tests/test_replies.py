"""No field of a reply is trusted: every defect of one reply rejects that reply alone, with
its node named, and the round goes on with the aggregate of the honest replies.

Fabricated replies through the strategies' hooks (no Grid, no simulation)."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from client import protocol as P
from conf import load_config, to_flat
from server.results import failures_by_round
from strategies import build_strategy
from strategies.fedavg import DropoutError, required_replies
from strategies.replies import ArraySpec, ReplyError, decode_array

SHAPES = {"w": (4, 3), "b": (3,)}
NODES = [11, 12, 13, 14]  # the last one is the rogue


class FakeGrid:
    def __init__(self, node_ids):
        self.node_ids = list(node_ids)

    def get_node_ids(self):
        return self.node_ids


def npy(value: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, value, allow_pickle=True)
    return buffer.getvalue()


def raw_array(value: np.ndarray | None = None, *, data: bytes | None = None,
              stype: str = "numpy.ndarray") -> Array:
    """An Array exactly as a client could send it, whatever it declares."""
    value = np.zeros(1, np.float32) if value is None else value
    return Array(dtype=str(value.dtype), shape=tuple(value.shape), stype=stype,
                 data=npy(value) if data is None else data)


def honest_arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}


def reply(message, arrays: dict | None = None, metrics: dict | None = None, *,
          array_items: dict | None = None, extra: dict | None = None, drop_arrays=False):
    arrays = arrays if arrays is not None else honest_arrays(message.metadata.dst_node_id)
    items = {k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}
    items.update(array_items or {})
    content = {P.METRICS: MetricRecord(metrics if metrics is not None
                                       else {P.NUM_EXAMPLES: 10, P.TRAIN_LOSS: 1.0})}
    if not drop_arrays:
        content[P.ARRAYS] = ArrayRecord(items)
    content.update(extra or {})
    return Message(content=RecordDict(content), reply_to=message)


def setup(overrides: dict, nodes=NODES, fill: float = 0.0):
    cfg = load_config({"strategy.min_train_nodes": len(nodes),
                       "strategy.min_available_nodes": len(nodes), **overrides})
    strategy = build_strategy(cfg, ConfigRecord(to_flat(cfg)))
    start = ArrayRecord({k: Array(np.full(s, fill, np.float32)) for k, s in SHAPES.items()})
    messages = list(strategy.configure_train(1, start, ConfigRecord(), FakeGrid(nodes)))
    return strategy, sorted(messages, key=lambda m: m.metadata.dst_node_id)


def huge_header() -> bytes:
    """An .npy header declaring 10^13 float32 values (40 TB), and no data."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "<f4", "fortran_order": False, "shape": (10**13,)})
    return buffer.getvalue()


HUGE_HEADER = huge_header()


def rogue_cases():
    """(id, how the rogue's reply is built, words of the reason logged)."""
    w = np.zeros(SHAPES["w"], np.float32)
    ok = {P.NUM_EXAMPLES: 10, P.TRAIN_LOSS: 1.0}
    return [
        # weights (weighting='examples')
        ("negative-examples", {"metrics": {**ok, P.NUM_EXAMPLES: -5}}, "is not positive"),
        ("zero-examples", {"metrics": {**ok, P.NUM_EXAMPLES: 0}}, "is not positive"),
        ("nan-examples", {"metrics": {**ok, P.NUM_EXAMPLES: float("nan")}}, "'num_examples' is nan"),
        ("inf-examples", {"metrics": {**ok, P.NUM_EXAMPLES: float("inf")}}, "'num_examples' is inf"),
        ("fractional-examples", {"metrics": {**ok, P.NUM_EXAMPLES: 2.7}}, "is not an integer"),
        ("missing-examples", {"metrics": {P.TRAIN_LOSS: 1.0}}, "['num_examples'] missing"),
        ("list-examples", {"metrics": {**ok, P.NUM_EXAMPLES: [1, 2]}}, "is a list, not a number"),
        # dtypes and values
        ("complex-nan", {"array_items": {"w": raw_array(np.full(SHAPES["w"], np.nan + 1j * np.nan,
                                                                np.complex64))}},
         "dtype complex64, not a real number type"),
        ("float64-1e300", {"array_items": {"w": raw_array(np.full(SHAPES["w"], 1e300))}},
         "NaN or infinite values (as float32)"),
        ("float32-nan", {"array_items": {"w": raw_array(np.full(SHAPES["w"], np.nan, np.float32))}},
         "NaN or infinite values"),
        ("float16-inf", {"array_items": {"w": raw_array(np.full(SHAPES["w"], np.inf, np.float16))}},
         "NaN or infinite values"),
        ("object-array", {"array_items": {"w": raw_array(np.full(SHAPES["w"], None, object))}},
         "dtype object"),
        ("string-array", {"array_items": {"w": raw_array(np.full(SHAPES["w"], "x"))}}, "dtype <U1"),
        ("not-npy-bytes", {"array_items": {"w": raw_array(w, data=b"certainly not numpy")}},
         "is not a valid .npy array"),
        ("huge-declared-shape", {"array_items": {"w": raw_array(w, data=HUGE_HEADER)}},
         "has shape (10000000000000,), expected (4, 3)"),
        ("truncated-data", {"array_items": {"w": raw_array(w, data=npy(w)[:-4])}},
         "holds 44 data bytes, its header declares 48"),
        ("other-stype", {"array_items": {"w": raw_array(w, stype="torch.Tensor")}},
         "serialization type 'torch.Tensor'"),
        ("wrong-shape", {"arrays": {"w": np.zeros((5, 3), np.float32), "b": np.zeros(3, np.float32)}},
         "has shape (5, 3), expected (4, 3)"),
        ("missing-array", {"arrays": {"w": w}}, "missing ['b']"),
        ("extra-array", {"arrays": {"w": w, "b": np.zeros(3, np.float32), "c": w}}, "unexpected ['c']"),
        ("arrays-reordered", {"arrays": {"b": np.zeros(3, np.float32), "w": w}}, "in another order"),
        # metrics
        ("missing-train-loss", {"metrics": {P.NUM_EXAMPLES: 10}}, "['train_loss'] missing"),
        ("nan-train-loss", {"metrics": {**ok, P.TRAIN_LOSS: float("nan")}}, "'train_loss' is nan"),
        ("list-train-loss", {"metrics": {**ok, P.TRAIN_LOSS: [1.0, 2.0]}}, "is a list"),
        ("list-known-metric", {"metrics": {**ok, P.NUM_STEPS: [1, 2]}}, "'num_steps' is a list"),
        # records
        ("second-array-record", {"extra": {"more": ArrayRecord({"w": Array(w)})}},
         "array records ['arrays', 'more']"),
        ("second-metric-record", {"extra": {"more": MetricRecord({"x": 1.0})}},
         "metric records ['metrics', 'more']"),
        ("config-record", {"extra": {"cfg": ConfigRecord({"x": "y"})}}, "config records ['cfg']"),
        ("no-array-record", {"drop_arrays": True}, "array records []"),
    ]


def honest_only(overrides: dict):
    strategy, messages = setup(overrides, NODES[:-1])
    return strategy.aggregate_train(1, [reply(m) for m in messages])


@pytest.mark.parametrize(("case", "rogue", "reason"), rogue_cases(), ids=[c[0] for c in rogue_cases()])
@pytest.mark.parametrize("name", ["fedavg", "clipped_fedavg", "naive_clipping"])
def test_a_bad_reply_is_rejected_by_node_and_the_round_goes_on(flower_identity, caplog, name, case,
                                                               rogue, reason):
    overrides = {"strategy.name": name, "strategy.weighting": "examples"}
    strategy, messages = setup(overrides)
    replies = [reply(m) for m in messages[:-1]] + [reply(messages[-1], **rogue)]
    with caplog.at_level(logging.WARNING, logger="flwr"):
        arrays, metrics = strategy.aggregate_train(1, replies)
    assert f"Rejected the reply of node {NODES[-1]}: " in caplog.text
    assert reason in caplog.text
    assert metrics["num_replies"] == 3 and metrics["num_failures"] == 1
    expected, _ = honest_only(overrides)
    for key in SHAPES:
        np.testing.assert_array_equal(arrays[key].numpy(), expected[key].numpy())


def test_the_table_covers_every_honest_reply_as_accepted(flower_identity):
    """The control: the same four replies, all honest, are all accepted."""
    strategy, messages = setup({"strategy.weighting": "examples"})
    _, metrics = strategy.aggregate_train(1, [reply(m) for m in messages])
    assert metrics["num_replies"] == 4 and metrics["num_failures"] == 0


def test_unknown_metric_keys_are_dropped_not_fatal(flower_identity):
    strategy, messages = setup({})
    extra = {P.NUM_EXAMPLES: 10, P.TRAIN_LOSS: 1.0, "rogue_metric": 1.0, "rogue-list": [1.0, 2.0]}
    replies = [reply(m) for m in messages[:-1]] + [reply(messages[-1], metrics=extra)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert metrics["num_replies"] == 4 and "rogue_metric" not in metrics
    mean = np.mean([honest_arrays(n)["w"].astype(np.float64) for n in NODES], axis=0)
    np.testing.assert_allclose(arrays["w"].numpy(), mean, rtol=0, atol=1e-6)


@pytest.mark.parametrize("claim", [10**12, 1e12])
def test_a_claimed_example_count_is_capped_and_uniform_weighting_reads_none(flower_identity, claim):
    """weight_inflation: under 'examples' the claim counts as max_examples; under 'uniform'
    (the default) the server reads nothing from the reply."""
    zero = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    honest = [honest_arrays(n) for n in NODES[:-1]]
    for weighting, cap in (("examples", 30), ("uniform", 100000)):
        strategy, messages = setup({"strategy.weighting": weighting, "strategy.max_examples": cap})
        replies = [reply(m, metrics={P.NUM_EXAMPLES: 10, P.TRAIN_LOSS: 1.0}) for m in messages[:-1]]
        replies.append(reply(messages[-1], zero, {P.NUM_EXAMPLES: claim, P.TRAIN_LOSS: 1.0}))
        arrays, _ = strategy.aggregate_train(1, replies)
        weights = [10, 10, 10, cap] if weighting == "examples" else [1, 1, 1, 1]
        expected = sum(w * a["w"].astype(np.float64) for w, a in zip(weights, honest)) / sum(weights)
        np.testing.assert_allclose(arrays["w"].numpy(), expected, rtol=0, atol=1e-6)


def test_an_aggregate_that_is_not_finite_is_not_taken(flower_identity, caplog):
    """Gradients that pass every check (finite) but whose step takes a model at 3e38 past
    float32's range: the round keeps the previous model and says why, not 'check the
    SuperNodes'."""
    strategy, messages = setup({"strategy.name": "naive_clipping", "train.lr": 1e30,
                                "strategy.clip_gamma": 1e39}, fill=3e38)
    big = {k: np.full(s, -1e10, np.float32) for k, s in SHAPES.items()}
    with caplog.at_level(logging.ERROR, logger="flwr"):
        arrays, metrics = strategy.aggregate_train(1, [reply(m, big) for m in messages])
    assert arrays is None and metrics["aggregate_rejected"] == 1
    assert "is not finite" in caplog.text and "NOT taken" in caplog.text
    assert failures_by_round([{"round": 1, "num_failures": 0, "aggregate_rejected": 1}])


def test_a_robust_aggregator_is_not_moved_by_a_huge_finite_reply(flower_identity):
    huge = {k: np.full(s, 1e30, np.float32) for k, s in SHAPES.items()}
    honest = np.stack([honest_arrays(n)["w"] for n in NODES[:-1]])
    for name in ("median", "geometric_median", "bgmd", "krum", "trimmed_mean"):
        strategy, messages = setup({"strategy.aggregator": name, "strategy.byzantine": 1,
                                    "strategy.trim_fraction": 0.25, "strategy.bgmd_fraction": 1.0})
        replies = [reply(m) for m in messages[:-1]] + [reply(messages[-1], huge)]
        arrays, _ = strategy.aggregate_train(1, replies)
        w = arrays["w"].numpy()
        assert (np.abs(w) < 10).all(), name
    strategy, messages = setup({})
    arrays, _ = strategy.aggregate_train(1, [reply(m) for m in messages[:-1]] + [reply(messages[-1], huge)])
    assert (arrays["w"].numpy() > 1e29).all()  # the mean is moved anywhere
    assert honest.shape == (3, 4, 3)


@pytest.mark.parametrize(("setting", "sent", "need"), [(0.5, 4, 2), (0.5, 3, 2), (0.25, 10, 3),
                                                       (0.99, 10, 10), (1, 10, 1), (3, 10, 3)])
def test_min_replies_is_a_fraction_below_one_and_a_count_from_one(setting, sent, need):
    assert required_replies(setting, sent) == need


def test_too_few_sound_replies_stop_the_run_and_name_the_rejected(flower_identity):
    strategy, messages = setup({})  # default min_replies 0.5: 2 of 4
    bad = {P.NUM_EXAMPLES: 10, P.TRAIN_LOSS: float("nan")}
    replies = [reply(messages[0])] + [reply(m, metrics=bad) for m in messages[1:]]
    with pytest.raises(DropoutError, match=r"only 1 sound reply\(ies\) of 4 sent.*rejected as "
                                           r"unusable \(reasons logged above\): \[12, 13, 14\]"):
        strategy.aggregate_train(1, replies)


def test_decode_never_materialises_a_declared_size_and_refuses_pickles():
    spec = ArraySpec("w", (4, 3), np.dtype(np.float32))
    with pytest.raises(ReplyError, match="expected"):
        decode_array("numpy.ndarray", HUGE_HEADER + b"\x00" * 16, spec)
    with pytest.raises(ReplyError, match="dtype object"):
        decode_array("numpy.ndarray", npy(np.full((4, 3), None, object)), spec)
    value = decode_array("numpy.ndarray", npy(np.arange(12, dtype=np.int64).reshape(4, 3)), spec)
    assert value.dtype == np.float32 and value[3, 2] == 11.0  # integers are converted
    fortran = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(4, 3))
    np.testing.assert_array_equal(decode_array("numpy.ndarray", npy(fortran), spec), fortran)


def test_federated_evaluation_replies_are_checked_too(flower_identity, caplog):
    """Evaluation replies carry metrics only; a bad one is rejected by node, the rest averaged."""
    strategy, messages = setup({"strategy.fraction_evaluate": 1.0})
    def evaluation(message, metrics):
        return Message(content=RecordDict({P.METRICS: MetricRecord(metrics)}), reply_to=message)
    good = [evaluation(m, {P.NUM_EXAMPLES: n, P.EVAL_LOSS: loss, P.EVAL_ACCURACY: 0.5})
            for m, n, loss in zip(messages[:2], (10, 30), (1.0, 2.0), strict=True)]
    bad = [evaluation(messages[2], {P.NUM_EXAMPLES: 10, P.EVAL_LOSS: float("inf")}),
           evaluation(messages[3], {P.EVAL_LOSS: 0.0, "rogue": 1.0})]
    with caplog.at_level(logging.WARNING, logger="flwr"):
        metrics = strategy.aggregate_evaluate(1, good + bad)
    assert metrics[P.EVAL_LOSS] == pytest.approx(0.25 * 1.0 + 0.75 * 2.0)
    assert f"Rejected the reply of node {NODES[2]}: metric 'eval_loss' is inf" in caplog.text
    assert f"Rejected the reply of node {NODES[3]}: metric(s) ['num_examples'] missing" in caplog.text


def test_too_few_replies_for_the_robust_rule_are_said(flower_identity, caplog):
    """Krum tolerates f bad replies only from 2f + 3 replies on: 4 replies with f = 1 go on,
    with a warning that the round's result is not robust."""
    strategy, messages = setup({"strategy.aggregator": "krum", "strategy.byzantine": 1})
    with caplog.at_level(logging.WARNING, logger="flwr"):
        arrays, _ = strategy.aggregate_train(1, [reply(m) for m in messages])
    assert arrays is not None
    assert "Round 1: 4 sound replies, fewer than the 5 that strategy.aggregator='krum' needs" in caplog.text
