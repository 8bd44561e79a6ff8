"""Nothing lost, nothing overwritten, nothing hangs (issue 15), through the real command lines on CPU.

Every bad input exits non-zero with one line saying what was wrong and what to do, no traceback, and leaves every
file that existed before byte-identical (hashed before and after: the data, the checkpoints, the results of other
runs; Hydra's own .hydra/ and log files are Hydra's). A kill -9 never leaves a corrupt checkpoint and the resumed
run equals the uninterrupted one; a malicious pickle runs nothing in any entry point.
"""

import hashlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from training.checkpoint import load_checkpoint, save_checkpoint
from training.config import compose
from training.corpus import prepare_stdlib_docs

ROOT = Path(__file__).resolve().parent.parent
FAST = ["model=gpt2-nano", "train.batch_size=2", "train.seq_len=16", "train.max_steps=2", "train.eval_iters=1",
        "train.eval_interval=0", "train.log_interval=1", "train.sample_at_eval=false"]


def cli(cwd, *args, script="train.py", preexec_fn=None, timeout=180):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=timeout, preexec_fn=preexec_fn)
    return result.returncode, result.stdout + result.stderr


def snapshot(*roots) -> dict:
    """sha256 of every file under the roots (Hydra's .hydra/ and *.log excepted: Hydra writes them at launch; and
    .run.lock, which names the pid of the run holding the directory)."""
    files = [p for r in roots for p in ([Path(r)] if Path(r).is_file() else Path(r).rglob("*"))
             if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log" and p.name != ".run.lock"]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def assert_one_line_error(code, out, pattern):
    assert code != 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert re.search(pattern, out), out[-3000:]  # '.' does not cross lines: the message is one line


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepare_stdlib_docs(tmp_path_factory.mktemp("data") / "stdlib_docs")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data):
    """A finished run (ckpt.pt at step 2, summary ok) to resume from, sample from and point other runs at."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    summary = train.main(compose([f"data.dir={data}", *FAST, "train.ckpt_interval=1"]), run_dir)
    assert summary["status"] == "ok", summary
    return run_dir


def edited_checkpoint(finished, tmp_path, **changes) -> Path:
    """A copy of the finished run's checkpoint with some entries changed (re-saved with a valid checksum)."""
    ckpt = load_checkpoint(finished)
    for key, value in changes.items():
        if value is None:
            ckpt.pop(key)
        else:
            ckpt[key] = value(ckpt[key]) if callable(value) else value
    out = tmp_path / "edited"
    out.mkdir()
    save_checkpoint(ckpt, out / "ckpt.pt")
    return out


# ---- item 6: config values that ended in tracebacks or were silently accepted -------------------------------------

@pytest.mark.parametrize("overrides,message", [
    (["optim.lr=nan"], r"optim.lr=nan \(must be a finite number >= 0\)"),
    (["optim.lr=-1"], r"optim.lr=-1.0 \(must be a finite number >= 0\)"),
    (["optim.betas=[0.9]"], r"optim.betas=\[0.9\] \(two numbers in \[0, 1\)"),
    (["+model.overrides.n_head=3"], "n_embd=64 not divisible by n_head=3; choose an n_head that divides n_embd"),
    (["model.attn_dropout=1.5"], r"model.attn_dropout=1.5 \(must be in \[0, 1\)"),
    (["+model.overrides.n_embd=0"], "n_embd=0: model sizes must be positive integers"),
    (["+model.overrides.n_layer=1000000000"], "about .* parameters .* more than the .* GiB of memory here"),
    (["attn=block_sparse", "attn.pattern=lokal"], "unknown sparsity pattern 'lokal'; choose from dense, local"),
    (["attn=block_sparse", "attn.pattern=local+"], r"attn.pattern=local\+: unknown sparsity pattern ''"),
    (["attn=block_sparse", "attn.block_size=17"], "attn.block_size=17 .must be a power of two >= 16"),
    (["attn=block_sparse", "attn.window=-5"], r"attn.window=-5 \(must be an integer >= 1\)"),
])
def test_bad_config_values_are_one_line(tmp_path, data, overrides, message):
    before = snapshot(data)
    code, out = cli(tmp_path, *FAST, f"data.dir={data}", *overrides)
    assert_one_line_error(code, out, message)
    assert snapshot(data) == before


# ---- item 2: the embedded corpus never writes over a user's files, nor at a mistyped path --------------------------

