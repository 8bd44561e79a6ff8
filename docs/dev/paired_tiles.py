"""Causal forward at short rows, one query tile per program against a pair of them: an experiment beside the
library's kernel, not routed. At N = 1K our forward takes 0.094 ms against cuDNN's 0.082 while level from 4K on
(kernel notes, sixteenth session): with 16 query tiles of 64 a head, a program's fixed cost (q load, the pipeline's
fill, the O and LSE stores) is a larger share, and the programs of a head start in ascending cost (costliest-first
order, LPT, measured 5 % slower at 1K: it spreads every head's K and V over the launch, fourth session).

`paired`: program p of a head runs query tile n - 1 - p, then tile p (the middle one alone when n is odd): every
program the same cost, half as many programs, a head's programs still side by side. The makespan over the ideal
at 1K, 132 SMs x 2-4 resident programs (`python docs/dev/schedule_model.py --block-m 64 --per-sm 2 3 4`): 1.10-1.19
in the library's order, 1.03 paired (an upper bound on the gain: resident programs share an SM, so a lone tail
program runs faster than the model says).
`single` is this file's copy of the library's forward (dense, causal, no dropout): the control. The price, on the
CPU (triton 3.9 for sm_90): paired takes 168 registers against 127 at 64 x 64 x 4 warps x 3 stages, so 3 programs
fit an SM by registers instead of 4 (the tile's code twice; a runtime loop over one or two tiles took more).

    TRITON_INTERPRET=1 python docs/dev/paired_tiles.py check     # CPU: both variants against a float64 reference
    python docs/dev/paired_tiles.py compile                      # CPU: registers and spills for sm_90
    python docs/dev/paired_tiles.py time [--seqs 1024 2048 4096] # GPU: beside the library's forward and cuDNN
"""

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path.cwd()))
sys.path.insert(0, str(Path(__file__).parent))
from kernels.attention_fwd import _fwd_tiles, key_tile_ranges, load_tile  # noqa: E402

LOG2E = 1.4426950408889634
VARIANTS = ("single", "paired")
CONFIGS = [(64, 64, 4, 3), (64, 64, 4, 4), (128, 64, 8, 3)]  # (BLOCK_M, BLOCK_N, warps, stages)


@triton.jit
def _query_tile(Q, K, V, O, LSE, start_m, bh, h, stride_n, N, qk_scale, D: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr):
    """One causal query tile as the library's forward runs it without dropout (unmasked key tiles, then the
    diagonal ones), its O and row LSE stored."""
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    q = load_tile(Q, offs_m, stride_n, offs_d, N, D, True, True)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    full_lo, full_hi, _, part_lo, part_hi, _ = key_tile_ranges(start_m, h, N, Q, Q, Q, Q, 0, 0, 0, 0, BLOCK_M,
                                                               BLOCK_N, True, False, 0)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, K, V, stride_n, offs_m, offs_d, full_lo, full_hi, Q, Q, offs_m,
                               offs_m, bh, N, qk_scale, 0, D, BLOCK_N, True, False, False, 1, False, True)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, K, V, stride_n, offs_m, offs_d, part_lo, part_hi, Q, Q, offs_m,
                               offs_m, bh, N, qk_scale, 0, D, BLOCK_N, True, True, False, 1, False, True)
    tl.store(LSE + bh.to(tl.int64) * N + offs_m, m_i + tl.math.log2(l_i), mask=offs_m < N)
    tl.store(O + offs_m[:, None] * stride_n + offs_d[None, :], (acc / l_i[:, None]).to(O.dtype.element_ty),
             mask=offs_m[:, None] < N)


@triton.jit
def fwd_paired(Q, K, V, O, LSE, stride_b, stride_h, stride_n, H, N, qk_scale, D: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PAIRED: tl.constexpr):
    """Grid (tiles, B*H), or with PAIRED (ceil(tiles / 2), B*H): program p runs tile n - 1 - p, then tile p.
    Q, K, V and O share strides; D a power of two."""
    bh = tl.program_id(1)
    b, h = bh // H, bh % H
    off = b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h
    Q, K, V, O = Q + off, K + off, V + off, O + off
    if PAIRED:  # two calls: 168 / 214 / 181 registers at CONFIGS (a runtime loop of one or two tiles: 200 / 216 / 184)
        last = tl.cdiv(N, BLOCK_M) - 1 - tl.program_id(0)
        _query_tile(Q, K, V, O, LSE, last, bh, h, stride_n, N, qk_scale, D, BLOCK_M, BLOCK_N)
        if tl.program_id(0) < last:
            _query_tile(Q, K, V, O, LSE, tl.program_id(0), bh, h, stride_n, N, qk_scale, D, BLOCK_M, BLOCK_N)
    else:
        _query_tile(Q, K, V, O, LSE, tl.program_id(0), bh, h, stride_n, N, qk_scale, D, BLOCK_M, BLOCK_N)


