"""Smoke test of experiments/robustness.py on a tiny grid: the results file, resume, the
summary, the tables and the figure."""

import json

import pytest

from experiments import robustness

GRID = ["--tasks", "digits", "--rounds", "2", "--seeds", "0", "--fractions", "0,0.3",
        "--attacks", "sign_flip", "--aggregators", "mean,bgmd_median"]


def test_defender_knobs_follow_the_attacker_count():
    cfg = robustness.overrides("digits", 1, 0.3, "sign_flip", "bgmd_median")
    assert cfg["strategy.byzantine"] == 3 and cfg["strategy.trim_fraction"] == 0.3
    assert cfg["attack.scale"] == 10.0 and cfg["strategy.bgmd_memory"] == "median"
    assert robustness.overrides("digits", 0, 0.0, "none", "krum")["strategy.trim_fraction"] == 0.1
    assert robustness.overrides("digits", 0, 0.4, "gaussian", "mean")["strategy.trim_fraction"] == 0.4
    x1 = robustness.overrides("digits", 0, 0.2, "sign_flip_x1", "bgmd")
    assert x1["attack.kind"] == "sign_flip" and x1["attack.scale"] == 1.0
    iid = robustness.overrides("digits_iid", 0, 0.2, "gaussian", "mean")
    assert iid["task.name"] == "digits" and iid["data.partition"] == "iid"
    assert "data.partition" not in x1
    inflation = robustness.overrides("digits", 0, 0.2, "weight_inflation", "mean")
    assert inflation["strategy.weighting"] == "examples"


def test_plan_runs_fraction_zero_once_without_attack():
    jobs = robustness.plan(["digits"], [0, 1], [0.0, 0.2], ["sign_flip", "nan"], ["mean", "krum"], 5)
    assert len(jobs) == 2 * (2 + 2 * 2)
    assert {j["attack"] for j in jobs if j["fraction"] == 0.0} == {"none"}
    assert len({robustness.key(j) for j in jobs}) == len(jobs)


@pytest.mark.slow
def test_smoke_grid_writes_resumes_and_tabulates(tmp_path, capsys):
    assert robustness.main([*GRID, "--out", str(tmp_path)]) == 0
    path = tmp_path / "results" / "robustness_runs.jsonl"
    runs = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(runs) == 4
    assert {(r["attack"], r["aggregator"]) for r in runs} == {
        ("none", "mean"), ("none", "bgmd_median"), ("sign_flip", "mean"), ("sign_flip", "bgmd_median")}
    for r in runs:
        assert 0.0 <= r["test_accuracy"] <= 1.0
        assert r["aggregation_seconds"] > 0 and r["wall_seconds"] > 0 and r["rejected_rounds"] == 0
    # a sign flip x10 from 3 of 10 clients wrecks the mean, not the robust rule
    acc = {r["aggregator"]: r["test_accuracy"] for r in runs if r["attack"] == "sign_flip"}
    assert acc["bgmd_median"] > acc["mean"] + 0.2

    # a cut-off last line (a killed sweep) is ignored; a second run adds nothing new
    with open(path, "a") as handle:
        handle.write('{"task": "digits", "seed"')
    capsys.readouterr()
    assert robustness.main([*GRID, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "0 runs to do, 4 of the grid already in" in out
    assert len(robustness.load_runs(path)) == 4

    # the tables and the figure come from the file alone
    doc = tmp_path / "robustness.md"
    doc.write_text(f"intro\n{robustness.MARKERS[0]}\nold\n{robustness.MARKERS[1]}\noutro\n")
    assert robustness.main(["--plot-only", "--out", str(tmp_path)]) == 0
    body = doc.read_text()
    assert "old" not in body and body.startswith("intro") and body.endswith("outro\n")
    assert "| bgmd (median memory) |" in body and "3 of 10 attackers (30%)" in body
    assert "| rule | sign_flip |" in body
    assert (tmp_path / "figures" / "robustness_digits.png").stat().st_size > 0
    summary = json.loads((tmp_path / "results" / "robustness_digits.json").read_text())
    assert len(summary["cells"]) == 4


def test_rejects_unknown_names(tmp_path):
    with pytest.raises(SystemExit):
        robustness.main(["--attacks", "backdoor", "--out", str(tmp_path)])
