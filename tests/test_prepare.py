"""Dataset preparation on local files through `datasets`: bins decode to the source, resume, skip, errors."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
from script_loader import load_script

from training import prepare as prep
from training.tokenizer import EOT_ID, ranks_path

ROOT = Path(__file__).resolve().parent.parent
needs_gpt2 = pytest.mark.skipif(not ranks_path().exists(), reason=f"no GPT-2 ranks file at {ranks_path()}; run "
                                                                  f"`python -m training.tokenizer --fetch` to enable")


def make_docs(n=240, seed=0):
    rng = random.Random(seed)
    words = ["the", "flash", "attention", "naïve", "café", "日本語", "tokens", "\n", "GPU's", "  ", "1024", "!"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 30))).strip() or "x" for _ in range(n)]


@pytest.fixture
def corpus(tmp_path):
    docs = make_docs()
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    return path, docs


def settings(path, tmp_path, **kw):
    # cache_dir keeps the datasets cache of the test inside its tmp dir
    source = prep.Source(data_files=str(path), kwargs={"cache_dir": str(tmp_path / "hf_cache")})
    return prep.Settings(source=source, **{"tokenizer": "bytes", "val_fraction": 0.05, "chunk_docs": 50,
                                           "num_proc": 1, **kw})


def read(out, split):
    return np.fromfile(out / f"{split}.bin", dtype=np.uint16)


def docs_of(tokens, enc):
    """Split GPT-2 tokens at end-of-text (one after every document) and decode each document."""
    ends = np.flatnonzero(tokens == EOT_ID)
    assert len(ends) and ends[-1] == len(tokens) - 1
    return [enc.decode(d.tolist()) for d in np.split(tokens, ends + 1)[:-1] for d in [d[:-1]]]


@needs_gpt2
def test_gpt2_bins_decode_back_to_the_documents(corpus, tmp_path):
    from training.tokenizer import get_gpt2_encoding

    path, docs = corpus
    meta = prep.prepare(settings(path, tmp_path, tokenizer="gpt2", num_proc=2), tmp_path / "out")
    enc = get_gpt2_encoding()
    train, val = docs_of(read(tmp_path / "out", "train"), enc), docs_of(read(tmp_path / "out", "val"), enc)
    assert sorted(train + val) == sorted(docs)
    assert len(val) == 12 and meta["val_docs"] == 12 and meta["train_docs"] == 228
    assert meta["tokenizer"] == "gpt2" and meta["vocab_size"] == 50257 and meta["eot_token"] == EOT_ID
    assert meta["tokenizer_sha256"] == "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
    assert meta["train_tokens"] == len(read(tmp_path / "out", "train")) and meta["source"] == str(path)
    assert not (tmp_path / "out" / ".chunks").exists()


def test_bytes_bins_hold_the_split_documents_in_order(corpus, tmp_path):
    path, docs = corpus
    s = settings(path, tmp_path)
    meta = prep.prepare(s, tmp_path / "out")
    splits = prep.split_train_val(prep.load_source(s.source), s.val_fraction, s.seed)
    for name in ("train", "val"):
        assert bytes(read(tmp_path / "out", name).astype(np.uint8)).decode() == "".join(splits[name]["text"])
    assert meta["tokenizer"] == "bytes" and meta["vocab_size"] == 256


def test_interrupted_run_resumes_to_identical_bins(corpus, tmp_path, capsys):
    path, _ = corpus
    whole = tmp_path / "whole"
    prep.prepare(settings(path, tmp_path), whole)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="injected failure after 2"):
        prep.prepare(settings(path, tmp_path), out, fail_after_chunks=2)
    assert not (out / "meta.json").exists() and not (out / "train.bin").exists()
    assert sorted(p.name for p in (out / ".chunks").glob("*.npy")) == ["train-00000.npy", "train-00001.npy"]
    prep.prepare(settings(path, tmp_path), out)
    assert "resuming, 2/5 chunks already done" in capsys.readouterr().out
    assert prep.bins_sha256(out) == prep.bins_sha256(whole)
    assert json.loads((out / "meta.json").read_text()) == json.loads((whole / "meta.json").read_text())


def test_finished_run_is_skipped_unless_forced(corpus, tmp_path, capsys, monkeypatch):
    path, _ = corpus
    prep.prepare(settings(path, tmp_path), tmp_path / "out")
    monkeypatch.setattr(prep, "load_source", lambda src: pytest.fail("a finished directory was prepared again"))
    prep.prepare(settings(path, tmp_path), tmp_path / "out")
    assert "already prepared" in capsys.readouterr().out
    with pytest.raises(prep.PrepareError, match="other settings"):
        prep.prepare(settings(path, tmp_path, seed=1), tmp_path / "out")
    monkeypatch.undo()
    meta = prep.prepare(settings(path, tmp_path, seed=1), tmp_path / "out", force=True)
    assert meta["seed"] == 1


def test_not_enough_disk_space_is_refused_up_front(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(prep.shutil, "disk_usage", lambda p: type("U", (), {"free": 10})())
    with pytest.raises(prep.PrepareError, match="not enough disk space"):
        prep.prepare(settings(corpus[0], tmp_path), tmp_path / "out")
    assert not (tmp_path / "out" / "train.bin").exists()


def test_parquet_and_text_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = make_docs(40)
    pq.write_table(pa.table({"body": docs}), tmp_path / "c.parquet")
    s = settings(tmp_path / "c.parquet", tmp_path)
    s.source.text_column = "body"
    meta = prep.prepare(s, tmp_path / "pq")
    assert meta["train_tokens"] + meta["val_tokens"] == sum(len(d.encode()) for d in docs)
    (tmp_path / "c.txt").write_text("first paragraph\nstill first\n\nsecond\n\nthird one\n")
    s = settings(tmp_path / "c.txt", tmp_path, val_fraction=0.3)
    s.source.kwargs["sample_by"] = "paragraph"
    meta = prep.prepare(s, tmp_path / "txt")
    assert meta["train_docs"] + meta["val_docs"] == 3


@pytest.mark.parametrize("change, match", [
    ({"data_files": "missing.jsonl"}, "not found"),
    ({"data_files": "corpus.xyz"}, "cannot tell the format"),
    ({"text_column": "content"}, "no column 'content'"),
])
def test_bad_sources(corpus, tmp_path, change, match):
    path, _ = corpus
    if change.get("data_files") == "corpus.xyz":
        (tmp_path / "corpus.xyz").write_text("x")
    s = settings(path, tmp_path)
    for k, v in change.items():
        setattr(s.source, k, str(tmp_path / v) if k == "data_files" else v)
    with pytest.raises(prep.PrepareError, match=match):
        prep.prepare(s, tmp_path / "out")


def test_script_takes_the_train_py_data_overrides(corpus, tmp_path, monkeypatch):
    prepare_data = load_script("prepare_data")

    path, _ = corpus
    out = tmp_path / "mydata"
    meta = prepare_data.main(["data=text", f"data.source.data_files={path}", f"data.dir={out}", "data.tokenizer=bytes",
                              f"+data.source.kwargs.cache_dir={tmp_path / 'hf_cache'}", "--num-proc", "1"])
    assert (out / "train.bin").exists() and meta["val_fraction"] == 0.005 and meta["val_docs"] == 1
    with pytest.raises(prep.PrepareError, match="data.source.data_files"):
        prepare_data.main(["data=text"])
    with pytest.raises(prep.PrepareError, match="say which dataset"):
        prepare_data.main([])


def test_a_val_split_too_short_for_training_is_said_when_prepared(corpus, tmp_path, capsys):
    """One held-out document of a small file (0.5%, the default) cannot fill a GPT-2 window: said at once, with the
    setting that fixes it, not only when train.py refuses the split."""
    path, _ = corpus
    meta = prep.prepare(settings(path, tmp_path, val_fraction=0.005), tmp_path / "small")
    assert meta["val_docs"] == 1 and "warning: the val split holds only" in capsys.readouterr().out
    assert "data.val_fraction (now 0.005)" in prep.short_val_warning(meta)
    prep.prepare(settings(path, tmp_path, val_fraction=0.5), tmp_path / "half")
    assert "warning" not in capsys.readouterr().out
