"""Validation loss and perplexity of a train.py checkpoint or a GPT-2 on a prepared dataset.

  python scripts/eval.py gpt2 --data data/openwebtext --attn flash
  python scripts/eval.py outputs/<date>/<time> --data data/openwebtext --seq-len 1024 --max-batches 200

Scores every token of the split's consecutive, non-overlapping windows of seq_len + 1 tokens (or the first
max_batches * batch_size of them): mean next-token cross-entropy in nats, perplexity = exp(loss).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.attention import available_backends, get_backend  # noqa: E402
from training.sources import load_any  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class EvalError(ValueError):
    pass


def load_split(data_dir: Path, split: str) -> tuple[np.memmap, dict]:
    meta_path, bin_path = data_dir / "meta.json", data_dir / f"{split}.bin"
    if not meta_path.is_file() or not bin_path.is_file():
        raise EvalError(f"'{data_dir}' is not a prepared data directory ({meta_path.name} or {bin_path.name} "
                        f"missing). Prepare one first, e.g. python scripts/prepare_openwebtext.py")
    return np.memmap(bin_path, dtype=np.uint16, mode="r"), json.loads(meta_path.read_text())


def check_fit(meta: dict, model_tokenizer: str, vocab_size: int, data_dir: Path) -> None:
    if meta["tokenizer"] != model_tokenizer or meta["vocab_size"] > vocab_size:
        raise EvalError(f"the data in '{data_dir}' is tokenized with {meta['tokenizer']} (vocab {meta['vocab_size']})"
                        f" but the model uses {model_tokenizer} with vocab_size {vocab_size}; evaluate on data "
                        f"prepared with the model's tokenizer")


@torch.no_grad()
def evaluate(model, tokens: np.ndarray, seq_len: int, batch_size: int, device: str, dtype: torch.dtype,
             max_batches: int | None = None) -> dict:
    n_windows = (len(tokens) - 1) // seq_len
    if n_windows < 1:
        raise EvalError(f"the split has {len(tokens)} tokens, fewer than seq_len + 1 = {seq_len + 1}; "
                        f"pass a smaller --seq-len")
    if max_batches:
        n_windows = min(n_windows, max_batches * batch_size)
    autocast = torch.autocast(torch.device(device).type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    total, count = 0.0, 0
    for start in range(0, n_windows, batch_size):
        idx = range(start, min(start + batch_size, n_windows))
        w = np.stack([tokens[i * seq_len:i * seq_len + seq_len + 1] for i in idx]).astype(np.int64)
        xy = torch.from_numpy(w).to(device)
        with autocast:
            logits, _ = model(xy[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), xy[:, 1:].flatten(), reduction="sum")
        total += loss.item()
        count += xy[:, 1:].numel()
    loss = total / count
    return {"loss": loss, "ppl": math.exp(loss), "tokens": count, "seq_len": seq_len}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="run directory / ckpt.pt, GPT-2 hub name (gpt2, ...) or save_pretrained directory")
    p.add_argument("--data", default="data/openwebtext", help="prepared data directory (train.bin/val.bin/meta.json)")
    p.add_argument("--split", default="val", choices=("val", "train"))
    p.add_argument("--seq-len", type=int, help="window length (default: the model's context, at most 1024)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-batches", type=int, help="stop after this many batches (default: the whole split)")
    p.add_argument("--attn", default="sdpa", help=f"attention backend: {', '.join(available_backends())}")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=tuple(DTYPES), help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--json", help="also write the result to this file")
    args = p.parse_args(argv)

    data_dir = Path(args.data)
    tokens, meta = load_split(data_dir, args.split)
    model, tokenizer = load_any(args.model, attn=args.attn, map_location=args.device)
    check_fit(meta, tokenizer, model.config.vocab_size, data_dir)
    dtype = DTYPES[args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")]
    model.check_attention(args.device, dtype)
    seq_len = args.seq_len or min(model.config.block_size, 1024)
    backend = get_backend(model.config.attn).describe(model.config.attn_options)
    print(f"model: {args.model}, data: {data_dir}/{args.split}.bin ({len(tokens):,} tokens), backend: {backend}, "
          f"device: {args.device}, dtype: {str(dtype).removeprefix('torch.')}, seq_len: {seq_len}")
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
    except (CheckpointError, TokenizerError, ValueError) as e:  # ValueError: bad model name/dir, data, backend
        sys.exit(f"error: {e}")