def test_data_dir_with_foreign_files_is_left_alone(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    np.arange(1000, dtype=np.uint16).tofile(mine / "train.bin")
    np.arange(1000, dtype=np.uint16).tofile(mine / "val.bin")
    before = snapshot(mine)
    code, out = cli(tmp_path, *FAST, f"data.dir={mine}")
    assert_one_line_error(code, out, "holds files but no meta.json.* not written over files it did not make")
    assert snapshot(mine) == before and sorted(p.name for p in mine.iterdir()) == ["train.bin", "val.bin"]


def test_mistyped_data_dir_is_not_created(tmp_path):
    code, out = cli(tmp_path, *FAST, f"data.dir={tmp_path / 'nonexistent' / 'data'}")
    assert_one_line_error(code, out, "does not exist, nor does its parent")
    assert not (tmp_path / "nonexistent").exists()


# ---- item 6: broken data files -------------------------------------------------------------------------------------

def broken_data(tmp_path, data, train_bin=None, val_bin=None, meta=None) -> Path:
    d = tmp_path / "broken"
    d.mkdir()
    for name, content in (("train.bin", train_bin), ("val.bin", val_bin), ("meta.json", meta)):
        (d / name).write_bytes(content if content is not None else (data / name).read_bytes())
    return d


TOKENS_5000 = np.full(5000, 5000, dtype=np.uint16).tobytes()


@pytest.mark.parametrize("files,message", [
    ({"train_bin": b""}, "train.bin' has 0 tokens, too few for train.seq_len=16"),
    ({"train_bin": b"\x00" * 10001}, "train.bin' has 10001 bytes, an odd number"),
    ({"meta": b"{vocab"}, "meta.json' is not valid JSON"),
    ({"meta": b'{"tokenizer": "bytes"}'}, "meta.json' lacks a positive integer vocab_size"),
    ({"train_bin": TOKENS_5000}, "train.bin' holds token id 5000 but its meta.json says vocab_size 256"),
    ({"val_bin": TOKENS_5000}, "val.bin' holds token id 5000 but its meta.json says vocab_size 256"),
])
def test_broken_data_files_are_one_line(tmp_path, data, files, message):
    d = broken_data(tmp_path, data, **files)
    before = snapshot(d)
    code, out = cli(tmp_path, *FAST, f"data.dir={d}")
    assert_one_line_error(code, out, message)
    assert snapshot(d) == before


def test_a_val_split_too_short_fails_before_training(tmp_path, data):
    """The val split is read at the last step: one too short for train.seq_len is refused before the first step
    (it had failed after training, e.g. `prepare_data.py data=text` of a small file, 0.5% held out)."""
    d = broken_data(tmp_path, data, val_bin=np.zeros(10, dtype=np.uint16).tobytes())
    code, out = cli(tmp_path, *FAST, f"data.dir={d}")
    assert_one_line_error(code, out, r"val.bin' has 10 tokens, too few for train.seq_len=16; .*data.val_fraction")
    assert "step 1/" not in out


# ---- items 3 and 6: checkpoints that are corrupt, inconsistent or not resumable ------------------------------------

def flip_64_bytes(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    at = len(raw) // 2
    raw[at:at + 64] = bytes(b ^ 0x5A for b in raw[at:at + 64])
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("case,message", [
    ("flipped", "is corrupt"),
    ("config_mismatch", "does not match its own model_config"),
    ("unknown_field", r"unknown fields \['rotary'\]"),
    ("no_optimizer", r"lacks \['optimizer'\], so training cannot resume"),
    ("max_steps_done", "train.max_steps=2 .*already at step 2.*set train.max_steps"),
])
def test_bad_checkpoints_are_one_line_and_left_alone(tmp_path, data, finished, case, message):
    if case == "flipped":
        source = tmp_path / "flipped"
        source.mkdir()
        (source / "ckpt.pt").write_bytes((finished / "ckpt.pt").read_bytes())
        flip_64_bytes(source / "ckpt.pt")
    elif case == "config_mismatch":
        source = edited_checkpoint(finished, tmp_path, model_config=lambda c: {**c, "n_layer": 3})
    elif case == "unknown_field":
        source = edited_checkpoint(finished, tmp_path, model_config=lambda c: {**c, "rotary": True})
    elif case == "no_optimizer":
        source = edited_checkpoint(finished, tmp_path, optimizer=None)
    else:
        source = finished
    before = snapshot(source, finished)
    code, out = cli(tmp_path, *FAST, f"data.dir={data}", "train.init_from=resume", f"train.resume_from={source}")
    assert_one_line_error(code, out, message)
    assert snapshot(source, finished) == before
    if case in ("config_mismatch", "flipped"):  # the same checkpoint through sample.py
        code, out = cli(tmp_path, source, "--max-new-tokens", "2", script="scripts/sample.py")
        assert_one_line_error(code, out, message)


def test_seq_len_beyond_a_fixed_context_says_what_can_change(tmp_path, data, finished):
    """A checkpoint's (or pretrained weights') shape wins over model.block_size: the hint must not suggest it."""
    older = edited_checkpoint(finished, tmp_path, config=None)  # no stored config: the command line's is used
    code, out = cli(tmp_path, *FAST, f"data.dir={data}", "train.init_from=resume", f"train.resume_from={older}",
                    "train.max_steps=3", "train.seq_len=300")
    assert_one_line_error(code, out, r"train.seq_len=300 .*context of 128 fixed by the checkpoint.*seq_len<=128")
    assert "model.block_size=300" not in out
    from transformers import GPT2Config, GPT2LMHeadModel
    hf = tmp_path / "hf"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=32, vocab_size=256)).save_pretrained(hf)
    code, out = cli(tmp_path, *FAST, f"data.dir={data}", f"train.init_from={hf}", "train.seq_len=64")
    assert_one_line_error(code, out, r"train.seq_len=64 .*context of 32 fixed by the pretrained weights")
    assert "model.block_size=64" not in out


