"""torchrun with 2 gloo processes on CPU: one run directory, one log, rank-0-only files. (2 ranks against 1 rank with
grad_accum=2, the same training: tests/test_scaling.py.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_two_gloo_processes_train_and_log_once(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "train.py"), "model=gpt2-nano", "train.batch_size=4", "train.seq_len=32", "train.max_steps=4",
           "train.log_interval=1", "train.eval_iters=2", "train.sample_at_eval=false", "train.untimed_steps=1",
           f"data.dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    run_dir = tmp_path / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok"
    assert json.loads((run_dir / "config.json").read_text())["world_size"] == 2
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if "train/loss" in line]
    assert steps == [1, 2, 3, 4]  # rank 0 only: no duplicates
    assert out.count("done (ok)") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "run"]  # no stray run dir from rank 1

