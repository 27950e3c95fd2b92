"""The benchmark's report: the run's metadata, the markdown pieces every job's section is
built from, the whole markdown of a report, and the "Latest results" block of
docs/benchmarks.md.

A report is the JSON a benchmark command writes: ``{"meta": {...}, "workloads": {name:
result}}`` (and ``clientapp_startup`` after a deployment); each job's ``markdown(report,
result)`` turns its own result into its section. Nothing here runs a system.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess

from bench.common import DOC, REPO
from bench.procmem import percentile

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


# ----------------------------------------------------------------------------- metadata

def git_commit() -> str:
    def git(*a):
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("-dirty" if git("status", "--porcelain") else "")


def machine() -> dict:
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                      if line.startswith("model name")), "")
    except OSError:
        pass
    import torch

    try:
        import flwr

        flwr_version = flwr.__version__
    except (ImportError, AttributeError):
        flwr_version = None
    return {
        "cpus": os.cpu_count(), "cpu_model": model, "platform": platform.platform(),
        "python": platform.python_version(), "torch": torch.__version__, "flwr": flwr_version,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


# ----------------------------------------------------------------------------- pieces

def fmt(value, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def breakdown(system: dict, top: int = 6) -> str:
    parts = system["memory"].get("rss_mb_at_peak_by_process", {})
    return ", ".join(f"{name} {mb:.0f}" for name, mb in list(parts.items())[:top])


def per_round_line(work: dict, keys: list[str], digits: int = 3) -> str:
    """Every round's seconds of the systems ``keys`` that ran."""
    systems = work["systems"]
    return "Per-round seconds: " + "; ".join(
        f"{key} " + ", ".join(f"{x:.{digits}f}" for x in systems[key]["round_seconds"])
        for key in keys if key in systems and systems[key].get("available", True)) + "."


