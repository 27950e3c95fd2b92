"""The CELGC speedup sweep (experiments/celgc_speedup.py): iterations to a target on
synthetic curves, the slope fit, a diverged run marked (never dropped) in both CELGC
experiments' figures, and a tiny end-to-end run of the sweep writing JSON and figures."""

from __future__ import annotations

import json
import math

import matplotlib
import numpy as np
import pytest

from experiments import celgc
from experiments import celgc_speedup as sp

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def test_iterations_to_target_interpolates_the_first_crossing():
    its, loss = [0, 10, 20, 30, 40], [4.0, 3.0, 2.0, 2.6, 1.0]
    assert sp.iterations_to_target(its, loss, 2.5) == pytest.approx(15.0)  # between 10 and 20
    assert sp.iterations_to_target(its, loss, 2.0) == pytest.approx(20.0)  # hit exactly
    assert sp.iterations_to_target(its, loss, 4.5) == 0.0  # the initial model already does
    assert math.isnan(sp.iterations_to_target(its, loss, 0.5))  # never
    # a non-finite loss is never a hit, and no interpolation runs through it
    assert sp.iterations_to_target([0, 10, 20], [4.0, float("nan"), 2.0], 3.0) == 20.0
    assert math.isnan(sp.iterations_to_target([0, 10], [4.0, float("inf")], 3.0))


def test_slope_fit_recovers_linear_and_square_root_speedup():
    clients = [1, 2, 4, 8, 16]
    assert sp.fit_slope(clients, [1000 / n for n in clients]) == pytest.approx(-1.0)
    assert sp.fit_slope(clients, [1000 / n**0.5 for n in clients]) == pytest.approx(-0.5)
    # a target some N did not reach: fitted on the rest
    assert sp.fit_slope(clients, [800, 400, float("nan"), 100, 50]) == pytest.approx(-1.0)
    assert math.isnan(sp.fit_slope(clients, [800] + [float("nan")] * 4))


def test_step_scaling_keeps_the_clipping_threshold():
    assert [sp.step_scale(n, "sqrt") for n in (1, 4, 16)] == [1.0, 2.0, 4.0]
    assert sp.step_scale(8, "linear") == 8.0 and sp.step_scale(8, "none") == 1.0
    with pytest.raises(ValueError, match="step scaling"):
        sp.step_scale(2, "cubic")
    args = sp.parser().parse_args(["--data", "x", "--step-scaling", "sqrt", "--lr", "50", "--gamma", "5"])
    job = next(j for j in sp.jobs(args, [4], [4], [0]) if j[1] == "celgc I=4")
    assert (job[4]["train.lr"], job[4]["strategy.clip_gamma"]) == (100.0, 10.0)  # c = 0.1 kept


def test_budget_and_evaluation_grid():
    assert [sp.budget(n, 1024) for n in (1, 2, 4, 8, 16)] == [1024, 736, 512, 368, 256]
    assert sp.evaluation_interval(1024, 1) == 32
    assert sp.evaluation_interval(256, 16) == 16  # never inside a round
    assert sp.evaluation_interval(256, 4) == 8


def synthetic_run(label, n, seed, rate, diverged_at=None, interval=1):
    """A run shaped as ``compact`` stores it: test loss 4 exp(-rate N t / 100) every 8
    iterations; a diverged one stops at ``diverged_at`` with a NaN train loss."""
    stop = diverged_at or 64
    records = [{"round": t // interval, "iteration": t, "train_loss": 1.0,
                "test_loss": 4 * math.exp(-rate * n * t / 100), "num_replies": n}
               for t in range(8, stop + 1, 8)]
    if diverged_at:
        records[-1] = {"round": stop // interval, "iteration": stop, "train_loss": float("nan"),
                       "num_replies": 0}
    return {"label": label, "clients": n, "I": interval, "seed": seed, "initial_test_loss": 4.0,
            "diverged": diverged_at is not None, "diverged_at": diverged_at, "model_size": 1000,
            "batch_size": 4, "records": records}


def synthetic_runs():
    runs = []
    for seed in (0, 1):
        for n in (1, 2, 4):
            runs.append(synthetic_run("celgc I=4", n, seed, rate=1.0 + 0.1 * seed, interval=4))
            runs.append(synthetic_run("unclipped I=4", n, seed, rate=1.0, diverged_at=12 + 4 * n,
                                      interval=4))
    return runs


def test_summary_measures_the_synthetic_linear_speedup():
    summary = sp.summarise(synthetic_runs(), target=2.0)
    m = summary["methods"]["celgc I=4"]
    # loss 4 exp(-r N t / 100) = 2 at t = 100 ln 2 / (r N): slope -1 exactly (up to interpolation)
    assert m["slope"]["mean"] == pytest.approx(-1.0, abs=0.05)
    assert m["iterations"]["1"]["mean"] == pytest.approx(100 * math.log(2) * (1 + 1 / 1.1) / 2, rel=0.05)
    assert m["iterations"]["4"]["reached"] == 2
    u = summary["methods"]["unclipped I=4"]
    assert u["diverged"] == {"1": 2, "2": 2, "4": 2} and u["iterations"]["1"]["reached"] == 0
    assert math.isnan(u["slope"]["mean"])
    # equal rounds: the fewest rounds of a run that did not diverge (64 / 4 = 16)
    assert summary["equal_rounds"]["2"]["rounds"] == 16
    assert summary["equal_rounds"]["2"]["bytes"] == 16 * 2 * 2 * 4 * 1000
    assert math.isnan(summary["equal_rounds"]["2"]["unclipped I=4"]["mean"])  # diverged by then
    assert "slope" in sp.markdown(summary, [1, 2, 4])


