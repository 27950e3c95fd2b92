"""``fedlocal-plot``: turn run folders into PNG curves, one panel per metric, one line per run.

Reads only the run folder's own files (``metrics.jsonl``, and ``config.yaml`` for the title), so
a plot can be redrawn at any time without rerunning anything::

    fedlocal-plot outputs/RUN                         # -> outputs/RUN/curves.png
    fedlocal-plot outputs/A outputs/B --x bytes --log-y --out cmp.png
    python -m results.plot outputs/A --metrics test_accuracy,clip_fraction

``curves()`` holds the numbers (tested exactly), ``figure()`` draws them (on an Agg canvas, without
pyplot), ``plot_runs()`` writes the PNG. matplotlib is imported inside the functions.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from results import metrics as M
from server.results import CONFIG_FILE, read_metrics

PROG = "fedlocal-plot"
DEFAULT_METRICS = (M.TRAIN_LOSS, M.TEST_LOSS, M.TEST_ACCURACY, M.TEST_PERPLEXITY)
X_AXES = {
    "round": "round",
    "bytes": "cumulative traffic (MB sent + received)",
    "seconds": "elapsed time (s)",
}
BYTES_PER_MB = 1e6

Series = tuple[list[float], list[float]]


def _number(value) -> float | None:
    """A finite float (booleans count as 0/1), or None for null / non-numeric / NaN / inf
    values, which are skipped."""
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def x_values(records: list[dict], x: str = "round") -> list[float | None]:
    """The x coordinate of each record: its round, its elapsed seconds, or the cumulative
    traffic up to and including it in MB (a missing or null byte count adds 0)."""
    if x == "round":
        return [_number(r.get(M.ROUND)) for r in records]
    if x == "seconds":
        return [_number(r.get(M.ELAPSED)) for r in records]
    if x == "bytes":
        total, xs = 0.0, []
        for record in records:
            for key in (M.BYTES_SENT, M.BYTES_RECEIVED):
                total += _number(record.get(key)) or 0.0
            xs.append(total / BYTES_PER_MB)
        return xs
    raise ValueError(f"Unknown x axis {x!r}; choose one of {', '.join(X_AXES)}.")


def available_metrics(runs: list[list[dict]]) -> list[str]:
    """Keys with at least one numeric value in at least one run (the x keys left out)."""
    keys = {k for records in runs for r in records for k, v in r.items() if _number(v) is not None}
    return sorted(keys - {M.ROUND, M.ELAPSED})


def default_labels(run_dirs: list[str | Path]) -> list[str]:
    """Folder names; the paths as given when two folders share a name."""
    names = [Path(d).name or str(d) for d in run_dirs]
    if len(set(names)) < len(names):
        return [str(d) for d in run_dirs]
    return names


def curves(
    run_dirs: list[str | Path],
    x: str = "round",
    metrics: list[str] | None = None,
    labels: list[str] | None = None,
) -> dict[str, dict[str, Series]]:
    """``{metric: {label: (xs, ys)}}`` for the given runs; the numbers ``figure()`` draws.

    Null (or non-numeric) values are skipped point by point; a run without any value for a
    metric gets no line in that panel. ``metrics=None`` means the default panels that exist in
    some run; a metric asked for explicitly that no run has raises ``ValueError``.
    """
    if x not in X_AXES:
        raise ValueError(f"Unknown x axis {x!r}; choose one of {', '.join(X_AXES)}.")
    if not run_dirs:
        raise ValueError("No run folders given.")
    labels = list(labels) if labels else default_labels(run_dirs)
    if len(labels) != len(run_dirs):
        raise ValueError(f"Got {len(labels)} labels for {len(run_dirs)} run folders.")
    if len(set(labels)) < len(labels):
        raise ValueError(f"Labels must be distinct, got {labels}.")
    runs = [read_metrics(d) for d in run_dirs]
    existing = available_metrics(runs)
    if metrics is None:
        metrics = [m for m in DEFAULT_METRICS if m in existing]
        if not metrics:
            raise ValueError(
                f"None of the default metrics ({', '.join(DEFAULT_METRICS)}) has a value in "
                f"these runs; pick some with --metrics from: {', '.join(existing) or 'none'}."
            )
    else:
        missing = [m for m in metrics if m not in existing]
        if missing:
            raise ValueError(
                f"Metric(s) {', '.join(missing)} not found in any run; "
                f"available: {', '.join(existing) or 'none'}."
            )
    data: dict[str, dict[str, Series]] = {m: {} for m in metrics}
    for label, records in zip(labels, runs, strict=True):
        xs = x_values(records, x)
        for metric in metrics:
            points = [(xv, _number(r.get(metric))) for xv, r in zip(xs, records, strict=True)]
            points = [(xv, yv) for xv, yv in points if xv is not None and yv is not None]
            if points:
                data[metric][label] = ([p[0] for p in points], [p[1] for p in points])
    return data


def _log_scaled(metric: str) -> bool:
    """Panels that ``--log-y`` affects: losses and perplexity (exp of a loss)."""
    return metric.endswith(("loss", "perplexity"))


def figure(
    data: dict[str, dict[str, Series]], x: str = "round", log_y: bool = False, title: str = ""
):
    """A matplotlib Figure with one axes per metric of ``data`` and one line per run.

    A run keeps the same colour in every panel; the legend sits under the panels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    metrics = list(data)
    labels = list(dict.fromkeys(label for per_run in data.values() for label in per_run))
    colours = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    ncols = min(len(metrics), 3)
    nrows = math.ceil(len(metrics) / ncols)
    fig = Figure(figsize=(4.6 * ncols, 3.4 * nrows + 0.3 * math.ceil(len(labels) / 3)),
                 layout="constrained")
    FigureCanvasAgg(fig)  # Agg for this figure only; pyplot's global backend is left alone
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(metrics):]:
        fig.delaxes(ax)
    for ax, metric in zip(axes, metrics, strict=False):
        for label, (xs, ys) in data[metric].items():
            marker = "o" if len(xs) <= 30 else None
            ax.plot(xs, ys, label=label, color=colours[label], marker=marker, markersize=3)
        ax.set_title(metric)
        ax.set_xlabel(X_AXES[x])
        if x == "round":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        if log_y and _log_scaled(metric):
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    handles = {}
    for ax in axes[: len(metrics)]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if handles:
        shown = [label for label in labels if label in handles]
        fig.legend([handles[label] for label in shown], shown, loc="outside lower center",
                   ncol=min(len(shown), 3), fontsize="small", frameon=False)
    if title:
        fig.suptitle(title)
    return fig


