"""Where one attention forward+backward's GPU time goes, kernel by kernel, each provider at each shape.

    python scripts/profile_attention_kernels.py --out DIR       # causal D=64 at 4K and 16K: ours against cuDNN
    python scripts/profile_attention_kernels.py --seqs 4096 16384 --head-dims 128 --heads 6 --causal both --out DIR
    python scripts/profile_attention_kernels.py --dropout 0.1 --providers flash sdpa_cudnn sdpa_flash --out DIR

Writes DIR/attention_kernels.{json,md,png}: per provider, the GPU ms of every kernel, the matrix products of N·N·D
it runs and the rate over them (reporting/attention_kernels.py). 16K tokens per batch (B = 16384 / N), q, k, v
packed as the model passes them. Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from reporting.attention_kernels import PROVIDERS, sweep, write
from reporting.environment import environment


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--providers", nargs="+", default=["flash", "sdpa_cudnn"], choices=PROVIDERS)
    p.add_argument("--seqs", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--head-dims", type=int, nargs="+", default=[64])
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--causal", choices=("yes", "no", "both"), default="yes")
    p.add_argument("--dropout", type=float, nargs="+", default=[0.0])
    p.add_argument("--storage", choices=("packed", "bhnd"), default="packed")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--out", type=Path, required=True, help="directory for attention_kernels.{json,md,png}")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("profile_attention_kernels.py needs a CUDA GPU")
    causals = {"yes": (True,), "no": (False,), "both": (True, False)}[args.causal]
    rows = sweep(args.providers, args.seqs, args.head_dims, args.heads, causals, args.dropout, args.storage,
                 args.iters, log=lambda line: print(line, flush=True))
    print(write(rows, args.out, environment(), vars(args) | {"out": str(args.out)}))
    return rows


if __name__ == "__main__":
    main()
