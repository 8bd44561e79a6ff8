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

from .run_dir import atomic_file, atomic_write_text

MODULES = (
    "builtins", "os", "re", "json", "collections", "itertools", "functools", "pathlib", "string", "textwrap",
    "datetime", "math", "random", "statistics", "argparse", "logging", "subprocess", "threading", "asyncio",
    "unittest", "typing", "dataclasses", "enum", "csv", "sqlite3", "http.client", "urllib.parse",
    "email.message", "socket", "shutil", "tempfile", "io", "pickle", "heapq", "bisect", "decimal", "fractions",
    "contextlib", "abc", "inspect", "difflib", "zipfile", "tarfile", "hashlib", "struct", "array", "queue",
    "sched", "calendar",
)
VAL_FRACTION = 0.1
SOURCE = f"pydoc text of {len(MODULES)} stdlib modules"
BUILDING = ".building"  # present from the start of a build until meta.json is written: an unfinished build of ours


def stdlib_text() -> str:
    docs = []
    for name in MODULES:
        try:
            docs.append(pydoc.render_doc(importlib.import_module(name), renderer=pydoc.plaintext))
        except ImportError:  # a trimmed-down Python may lack a module (e.g. sqlite3); the rest is plenty
            continue
    return "\n\n".join(docs)


def buildable(out_dir: Path) -> bool:
    """Building here overwrites nothing we did not make: the directory is new, empty or an unfinished build."""
    return not out_dir.exists() or (out_dir.is_dir() and (not any(out_dir.iterdir()) or (out_dir / BUILDING).exists()))


def built(out_dir: Path) -> bool:
    """A complete build of ours: its meta.json names this corpus and both splits are there."""
    try:
        meta = json.loads((out_dir / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    splits = all((out_dir / f"{split}.bin").is_file() for split in ("train", "val"))
    return isinstance(meta, dict) and meta.get("source") == SOURCE and splits


def prepare_stdlib_docs(out_dir: str | Path) -> Path:
    """Write train.bin, val.bin and meta.json (the data-dir contract) with byte-level tokens.

    Only into a new or empty directory (or over an unfinished build of its own): never over other files. A complete
    build of its own is left as it is."""
    out_dir = Path(out_dir)
    if built(out_dir):
        return out_dir
    if not buildable(out_dir):
        raise FileExistsError(f"'{out_dir}' is not empty and was not made by this builder; build the corpus in a "
                              f"new or empty directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / BUILDING).touch()
    tokens = np.frombuffer(stdlib_text().encode("utf-8"), dtype=np.uint8).astype(np.uint16)
    n_val = int(len(tokens) * VAL_FRACTION)
    splits = {"train": tokens[:-n_val], "val": tokens[-n_val:]}
    for split, arr in splits.items():
        with atomic_file(out_dir / f"{split}.bin") as f:
            arr.tofile(f)
    meta = {"tokenizer": "bytes", "vocab_size": 256, "train_tokens": len(splits["train"]),
            "val_tokens": len(splits["val"]), "source": SOURCE,
            "python": sys.version.split()[0]}
    atomic_write_text(out_dir / "meta.json", json.dumps(meta, indent=2))  # last: its presence marks a complete dir
    (out_dir / BUILDING).unlink(missing_ok=True)
    return out_dir


def main(out_dir: str = "data/stdlib_docs") -> None:
    """python -m training.corpus [DIR]: build the corpus there, or say it is already built."""
    already = built(Path(out_dir))
    try:
        path = prepare_stdlib_docs(out_dir)
    except FileExistsError as e:
        sys.exit(f"error: {e}")
    print(f"{path} (already built)" if already else path)


if __name__ == "__main__":
    main(*sys.argv[1:2])
