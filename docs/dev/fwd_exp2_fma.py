"""FlashAttention-4's two softmax tricks in the dense forward: an experiment beside the library's kernel, not
routed. At D = 64 the SFU's 16 exp2 per clock and SM take about as long as the tile's two matrix products, and a
warpgroup's softmax waits for its score product, so the softmax sits on the critical path; without the causal
mask our forward runs at 0.91-0.92x cuDNN's (kernel notes, fifteenth session).

exp2 on the FMA units: 2^x = 2^round(x) * p(x - round(x)), p a degree-3 fit on [-1/2, 1/2] (relative error
7.5e-5, far below bf16's 3.9e-3, in which P meets V); round(x) by adding 1.5 * 2^23 (its integer lands in the low
mantissa bits), moved into the exponent with one shift and one integer add. ~7 FMA-pipe and 2 integer operations
per element against one SFU slot: the pipes balance near a quarter of the elements (kernel notes).
Lazy rescaling: the running maximum is a reference, moved (and acc and the row sums rescaled) only when a row's
maximum passes it by more than 8 (log2), so most tiles skip BLOCK_M x D multiplies.
Variants of the unmasked key tiles (the masked ones run the library's loop), VARIANTS below:
    control   all exp2 on the SFU, rescaled every tile (this file's copy of the library's loop)
    half      half of every tile's exp2 on the FMA units (register-only split of neighbouring columns)
    quarter   the same in the first tile of every pair      eighth   in the first of every four
    lazy, lazy-quarter, lazy-half: the same with lazy rescaling

    TRITON_INTERPRET=1 python docs/dev/fwd_exp2_fma.py check     # CPU: each variant against a float64 reference
    python docs/dev/fwd_exp2_fma.py compile                      # CPU: registers, spills, MUFU / FFMA counts, sm_90
    python docs/dev/fwd_exp2_fma.py time [--seqs 4096 16384]     # GPU: beside the library's forward and cuDNN
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
from triton.runtime.errors import OutOfResources

sys.path.insert(0, str(Path.cwd()))
sys.path.insert(0, str(Path(__file__).parent))
from kernels.attention_fwd import _fwd_tiles, key_tile_ranges, key_tile_t, load_tile, program_tile  # noqa: E402

LOG2E = 1.4426950408889634
# name: (EVERY, LAZY): the first tile of every EVERY-th group of unmasked tiles splits its exp2 (0: none); LAZY:
# acc and the row sums rescaled only when a row's maximum grows by more than 8 (log2), FlashAttention-4's rule
VARIANTS = {"control": (0, False), "half": (1, False), "quarter": (2, False), "eighth": (4, False),
            "lazy": (0, True), "lazy-quarter": (2, True), "lazy-half": (1, True)}
CONFIGS = [(128, 64, 8, 3), (128, 128, 8, 3)]  # (BLOCK_M, BLOCK_N, warps, stages)


@triton.jit
def exp2_fma(x):
    """2^x for -126 <= x <= 0 (finite) without the SFU: 2^round(x) * p(x - round(x))."""
    x = tl.maximum(x, -126.0)
    t = x + 12582912.0  # 1.5 * 2^23: one ulp is 1 here, so t holds round(x) in its low mantissa bits
    f = x - (t - 12582912.0)
    p = ((0.05517167 * f + 0.24261114) * f + 0.69326097) * f + 0.99992806
    return (p.to(tl.int32, bitcast=True) + (t.to(tl.int32, bitcast=True) << 23)).to(tl.float32, bitcast=True)


@triton.jit
def _exp2(s, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, POLY: tl.constexpr):
    """exp2 of a tile; POLY: half of it (every other column) on the FMA units."""
    if POLY:
        a, b = tl.split(tl.reshape(s, (BLOCK_M, BLOCK_N // 2, 2)))
        return tl.reshape(tl.join(exp2_fma(a), tl.math.exp2(b)), (BLOCK_M, BLOCK_N))
    else:
        return tl.math.exp2(s)


@triton.jit
def _step(acc, l_i, m_i, q, K, V, stride_n, offs_d, i, N, qk_scale, D: tl.constexpr, BLOCK_M: tl.constexpr,
          BLOCK_N: tl.constexpr, POLY: tl.constexpr, LAZY: tl.constexpr):
    """One unmasked key tile, as the library's loop folds it. LAZY: m_i is a reference maximum, moved (and acc and
    l_i rescaled) only when some row's maximum passes it by more than 8 (P up to 2^8, safe in fp32 and bf16)."""
    offs_n, kT = key_tile_t(i, K, K, stride_n, offs_d, N, D, BLOCK_N, False, 1, False, True)
    qk = tl.dot(q, kT)
    m_tile = tl.max(qk, 1) * qk_scale
    if LAZY:
        if tl.max(m_tile - m_i, 0) > 8.0:  # one branch for the whole tile: m_i starts at -inf, so taken first
            m_new = tl.maximum(m_i, m_tile)
            alpha = tl.math.exp2(m_i - m_new)
            acc = acc * alpha[:, None]
            l_i = l_i * alpha
            m_i = m_new
        p = _exp2(qk * qk_scale - m_i[:, None], BLOCK_M, BLOCK_N, POLY)
        l_i = l_i + tl.sum(p, 1)
    else:
        m_new = tl.maximum(m_i, m_tile)
        p = _exp2(qk * qk_scale - m_new[:, None], BLOCK_M, BLOCK_N, POLY)
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        m_i = m_new
    v = load_tile(V, offs_n, stride_n, offs_d, N, D, False, True)
    acc = tl.dot(p.to(v.dtype), v, acc)
    return acc, l_i, m_i


