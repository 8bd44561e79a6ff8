"""Attention benchmark: time, TFLOP/s and extra memory of attention implementations vs sequence length.

Dense: naive, ours (flash), SDPA's flash backend, SDPA's cuDNN backend, FlexAttention (compiled, causal mask).
Sparse: our block-sparse kernel vs our dense flash and FlexAttention with the same block mask. Modes: fwd, bwd,
fwd_bwd and fwd_bwd_graph (fwd+bwd replayed from a CUDA graph: GPU time without host launch gaps). Host: the host
time of one eager call at a size whose GPU work is negligible (B = H = 1, N = 128). What is timed
and how: reporting/attention_bench.py; the results' schema and tables: reporting/attention_results.py.

    python scripts/bench_attention.py --quick --out /tmp/bench                # a few sizes (under 3 minutes)
    python scripts/bench_attention.py --out DIR                               # everything (over 10 minutes)
    # the full sweep in parts that each fit a 10-minute slot, merged into one table:
    python scripts/bench_attention.py --part dense --head-dims 64 --out DIR
    python scripts/bench_attention.py --part dense --head-dims 128 --out DIR --append
    python scripts/bench_attention.py --part sparse --out DIR --append
    python scripts/bench_attention.py --part host --causal yes --dropout 0 --out DIR --append   # about a minute
    # q, k, v as the model passes them: one packed projection, whole to ours, as views to the others:
    python scripts/bench_attention.py --part dense --storage packed --causal yes --dropout 0 --out DIR
    # GPT-2 small's width (768) at head dim 128: 6 heads
    python scripts/bench_attention.py --part dense --head-dims 128 --heads 6 --dropout 0 --out DIR
    # sustained, as training runs them: each fwd+bwd graph also replayed 3 s, with the SM clock and power
    python scripts/bench_attention.py --quick --part dense --sustain 3 --out DIR
    # ours against another checkout's kernels (e.g. main), in one process:
    git worktree add /tmp/main main && python scripts/bench_attention.py --quick --baseline /tmp/main --out DIR

Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from reporting import attention_bench
from reporting.attention_results import DENSE_PROVIDERS


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory (results.json, results.md, *.png)")
    ap.add_argument("--quick", action="store_true", help="a few sizes: causal D=64 N in 1K, 4K, 16K; sparse at 4K, 16K")
    ap.add_argument("--part", choices=("dense", "sparse", "host", "all"), default="all",
                    help="host: host time per eager call of each provider (all: included unless --quick)")
    ap.add_argument("--seqs", type=int, nargs="+",
                    help="sequence lengths, dense and block-sparse (default 512 ... 16K, plus 32K, 64K; sparse 1K, 4K, "
                    "16K, 64K)")
    ap.add_argument("--windows", type=int, nargs="+",
                    help="local windows of the block-sparse sweep over N (default 256; a density sweep at 8K follows)")
    ap.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--heads", type=int, default=12,
                    help="heads per batch (12; GPT-2 small's width at D = 128 is 6)")
    ap.add_argument("--causal", choices=("yes", "no", "both"), default="both")
    ap.add_argument("--dropout", type=float, nargs="+", default=[0.0, 0.1])
    ap.add_argument("--providers", nargs="+", default=list(DENSE_PROVIDERS), choices=DENSE_PROVIDERS)
    ap.add_argument("--baseline", metavar="DIR", help="another checkout of this repository (e.g. main): its kernels "
                    "run beside ours in the same process, as flash@baseline and block_sparse@baseline")
    ap.add_argument("--storage", choices=tuple(attention_bench.STORAGES), default="bhnd",
                    help="dense inputs: " + "; ".join(f"{k}: {v}" for k, v in attention_bench.STORAGES.items()))
    ap.add_argument("--sustain", type=float, default=0.0, metavar="SECONDS",
                    help="also replay each dense fwd+bwd graph for SECONDS, with the SM clock and power: sustained, "
                    "the board's power limit lowers the clock of a kernel that spends more energy, which short "
                    "timings do not show (adds providers x shapes x SECONDS)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="measure each dense shape's providers this many times, every other round in reverse order, "
                    "and report the median (A/B runs: the GPU's clock drifts within a run)")
    ap.add_argument("--append", action="store_true",
                    help="merge into --out's existing results.json (run the full sweep in parts: it takes >10 min)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_attention.py needs a CUDA GPU (the kernels' CPU path is the slow Triton interpreter)")
    causals = {"yes": (True,), "no": (False,), "both": (True, False)}[args.causal]
    sizes = attention_bench.plan(args.quick, args.seqs, args.head_dims, causals, args.dropout, args.windows)
    if args.sustain < 0:
        ap.error(f"--sustain {args.sustain}: seconds, 0 (off) or more")
    if args.rounds < 1:
        ap.error(f"--rounds {args.rounds}: 1 or more")
    if args.append and (conflict := attention_bench.heads_conflict(Path(args.out) / "results.json", args.heads)):
        ap.error(f"--append: {conflict}")
    rows = attention_bench.sweep(args.out, sizes, args.part, args.providers, args.append, baseline=args.baseline,
                                 storage=args.storage, sustain=args.sustain, heads=args.heads,
                                 rounds=args.rounds)
    print((Path(args.out) / "results.md").read_text())
    return rows


if __name__ == "__main__":
    main()
