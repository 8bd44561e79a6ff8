"""Prototype: the attention forward and both backward passes (dQ; dK, dV) in Gluon for Hopper, in
FlashAttention-3's structure: a load partition streams tiles by TMA into a ring of shared-memory slots, two
consumer warpgroups own half a tile's rows each (registers reallocated 24 / 240 / 240); in the forward each consumer
also overlaps the softmax of S_j with P_{j-1} V_{j-1} (docs/dev/kernel-notes.md, sixth session). Experiment: it
checks itself against an fp32 reference beside kernels.flash_attention and times itself beside our kernels and
cuDNN. The forward is the library's (kernels/attention_fwd_hopper.py), called here beside the backward passes.

    python docs/dev/gluon_attention_hopper.py [--backward]     # a Hopper GPU, triton 3.6 (triton.experimental.gluon)
    python docs/dev/gluon_attention_hopper.py --compile-only   # no GPU: compile every variant for sm_90 (faked driver)

Measured on the H200 (sixth session): the forward, specialised, 3 slots, causal 16K: D = 128 1.26 ms (cuDNN 1.46),
D = 64 0.97 (cuDNN 0.97). The backward passes here are the specialised rewrite, compiled (triton 3.6, sm_90a,
pipelined; the dK/dV pass spills 8 bytes at D = 128), not yet run; the first, unspecialised versions ran at
0.54-0.84x our Triton passes' speed. Triton 3.9 renamed tma.async_copy_global_to_shared to async_load.

Scope: bf16/fp16, (B, H, N, D) contiguous, D in {64, 128}, N a multiple of the tile, causal or not, no dropout or
block mask.
"""

import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_init,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

LOG2E = 1.4426950408889634
# The dK/dV pass's query tile per head dim (key tile 128, a warpgroup on each half).
KV_BLOCK_M = {64: (64,), 128: (64,)}  # 128 x 128 at D = 64: ptxas serialises it


@triton.constexpr_function
def mma_layout(num_warps, n):
    """Accumulator layout of a wgmma over rows split across all warps, n columns per instruction."""
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, n, 16])


