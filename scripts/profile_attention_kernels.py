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
import json
import sys
from pathlib import Path

import torch

from reporting.attention_kernels import breakdown, markdown, plot
from reporting.environment import environment, one_line

PROVIDERS = ("flash", "sdpa_cudnn", "sdpa_flash")


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
    rows = []
    for D in args.head_dims:
        for causal in causals:
            for dropout in args.dropout:
                for N in args.seqs:
                    for name in args.providers:
                        rows.append(breakdown(name, max(1, 16384 // N), args.heads, N, D, causal, dropout,
                                              args.storage, args.iters))
                        print(f"{name} N={N} D={D} causal={causal} p={dropout:g}: {rows[-1]['ms']:.3f} ms",
                              flush=True)
    env = environment()
    title = f"Attention kernels per forward+backward (bf16, {args.storage} q, k, v); {one_line(env)}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "attention_kernels.json").write_text(json.dumps(
        {"env": env, "args": vars(args) | {"out": str(args.out)}, "rows": rows}, indent=1))
    text = markdown(rows, f"# {title}")
    (args.out / "attention_kernels.md").write_text(text + "\n![GPU time by role](attention_kernels.png)\n")
    plot(rows, args.out / "attention_kernels.png", title)
    print(text)
    return rows


if __name__ == "__main__":
    main()
