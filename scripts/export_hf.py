"""Export a train.py checkpoint to a transformers GPT-2 directory (GPT2LMHeadModel.from_pretrained loads it).

  python scripts/export_hf.py outputs/<date>/<time> exported/my-gpt2
  python -c "from transformers import GPT2LMHeadModel; GPT2LMHeadModel.from_pretrained('exported/my-gpt2')"

Padded vocabulary: models trained on GPT-2 BPE with vocab_size 50304 (50257 padded to a multiple of 64 for speed)
are exported with GPT-2's 50257 rows; the 47 padding ids never occur in GPT-2-tokenized text, so the logits of
every real token are unchanged (--vocab-size keeps another size). Byte-level models keep their 256.
The tokenizer is not written: for GPT-2 BPE use GPT2TokenizerFast.from_pretrained("gpt2") (the same BPE).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from model.pretrained import to_hf
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
        from transformers import GPT2LMHeadModel

        reloaded = GPT2LMHeadModel.from_pretrained(out_dir).float().eval()
        x = torch.randint(0, hf.config.vocab_size, (2, min(64, hf.config.n_positions)))
        with torch.no_grad():
            ours = model(x)[0][..., :hf.config.vocab_size]
            diff = (reloaded(x).logits - ours).abs().max().item()
        if diff > 1e-3:
            raise RuntimeError(f"exported logits differ from the checkpoint's by {diff:.2e}; please report this")
        print(f"verified: transformers' logits match the checkpoint's (max abs diff {diff:.1e})")
    return out_dir


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="run directory or ckpt.pt written by train.py")
    p.add_argument("out_dir", help="directory to write (config.json, model.safetensors)")
    p.add_argument("--vocab-size", type=int, help="rows of the exported embedding (default: see above)")
    p.add_argument("--no-verify", action="store_true", help="skip reloading the export and comparing logits")
    args = p.parse_args(argv)
    return export(args.checkpoint, args.out_dir, args.vocab_size, verify=not args.no_verify)


if __name__ == "__main__":
    from training.checkpoint import CheckpointError

    try:
        main()
    except (CheckpointError, ExportError, ValueError) as e:
        sys.exit(f"error: {e}")
