"""Throughput, MFU and memory: the figures the paper's speedup tables are made of."""

from __future__ import annotations

import resource
import sys
import time

import torch

# Dense bf16 tensor-core peaks (FLOP/s, no sparsity), matched in order against torch.cuda.get_device_name().
PEAK_FLOPS = (
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("V100", 125e12),  # fp16: no bf16 on Volta
    ("T4", 65e12),  # fp16
)


def peak_flops(device: torch.device, override: float | None = None) -> float | None:
    """Per-device peak for MFU; None on CPUs and unknown GPUs (set train.peak_flops to report MFU there)."""
    if override:
        return float(override)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_FLOPS if key in name), None)


def mfu(flops_per_token: float, tokens_per_sec: float, peak: float | None, world_size: int = 1) -> float | None:
    if not peak or tokens_per_sec is None:
        return None
    return flops_per_token * tokens_per_sec / (peak * world_size)


def peak_memory_gb(device: torch.device) -> float:
    """torch's peak allocation on GPU; the process's peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 1e9 if sys.platform == "darwin" else rss * 1024 / 1e9


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """Mean wall time per optimizer step over each interval between synchronisation points (log, eval and
    checkpoint steps). The device is synchronised only there, not every step, so the host can run ahead of the
    GPU as it does in a plain training loop; steps <= `skip` (compile, autotune, allocator warm-up) are left out."""

    def __init__(self, device: torch.device, skip: int):
        self.device, self.skip = device, skip
        self.interval_ms: list[float] = []  # ms per step of each closed interval
        self._t0, self._step0 = None, None

    def mark(self, step: int) -> float | None:
        """At a synchronisation point after `step`: close the running interval and return its ms per step."""
        if step < self.skip:
            return None
        synchronize(self.device)
        now, ms = time.perf_counter(), None
        if self._t0 is not None and step > self._step0:
            ms = (now - self._t0) * 1e3 / (step - self._step0)
            self.interval_ms.append(ms)
        self._t0, self._step0 = now, step
        return ms

    def restart(self, step: int) -> None:
        """Leave what ran since the last mark (an eval, a checkpoint) out of the timing."""
        if step >= self.skip:
            synchronize(self.device)
            self._t0, self._step0 = time.perf_counter(), step

    def median_ms(self) -> float | None:
        times = sorted(self.interval_ms)
        return times[len(times) // 2] if times else None


def duration(seconds: float) -> str:
    """1h02m, 3m05s, 42s: elapsed time and ETA on log lines."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
