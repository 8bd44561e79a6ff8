"""Prepare OpenWebText (conf/data/openwebtext.yaml): python scripts/prepare_openwebtext.py [data.key=value ...]"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from prepare_data import main  # noqa: E402

from training.prepare import PrepareError  # noqa: E402
from training.tokenizer import TokenizerError  # noqa: E402

if __name__ == "__main__":
    try:
        main(["data=openwebtext", *sys.argv[1:]])
    except (PrepareError, TokenizerError) as e:
        sys.exit(f"error: {e}")
