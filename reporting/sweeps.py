"""Training sweeps of a report: train.py multiruns under <out>/runs/<name>/, and the progress lines around them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from . import launch
from .runs import Run, load_runs


@dataclass
class Progress:
    """One line per section and per launched sweep: what runs, time so far, and an estimate of what is left from
    the pace of the training steps done so far (the kernel benchmark prints its own rows)."""
    planned_steps: dict[str, int]  # section -> training steps it will run (all jobs)
    t0: float = field(default_factory=time.time)
    steps_done: int = 0
    training_seconds: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)

    def left(self) -> str:
        remaining = sum(s for k, s in self.planned_steps.items() if k not in self.seconds)
        if not remaining:
            return "nothing left"
        if not self.steps_done:
            return f"{remaining} training steps left (an estimate follows the first sweep)"
        return f"about {remaining * self.training_seconds / self.steps_done / 60:.1f} min of training left"

    def section(self, name: str, what: str) -> None:
        order = list(self.planned_steps)
        print(f"\n=== [{order.index(name) + 1}/{len(order)}] {name}: {what} ({self.elapsed()} elapsed; {self.left()})",
              flush=True)

    def sweep_done(self, section: str, steps: int, seconds: float) -> None:
        self.steps_done += steps
        self.training_seconds += seconds
        self.planned_steps[section] -= steps
        print(f"--- {section}: sweep done in {seconds:.0f} s ({self.elapsed()} elapsed; {self.left()})", flush=True)

    def section_done(self, name: str, seconds: float) -> None:
        self.seconds[name] = round(seconds, 1)
        print(f"=== {name} done in {seconds:.0f} s", flush=True)

    def elapsed(self) -> str:
        return f"{(time.time() - self.t0) / 60:.1f} min"


class Sweeps:
    """Launches train.py multiruns into <out>/runs/<name>/ and remembers what each was meant to produce."""

    def __init__(self, out: Path, device: str, logger: str, group: str, data_dir: str | None, env: dict,
                 progress: Progress, reuse: bool = False):
        self.out, self.device, self.logger, self.group, self.data_dir = out, device, logger, group, data_dir
        self.env = env  # added to the child processes' environment
        self.progress = progress
        self.reuse = reuse  # load the runs an earlier invocation left in the sweep directories instead of training
        self.log: list[dict] = []

    def common(self, section: str) -> list[str]:
        args = [f"train.device={self.device}", "train.ckpt_interval=-1", "train.sample_at_eval=false"]
        if self.data_dir:
            args.append(f"data.dir={self.data_dir}")
        if self.logger == "none":
            args.append("logger=none")
        else:
            args += ["logger=wandb", f"logger.mode={self.logger}", f"logger.group={self.group}-{section}"]
        return args

    def run(self, name: str, section: str, overrides: list[str], expected: list[str], steps: int) -> list[Run]:
        sweep_dir = self.out / "runs" / name
        if self.reuse:
            runs = load_runs([sweep_dir]) if sweep_dir.exists() else []
            if not runs:
                raise SystemExit(f"--reuse-runs: no runs in {sweep_dir}; make them first (the same command "
                                 "without --reuse-runs)")
            self.log.append(dict(name=name, cmd="(runs reused)", rc="reused", seconds=0))
            return runs
        overrides = [*overrides, *self.common(section), f"hydra.sweep.dir={sweep_dir}",
                     "hydra.sweep.subdir=${hydra.job.num}_${model.impl}_${attn.name}"]
        result = launch.train(overrides, sweep_dir / "sweep.log", multirun=True, env=self.env)
        self.log.append(dict(name=name, **result))
        self.progress.sweep_done(section, steps * len(expected), result["seconds"])
        runs = load_runs([sweep_dir]) if sweep_dir.exists() else []
        if result["rc"] != 0:
            print(f"  sweep {name} exited with {result['rc']}; see {sweep_dir / 'sweep.log'}", flush=True)
        for label in expected[len(runs):]:  # a job the sweep never reached is still a row: "missing", with why
            runs.append(Run(name=label, source=str(sweep_dir), status="missing", backend=label, model="?",
                            seq_len=None, batch_size=None,
                            error=f"job never ran (sweep rc={result['rc']}, see sweep.log)"))
        return runs
