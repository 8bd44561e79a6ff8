"""The reproduction end to end on CPU: tiny models, the backends that run here, real train.py sweeps."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from script_loader import load_script

from reporting import launch, reproduction

REPO = Path(__file__).resolve().parent.parent
TINY = ["--tiny", "--device", "cpu", "--logger", "none"]


@pytest.mark.slow
def test_reproduce_tiny_cpu(tmp_path):
    out = tmp_path / "report"
    cmd = [sys.executable, str(REPO / "scripts" / "reproduce.py"), *TINY, "--seqs", "64", "--small-steps", "8",
           "--out", str(out)]
    # in two invocations, as on a machine that limits a command's time: the second keeps the first's sections
    logs = []
    for only in ("kernels,throughput", "parity,sparse"):
        proc = subprocess.run([*cmd, "--only", only], cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        logs.append(proc.stdout)
    md = (out / "report.md").read_text()
    # stamped
    assert "torch" in md and "date_utc" in md and "--tiny" in md
    # kernels: skipped on CPU, with the reason; sections numbered as they appear
    assert "## 1. Attention kernels" in md and "kernel benchmark needs a CUDA GPU" in md
    assert "## 2. IO model" in md and "40.3 vs 4.4 GB (Fig. 2)" in md
    # throughput: naive, sdpa and the HF baseline, all ordinary runs with metrics.jsonl, enough timed intervals to
    # compare, and no paper table beside CPU runs
    assert "## 3. End-to-end training throughput" in md
    for row in ("| sdpa | ok |", "| naive | ok |", "| hf | ok |"):
        assert row in md
    assert "stdlib_docs (bytes)" in md and "peak resident memory" in md
    assert "8×A100" not in md and "paper (A100): flash vs HF" not in md
    raw = json.loads((out / "raw.json").read_text())
    assert all(len([h for h in r["history"] if h.get("perf/tokens_per_sec")]) >= 3 for r in raw["throughput"])
    assert len(list((out / "runs" / "throughput").rglob("metrics.jsonl"))) == 3
    # parity: naive vs sdpa on CPU (flash needs a GPU), said so, max gap stated
    assert "naive vs sdpa" in md and "largest |Δ train loss| over the 8 logged steps" in md
    exact = raw["parity"][0]
    assert exact["a"]["status"] == exact["b"]["status"] == "ok"
    for png in ("throughput.png", "parity_0.png", "parity_1.png", "sparse_loss.png"):
        assert (out / png).exists(), png
    assert all(s["rc"] == 0 for s in raw["sweeps"])
    # progress: per section, with time so far and what is left; the children's own output shows
    assert "=== [2/2] throughput:" in logs[0] and "=== throughput done in" in logs[0]
    assert "training steps left" in logs[0] and "min of training left" in logs[0]
    assert "done (ok)" in logs[1]  # train.py's closing line, from the child
    assert set(raw["section_seconds"]) == {"kernels", "throughput", "parity", "sparse"}


def test_a_stopped_run_keeps_the_sections_it_finished(tmp_path, monkeypatch):
    def stopped(*args, **kwargs):
        raise KeyboardInterrupt  # e.g. a device's time limit, in the middle of the convergence runs

    monkeypatch.setattr(reproduction, "parity", stopped)
    out = tmp_path / "report"
    with pytest.raises(KeyboardInterrupt):
        reproduction.reproduce("tiny", out, "cpu", ["kernels", "parity"], logger="none")
    md = (out / "report.md").read_text()
    assert "kernel benchmark needs a CUDA GPU" in md and "40.3 vs 4.4 GB (Fig. 2)" in md  # kernels, IO model
    assert "Convergence parity" not in md


def test_reuse_runs_renders_without_training(tmp_path, monkeypatch):
    out = tmp_path / "report"
    run = lambda **kw: reproduction.reproduce("tiny", out, "cpu", ["parity"], logger="none",  # noqa: E731
                                              plan_overrides={"small_steps": 4}, **kw)
    run()
    first = (out / "report.md").read_text()

    def no_training(*args, **kwargs):
        raise AssertionError("--reuse-runs must not launch train.py")

    monkeypatch.setattr(launch, "train", no_training)
    run(reuse_runs=True)
    md = (out / "report.md").read_text()
    section = lambda text: text[text.index("Convergence parity"):text.index(". Commands\n")].split("\n_")[0]  # noqa: E731
    assert section(md) == section(first)  # the same runs, the same tables
    assert "runs reused from an earlier invocation" in md

    with pytest.raises(SystemExit, match="no runs in"):
        reproduction.reproduce("tiny", tmp_path / "empty", "cpu", ["parity"], logger="none", reuse_runs=True)
    assert not (tmp_path / "empty").exists()  # a committed report without runs/ is left as it is


def test_gpu_modes_on_a_cpu_say_what_to_run_instead(tmp_path, monkeypatch):
    """README's `--quick` / `--full` on a machine without a GPU: refused before training (they train GPT-2 small on
    the CPU otherwise); --device cpu, --reuse-runs and kernels-only (skipped there) still go through."""
    cli = load_script("reproduce")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    calls = []
    monkeypatch.setattr(cli, "reproduce", lambda mode, out, device, only, **kw: calls.append((mode, device, only)))
    for mode in ("--quick", "--full"):
        with pytest.raises(SystemExit, match="no CUDA GPU here: .* run --tiny --device cpu"):
            cli.main([mode, "--out", str(tmp_path / "r")])
    assert not calls and not (tmp_path / "r").exists()
    cli.main(["--quick", "--device", "cpu", "--out", str(tmp_path / "r")])
    cli.main(["--quick", "--only", "parity", "--reuse-runs", "--out", str(tmp_path / "r")])
    cli.main(["--quick", "--only", "kernels", "--out", str(tmp_path / "r")])
    cli.main(["--tiny", "--out", str(tmp_path / "r")])
    assert [c[0] for c in calls] == ["quick"] * 3 + ["tiny"] and {c[1] for c in calls} == {"cpu"}


def test_quick_plan_is_small():
    """--quick is the plan timed on one H100/H200 (inside 6 minutes): one throughput shape, short runs, quick kernel
    sizes; --full covers more of each."""
    quick, full = reproduction.PLANS["quick"], reproduction.PLANS["full"]
    assert quick["seqs"] == [1024] and quick["steps"] <= 16 and quick["small_steps"] <= 40
    assert quick["bench"]["head_dims"] == (64,) and quick["bench"]["dropouts"] == (0.0,)
    for key in ("seqs", "models"):
        assert set(quick[key]) < set(full[key])
    plan = reproduction.make_plan("quick")
    steps = reproduction.planned_steps(plan, list(reproduction.SECTIONS), "cuda", {})
    assert steps == {"kernels": 0, "throughput": 3 * 16, "parity": 6 * 40, "sparse": 2 * 40}
    # quick: every run eager (a compile per run was most of its time); full: as train.py runs by default
    assert quick["compile"] == quick["small_compile"] == "false" and full["compile"] == "auto"
    assert reproduction.make_plan("quick", ["naive", "flash"])["backends"] == ["naive", "flash"]
