"""Attention backward for Hopper (sm_90) in Gluon: the two passes (dQ; dK and dV), warp-specialised as the forward.

Features
- dK/dV pass, one program per 128-row key tile: a load partition brings the tile's K and V once and streams Q and
  dO tiles by TMA through a ring of shared-memory slots; two consumer warpgroups own 64 key rows each and hold dK
  and dV in registers. Per query tile a consumer issues S^T = K Q^T and dP^T = V dO^T, waits, computes P^T and
  dS^T, and issues dV += P^T dO and dK += dS^T Q without waiting: those run while it waits for the next tile's
  products, and the other warpgroup's elementwise work fills the tensor cores' gaps.
- dQ pass, one program per 128-row query tile: the same with K and V streamed and dQ held (64 rows a consumer).
- No atomics: gradients are bitwise repeatable. The diagonal-straddling tiles are peeled into their own (masked)
  loops. The forward's LSE (base 2 of the scaled scores) comes in; the dQ pass, which runs first, computes delta =
  rowsum(dO * O) and writes it for the dK/dV pass.

Limits: those of kernels/attention_fwd_hopper.py (dense, no dropout, bf16 / fp16, D 64 or 128, N a multiple of 128,
heads in rows or in columns); dO in either layout.

Tested: compiled for sm_90 with triton 3.6 and 3.9 on the CPU; not yet run on a GPU.
"""

from __future__ import annotations

import torch
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

from .attention_fwd_hopper import (
    LOG2E,
    _barriers,
    _descriptor,
    _head_origin,
    _mma_layout,
    _rows_view,
    _tma_load,
    _tma_store,
)
from .attention_fwd_hopper import supports as forward_supports

BLOCK_KEYS = 128  # the dK/dV pass's key tile (64 rows a consumer) and the dQ pass's query tile
BLOCK_STREAMED = 64  # the tiles streamed past them
STAGES = 3
ROUTED_HEAD_DIMS: tuple[int, ...] = ()  # measured slower than the Triton passes at 64 and 128 (H200, seventh session)

# ----------------------------------------------------------------------------------------------------------------
# jit helpers
# ----------------------------------------------------------------------------------------------------------------


@gluon.jit
def _store_rows(desc, row, col, smem, value):
    """value -> smem -> TMA store at (row, col) of desc's view."""
    smem.store(value)
    fence_async_shared()
    _tma_store(desc, [row, col], smem)
    tma.store_wait(pendings=0)


