"""Where the causal attention's GPU time goes, and which tiles each kernel wants (GPU). Three steps:

1. per-kernel time (torch.profiler) of ours and of cuDNN, forward + backward, and the configs the autotuner chose;
2. the single-pass backward (dQ by fp32 atomics) against the two passes without dropout, same tiles;
3. every tile config of one kernel alone (the other two fixed), forward+backward (forward alone for `fwd`)
   replayed from a CUDA graph. The configs are compiled first in parallel processes (Triton's disk cache), then
   timed one after another in this process.

    python docs/dev/tile_sweep.py                    # from a checkout's root; ~2 minutes on an H200
    python docs/dev/tile_sweep.py --steps 3 --kinds kv --head-dims 128
    python docs/dev/tile_sweep.py --steps 3 --kinds kv dq --head-dims 64 --sustain 2   # each config for 2 s

--sustain S times each config replayed for S seconds with the SM clock and power beside (reporting/sustained.py):
under the board's power limit a config that spends more energy gets a lower clock, which a burst does not show.

Kernels are called through the public function, so that their launchers run inside the registered op: a launcher
called directly goes through wrap_triton's higher-order op, which re-runs the autotuner on every call.
"""

import argparse
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path.cwd()))
from kernels import attention as A  # noqa: E402
from kernels.attention_bwd import attn_bwd_dq, attn_bwd_kv  # noqa: E402
from kernels.attention_fwd import attn_fwd  # noqa: E402
from reporting import sustained  # noqa: E402

TOKENS, HEADS = 16384, 12
KERNELS = {"fwd": ("_fwd", attn_fwd), "kv": ("_bwd_kv", attn_bwd_kv), "dq": ("_bwd_dq", attn_bwd_dq)}
FIXED = {"fwd": (128, 64, 8, 3), "kv": (64, 128, 8, 3), "dq": (128, 64, 8, 3)}  # (BLOCK_M, BLOCK_N, warps, stages)


def candidates(kind: str, head_d: int) -> list[tuple]:
    """Tile configs worth timing: the forward's and the dQ pass's query tile a multiple of the key tile, the dK/dV
    pass's key tile a multiple of the query tile (kernels/attention.py); 8 warps only from 64 x 64; 5 stages and
    128 x 128 only where they fit in shared memory at this head dim."""
    pairs = {"fwd": [(64, 64), (128, 32), (128, 64), (128, 128)], "dq": [(64, 64), (128, 64)],  # dQ: the host's 64
             "kv": [(32, 64), (32, 128), (64, 64), (64, 128)]}[kind]
    return [(m, n, w, s) for m, n in pairs for w in (4, 8) for s in (2, 3, 4, 5)
            if not (w == 8 and m * n < 4096) and not (w == 4 and m * n >= 16384)
            and not (head_d > 64 and m * n >= 16384 and s > 3)]


def install(kind: str, tile: tuple) -> None:
    """Replace one kernel's autotuner by one with a single config (nothing timed at launch)."""
    m, n, w, s = tile
    name, kernel = KERNELS[kind]
    options = {"reset_to_zero": ["DQ_ACC"]} if kind == "kv" else {}
    tile_kwargs = {"BLOCK_M": m} if kind == "dq" else {"BLOCK_M": m, "BLOCK_N": n}  # dQ: the host sets BLOCK_N
    config = triton.Config(tile_kwargs, num_warps=w, num_stages=s)
    setattr(A, name, triton.autotune([config], key=A._KEY, **options)(kernel))


def inputs(D: int, N: int):
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, do = (torch.randn(TOKENS // N, HEADS, N, D, device="cuda", dtype=torch.bfloat16, generator=g)
                   for _ in range(4))
    return q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), do


def step(kind: str, q, k, v, do, deterministic: bool = True):
    """The call to time: the forward alone for `fwd`, forward+backward otherwise."""
    if kind == "fwd":
        def call():
            with torch.no_grad():
                A.flash_attention(q, k, v, causal=True)
    else:
        def call():
            o = A.flash_attention(q, k, v, causal=True, deterministic=deterministic)
            torch.autograd.grad(o, (q, k, v), do)
    return call


def timed(call) -> float:
    call()
    torch.cuda.synchronize()
    return triton.testing.do_bench_cudagraph(call, rep=40)


