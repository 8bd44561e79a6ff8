"""train.py end to end on CPU: the quickstart learns, files follow the run-dir contract, failures are recorded."""

import ast
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from model import GPT
from training import distributed
from training.config import compose
from training.corpus import prepare_stdlib_docs

ROOT = Path(__file__).resolve().parent.parent
FAST = ["model=gpt2-nano", "train.batch_size=4", "train.seq_len=32", "train.eval_iters=2", "train.log_interval=1",
        "train.sample_at_eval=false", "train.untimed_steps=1", "optim.lr_warmup_steps=2", "train.compile=false"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepare_stdlib_docs(tmp_path_factory.mktemp("data") / "stdlib_docs")


def run(tmp_path, data_dir, *overrides, multirun=False, name="run"):
    overrides = [f"data.dir={data_dir}", *overrides]
    summary = train.main(compose(overrides), tmp_path / name, multirun=multirun, overrides=overrides)
    return summary, tmp_path / name


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_quickstart_loss_falls_and_files_follow_the_contract(tmp_path, data_dir):
    summary, run_dir = run(tmp_path, data_dir, "train.max_steps=30", "train.batch_size=8", "train.seq_len=64",
                           "train.eval_interval=15", "train.sample_tokens=16")
    assert summary["status"] == "ok" and summary["steps"] == 30
    train_rows = [r for r in rows(run_dir) if "train/loss" in r]
    assert train_rows[-1]["train/loss"] < train_rows[0]["train/loss"] - 1.0
    assert {"step", "train/loss", "train/lr", "perf/tokens_per_sec", "perf/step_ms", "perf/mfu",
            "perf/peak_mem_gb", "attn/density"} <= set(train_rows[-1])
    assert 0.5 < train_rows[-1]["attn/density"] < 0.52
    assert [r["step"] for r in rows(run_dir) if "val/loss" in r] == [15, 30]
    for key in ("tokens_per_sec", "peak_mem_gb", "final_train_loss", "final_val_loss"):
        assert summary[key] > 0, key
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "ok"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["backend"].startswith("sdpa") and config["n_params"] > 0 and config["device"] == "cpu"
    ckpt = torch.load(run_dir / "ckpt.pt", weights_only=True)
    assert ckpt["step"] == 30 and {"model", "model_config", "optimizer", "rng", "data_state"} <= set(ckpt)


def test_load_model_rebuilds_the_trained_model(tmp_path, data_dir):
    from training.checkpoint import load_model

    run(tmp_path, data_dir, *FAST, "train.max_steps=2")
    model = load_model(tmp_path / "run", attn="naive")
    assert isinstance(model, GPT) and model.config.attn == "naive" and not model.training
    saved = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)["model"]
    assert model.state_dict().keys() == saved.keys()
    assert all(torch.equal(value, saved[name]) for name, value in model.state_dict().items())  # the trained weights


def test_grad_accum_and_naive_backend(tmp_path, data_dir):
    summary, run_dir = run(tmp_path, data_dir, *FAST, "attn=naive", "train.grad_accum=2", "train.max_steps=3")
    assert summary["status"] == "ok" and summary["backend"].startswith("naive")


class FixedBatches:
    def __init__(self, batches):
        self.batches = iter(batches)

    def next(self):
        return next(self.batches)


def gradients_of_one_step(tmp_path, data_dir, batches, grad_accum, name):
    """train.optimizer_step's gradients, read where the optimizer would apply them (clipping off: it would hide a
    scale error)."""
    cfg = compose([f"data.dir={data_dir}", *FAST, f"train.grad_accum={grad_accum}", "optim.grad_clip=0",
                   "model.dropout=0.0"])
    (tmp_path / name).mkdir()
    run_state = train.set_up(cfg, tmp_path / name, torch.device("cpu"), distributed.Dist(), None)
    run_state.train_data = FixedBatches(batches)
    seen = {}
    run_state.optimizer.step = lambda *a, **k: seen.update(
        {n: p.grad.clone() for n, p in run_state.raw_model.named_parameters() if p.grad is not None})
    train.optimizer_step(run_state, 1)
    return seen


