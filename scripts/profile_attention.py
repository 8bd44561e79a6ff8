"""Where the time of one attention forward+backward goes: GPU kernels vs host (launch) overhead.

    python scripts/profile_attention.py --provider flash --seq 1024 --batch 16
    python scripts/profile_attention.py --provider block_sparse --seq 16384 --batch 1 --pattern local

Prints host enqueue time, wall time and CUDA-event time per call (wall well above the GPU time: the host cannot
launch the work as fast as the GPU runs it), the GPU kernels (torch.profiler), the CPU-side ops, and where the
host time goes by Python function (cProfile, backward on the calling thread). Only public calls are profiled:
reporting/attention_profile.py.
"""

from __future__ import annotations

import argparse
import sys

import torch

from reporting.attention_profile import report
from reporting.attention_results import DENSE_PROVIDERS


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--provider", default="flash", choices=(*DENSE_PROVIDERS, "block_sparse"))
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--pattern", default="local", help="block_sparse: the layout's pattern (window 256)")
    p.add_argument("--iters", type=int, default=50)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("profile_attention.py needs a CUDA GPU")
    report(args.provider, args.seq, args.batch, args.heads, args.head_dim, args.dropout, args.pattern, args.iters)


if __name__ == "__main__":
    main()
