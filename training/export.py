"""Export a train.py checkpoint to a transformers GPT-2 directory (scripts/export_hf.py is its command line).

Padded vocabulary: models trained on GPT-2 BPE with vocab_size 50304 (50257 padded to a multiple of 64 for speed)
are exported with GPT-2's 50257 rows; the 47 padding ids never occur in GPT-2-tokenized text, so the logits of
every real token are unchanged. Byte-level models keep their 256.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from model.pretrained import gpt2_classes, to_hf
from training.sources import load_any

GPT2_VOCAB = 50257


class ExportError(RuntimeError):
    """The destination cannot be written; the message says what to pass instead."""


def check_writable(out_dir: Path) -> None:
    """Refuse, before any work, a destination that is a file or lies in a directory that cannot be written."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"'{out_dir}' is a file, not a directory; pass a directory to export into")
    existing = next(p for p in (out_dir, *out_dir.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write to '{existing}' (permission denied or not a directory); pass a directory "
                          f"you can write to")


def export(source: str, out_dir: str | Path, vocab_size: int | None = None, verify: bool = True) -> Path:
    """Write a run directory's or ckpt.pt's model into out_dir as a transformers GPT-2 (vocab_size rows, default
    as the module docstring says); with verify, reload it and compare its logits with the checkpoint's."""
    out_dir = Path(out_dir)
    if not Path(source).expanduser().exists():
        raise ExportError(f"'{source}' does not exist; pass a run directory or ckpt.pt written by train.py "
                          f"(e.g. outputs/<date>/<time>)")
    check_writable(out_dir)
    model, tokenizer = load_any(source, attn="naive")
    if vocab_size is None:
        vocab_size = GPT2_VOCAB if tokenizer == "gpt2" and model.config.vocab_size > GPT2_VOCAB else None
    hf = to_hf(model, vocab_size)
    try:
        hf.save_pretrained(out_dir)
    except OSError as e:
        raise ExportError(f"could not write the export into '{out_dir}' ({e.strerror or e}); free disk space or "
                          f"pass another directory") from None
    print(f"wrote {out_dir} (GPT-2, {hf.config.n_layer} layers, {hf.config.n_embd} wide, vocab "
          f"{hf.config.vocab_size}, context {hf.config.n_positions}; trained with tokenizer: {tokenizer})")
    if verify:
        _, GPT2LMHeadModel = gpt2_classes()
        reloaded = GPT2LMHeadModel.from_pretrained(out_dir).float().eval()
        x = torch.randint(0, hf.config.vocab_size, (2, min(64, hf.config.n_positions)))
        with torch.no_grad():
            ours = model(x)[0][..., :hf.config.vocab_size]
            diff = (reloaded(x).logits - ours).abs().max().item()
        if diff > 1e-3:
            raise RuntimeError(f"exported logits differ from the checkpoint's by {diff:.2e}; please report this")
        print(f"verified: transformers' logits match the checkpoint's (max abs diff {diff:.1e})")
    return out_dir
