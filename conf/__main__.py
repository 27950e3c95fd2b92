"""``python -m conf``: check overrides and print the resolved config; ``--markdown``: the
README's reference.

    python -m conf                                      # base defaults, resolved
    python -m conf "task.name='fmnist' train.lr=0.1"    # what a run with these overrides gets
    python -m conf --num-nodes 4 "strategy.min_replies=5"   # also check against 4 SuperNodes
    python -m conf --markdown                           # config reference table for README.md

The overrides are read as ``flwr run --run-config`` reads them (key=value, values TOML:
strings need quotes: task.name='mnist') and checked by the same funnel as the ServerApp's,
so a bad key is named here instead of Flower's bare "Invalid run configuration". Exit
code 2 on a config error; warnings (keys the strategy ignores) go to stderr.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from conf.load import CONF_DIR, ConfigError, load_config, parse_run_config, to_yaml
from conf.schema import iter_fields


def reference_table() -> str:
    """Markdown table of every key: default (conf/base.yaml), allowed values, meaning."""
    import yaml

    from conf.load import flatten

    defaults = flatten(yaml.safe_load((CONF_DIR / "base.yaml").read_text()))
    rows = ["| key | default | allowed | meaning |", "| --- | --- | --- | --- |"]
    for key, f in iter_fields():
        meta = f.metadata
        allowed = " / ".join(meta["choices"]) if meta["choices"] else str(f.type)
        bounds = [f"{sign} {meta[k]}" for k, sign in (("ge", ">="), ("gt", ">"), ("le", "<="))
                  if meta[k] is not None]
        if bounds:
            allowed += ", " + ", ".join(bounds)
        default = defaults[key]
        default = str(default).lower() if isinstance(default, bool) else default
        rows.append(f"| `{key}` | `{default}` | {allowed} | {meta['help']} |")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m conf", description=__doc__.split("\n\n")[0])
    parser.add_argument("--markdown", action="store_true", help="print the README's config table")
    parser.add_argument("--num-nodes", type=int, default=None, metavar="N",
                        help="also check node counts against N SuperNodes (= partitions)")
    parser.add_argument("overrides", nargs="*", help="key=value pairs, as for flwr run --run-config")
    args = parser.parse_intermixed_args(argv)
    if args.markdown:
        print(reference_table())
        return 0
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cfg = load_config(parse_run_config(" ".join(args.overrides)), num_nodes=args.num_nodes)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    for warning in caught:
        print(f"config warning: {warning.message}", file=sys.stderr)
    print(to_yaml(cfg), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
