"""Where metrics go: metrics.jsonl in the run directory, and wandb when logger.type=wandb (rank 0 only)."""

from __future__ import annotations

import json
import math
from pathlib import Path


def _clean(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


class RunLogger:
    def __init__(self, run_dir: Path, logger_cfg, config: dict, resume_id: str | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.wandb_run = None
        if logger_cfg.type == "wandb":
            import wandb

            self.wandb_run = wandb.init(
                project=logger_cfg.project, group=logger_cfg.group, name=logger_cfg.name,
                tags=list(logger_cfg.tags), mode=logger_cfg.mode, config=config, dir=str(run_dir),
                id=resume_id, resume="allow" if resume_id else None, reinit="finish_previous",
            )

    @property
    def run_id(self) -> str | None:
        return self.wandb_run.id if self.wandb_run is not None else None

    def log(self, row: dict) -> None:
        row = {k: _clean(v) for k, v in row.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in row.items() if v is not None and k != "step"}, step=row["step"])

    def finish(self, summary: dict) -> None:
        if self.wandb_run is not None:
            self.wandb_run.summary.update({k: v for k, v in summary.items() if v is not None})
            self.wandb_run.finish(exit_code=0 if summary.get("status") == "ok" else 1)
            self.wandb_run = None
