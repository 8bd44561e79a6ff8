"""Attention backward for Hopper (sm_90) in Gluon: the two passes (dQ; dK and dV), warp-specialised as the forward.

Features
- dK/dV pass, one program per 128-row key tile: a load partition brings the tile's K and V once and streams Q and
  dO tiles by TMA through a ring of shared-memory slots; two consumer warpgroups own 64 key rows each and hold dK
  and dV in registers.
- dQ pass, one program per 128-row query tile: the same with K and V streamed and dQ held (64 rows a consumer).
- Overlap (FlashAttention-3's, `overlap=True`): per streamed tile a consumer issues the two score products (S^T and
  dP^T; S and dP), then the previous tile's gradient products (dV and dK; dQ), and waits for the score products
  only: the gradient products run on the tensor cores while it computes this tile's P and dS. P and dS go through
  shared memory: held in registers they leave ptxas too few of the 168 a thread has at launch to keep the products
  in flight, and it serialises every wgmma (C7512), as it does for the version without overlap.
- No atomics: gradients are bitwise repeatable. The diagonal-straddling tiles are peeled into their own (masked)
  loops. The forward's LSE (base 2 of the scaled scores) comes in; the dQ pass, which runs first, computes delta =
  rowsum(dO * O) and writes it for the dK/dV pass.

Limits: those of kernels/attention_fwd_hopper.py (dense, no dropout, bf16 / fp16, D 64 or 128, N a multiple of 128,
heads in rows or in columns); dO in either layout.

Tested: the version without overlap ran correct on an H200 (triton 3.6), 1.04-1.17x slower than the Triton passes
(docs/dev/kernel-notes.md, seventh session); both compile for sm_90 with triton 3.6 on the CPU, the overlapped one
pipelined (no C7512) with 0-8 bytes of spill. The overlapped passes have not run on a GPU yet.
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
OVERLAP = True
# 4 launch warps load; 168 registers x 12 warps is the register file, reallocated 24 / 240 / 240. ptxas keeps the
# consumers' wgmma in flight only if they fit 168 (else it serialises them: C7512), hence operands in shared memory.
MAXNREG = 168


def _stages(head_dim: int, overlap: bool) -> int:
    """Streamed-tile ring slots: with the overlap a slot is freed a tile later, so 4 where shared memory fits them
    (D = 64); 3 at D = 128."""
    return 4 if overlap and head_dim <= 64 else 3
# Head dims the library would route here: none until the overlapped passes beat the Triton ones on the GPU (the
# passes without overlap measured 1.04-1.17x slower: docs/dev/kernel-notes.md, seventh session).
ROUTED_HEAD_DIMS: tuple[int, ...] = ()

# ----------------------------------------------------------------------------------------------------------------
# jit helpers
# ----------------------------------------------------------------------------------------------------------------


@gluon.jit
def _operand_buffers(dtype: gl.constexpr, ROWS: gl.constexpr, COLS: gl.constexpr):
    """Two [ROWS, COLS] shared-memory tiles for a wgmma A operand (128-byte swizzle: COLS 16-bit values a row)."""
    layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    return gl.allocate_shared_memory(dtype, [2, ROWS, COLS], layout)


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
    """Query tile i (m within the head) against this warpgroup's key rows, without overlap: S^T and dP^T, a wait
    for every product in flight, P^T and dS^T, then dV and dK issued."""
    sT, dpT = _kv_scores(i, k_rows, v_rows, ring, t_layout)
    sT, dpT, dk, dv = warpgroup_mma_wait(0, deps=(sT, dpT, dk, dv))
    mbarrier.arrive(ring[3].index((i + ring[0].shape[0] - 1) % ring[0].shape[0]), count=1, pred=i > 0)
    pT, dsT = _kv_probs(sT, dpT, LSE, Delta, m, offs_n, qk_scale, t_layout, a_layout, MASK, k_rows.dtype)
    return _kv_accumulate(i, pT, dsT, dk, dv, ring)


@gluon.jit
def _kv_scores(i, k_rows, v_rows, ring, t_layout: gl.constexpr):
    """Issue S^T = K Q_i^T and dP^T = V dO_i^T for query tile i, once its Q and dO have landed."""
    q_smem, do_smem, ready, empty = ring
    STAGES: gl.constexpr = q_smem.shape[0]
    BLOCK_M: gl.constexpr = q_smem.shape[1]
    ROWS: gl.constexpr = k_rows.shape[0]
    slot = i % STAGES
    mbarrier.wait(ready.index(slot), (i // STAGES) & 1)
    zero = gl.zeros([ROWS, BLOCK_M], gl.float32, layout=t_layout)
    sT = warpgroup_mma(k_rows, q_smem.index(slot).permute((1, 0)), zero, use_acc=False, is_async=True)
    dpT = warpgroup_mma(v_rows, do_smem.index(slot).permute((1, 0)), zero, use_acc=False, is_async=True)
    return sT, dpT


@gluon.jit
def _kv_probs(sT, dpT, LSE, Delta, m, offs_n, qk_scale, t_layout: gl.constexpr, a_layout: gl.constexpr,
              MASK: gl.constexpr, dtype: gl.constexpr):
    """P^T and dS^T of query tile m, as the A operands of the dV and dK products."""
    BLOCK_M: gl.constexpr = sT.shape[1]
    offs_m = m * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, t_layout))
    pT = gl.exp2(sT * qk_scale - gl.load(LSE + offs_m)[None, :])
    if MASK:
        pT = gl.where(offs_m[None, :] >= offs_n[:, None], pT, 0.0)
    dsT = pT * (dpT - gl.load(Delta + offs_m)[None, :])
    return gl.convert_layout(pT.to(dtype), a_layout), gl.convert_layout(dsT.to(dtype), a_layout)


@gluon.jit
def _kv_accumulate(i, pT, dsT, dk, dv, ring):
    """Issue dV += P^T dO_i and dK += dS^T Q_i (asynchronous)."""
    q_smem, do_smem, ready, empty = ring
    slot = i % q_smem.shape[0]
    dv = warpgroup_mma(pT, do_smem.index(slot), dv, is_async=True)
    dk = warpgroup_mma(dsT, q_smem.index(slot), dk, is_async=True)
    return dk, dv


@gluon.jit
def _kv_probs_to(p_buf, ds_buf, sT, dpT, LSE, Delta, m, offs_n, qk_scale, t_layout: gl.constexpr, MASK: gl.constexpr):
    """P^T and dS^T of query tile m into shared memory, where the dV and dK products read them (registers would
    not leave ptxas enough to keep the products in flight: it serialises them, C7512)."""
    BLOCK_M: gl.constexpr = sT.shape[1]
    offs_m = m * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, t_layout))
    pT = gl.exp2(sT * qk_scale - gl.load(LSE + offs_m)[None, :])
    if MASK:
        pT = gl.where(offs_m[None, :] >= offs_n[:, None], pT, 0.0)
    p_buf.store(pT.to(p_buf.dtype))
    ds_buf.store((pT * (dpT - gl.load(Delta + offs_m)[None, :])).to(ds_buf.dtype))
    fence_async_shared()


@gluon.jit
def _kv_tile_overlapped(i, p_bufs, ds_bufs, dk, dv, k_rows, v_rows, ring, LSE, Delta, m, offs_n, qk_scale,
                        t_layout: gl.constexpr, MASK: gl.constexpr):
    """Query tile i with FlashAttention-3's overlap. S^T_i and dP^T_i are issued, then tile i - 1's dV and dK
    products; wgmma groups retire in order, so a wait that leaves those two pending has S^T_i and dP^T_i done (and
    tile i - 2's products, whose operand buffers tile i then reuses) while tile i - 1's run on the tensor cores
    beside this tile's P^T and dS^T arithmetic. No wait for all of them: ptxas would hoist it above that arithmetic."""
    STAGES: gl.constexpr = ring[0].shape[0]
    sT, dpT = _kv_scores(i, k_rows, v_rows, ring, t_layout)
    dk, dv = _kv_accumulate(i - 1, p_bufs.index((i - 1) % 2), ds_bufs.index((i - 1) % 2), dk, dv, ring)
    sT, dpT = warpgroup_mma_wait(2, deps=(sT, dpT))
    mbarrier.arrive(ring[3].index((i + STAGES - 2) % STAGES), count=1, pred=i > 1)  # tile i - 2's are done
    _kv_probs_to(p_bufs.index(i % 2), ds_bufs.index(i % 2), sT, dpT, LSE, Delta, m, offs_n, qk_scale, t_layout, MASK)
    return dk, dv


@gluon.jit
def _kv_consumer(dk_desc, dv_desc, k_smem, v_smem, kv_bar, ring, LSE, Delta, N, H, qk_scale, sm_scale,
                 HEAD_D: gl.constexpr, CAUSAL: gl.constexpr, OUT_ROWS: gl.constexpr, WG: gl.constexpr,
                 OVERLAP: gl.constexpr):
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
    dk = gl.zeros([ROWS, HEAD_D], gl.float32, layout=g_layout)
    dv = gl.zeros([ROWS, HEAD_D], gl.float32, layout=g_layout)
    mbarrier.wait(kv_bar, 0)
    if OVERLAP:
        # tile 0 alone (masked if causal: the causal key tile starts on its diagonal), then tiles 1.. pipelined
        p_bufs = _operand_buffers(k_smem.dtype, ROWS, BLOCK_M)
        ds_bufs = _operand_buffers(k_smem.dtype, ROWS, BLOCK_M)
        sT, dpT = _kv_scores(0, k_rows, v_rows, ring, t_layout)
        sT, dpT = warpgroup_mma_wait(0, deps=(sT, dpT))
        _kv_probs_to(p_bufs.index(0), ds_bufs.index(0), sT, dpT, LSE, Delta, lo, offs_n, qk_scale, t_layout, CAUSAL)
        dk, dv = warpgroup_mma_init(dk), warpgroup_mma_init(dv)  # in flight across tiles
        unmasked_from = 1
        if CAUSAL:
            unmasked_from = n_masked
        for i in range(1, n_masked):
            dk, dv = _kv_tile_overlapped(i, p_bufs, ds_bufs, dk, dv, k_rows, v_rows, ring, LSE, Delta, lo + i, offs_n,
                                         qk_scale, t_layout, True)
        for i in range(unmasked_from, n_tiles):
            dk, dv = _kv_tile_overlapped(i, p_bufs, ds_bufs, dk, dv, k_rows, v_rows, ring, LSE, Delta, lo + i, offs_n,
                                         qk_scale, t_layout, False)
        last = (n_tiles - 1) % 2
        dk, dv = _kv_accumulate(n_tiles - 1, p_bufs.index(last), ds_bufs.index(last), dk, dv, ring)
        dk, dv = warpgroup_mma_wait(0, deps=(dk, dv))
    else:
        dk, dv = warpgroup_mma_init(dk), warpgroup_mma_init(dv)  # in flight across tiles
        for i in range(0, n_masked):
            dk, dv = _kv_tile(i, dk, dv, k_rows, v_rows, ring, LSE, Delta, lo + i, offs_n, qk_scale, t_layout,
                              a_layout, True)
        for i in range(n_masked, n_tiles):
            dk, dv = _kv_tile(i, dk, dv, k_rows, v_rows, ring, LSE, Delta, lo + i, offs_n, qk_scale, t_layout,
                              a_layout, False)
        dk, dv = warpgroup_mma_wait(0, deps=(dk, dv))
    row, col = _head_origin(bh, N, H, HEAD_D, OUT_ROWS)
    row += start_n * BLOCK_N + WG * ROWS
    _store_rows(dk_desc, row, col, k_rows, (dk * sm_scale).to(k_smem.dtype))  # via its own K rows: only it read them
    _store_rows(dv_desc, row, col, v_rows, dv.to(v_smem.dtype))


@gluon.jit
def attn_bwd_kv_hopper(q_desc, k_desc, v_desc, do_desc, dk_desc, dv_desc, LSE, Delta, N, H, qk_scale, sm_scale,
                       HEAD_D: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                       CAUSAL: gl.constexpr, IN_ROWS: gl.constexpr, DO_ROWS: gl.constexpr, OUT_ROWS: gl.constexpr,
                       OVERLAP: gl.constexpr):
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
                                        sm_scale, HEAD_D, CAUSAL, OUT_ROWS, 0, OVERLAP)),
                        (_kv_consumer, (dk_desc, dv_desc, k_smem, v_smem, kv_bar, ring, LSE, Delta, N, H, qk_scale,
                                        sm_scale, HEAD_D, CAUSAL, OUT_ROWS, 1, OVERLAP))], [4, 4], [240, 240])


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
    """Key tile j against this warpgroup's query rows, without overlap: S and dP, a wait for every product in
    flight, dS, then dQ += dS K issued."""
    STAGES: gl.constexpr = ring[0].shape[0]
    s, dp = _dq_scores(j, q_rows, do_rows, ring, s_layout)
    s, dp, dq = warpgroup_mma_wait(0, deps=(s, dp, dq))
    mbarrier.arrive(ring[3].index((j + STAGES - 1) % STAGES), count=1, pred=j > 0)  # tile j - 1's products are done
    ds = _dq_dscores(j, s, dp, lse, delta, offs_m, qk_scale, s_layout, a_layout, MASK, q_rows.dtype)
    return _dq_accumulate(j, ds, dq, ring)


