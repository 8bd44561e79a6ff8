"""Any dataset with a text column -> train.bin / val.bin (uint16 tokens) + meta.json (docs/dev/CONTRACTS.md).

Steps: load through `datasets` (hub name at a revision, or local parquet/json/text/csv files); hold out a seeded
validation fraction of documents; tokenize in chunks of documents with `datasets.map(num_proc=...)`, each chunk
saved as its own .npy under <out>/.chunks (written to a temp name, then renamed: a file there is complete);
concatenate the chunks into the bins; write meta.json last. An interrupted run redoes only missing chunks; a
finished one (meta.json present, same settings) is skipped unless force=True.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

LOCAL_BUILDERS = {".txt": "text", ".text": "text", ".md": "text", ".json": "json", ".jsonl": "json",
                  ".parquet": "parquet", ".csv": "csv"}
TOKENIZERS = ("gpt2", "bytes")


class PrepareError(RuntimeError):
    """The source or destination cannot be prepared; the message says how to fix it."""


@dataclass
class Source:
    path: str | None = None  # hub dataset ("Skylion007/openwebtext"), builder ("parquet") or local dir
    name: str | None = None  # dataset config
    revision: str | None = None  # hub branch, tag or commit (e.g. refs/convert/parquet)
    data_files: str | list[str] | None = None  # local files (builder inferred from the extension)
    split: str = "train"  # the split to read; val is held out of it
    text_column: str = "text"
    kwargs: dict = field(default_factory=dict)  # extra load_dataset arguments, e.g. {sample_by: paragraph}


@dataclass
class Settings:
    source: Source
    tokenizer: str = "gpt2"
    val_fraction: float = 0.005  # the paper's 0.5% held out
    seed: int = 2357
    chunk_docs: int = 100_000  # documents per chunk (the unit of resumption)
    num_proc: int | None = None  # None: all CPU cores
    expected_docs: int | None = None  # warn when the source has another number of documents

    @classmethod
    def from_config(cls, cfg: dict) -> Settings:
        keys = {k for k in cls.__dataclass_fields__ if k != "source"}
        source = Source(**{k: v for k, v in (cfg.get("source") or {}).items()})
        return cls(source=source, **{k: cfg[k] for k in keys if cfg.get(k) is not None})

    def fingerprint(self) -> dict:
        d = asdict(self)
        d.pop("num_proc")
        d.pop("expected_docs")
        return d


# ----------------------------------------------------------------------------------------------------------------
# tokenizers: encode a batch of documents to one flat token list per document, separator appended

def _eot_and_vocab(tokenizer: str) -> tuple[int | None, int]:
    if tokenizer == "gpt2":
        from .tokenizer import EOT_ID, VOCAB_SIZE
        return EOT_ID, VOCAB_SIZE
    return None, 256  # bytes: no spare id for a separator; documents are simply concatenated


def _tokenize_batch(batch: dict, text_column: str, tokenizer: str) -> dict:
    if tokenizer == "gpt2":
        from .tokenizer import EOT_ID, get_gpt2_encoding
        ids = get_gpt2_encoding().encode_ordinary_batch(batch[text_column], num_threads=1)
        ids = [np.array(x + [EOT_ID], dtype=np.uint16) for x in ids]
    else:
        ids = [np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(np.uint16) for t in batch[text_column]]
    return {"ids": ids}  # uint16 lists: a quarter of the int64 arrow datasets would infer from Python ints


def tokenizer_info(tokenizer: str) -> dict:
    if tokenizer == "gpt2":
        from .tokenizer import GPT2_RANKS_SHA256, get_gpt2_encoding
        get_gpt2_encoding()  # fail now, with the fetch hint, rather than in a worker
        return {"tokenizer": "gpt2", "tokenizer_sha256": GPT2_RANKS_SHA256, "eot_token": 50256}
    return {"tokenizer": "bytes", "tokenizer_sha256": None, "eot_token": None}


# ----------------------------------------------------------------------------------------------------------------
# source

def load_source(src: Source):
    from datasets import load_dataset

    path, data_files = src.path, src.data_files
    if path is None:
        if not data_files:
            raise PrepareError("no source: set data.source.path (a hub dataset) or data.source.data_files "
                               "(local .txt/.json/.jsonl/.parquet/.csv files), e.g. data=text "
                               "data.source.data_files=corpus.txt")
        files = [data_files] if isinstance(data_files, str) else list(data_files)
        missing = [f for f in files if not glob.glob(os.path.expanduser(f))]
        if missing:
            raise PrepareError(f"source files not found: {missing} (relative to {Path.cwd()})")
        ext = Path(files[0]).suffix.lower()
        if ext not in LOCAL_BUILDERS:
            raise PrepareError(f"cannot tell the format of '{files[0]}' from its extension; use one of "
                               f"{', '.join(LOCAL_BUILDERS)} or set data.source.path to a datasets builder "
                               f"(text, json, parquet, csv)")
        path = LOCAL_BUILDERS[ext]
    kwargs = {k: v for k, v in (src.kwargs or {}).items() if k != "sample_by" or path == "text"}
    try:
        ds = load_dataset(path, src.name, revision=src.revision, data_files=data_files, split=src.split, **kwargs)
    except Exception as e:
        hint = ""
        if "scripts are no longer supported" in str(e):
            hint = (" This dataset is a loading script, which datasets>=4 cannot run: use its parquet form, "
                    "e.g. data.source.revision=refs/convert/parquet, or another copy of it in parquet.")
        elif "ConnectionError" in type(e).__name__ or "reach" in str(e):
            hint = (" Hub datasets need network access or a copy in the datasets cache (HF_DATASETS_CACHE); "
                    "offline, copy the dataset's parquet files here and pass data.source.path=null "
                    "data.source.data_files='DIR/*.parquet'.")
        raise PrepareError(f"could not load dataset '{path}' (config {src.name}, revision {src.revision}, "
                           f"split {src.split}): {type(e).__name__}: {str(e)[:500]}.{hint}") from e
    if src.text_column not in ds.column_names:
        raise PrepareError(f"dataset '{path}' has no column '{src.text_column}' (columns: {ds.column_names}); "
                           f"set data.source.text_column")
    return ds


def split_train_val(ds, val_fraction: float, seed: int) -> dict:
    if len(ds) < 2:
        raise PrepareError(f"the source has {len(ds)} document(s); need at least 2 to hold out a validation split")
    n_val = min(len(ds) - 1, max(1, round(val_fraction * len(ds))))
    parts = ds.train_test_split(test_size=n_val, seed=seed, shuffle=True)
    return {"train": parts["train"], "val": parts["test"]}


def check_download_space(src: Source) -> None:
    """Before downloading a hub dataset: is there room in the datasets cache for it (when the hub says its size)?"""
    if src.path is None or Path(src.path).exists():
        return
    try:
        from datasets import load_dataset_builder

        builder = load_dataset_builder(src.path, src.name, revision=src.revision, **dict(src.kwargs or {}))
        need = (builder.info.download_size or 0) + (builder.info.dataset_size or 0)
        cache = Path(builder.cache_dir)
    except Exception:  # sizes unknown (or the hub unreachable: load_source reports that)
        return
    cache.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(cache).free
    if need and free < need * 1.05:
        raise PrepareError(f"not enough disk space for the download: '{src.path}' needs about {need / 1e9:.1f} GB "
                           f"in the datasets cache ({cache}), {free / 1e9:.1f} GB is free. Point HF_DATASETS_CACHE "
                           f"(or data.source.kwargs.cache_dir) at a larger disk, or pass --skip-space-check.")


def check_disk_space(out_dir: Path, text_bytes: int, tokenizer: str) -> None:
    # GPT-2 BPE averages ~4 bytes of English per token; bytes are 1 per token. Tokens are 2 bytes each, and the
    # chunks and the final bins coexist until the end: 2 copies. 10% margin.
    tokens = text_bytes // 3 if tokenizer == "gpt2" else text_bytes
    need = int(tokens * 2 * 2 * 1.1)
    free = shutil.disk_usage(out_dir).free
    if free < need:
        raise PrepareError(f"not enough disk space in '{out_dir}': this dataset needs about {need / 1e9:.1f} GB "
                           f"(tokens plus temporary chunks), {free / 1e9:.1f} GB is free. Free some space or set "
                           f"data.dir to a larger disk (or pass --skip-space-check if you know better).")


# ----------------------------------------------------------------------------------------------------------------
# the pipeline

def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def _tokenize_chunk(ds, settings: Settings, desc: str) -> np.ndarray:
    import pyarrow.compute as pc

    # auto: every core, but no process per handful of documents
    num_proc = settings.num_proc or max(1, min(os.cpu_count() or 1, len(ds) // 1000))
    out = ds.map(_tokenize_batch, batched=True, batch_size=1000, num_proc=num_proc if num_proc > 1 else None,
                 remove_columns=ds.column_names, keep_in_memory=True, desc=desc,
                 fn_kwargs={"text_column": settings.source.text_column, "tokenizer": settings.tokenizer})
    return pc.list_flatten(out.data.column("ids")).to_numpy(zero_copy_only=False).astype(np.uint16, copy=False)


def prepare(settings: Settings, out_dir: str | Path, force: bool = False, check_space: bool = True,
            fail_after_chunks: int | None = None) -> dict:
    """Build out_dir/{train,val}.bin and meta.json; returns meta. fail_after_chunks: tests' injected crash."""
    out_dir = Path(out_dir)
    if settings.tokenizer not in TOKENIZERS:
        raise PrepareError(f"unknown tokenizer '{settings.tokenizer}'; choose one of {', '.join(TOKENIZERS)}")
    meta_path, chunks_dir = out_dir / "meta.json", out_dir / ".chunks"
    if meta_path.exists() and not force:
        meta = json.loads(meta_path.read_text())
        if meta.get("settings") == settings.fingerprint():
            print(f"'{out_dir}' is already prepared ({meta['train_tokens']:,} train / {meta['val_tokens']:,} val "
                  f"tokens); pass --force to rebuild it")
            return meta
        raise PrepareError(f"'{out_dir}' holds data prepared with other settings ({meta.get('source')}); pass "
                           f"--force to replace it, or set data.dir to another directory")
    if force:
        meta_path.unlink(missing_ok=True)
        shutil.rmtree(chunks_dir, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress_path = chunks_dir / "settings.json"
    if progress_path.exists() and json.loads(progress_path.read_text()) != settings.fingerprint():
        print(f"discarding partial chunks in '{chunks_dir}': they were made with other settings")
        shutil.rmtree(chunks_dir)
    chunks_dir.mkdir(exist_ok=True)
    _atomic_write(progress_path, lambda p: p.write_text(json.dumps(settings.fingerprint(), indent=2)))

    tok = tokenizer_info(settings.tokenizer)
    if check_space:
        check_download_space(settings.source)
    ds = load_source(settings.source)
    n_docs = len(ds)
    if settings.expected_docs and n_docs != settings.expected_docs:
        print(f"warning: the source has {n_docs:,} documents, expected {settings.expected_docs:,} (a partial "
              f"conversion or another copy of the dataset?)")
    if check_space:
        check_disk_space(out_dir, ds.data.nbytes, settings.tokenizer)
    splits = split_train_val(ds, settings.val_fraction, settings.seed)

    done_now, counts = 0, {}
    for split, part in splits.items():
        n_chunks = max(1, -(-len(part) // settings.chunk_docs))
        paths = [chunks_dir / f"{split}-{i:05d}.npy" for i in range(n_chunks)]
        todo = [i for i, p in enumerate(paths) if not p.exists()]
        if len(todo) < n_chunks:
            print(f"{split}: resuming, {n_chunks - len(todo)}/{n_chunks} chunks already done")
        for i in todo:
            lo, hi = i * settings.chunk_docs, min(len(part), (i + 1) * settings.chunk_docs)
            tokens = _tokenize_chunk(part.select(range(lo, hi)), settings, f"{split} chunk {i + 1}/{n_chunks}")
            _atomic_write(paths[i], lambda p, t=tokens: _save_npy(p, t))
            done_now += 1
            if fail_after_chunks is not None and done_now >= fail_after_chunks:
                raise RuntimeError(f"injected failure after {done_now} chunk(s)")
        counts[split] = _concatenate(paths, out_dir / f"{split}.bin", desc=f"writing {split}.bin")
        counts[f"{split}_docs"] = len(part)

    _, vocab_size = _eot_and_vocab(settings.tokenizer)
    src = settings.source
    meta = {
        **tok, "vocab_size": vocab_size, "train_tokens": counts["train"], "val_tokens": counts["val"],
        "train_docs": counts["train_docs"], "val_docs": counts["val_docs"], "dtype": "uint16",
        "source": src.path or src.data_files, "config": src.name, "revision": src.revision, "split": src.split,
        "text_column": src.text_column, "val_fraction": settings.val_fraction, "seed": settings.seed,
        "source_fingerprint": getattr(ds, "_fingerprint", None), "settings": settings.fingerprint(),
    }
    _atomic_write(meta_path, lambda p: p.write_text(json.dumps(meta, indent=2)))  # last: marks completion
    shutil.rmtree(chunks_dir)
    print(f"wrote {out_dir}: {meta['train_tokens']:,} train tokens, {meta['val_tokens']:,} val tokens")
    if warning := short_val_warning(meta):
        print(warning)
    return meta


GPT2_WINDOW = 1025  # train.py reads windows of train.seq_len + 1 tokens: 1025 at GPT-2's context


def short_val_warning(meta: dict) -> str | None:
    """The val split too short for a GPT-2 window: train.py would refuse it at train.seq_len=1024 (or less)."""
    if meta["val_tokens"] > GPT2_WINDOW:
        return None
    return (f"warning: the val split holds only {meta['val_tokens']:,} tokens ({meta['val_docs']:,} documents); "
            f"train.py needs more than train.seq_len + 1 ({GPT2_WINDOW} at seq_len 1024). Prepare again with --force "
            f"and a larger data.val_fraction (now {meta['val_fraction']}) unless you train on shorter sequences")


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would add .npy to a temp name
        np.save(f, array)


def _concatenate(paths: list[Path], dest: Path, desc: str) -> int:
    arrays = [np.load(p, mmap_mode="r") for p in paths]
    total = sum(len(a) for a in arrays)

    def write(tmp: Path):
        out = np.memmap(tmp, dtype=np.uint16, mode="w+", shape=(max(total, 1),))
        pos = 0
        for a in tqdm(arrays, desc=desc, unit="chunk"):
            out[pos:pos + len(a)] = a
            pos += len(a)
        out.flush()
        del out
        if total == 0:
            os.truncate(tmp, 0)

    _atomic_write(dest, write)
    return total


def bins_sha256(out_dir: str | Path) -> dict:
    """sha256 of each bin (tests compare resumed and uninterrupted runs)."""
    return {s: hashlib.sha256((Path(out_dir) / f"{s}.bin").read_bytes()).hexdigest() for s in ("train", "val")}


def data_config(overrides: list[str]) -> dict:
    """The `data` node as train.py would see it, from data=<name> and data.* overrides (scripts/prepare_data.py)."""
    from omegaconf import OmegaConf

    from .config import CONF_DIR, compose

    if not any(o.startswith(("data=", "+data=")) for o in overrides):
        raise PrepareError(f"say which dataset: data=<name> (one of: "
                           f"{', '.join(p.stem for p in sorted((CONF_DIR / 'data').glob('*.yaml')))})")
    cfg = compose([o.removeprefix("+") if o.startswith("+data=") else o for o in overrides])
    try:
        return OmegaConf.to_container(cfg.data, resolve=True, throw_on_missing=True)
    except Exception as e:
        if "Missing mandatory value" in str(e):
            raise PrepareError(f"{e}. Set it on the command line, e.g. data.source.data_files=corpus.txt") from None
        raise
