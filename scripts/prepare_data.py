"""Prepare a dataset for train.py: python scripts/prepare_data.py data=<openwebtext|text> [data.key=value ...]

Takes the same `data=...` overrides as train.py (conf/data/*.yaml), so both agree on data.dir. Examples:
  python scripts/prepare_data.py data=openwebtext
  python scripts/prepare_data.py data=text data.source.data_files=corpus.txt data.name=mycorpus
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from training.prepare import PrepareError, Settings, data_config, prepare
from training.tokenizer import TokenizerError


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra-style overrides: data=NAME data.KEY=VALUE ...")
    p.add_argument("--force", action="store_true", help="rebuild even if the data dir is complete")
    p.add_argument("--num-proc", type=int, help="tokenizer processes (default: data.num_proc, else all cores)")
    p.add_argument("--skip-space-check", action="store_true")
    p.add_argument("--fail-after-chunks", type=int, help=argparse.SUPPRESS)  # tests: simulate a crash
    args = p.parse_args(argv)
    cfg = data_config(args.overrides)
    settings = Settings.from_config(cfg)
    if args.num_proc:
        settings.num_proc = args.num_proc
    out_dir = Path(cfg.get("dir") or f"data/{cfg['name']}")
    return prepare(settings, out_dir, force=args.force, check_space=not args.skip_space_check,
                   fail_after_chunks=args.fail_after_chunks)


if __name__ == "__main__":
    try:
        main()
    except (PrepareError, TokenizerError) as e:
        sys.exit(f"error: {e}")
