"""Tables and plots from any set of runs: local run/sweep directories, or a wandb project (scripts/compare.py)."""

from __future__ import annotations

import json
from pathlib import Path

from . import plots, report
from .environment import environment
from .runs import Run, find_run_dirs, load_runs, load_wandb_runs


class CompareError(ValueError):
    """Nothing to compare, or a source that cannot be read; the message says what to pass instead."""


def gather(paths: list[str], wandb_path: str | None = None, groups: list[str] = ()) -> list[Run]:
    """Every run below the given directories, then those of the wandb project (each group, or all)."""
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise CompareError(f"{', '.join(repr(p) for p in missing)} does not exist; pass run or sweep directories "
                           f"(outputs/<date>/<time>, multirun/<date>/<time>)")
    empty = [p for p in paths if not find_run_dirs(p)]
    if empty:
        raise CompareError(f"no runs in {', '.join(repr(p) for p in empty)} (a run directory holds summary.json or "
                           f".hydra/config.yaml)")
    runs = load_runs(paths)
    if wandb_path:
        import wandb

        try:
            for group in groups or [None]:
                runs += load_wandb_runs(wandb_path, group)
        except wandb.errors.Error as e:
            raise CompareError(f"cannot read the wandb project '{wandb_path}': {str(e).splitlines()[0]} "
                               f"(log in with `wandb login` or set WANDB_API_KEY; or compare local run "
                               f"directories)") from None
    if not runs:
        raise CompareError("no runs found; give run directories and/or --wandb ENTITY/PROJECT")
    return runs


def compare(runs: list[Run], out: Path, title: str, sources: str, command: str) -> Path:
    """<out>/compare.md (throughput, parity of runs differing only in the exact backend, block-sparse, all loss
    curves), its PNGs, raw.json (with each run's history) and runs.json (one record per run)."""
    out.mkdir(parents=True, exist_ok=True)
    sparse = [r for r in runs if r.backend == "block_sparse"]
    sections = [f"Sources: {sources}; {len(runs)} runs.\n",
                report.throughput_section(runs, out, "all runs"),
                report.parity_section(report.auto_pairs(runs), out),
                report.sparse_section(sparse, out)]
    curves = [(f"{r.label} {r.model} seq{r.seq_len} ({r.name})", r) for r in runs if r.history]
    if curves:
        png = plots.loss_curves(curves, out / "loss.png", title="train loss, all runs")
        sections.append(f"## All loss curves\n\n![loss]({png})\n")
    env = {**environment(), "command": command}
    path = report.write_report(out, title, env, sections, {"runs": [r.to_json(True) for r in runs]})
    path.rename(out / "compare.md")
    (out / "runs.json").write_text(json.dumps([r.to_json() for r in runs], indent=1, default=str))
    return out / "compare.md"