# ----------------------------------------------------------------------------------------------------------------
# dK/dV pass
# ----------------------------------------------------------------------------------------------------------------


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
def _kv_loads(q_desc, k_desc, v_desc, do_desc, k_smem, v_smem, kv_bar, ring, N, H, HEAD_D: gl.constexpr,
              CAUSAL: gl.constexpr, IN_ROWS: gl.constexpr, DO_ROWS: gl.constexpr):
    """Load partition: the key tile's K and V once, then Q and dO of every query tile it meets."""
    q_smem, do_smem, ready, empty = ring
    STAGES: gl.constexpr = q_smem.shape[0]
    BLOCK_M: gl.constexpr = q_smem.shape[1]
    BLOCK_N: gl.constexpr = k_smem.shape[0]
    start_n, bh, lo, n_tiles, n_masked = _kv_program(N, BLOCK_M, BLOCK_N, CAUSAL)
    row, col = _head_origin(bh, N, H, HEAD_D, IN_ROWS)
    do_row, do_col = _head_origin(bh, N, H, HEAD_D, DO_ROWS)
    mbarrier.expect(kv_bar, k_desc.block_type.nbytes + v_desc.block_type.nbytes)
    _tma_load(k_desc, [row + start_n * BLOCK_N, col], kv_bar, k_smem)
    _tma_load(v_desc, [row + start_n * BLOCK_N, col], kv_bar, v_smem)
    for i in range(n_tiles):
        slot = i % STAGES
        mbarrier.wait(empty.index(slot), ((i // STAGES) & 1) ^ 1)  # the first round passes at once
        mbarrier.expect(ready.index(slot), q_desc.block_type.nbytes + do_desc.block_type.nbytes)
        _tma_load(q_desc, [row + (lo + i) * BLOCK_M, col], ready.index(slot), q_smem.index(slot))
        _tma_load(do_desc, [do_row + (lo + i) * BLOCK_M, do_col], ready.index(slot), do_smem.index(slot))


@gluon.jit
def _kv_tile(i, dk, dv, k_rows, v_rows, ring, LSE, Delta, m, offs_n, qk_scale, t_layout: gl.constexpr,
             a_layout: gl.constexpr, MASK: gl.constexpr):
    """Query tile i (m within the head) against this warpgroup's key rows."""
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
    mbarrier.arrive(empty.index((i + STAGES - 1) % STAGES), count=1, pred=i > 0)  # tile i - 1's products are done
    offs_m = m * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, t_layout))
    pT = gl.exp2(sT * qk_scale - gl.load(LSE + offs_m)[None, :])
    if MASK:
        pT = gl.where(offs_m[None, :] >= offs_n[:, None], pT, 0.0)
    dsT = pT * (dpT - gl.load(Delta + offs_m)[None, :])
    dv = warpgroup_mma(gl.convert_layout(pT.to(k_rows.dtype), a_layout), do_smem.index(slot), dv, is_async=True)
    dk = warpgroup_mma(gl.convert_layout(dsT.to(k_rows.dtype), a_layout), q_smem.index(slot), dk, is_async=True)
    return dk, dv


@gluon.jit
def _kv_consumer(dk_desc, dv_desc, k_smem, v_smem, kv_bar, ring, LSE, Delta, N, H, qk_scale, sm_scale,
                 HEAD_D: gl.constexpr, CAUSAL: gl.constexpr, OUT_ROWS: gl.constexpr, WG: gl.constexpr):
    """dK, dV of key rows WG * BLOCK_N / 2 .. of the tile, over every query tile from the diagonal on."""
    q_smem, do_smem, ready, empty = ring
    BLOCK_M: gl.constexpr = q_smem.shape[1]
    BLOCK_N: gl.constexpr = k_smem.shape[0]
    ROWS: gl.constexpr = BLOCK_N // 2
    t_layout: gl.constexpr = _mma_layout(4, BLOCK_M)
    g_layout: gl.constexpr = _mma_layout(4, HEAD_D)
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
    row, col = _head_origin(bh, N, H, HEAD_D, OUT_ROWS)
    row += start_n * BLOCK_N + WG * ROWS
    _store_rows(dk_desc, row, col, k_rows, (dk * sm_scale).to(k_smem.dtype))  # via its own K rows: only it read them
    _store_rows(dv_desc, row, col, v_rows, dv.to(v_smem.dtype))


@gluon.jit
def attn_bwd_kv_hopper(q_desc, k_desc, v_desc, do_desc, dk_desc, dv_desc, LSE, Delta, N, H, qk_scale, sm_scale,
                       HEAD_D: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                       CAUSAL: gl.constexpr, IN_ROWS: gl.constexpr, DO_ROWS: gl.constexpr, OUT_ROWS: gl.constexpr):
    gl.static_assert(BLOCK_N % BLOCK_M == 0, "causal: the key tile's diagonal on query tile edges")
    dtype: gl.constexpr = q_desc.dtype
    k_smem = gl.allocate_shared_memory(dtype, [BLOCK_N, HEAD_D], k_desc.layout)
    v_smem = gl.allocate_shared_memory(dtype, [BLOCK_N, HEAD_D], v_desc.layout)
    q_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_M, HEAD_D], q_desc.layout)
    do_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_M, HEAD_D], do_desc.layout)
    kv_bar = _barriers(1, 1).index(0)
    ring = (q_smem, do_smem, _barriers(STAGES, 1), _barriers(STAGES, 2))  # empty: one arrival per consumer
    gl.warp_specialize([(_kv_loads, (q_desc, k_desc, v_desc, do_desc, k_smem, v_smem, kv_bar, ring, N, H, HEAD_D,
                                     CAUSAL, IN_ROWS, DO_ROWS)),
                        (_kv_consumer, (dk_desc, dv_desc, k_smem, v_smem, kv_bar, ring, LSE, Delta, N, H, qk_scale,
                                        sm_scale, HEAD_D, CAUSAL, OUT_ROWS, 0)),
                        (_kv_consumer, (dk_desc, dv_desc, k_smem, v_smem, kv_bar, ring, LSE, Delta, N, H, qk_scale,
                                        sm_scale, HEAD_D, CAUSAL, OUT_ROWS, 1))], [4, 4], [240, 240])