def reference_rows(work: dict, names: dict, unit: str) -> list[str]:
    """The table of gossip-digits / clipped-shakespeare: one row per system in ``names``
    (key: label) that ran, against ``engine``."""
    engine = work["systems"]["engine"]["median"]
    rows = []
    for key, name in names.items():
        s = work["systems"].get(key)
        if s is None:
            continue
        mem = s["memory"]
        acc = s.get("final_test_accuracy")
        rows.append(
            f"| {name} | {fmt(s['median'], 4)} | {fmt(s['p90'], 4)} | "
            f"{fmt(s['samples_per_second'], 0)} | {1 / s['median']:.1f} | {fmt(s['first_round'])} | "
            f"{fmt(s['startup'])} | {mem['peak_rss_mb']:.0f} | {mem['peak_pss_mb']:.0f} | "
            f"{fmt(acc, 4)} | {s['median'] / engine:.2f}x |")
    head = [f"| system | {unit} s (median) | {unit} s (p90) | samples/s | {unit}s/s | "
            f"first {unit} s | start-up s | peak RSS MB | peak PSS MB | final test acc | vs engine |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    return head + rows


DEPLOYMENT_LABEL = "deployment_warm: fedlocal, local deployment, warm workers"


def deployment_name(work: dict, suffix: str = "") -> str:
    c = work["systems"].get("deployment_warm")
    if c is None:
        return "deployment_warm"
    return f"{DEPLOYMENT_LABEL} ({c['supernodes']} SuperNodes, {c['rounds']} rounds){suffix}"


def deployment_ratio(work: dict, unit: str) -> str:
    """The sentence on deployment_warm under a reference table; as before when it was not
    run."""
    if "deployment_warm_over_engine" not in work["ratios"]:
        return "deployment_warm (local deployment): not measured."
    c = work["systems"]["deployment_warm"]
    return (f"deployment_warm/engine = **{work['ratios']['deployment_warm_over_engine']:.1f}x** "
            f"per {unit} (local deployment, "
            f"{c['supernodes']} SuperNode processes, {c['rounds']} {unit}s, median of the "
            f"{len(c['round_seconds']) - 1} after the first); deployment_warm/simulation = "
            f"{c['median'] / work['systems']['simulation']['median']:.1f}x.")


def deployment_lines(report: dict, work: dict) -> list[str]:
    """Memory, CPU by program and ClientApp processes of deployment_warm, when it ran."""
    c = work["systems"].get("deployment_warm")
    if not c or not c.get("available", True):
        return []
    mem, procs = c["memory"], c.get("processes", {})
    at_peak = mem.get("processes_at_peak_by_name", {})
    lines = [f"Memory of deployment_warm at its peak, by process (RSS MB): {breakdown(c)}; up to "
             f"{mem['max_processes']} processes in the tree"
             + (f", {at_peak['flwr-clientapp']} of them ClientApp processes at the peak"
                if at_peak.get("flwr-clientapp") else "") + ".", ""]
    if c.get("env"):
        lines += ["Environment added to the Flower processes of deployment_warm: "
                  + ", ".join(f"`{k}={v}`" for k, v in c["env"].items()) + ".", ""]
    if procs:
        parts = []
        for name, g in list(procs.items())[:6]:
            part = f"{name or '?'} {g['cpu_seconds']:.1f} ({g['processes']}"
            if g["lifetime_median"] is not None and g["ended"] >= g["processes"] / 2:
                part += (f"; each lived {g['lifetime_median']:.1f} s median, "
                         f"{g['lifetime_p90']:.1f} s p90, and used {g['cpu_seconds_median']:.2f} CPU s")
            parts.append(part + ")")
        lines += ["CPU seconds spent in deployment_warm, by program, while `flwr run` ran "
                  "(processes): " + ", ".join(parts) + ".", ""]
    app = procs.get("flwr-clientapp")
    cores = report["meta"]["machine"]["cpus"]
    if app and c["median"]:
        rounds, clients = c["rounds"], c["supernodes"]
        per_round = app["cpu_seconds"] / rounds
        text = (f"ClientApp processes: {app['processes']} for {rounds} rounds x {clients} nodes, "
                f"{per_round:.1f} CPU s per round on average, i.e. "
                f"{per_round / (c['median'] * cores):.0%} of the {cores} cores over a median round "
                f"({c['median']:.2f} s)")
        startup = report.get("clientapp_startup", {}).get(
            "import flwr-clientapp runtime + client.app")
        if startup:
            imports = clients * startup["cpu"]
            text += (f"; their imports alone (flwr's ClientApp runtime and client.app: "
                     f"{startup['cpu']:.2f} CPU s each, timed alone) come to {imports:.1f} CPU s "
                     f"per round, {imports / per_round:.0%} of it")
        train = [x for x in c.get("mean_client_train_seconds", [])[1:] if x is not None]
        age = [x for x in c.get("mean_client_process_seconds", [])[1:] if x]
        if train:
            text += (f". The handlers' training (`train_seconds`, mean over a round's replies, "
                     f"median over the rounds after the first) took {percentile(train, 50):.3f} s "
                     "per message")
        if age:
            text += (f"; a ClientApp process was {percentile(age, 50):.1f} s old when it replied "
                     "(`process_seconds`, same statistic)")
        lines += [text + ".", ""]
    return lines


def startup_lines(report: dict) -> list[str]:
    probes = report.get("clientapp_startup")
    if not probes:
        return []
    rows = [f"| `{name}` | {p['wall']:.2f} | {p['cpu']:.2f} | {fmt(p.get('max_rss_mb'), 0)} |"
            for name, p in probes.items()]
    return ["### deployment_warm: what a fresh ClientApp process pays before its handler runs",
            "", "Timed alone after the workloads (median of 3, nothing else of the benchmark "
            "running); every ClientApp message in deployment_warm starts one such process.", "",
            "| what | wall s | CPU s | peak RSS MB |", "| --- | --- | --- | --- |", *rows, ""]


# ----------------------------------------------------------------------------- the report

def header(report: dict) -> list[str]:
    meta = report["meta"]
    return [
        f"Commit `{meta['commit']}`, {meta['started']}, {meta['machine']['cpus']} CPU cores "
        f"({meta['machine']['cpu_model'] or 'unknown CPU'}), "
        f"{'GPU ' + meta['machine']['gpu'] if meta['machine']['gpu'] else 'no GPU'}, "
        f"torch {meta['machine']['torch']}, flwr {meta['machine']['flwr']}; "
        f"load average {meta['load_before'][0]:.2f} before, {meta['load_after'][0]:.2f} after; "
        f"`{meta['command']}` ({meta['seconds']:.0f} s)."
        + (f" App for simulation and scaling: `{meta['args']['app_dir']}`."
           if meta["args"]["app_dir"] != str(REPO) else ""),
        "",
    ]


def markdown(report: dict, jobs) -> str:
    """The report's tables: its header, then the section of every job in ``jobs`` (in that
    order) that has a result, then deployment_warm's ClientApp start-up if it was timed."""
    lines = header(report)
    for job in jobs:
        result = report["workloads"].get(job.NAME)
        if result:
            lines += job.markdown(report, result)
    lines += startup_lines(report)
    return "\n".join(lines)


def update_doc(table: str, commit: str) -> None:
    block = f"{BEGIN}\n<!-- written by `python -m bench.run`; edit outside these markers -->\n\n" \
            f"Measured at commit `{commit}`.\n\n{table}\n{END}"
    text = DOC.read_text() if DOC.is_file() else "# Benchmarks\n\n"
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n## Latest results\n\n" + block + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