# ---- the malicious-pickle guarantee, in every entry point ---------------------------------------------------------

class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("entry", ["resume", "sample", "eval", "export"])
def test_a_malicious_checkpoint_runs_nothing(tmp_path, data, entry):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil"
    evil.mkdir()
    torch.save({"model": Payload(marker), "model_config": {}, "step": 1}, evil / "ckpt.pt")
    if entry == "resume":
        code, out = cli(tmp_path, *FAST, f"data.dir={data}", "train.init_from=resume", f"train.resume_from={evil}")
    elif entry == "sample":
        code, out = cli(tmp_path, evil, script="scripts/sample.py")
    elif entry == "eval":
        code, out = cli(tmp_path, evil, "--data", data, script="scripts/eval.py")
    else:
        code, out = cli(tmp_path, evil, tmp_path / "exported", script="scripts/export_hf.py")
    assert_one_line_error(code, out, "is corrupt or not a torch checkpoint")
    assert not marker.exists()


# ---- item 4: a crafted Hugging Face config.json fails at once -----------------------------------------------------

@pytest.mark.parametrize("n_layer,message", [(10**9, "more than the .* of memory"), (-1, "n_layer=-1")])
def test_crafted_hf_config_fails_fast(tmp_path, data, n_layer, message):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": n_layer, "n_head": 12,
                                                "n_embd": 768, "n_positions": 1024, "vocab_size": 50257}))
    start = time.perf_counter()
    code, out = cli(tmp_path, *FAST, f"data.dir={data}", f"train.init_from={hf}", timeout=60)
    assert_one_line_error(code, out, message)
    assert time.perf_counter() - start < 60  # the process, imports included; the check itself is microseconds


# ---- items 5 and 7: one live run per directory, another run's results never replaced ------------------------------

def test_a_failing_run_pointed_at_a_finished_run_changes_nothing(tmp_path, data, finished):
    before = snapshot(finished)
    for bad in (["optim.lr=-1"], [], ["train.init_from=resume", f"train.resume_from={finished}"]):
        code, out = cli(tmp_path, *FAST, f"data.dir={data}", *bad, f"hydra.run.dir={finished}")
        assert_one_line_error(code, out, "already holds another run's results .*choose a new directory" if not bad[1:]
                              else "train.max_steps=2 but the checkpoint is already at step 2")
    assert snapshot(finished) == before


def test_two_runs_in_one_directory(tmp_path, data):
    """A second run started in the directory of a live run is refused, and the live run goes on undisturbed.

    The first run is long (its steps take ~2 ms; the second needs seconds just to start), so the second is started
    once the first has logged a step and is refused while the first still trains; then the first is stopped with
    Ctrl-C (SIGINT), which ends it as 'interrupted' after a checkpoint."""
    run_dir = tmp_path / "run"
    args = [*FAST, f"data.dir={data}", f"hydra.run.dir={run_dir}", "train.max_steps=10000000",
            "train.ckpt_interval=1000"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while not (run_dir / "metrics.jsonl").exists() or "train/loss" not in (run_dir / "metrics.jsonl").read_text():
            assert first.poll() is None and time.time() < deadline, "the first run never logged a step"
            time.sleep(0.2)
        code, out = cli(tmp_path, *args)
        assert first.poll() is None, "the first run ended before the second was refused"
    finally:
        first.send_signal(signal.SIGINT)
        first_out = first.communicate(timeout=120)[0]
    assert_one_line_error(code, out, "is in use by a live run .pid \\d+.; wait for it")
    assert first.returncode == 130, first_out[-3000:]
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if "train/loss" in line]
    assert steps == list(range(1, len(steps) + 1))  # no duplicate, lost or out-of-order rows
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"