def test_grad_accum_gives_the_gradient_of_the_whole_batch(tmp_path, data_dir):
    """Two micro-batches of 2 rows with train.grad_accum=2 give the gradient of one batch of those 4 rows."""
    torch.manual_seed(0)
    x = torch.randint(0, 256, (4, 32))
    y = torch.randint(0, 256, (4, 32))
    accumulated = gradients_of_one_step(tmp_path, data_dir, [(x[:2], y[:2]), (x[2:], y[2:])], 2, "accum")
    whole = gradients_of_one_step(tmp_path, data_dir, [(x, y)], 1, "whole")
    assert accumulated.keys() == whole.keys() and len(whole) > 0
    for name, grad in whole.items():
        torch.testing.assert_close(accumulated[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_hf_baseline_trains_a_couple_of_steps(tmp_path, data_dir):
    summary, run_dir = run(tmp_path, data_dir, *FAST, "model.impl=hf", "train.max_steps=2")
    assert summary["status"] == "ok" and "hf-eager" in summary["backend"]
    ckpt = torch.load(run_dir / "ckpt.pt", weights_only=True)
    assert ckpt["impl"] == "hf" and "lm_head.weight" in ckpt["model"]
    assert GPT.from_checkpoint(ckpt).state_dict().keys() == ckpt["model"].keys()  # GPT's layout


def test_oom_is_recorded_and_a_sweep_goes_on(tmp_path, data_dir, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    monkeypatch.setattr(GPT, "forward", oom)
    summary, run_dir = run(tmp_path, data_dir, *FAST, "train.max_steps=2", multirun=True)
    assert summary["status"] == "oom" and "out of memory" in summary["error"]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "oom"
    assert rows(run_dir)[-1]["status"] == "oom"


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, data_dir, monkeypatch):
    forward, calls = GPT.forward, []

    def poisoned(self, idx, targets=None, return_logits=False):
        logits, loss = forward(self, idx, targets, return_logits)
        calls.append(1)
        return logits, loss * float("nan") if len(calls) == 5 else loss

    monkeypatch.setattr(GPT, "forward", poisoned)
    summary, run_dir = run(tmp_path, data_dir, *FAST, "train.max_steps=10", "train.ckpt_interval=2",
                           "train.eval_interval=0")
    assert summary["status"] == "nan" and "step 5" in summary["error"]
    assert torch.load(run_dir / "ckpt.pt", weights_only=True)["step"] == 4


def test_wandb_offline_logs_one_run(tmp_path, data_dir, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    summary, run_dir = run(tmp_path, data_dir, *FAST, "logger=wandb", "train.max_steps=2")
    assert summary["status"] == "ok"
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1


def test_multirun_sweep_gives_one_run_dir_per_job(tmp_path, data_dir):
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "attn=naive,sdpa", *FAST, "train.max_steps=2",
           f"data.dir={data_dir}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    summaries = sorted((tmp_path / "sweep").glob("*/summary.json"))
    assert [json.loads(s.read_text())["backend"].split()[0] for s in summaries] == ["naive", "sdpa"]


def test_init_from_a_local_pretrained_directory(tmp_path, data_dir):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(vocab_size=256, n_positions=64, n_embd=32, n_layer=1, n_head=2)).save_pretrained(
        tmp_path / "hf")
    summary, run_dir = run(tmp_path, data_dir, *FAST, f"train.init_from={tmp_path / 'hf'}", "train.max_steps=2")
    assert summary["status"] == "ok"
    assert json.loads((run_dir / "config.json").read_text())["model_config"]["n_embd"] == 32


def test_log_lines_show_elapsed_time_and_eta_and_the_sample_as_text(tmp_path, data_dir, caplog):
    caplog.set_level("INFO", logger="train")
    run(tmp_path, data_dir, *FAST, "train.max_steps=4", "train.log_interval=2", "train.sample_at_eval=true",
        "train.sample_tokens=60")
    steps = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert len(steps) == 2 and all(re.search(r"\| \d+s elapsed, eta \d+s$", m) for m in steps), steps
    sample = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("sample:"))
    assert sample.startswith("sample:\n") and "\\n" not in sample and "'" not in sample[:9]


def test_a_sweep_is_one_wandb_group(tmp_path, data_dir):
    groups = set()
    for job, attn in enumerate(["naive", "sdpa"]):
        summary, run_dir = run(tmp_path, data_dir, *FAST, f"attn={attn}", "train.max_steps=1", multirun=True,
                               name=f"sweep/{job}")
        assert summary["status"] == "ok"
        groups.add(json.loads((run_dir / "config.json").read_text())["logger"]["group"])
    assert groups == {f"sweep-{tmp_path / 'sweep'}"}


def test_compile_mode_is_passed_to_torch_compile(tmp_path, data_dir, monkeypatch):
    calls = []

    def fake_compile(model, **kwargs):
        calls.append(kwargs)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    run(tmp_path, data_dir, *FAST, "train.max_steps=1", "train.compile=auto", name="auto")  # auto: on CUDA only
    assert calls == ([{"mode": None}] if torch.cuda.is_available() else [])
    calls.clear()
    summary, run_dir = run(tmp_path, data_dir, *FAST, "train.max_steps=2", "train.compile=true",
                           "train.compile_mode=reduce-overhead")
    assert summary["status"] == "ok" and calls == [{"mode": "reduce-overhead"}]
    assert json.loads((run_dir / "config.json").read_text())["compiled"] is True


def test_gpt2_tokenized_data_trains_the_quickstart_model_with_a_vocab_that_fits(tmp_path, caplog):
    """`python train.py data=text`: the data carries its tokenizer; the model's vocab grows to fit it."""
    data = tmp_path / "text"
    data.mkdir()
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        rng.integers(0, 50257, 4000, dtype=np.uint16).tofile(data / f"{split}.bin")
    (data / "meta.json").write_text(json.dumps({"tokenizer": "gpt2", "vocab_size": 50257, "train_tokens": 4000,
                                                "val_tokens": 4000}))
    caplog.set_level("INFO", logger="train")
    overrides = ["data=text", f"data.dir={data}", "train.max_steps=2", "train.batch_size=2", "train.seq_len=32",
                 "train.eval_iters=1", "train.sample_at_eval=false"]
    summary = train.main(compose(overrides), tmp_path / "run", overrides=overrides)
    assert summary["status"] == "ok", summary["error"]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["preset"] == "gpt2-tiny" and config["model_config"]["vocab_size"] == 50304
    assert any("vocab_size 256 -> 50304 to fit the data's gpt2 tokenizer" in r.getMessage() for r in caplog.records)


def test_ctrl_c_checkpoints_and_stops_without_a_traceback(tmp_path, data_dir):
    cmd = [sys.executable, str(ROOT / "train.py"), *FAST, "train.max_steps=100000", "train.eval_interval=0",
           "train.ckpt_interval=0", f"data.dir={data_dir}", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = []
    for line in proc.stdout:  # wait until it trains
        out.append(line)
        if "step 3/" in line:
            proc.send_signal(signal.SIGINT)
            break
    out += proc.stdout.readlines()
    out = "".join(out)
    assert proc.wait(timeout=120) == 130, out[-3000:]
    assert "Traceback" not in out and "resume with: python train.py train.init_from=resume" in out, out[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    ckpt = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
    assert summary["status"] == "interrupted" and ckpt["step"] == summary["steps"] >= 3


def test_model_imports_nothing_from_training():
    for path in (ROOT / "model").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == "training" for n in names), f"{path} imports {names}"
