"""Random-window batches from uint16 token memmaps (the data-dir contract in docs/dev/CONTRACTS.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .corpus import buildable, prepare_stdlib_docs

EMBEDDED = {"stdlib_docs": prepare_stdlib_docs}  # datasets this package can build itself, offline


class DataError(RuntimeError):
    """Data is missing or does not fit the model; the message says how to fix it."""


def data_dir(data_cfg) -> Path:
    return Path(data_cfg.get("dir") or default_dir(data_cfg["name"]))


def default_dir(name: str) -> Path:
    return Path(f"data/{name}")


def prepare_data(data_cfg) -> tuple[Path, dict]:
    """Locate the data dir (building the embedded corpus on first use) and return it with its checked meta.json."""
    path = data_dir(data_cfg)
    name = data_cfg["name"]
    if not (path / "meta.json").is_file() and name in EMBEDDED:
        check_buildable(path, name)
        EMBEDDED[name](path)
    missing = [f for f in ("train.bin", "val.bin", "meta.json") if not (path / f).is_file()]
    if missing:
        how = data_cfg.get("prepare") or f"the prepare script for '{name}'"
        raise DataError(f"data for '{name}' is missing at '{path}' ({', '.join(missing)} not found). "
                        f"Prepare it first: {how}; or point data.dir at a prepared directory.")
    return path, read_meta(path)


def check_buildable(path: Path, name: str) -> None:
    """The embedded corpus is built only where it cannot overwrite or scatter anything: its default location,
    an empty directory (or one holding its own unfinished build), or a new directory inside an existing one (a
    mistyped deep path is refused)."""
    if path.is_dir():
        if buildable(path):
            return
        raise DataError(f"data.dir='{path}' holds files but no meta.json, so it is not a prepared data directory; "
                        f"the embedded '{name}' corpus is not written over files it did not make. Point data.dir "
                        f"at a prepared directory, an empty or a new one (or leave it unset: {default_dir(name)}).")
    if path.exists():
        raise DataError(f"data.dir='{path}' is a file, not a directory; point data.dir at a data directory.")
    if not path.parent.is_dir() and path.resolve() != default_dir(name).resolve():
        raise DataError(f"data.dir='{path}' does not exist, nor does its parent '{path.parent}' (a typo?); point "
                        f"data.dir at a prepared directory, or at a new directory inside an existing one to build "
                        f"the embedded '{name}' corpus there.")


def read_meta(path: Path) -> dict:
    """meta.json, checked for what training reads from it."""
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"'{path / 'meta.json'}' is not valid JSON ({e}); prepare the data again "
                        f"(e.g. python scripts/prepare_data.py) or fix the file.") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("vocab_size"), int) or meta["vocab_size"] < 1:
        raise DataError(f"'{path / 'meta.json'}' lacks a positive integer vocab_size (the data-dir contract: "
                        f"tokenizer, vocab_size, train_tokens, val_tokens); prepare the data again or fix the file.")
    meta.setdefault("tokenizer", "bytes" if meta["vocab_size"] <= 256 else "gpt2")
    meta.setdefault("train_tokens", (path / "train.bin").stat().st_size // 2)
    return meta


def check_vocab(meta: dict, vocab_size: int, path: Path) -> None:
    if meta["vocab_size"] > vocab_size:
        raise DataError(f"the data at '{path}' uses a {meta['tokenizer']} tokenizer with vocab_size "
                        f"{meta['vocab_size']}, more than the model's vocab_size {vocab_size}. Pick a model "
                        f"preset for this data (byte-level data: gpt2-nano/tiny/mini; GPT-2 BPE: gpt2...) or "
                        f"set +model.overrides.vocab_size={meta['vocab_size']}.")


def check_split(path: Path, split: str, seq_len: int) -> Path:
    """The split's token file, if it holds uint16 tokens enough for one window of seq_len + 1."""
    file = Path(path) / f"{split}.bin"
    size = file.stat().st_size
    if size % 2:
        raise DataError(f"'{file}' has {size} bytes, an odd number, so it is not uint16 tokens (truncated or not a "
                        f"token file); prepare the data again.")
    if size // 2 <= seq_len + 1:
        more = "more data (or prepare it with a larger data.val_fraction)" if split == "val" else "more data"
        raise DataError(f"'{file}' has {size // 2} tokens, too few for train.seq_len={seq_len}; use a shorter "
                        f"train.seq_len or {more}.")
    return file


class TokenBatches:
    """Endless (x, y) batches of random windows, state in checkpoints.

    The k-th batch of rank r is drawn from a generator seeded by (seed, k * world_size + r): ranks see disjoint
    streams, and the global batch of an optimizer step does not depend on how it is split, so N ranks with
    grad_accum=1 train on the same tokens as one process with grad_accum=N (the same loss curve).
    """

    def __init__(self, path: Path, split: str, batch_size: int, seq_len: int, device: torch.device,
                 seed: int, rank: int = 0, world_size: int = 1):
        self.file = check_split(path, split, seq_len)
        self.tokens = np.memmap(self.file, dtype=np.uint16, mode="r")
        meta = Path(path) / "meta.json"
        self.vocab_size = read_meta(Path(path))["vocab_size"] if meta.is_file() else None
        self.batch_size, self.seq_len, self.device = batch_size, seq_len, device
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.batches_drawn = 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.batches_drawn * self.world_size + self.rank])
        self.batches_drawn += 1
        starts = rng.integers(0, len(self.tokens) - self.seq_len - 1, size=self.batch_size)
        windows = np.stack([self.tokens[s:s + self.seq_len + 1] for s in starts]).astype(np.int64)
        if self.vocab_size is not None and windows.max() >= self.vocab_size:
            raise DataError(f"'{self.file}' holds token id {windows.max()} but its meta.json says vocab_size "
                            f"{self.vocab_size}: the tokens and meta.json disagree. Prepare the data again.")
        xy = torch.from_numpy(windows)
        if self.device.type == "cuda":
            xy = xy.pin_memory().to(self.device, non_blocking=True)
        return xy[:, :-1], xy[:, 1:]

    def state_dict(self) -> dict:
        return {"batches_drawn": self.batches_drawn}

    def load_state_dict(self, state: dict) -> None:
        if "batches_drawn" not in state:
            raise DataError("the checkpoint's data position is from an older format (a generator state); resume "
                            "it with the commit that wrote it, or start the run again")
        self.batches_drawn = state["batches_drawn"]