# ----------------------------------------------------------------------------------------------------------------
# dQ pass
# ----------------------------------------------------------------------------------------------------------------


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
def _dq_loads(q_desc, k_desc, v_desc, do_desc, q_smem, do_smem, q_bar, ring, N, H, HEAD_D: gl.constexpr,
              CAUSAL: gl.constexpr, IN_ROWS: gl.constexpr, DO_ROWS: gl.constexpr):
    """Load partition: the query tile's Q and dO once, then K and V of every key tile it meets."""
    k_smem, v_smem, ready, empty = ring
    STAGES: gl.constexpr = k_smem.shape[0]
    BLOCK_N: gl.constexpr = k_smem.shape[1]
    BLOCK_M: gl.constexpr = q_smem.shape[0]
    start_m, bh, n_tiles, n_masked = _dq_program(N, BLOCK_M, BLOCK_N, CAUSAL)
    row, col = _head_origin(bh, N, H, HEAD_D, IN_ROWS)
    do_row, do_col = _head_origin(bh, N, H, HEAD_D, DO_ROWS)
    mbarrier.expect(q_bar, q_desc.block_type.nbytes + do_desc.block_type.nbytes)
    _tma_load(q_desc, [row + start_m * BLOCK_M, col], q_bar, q_smem)
    _tma_load(do_desc, [do_row + start_m * BLOCK_M, do_col], q_bar, do_smem)
    for j in range(n_tiles):
        slot = j % STAGES
        mbarrier.wait(empty.index(slot), ((j // STAGES) & 1) ^ 1)
        mbarrier.expect(ready.index(slot), k_desc.block_type.nbytes + v_desc.block_type.nbytes)
        _tma_load(k_desc, [row + j * BLOCK_N, col], ready.index(slot), k_smem.index(slot))
        _tma_load(v_desc, [row + j * BLOCK_N, col], ready.index(slot), v_smem.index(slot))


@gluon.jit
def _row_delta(O, o_strides, do_rows, bh, H, row0, layout: gl.constexpr):
    """rowsum(dO * O) in fp32 of rows row0 .. of one head: dO from shared memory, O from global memory."""
    stride_ob, stride_oh, stride_on = o_strides
    ROWS: gl.constexpr = do_rows.shape[0]
    HEAD_D: gl.constexpr = do_rows.shape[1]
    rows = row0 + gl.arange(0, ROWS, layout=gl.SliceLayout(1, layout))
    cols = gl.arange(0, HEAD_D, layout=gl.SliceLayout(0, layout))
    O += (bh // H).to(gl.int64) * stride_ob + (bh % H).to(gl.int64) * stride_oh
    o = gl.load(O + rows[:, None].to(gl.int64) * stride_on + cols[None, :])
    return gl.sum(o.to(gl.float32) * do_rows.load(layout).to(gl.float32), 1)


@gluon.jit
def _dq_tile(j, dq, q_rows, do_rows, ring, lse, delta, offs_m, qk_scale, s_layout: gl.constexpr,
             a_layout: gl.constexpr, MASK: gl.constexpr):
    """Key tile j against this warpgroup's query rows: S and dP, then dQ += dS K issued asynchronously."""
    k_smem, v_smem, ready, empty = ring
    STAGES: gl.constexpr = k_smem.shape[0]
    BLOCK_N: gl.constexpr = k_smem.shape[1]
    ROWS: gl.constexpr = q_rows.shape[0]
    slot = j % STAGES
    mbarrier.wait(ready.index(slot), (j // STAGES) & 1)
    zero = gl.zeros([ROWS, BLOCK_N], gl.float32, layout=s_layout)
    s = warpgroup_mma(q_rows, k_smem.index(slot).permute((1, 0)), zero, use_acc=False, is_async=True)
    dp = warpgroup_mma(do_rows, v_smem.index(slot).permute((1, 0)), zero, use_acc=False, is_async=True)
    s, dp, dq = warpgroup_mma_wait(0, deps=(s, dp, dq))
    mbarrier.arrive(empty.index((j + STAGES - 1) % STAGES), count=1, pred=j > 0)  # tile j - 1's products are done
    p = gl.exp2(s * qk_scale - lse[:, None])
    if MASK:
        offs_n = j * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
        p = gl.where(offs_m[:, None] >= offs_n[None, :], p, 0.0)
    ds = p * (dp - delta[:, None])
    return warpgroup_mma(gl.convert_layout(ds.to(q_rows.dtype), a_layout), k_smem.index(slot), dq, is_async=True)


@gluon.jit
def _dq_consumer(dq_desc, q_smem, do_smem, q_bar, ring, O, o_strides, LSE, Delta, N, H, qk_scale, sm_scale,
                 HEAD_D: gl.constexpr, CAUSAL: gl.constexpr, OUT_ROWS: gl.constexpr, WG: gl.constexpr):
    """dQ of query rows WG * BLOCK_M / 2 .. of the tile, over every key tile up to the diagonal (the last masked);
    first delta = rowsum(dO * O) of those rows, which it also writes for the dK/dV pass."""
    BLOCK_M: gl.constexpr = q_smem.shape[0]
    BLOCK_N: gl.constexpr = ring[0].shape[1]
    ROWS: gl.constexpr = BLOCK_M // 2
    s_layout: gl.constexpr = _mma_layout(4, BLOCK_N)
    g_layout: gl.constexpr = _mma_layout(4, HEAD_D)
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=g_layout, k_width=2)
    start_m, bh, n_tiles, n_masked = _dq_program(N, BLOCK_M, BLOCK_N, CAUSAL)
    q_rows, do_rows = q_smem.slice(WG * ROWS, ROWS), do_smem.slice(WG * ROWS, ROWS)
    offs_m = start_m * BLOCK_M + WG * ROWS + gl.arange(0, ROWS, layout=gl.SliceLayout(1, s_layout))
    lse = gl.load(LSE + bh * N + offs_m)
    mbarrier.wait(q_bar, 0)
    delta = _row_delta(O, o_strides, do_rows, bh, H, start_m * BLOCK_M + WG * ROWS, g_layout)
    delta = gl.convert_layout(delta, gl.SliceLayout(1, s_layout))
    gl.store(Delta + bh * N + offs_m, delta)
    dq = warpgroup_mma_init(gl.zeros([ROWS, HEAD_D], gl.float32, layout=g_layout))  # in flight across tiles
    for j in range(0, n_tiles - n_masked):
        dq = _dq_tile(j, dq, q_rows, do_rows, ring, lse, delta, offs_m, qk_scale, s_layout, a_layout, False)
    for j in range(n_tiles - n_masked, n_tiles):
        dq = _dq_tile(j, dq, q_rows, do_rows, ring, lse, delta, offs_m, qk_scale, s_layout, a_layout, True)
    dq = warpgroup_mma_wait(0, deps=(dq, ))
    row, col = _head_origin(bh, N, H, HEAD_D, OUT_ROWS)
    _store_rows(dq_desc, row + start_m * BLOCK_M + WG * ROWS, col, q_rows, (dq * sm_scale).to(q_smem.dtype))


@gluon.jit
def attn_bwd_dq_hopper(q_desc, k_desc, v_desc, do_desc, dq_desc, O, stride_ob, stride_oh, stride_on, LSE, Delta, N, H,
                       qk_scale, sm_scale,
                       HEAD_D: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                       CAUSAL: gl.constexpr, IN_ROWS: gl.constexpr, DO_ROWS: gl.constexpr, OUT_ROWS: gl.constexpr):
    gl.static_assert(BLOCK_M % BLOCK_N == 0, "causal: the query tile's diagonal on key tile edges")
    dtype: gl.constexpr = q_desc.dtype
    q_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, HEAD_D], q_desc.layout)
    do_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, HEAD_D], do_desc.layout)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_D], k_desc.layout)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_D], v_desc.layout)
    q_bar = _barriers(1, 1).index(0)
    ring = (k_smem, v_smem, _barriers(STAGES, 1), _barriers(STAGES, 2))  # empty: one arrival per consumer
    o_strides = (stride_ob, stride_oh, stride_on)
    gl.warp_specialize([(_dq_loads, (q_desc, k_desc, v_desc, do_desc, q_smem, do_smem, q_bar, ring, N, H, HEAD_D,
                                     CAUSAL, IN_ROWS, DO_ROWS)),
                        (_dq_consumer, (dq_desc, q_smem, do_smem, q_bar, ring, O, o_strides, LSE, Delta, N, H,
                                        qk_scale, sm_scale, HEAD_D, CAUSAL, OUT_ROWS, 0)),
                        (_dq_consumer, (dq_desc, q_smem, do_smem, q_bar, ring, O, o_strides, LSE, Delta, N, H,
                                        qk_scale, sm_scale, HEAD_D, CAUSAL, OUT_ROWS, 1))], [4, 4], [240, 240])


