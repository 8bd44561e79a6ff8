"""Where one GPT-2 training step's time goes, per attention backend: GPU busy vs wall, attention kernels, top kernels.

    python scripts/profile_train_step.py --attn sdpa flash --model gpt2 --batch 16 --seq 1024
    python scripts/profile_train_step.py --attn flash --compile
    python scripts/profile_train_step.py --seq 4096 --batch 4 --out DIR   # also DIR/train_step_profile.{json,md}
    python scripts/profile_train_step.py --seq 4096 --batch 4 --compile --attn-dropout 0.1

What is timed and how: reporting/train_step_profile.py. Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from reporting.environment import environment, one_line
from reporting.train_step_profile import markdown, profile_backend


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--attn", nargs="+", default=["sdpa", "flash"])
    p.add_argument("--model", default="gpt2")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--attn-dropout", type=float, default=0.0, metavar="P", help="attention dropout (default: 0)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--out", type=Path, default=None, help="directory for train_step_profile.json and .md")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("profile_train_step.py needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    rows = [profile_backend(attn, args.model, args.batch, args.seq, args.compile, args.warmup, args.steps, args.top,
                            args.attn_dropout) for attn in args.attn]
    env = environment()
    dropout = f", attention dropout {args.attn_dropout}" if args.attn_dropout else ""
    text = markdown(rows, f"{args.model}, batch {args.batch}, seq {args.seq}, bf16{dropout}, "
                          f"{'compiled' if args.compile else 'eager'}; {one_line(env)}")
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "train_step_profile.json").write_text(json.dumps({"env": env, "args": vars(args) | {
            "out": str(args.out)}, "rows": rows}, indent=1))
        (args.out / "train_step_profile.md").write_text(f"# Training step profile\n\n```\n{text}\n```\n")
    return rows


if __name__ == "__main__":
    main()
