"""scripts/bench_train_step.py at a tiny size on CPU: both loops run, the files are written and stamped."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from training.corpus import prepare_stdlib_docs

ROOT = Path(__file__).resolve().parent.parent


def test_bench_times_both_loops_and_writes_stamped_results(tmp_path):
    data = prepare_stdlib_docs(tmp_path / "data")
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_train_step.py"), "--device", "cpu", "--model", "gpt2-nano",
           "--cases", "32x2", "--attn", "sdpa", "naive", "--modes", "eager", "--warmup", "1", "--steps", "2",
           "--attn-dropout", "0.1", "--data-dir", str(data), "--out", str(tmp_path / "out")]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads((tmp_path / "out" / "train_step_bench.json").read_text())
    assert [(r["seq"], r["batch"], r["attn"], r["mode"]) for r in out["rows"]] == [(32, 2, "sdpa", "eager"),
                                                                                   (32, 2, "naive", "eager")]
    for r in out["rows"]:
        assert r["bare_tokens_per_sec"] > 0 and r["train_py_tokens_per_sec"] > 0
        assert 4 < r["bare_loss"] < 7 and 4 < r["train_py_loss"] < 7  # ~ln(256) at the start: real steps ran
    assert out["environment"]["torch"] and out["environment"]["date_utc"] and out["attn_dropout"] == 0.1
    md = (tmp_path / "out" / "train_step_bench.md").read_text()
    assert "| 32 x 2 | sdpa | eager |" in md and "commit" in md and "attention dropout 0.1" in md
    naive, sdpa = (r["train_py_tokens_per_sec"] for r in out["rows"][::-1])
    assert f"| 32 x 2 | naive | eager | {naive / sdpa:.3f}× |" in md  # against sdpa, the user's alternative
    assert (tmp_path / "out" / "train_step_bench.png").stat().st_size > 1000


def test_bare_loop_drops_attention_as_train_py_does(monkeypatch):
    """The bare loop's attention gets the resolved model's attn_dropout, so both loops do the same work."""
    import torch

    from model import GPTConfig
    from reporting import train_step_bench

    seen = []
    backend = train_step_bench.get_backend("sdpa")
    monkeypatch.setattr(train_step_bench, "get_backend", lambda name: type("B", (), {
        "attend_packed": staticmethod(
            lambda qkv, **kw: seen.append(kw["dropout_p"]) or backend.attend_packed(qkv, **kw))}))
    config = GPTConfig.preset("gpt2-nano", attn="sdpa", attn_dropout=0.1)
    train_step_bench.bare_case(config, 16, 2, torch.device("cpu"), torch.float32, "eager", warmup=0, steps=1)
    assert seen and set(seen) == {0.1}


def test_bad_case_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_train_step.py"), "--cases", "1024",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "is not SEQxBATCH" in result.stderr and "Traceback" not in result.stderr


def test_bad_dropout_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_train_step.py"), "--attn-dropout", "1.5",
                             "--device", "cpu", "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "[0, 1)" in result.stderr and "Traceback" not in result.stderr


def test_each_mode_sets_train_py_and_the_bare_loop_alike(monkeypatch):
    """graphs = CUDA graphs in both loops: train.py's compile_mode=reduce-overhead and the bare loop's
    torch.compile(mode="reduce-overhead"); compiled = the default mode in both; eager = no compile."""
    import torch

    from model import GPTConfig
    from reporting import train_step_bench
    from training.config import compose, validate

    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: calls.append(kw) or model)
    config = GPTConfig.preset("gpt2-nano", attn="sdpa")
    for mode, overrides, compile_kwargs in (
            ("eager", ["train.compile=false"], []),
            ("compiled", ["train.compile=true", "train.compile_mode=default"], [{"mode": None}]),
            ("graphs", ["train.compile=true", "train.compile_mode=reduce-overhead"], [{"mode": "reduce-overhead"}])):
        assert train_step_bench.mode_overrides(mode) == overrides
        validate(compose(["model=gpt2-nano", *overrides]))
        calls.clear()
        seconds, loss = train_step_bench.bare_case(config, 16, 2, torch.device("cpu"), torch.float32, mode,
                                                   warmup=0, steps=1)
        assert calls == compile_kwargs and seconds > 0 and 4 < loss < 12


def test_rounds_reverse_the_backends_order_and_tables_give_medians(tmp_path):
    from reporting import train_step_bench as tsb

    assert [tsb.round_order(["sdpa", "flash"], r) for r in range(3)] == [["sdpa", "flash"], ["flash", "sdpa"],
                                                                         ["sdpa", "flash"]]
    none = dict(bare_tokens_per_sec=None, bare_peak_gb=None, bare_loss=None, ratio=None, extra_memory_gb=None)
    rows = [dict(seq=64, batch=2, attn=attn, mode="eager", train_py_tokens_per_sec=tps, train_py_peak_gb=1.0,
                 train_py_loss=5.0, round=r, **none)
            for r, attn, tps in [(0, "sdpa", 100.0), (0, "flash", 90.0), (1, "flash", 130.0), (1, "sdpa", 95.0),
                                 (2, "sdpa", 105.0), (2, "flash", 120.0)]]
    summary = tsb.medians(rows)
    assert [(r["attn"], r["train_py_tokens_per_sec"], r["rounds"]) for r in summary] == [("sdpa", 100.0, 3),
                                                                                        ("flash", 120.0, 3)]
    result = {"environment": {"gpu": None, "torch": "x", "cuda": None, "triton": "y", "git_commit": "abc",
                              "git_dirty": False, "date_utc": "today"}, "model": "gpt2-nano", "dtype": "fp32",
              "attn_dropout": 0.0, "warmup": 1, "steps": 2, "rounds": 3, "memory": "rss", "rows": rows}
    tsb.write(result, tmp_path)
    md = (tmp_path / "train_step_bench.md").read_text()
    assert "| 64 x 2 | flash | eager | — | 120 | — |" in md and "did not run (--no-bare)" in md  # medians
    assert "| 64 x 2 | flash | eager | 1.200× |" in md and "| 1 | 64 x 2 | flash | eager | 130 |" in md
    assert (tmp_path / "train_step_bench.png").stat().st_size > 1000


def test_bench_without_the_bare_loop_in_rounds(tmp_path):
    data = prepare_stdlib_docs(tmp_path / "data")
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_train_step.py"), "--device", "cpu", "--model", "gpt2-nano",
           "--cases", "32x2", "--attn", "sdpa", "naive", "--modes", "eager", "--warmup", "1", "--steps", "1",
           "--rounds", "2", "--no-bare", "--data-dir", str(data), "--out", str(tmp_path / "out")]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads((tmp_path / "out" / "train_step_bench.json").read_text())
    assert [(r["attn"], r["round"]) for r in out["rows"]] == [("sdpa", 0), ("naive", 0), ("naive", 1), ("sdpa", 1)]
    assert all(r["bare_tokens_per_sec"] is None and r["train_py_tokens_per_sec"] > 0 for r in out["rows"])
    md = (tmp_path / "out" / "train_step_bench.md").read_text()
    assert "`python scripts/bench_train_step.py --device cpu" in md and "--rounds 2 --no-bare" in md  # rerunnable


def test_a_run_cut_short_keeps_the_rows_it_measured(tmp_path, monkeypatch):
    """The files are rewritten after every row: a GPU call cut by its time limit mid-run still returns the rows
    measured before (compiled GPT-2 steps take minutes each)."""
    from reporting import train_step_bench as tsb

    none = dict(bare_tokens_per_sec=None, bare_peak_gb=None, bare_loss=None, ratio=None, extra_memory_gb=None)

    def measure(seq, batch, attn, mode, *rest):
        if attn == "flash":
            raise KeyboardInterrupt  # as `timeout -s INT` stops a run
        return dict(seq=seq, batch=batch, attn=attn, mode=mode, train_py_tokens_per_sec=100.0, train_py_peak_gb=1.0,
                    train_py_loss=5.0, **none)

    monkeypatch.setattr(tsb, "measure", measure)
    with pytest.raises(KeyboardInterrupt):
        tsb.bench([(64, 2)], ["sdpa", "flash"], ["eager"], "gpt2-nano", "cpu", 1, 1, data_dir=str(tmp_path),
                  bare=False, on_row=lambda result: tsb.write(result, tmp_path / "out"))
    out = json.loads((tmp_path / "out" / "train_step_bench.json").read_text())
    assert [(r["attn"], r["train_py_tokens_per_sec"]) for r in out["rows"]] == [("sdpa", 100.0)]
    assert "| 64 x 2 | sdpa | eager |" in (tmp_path / "out" / "train_step_bench.md").read_text()