def forward(q, k, v, variant: str, config=CONFIGS[0]) -> tuple[torch.Tensor, torch.Tensor]:
    """(o, lse base 2) of causal attention over (B, H, N, D) contiguous q, k, v."""
    B, H, N, D = q.shape
    m, n, warps, stages = config
    o, lse = torch.empty_like(q), torch.empty((B, H, N), device=q.device, dtype=torch.float32)
    paired = variant == "paired"
    tiles = triton.cdiv(N, m)
    grid = (triton.cdiv(tiles, 2) if paired else tiles, B * H)
    fwd_paired[grid](q, k, v, o, lse, q.stride(0), q.stride(1), q.stride(2), H, N, LOG2E / math.sqrt(D), D=D,
                     BLOCK_M=m, BLOCK_N=n, PAIRED=paired, num_warps=warps, num_stages=stages)
    return o, lse


def check() -> None:
    """Interpreter (CPU): both variants against a float64 reference, fp32 inputs, at tile counts odd and even and
    with a sequence end inside a tile."""
    from kernels.reference import reference_attention

    torch.manual_seed(0)
    for N in (80, 96, 100):  # 32-row tiles: 3, 3 and 4 of them; 16-row tiles: 5, 6, 7
        q, k, v = (torch.randn(1, 2, N, 64) for _ in range(3))
        ref = reference_attention(q, k, v, causal=True)
        for config in ((32, 16, 4, 1), (16, 16, 4, 1)):
            for variant in VARIANTS:
                o, _ = forward(q, k, v, variant, config)
                err = ((o.double() - ref).norm() / ref.norm()).item()
                print(f"N={N} {config} {variant}: relative error {err:.1e}", flush=True)
                assert err < 1e-5, err


def compile_report(variant: str, config) -> str:
    """Compile for sm_90 on a machine without a GPU (a faked driver whose launch does nothing): registers, spills,
    and whether ptxas serialised the products."""
    from host_time_cpu import FakeHopper
    from kernel_resources_cpu import ptxas_log, resources
    from triton.runtime.driver import driver

    dump = Path(tempfile.mkdtemp(prefix="paired_"))
    os.environ.update(TRITON_KERNEL_DUMP="1", TRITON_DUMP_DIR=str(dump), TRITON_ALWAYS_COMPILE="1")
    driver.set_active(FakeHopper())
    q, k, v = (torch.empty(1, 2, 1024, 64, dtype=torch.bfloat16) for _ in range(3))
    forward(q, k, v, variant, config)
    (cubin,) = dump.glob("*/fwd_paired.cubin")
    use = resources(cubin)
    serialised = "serialized" in ptxas_log(cubin.with_suffix(".ptx"), dump / "again.cubin")
    shutil.rmtree(dump)
    return (f"{variant:7s} {config}: registers {use['REG']}, spill {use['STACK']} B"
            f"{', wgmma serialised' if serialised else ''}")


def time_shape(N: int, configs, variants) -> None:
    """One shape, causal, D = 64, 16K tokens: the library's forward (tuned), cuDNN's, and each variant at each
    config; CUDA-graph medians."""
    import torch.nn.functional as F

    from kernels import flash_attention

    B, H, D = 16384 // N, 12, 64
    q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    bench = triton.testing.do_bench_cudagraph
    with torch.no_grad():
        ref = flash_attention(q, k, v, causal=True).float()
        ms = {"library": bench(lambda: flash_attention(q, k, v, causal=True))}
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
            ms["cudnn"] = bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
        for config in configs:
            for variant in variants:
                o, _ = forward(q, k, v, variant, config)
                name = f"{variant} {config[0]}x{config[1]}x{config[2]}x{config[3]}"
                ms[name] = bench(lambda c=config, w=variant: forward(q, k, v, w, c))
                err = ((o.float() - ref).norm() / ref.norm()).item()
                print(f"  {name}: error against the library's output {err:.1e}", flush=True)
    print(f"N={N} causal forward ms: " + ", ".join(f"{name} {t:.4f} ({ms['library'] / t:.3f})"
                                                   for name, t in ms.items()) + "  (in brackets: library / it)",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("check", "compile", "time"))
    ap.add_argument("--seqs", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--configs", nargs="+", default=[",".join(map(str, c)) for c in CONFIGS],
                    help="BLOCK_M,BLOCK_N,warps,stages each (default: %(default)s)")
    args = ap.parse_args()
    configs = [tuple(int(x) for x in c.split(",")) for c in args.configs]
    if args.mode == "check":
        check()
    elif args.mode == "compile":
        for config in configs:
            for variant in args.variants:  # one process each: Triton's in-memory cache would skip the dump
                subprocess.run([sys.executable, __file__, "--one", variant, ",".join(map(str, config))], check=True)
    else:
        for N in args.seqs:
            time_shape(N, configs, args.variants)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        print(compile_report(sys.argv[2], tuple(int(x) for x in sys.argv[3].split(","))), flush=True)
    else:
        main()
