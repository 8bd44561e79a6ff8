"""DDP scaling study: train.py over 1, 2, 4, 8 ranks with the same micro-batch per rank, and the loss curve of N ranks
beside one process with grad_accum = N (the same global batch, so the same tokens: training/data.py)."""

from __future__ import annotations

from pathlib import Path

from . import launch, plots
from .environment import environment
from .report import write_report
from .runs import load_run_dir
from .tables import fmt, loss_gap, markdown_table, status_cell


def study(out: Path, gpus: list[int], model: str, attn: str, seq: int, batch: int, steps: int, curve_steps: int,
          device: str = "auto", data_dir: str | None = None) -> Path:
    """Run the throughput and loss-curve runs under out/runs/ and write out/report.md."""
    shape = [f"model={model}", f"attn={attn}", f"model.block_size={seq}", f"train.seq_len={seq}",
             f"train.batch_size={batch}", f"train.device={device}", "train.eval_interval=0", "train.eval_iters=1",
             "train.ckpt_interval=-1", "train.sample_at_eval=false", "logger=none",
             *([f"data.dir={data_dir}"] if data_dir else [])]
    runs_dir, log = out / "runs", []

    def train(name: str, nproc: int, overrides: list[str]) -> None:
        log.append(launch.train([*overrides, f"hydra.run.dir={runs_dir / name}"], runs_dir / name / "launch.log",
                                nproc=nproc))

    for n in gpus:
        train(f"throughput_{n}", n, [*shape, f"train.max_steps={steps}", f"train.untimed_steps={min(10, steps // 3)}"])
    n = max(gpus)
    curve = [*shape, f"train.max_steps={curve_steps}", "train.log_interval=1", "model.dropout=0.0"]
    train(f"curve_{n}ranks", n, [*curve, "train.grad_accum=1"])
    train(f"curve_1rank_accum{n}", 1, [*curve, f"train.grad_accum={n}"])

    runs = {k: load_run_dir(runs_dir / f"throughput_{k}") for k in gpus}
    ddp, accum = load_run_dir(runs_dir / f"curve_{n}ranks"), load_run_dir(runs_dir / f"curve_1rank_accum{n}")
    gap = loss_gap(ddp, accum)
    png = plots.loss_curves([(f"{n} ranks", ddp), (f"1 rank, grad_accum={n}", accum)], out / "loss.png",
                            f"{model}, attn={attn}: same global batch")
    env = environment()
    setup = (f"{model}, attn={attn}, seq {seq}, micro-batch {batch} per GPU, {steps} steps (tokens/s: median over "
             f"timed steps), device {env.get('gpu') or device}.")
    sections = [
        "## Throughput vs number of GPUs\n\n" + setup + f" Efficiency: tokens/s per GPU over the {gpus[0]}-GPU run's."
        "\n\n" + throughput_table(runs, gpus[0]),
        f"## Loss curve: {n} ranks vs 1 rank with grad_accum={n}\n\nSame seed, same global batch (the same tokens), "
        f"dropout 0: largest |Δ train loss| over {gap['steps']} logged steps = {fmt(gap['max_gap'], '.2e')} "
        f"(step {fmt(gap['max_gap_step'], 'd')}); final losses {fmt(gap['final_a'], '.4f')} vs "
        f"{fmt(gap['final_b'], '.4f')}.\n\n![loss]({png})\n",
        "## Commands\n\n" + "\n".join(f"- `{e['cmd']}` (rc {e['rc']}, {e['seconds']} s)" for e in log),
    ]
    raw = {"runs": {str(k): r.to_json(with_history=True) for k, r in runs.items()}, "loss_gap": gap,
           "curves": {"ddp": ddp.to_json(with_history=True), "accum": accum.to_json(with_history=True)},
           "commands": log}
    return write_report(out, "DDP scaling of GPT-2 training", env, sections, raw)


def throughput_table(runs: dict, base_gpus: int) -> str:
    base = runs[base_gpus]
    base_per_gpu = base.tokens_per_sec / base_gpus if base.status == "ok" and base.tokens_per_sec else None
    rows = []
    for k, r in runs.items():
        per_gpu = r.tokens_per_sec / k if r.status == "ok" and r.tokens_per_sec else None
        eff = per_gpu / base_per_gpu if per_gpu and base_per_gpu else None
        rows.append([k, status_cell(r), fmt(r.tokens_per_sec, ",.0f"), fmt(per_gpu, ",.0f"), fmt(eff, ".1%"),
                     fmt(r.mfu, ".1%"), fmt(r.peak_mem_gb, ".2f")])
    return markdown_table(["GPUs", "status", "tokens/s", "tokens/s per GPU", "scaling efficiency", "MFU",
                           "peak mem (GB)"], rows)