def _describe(run_dir: str | Path) -> str | None:
    """``task / strategy`` from the run's config.yaml, or None when it cannot be read."""
    import yaml  # PyYAML, which omegaconf already requires

    try:
        cfg = yaml.safe_load((Path(run_dir) / CONFIG_FILE).read_text(encoding="utf-8"))
        return f"{cfg['task']['name']} / {cfg['strategy']['name']}"
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError):
        return None  # a title is decoration: a missing or odd config must not stop the plot


def title_for(run_dirs: list[str | Path], labels: list[str]) -> str:
    described = list(dict.fromkeys(d for d in map(_describe, run_dirs) if d))
    head = labels[0] if len(run_dirs) == 1 else f"{len(run_dirs)} runs"
    return f"{head} ({', '.join(described)})" if described else head


def plot_runs(
    run_dirs: list[str | Path],
    out: str | Path,
    x: str = "round",
    metrics: list[str] | None = None,
    log_y: bool = False,
    labels: list[str] | None = None,
) -> Path:
    """Draw ``curves(run_dirs, x, metrics, labels)`` and write it as a PNG at ``out``."""
    run_dirs = list(run_dirs)
    labels = list(labels) if labels else default_labels(run_dirs)
    data = curves(run_dirs, x=x, metrics=metrics, labels=labels)
    fig = figure(data, x=x, log_y=log_y, title=title_for(run_dirs, labels))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=120)
    return out


def _split(text: str | None) -> list[str] | None:
    if text is None:
        return None
    items = [item.strip() for item in text.split(",") if item.strip()]
    return items or None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Plot the per-round metrics of one or more fedlocal run folders."
    )
    parser.add_argument("runs", nargs="+", help="run folders (each holds metrics.jsonl)")
    parser.add_argument(
        "--out", help="PNG to write (default: RUN/curves.png for one run, ./curves.png for several)"
    )
    parser.add_argument(
        "--x", choices=list(X_AXES), default="round",
        help="x axis: round, bytes (cumulative MB sent + received) or seconds (elapsed)",
    )
    parser.add_argument(
        "--metrics",
        help=f"comma-separated keys of metrics.jsonl (default: those of {','.join(DEFAULT_METRICS)}"
        " that exist)",
    )
    parser.add_argument("--log-y", action="store_true", help="log scale for loss/perplexity panels")
    parser.add_argument("--labels", help="comma-separated legend labels, one per run")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = args.out or (Path(args.runs[0]) / "curves.png" if len(args.runs) == 1 else "curves.png")
    try:
        path = plot_runs(
            args.runs, out, x=args.x, metrics=_split(args.metrics), log_y=args.log_y,
            labels=_split(args.labels),
        )
    except (OSError, ValueError) as err:  # FileNotFoundError is an OSError
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
