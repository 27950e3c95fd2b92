"""``results.plot`` on small synthetic run folders with known numbers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from results.plot import curves, figure, main, plot_runs, title_for
from server.results import CONFIG_FILE, METRICS_FILE

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

CLASSIFICATION = [
    {"round": 1, "elapsed": 1.5, "train_loss": 2.0, "test_loss": 2.2, "test_accuracy": 0.3,
     "bytes_sent": 1_000_000, "bytes_received": 500_000, "clip_fraction": 0.5},
    {"round": 2, "elapsed": 2.5, "train_loss": None, "test_loss": 1.1, "test_accuracy": 0.6,
     "bytes_sent": 1_000_000, "bytes_received": 500_000, "clip_fraction": 0.25},
    {"round": 3, "elapsed": None, "train_loss": 0.5, "test_loss": 0.7, "test_accuracy": None,
     "bytes_sent": 2_000_000},
]
LANGUAGE = [
    {"round": 1, "elapsed": 3.0, "train_loss": 4.0, "test_loss": 4.5, "test_perplexity": 90.0},
    {"round": 2, "elapsed": 6.0, "train_loss": 3.0, "test_loss": 3.5, "test_perplexity": 33.0},
]


def make_run(path, records, config: str | None = None):
    path.mkdir(parents=True)
    lines = [json.dumps(r) for r in records]
    (path / METRICS_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    if config is not None:
        (path / CONFIG_FILE).write_text(config, encoding="utf-8")
    return path


@pytest.fixture
def cls_run(tmp_path):
    return make_run(tmp_path / "cls", CLASSIFICATION,
                    "task:\n  name: digits\nstrategy:\n  name: fedavg\n")


@pytest.fixture
def lm_run(tmp_path):
    return make_run(tmp_path / "lm", LANGUAGE)


def test_curves_by_round_skip_nulls_point_by_point(cls_run):
    data = curves([cls_run])
    assert list(data) == ["train_loss", "test_loss", "test_accuracy"]  # no perplexity here
    assert data["train_loss"] == {"cls": ([1.0, 3.0], [2.0, 0.5])}
    assert data["test_loss"] == {"cls": ([1.0, 2.0, 3.0], [2.2, 1.1, 0.7])}
    assert data["test_accuracy"] == {"cls": ([1.0, 2.0], [0.3, 0.6])}


def test_curves_by_bytes_is_cumulative_megabytes(cls_run):
    data = curves([cls_run], x="bytes", metrics=["test_loss"])
    # 1.5 MB, +1.5 MB, +2 MB (the missing bytes_received counts as 0)
    assert data == {"test_loss": {"cls": ([1.5, 3.0, 5.0], [2.2, 1.1, 0.7])}}


def test_curves_by_seconds_use_elapsed_and_skip_a_null_time(cls_run):
    data = curves([cls_run], x="seconds", metrics=["test_loss", "clip_fraction"])
    assert data["test_loss"] == {"cls": ([1.5, 2.5], [2.2, 1.1])}
    assert data["clip_fraction"] == {"cls": ([1.5, 2.5], [0.5, 0.25])}


def test_default_metrics_are_those_present_and_runs_without_one_get_no_line(cls_run, lm_run):
    data = curves([cls_run, lm_run], labels=["a", "b"])
    assert list(data) == ["train_loss", "test_loss", "test_accuracy", "test_perplexity"]
    assert list(data["test_loss"]) == ["a", "b"]
    assert data["test_loss"]["b"] == ([1.0, 2.0], [4.5, 3.5])
    assert list(data["test_accuracy"]) == ["a"]
    assert data["test_perplexity"] == {"b": ([1.0, 2.0], [90.0, 33.0])}


def test_explicit_missing_metric_is_an_error_naming_it_and_the_existing_ones(cls_run):
    with pytest.raises(ValueError, match="consensus_distance") as info:
        curves([cls_run], metrics=["test_loss", "consensus_distance"])
    assert "clip_fraction" in str(info.value) and "test_accuracy" in str(info.value)


def test_label_count_must_match_runs(cls_run, lm_run):
    with pytest.raises(ValueError, match="1 labels for 2 run folders"):
        curves([cls_run, lm_run], labels=["only-one"])


def test_folders_with_the_same_name_are_labelled_by_path(tmp_path):
    a = make_run(tmp_path / "a" / "run", LANGUAGE)
    b = make_run(tmp_path / "b" / "run", LANGUAGE)
    assert list(curves([a, b])["test_loss"]) == [str(a), str(b)]


def test_figure_has_one_axes_per_metric_and_one_line_per_run(cls_run, lm_run):
    data = curves([cls_run, lm_run], x="bytes")
    fig = figure(data, x="bytes", log_y=True)
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == list(data)
    assert [len(ax.get_lines()) for ax in axes] == [2, 2, 1, 1]
    for ax, metric in zip(axes, data, strict=True):
        assert ax.get_ylabel() == metric
        assert "MB" in ax.get_xlabel()
        for line in ax.get_lines():
            xs, ys = data[metric][line.get_label()]
            assert list(line.get_xdata()) == xs and list(line.get_ydata()) == ys
    scales = {ax.get_title(): ax.get_yscale() for ax in axes}
    assert scales == {"train_loss": "log", "test_loss": "log", "test_accuracy": "linear",
                      "test_perplexity": "log"}
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["cls", "lm"]


def test_title_names_the_run_and_what_config_yaml_says(cls_run, lm_run):
    assert title_for([cls_run], ["cls"]) == "cls (digits / fedavg)"
    assert title_for([cls_run, lm_run], ["cls", "lm"]) == "2 runs (digits / fedavg)"
    assert title_for([lm_run], ["lm"]) == "lm"  # no config.yaml: just the label


def test_plot_runs_writes_a_png(cls_run, lm_run, tmp_path):
    out = plot_runs([cls_run, lm_run], tmp_path / "plots" / "cmp.png", x="seconds")
    assert out == tmp_path / "plots" / "cmp.png"
    content = out.read_bytes()
    assert content.startswith(PNG_MAGIC) and len(content) > 1000


def test_main_one_run_writes_into_the_run_folder(cls_run, capsys):
    assert main([str(cls_run), "--x", "bytes", "--log-y"]) == 0
    out = cls_run / "curves.png"
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert capsys.readouterr().out.strip() == str(out)


def test_main_several_runs_write_to_the_working_folder(cls_run, lm_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main([str(cls_run), str(lm_run), "--metrics", "test_loss", "--labels", "x,y"])
    assert code == 0
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG_MAGIC)


def test_main_reports_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedlocal-plot: error: ")
    assert "is not a fedlocal run folder (no metrics.jsonl)" in err
    assert "Traceback" not in err
    assert not (tmp_path / "empty" / "curves.png").exists()


def test_main_reports_an_unknown_metric(cls_run, capsys):
    assert main([str(cls_run), "--metrics", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedlocal-plot: error: ") and "nope" in err


def test_importing_the_module_does_not_import_matplotlib():
    code = "import sys, results.plot; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"
