"""Prepare OpenWebText (conf/data/openwebtext.yaml): python scripts/prepare_openwebtext.py [data.key=value ...]

The same as `python scripts/prepare_data.py data=openwebtext [data.key=value ...]`, which it runs.
"""

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    prepare_data = Path(__file__).resolve().parent / "prepare_data.py"
    os.execv(sys.executable, [sys.executable, str(prepare_data), "data=openwebtext", *sys.argv[1:]])
