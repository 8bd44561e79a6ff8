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
    """Wall time per optimizer step, synchronised with the device; steps <= `skip` are left out."""

    def __init__(self, device: torch.device, skip: int):
        self.device, self.skip = device, skip
        self.step_ms: dict[int, float] = {}
        self._t0 = None

    def start(self) -> None:
        synchronize(self.device)
        self._t0 = time.perf_counter()

    def stop(self, step: int) -> float:
        synchronize(self.device)
        ms = (time.perf_counter() - self._t0) * 1e3
        if step > self.skip:
            self.step_ms[step] = ms
        return ms

    def mean_ms(self, steps: range) -> float | None:
        times = [self.step_ms[s] for s in steps if s in self.step_ms]
        return sum(times) / len(times) if times else None

    def median_ms(self) -> float | None:
        times = sorted(self.step_ms.values())
        return times[len(times) // 2] if times else None
