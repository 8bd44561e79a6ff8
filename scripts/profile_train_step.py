"""Where one GPT-2 training step's time goes, per attention backend: GPU busy vs wall, attention kernels, top kernels.

    python scripts/profile_train_step.py --attn sdpa flash --model gpt2 --batch 16 --seq 1024
    python scripts/profile_train_step.py --attn flash --compile

What is timed and how: reporting/train_step_profile.py. Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import sys

import torch

from reporting.train_step_profile import markdown, profile_backend


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--attn", nargs="+", default=["sdpa", "flash"])
    p.add_argument("--model", default="gpt2")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--top", type=int, default=12)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("profile_train_step.py needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    rows = [profile_backend(attn, args.model, args.batch, args.seq, args.compile, args.warmup, args.steps, args.top)
            for attn in args.attn]
    print(markdown(rows, f"{args.model}, batch {args.batch}, seq {args.seq}, bf16, "
                         f"{'compiled' if args.compile else 'eager'}, {torch.cuda.get_device_name()}"))
    return rows


if __name__ == "__main__":
    main()