def _texts_and_crosses(fig):
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    crosses = [(float(line.get_xdata()[0]), float(line.get_ydata()[0])) for ax in fig.axes
               for line in ax.lines if line.get_marker() == "x" and len(line.get_xdata())]
    return texts, crosses


def test_a_diverged_run_is_marked_at_its_last_finite_loss():
    fig, ax = plt.subplots()
    run = synthetic_run("unclipped I=4", 2, 0, rate=1.0, diverged_at=24, interval=4)
    other = synthetic_run("unclipped I=4", 2, 1, rate=1.0, diverged_at=8, interval=4)
    other["records"][-1]["train_loss"] = 31.4  # stopped above celgc.DIVERGED, finite
    sp._band(ax, [run, other], "iteration", "unclipped I=4")
    texts, crosses = _texts_and_crosses(fig)
    legend = [line.get_label() for line in ax.lines if not line.get_label().startswith("_")]
    plt.close(fig)
    # one annotation for the group, one x per seed, one legend entry
    assert texts == ["unclipped I=4: 2/2 seeds diverged\nat iteration 24, 8\n(train loss NaN, 31)"]
    assert legend == ["unclipped I=4: 2/2 seeds diverged"]
    # the last finite evaluation: iteration 16 (the record at 24 has no test loss); the
    # other seed's only finite point is the initial model's loss at iteration 0
    assert crosses == [pytest.approx((16.0, 4 * math.exp(-2 * 16 / 100))), (0.0, 4.0)]


@pytest.fixture
def kept_figures(monkeypatch):
    """The figures a plotting function makes, kept open (it closes them)."""
    close = plt.close
    close("all")
    monkeypatch.setattr(plt, "close", lambda *a, **k: None)
    yield lambda: [plt.figure(num) for num in plt.get_fignums()]
    close("all")


def test_celgc_figures_mark_a_run_that_diverged_before_its_first_evaluation(tmp_path, kept_figures):
    fine = {"model": "rnn", "label": "celgc I=4", "clients": 4, "I": 4, "diverged": False,
            "records": [{"round": r, "iteration": 4 * r, "train_loss": 2.0, "test_loss": 3 - r / 10}
                        for r in range(1, 9)]}
    # the old JSON's unclipped run: NaN in round 1, no evaluation, no diverged_at
    broken = {"model": "rnn", "label": "unclipped I=4", "clients": 4, "I": 4, "diverged": True,
              "records": [{"round": 1, "iteration": 4, "train_loss": float("nan")}]}
    paths = celgc.figures([fine, broken], {}, tmp_path)
    assert [p.name for p in paths] == ["celgc_rnn.png"] and paths[0].stat().st_size > 0
    texts, crosses = _texts_and_crosses(kept_figures()[0])
    assert texts == ["unclipped I=4: diverged at iteration 4"] * 2
    assert sorted(crosses) == [(1.0, 8.0), (4.0, 8.0)]  # round 1 and iteration 4, at the cap


def test_sweep_end_to_end_writes_json_and_figures(tmp_path, shakespeare_path):
    argv = ["--data", shakespeare_path, "--clients", "1,2", "--periods", "4", "--seeds", "2",
            "--iterations", "16", "--max-train", "200", "--width", "16", "--seq-len", "20",
            "--test-examples", "16", "--target", "4.0", "--workers", "0", "--out", str(tmp_path)]
    assert sp.main(argv) == 0
    record = json.loads((tmp_path / "results" / "celgc_speedup.json").read_text())
    assert record["command"] == "python -m experiments.celgc_speedup " + " ".join(argv)
    assert len(record["commit"]) >= 7 and isinstance(record["uncommitted_code"], list)
    assert record["setting"]["budget"] == {"1": 16, "2": 16}
    # naive, celgc I=4, unclipped I=4; 2 client counts; 2 seeds
    assert len(record["runs"]) == 12
    assert {r["label"] for r in record["runs"]} == {"naive", "celgc I=4", "unclipped I=4"}
    for run in record["runs"]:
        assert 4.0 < run["initial_test_loss"] < 5.0  # about ln 96 = 4.56 at initialisation
        assert run["records"][-1]["iteration"] == 16 or run["diverged"]
    celgc_i4 = record["summary"]["methods"]["celgc I=4"]
    assert celgc_i4["iterations"]["1"]["reached"] == 2  # 4.56 -> below 4.0 within 16 steps
    assert 0 < celgc_i4["iterations"]["1"]["mean"] <= 16
    assert np.isfinite(celgc_i4["slope"]["mean"])
    for name in ("celgc_speedup.png", "celgc_speedup_comm.png", "celgc_speedup_unclipped.png"):
        assert (tmp_path / "figures" / name).stat().st_size > 10_000
        (tmp_path / "figures" / name).unlink()
    # the plot step alone, from the stored runs
    assert sp.main(["--data", "unused", "--replot", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "figures" / "celgc_speedup_comm.png").stat().st_size > 10_000