@triton.jit
def _unmasked_tiles(acc, l_i, m_i, q, K, V, stride_n, offs_d, lo, hi, N, qk_scale, D: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, EVERY: tl.constexpr, LAZY: tl.constexpr):
    if EVERY <= 1:
        for i in tl.range(lo, hi):
            acc, l_i, m_i = _step(acc, l_i, m_i, q, K, V, stride_n, offs_d, i, N, qk_scale, D, BLOCK_M, BLOCK_N,
                                  EVERY == 1, LAZY)
    else:  # groups of EVERY tiles, the first with the split, then the tiles left over
        groups_hi = lo + (hi - lo) // EVERY * EVERY
        for i in tl.range(lo, groups_hi, EVERY):
            acc, l_i, m_i = _step(acc, l_i, m_i, q, K, V, stride_n, offs_d, i, N, qk_scale, D, BLOCK_M, BLOCK_N,
                                  True, LAZY)
            for u in tl.static_range(1, EVERY):
                acc, l_i, m_i = _step(acc, l_i, m_i, q, K, V, stride_n, offs_d, i + u, N, qk_scale, D, BLOCK_M,
                                      BLOCK_N, False, LAZY)
        for i in tl.range(groups_hi, hi):
            acc, l_i, m_i = _step(acc, l_i, m_i, q, K, V, stride_n, offs_d, i, N, qk_scale, D, BLOCK_M, BLOCK_N,
                                  False, LAZY)
    return acc, l_i, m_i


@triton.jit
def fwd_fma(Q, K, V, O, LSE, stride_b, stride_h, stride_n, H, N, qk_scale, D: tl.constexpr, BLOCK_M: tl.constexpr,
            BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, LPT: tl.constexpr, EVERY: tl.constexpr,
            LAZY: tl.constexpr):
    """Dense forward without dropout; Q, K, V and O share strides, D a power of two."""
    start_m, bh, b, h = program_tile(H, LPT, True)
    off = b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h
    Q, K, V, O = Q + off, K + off, V + off, O + off
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    q = load_tile(Q, offs_m, stride_n, offs_d, N, D, True, True)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    full_lo, full_hi, _, part_lo, part_hi, _ = key_tile_ranges(start_m, h, N, Q, Q, Q, Q, 0, 0, 0, 0, BLOCK_M,
                                                               BLOCK_N, CAUSAL, False, 0)
    acc, l_i, m_i = _unmasked_tiles(acc, l_i, m_i, q, K, V, stride_n, offs_d, full_lo, full_hi, N, qk_scale, D,
                                    BLOCK_M, BLOCK_N, EVERY, LAZY)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, K, V, stride_n, offs_m, offs_d, part_lo, part_hi, Q, Q, offs_m,
                               offs_m, bh, N, qk_scale, 0, D, BLOCK_N, CAUSAL, True, False, 1, False, True)
    tl.store(LSE + bh.to(tl.int64) * N + offs_m, m_i + tl.math.log2(l_i), mask=offs_m < N)
    o_ptrs = O + offs_m[:, None] * stride_n + offs_d[None, :]
    tl.store(o_ptrs, (acc / l_i[:, None]).to(O.dtype.element_ty), mask=offs_m[:, None] < N)


def forward(q, k, v, causal: bool, variant: str, config=CONFIGS[0]) -> tuple[torch.Tensor, torch.Tensor]:
    """(o, lse base 2) of (B, H, N, D) contiguous q, k, v; variant as VARIANTS names them."""
    every, lazy = VARIANTS[variant]
    B, H, N, D = q.shape
    m, n, warps, stages = config
    o, lse = torch.empty_like(q), torch.empty((B, H, N), device=q.device, dtype=torch.float32)
    lpt = causal and triton.next_power_of_2(N) >= 4096  # the library's order (kernels/attention.py, _grid)
    grid = (B * H, triton.cdiv(N, m)) if lpt else (triton.cdiv(N, m), B * H)
    fwd_fma[grid](q, k, v, o, lse, q.stride(0), q.stride(1), q.stride(2), H, N, LOG2E / math.sqrt(D), D=D,
                  BLOCK_M=m, BLOCK_N=n, CAUSAL=causal, LPT=lpt, EVERY=every, LAZY=lazy, num_warps=warps,
                  num_stages=stages)
    return o, lse


