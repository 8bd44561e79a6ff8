"""Fine-tuning: train.py with train.init_from=<save_pretrained dir> starts from those weights and lowers the loss."""

import json

import numpy as np
import pytest
import torch
from script_loader import load_script
from transformers import GPT2Config, GPT2LMHeadModel

import train
from model import GPT
from training import prepare as prep
from training.checkpoint import load_model
from training.config import compose

eval_script = load_script("eval")

MARK = 0.75  # a value no fresh init has: proves the run started from the saved weights


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory):
    """A byte-level GPT-2 in transformers' format, small enough for CPU (fits the gpt2-nano preset's context)."""
    path = tmp_path_factory.mktemp("tiny-gpt2")
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=256, n_positions=128, n_embd=64, n_layer=2, n_head=2))
    with torch.no_grad():
        hf.transformer.ln_f.bias.fill_(MARK)
    hf.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A small repetitive corpus prepared by the real pipeline (local file through datasets, byte tokens)."""
    tmp = tmp_path_factory.mktemp("ft-data")
    lines = [f"{name} attention reads the sequence in blocks of {n} tokens." for n in (64, 128, 256)
             for name in ("flash", "naive", "sparse")]
    (tmp / "corpus.txt").write_text("\n\n".join(lines * 20))
    source = prep.Source(data_files=str(tmp / "corpus.txt"), kwargs={"sample_by": "paragraph",
                                                                     "cache_dir": str(tmp / "hf_cache")})
    prep.prepare(prep.Settings(source=source, tokenizer="bytes", val_fraction=0.1, num_proc=1), tmp / "data")
    return tmp / "data"


def test_fine_tuning_from_a_saved_gpt2_lowers_the_loss(tmp_path, pretrained_dir, data_dir):
    start = GPT.from_pretrained(str(pretrained_dir), attn="naive").eval()
    tokens = np.fromfile(data_dir / "val.bin", dtype=np.uint16)
    before = eval_script.evaluate(start, tokens, 64, 8, "cpu", torch.float32)["loss"]

    cfg = compose(["data=text", f"data.dir={data_dir}", "data.tokenizer=bytes", "model=gpt2-nano", "attn=naive",
                   f"train.init_from={pretrained_dir}", "train.max_steps=40", "train.batch_size=8",
                   "train.seq_len=64", "train.eval_interval=0", "train.eval_iters=4", "train.log_interval=5",
                   "train.sample_at_eval=false", "train.untimed_steps=1", "optim.lr=3e-3", "optim.lr_warmup_steps=4",
                   "optim.min_lr=3e-4"])
    summary = train.main(cfg, tmp_path / "run")
    assert summary["status"] == "ok", summary["error"]

    tuned = load_model(tmp_path / "run", attn="naive")
    assert tuned.config.n_embd == 64 and tuned.config.block_size == 128  # the saved model's shape, not the preset's
    assert torch.allclose(tuned.transformer.ln_f.bias, torch.full((64,), MARK), atol=0.2)
    after = eval_script.evaluate(tuned, tokens, 64, 8, "cpu", torch.float32)["loss"]
    assert after < before - 1.0, (before, after)
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert losses[-1] < losses[0]


def test_finetune_experiment_composes():
    cfg = compose(["experiment=finetune_owt", "attn=flash"])
    assert cfg.train.init_from == "gpt2" and cfg.data.name == "openwebtext" and cfg.model.preset == "gpt2"
    assert 1e-5 <= cfg.optim.lr <= 6e-5 and cfg.optim.lr_warmup_steps <= 200 and cfg.train.eval_interval > 0
    assert cfg.attn.name == "flash" and cfg.data.source.revision == "refs/convert/parquet"


def test_bad_init_from_and_vocab_mismatch_are_clear_errors(tmp_path, pretrained_dir):
    data = tmp_path / "gpt2-data"
    data.mkdir()
    np.arange(5000, dtype=np.uint16).tofile(data / "train.bin")
    np.arange(5000, dtype=np.uint16).tofile(data / "val.bin")
    (data / "meta.json").write_text(json.dumps({"tokenizer": "gpt2", "vocab_size": 50257, "train_tokens": 5000,
                                                "val_tokens": 5000}))
    base = ["data=text", f"data.dir={data}", "model=gpt2-nano", "train.max_steps=1", "train.seq_len=32"]
    summary = train.main(compose([*base, f"train.init_from={pretrained_dir}"]), tmp_path / "a")
    assert summary["status"] == "error" and "vocab_size" in summary["error"] and "256" in summary["error"]
    summary = train.main(compose([*base, "train.init_from=gpt-5"]), tmp_path / "b")
    assert summary["status"] == "error" and "neither a local directory nor a GPT-2 hub name" in summary["error"]
