"""The quick reproduce path end to end on CPU: tiny models, the backends that run here, real train.py sweeps."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_reproduce_tiny_cpu(tmp_path):
    out = tmp_path / "report"
    cmd = [sys.executable, str(REPO / "scripts" / "reproduce.py"), "--tiny", "--device", "cpu", "--logger", "none",
           "--seqs", "64", "--steps", "4", "--small-steps", "8", "--out", str(out)]
    # in two invocations, as on a machine that limits a command's time: the second keeps the first's sections
    for only in ("kernels,throughput", "parity,sparse"):
        proc = subprocess.run([*cmd, "--only", only], cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    md = (out / "report.md").read_text()
    # stamped
    assert "torch" in md and "date_utc" in md and "--tiny" in md
    # kernels: skipped on CPU, with the reason
    assert "kernel benchmark needs a CUDA GPU" in md
    # IO model with the paper's Fig. 2 beside it
    assert "40.3 vs 4.4 GB (Fig. 2)" in md
    # throughput: naive, sdpa and the HF baseline, all ordinary runs with metrics.jsonl
    for row in ("| naive | ok |", "| sdpa | ok |", "| hf | ok |"):
        assert row in md
    assert len(list((out / "runs" / "throughput").rglob("metrics.jsonl"))) == 3
    # parity: naive vs sdpa on CPU (flash needs a GPU), said so, max gap stated
    assert "naive vs sdpa" in md and "largest |Δ train loss|" in md
    raw = json.loads((out / "raw.json").read_text())
    exact = raw["parity"][0]
    assert exact["a"]["status"] == exact["b"]["status"] == "ok"
    for png in ("throughput.png", "parity_0.png", "parity_1.png", "sparse_loss.png"):
        assert (out / png).exists(), png
    assert all(s["rc"] == 0 for s in raw["sweeps"])


def test_a_stopped_run_keeps_the_sections_it_finished(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "scripts"))
    import reproduce

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt  # e.g. a device's time limit, in the middle of the convergence runs

    monkeypatch.setattr(reproduce, "parity", stopped)
    out = tmp_path / "report"
    try:
        reproduce.main(["--tiny", "--device", "cpu", "--logger", "none", "--only", "kernels,parity", "--out", str(out)])
    except KeyboardInterrupt:
        pass
    md = (out / "report.md").read_text()
    assert "kernel benchmark needs a CUDA GPU" in md and "40.3 vs 4.4 GB (Fig. 2)" in md  # kernels, IO model
    assert "Convergence parity" not in md


def test_reuse_runs_renders_without_training(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "scripts"))
    import reproduce

    out = tmp_path / "report"
    args = ["--tiny", "--device", "cpu", "--logger", "none", "--small-steps", "4", "--only", "parity", "--out",
            str(out)]
    reproduce.main(args)
    first = (out / "report.md").read_text()

    real_run = subprocess.run

    def no_training(cmd, *a, **kw):
        assert not any(str(c).endswith("train.py") for c in cmd), "--reuse-runs must not launch train.py"
        return real_run(cmd, *a, **kw)

    monkeypatch.setattr(reproduce.subprocess, "run", no_training)
    reproduce.main([*args, "--reuse-runs"])
    md = (out / "report.md").read_text()
    section = lambda text: text[text.index("## 3."):text.index("## Commands")].split("\n_")[0]  # noqa: E731
    assert section(md) == section(first)  # the same runs, the same tables
    assert "runs reused from an earlier invocation" in md

    with pytest.raises(SystemExit, match="no runs in"):
        reproduce.main([*args, "--reuse-runs", "--out", str(tmp_path / "empty")])
