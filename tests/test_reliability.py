"""The reliability parts on their own: checkpoints (finite, checksummed, verified, atomic), the run-directory lock,
atomic writes, the embedded corpus never writing over foreign files, data checks, model-shape checks."""

import errno
import json
import os
import pickle
import time
import zipfile

import numpy as np
import pytest
import torch

from model import GPT, GPTConfig
from model.shape import ModelShapeError, check_shape
from training.checkpoint import CheckpointError, NonFiniteState, check_resumable, load_checkpoint, save_checkpoint
from training.corpus import prepare_stdlib_docs
from training.data import DataError, TokenBatches, prepare_data
from training.run_dir import RunDir, RunDirError, atomic_write_text

TINY = GPTConfig(block_size=16, vocab_size=32, n_layer=1, n_head=2, n_embd=16)


def tiny_state(step=1):
    model = GPT(TINY)
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))[1].backward()
    opt.step()
    from dataclasses import asdict
    return model, opt, {"model": model.state_dict(), "model_config": asdict(TINY), "optimizer": opt.state_dict(),
                        "step": step}


def hashes(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


# ---- item 1: a non-finite state is never saved; the previous good checkpoint stays --------------------------------

def test_nonfinite_weights_or_adam_state_are_never_saved(tmp_path):
    model, opt, state = tiny_state()
    save_checkpoint(state, tmp_path / "ckpt.pt")
    good = (tmp_path / "ckpt.pt").read_bytes()
    with torch.no_grad():
        next(model.parameters()).fill_(float("inf"))  # the state dict shares the parameters' storage
    with pytest.raises(NonFiniteState, match="NaN or inf .*previous checkpoint .* is kept"):
        save_checkpoint({**state, "step": 2}, tmp_path / "ckpt.pt")
    _, opt2, state2 = tiny_state()
    next(iter(opt2.state.values()))["exp_avg_sq"][0] = float("nan")  # weights finite, Adam's state not
    with pytest.raises(NonFiniteState, match="optimizer.state"):
        save_checkpoint({**state2, "optimizer": opt2.state_dict()}, tmp_path / "ckpt.pt")
    assert (tmp_path / "ckpt.pt").read_bytes() == good and os.listdir(tmp_path) == ["ckpt.pt"]


# ---- item 3: a checksum with every checkpoint, verified on load ---------------------------------------------------

def flip_bytes_in_largest_tensor(path):
    """Change 64 bytes inside the largest tensor record of a torch zip checkpoint (what bit rot would do)."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 64
    end = min(start + 64, info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.file_size)
    raw[start:end] = bytes(b ^ 0xFF for b in raw[start:end])
    path.write_bytes(bytes(raw))


def test_flipped_bytes_are_caught_on_load(tmp_path):
    _, _, state = tiny_state()
    save_checkpoint(state, tmp_path / "ckpt.pt")
    load_checkpoint(tmp_path)  # verifies
    flip_bytes_in_largest_tensor(tmp_path / "ckpt.pt")
    torch.load(tmp_path / "ckpt.pt", weights_only=True)  # torch alone does not notice
    with pytest.raises(CheckpointError, match="is corrupt: its content does not match the sha256"):
        load_checkpoint(tmp_path)


def test_the_previous_checkpoint_survives_a_failed_write(tmp_path, monkeypatch):
    _, _, state = tiny_state()
    save_checkpoint(state, tmp_path / "ckpt.pt")
    good = (tmp_path / "ckpt.pt").read_bytes()
    real_save = torch.save

    def disk_full(obj, f, *a, **k):
        real_save(obj, f, *a, **k)  # a partial file exists, then the disk fills
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointError, match="No space left on device.*previous checkpoint .* is kept"):
        save_checkpoint({**state, "step": 2}, tmp_path / "ckpt.pt")
    assert (tmp_path / "ckpt.pt").read_bytes() == good and os.listdir(tmp_path) == ["ckpt.pt"]  # temp removed


# ---- the malicious-pickle guarantee: weights_only loading, no code runs --------------------------------------------

class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("where", ["top", "nested", "raw_pickle"])
def test_a_malicious_pickle_is_refused_and_runs_nothing(tmp_path, where):
    marker = tmp_path / "pwned"
    _, _, state = tiny_state()
    path = tmp_path / "ckpt.pt"
    if where == "top":
        torch.save(Payload(marker), path)
    elif where == "nested":
        torch.save({**state, "step": Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"model": Payload(marker), "model_config": {}, "step": 1}))
    with pytest.raises(CheckpointError, match="is corrupt or not a torch checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


# ---- item 6: a checkpoint that does not describe itself is refused before anything is built ------------------------

def test_checkpoint_config_must_match_its_weights_and_know_its_fields(tmp_path):
    _, _, state = tiny_state()
    save_checkpoint({**state, "model_config": {**state["model_config"], "n_embd": 32}}, tmp_path / "a.pt")
    with pytest.raises(CheckpointError, match="does not match its own model_config"):
        load_checkpoint(tmp_path / "a.pt")
    save_checkpoint({**state, "model_config": {**state["model_config"], "rotary": True}}, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match=r"unknown fields \['rotary'\]"):
        load_checkpoint(tmp_path / "b.pt")
    save_checkpoint({**state, "model_config": {**state["model_config"], "n_layer": 10**9}}, tmp_path / "c.pt")
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="more than the .* of memory"):
        load_checkpoint(tmp_path / "c.pt")
    assert time.perf_counter() - start < 1
    weights_only = {k: v for k, v in state.items() if k != "optimizer"}
    save_checkpoint(weights_only, tmp_path / "d.pt")
    with pytest.raises(CheckpointError, match=r"lacks \['optimizer', .*cannot resume"):
        check_resumable(load_checkpoint(tmp_path / "d.pt"), tmp_path / "d.pt")


# ---- item 4: impossible model shapes fail at once -------------------------------------------------------------------

@pytest.mark.parametrize("shape,match", [
    ({"n_layer": 10**9, "n_head": 12, "n_embd": 768, "block_size": 1024, "vocab_size": 50257}, "more than the"),
    ({"n_layer": -1, "n_head": 12, "n_embd": 768}, "n_layer=-1"),
    ({"n_embd": 0}, "n_embd=0"),
    ({"n_layer": 2.5}, "n_layer=2.5"),
    ({"n_head": 3, "n_embd": 128}, "not divisible"),
])
def test_impossible_shapes_are_refused_fast(shape, match):
    start = time.perf_counter()
    with pytest.raises(ModelShapeError, match=match):
        check_shape(shape)
    assert time.perf_counter() - start < 1


# ---- item 5: one live run per directory; item 7: another run's results are never replaced --------------------------

def test_a_live_run_directory_is_refused(tmp_path):
    with RunDir(tmp_path / "run"):
        with pytest.raises(RunDirError, match=f"in use by a live run \\(pid {os.getpid()}\\)"):
            RunDir(tmp_path / "run")
    RunDir(tmp_path / "run").release()  # free again once the first run released it


def test_another_runs_results_are_refused_unless_resuming_it(tmp_path):
    run = tmp_path / "run"
    with RunDir(run) as r:
        assert r.fresh
        atomic_write_text(run / "summary.json", '{"status": "ok"}')
    before = hashes(run)
    with pytest.raises(RunDirError, match="already holds another run's results .*summary.json"):
        RunDir(run)
    with RunDir(run, resuming_from=run / "ckpt.pt") as r:
        assert not r.fresh
    assert hashes(run) == before


def test_stale_temp_files_of_a_killed_run_are_removed(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "ckpt.pt.abc123.tmp").write_bytes(b"partial")
    (run / "notes.tmp").write_text("not ours")
    RunDir(run).release()
    assert sorted(p.name for p in run.iterdir()) == [".run.lock", "notes.tmp"]


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    target.write_text('{"status": "ok"}')
    real_fsync = os.fsync

    def failing_fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        atomic_write_text(target, '{"status": "error"}')
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert target.read_text() == '{"status": "ok"}' and os.listdir(tmp_path) == ["summary.json"]


# ---- item 2: the embedded corpus never writes over files it did not make -------------------------------------------

def test_corpus_is_not_built_over_user_files(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "train.bin").write_bytes(b"\x01\x00" * 100)
    (user / "val.bin").write_bytes(b"\x02\x00" * 100)
    before = hashes(user)
    with pytest.raises(DataError, match="holds files but no meta.json"):
        prepare_data({"name": "stdlib_docs", "dir": str(user)})
    with pytest.raises(FileExistsError):
        prepare_stdlib_docs(user)
    assert hashes(user) == before


def test_corpus_is_not_built_at_a_mistyped_deep_path(tmp_path):
    with pytest.raises(DataError, match="does not exist, nor does its parent"):
        prepare_data({"name": "stdlib_docs", "dir": str(tmp_path / "nonexistent" / "data")})
    assert not (tmp_path / "nonexistent").exists()


def test_an_unfinished_build_of_ours_is_finished(tmp_path):
    out = tmp_path / "docs"
    out.mkdir()
    (out / ".building").touch()
    (out / "train.bin").write_bytes(b"\x00")  # killed mid-build
    path, meta = prepare_data({"name": "stdlib_docs", "dir": str(out)})
    assert meta["vocab_size"] == 256 and sorted(p.name for p in out.iterdir()) == ["meta.json", "train.bin",
                                                                                    "val.bin"]


# ---- item 6: bad data files are one clear error ------------------------------------------------------------------

def data_dir(tmp_path, train: bytes, meta="auto"):
    d = tmp_path / "d"
    d.mkdir(exist_ok=True)
    (d / "train.bin").write_bytes(train)
    (d / "val.bin").write_bytes(np.arange(100, dtype=np.uint16).tobytes())
    (d / "meta.json").write_text(json.dumps({"tokenizer": "bytes", "vocab_size": 256}) if meta == "auto" else meta)
    return d


@pytest.mark.parametrize("train,meta,match", [
    (b"", "auto", "has 0 tokens, too few"),
    (b"\x00" * 101, "auto", "odd number"),
    (np.arange(100, dtype=np.uint16).tobytes(), "{not json", "not valid JSON"),
    (np.arange(100, dtype=np.uint16).tobytes(), '{"tokenizer": "bytes"}', "lacks a positive integer vocab_size"),
    (np.full(100, 5000, dtype=np.uint16).tobytes(), "auto", "holds token id 5000 but its meta.json says vocab_size"),
])
def test_bad_data_files_are_clear_errors(tmp_path, train, meta, match):
    d = data_dir(tmp_path, train, meta)
    with pytest.raises(DataError, match=match):
        path, _ = prepare_data({"name": "mine", "dir": str(d)})
        TokenBatches(path, "train", 2, 8, torch.device("cpu"), seed=0).next()
