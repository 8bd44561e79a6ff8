"""Validation loss and perplexity of a train.py checkpoint or a GPT-2 on a prepared dataset.

  python scripts/eval.py outputs/<date>/<time>                # the run's own data, at its training seq len
  python scripts/eval.py gpt2 --data data/openwebtext --attn flash
  python scripts/eval.py outputs/<date>/<time> --data data/openwebtext --seq-len 1024 --max-batches 200

Scores every token of the split's consecutive, non-overlapping windows of seq_len + 1 tokens (or the first
max_batches * batch_size of them): mean next-token cross-entropy in nats, perplexity = exp(loss).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from model.attention import UnsupportedAttentionError, available_backends, get_backend
from reporting.evaluation import DTYPES, check_fit, defaults, evaluate, load_split
from training.sources import load_any


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="run directory / ckpt.pt, GPT-2 hub name (gpt2, ...) or save_pretrained directory")
    p.add_argument("--data", help="prepared data directory (train.bin/val.bin/meta.json); default: a run's own "
                                  "training data, data/openwebtext for any other GPT-2")
    p.add_argument("--split", default="val", choices=("val", "train"), help="default: %(default)s")
    p.add_argument("--seq-len", type=int, help="window length; default: a run's training seq len, else the model's "
                                               "context (at most 1024)")
    p.add_argument("--batch-size", type=int, default=8, help="default: %(default)s")
    p.add_argument("--max-batches", type=int, help="stop after this many batches (default: the whole split)")
    p.add_argument("--attn", default="sdpa", help=f"attention backend: {', '.join(available_backends())}; "
                                                  "default: %(default)s")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="default: %(default)s")
    p.add_argument("--dtype", choices=tuple(DTYPES), help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--json", help="also write the result to this file")
    args = p.parse_args(argv)

    implied = defaults(args.model) if not (args.data and args.seq_len) else {}
    data_dir = Path(args.data or implied["data"])
    tokens, meta = load_split(data_dir, args.split)
    model, tokenizer = load_any(args.model, attn=args.attn, map_location=args.device)
    check_fit(meta, tokenizer, model.config.vocab_size, data_dir)
    dtype = DTYPES[args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")]
    model.check_attention(args.device, dtype)
    seq_len = args.seq_len or implied.get("seq_len") or min(model.config.block_size, 1024)
    backend = get_backend(model.config.attn).describe(model.config.attn_options)
    chosen = [what for what, given in (("data", args.data), ("seq_len", args.seq_len)) if not given]
    print(f"model: {args.model}, data: {data_dir}/{args.split}.bin ({len(tokens):,} tokens), seq_len: {seq_len}, "
          f"backend: {backend}, device: {args.device}, dtype: {str(dtype).removeprefix('torch.')}"
          + (f" ({' and '.join(chosen)}: {implied['why']})" if chosen else ""))
    t0 = time.time()
    result = evaluate(model, tokens, seq_len, args.batch_size, args.device, dtype, args.max_batches)
    result.update(model=args.model, data=str(data_dir), split=args.split, backend=model.config.attn,
                  dtype=str(dtype).removeprefix("torch."), seconds=round(time.time() - t0, 2))
    print(f"{args.split} loss {result['loss']:.4f}, perplexity {result['ppl']:.2f} over {result['tokens']:,} tokens")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    from training.checkpoint import CheckpointError
    from training.tokenizer import TokenizerError

    try:
        main()
    except UnsupportedAttentionError as e:
        sys.exit(f"error: {e} Choose it with --attn NAME.")
    except (CheckpointError, TokenizerError, ValueError) as e:  # ValueError: bad model name/dir, data, backend
        sys.exit(f"error: {e}")