# ----------------------------------------------------------------------------------------------------------------
# launcher
# ----------------------------------------------------------------------------------------------------------------


def supports(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, dropout_p: float,
             sparse: bool) -> bool:
    """Whether these kernels serve the backward: the forward's conditions at ROUTED_HEAD_DIMS, and dO in a TMA
    view."""
    return (forward_supports(q, k, v, dropout_p=dropout_p, sparse=sparse, head_dims=ROUTED_HEAD_DIMS)
            and do.dtype == q.dtype and _rows_view(do) is not None)


def backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
             lse: torch.Tensor, dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, *, causal: bool,
             scale: float) -> None:
    """dQ, dK, dV into dq, dk, dv (one layout: heads in rows or in columns). lse: the forward's (B, H, N). The dQ
    pass runs first: it writes delta = rowsum(dO * O), which the dK/dV pass reads."""
    B, H, N, D = q.shape
    lse = lse.contiguous()
    delta = torch.empty_like(lse)
    layouts = dict(IN_ROWS=_rows_view(q)[2], DO_ROWS=_rows_view(do)[2], OUT_ROWS=_rows_view(dq)[2])
    scales = (scale * LOG2E, scale)
    # 4 launch warps load; 168 registers x 12 warps is the register file, reallocated 24 / 240 / 240
    attn_bwd_dq_hopper[(N // BLOCK_KEYS, B * H)](
        _descriptor(q, BLOCK_KEYS), _descriptor(k, BLOCK_STREAMED), _descriptor(v, BLOCK_STREAMED),
        _descriptor(do, BLOCK_KEYS), _descriptor(dq, BLOCK_KEYS // 2), o, *o.stride()[:3], lse, delta, N, H, *scales,
        HEAD_D=D, BLOCK_M=BLOCK_KEYS, BLOCK_N=BLOCK_STREAMED, STAGES=STAGES, CAUSAL=causal, **layouts, num_warps=4,
        maxnreg=168)
    attn_bwd_kv_hopper[(N // BLOCK_KEYS, B * H)](
        _descriptor(q, BLOCK_STREAMED), _descriptor(k, BLOCK_KEYS), _descriptor(v, BLOCK_KEYS),
        _descriptor(do, BLOCK_STREAMED), _descriptor(dk, BLOCK_KEYS // 2), _descriptor(dv, BLOCK_KEYS // 2), lse,
        delta, N, H, *scales, HEAD_D=D, BLOCK_M=BLOCK_STREAMED, BLOCK_N=BLOCK_KEYS, STAGES=STAGES, CAUSAL=causal,
        **layouts, num_warps=4, maxnreg=168)
