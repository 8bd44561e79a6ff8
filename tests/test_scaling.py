"""scripts/scaling.py on CPU (gloo): the scaling table, and N ranks on the loss curve of 1 rank with grad_accum=N
(the project's one check that DDP over 2 ranks trains as 1 rank accumulating 2 micro-batches)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from script_loader import load_script

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_scaling_report_on_two_gloo_ranks(tmp_path):
    out = tmp_path / "scaling"
    cmd = [sys.executable, str(ROOT / "scripts" / "scaling.py"), "--device", "cpu", "--gpus", "1", "2", "--model",
           "gpt2-nano", "--attn", "sdpa", "--seq", "32", "--batch", "4", "--steps", "6", "--curve-steps", "5",
           "--data-dir", str(tmp_path / "data"), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    report = (out / "report.md").read_text()
    assert "| 1 | ok |" in report and "| 2 | ok |" in report
    raw = json.loads((out / "raw.json").read_text())
    assert raw["loss_gap"]["steps"] == 5 and raw["loss_gap"]["max_gap"] < 1e-4
    assert all(c["rc"] == 0 for c in raw["commands"]) and (out / "loss.png").is_file()


@pytest.mark.parametrize("gpus, have, says", [(["1", "2"], 0, "no CUDA GPU here: run with --device cpu"),
                                              (["1", "2", "4"], 2, "this machine has 2 GPU")])
def test_scaling_refuses_ranks_without_gpus_before_launching(tmp_path, monkeypatch, gpus, have, says):
    """On a machine without the GPUs, the documented GPU command says what to run instead; it starts no torchrun."""
    cli = load_script("scaling")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: have)
    monkeypatch.setattr(cli, "study", lambda *a, **k: pytest.fail("launched runs"))
    with pytest.raises(SystemExit, match=says):
        cli.main(["--gpus", *gpus, "--out", str(tmp_path / "scaling")])
    assert not (tmp_path / "scaling").exists()
