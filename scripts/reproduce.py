"""Reproduce the FlashAttention paper's experiments in one command; writes a self-contained report directory.

    python scripts/reproduce.py --quick --out docs/results/h200   # 3.3 min on an H200 (+~1 to autotune afresh)
    python scripts/reproduce.py --full --out docs/results/h200    # everything (GPT-2 small + medium, seq 1K-4K)
    python scripts/reproduce.py --tiny --device cpu --out /tmp/r  # the same pipeline on a CPU, tiny models
    python scripts/reproduce.py --quick --only kernels --out R; python scripts/reproduce.py --quick \
        --only throughput,parity,sparse --out R                    # the same report in two commands
    python scripts/bench_attention.py --part dense --out R/kernels [--append] ...   # a long benchmark in parts,
    python scripts/reproduce.py --full --only kernels --reuse-kernels --out R       # then put in the report
    python scripts/reproduce.py --quick --only parity --reuse-runs --out R         # re-render from R/runs/

--quick: kernels causal, head dim 64, N 1K/4K/16K (block-sparse at 16K); GPT-2 small throughput at seq 1K x 16
(16 eager steps: flash, sdpa, HF's); convergence parity and one block-sparse pattern on gpt2-mini (40 eager
steps). --full: kernels at every N from 512 to 64K, head dims 64 and 128, causal and not, dropout 0 and 0.1; GPT-2
small and medium at seq 1K, 2K, 4K (40 steps); 500-step convergence runs and three patterns. Each section prints
what it runs, the time so far and an estimate of what is left; the training runs' own output shows as they go. The
report is <out>/report.md with PNGs and raw.json beside it (reporting/reproduction.py). The paper's numbers appear
only in columns marked "paper (A100)".
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import sys
from pathlib import Path

import torch

from reporting.reproduction import BACKENDS, SECTIONS, reproduce


def check_gpu_mode(args, only: list[str], device: str) -> None:
    """--quick / --full train GPT-2 small and medium: on a CPU only when asked for (--device cpu), not by default."""
    mode = args.mode or "quick"
    trains = set(only) - {"kernels"} and not args.reuse_runs
    if args.device == "auto" and device == "cpu" and mode != "tiny" and trains:
        sys.exit(f"no CUDA GPU here: --{mode} trains GPT-2 small{' and medium' if mode == 'full' else ''} "
                 f"(hours on a CPU); run --tiny --device cpu for the same pipeline with tiny models, or pass "
                 f"--device cpu to train these on the CPU anyway")


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", const="quick", dest="mode", help="the default")
    mode.add_argument("--full", action="store_const", const="full", dest="mode")
    mode.add_argument("--tiny", action="store_const", const="tiny", dest="mode", help="tiny models, for CPUs/tests")
    p.add_argument("--out", required=True, help="report directory (created)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of sections: {', '.join(SECTIONS)}")
    p.add_argument("--logger", default="offline", choices=["none", "offline", "online"],
                   help="wandb mode for the training runs (none: metrics.jsonl only)")
    p.add_argument("--group", default=None, help="wandb group prefix (default: the report directory's name)")
    p.add_argument("--data-dir", default=None, help="data.dir for train.py (default: data/stdlib_docs)")
    p.add_argument("--models", nargs="+", help="throughput models (presets), e.g. gpt2 gpt2-medium")
    p.add_argument("--seqs", nargs="+", type=int, help="throughput sequence lengths, e.g. 1024 2048 4096")
    p.add_argument("--backends", default=None,
                   help=f"throughput backends, comma list of {','.join(BACKENDS)},hf ('hf' is model.impl=hf); default: "
                        "the mode's (quick: flash,sdpa,hf; full: all)")
    p.add_argument("--steps", type=int, help="steps per throughput run")
    p.add_argument("--tokens-per-step", type=int, help="throughput batch = this // seq len")
    p.add_argument("--small-steps", type=int, help="steps per convergence / block-sparse run")
    p.add_argument("--reuse-kernels", action="store_true",
                   help="with --only kernels: render <out>/kernels/results.json instead of running the benchmark")
    p.add_argument("--reuse-runs", action="store_true",
                   help="build the --only training sections from the runs an earlier invocation left under <out>/runs "
                        "(no training); the report keeps that invocation's machine stamp")
    p.add_argument("--fresh", action="store_true", help="forget sections made by earlier runs into --out")
    p.add_argument("--triton-interpret", action="store_true",
                   help="on CPU, run flash/block_sparse through the (slow) Triton interpreter instead of skipping")
    p.add_argument("--sparse-patterns", nargs="*", default=None,
                   help="attn overrides per block-sparse run, e.g. 'attn.pattern=local attn.window=2'")
    args = p.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    if unknown := set(only) - set(SECTIONS):
        p.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    missing = [m for m in ("hydra", "omegaconf", *(["wandb"] if args.logger != "none" else []))
               if importlib.util.find_spec(m) is None]
    if missing:
        p.error(f"train.py needs {', '.join(missing)}, not installed here (pip install hydra-core wandb; "
                "or --logger none to train without wandb)")
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    check_gpu_mode(args, only, device)
    overrides = {k: getattr(args, k) for k in ("models", "seqs", "steps", "small_steps", "tokens_per_step")}
    return reproduce(args.mode or "quick", Path(args.out).resolve(), device, only, logger=args.logger,
                     group=args.group, data_dir=args.data_dir,
                     backends=[b.strip() for b in args.backends.split(",") if b.strip()] if args.backends else None,
                     plan_overrides=overrides,
                     patterns=args.sparse_patterns, reuse_kernels=args.reuse_kernels, reuse_runs=args.reuse_runs,
                     fresh=args.fresh, interpret=device == "cpu" and args.triton_interpret,
                     command=shlex.join(["reproduce.py", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    main()
