"""Where the time of one attention forward+backward goes: GPU kernels vs host (launch) overhead.

    python scripts/profile_attention.py --provider flash --seq 1024 --batch 16
    python scripts/profile_attention.py --provider block_sparse --seq 16384 --batch 1 --pattern local

Prints wall time per call (host clock, synchronised), the summed GPU kernel time per call, and the kernels.
Wall time well above GPU time means the host cannot launch the work as fast as the GPU runs it. Then the same
fwd+bwd with the backward on the calling thread (autograd's device thread off), where the host time goes by Python
function (cProfile) and by CPU-side op (torch.profiler: launches, allocations, any synchronisation).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench_attention import _impl  # noqa: E402

from kernels import block_sparse_attention  # noqa: E402
from kernels import sparsity_patterns as sp  # noqa: E402


def attention_fn(args):
    if args.provider != "block_sparse":
        fn = _impl(args.provider)
        return lambda q, k, v: fn(q, k, v, True, args.dropout)
    layout = sp.build_layout(args.pattern, args.seq, 128, window=256).cuda()
    return lambda q, k, v: block_sparse_attention(q, k, v, layout, causal=True, dropout_p=args.dropout)


def _time_inside_backward() -> list[float]:
    """Wrap the backward launcher to time it where it runs (autograd's device thread or the caller's)."""
    fa = sys.modules["kernels.flash_attention"]
    launch_bwd, times = fa._eager_bwd, []

    def timed(*a, **kw):
        t0 = time.perf_counter()
        out = launch_bwd(*a, **kw)
        times.append(time.perf_counter() - t0)
        return out

    fa._eager_bwd = timed
    return times


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--provider", default="flash")
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--pattern", default="local")
    p.add_argument("--iters", type=int, default=50)
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("profile_attention.py needs a CUDA GPU")

    fn = attention_fn(args)
    q, k, v = (torch.randn(args.batch, args.heads, args.seq, args.head_dim, device="cuda", dtype=torch.bfloat16,
                           requires_grad=True) for _ in range(3))
    do = torch.randn_like(q)
    step = lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), do)
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    o = fn(q, k, v)
    modes = {"fwd": lambda: fn(q, k, v).detach(), "fwd+bwd": step,
             "bwd (autograd, graph kept)": lambda: torch.autograd.grad(o, (q, k, v), do, retain_graph=True)}
    if args.provider == "flash" and not args.dropout:  # the same backward launches, without the autograd engine
        fa = sys.modules["kernels.flash_attention"]
        scale = q.shape[-1] ** -0.5
        with torch.no_grad():
            o2, lse = fa._eager_fwd(q, k, v, None, [], fa._NO_TILES, True, args.dropout, scale)
        modes["bwd launchers on the main thread"] = lambda: fa._eager_bwd(
            do, q, k, v, o2, lse, None, [], fa._NO_TILES, True, args.dropout, scale)
    def same_thread():
        with torch.autograd.set_multithreading_enabled(False):
            step()

    modes["fwd+bwd, backward on the calling thread"] = same_thread
    inside = _time_inside_backward() if args.provider in ("flash", "block_sparse") else None
    for mode, call in modes.items():
        if inside:
            inside.clear()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.iters):
            call()
        host_ms = (time.perf_counter() - t0) / args.iters * 1e3  # time to enqueue (no sync inside the loop)
        torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - t0) / args.iters * 1e3
        print(f"{mode}: host enqueue {host_ms:.3f} ms/call, wall {wall_ms:.3f} ms/call")
        if inside:  # host time spent in our backward launcher, on whichever thread autograd ran it
            print(f"    of which in _eager_bwd: {sum(inside) / len(inside) * 1e3:.3f} ms/call")
    fa = sys.modules["kernels.flash_attention"]
    for name in ("_attn_fwd_tuned", "_attn_bwd_dq_tuned", "_attn_bwd_dkdv_tuned"):
        print(f"autotuned {name}: {getattr(getattr(fa, name), 'best_config', None)}")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(args.iters):
            step()
        torch.cuda.synchronize()
    events = prof.key_averages()
    gpu_us = sum(e.device_time_total for e in events if e.device_type.name == "CUDA") / args.iters
    print(f"GPU kernel time per fwd+bwd: {gpu_us / 1e3:.3f} ms")
    print(events.table(sort_by="device_time_total", row_limit=12, max_name_column_width=60))
    print("CPU-side ops of fwd+bwd (self CPU time):")
    print(events.table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=60))

    with torch.autograd.set_multithreading_enabled(False):  # so cProfile sees the backward too
        prof_py = cProfile.Profile()
        torch.cuda.synchronize()
        prof_py.enable()
        for _ in range(args.iters):
            step()
        prof_py.disable()
        torch.cuda.synchronize()
    print(f"Python host time of {args.iters} fwd+bwd calls, backward on the calling thread:")
    pstats.Stats(prof_py).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
