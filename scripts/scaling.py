"""DDP scaling of GPT-2 training: torchrun over 1, 2, 4, 8 processes (one per GPU), the same micro-batch per GPU.

    python scripts/scaling.py --gpus 1 2 4 8 --out docs/results/scaling-h200x8              # gpt2, attn=flash
    python scripts/scaling.py --gpus 1 2 4 8 --model gpt2-medium --out docs/results/scaling-h200x8-medium
    python scripts/scaling.py --device cpu --gpus 1 2 --model gpt2-nano --attn sdpa --seq 64 --batch 4 --out /tmp/s

For each world size N, one ordinary train.py run (torchrun): tokens/s per GPU, scaling efficiency (tokens/s per
GPU over the 1-GPU run's), MFU and peak memory. Then the loss curve of the largest N beside one process with
grad_accum = N, the same global batch: the sampler gives both the same tokens (training/data.py), so the two
curves should agree to rounding. NVLink multicast stays off (NCCL_NVLS_ENABLE=0) in every launch.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from reporting import plots
from reporting.environment import environment
from reporting.report import write_report
from reporting.runs import load_run_dir
from reporting.tables import fmt, loss_gap, markdown_table, status_cell

ROOT = Path(__file__).resolve().parent.parent

NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def train(run_dir: Path, nproc: int, overrides: list[str], log: list[dict]) -> None:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    cmd = [*(launcher if nproc > 1 else [sys.executable]), str(ROOT / "train.py"), *overrides,
           f"hydra.run.dir={run_dir}"]
    print("+", " ".join(cmd[1:]), flush=True)
    t0 = time.time()
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)  # keep the caller's too
    env = {**os.environ, **NO_MULTICAST, "PYTHONPATH": path}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "launch.log").write_text(proc.stdout + proc.stderr)
    log.append({"cmd": " ".join(["python", *cmd[1:]]), "rc": proc.returncode, "seconds": round(time.time() - t0, 1)})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="report directory")
    ap.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4, 8], help="world sizes (1 first)")
    ap.add_argument("--model", default="gpt2")
    ap.add_argument("--attn", default="flash")
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=16, help="micro-batch per GPU")
    ap.add_argument("--steps", type=int, default=40, help="steps per throughput run (the first 10 untimed)")
    ap.add_argument("--curve-steps", type=int, default=50, help="steps of the loss-curve comparison")
    ap.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    ap.add_argument("--data-dir", help="data.dir for train.py (default: the embedded corpus)")
    args = ap.parse_args(argv)

    shape = [f"model={args.model}", f"attn={args.attn}", f"model.block_size={args.seq}", f"train.seq_len={args.seq}",
             f"train.batch_size={args.batch}", f"train.device={args.device}", "train.eval_interval=0",
             "train.eval_iters=1", "train.ckpt_interval=-1", "train.sample_at_eval=false", "logger=none"]
    if args.data_dir:
        shape.append(f"data.dir={args.data_dir}")
    runs_dir, log = args.out / "runs", []
    for n in args.gpus:
        train(runs_dir / f"throughput_{n}", n, [*shape, f"train.max_steps={args.steps}",
                                                f"train.warmup_steps={min(10, args.steps // 3)}"], log)
    n = max(args.gpus)
    curve = [*shape, f"train.max_steps={args.curve_steps}", "train.log_interval=1", "model.dropout=0.0"]
    train(runs_dir / f"curve_{n}ranks", n, [*curve, "train.grad_accum=1"], log)
    train(runs_dir / f"curve_1rank_accum{n}", 1, [*curve, f"train.grad_accum={n}"], log)

    runs = {k: load_run_dir(runs_dir / f"throughput_{k}") for k in args.gpus}
    base = runs[args.gpus[0]]
    base_per_gpu = base.tokens_per_sec / args.gpus[0] if base.status == "ok" and base.tokens_per_sec else None
    rows = []
    for k, r in runs.items():
        per_gpu = r.tokens_per_sec / k if r.status == "ok" and r.tokens_per_sec else None
        eff = per_gpu / base_per_gpu if per_gpu and base_per_gpu else None
        rows.append([k, status_cell(r), fmt(r.tokens_per_sec, ",.0f"), fmt(per_gpu, ",.0f"), fmt(eff, ".1%"),
                     fmt(r.mfu, ".1%"), fmt(r.peak_mem_gb, ".2f")])
    ddp, accum = load_run_dir(runs_dir / f"curve_{n}ranks"), load_run_dir(runs_dir / f"curve_1rank_accum{n}")
    gap = loss_gap(ddp, accum)
    png = plots.loss_curves([(f"{n} ranks", ddp), (f"1 rank, grad_accum={n}", accum)], args.out / "loss.png",
                            f"{args.model}, attn={args.attn}: same global batch")
    env = environment()
    setup = (f"{args.model}, attn={args.attn}, seq {args.seq}, micro-batch {args.batch} per GPU, {args.steps} steps "
             f"(tokens/s: median over timed steps), device {env.get('gpu') or args.device}.")
    sections = [
        "## Throughput vs number of GPUs\n\n" + setup + " Efficiency: tokens/s per GPU over the "
        f"{args.gpus[0]}-GPU run's.\n\n" + markdown_table(
            ["GPUs", "status", "tokens/s", "tokens/s per GPU", "scaling efficiency", "MFU", "peak mem (GB)"], rows),
        f"## Loss curve: {n} ranks vs 1 rank with grad_accum={n}\n\nSame seed, same global batch (the same tokens), "
        f"dropout 0: largest |Δ train loss| over {gap['steps']} steps = {fmt(gap['max_gap'], '.2e')} "
        f"(step {fmt(gap['max_gap_step'], 'd')}); final losses {fmt(gap['final_a'], '.4f')} vs "
        f"{fmt(gap['final_b'], '.4f')}.\n\n![loss](" + Path(png).name + ")\n",
        "## Commands\n\n" + "\n".join(f"- `{e['cmd']}` (rc {e['rc']}, {e['seconds']} s)" for e in log),
    ]
    raw = {"runs": {str(k): vars(r) | {"history": None} for k, r in runs.items()}, "loss_gap": gap, "commands": log}
    print("report:", write_report(args.out, "DDP scaling of GPT-2 training", env, sections, raw))


if __name__ == "__main__":
    main()
