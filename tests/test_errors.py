"""Bad requests end with a message that says what was wrong and what to do, a non-zero exit, nothing overwritten."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from training.corpus import prepare_stdlib_docs

ROOT = Path(__file__).resolve().parent.parent
FAST = ["model=gpt2-nano", "train.batch_size=2", "train.seq_len=16", "train.max_steps=1", "train.eval_iters=1",
        "train.sample_at_eval=false"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepare_stdlib_docs(tmp_path_factory.mktemp("data") / "stdlib_docs")


def train(cwd, *overrides):
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides], cwd=cwd, capture_output=True,
                            text=True, timeout=180)
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("overrides,message", [
    (["attn=nonexistent"], r"Available options in 'attn':[\s\S]*naive[\s\S]*sdpa"),
    (["attn.name=nonexistent"], "unknown attention backend 'nonexistent'; choose one of: .*naive.*sdpa"),
    (["attn=naive", "+attn.window=3"], r"does not support options \['window'\] \(this backend takes: none\)\. Change "
                                       r"the request or choose another backend: .*sdpa.*\. Choose it with attn=NAME\."),
    (["train.seq_len=512"], r"train.seq_len=512 is longer than the model's context \(block_size=128\)"),
    (["train.dtype=fp16"], "train.dtype=fp16 needs a CUDA GPU"),
    (["data=openwebtext", "data.dir=nowhere/owt"], "data for 'openwebtext' is missing .*scripts/prepare_openwebtext"),
    (["+model.overrides.vocab_size=64"], "vocab_size 256, more than the model's vocab_size 64"),
])
def test_bad_request_is_a_clear_error(tmp_path, data_dir, overrides, message):
    data = [] if any(o.startswith("data=") for o in overrides) else [f"data.dir={data_dir}"]
    code, out = train(tmp_path, *FAST, *data, *overrides)
    assert code != 0
    assert re.search(message, out), out[-3000:]
    assert "Traceback" not in out
    for summary in tmp_path.glob("outputs/*/*/summary.json"):
        assert json.loads(summary.read_text())["status"] == "error"


def test_corrupt_checkpoint_is_a_clear_error_and_left_alone(tmp_path, data_dir):
    old = tmp_path / "old_run"
    old.mkdir()
    (old / "ckpt.pt").write_bytes(b"not a checkpoint")
    code, out = train(tmp_path, *FAST, f"data.dir={data_dir}", "train.init_from=resume", f"train.resume_from={old}")
    assert code != 0 and "is corrupt" in out and "Traceback" not in out, out[-3000:]
    assert (old / "ckpt.pt").read_bytes() == b"not a checkpoint"
    assert sorted(p.name for p in old.iterdir()) == ["ckpt.pt"]


def test_missing_checkpoint_says_what_to_pass(tmp_path, data_dir):
    code, out = train(tmp_path, *FAST, f"data.dir={data_dir}", "train.init_from=resume",
                      f"train.resume_from={tmp_path / 'nope'}")
    assert code != 0 and "no checkpoint at" in out