@gluon.jit
def _dq_scores(j, q_rows, do_rows, ring, s_layout: gl.constexpr):
    """Issue S = Q K_j^T and dP = dO V_j^T for key tile j, once its K and V have landed."""
    k_smem, v_smem, ready, empty = ring
    STAGES: gl.constexpr = k_smem.shape[0]
    BLOCK_N: gl.constexpr = k_smem.shape[1]
    ROWS: gl.constexpr = q_rows.shape[0]
    slot = j % STAGES
    mbarrier.wait(ready.index(slot), (j // STAGES) & 1)
    zero = gl.zeros([ROWS, BLOCK_N], gl.float32, layout=s_layout)
    s = warpgroup_mma(q_rows, k_smem.index(slot).permute((1, 0)), zero, use_acc=False, is_async=True)
    dp = warpgroup_mma(do_rows, v_smem.index(slot).permute((1, 0)), zero, use_acc=False, is_async=True)
    return s, dp


@gluon.jit
def _dq_dscores(j, s, dp, lse, delta, offs_m, qk_scale, s_layout: gl.constexpr, a_layout: gl.constexpr,
                MASK: gl.constexpr, dtype: gl.constexpr):
    """dS of key tile j, as the A operand of the dQ product."""
    BLOCK_N: gl.constexpr = s.shape[1]
    p = gl.exp2(s * qk_scale - lse[:, None])
    if MASK:
        offs_n = j * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
        p = gl.where(offs_m[:, None] >= offs_n[None, :], p, 0.0)
    return gl.convert_layout((p * (dp - delta[:, None])).to(dtype), a_layout)


@gluon.jit
def _dq_accumulate(j, ds, dq, ring):
    """Issue dQ += dS K_j (asynchronous)."""
    k_smem = ring[0]
    return warpgroup_mma(ds, k_smem.index(j % k_smem.shape[0]), dq, is_async=True)


@gluon.jit
def _dq_dscores_to(ds_buf, j, s, dp, lse, delta, offs_m, qk_scale, s_layout: gl.constexpr, MASK: gl.constexpr):
    """dS of key tile j into shared memory, where the dQ product reads it (as _kv_probs_to)."""
    BLOCK_N: gl.constexpr = s.shape[1]
    p = gl.exp2(s * qk_scale - lse[:, None])
    if MASK:
        offs_n = j * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
        p = gl.where(offs_m[:, None] >= offs_n[None, :], p, 0.0)
    ds_buf.store((p * (dp - delta[:, None])).to(ds_buf.dtype))
    fence_async_shared()


@gluon.jit
def _dq_tile_overlapped(j, ds_bufs, dq, q_rows, do_rows, ring, lse, delta, offs_m, qk_scale, s_layout: gl.constexpr,
                        MASK: gl.constexpr):
    """Key tile j with tile j - 1's dQ product running beside its dS arithmetic (as _kv_tile_overlapped)."""
    STAGES: gl.constexpr = ring[0].shape[0]
    s, dp = _dq_scores(j, q_rows, do_rows, ring, s_layout)
    dq = _dq_accumulate(j - 1, ds_bufs.index((j - 1) % 2), dq, ring)
    s, dp = warpgroup_mma_wait(1, deps=(s, dp))
    mbarrier.arrive(ring[3].index((j + STAGES - 2) % STAGES), count=1, pred=j > 1)  # tile j - 2's are done
    _dq_dscores_to(ds_bufs.index(j % 2), j, s, dp, lse, delta, offs_m, qk_scale, s_layout, MASK)
    return dq


@gluon.jit
def _dq_consumer(dq_desc, q_smem, do_smem, q_bar, ring, O, o_strides, LSE, Delta, N, H, qk_scale, sm_scale,
                 HEAD_D: gl.constexpr, CAUSAL: gl.constexpr, OUT_ROWS: gl.constexpr, WG: gl.constexpr,
                 OVERLAP: gl.constexpr):
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
    dq = gl.zeros([ROWS, HEAD_D], gl.float32, layout=g_layout)
    if OVERLAP:
        # tile 0 alone (masked if causal: for the first query tile it is the diagonal), then tiles 1.. pipelined
        ds_bufs = _operand_buffers(q_smem.dtype, ROWS, BLOCK_N)
        s, dp = _dq_scores(0, q_rows, do_rows, ring, s_layout)
        s, dp = warpgroup_mma_wait(0, deps=(s, dp))
        _dq_dscores_to(ds_bufs.index(0), 0, s, dp, lse, delta, offs_m, qk_scale, s_layout, CAUSAL)
        dq = warpgroup_mma_init(dq)  # in flight across tiles
        masked_from = n_tiles - n_masked
        if masked_from < 1:
            masked_from = 1
        for j in range(1, masked_from):
            dq = _dq_tile_overlapped(j, ds_bufs, dq, q_rows, do_rows, ring, lse, delta, offs_m, qk_scale, s_layout,
                                     False)
        for j in range(masked_from, n_tiles):
            dq = _dq_tile_overlapped(j, ds_bufs, dq, q_rows, do_rows, ring, lse, delta, offs_m, qk_scale, s_layout,
                                     True)
        dq = _dq_accumulate(n_tiles - 1, ds_bufs.index((n_tiles - 1) % 2), dq, ring)
        dq = warpgroup_mma_wait(0, deps=(dq, ))
    else:
        dq = warpgroup_mma_init(dq)  # in flight across tiles
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
                       CAUSAL: gl.constexpr, IN_ROWS: gl.constexpr, DO_ROWS: gl.constexpr, OUT_ROWS: gl.constexpr,
                       OVERLAP: gl.constexpr):
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
                                        qk_scale, sm_scale, HEAD_D, CAUSAL, OUT_ROWS, 0, OVERLAP)),
                        (_dq_consumer, (dq_desc, q_smem, do_smem, q_bar, ring, O, o_strides, LSE, Delta, N, H,
                                        qk_scale, sm_scale, HEAD_D, CAUSAL, OUT_ROWS, 1, OVERLAP))], [4, 4], [240, 240])


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
             scale: float, overlap: bool = OVERLAP, stages: int | None = None) -> None:
    """dQ, dK, dV into dq, dk, dv (one layout: heads in rows or in columns). lse: the forward's (B, H, N). The dQ
    pass runs first: it writes delta = rowsum(dO * O), which the dK/dV pass reads. overlap: each tile's score
    products issued before the previous tile's gradient products (FlashAttention-3's intra-warpgroup overlap)."""
    B, H, N, D = q.shape
    stages = stages or _stages(D, overlap)
    lse = lse.contiguous()
    delta = torch.empty_like(lse)
    layouts = dict(IN_ROWS=_rows_view(q)[2], DO_ROWS=_rows_view(do)[2], OUT_ROWS=_rows_view(dq)[2])
    scales = (scale * LOG2E, scale)
    attn_bwd_dq_hopper[(N // BLOCK_KEYS, B * H)](
        _descriptor(q, BLOCK_KEYS), _descriptor(k, BLOCK_STREAMED), _descriptor(v, BLOCK_STREAMED),
        _descriptor(do, BLOCK_KEYS), _descriptor(dq, BLOCK_KEYS // 2), o, *o.stride()[:3], lse, delta, N, H, *scales,
        HEAD_D=D, BLOCK_M=BLOCK_KEYS, BLOCK_N=BLOCK_STREAMED, STAGES=stages, CAUSAL=causal, **layouts, OVERLAP=overlap,
        num_warps=4,
        maxnreg=MAXNREG)
    attn_bwd_kv_hopper[(N // BLOCK_KEYS, B * H)](
        _descriptor(q, BLOCK_STREAMED), _descriptor(k, BLOCK_KEYS), _descriptor(v, BLOCK_KEYS),
        _descriptor(do, BLOCK_STREAMED), _descriptor(dk, BLOCK_KEYS // 2), _descriptor(dv, BLOCK_KEYS // 2), lse,
        delta, N, H, *scales, HEAD_D=D, BLOCK_M=BLOCK_STREAMED, BLOCK_N=BLOCK_KEYS, STAGES=stages, CAUSAL=causal,
        **layouts, OVERLAP=overlap, num_warps=4, maxnreg=MAXNREG)
