"""train.py's training step against a minimal bare GPT-2 loop, in one process: tokens/s and peak memory.

    python scripts/bench_train_step.py --out docs/results/h200/train_step          # GPU: the issue-14 table
    python scripts/bench_train_step.py --modes eager graphs --out DIR              # what CUDA graphs give back
    python scripts/bench_train_step.py --cases 1024x16 4096x4 --attn-dropout 0.1 --out DIR  # with dropout
    python scripts/bench_train_step.py --rounds 3 --no-bare --out DIR              # backends against each other
    python scripts/bench_train_step.py --device cpu --model gpt2-nano --cases 64x2 --attn sdpa --modes eager \\
        --warmup 1 --steps 2 --out /tmp/bench_step                                 # the same code path on a CPU

Same attention function, dtype (bf16 on CUDA), fused AdamW and shapes in both loops; writes
train_step_bench.json, .md and .png (stamped with GPU, versions, commit, date) into --out, rewritten after every
row (a run cut short keeps the rows it measured). Logic:
reporting/train_step_bench.py.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from reporting.train_step_bench import HEADER, MODES, bench, write


def case(text: str) -> tuple[int, int]:
    try:
        seq, batch = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not SEQxBATCH (e.g. 1024x16)") from None
    return seq, batch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", type=case, default=[(1024, 16), (4096, 4)], help="SEQxBATCH (default: "
                   "1024x16 4096x4)")
    p.add_argument("--attn", nargs="+", default=["sdpa", "flash"], help="backends (default: sdpa flash)")
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=["eager", "compiled"],
                   help="graphs: compiled with CUDA graphs (reduce-overhead) (default: eager compiled)")
    p.add_argument("--model", default="gpt2", help="model preset (default: gpt2)")
    p.add_argument("--attn-dropout", type=float, default=0.0, metavar="P",
                   help="attention dropout in both loops (train.py: model.attn_dropout) (default: 0)")
    p.add_argument("--device", default="cuda", help="cuda or cpu (default: cuda)")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps per loop, compile included (default: 10)")
    p.add_argument("--steps", type=int, default=30, help="timed steps per loop (default: 30)")
    p.add_argument("--rounds", type=int, default=1, help="times each row runs, the backends' order reversed every "
                   "other round; the tables give medians (default: 1)")
    p.add_argument("--bare", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the minimal bare loop (--no-bare: train.py's step only) (default: on)")
    p.add_argument("--data-dir", default=None, help="prepared data dir for train.py's step (default: the embedded "
                   "corpus, built in a temporary directory)")
    p.add_argument("--out", type=Path, required=True, help="directory for train_step_bench.json and .md")
    args = p.parse_args()
    if args.rounds < 1:
        p.error(f"--rounds {args.rounds}: at least 1")
    if not 0.0 <= args.attn_dropout < 1.0:
        p.error(f"--attn-dropout {args.attn_dropout}: a probability in [0, 1) is needed")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA GPU here: run with --device cpu (and a tiny --model / --cases) to try the code path")
    logging.getLogger("train").setLevel(logging.WARNING)
    command = " ".join(["python scripts/bench_train_step.py", *sys.argv[1:]])
    print(HEADER, flush=True)
    bench(args.cases, args.attn, args.modes, args.model, args.device, args.warmup, args.steps, args.data_dir,
          args.attn_dropout, args.rounds, args.bare, on_row=lambda result: write({**result, "command": command},
                                                                                 args.out))
    print(f"wrote {args.out / 'train_step_bench.md'} and .json")


if __name__ == "__main__":
    main()
