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
import sys
from pathlib import Path

from training.export import ExportError, export


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
