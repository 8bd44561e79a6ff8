"""Tables and plots from any set of runs: local run/sweep directories, or a wandb project (and groups).

    python scripts/compare.py reports/h100/runs/throughput --out /tmp/cmp
    python scripts/compare.py outputs/2026-01-01/12-00-00 multirun/2026-01-01/13-00-00 --out /tmp/cmp
    python scripts/compare.py --wandb my-entity/flashgpt --group h100-throughput --out /tmp/cmp

Writes <out>/compare.md (throughput table, convergence-parity table for runs that differ only in the exact
attention backend, block-sparse table), PNGs and runs.json: the same sections as scripts/reproduce.py.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from reporting import plots, report
from reporting.environment import environment
from reporting.runs import load_runs, load_wandb_runs


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", help="run directories or sweep directories (searched recursively)")
    p.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read runs from wandb (online) instead of / as well")
    p.add_argument("--group", action="append", default=[], help="wandb group(s); default: all runs of the project")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--title", default="Run comparison")
    args = p.parse_args(argv)
    if not args.paths and not args.wandb:
        p.error("give run directories and/or --wandb ENTITY/PROJECT")

    runs = load_runs(args.paths)
    if args.wandb:
        for group in args.group or [None]:
            runs += load_wandb_runs(args.wandb, group)
    if not runs:
        p.error("no runs found (a run directory holds summary.json or .hydra/config.yaml)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    sparse = [r for r in runs if r.backend == "block_sparse"]
    sections = [
        f"Sources: {', '.join(f'`{s}`' for s in args.paths)}"
        + (f" wandb `{args.wandb}` groups {args.group or 'all'}" if args.wandb else "") + f"; {len(runs)} runs.\n",
        report.throughput_section(runs, out, "all runs"),
        report.parity_section(report.auto_pairs(runs), out),
        report.sparse_section(sparse, out),
    ]
    curves = [(f"{r.label} {r.model} seq{r.seq_len} ({r.name})", r) for r in runs if r.history]
    if curves:
        png = plots.loss_curves(curves, out / "loss.png", title="train loss, all runs")
        sections.append(f"## All loss curves\n\n![loss]({png})\n")
    env = {**environment(), "command": shlex.join(["compare.py", *(argv or sys.argv[1:])])}
    path = report.write_report(out, args.title, env, sections, {"runs": [r.to_json(True) for r in runs]})
    path.rename(out / "compare.md")
    (out / "runs.json").write_text(json.dumps([r.to_json() for r in runs], indent=1, default=str))
    print(f"comparison: {out / 'compare.md'}")
    return out / "compare.md"


if __name__ == "__main__":
    main()
