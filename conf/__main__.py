"""``python -m conf``: print the resolved config; ``--markdown``: the README's reference.

    python -m conf                                  # base defaults, resolved
    python -m conf task.name=fmnist train.lr=0.1    # what a run with these overrides gets
    python -m conf --markdown                       # config reference table for README.md
"""

from __future__ import annotations

import sys

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
    if argv[:1] == ["--markdown"]:
        print(reference_table())
        return 0
    try:
        print(to_yaml(load_config(parse_run_config(" ".join(argv)))), end="")
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