def check() -> None:
    """Interpreter (CPU): every variant within the fit's error of a float64 reference, fp32 inputs; scores large
    enough (std 3) that the lazy variants move their reference maximum more than once."""
    from kernels.reference import reference_attention

    torch.manual_seed(0)
    B, H, N, D = 1, 2, 200, 64
    q, k, v = (torch.randn(B, H, N, D) * s for s in (3.0, 3.0, 1.0))
    for causal in (False, True):
        ref = reference_attention(q, k, v, causal=causal)
        for variant in VARIANTS:
            o, _ = forward(q, k, v, causal, variant, config=(32, 16, 4, 1))
            err = ((o.double() - ref).norm() / ref.norm()).item()
            print(f"causal={causal} {variant}: relative error {err:.2e}", flush=True)
            assert err < 5e-4, err


def compile_report(variant: str, config, causal: bool) -> str:
    """Compile for sm_90 on a machine without a GPU (a faked driver whose launch does nothing) and count."""
    from host_time_cpu import FakeHopper
    from kernel_resources_cpu import CUOBJDUMP, memory_instructions, ptxas_log, resources
    from triton.runtime.driver import driver

    dump = Path(tempfile.mkdtemp(prefix="fwd_fma_"))
    os.environ.update(TRITON_KERNEL_DUMP="1", TRITON_DUMP_DIR=str(dump), TRITON_ALWAYS_COMPILE="1")
    driver.set_active(FakeHopper())
    q, k, v = (torch.empty(1, 2, 4096, 64, dtype=torch.bfloat16) for _ in range(3))
    try:
        forward(q, k, v, causal, variant, config)
    except OutOfResources as e:  # EVERY tiles a loop step, each pipelined over the config's stages
        return f"{variant} {config} causal={causal}: does not fit ({e})"
    (cubin,) = dump.glob("*/fwd_fma.cubin")
    use = resources(cubin)
    sass = subprocess.run([str(CUOBJDUMP), "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
    ops = {name: sass.count(name) for name in ("MUFU.EX2", "FFMA", "FMUL", "FADD", "HGMMA")}
    serialised = "serialized" in ptxas_log(cubin.with_suffix(".ptx"), dump / "again.cubin")
    shutil.rmtree(dump)
    return (f"{variant:16s} {config} causal={causal}: registers {use['REG']}, spill {use['STACK']} B, "
            f"{'wgmma serialised, ' if serialised else ''}{ops}, LDS {memory_instructions(sass)['LDS']}")


def time_shape(N: int, causal: bool, configs, variants) -> None:
    """One shape: the library's forward (tuned), cuDNN's, and each variant at each config; CUDA-graph medians."""
    import torch.nn.functional as F

    from kernels import flash_attention

    B, H, D = 16384 // N, 12, 64
    q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    bench = triton.testing.do_bench_cudagraph
    with torch.no_grad():
        ref = flash_attention(q, k, v, causal=causal).float()
        ms = {"library": bench(lambda: flash_attention(q, k, v, causal=causal))}
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
            ms["cudnn"] = bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))
        for config in configs:
            for variant in variants:
                try:
                    o, _ = forward(q, k, v, causal, variant, config)
                except OutOfResources:
                    continue
                name = f"{variant} {config[0]}x{config[1]}x{config[2]}"
                ms[name] = bench(lambda c=config, w=variant: forward(q, k, v, causal, w, c))
                err = ((o.float() - ref).norm() / ref.norm()).item()
                print(f"  {name}: error against the library's output {err:.1e}", flush=True)
    best = min(ms["library"], *[t for name, t in ms.items() if name.startswith("control")])
    print(f"N={N} causal={causal} forward ms: " + ", ".join(f"{name} {t:.4f} ({best / t:.3f})" for name, t in
                                                          ms.items()) + "  (in brackets: best control / it)",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("check", "compile", "time"))
    ap.add_argument("--seqs", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--causal", nargs="+", choices=("yes", "no"), default=["no", "yes"])
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--configs", nargs="+", default=[",".join(map(str, c)) for c in CONFIGS],
                    help="BLOCK_M,BLOCK_N,warps,stages each (default: %(default)s)")
    args = ap.parse_args()
    causals = [c == "yes" for c in args.causal]
    configs = [tuple(int(x) for x in c.split(",")) for c in args.configs]
    if args.mode == "check":
        check()
    elif args.mode == "compile":
        for config in configs:
            for variant in args.variants:  # one process each: Triton's in-memory cache would skip the dump
                subprocess.run([sys.executable, __file__, "--one", variant, ",".join(map(str, config)),
                                str(int(causals[0]))], check=True)
    else:
        for causal in causals:
            for N in args.seqs:
                time_shape(N, causal, configs, args.variants)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        print(compile_report(sys.argv[2], tuple(int(x) for x in sys.argv[3].split(",")), sys.argv[4] == "1"),
              flush=True)
    else:
        main()
