"""Validation loss and perplexity of a model on a prepared data split (scripts/eval.py).

Scores every token of the split's consecutive, non-overlapping windows of seq_len + 1 tokens (or the first
max_batches * batch_size of them): mean next-token cross-entropy in nats, perplexity = exp(loss).
"""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
HUB_DATA = "data/openwebtext"  # a GPT-2 that is not a train.py run: the data it was made for


class EvalError(ValueError):
    pass


def run_config(source: str) -> dict:
    """The resolved train.py config of a run directory or ckpt.pt ({} for a hub name or a GPT-2 directory)."""
    path = Path(source).expanduser()
    run_dir = path.parent if path.is_file() else path
    if (run_dir / "config.json").is_file():
        return json.loads((run_dir / "config.json").read_text())
    if path.is_file() or (path / "ckpt.pt").is_file():
        from training.checkpoint import load_checkpoint

        return load_checkpoint(path).get("config") or {}
    return {}


def defaults(source: str) -> dict:
    """Where and how a model is evaluated unless told otherwise: a run on its own training data at its training
    sequence length; any other GPT-2 on OpenWebText at its context (at most 1024)."""
    cfg = run_config(source)
    data, train = cfg.get("data") or {}, cfg.get("train") or {}
    if not (data.get("dir") or data.get("name")):
        return {"data": HUB_DATA, "seq_len": train.get("seq_len"), "why": "no training data recorded"}
    return {"data": data.get("dir") or f"data/{data['name']}", "seq_len": train.get("seq_len"),
            "why": "the run's own data and training sequence length"}


def load_split(data_dir: Path, split: str) -> tuple[np.memmap, dict]:
    meta_path, bin_path = data_dir / "meta.json", data_dir / f"{split}.bin"
    if not meta_path.is_file() or not bin_path.is_file():
        raise EvalError(f"'{data_dir}' is not a prepared data directory ({meta_path.name} or {bin_path.name} "
                        f"missing). Prepare one first, e.g. python scripts/prepare_data.py data=openwebtext, or pass "
                        f"--data")
    return np.memmap(bin_path, dtype=np.uint16, mode="r"), json.loads(meta_path.read_text())


def check_fit(meta: dict, model_tokenizer: str, vocab_size: int, data_dir: Path) -> None:
    if meta["tokenizer"] != model_tokenizer or meta["vocab_size"] > vocab_size:
        raise EvalError(f"the data in '{data_dir}' is tokenized with {meta['tokenizer']} (vocab {meta['vocab_size']})"
                        f" but the model uses {model_tokenizer} with vocab_size {vocab_size}; evaluate on data "
                        f"prepared with the model's tokenizer")


@torch.no_grad()
def evaluate(model, tokens: np.ndarray, seq_len: int, batch_size: int, device: str, dtype: torch.dtype,
             max_batches: int | None = None, progress: bool = True) -> dict:
    n_windows = (len(tokens) - 1) // seq_len
    if n_windows < 1:
        raise EvalError(f"the split has {len(tokens)} tokens, fewer than seq_len + 1 = {seq_len + 1}; "
                        f"pass a smaller --seq-len")
    if max_batches:
        n_windows = min(n_windows, max_batches * batch_size)
    autocast = torch.autocast(torch.device(device).type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    total, count = 0.0, 0
    for start in tqdm(range(0, n_windows, batch_size), desc="eval", unit="batch", disable=not progress):
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
