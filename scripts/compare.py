"""Tables and plots from any set of runs: local run/sweep directories, or a wandb project (and groups).

    python scripts/compare.py /tmp/r/runs/throughput --out /tmp/cmp   # a report's runs (reproduce.py --out /tmp/r;
                                                                     # a checkout's reports keep no runs/)
    python scripts/compare.py outputs/2026-01-01/12-00-00 multirun/2026-01-01/13-00-00 --out /tmp/cmp
    python scripts/compare.py --wandb my-entity/flashgpt --group h100-throughput --out /tmp/cmp

Writes <out>/compare.md (throughput table, convergence-parity table for runs that differ only in the exact
attention backend, block-sparse table), PNGs and runs.json: the same sections as scripts/reproduce.py.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from reporting.comparison import CompareError, compare, gather


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", help="run directories or sweep directories (searched recursively)")
    p.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read runs from wandb (online) instead of / as well")
    p.add_argument("--group", action="append", default=[], help="wandb group(s); default: all runs of the project")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--title", default="Run comparison", help="default: %(default)s")
    args = p.parse_args(argv)
    if not args.paths and not args.wandb:
        p.error("give run directories and/or --wandb ENTITY/PROJECT")
    runs = gather(args.paths, args.wandb, args.group)
    sources = ", ".join(f"`{s}`" for s in args.paths) + (
        f" wandb `{args.wandb}` groups {args.group or 'all'}" if args.wandb else "")
    path = compare(runs, Path(args.out), args.title, sources,
                   shlex.join(["compare.py", *(sys.argv[1:] if argv is None else argv)]))
    print(f"comparison: {path}")
    return path


if __name__ == "__main__":
    try:
        main()
    except CompareError as e:
        sys.exit(f"error: {e}")
