"""The embedded default corpus: pydoc text of a fixed list of standard-library modules, byte-level tokens.

Every Python install has it, so the quickstart needs no network. Prepared once into data/stdlib_docs/.
"""

from __future__ import annotations

import importlib
import json
import pydoc
import sys
from pathlib import Path

import numpy as np

MODULES = (
    "builtins", "os", "re", "json", "collections", "itertools", "functools", "pathlib", "string", "textwrap",
    "datetime", "math", "random", "statistics", "argparse", "logging", "subprocess", "threading", "asyncio",
    "unittest", "typing", "dataclasses", "enum", "csv", "sqlite3", "http.client", "urllib.parse",
    "email.message", "socket", "shutil", "tempfile", "io", "pickle", "heapq", "bisect", "decimal", "fractions",
    "contextlib", "abc", "inspect", "difflib", "zipfile", "tarfile", "hashlib", "struct", "array", "queue",
    "sched", "calendar",
)
VAL_FRACTION = 0.1


def stdlib_text() -> str:
    docs = []
    for name in MODULES:
        try:
            docs.append(pydoc.render_doc(importlib.import_module(name), renderer=pydoc.plaintext))
        except ImportError:  # a trimmed-down Python may lack a module (e.g. sqlite3); the rest is plenty
            continue
    return "\n\n".join(docs)


def prepare_stdlib_docs(out_dir: str | Path) -> Path:
    """Write train.bin, val.bin and meta.json (the data-dir contract) with byte-level tokens."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokens = np.frombuffer(stdlib_text().encode("utf-8"), dtype=np.uint8).astype(np.uint16)
    n_val = int(len(tokens) * VAL_FRACTION)
    splits = {"train": tokens[:-n_val], "val": tokens[-n_val:]}
    for split, arr in splits.items():
        tmp = out_dir / f"{split}.bin.tmp"
        arr.tofile(tmp)
        tmp.replace(out_dir / f"{split}.bin")
    meta = {"tokenizer": "bytes", "vocab_size": 256, "train_tokens": len(splits["train"]),
            "val_tokens": len(splits["val"]), "source": f"pydoc text of {len(MODULES)} stdlib modules",
            "python": sys.version.split()[0]}
    tmp = out_dir / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(out_dir / "meta.json")  # written last: its presence marks a complete data dir
    return out_dir


if __name__ == "__main__":
    print(prepare_stdlib_docs(sys.argv[1] if len(sys.argv) > 1 else "data/stdlib_docs"))
