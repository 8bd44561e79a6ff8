"""Where the time of one attention call goes: GPU kernels vs the host launching them (CUDA).

Only public calls are timed (the benchmark's providers, `kernels.block_sparse_attention`): host time around them
with and without synchronising, CUDA-event time, torch.profiler's per-kernel GPU time and CPU-side ops, and
cProfile's Python functions with the backward on the calling thread.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from kernels import block_sparse_attention
from kernels import sparsity_patterns as sp

from .attention_bench import provider


def attention_fn(name: str, seq: int, dropout: float, pattern: str = "local", window: int = 256) -> Callable:
    """(q, k, v) -> o, causal: a benchmark provider, or block_sparse with a layout of `pattern`."""
    if name != "block_sparse":
        fn = provider(name)
        return lambda q, k, v: fn(q, k, v, True, dropout)
    layout = sp.build_layout(pattern, seq, 128, window=window).cuda()
    return lambda q, k, v: block_sparse_attention(q, k, v, layout, causal=True, dropout_p=dropout)


def calls(fn: Callable, batch: int, heads: int, seq: int, head_dim: int) -> dict[str, Callable]:
    """The calls to time, on random bf16 inputs: forward, forward+backward, backward alone (graph kept), and
    forward+backward with autograd's device thread off (the backward runs on the calling thread)."""
    q, k, v = (torch.randn(batch, heads, seq, head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    do = torch.randn_like(q)
    step = lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), do)
    for _ in range(5):  # compile, autotune
        step()
    o = fn(q, k, v)

    def same_thread():
        with torch.autograd.set_multithreading_enabled(False):
            step()

    return {"fwd": lambda: fn(q, k, v).detach(), "fwd+bwd": step,
            "bwd (graph kept)": lambda: torch.autograd.grad(o, (q, k, v), do, retain_graph=True),
            "fwd+bwd, backward on the calling thread": same_thread}


def host_vs_gpu(call: Callable, iters: int) -> dict:
    """ms per call: host time to enqueue (no sync inside the loop), wall time (synchronised), CUDA-event time."""
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0 = time.perf_counter()
    start.record()
    for _ in range(iters):
        call()
    enqueue = time.perf_counter() - t0
    end.record()
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    return {"host_enqueue_ms": enqueue / iters * 1e3, "wall_ms": wall / iters * 1e3,
            "cuda_events_ms": start.elapsed_time(end) / iters}


def kernel_profile(call: Callable, iters: int) -> tuple[float, str, str]:
    """(GPU kernel ms per call, kernels table, CPU-side ops table) from torch.profiler."""
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            call()
        torch.cuda.synchronize()
    events = prof.key_averages()
    gpu_us = sum(e.device_time_total for e in events if e.device_type.name == "CUDA") / iters
    return (gpu_us / 1e3, events.table(sort_by="device_time_total", row_limit=12, max_name_column_width=60),
            events.table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=60))


def python_profile(call: Callable, iters: int, top: int = 25) -> str:
    """cProfile of `iters` calls with the backward on the calling thread (so the profile sees it)."""
    prof = cProfile.Profile()
    with torch.autograd.set_multithreading_enabled(False):
        torch.cuda.synchronize()
        prof.enable()
        for _ in range(iters):
            call()
        prof.disable()
        torch.cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(top)
    return text.getvalue()


def report(name: str, seq: int, batch: int, heads: int, head_dim: int, dropout: float, pattern: str,
           iters: int, log=print) -> None:
    """Print every measurement above for one provider and shape."""
    timed = calls(attention_fn(name, seq, dropout, pattern), batch, heads, seq, head_dim)
    for mode, call in timed.items():
        t = host_vs_gpu(call, iters)
        log(f"{mode}: host enqueue {t['host_enqueue_ms']:.3f} ms/call, wall {t['wall_ms']:.3f} ms/call, "
               f"CUDA events {t['cuda_events_ms']:.3f} ms/call")
    gpu_ms, kernels_table, cpu_table = kernel_profile(timed["fwd+bwd"], iters)
    log(f"GPU kernel time per fwd+bwd: {gpu_ms:.3f} ms (wall time well above it: the host is the bottleneck)")
    log(kernels_table)
    log("CPU-side ops of fwd+bwd (self CPU time):")
    log(cpu_table)
    log(f"Python host time of {iters} fwd+bwd calls, backward on the calling thread:")
    log(python_profile(timed["fwd+bwd"], iters))
