"""DDP scaling of GPT-2 training: torchrun over 1, 2, 4, 8 processes (one per GPU), the same micro-batch per GPU.

    python scripts/scaling.py --gpus 1 2 4 8 --out docs/results/scaling-h200x8              # gpt2, attn=flash
    python scripts/scaling.py --gpus 1 2 4 8 --model gpt2-medium --out docs/results/scaling-h200x8-medium
    python scripts/scaling.py --device cpu --gpus 1 2 --model gpt2-nano --attn sdpa --seq 64 --batch 4 --out /tmp/s

For each world size N, one ordinary train.py run (torchrun): tokens/s per GPU, scaling efficiency (tokens/s per
GPU over the 1-GPU run's), MFU and peak memory. Then the loss curve of the largest N beside one process with
grad_accum = N, the same global batch: the sampler gives both the same tokens, so the two curves should agree to
rounding. NVLink multicast stays off in every launch (reporting/launch.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from reporting.scaling import study

CPU_TRY = "--device cpu --gpus 1 2 --model gpt2-nano --attn sdpa --seq 64 --batch 4"


def check_gpus(device: str, gpus: list[int]) -> None:
    """Before launching anything: one GPU per rank, unless the ranks run on CPUs."""
    if device == "cpu":
        return
    have = torch.cuda.device_count()
    if have == 0:
        sys.exit(f"no CUDA GPU here: run with {CPU_TRY} (gloo ranks on CPUs) to try the code path")
    if max(gpus) > have:
        sys.exit(f"--gpus {' '.join(map(str, gpus))}: this machine has {have} GPU(s), one per rank is needed; "
                 f"ask for at most {have}")


def main(argv=None) -> Path:
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
    check_gpus(args.device, args.gpus)
    path = study(args.out, args.gpus, args.model, args.attn, args.seq, args.batch, args.steps, args.curve_steps,
                 args.device, args.data_dir)
    print("report:", path)
    return path


if __name__ == "__main__":
    main()
