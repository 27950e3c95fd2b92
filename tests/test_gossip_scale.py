"""experiments.gossip_scale: the transient stage, the growth exponent, the verdict, and a
tiny end-to-end run of the script (digits, n = 4 and 8, a few iterations)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from experiments import gossip_scale as gs

ITS = [10, 20, 30, 40, 50]
REF = [1.0, 0.8, 0.6, 0.5, 0.4]


def test_transient_stays_within_from_the_first_iteration_it_enters():
    loss = [2.0, 1.5, 0.65, 0.52, 0.41]  # ratios 2, 1.875, 1.083, 1.04, 1.025
    assert gs.transient_stage(ITS, loss, REF, eps=0.1) == 30


def test_transient_re_exit_gives_the_later_iteration():
    loss = [1.05, 0.85, 0.9, 0.52, 0.41]  # within, within, out (1.5), within, within
    assert gs.transient_stage(ITS, loss, REF, eps=0.1) == 40


def test_transient_never_within_at_the_horizon_is_none():
    loss = [1.0, 0.8, 0.6, 0.5, 0.5]  # within until the last point (1.25)
    assert gs.transient_stage(ITS, loss, REF, eps=0.1) is None
    assert gs.transient_stage(ITS, [9.0] * 5, REF, eps=0.1) is None


def test_transient_always_within_is_the_first_evaluation_and_the_band_is_closed():
    assert gs.transient_stage(ITS, REF, REF, eps=0.1) == 10
    loss = [1.1 * r for r in REF]  # exactly 1 + eps: inside
    assert gs.transient_stage(ITS, loss, REF, eps=0.1) == 10
    assert gs.transient_stage(ITS, loss, REF, eps=0.05) is None


def test_transient_not_finite_counts_as_outside():
    loss = [1.0, 0.8, math.nan, 0.5, 0.4]
    assert gs.transient_stage(ITS, loss, REF, eps=0.1) == 40
    with pytest.raises(ValueError):
        gs.transient_stage(ITS, loss[:3], REF, eps=0.1)


def test_growth_exponent_recovers_a_power_law_and_flags_censoring():
    nodes = [16, 32, 64, 128]
    slope, censored = gs.growth_exponent(nodes, [3.0 * n**1.5 for n in nodes], horizon=10**6)
    assert slope == pytest.approx(1.5, abs=1e-9) and not censored
    # a censored point enters as the horizon: here exactly on the power law t = n
    slope, censored = gs.growth_exponent([10, 100, 1000], [10, 100, None], horizon=1000)
    assert slope == pytest.approx(1.0, abs=1e-9) and censored
    with pytest.raises(ValueError):
        gs.growth_exponent([16], [10], horizon=100)


def _rows(label, values, seed):
    return [{"label": label, "topology": "ring", "nodes": n, "seed": seed, "transient": t}
            for n, t in zip([16, 32, 64, 128], values, strict=True)]


def test_exponents_table_and_verdict():
    rows = (_rows("gossip", [20, 80, 320, None], 0) + _rows("gossip", [40, 160, 640, None], 1)
            + _rows("pga H=16", [10, 20, 40, 80], 0) + _rows("pga H=16", [10, 20, 40, 80], 1))
    fits = gs.exponents(rows, horizon=1000)
    assert fits["pga H=16"]["mean"] == pytest.approx(1.0) and fits["pga H=16"]["std"] == pytest.approx(0.0)
    assert not fits["pga H=16"]["censored"] and fits["gossip"]["censored"]
    assert fits["pga H=16"]["ratio_max_min"] == pytest.approx(8.0)
    assert fits["gossip"]["ratio_max_min"] == pytest.approx((1000 / 20 + 1000 / 40) / 2)
    assert fits["gossip"]["mean"] > 1.5
    verdict = gs.verdict(fits)
    assert verdict["holds"] is True and ">=" in verdict["why"]
    # PGA censored somewhere: only a lower bound, no verdict
    rows[-1] = {**rows[-1], "transient": None}
    assert gs.verdict(gs.exponents(rows, horizon=1000))["holds"] is None
    # PGA growing faster: does not hold
    fast = _rows("gossip", [10, 20, 40, 80], 0) + _rows("pga H=16", [10, 40, 160, 640], 0)
    assert gs.verdict(gs.exponents(fast, horizon=1000))["holds"] is False
    table = {(r["label"], r["nodes"]): r for r in gs.table(rows, horizon=1000)}
    assert table[("gossip", 128)]["censored"] == 2 and table[("gossip", 128)]["mean"] == 1000
    assert table[("gossip", 16)]["mean"] == 30 and table[("gossip", 16)]["std"] == 10


def test_main_tiny_grid_writes_json_and_figures(tmp_path):
    argv = ["--task", "digits", "--nodes", "4,8", "--exp-nodes", "4,8", "--extra-nodes", "", "--seeds", "2",
            "--iterations", "6", "--every", "2", "--width", "8", "--out", str(tmp_path)]
    assert gs.main(argv) == 0
    data = json.loads((tmp_path / "results" / "gossip_scale.json").read_text())
    assert data["command"] == "python -m experiments.gossip_scale " + " ".join(
        a if a else "''" for a in argv)
    assert len(data["commit"]) >= 7
    # per seed and n: parallel, Gossip SGD and PGA H=16 on two graphs = 5 runs
    assert len(data["runs"]) == 2 * 2 * 5
    assert len(data["transients"]) == 2 * 2 * 4
    for run in data["runs"]:
        assert [r["iteration"] for r in run["records"]] == [2, 4, 6]
        assert len(run["consensus_distance"]) == 6
        assert all(np.isfinite(r["xbar_train_loss"]) for r in run["records"])
        if run["label"] == "parallel":
            assert max(run["consensus_distance"]) < 1e-10
    # the stored transients are what the function makes of the stored curves
    runs = {(r["label"], r["topology"], r["nodes"], r["seed"]): r for r in data["runs"]}
    for row in data["transients"]:
        mine = runs[(row["label"], row["topology"], row["nodes"], row["seed"])]
        par = runs[("parallel", "any", row["nodes"], row["seed"])]
        expected = gs.transient_stage([2, 4, 6], [r["xbar_train_loss"] for r in mine["records"]],
                                      [r["xbar_train_loss"] for r in par["records"]], data["eps"])
        assert row["transient"] == expected and row["transient"] in (None, 2, 4, 6)
    assert set(data["exponents"]) == {"gossip", "pga H=16"}
    assert all(len(f["per_seed"]) == 2 for f in data["exponents"].values())
    assert data["verdict"]["holds"] in (True, False, None)
    assert data["mixing_time"]["ring"]["8"] == pytest.approx(1 / (1 - np.cos(2 * np.pi / 8) * 2 / 3 - 1 / 3))
    for name in ("loss", "ratio", "transient_vs_nodes", "transient_vs_mixing", "consensus"):
        assert (tmp_path / "figures" / f"gossip_scale_{name}.png").stat().st_size > 10_000


def test_verdict_with_a_censored_gossip_exponent_only_confirms():
    # Gossip SGD censored at n >= 32 (its exponent 0.2 is a lower bound); PGA's 0.5 is above
    # that bound, which says nothing about the true Gossip exponent
    rows = _rows("gossip", [100, None, None, None], 0) + _rows("pga H=16", [20, 30, 40, 56], 0)
    verdict = gs.verdict(gs.exponents(rows, horizon=150))
    assert verdict["holds"] is None and "inconclusive" in verdict["why"]


def test_git_pathspecs_are_relative_to_the_repository_root():
    # the JSON's uncommitted_code runs `git status -- engine ...`: from experiments/ the
    # pathspec matched nothing (the first full sweep recorded an empty list)
    from experiments import provenance

    assert provenance._git("ls-files", "--", "engine/__init__.py") == "engine/__init__.py"


def test_window_mean_levels_local_sgds_saw_tooth():
    from experiments.gossip_pga import window_mean

    saw = [0.0, 1.0, 2.0, 3.0] * 3 + [9.0]  # a period of 4, then an incomplete window
    assert window_mean(saw, 4).tolist() == [1.5, 1.5, 1.5]


def test_gossip_pga_replot_draws_seed_bands_from_the_json(tmp_path):
    import json

    from experiments import gossip_pga

    def run(label, topology, seed, scale):
        records = [{"iteration": i, "xbar_train_loss": scale / i} for i in (20, 40)]
        return {"label": label, "topology": topology, "seed": seed, "records": records,
                "consensus_distance": [scale * 0.1] * 40}

    runs = [run(label, topology, seed, 1 + seed)
            for seed in range(2) for label, topology in
            (("parallel", "any"), ("gossip", "ring"), ("gossip", "exponential"),
             ("pga H=4", "ring"), ("pga H=4", "exponential"), ("local_sgd H=4", "any"))]
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "gossip_pga.json").write_text(json.dumps({"runs": runs}))
    assert gossip_pga.main(["--replot", "--periods", "4", "--out", str(tmp_path)]) == 0
    for topology in ("ring", "exponential"):
        assert (tmp_path / "figures" / f"gossip_pga_{topology}.png").stat().st_size > 10_000


def test_extend_runs_only_what_the_results_file_lacks(tmp_path):
    args = gs.parse(["--exp-nodes", "16,32", "--extra-nodes", "16"])
    saved = {"task": args.task, "max_train": args.max_train, "width": args.width,
             "iterations": args.iterations, "every": args.every, "base": gs.BASE, "commit": "abc1234",
             "runs": [{"label": "gossip", "topology": "ring", "nodes": 16, "seed": 0}]}
    path = tmp_path / "gossip_scale.json"
    path.write_text(json.dumps(saved))
    todo = [{"label": "gossip", "topology": "ring", "nodes": n, "seed": s} for n in (16, 32) for s in (0, 1)]
    missing, kept, earlier = gs.extend(todo, path, args)
    assert [(j["nodes"], j["seed"]) for j in missing] == [(16, 1), (32, 0), (32, 1)]
    assert kept == [dict(saved["runs"][0], commit="abc1234")] and earlier["commit"] == "abc1234"
    path.write_text(json.dumps(dict(saved, width=64)))
    with pytest.raises(ValueError, match="other settings \\(width\\)"):
        gs.extend(todo, path, args)
