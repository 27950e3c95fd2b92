"""bench.run's command line: only a complete run of this repository may rewrite the
"Latest results" block of docs/benchmarks.md."""

from __future__ import annotations

from bench.run import WORKLOADS, parse_args


def test_only_a_complete_run_updates_the_docs(tmp_path):
    assert parse_args([]).no_docs is False
    assert parse_args(["--workloads", ",".join(reversed(list(WORKLOADS)))]).no_docs is False
    assert parse_args(["--workloads", "gossip-digits"]).no_docs is True  # a partial run
    assert parse_args(["--no-baseline"]).no_docs is True
    assert parse_args(["--app-dir", str(tmp_path)]).no_docs is True