def profile_kernels(D: int, N: int) -> None:
    q, k, v, do = inputs(D, N)
    for name, attend in [("ours", lambda: A.flash_attention(q, k, v, causal=True)),
                         ("cuDNN", lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))]:
        for _ in range(3):
            torch.autograd.grad(attend(), (q, k, v), do)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                torch.autograd.grad(attend(), (q, k, v), do)
            torch.cuda.synchronize()
        print(f"D={D} N={N} {name}, ms per call:")
        for event in prof.key_averages():
            if event.device_time_total > 0 and event.count >= 10:
                print(f"   {event.key[:72]:72s} {event.device_time_total / event.count / 1000:.3f}")
    chosen = {kind: getattr(getattr(A, name), "best_config", None) for kind, (name, _) in KERNELS.items()}
    print("   autotuned: " + "; ".join(f"{kind} {config}" for kind, config in chosen.items()), flush=True)


def single_pass_vs_two(D: int, N: int) -> None:
    q, k, v, do = inputs(D, N)
    for kind, tile in FIXED.items():
        install(kind, tile)
    chooser = A._single_pass
    A._single_pass = lambda dropout_p, deterministic, head_dim: not deterministic  # without dropout too
    two, one = (timed(step("bwd", q, k, v, do, deterministic)) for deterministic in (True, False))
    A._single_pass = chooser
    print(f"D={D} N={N} fwd+bwd, tiles {FIXED}: two passes {two:.3f} ms, single pass {one:.3f} ms", flush=True)


def compile_one(job: tuple):
    """In a worker process: run one config once, so that its binary lands in Triton's disk cache."""
    kind, D, N, tile = job
    q, k, v, do = inputs(D, N)
    for other, fixed in FIXED.items():
        install(other, fixed)
    install(kind, tile)
    try:
        step(kind, q, k, v, do)()
        torch.cuda.synchronize()
        return job, None
    except Exception as e:  # e.g. out of shared memory: report, skip
        return job, f"{type(e).__name__}: {str(e)[:100]}"


def sweep(kinds: list[str], head_dims: list[int], N: int, sustain: float = 0.0) -> None:
    jobs = [(kind, D, N, tile) for kind in kinds for D in head_dims for tile in candidates(kind, D)]
    failed = set()
    with ProcessPoolExecutor(min(15, len(jobs)), mp_context=multiprocessing.get_context("spawn")) as pool:
        for job, error in pool.map(compile_one, jobs):
            if error:
                failed.add(job)
                print(f"skipped {job}: {error}")
    for kind in kinds:
        for D in head_dims:
            q, k, v, do = inputs(D, N)
            results = []
            for tile in candidates(kind, D):
                if (kind, D, N, tile) in failed:
                    continue
                for other, fixed in FIXED.items():
                    install(other, fixed)
                install(kind, tile)
                call = step(kind, q, k, v, do)
                if sustain:
                    result = sustained.replay(sustained.capture(call), sustain)
                    extra = f" [{result.clock_mhz:.0f} MHz, {result.power_w:.0f} W]" if result.samples else ""
                    results.append((result.ms, tile, extra))
                else:
                    results.append((timed(call), tile, ""))
            results.sort()
            what = "fwd" if kind == "fwd" else "fwd+bwd"
            print(f"{kind} D={D} N={N} ({what} ms{f', sustained {sustain} s' if sustain else ''}; others fixed at "
                  f"{FIXED}):")
            print("   best: " + "  ".join(f"{ms:.3f} {tile}{extra}" for ms, tile, extra in results[:6]))
            print("   worst: " + "  ".join(f"{ms:.3f} {tile}{extra}" for ms, tile, extra in results[-3:]), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 3], choices=[1, 2, 3])
    parser.add_argument("--kinds", nargs="+", default=["kv", "dq", "fwd"], choices=list(KERNELS))
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--seq", type=int, default=16384)
    parser.add_argument("--sustain", type=float, default=0.0, metavar="S",
                        help="step 3: time each config replayed for S seconds, with clock and power (default: a burst)")
    args = parser.parse_args()
    if 1 in args.steps:
        for D in args.head_dims:
            profile_kernels(D, args.seq)
    if 2 in args.steps:
        for D in args.head_dims:
            single_pass_vs_two(D, args.seq)
    if 3 in args.steps:
        sweep(args.kinds, args.head_dims, args.seq, args.sustain)


if __name__ == "__main__":
    main()
