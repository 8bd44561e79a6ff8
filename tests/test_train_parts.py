"""Small parts of the trainer: the learning-rate schedule, MFU arithmetic, step timing, atomic checkpoints."""

import pytest
import torch
from omegaconf import OmegaConf

from training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from training.lr import learning_rate
from training.metrics import PEAK_FLOPS, StepTimer, mfu, peak_flops


def test_warmup_then_cosine_to_min_lr():
    optim = OmegaConf.create({"lr": 1.0, "min_lr": 0.1, "lr_warmup_steps": 10, "schedule": "cosine"})
    lrs = [learning_rate(s, optim, 110) for s in range(110)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert learning_rate(110, optim, 110) == pytest.approx(0.1)
    assert learning_rate(60, optim, 110) == pytest.approx(0.55)


def test_mfu_and_peaks():
    assert mfu(6e9, 1e4, 1e15) == pytest.approx(0.06)
    assert mfu(6e9, 1e4, None) is None
    assert peak_flops(torch.device("cpu")) is None
    assert peak_flops(torch.device("cpu"), override=1e12) == 1e12
    names = [n for n, _ in PEAK_FLOPS]
    assert names.index("H100 PCIe") < names.index("H100") and names.index("A10G") < names.index("A10")


def test_step_timer_leaves_out_warmup_and_restarts(monkeypatch):
    clock = iter([10.0, 10.4, 11.0, 11.2, 12.0])  # seconds, one per mark/restart that reads it
    monkeypatch.setattr("training.metrics.time.perf_counter", lambda: next(clock))
    timer = StepTimer(torch.device("cpu"), skip=2)
    assert timer.mark(1) is None  # warm-up: not timed, clock not read
    assert timer.mark(2) is None  # timing starts at 10.0
    assert timer.mark(6) == pytest.approx(100.0)  # 0.4 s over 4 steps
    timer.restart(6)  # an eval ran: the clock restarts at 11.0
    assert timer.mark(8) == pytest.approx(100.0)  # 0.2 s over 2 steps
    assert timer.mark(10) == pytest.approx(400.0)  # 0.8 s over 2 steps
    assert timer.median_ms() == pytest.approx(100.0)


def test_checkpoint_write_is_atomic(tmp_path):
    save_checkpoint({"model": {}, "model_config": {}, "step": 1}, tmp_path / "ckpt.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
    (tmp_path / "ckpt.pt").write_bytes(b"\x80\x02truncated")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path)
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not written by train.py"):
        load_checkpoint(tmp_path / "other.pt")