def test_an_unwritable_run_directory_is_one_line(tmp_path, data):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    code, out = cli(tmp_path, *FAST, f"data.dir={data}", f"hydra.run.dir={a_file}/run")
    assert_one_line_error(code, out, "cannot write to the run directory .*is a file.*choose a writable one")
    assert a_file.read_text() == "x"


# ---- item 6/7: a full disk: one line, the summary intact, no temp file left ----------------------------------------

def test_disk_full_during_a_checkpoint(tmp_path, data):
    run_dir = tmp_path / "run"

    def small_disk():  # files may not grow past 200 kB: the gpt2-nano checkpoint (~1.4 MB) cannot be written
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    code, out = cli(tmp_path, *FAST, f"data.dir={data}", f"hydra.run.dir={run_dir}", "train.ckpt_interval=1",
                    preexec_fn=small_disk)
    assert_one_line_error(code, out, "could not write the checkpoint .*the previous checkpoint .if any. is kept")
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "error"
    assert not list(run_dir.glob("*.tmp")) and not (run_dir / "ckpt.pt").exists()


# ---- scripts: export and sample error paths ----------------------------------------------------------------------

def test_export_onto_a_file_and_sample_from_a_missing_prompt_file(tmp_path, finished):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    code, out = cli(tmp_path, finished, a_file, script="scripts/export_hf.py")
    assert_one_line_error(code, out, "is a file, not a directory")
    assert a_file.read_text() == "x"
    code, out = cli(tmp_path, finished, a_file / "sub", script="scripts/export_hf.py")
    assert_one_line_error(code, out, "cannot write to .*not a directory")
    code, out = cli(tmp_path, finished, "--prompt", f"FILE:{tmp_path / 'missing.txt'}", script="scripts/sample.py")
    assert_one_line_error(code, out, "cannot read the prompt file .*No such file or directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_destinations(tmp_path, data, finished):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, out = cli(tmp_path, finished, ro / "export", script="scripts/export_hf.py")
        assert_one_line_error(code, out, "cannot write to")
        code, out = cli(tmp_path, *FAST, f"data.dir={data}", f"hydra.run.dir={ro}/run")
        assert_one_line_error(code, out, "cannot write to the run directory")
    finally:
        ro.chmod(0o755)


# ---- item 1: a non-finite update never replaces the last good checkpoint -------------------------------------------

def test_a_poisoned_update_does_not_replace_the_good_checkpoint(tmp_path, data, monkeypatch):
    real_step, calls = torch.optim.AdamW.step, []

    def poisoning_step(self, *a, **k):  # the loss before step 3 is finite; the update makes every weight inf
        out = real_step(self, *a, **k)
        calls.append(1)
        if len(calls) == 3:
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        p.fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoning_step)
    run_dir = tmp_path / "run"
    summary = train.main(compose([f"data.dir={data}", *FAST, "train.max_steps=5", "train.ckpt_interval=1",
                                  "train.dtype=fp32"]), run_dir)
    assert summary["status"] == "nan", summary
    assert "previous checkpoint" in summary["error"] and "train.dtype=bf16/fp32" not in summary["error"]
    ckpt = load_checkpoint(run_dir)
    assert ckpt["step"] == 2 and all(v.isfinite().all() for v in ckpt["model"].values())


# ---- the kill -9 guarantee ----------------------------------------------------------------------------------------

def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def test_kill_9_never_corrupts_the_checkpoint_and_resume_equals_the_uninterrupted_run(tmp_path, data):
    args = [*FAST, f"data.dir={data}", "train.max_steps=60", "train.ckpt_interval=1", "model.dropout=0.1"]
    code, out = cli(tmp_path, *args, f"hydra.run.dir={tmp_path / 'full'}")
    assert code == 0, out[-3000:]
    full = losses(tmp_path / "full")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run_dir = tmp_path / "killed"
    rng = np.random.default_rng(0)
    for trial in range(3):  # each trial kills the (resumed) run at a random moment after a checkpoint exists
        resume = ["train.init_from=resume", f"train.resume_from={run_dir}"] if trial else []
        proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args, *resume, f"hydra.run.dir={run_dir}"],
                                cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        start_step = load_checkpoint(run_dir)["step"] if trial else 0
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if (run_dir / "ckpt.pt").is_file() and load_checkpoint(run_dir)["step"] > start_step:
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpt = load_checkpoint(run_dir)  # never corrupt: the checksum verifies
        assert ckpt["step"] >= 1
    code, out = cli(tmp_path, *args, "train.init_from=resume", f"train.resume_from={run_dir}",
                    f"hydra.run.dir={run_dir}")
    assert code == 0, out[-3000:]
    assert losses(run_dir) == full  # bit for bit, steps 1-60
    assert not list(run_dir.glob("*.tmp"))