@gluon.jit
def _barriers(COUNT: gl.constexpr, ARRIVALS: gl.constexpr = 1):
    """COUNT mbarriers, each completed by ARRIVALS arrivals (a TMA transaction counts as one)."""
    bars = gl.allocate_shared_memory(gl.int64, [COUNT, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(COUNT):
        mbarrier.init(bars.index(i), count=ARRIVALS)
    return bars


@gluon.jit
def _store_tile(desc, row, smem, value):
    """value -> smem -> TMA store at rows row .. of desc's tensor."""
    smem.store(value)
    fence_async_shared()
    tma.async_copy_shared_to_global(desc, [row, 0], smem)
    tma.store_wait(pendings=0)


@gluon.jit
def _kv_ring(k_desc, v_desc, STAGES: gl.constexpr):
    """Shared-memory ring of STAGES key / value tiles and their barriers."""
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
    return k_smem, v_smem, _barriers(STAGES), _barriers(STAGES)


@gluon.jit
def _load_kv(k_desc, v_desc, k_smem, v_smem, k_bars, v_bars, row, tile, STAGES: gl.constexpr, pred):
    """TMA of key tile `tile` (rows row .. row + BLOCK_N of this head) into its ring slot."""
    slot = tile % STAGES
    mbarrier.expect(k_bars.index(slot), k_desc.block_type.nbytes, pred=pred)
    tma.async_copy_global_to_shared(k_desc, [row, 0], k_bars.index(slot), k_smem.index(slot), pred=pred)
    mbarrier.expect(v_bars.index(slot), v_desc.block_type.nbytes, pred=pred)
    tma.async_copy_global_to_shared(v_desc, [row, 0], v_bars.index(slot), v_smem.index(slot), pred=pred)


@gluon.jit
def _kv_program(N, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr):
    """(key tile, batch*head, first query tile, query tiles, of which the first n_masked straddle the diagonal)."""
    start_n = gl.program_id(0)  # causal: the first key tiles see the most query tiles, so they start first
    lo = 0
    n_masked = 0
    if CAUSAL:
        lo = start_n * (BLOCK_N // BLOCK_M)
        n_masked = BLOCK_N // BLOCK_M
    return start_n, gl.program_id(1), lo, N // BLOCK_M - lo, n_masked


@gluon.jit
def _bwd_kv_loads(q_desc, k_desc, v_desc, do_desc, k_smem, v_smem, kv_bar, ring, N, CAUSAL: gl.constexpr):
    """The dK/dV pass's load partition: the key tile's K and V once, then Q and dO of every query tile it meets."""
    q_smem, do_smem, ready, empty = ring
    STAGES: gl.constexpr = q_smem.shape[0]
    BLOCK_M: gl.constexpr = q_smem.shape[1]
    BLOCK_N: gl.constexpr = k_smem.shape[0]
    start_n, bh, lo, n_tiles, n_masked = _kv_program(N, BLOCK_M, BLOCK_N, CAUSAL)
    mbarrier.expect(kv_bar, k_desc.block_type.nbytes + v_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(k_desc, [bh * N + start_n * BLOCK_N, 0], kv_bar, k_smem)
    tma.async_copy_global_to_shared(v_desc, [bh * N + start_n * BLOCK_N, 0], kv_bar, v_smem)
    for i in range(n_tiles):
        slot = i % STAGES
        mbarrier.wait(empty.index(slot), ((i // STAGES) & 1) ^ 1)
        mbarrier.expect(ready.index(slot), q_desc.block_type.nbytes + do_desc.block_type.nbytes)
        row = bh * N + (lo + i) * BLOCK_M
        tma.async_copy_global_to_shared(q_desc, [row, 0], ready.index(slot), q_smem.index(slot))
        tma.async_copy_global_to_shared(do_desc, [row, 0], ready.index(slot), do_smem.index(slot))


@gluon.jit
def _kv_tile(i, dk, dv, k_rows, v_rows, ring, LSE, Delta, m, offs_n, qk_scale, t_layout: gl.constexpr,
             a_layout: gl.constexpr, MASK: gl.constexpr):
    """Query tile i (m within the head): S^T and dP^T, then dV += P^T dO and dK += dS^T Q issued asynchronously;
    they run while this warpgroup waits for the next tile's S^T (the other warpgroup's elementwise work fills the
    gap). Frees query tile i - 1's slot, whose products the wait retired."""
    q_smem, do_smem, ready, empty = ring
    STAGES: gl.constexpr = q_smem.shape[0]
    BLOCK_M: gl.constexpr = q_smem.shape[1]
    ROWS: gl.constexpr = k_rows.shape[0]
    slot = i % STAGES
    mbarrier.wait(ready.index(slot), (i // STAGES) & 1)
    zero = gl.zeros([ROWS, BLOCK_M], gl.float32, layout=t_layout)
    sT = warpgroup_mma(k_rows, q_smem.index(slot).permute((1, 0)), zero, use_acc=False, is_async=True)
    dpT = warpgroup_mma(v_rows, do_smem.index(slot).permute((1, 0)), zero, use_acc=False, is_async=True)
    sT, dpT, dk, dv = warpgroup_mma_wait(0, deps=(sT, dpT, dk, dv))
    mbarrier.arrive(empty.index((i + STAGES - 1) % STAGES), count=1, pred=i > 0)
    offs_m = m * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, t_layout))
    pT = gl.exp2(sT * qk_scale - gl.load(LSE + offs_m)[None, :])
    if MASK:
        pT = gl.where(offs_m[None, :] >= offs_n[:, None], pT, 0.0)
    dsT = pT * (dpT - gl.load(Delta + offs_m)[None, :])
    dv = warpgroup_mma(gl.convert_layout(pT.to(k_rows.dtype), a_layout), do_smem.index(slot), dv, is_async=True)
    dk = warpgroup_mma(gl.convert_layout(dsT.to(k_rows.dtype), a_layout), q_smem.index(slot), dk, is_async=True)
    return dk, dv


@gluon.jit
def _bwd_kv_consumer(dk_desc, dv_desc, k_smem, v_smem, kv_bar, ring, LSE, Delta, N, qk_scale, sm_scale,
                     HEAD_D: gl.constexpr, CAUSAL: gl.constexpr, WG: gl.constexpr):
    """dK, dV of rows WG * BLOCK_N / 2 .. of the key tile, over every query tile from the diagonal on."""
    q_smem, do_smem, ready, empty = ring
    BLOCK_M: gl.constexpr = q_smem.shape[1]
    BLOCK_N: gl.constexpr = k_smem.shape[0]
    ROWS: gl.constexpr = BLOCK_N // 2
    t_layout: gl.constexpr = mma_layout(4, BLOCK_M)
    g_layout: gl.constexpr = mma_layout(4, HEAD_D)
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=g_layout, k_width=2)
    start_n, bh, lo, n_tiles, n_masked = _kv_program(N, BLOCK_M, BLOCK_N, CAUSAL)
    k_rows, v_rows = k_smem.slice(WG * ROWS, ROWS), v_smem.slice(WG * ROWS, ROWS)
    offs_n = start_n * BLOCK_N + WG * ROWS + gl.arange(0, ROWS, layout=gl.SliceLayout(1, t_layout))
    LSE += bh * N
    Delta += bh * N
    dk = warpgroup_mma_init(gl.zeros([ROWS, HEAD_D], gl.float32, layout=g_layout))  # in flight across tiles
    dv = warpgroup_mma_init(gl.zeros([ROWS, HEAD_D], gl.float32, layout=g_layout))
    mbarrier.wait(kv_bar, 0)
    for i in range(0, n_masked):
        dk, dv = _kv_tile(i, dk, dv, k_rows, v_rows, ring, LSE, Delta, lo + i, offs_n, qk_scale, t_layout, a_layout,
                          True)
    for i in range(n_masked, n_tiles):
        dk, dv = _kv_tile(i, dk, dv, k_rows, v_rows, ring, LSE, Delta, lo + i, offs_n, qk_scale, t_layout, a_layout,
                          False)
    dk, dv = warpgroup_mma_wait(0, deps=(dk, dv))
    row = bh * N + start_n * BLOCK_N + WG * ROWS
    _store_tile(dk_desc, row, k_rows, (dk * sm_scale).to(k_smem.dtype))  # through its own K rows: only it read them
    _store_tile(dv_desc, row, v_rows, dv.to(v_smem.dtype))


@gluon.jit
def attn_bwd_kv_hopper(q_desc, k_desc, v_desc, do_desc, dk_desc, dv_desc, LSE, Delta, N, qk_scale, sm_scale,
                       HEAD_D: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr,
                       STAGES: gl.constexpr):
    """dK, dV of one key tile (FlashAttention-2's key-tile pass), warp-specialised as the forward: a load partition
    streams Q and dO, two consumer warpgroups own half the key rows each. LSE, Delta: (B*H*N,) fp32 (base-2
    log-sum-exp, rowsum(dO * O))."""
    gl.static_assert(BLOCK_N % BLOCK_M == 0, "causal: the key tile's diagonal on query tile edges")
    dtype: gl.constexpr = q_desc.dtype
    k_smem = gl.allocate_shared_memory(dtype, [BLOCK_N, HEAD_D], k_desc.layout)
    v_smem = gl.allocate_shared_memory(dtype, [BLOCK_N, HEAD_D], v_desc.layout)
    q_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_M, HEAD_D], q_desc.layout)
    do_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_M, HEAD_D], do_desc.layout)
    kv_bar = _barriers(1).index(0)
    empty = _barriers(STAGES, 2)  # one arrival per consumer warpgroup
    ring = (q_smem, do_smem, _barriers(STAGES), empty)
    gl.warp_specialize([(_bwd_kv_loads, (q_desc, k_desc, v_desc, do_desc, k_smem, v_smem, kv_bar, ring, N, CAUSAL)),
                        (_bwd_kv_consumer, (dk_desc, dv_desc, k_smem, v_smem, kv_bar, ring, LSE, Delta, N, qk_scale,
                                            sm_scale, HEAD_D, CAUSAL, 0)),
                        (_bwd_kv_consumer, (dk_desc, dv_desc, k_smem, v_smem, kv_bar, ring, LSE, Delta, N, qk_scale,
                                            sm_scale, HEAD_D, CAUSAL, 1))], [4, 4], [240, 240])


@gluon.jit
def _dq_program(N, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr):
    """(query tile, batch*head, key tiles, of which the last n_masked straddle the diagonal)."""
    start_m = gl.num_programs(0) - 1 - gl.program_id(0)  # causal: the longest rows first
    n_tiles = N // BLOCK_N
    n_masked = 0
    if CAUSAL:
        n_tiles = (start_m + 1) * (BLOCK_M // BLOCK_N)
        n_masked = BLOCK_M // BLOCK_N
    return start_m, gl.program_id(1), n_tiles, n_masked


@gluon.jit
def _bwd_dq_loads(q_desc, k_desc, v_desc, do_desc, q_smem, do_smem, q_bar, ring, N, CAUSAL: gl.constexpr):
    """The dQ pass's load partition: the query tile's Q and dO once, then K and V of every key tile it meets."""
    k_smem, v_smem, k_ready, v_ready, empty = ring
    STAGES: gl.constexpr = k_smem.shape[0]
    BLOCK_N: gl.constexpr = k_smem.shape[1]
    BLOCK_M: gl.constexpr = q_smem.shape[0]
    start_m, bh, n_tiles, n_masked = _dq_program(N, BLOCK_M, BLOCK_N, CAUSAL)
    mbarrier.expect(q_bar, q_desc.block_type.nbytes + do_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [bh * N + start_m * BLOCK_M, 0], q_bar, q_smem)
    tma.async_copy_global_to_shared(do_desc, [bh * N + start_m * BLOCK_M, 0], q_bar, do_smem)
    for j in range(n_tiles):
        mbarrier.wait(empty.index(j % STAGES), ((j // STAGES) & 1) ^ 1)
        _load_kv(k_desc, v_desc, k_smem, v_smem, k_ready, v_ready, bh * N + j * BLOCK_N, j, STAGES, True)


@gluon.jit
def _dq_tile(j, dq, q_rows, do_rows, ring, lse, delta, offs_m, qk_scale, s_layout: gl.constexpr,
             a_layout: gl.constexpr, MASK: gl.constexpr):
    """Key tile j: S and dP, then dQ += dS K issued asynchronously (it runs while the next tile's S waits). Frees
    key tile j - 1's slot, whose products the wait retired."""
    k_smem, v_smem, k_ready, v_ready, empty = ring
    STAGES: gl.constexpr = k_smem.shape[0]
    BLOCK_N: gl.constexpr = k_smem.shape[1]
    ROWS: gl.constexpr = q_rows.shape[0]
    slot = j % STAGES
    mbarrier.wait(k_ready.index(slot), (j // STAGES) & 1)
    mbarrier.wait(v_ready.index(slot), (j // STAGES) & 1)
    zero = gl.zeros([ROWS, BLOCK_N], gl.float32, layout=s_layout)
    s = warpgroup_mma(q_rows, k_smem.index(slot).permute((1, 0)), zero, use_acc=False, is_async=True)
    dp = warpgroup_mma(do_rows, v_smem.index(slot).permute((1, 0)), zero, use_acc=False, is_async=True)
    s, dp, dq = warpgroup_mma_wait(0, deps=(s, dp, dq))
    mbarrier.arrive(empty.index((j + STAGES - 1) % STAGES), count=1, pred=j > 0)
    p = gl.exp2(s * qk_scale - lse[:, None])
    if MASK:
        offs_n = j * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
        p = gl.where(offs_m[:, None] >= offs_n[None, :], p, 0.0)
    ds = p * (dp - delta[:, None])
    return warpgroup_mma(gl.convert_layout(ds.to(q_rows.dtype), a_layout), k_smem.index(slot), dq, is_async=True)


@gluon.jit
def _bwd_dq_consumer(dq_desc, q_smem, do_smem, q_bar, ring, LSE, Delta, N, qk_scale, sm_scale, HEAD_D: gl.constexpr,
                     CAUSAL: gl.constexpr, WG: gl.constexpr):
    """dQ of rows WG * BLOCK_M / 2 .. of the query tile, over every key tile up to the diagonal (the last masked)."""
    BLOCK_M: gl.constexpr = q_smem.shape[0]
    BLOCK_N: gl.constexpr = ring[0].shape[1]
    ROWS: gl.constexpr = BLOCK_M // 2
    s_layout: gl.constexpr = mma_layout(4, BLOCK_N)
    g_layout: gl.constexpr = mma_layout(4, HEAD_D)
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=g_layout, k_width=2)
    start_m, bh, n_tiles, n_masked = _dq_program(N, BLOCK_M, BLOCK_N, CAUSAL)
    q_rows, do_rows = q_smem.slice(WG * ROWS, ROWS), do_smem.slice(WG * ROWS, ROWS)
    offs_m = start_m * BLOCK_M + WG * ROWS + gl.arange(0, ROWS, layout=gl.SliceLayout(1, s_layout))
    lse = gl.load(LSE + bh * N + offs_m)
    delta = gl.load(Delta + bh * N + offs_m)
    dq = warpgroup_mma_init(gl.zeros([ROWS, HEAD_D], gl.float32, layout=g_layout))  # in flight across tiles
    mbarrier.wait(q_bar, 0)
    for j in range(0, n_tiles - n_masked):
        dq = _dq_tile(j, dq, q_rows, do_rows, ring, lse, delta, offs_m, qk_scale, s_layout, a_layout, False)
    for j in range(n_tiles - n_masked, n_tiles):
        dq = _dq_tile(j, dq, q_rows, do_rows, ring, lse, delta, offs_m, qk_scale, s_layout, a_layout, True)
    dq = warpgroup_mma_wait(0, deps=(dq, ))
    _store_tile(dq_desc, bh * N + start_m * BLOCK_M + WG * ROWS, q_rows, (dq * sm_scale).to(q_smem.dtype))


@gluon.jit
def attn_bwd_dq_hopper(q_desc, k_desc, v_desc, do_desc, dq_desc, LSE, Delta, N, qk_scale, sm_scale,
                       HEAD_D: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr,
                       STAGES: gl.constexpr):
    """dQ of one query tile (the two-pass backward's first pass), warp-specialised as the forward."""
    gl.static_assert(BLOCK_M % BLOCK_N == 0, "causal: the query tile's diagonal on key tile edges")
    q_smem = gl.allocate_shared_memory(q_desc.dtype, [BLOCK_M, HEAD_D], q_desc.layout)
    do_smem = gl.allocate_shared_memory(do_desc.dtype, [BLOCK_M, HEAD_D], do_desc.layout)
    q_bar = _barriers(1).index(0)
    k_smem, v_smem, k_ready, v_ready = _kv_ring(k_desc, v_desc, STAGES)
    empty = _barriers(STAGES, 2)  # one arrival per consumer warpgroup
    ring = (k_smem, v_smem, k_ready, v_ready, empty)
    gl.warp_specialize([(_bwd_dq_loads, (q_desc, k_desc, v_desc, do_desc, q_smem, do_smem, q_bar, ring, N, CAUSAL)),
                        (_bwd_dq_consumer, (dq_desc, q_smem, do_smem, q_bar, ring, LSE, Delta, N, qk_scale, sm_scale,
                                            HEAD_D, CAUSAL, 0)),
                        (_bwd_dq_consumer, (dq_desc, q_smem, do_smem, q_bar, ring, LSE, Delta, N, qk_scale, sm_scale,
                                            HEAD_D, CAUSAL, 1))], [4, 4], [240, 240])


def _descriptor(t: torch.Tensor, block: int) -> TensorDescriptor:
    """TMA descriptor of a contiguous (B, H, N, D) tensor seen as (B*H*N, D) rows, moved `block` rows at a time."""
    B, H, N, D = t.shape
    layout = gl.NVMMASharedLayout.get_default_for([block, D], gl.bfloat16 if t.dtype == torch.bfloat16 else gl.float16)
    return TensorDescriptor(t.view(B * H * N, D), [B * H * N, D], [D, 1], [block, D], layout)


def attention_fwd(q, k, v, causal, pingpong=False):
    """(o, lse with base 2) from the library's Gluon forward (kernels/attention_fwd_hopper.py)."""
    from kernels import attention_fwd_hopper as hopper

    o, lse = torch.empty_like(q), q.new_empty(q.shape[:3], dtype=torch.float32)
    hopper.forward(q, k, v, o, lse, causal=causal, scale=q.shape[-1] ** -0.5, pingpong=pingpong)
    return o, lse


def attention_bwd_kv(q, k, v, do, lse, delta, causal, block_m=64, block_n=128, stages=3):
    """(dk, dv) for (B, H, N, D) contiguous q, k, v, dO, the forward's lse (base 2) and delta = rowsum(dO * O)."""
    B, H, N, D = q.shape
    assert N % block_n == 0 and D in (64, 128) and all(t.is_contiguous() for t in (q, k, v, do))
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    attn_bwd_kv_hopper[(N // block_n, B * H)](
        _descriptor(q, block_m), _descriptor(k, block_n), _descriptor(v, block_n), _descriptor(do, block_m),
        _descriptor(dk, block_n // 2), _descriptor(dv, block_n // 2), lse.contiguous(), delta.contiguous(), N,
        LOG2E / math.sqrt(D), 1 / math.sqrt(D), HEAD_D=D, BLOCK_M=block_m, BLOCK_N=block_n, CAUSAL=causal,
        STAGES=stages, num_warps=4, maxnreg=168)
    return dk, dv


def attention_bwd_dq(q, k, v, do, lse, delta, causal, block_m=128, block_n=64, stages=3):
    """dQ for (B, H, N, D) contiguous q, k, v, dO, the forward's lse (base 2) and delta = rowsum(dO * O)."""
    B, H, N, D = q.shape
    assert N % block_m == 0 and D in (64, 128) and all(t.is_contiguous() for t in (q, k, v, do))
    dq = torch.empty_like(q)
    attn_bwd_dq_hopper[(N // block_m, B * H)](
        _descriptor(q, block_m), _descriptor(k, block_n), _descriptor(v, block_n), _descriptor(do, block_m),
        _descriptor(dq, block_m // 2), lse.contiguous(), delta.contiguous(), N, LOG2E / math.sqrt(D),
        1 / math.sqrt(D), HEAD_D=D, BLOCK_M=block_m, BLOCK_N=block_n, CAUSAL=causal, STAGES=stages, num_warps=4,
        maxnreg=168)
    return dq


def compile_only() -> None:
    """Compile every variant for sm_90 on a machine without a GPU (docs/dev/host_time_cpu.py's faked driver); print
    each kernel's registers and spill bytes (ptxas, via kernel_resources_cpu.py) and its wgmma waits (PTX)."""
    dump = Path(tempfile.mkdtemp(prefix="gluon_dump_"))
    os.environ.update(TRITON_KERNEL_DUMP="1", TRITON_DUMP_DIR=str(dump), TRITON_ALWAYS_COMPILE="1")
    sys.path[:0] = [str(Path(__file__).parent), str(Path.cwd())]
    from host_time_cpu import FakeHopper
    from kernel_resources_cpu import resources
    from triton.runtime.driver import driver

    driver.set_active(FakeHopper())

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"

    def compiled(name: str, what: str, launch) -> None:
        shutil.rmtree(dump, ignore_errors=True)
        launch()
        (cubin,) = dump.glob(f"*/{name}.cubin")
        use = resources(cubin)
        ptx = cubin.with_suffix(".ptx")
        waits = re.findall(r"wgmma\.wait_group\.sync\.aligned (\d)", ptx.read_text())
        # ptxas warns (C7511) when it serialises the wgmma pipeline: every product then waits out its latency
        log = subprocess.run([str(ptxas), "-arch=sm_90a", "-v", str(ptx), "-o", str(dump / "check.cubin")],
                             capture_output=True, text=True).stderr
        serial = "SERIALISED by ptxas" if "C7511" in log else "pipelined"
        print(f"{what}: registers {use['REG']}, spill {use['STACK']} B, wgmma waits {' '.join(waits)}, {serial}",
              flush=True)

    def inputs(D):
        return [torch.randn(1, 2, 1024, D, dtype=torch.bfloat16) for _ in range(4)] + [torch.zeros(1, 2, 1024)] * 2

    for D in (64, 128):
        for causal in (True, False):
            q, k, v, _, _, _ = inputs(D)
            for pingpong in (False, True):
                compiled("attn_fwd_hopper", f"forward D={D} causal={causal} ping-pong={pingpong}",
                         partial(attention_fwd, q, k, v, causal, pingpong))
    for D in (64, 128):
        for causal in (True, False):
            for block_m in KV_BLOCK_M[D]:
                q, k, v, do, lse, delta = inputs(D)
                compiled("attn_bwd_kv_hopper", f"dK/dV pass D={D} causal={causal} tiles {block_m}x128",
                         partial(attention_bwd_kv, q, k, v, do, lse, delta, causal, block_m=block_m))
            q, k, v, do, lse, delta = inputs(D)
            compiled("attn_bwd_dq_hopper", f"dQ pass D={D} causal={causal} tiles 128x64",
                     partial(attention_bwd_dq, q, k, v, do, lse, delta, causal))


def check_and_time(D: int, N: int, causal: bool, pingpong: bool = False) -> str:
    """Max error against an fp32 reference (ours beside it), and CUDA-graph times beside ours and cuDNN."""
    from kernels import flash_attention

    B, H = 16384 // N, 12
    q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal)
    o, _ = attention_fwd(q, k, v, causal, pingpong)
    err = (o.float() - ref).abs().max().item()
    err_ours = (flash_attention(q, k, v, causal=causal).float() - ref).abs().max().item()
    ms = triton.testing.do_bench_cudagraph(lambda: attention_fwd(q, k, v, causal, pingpong))
    ms_ours = triton.testing.do_bench_cudagraph(lambda: flash_attention(q, k, v, causal=causal))
    ms_cudnn = triton.testing.do_bench_cudagraph(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))
    return (f"forward D={D} N={N} causal={causal} ping-pong={pingpong}: max error {err:.2e} "
            f"(ours {err_ours:.2e}); {ms:.3f} ms, "
            f"ours {ms_ours:.3f}, cuDNN {ms_cudnn:.3f} ({ms_cudnn / ms:.2f}x cuDNN, {ms_ours / ms:.2f}x ours)")


def check_and_time_bwd(D: int, N: int, causal: bool) -> str:
    """dQ, dK and dV against an fp32 reference, ours beside it; each pass's time beside our kernel
    for it (torch.profiler over our whole backward). Uses our forward's O and LSE, so that only the pass is tested."""
    from torch.profiler import ProfilerActivity, profile

    from kernels import flash_attention
    from kernels.attention import attention_fwd as ours_fwd

    B, H = 16384 // N, 12
    q, k, v, do = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    x = [t.float().requires_grad_() for t in (q, k, v)]
    reference = torch.autograd.grad(F.scaled_dot_product_attention(*x, is_causal=causal), x, do.float())
    y = [t.clone().requires_grad_() for t in (q, k, v)]
    ours = torch.autograd.grad(flash_attention(*y, causal=causal), y, do)
    o, lse = ours_fwd(q, k, v, None, [], 0, causal, 0.0, 1 / math.sqrt(D), True)
    delta = (o.float() * do.float()).sum(-1)
    passes = {"dq": lambda: (attention_bwd_dq(q, k, v, do, lse, delta, causal), ),
              "kv": lambda: attention_bwd_kv(q, k, v, do, lse, delta, causal)}
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            torch.autograd.grad(flash_attention(*y, causal=causal), y, do)
        torch.cuda.synchronize()
    kernel_ms = {e.key: e.device_time_total / e.count / 1000 for e in prof.key_averages() if e.count >= 10}
    lines = []
    for name, run in passes.items():
        grads = run()
        which = [0] if name == "dq" else [1, 2]
        errors = ", ".join(f"d{'qkv'[w]} {(g.float() - reference[w]).abs().max().item():.2e} (ours "
                           f"{(ours[w].float() - reference[w]).abs().max().item():.2e})"
                           for g, w in zip(grads, which, strict=True))
        ms = triton.testing.do_bench_cudagraph(run)
        theirs = kernel_ms.get("attn_bwd_dq" if name == "dq" else "attn_bwd_kv", float("nan"))
        lines.append(f"{name} pass D={D} N={N} causal={causal}: max error {errors}; {ms:.3f} ms, our kernel "
                     f"{theirs:.3f} ({theirs / ms:.2f}x)")
    return "\n".join(lines)


def main() -> None:
    """The forward, then with --backward the two backward passes."""
    sys.path.insert(0, str(Path.cwd()))
    shapes = [(64, 4096, True), (64, 16384, True), (128, 16384, True), (128, 16384, False), (64, 4096, False)]
    runs = [check_and_time, partial(check_and_time, pingpong=True)]
    runs += [check_and_time_bwd] if "--backward" in sys.argv else []
    for run in runs:
        for D, N, causal in shapes:
            try:
                print(run(D, N, causal), flush=True)
            except Exception as e:  # report, go on
                print(f"{run} D={D} N={N} causal={causal}: {type(e).__name__}: {str(e)[:300]}", flush=True)


if __name__ == "__main__":
    compile_only() if "--compile-only" in sys.argv else main()
