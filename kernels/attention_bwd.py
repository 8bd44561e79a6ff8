"""FlashAttention backward in Triton: recomputes P from q, k, v and the forward's LSE (no N x N matrix in memory).

Features
- Fast (default), FlashAttention-2's single pass: a preprocess launch computes delta = rowsum(dO * O) and zeroes
  an fp32 dQ accumulator; then one program per key tile holds its dK, dV on chip while it walks the query tiles
  that see it, and adds each tile's dQ contribution to the accumulator with fp32 atomics. Five matrix products per
  tile pair (S, dP, dV, dK, dQ). The order of the atomic adds varies, so dQ varies in its last bits between runs.
- Deterministic: a dQ pass (one program per query tile, walking key tiles; it also writes delta), then the same
  key-tile pass without dQ. Each program owns the rows it writes: bitwise repeatable, seven products per tile pair.
- Causal tiles, block-sparse index lists (the transposed BlockMask lists for the key-tile pass) and dropout
  (the forward's mask regenerated from the row and column keys, on transposed tiles in the key-tile pass) as in
  kernels/attention_fwd.py, whose jit helpers this reuses.
- The dQ pass loads its key tiles through pointers or, with KV_DESC, through host-side tensor descriptors of k and
  v (TMA copies on Hopper); kernels/attention.py decides which (_dq_key_values).

Tested: triton 3.6 (H200, torch 2.11, compiled) and the triton 3.9 interpreter (torch 2.13 CPU).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .attention_fwd import (
    dropout_keep,
    dropout_threshold,
    head_offset,
    keep_factor,
    key_tile_ranges,
    key_tile_t,
    load_tile,
    load_tile_t,
    own_column_key,
    own_row_keys,
    program_tile,
    row_keys,
    rows_keep,
    tile_index,
    tile_keep,
)

# ----------------------------------------------------------------------------------------------------------------
# jit helpers
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _row_delta(O, DO, stride_on, stride_don, offs_m, offs_d, N, D: tl.constexpr, EVEN_D: tl.constexpr):
    """delta_i = sum_d dO_id * O_id: the rowsum(dP * P) term of the softmax gradient."""
    o = load_tile(O, offs_m, stride_on, offs_d, N, D, True, EVEN_D)
    do = load_tile(DO, offs_m, stride_don, offs_d, N, D, True, EVEN_D)
    return tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)


@triton.jit
def _bwd_program(H, stride_b, stride_h, stride_dob, stride_doh, stride_gb, stride_gh, qk_scale, sm_scale, dropout_p,
                 LPT: tl.constexpr, LAST_FIRST: tl.constexpr):
    """How both backward kernels start: this program's (tile, bh, b, h); the offsets of its head in q, k, v (one
    stride set), in dO, and in O and the gradients (another); the float arguments in fp32 (torch.compile passes
    Python floats as fp64 scalars) with the dropout threshold. It takes no pointers on purpose: torch.compile's
    mutation analysis of a Triton kernel counts every pointer handed to a helper whose results address a store as
    written, and would then copy q, k, v and dO on every call."""
    tile, bh, b, h = program_tile(H, LPT, LAST_FIRST)
    threshold, dropout_p = dropout_threshold(dropout_p)
    return (tile, bh, b, h, head_offset(b, h, stride_b, stride_h), head_offset(b, h, stride_dob, stride_doh),
            head_offset(b, h, stride_gb, stride_gh), tl.cast(qk_scale, tl.float32), tl.cast(sm_scale, tl.float32),
            dropout_p, threshold)


@triton.jit
def _store_rows(ptrs, value, rows, N, offs_d, D: tl.constexpr, EVEN_D: tl.constexpr):
    if EVEN_D:
        tl.store(ptrs, value, mask=rows < N)
    else:
        tl.store(ptrs, value, mask=(rows < N) & (offs_d < D))


@triton.jit
def _query_tile_ranges(start_n, h, N, full_cnt, full_idx, part_cnt, part_idx, s_ch, s_cm, s_ih, s_im,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, SPARSE: tl.constexpr,
                       SPARSE_BLOCK: tl.constexpr):
    """The query tiles that see key tile start_n: masked (diagonal) ones, unmasked ones, then the masked tail that
    crosses the sequence end (dense only; sparse lists count it as partial). BLOCK_N is a multiple of BLOCK_M.
    Non-causal dense puts the sequence-end tile first, as the masked range: ptxas serialises the products of an
    unmasked loop that directly follows the accumulators' zeros (C7515; docs/dev/kernel-notes.md, eighth session).
    Returns (part_lo, part_hi, part_ptr, full_lo, full_hi, full_ptr, tail_lo, tail_hi)."""
    if SPARSE:  # the transposed block mask: per key block, the query blocks that see it
        PER_BLOCK: tl.constexpr = SPARSE_BLOCK // BLOCK_M
        col = start_n * BLOCK_N // SPARSE_BLOCK
        part_hi = tl.load(part_cnt + h * s_ch + col * s_cm) * PER_BLOCK
        full_hi = tl.load(full_cnt + h * s_ch + col * s_cm) * PER_BLOCK
        return (0, part_hi, part_idx + h * s_ih + col * s_im, 0, full_hi, full_idx + h * s_ih + col * s_im, 0, 0)
    else:
        m_tiles = tl.cdiv(N, BLOCK_M)
        if CAUSAL:
            part_lo = start_n * (BLOCK_N // BLOCK_M)
            part_hi = tl.minimum(part_lo + BLOCK_N // BLOCK_M, m_tiles)
            full_hi = tl.maximum(N // BLOCK_M, part_hi)
            return part_lo, part_hi, part_idx, part_hi, full_hi, full_idx, full_hi, m_tiles
        else:
            return N // BLOCK_M, m_tiles, part_idx, 0, N // BLOCK_M, full_idx, 0, 0


# ----------------------------------------------------------------------------------------------------------------
# backward kernels
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def attn_bwd_preprocess(O, DO, Delta, DQ_ACC, stride_gb, stride_gh, stride_gn, stride_dob, stride_doh, stride_don,
                        H, N,
                        D: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta for BLOCK_M rows of one batch*head, and zeros in the same rows of the fp32 dQ accumulator (laid out
    as O: stride_g*)."""
    EVEN_D: tl.constexpr = D == HEAD_D
    start_m, bh, b, h = program_tile(H, False, False)
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_D)
    delta = _row_delta(O + head_offset(b, h, stride_gb, stride_gh), DO + head_offset(b, h, stride_dob, stride_doh),
                       stride_gn, stride_don, offs_m, offs_d, N, D, EVEN_D)
    tl.store(Delta + bh.to(tl.int64) * N + offs_m, delta, mask=offs_m < N)
    acc_ptrs = DQ_ACC + head_offset(b, h, stride_gb, stride_gh) + offs_m[:, None] * stride_gn + offs_d[None, :]
    _store_rows(acc_ptrs, tl.zeros([BLOCK_M, HEAD_D], dtype=tl.float32), offs_m[:, None], N, offs_d[None, :],
                D, EVEN_D)


@triton.jit
def _kv_tiles(dk, dv, k, v, Q, DO, DQ_ACC, LSE, Delta, stride_qn, stride_don, stride_an, offs_n, offs_d,
              lo, hi, idx_ptr, KEYS, col, bh, N, qk_scale, sm_scale, dropout_p, threshold,
              D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
              MASK: tl.constexpr, SPARSE: tl.constexpr, PER_BLOCK: tl.constexpr, DROPOUT: tl.constexpr,
              EVEN_D: tl.constexpr, DQ_ATOMIC: tl.constexpr):
    """Accumulate one key tile's dK, dV over query tiles lo..hi (and add their dQ terms when DQ_ATOMIC); works on
    transposed tiles (keys x queries)."""
    for i in tl.range(lo, hi):
        offs_m = tile_index(i, idx_ptr, SPARSE, PER_BLOCK) * BLOCK_M + tl.arange(0, BLOCK_M)
        qT = load_tile_t(Q, offs_m, stride_qn, offs_d, N, D, MASK, EVEN_D)
        if MASK:
            lse = tl.load(LSE + offs_m, mask=offs_m < N, other=0.0)
            delta = tl.load(Delta + offs_m, mask=offs_m < N, other=0.0)
        else:
            lse = tl.load(LSE + offs_m)
            delta = tl.load(Delta + offs_m)
        sT = tl.dot(k, qT)
        # the keep mask before P: ptxas then interleaves the hash with dP's product (placed after it, it ran after
        # dP's wait, alone: kernel notes, eighteenth session). The 1 / (1 - p): on dV once at the end, on dP below.
        if DROPOUT:
            row_a, row_b = row_keys(KEYS, bh, offs_m, N, MASK)
            keepT = keep_factor(dropout_keep(row_a[None, :], row_b[None, :], col[:, None], threshold))
        pT = tl.math.exp2(sT * qk_scale - lse[None, :])
        if MASK:
            pT = tl.where(tl.trans(tile_keep(offs_m, offs_n, N, CAUSAL)), pT, 0.0)
        do = load_tile(DO, offs_m, stride_don, offs_d, N, D, MASK, EVEN_D)
        dpT = tl.dot(v, tl.trans(do))
        if DROPOUT:
            dv = tl.dot((pT * keepT).to(do.dtype), do, dv)
            dsT = (pT * (dpT * keepT * (1.0 / (1.0 - dropout_p)) - delta[None, :])).to(qT.dtype)
        else:
            dv = tl.dot(pT.to(do.dtype), do, dv)
            dsT = (pT * (dpT - delta[None, :])).to(qT.dtype)
        dk = tl.dot(dsT, tl.trans(qT), dk)
        if DQ_ATOMIC:
            dq = tl.dot(tl.trans(dsT), k) * sm_scale
            dq_ptrs = DQ_ACC + offs_m[:, None] * stride_an + offs_d[None, :]
            if MASK or not EVEN_D:
                tl.atomic_add(dq_ptrs, dq, mask=(offs_m[:, None] < N) & (offs_d[None, :] < D), sem="relaxed")
            else:
                tl.atomic_add(dq_ptrs, dq, sem="relaxed")
    return dk, dv


@triton.jit
def attn_bwd_kv(Q, K, V, DO, DK, DV, DQ_ACC, LSE, Delta, KEYS,
                full_cnt, full_idx, part_cnt, part_idx, s_ch, s_cm, s_ih, s_im,
                stride_b, stride_h, stride_n, stride_dob, stride_doh, stride_don, stride_gb, stride_gh, stride_gn,
                H, N, N_BUCKET, qk_scale, sm_scale, dropout_p,
                D: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                CAUSAL: tl.constexpr, SPARSE_BLOCK: tl.constexpr, DROPOUT: tl.constexpr, LPT: tl.constexpr,
                DQ_ATOMIC: tl.constexpr, DKV_LIKE_Q: tl.constexpr):
    """One program per key tile of BLOCK_N rows, visiting query tiles of BLOCK_M rows: writes dK, dV, and with
    DQ_ATOMIC adds dQ (scaled) into the fp32 DQ_ACC. Q, K, V share strides (stride_*), as do DK, DV and DQ_ACC
    (stride_g*); with DKV_LIKE_Q, DK and DV have q's strides instead (k's and v's slots of a packed gradient,
    written in place while DQ_ACC keeps its own layout). N_BUCKET is only an autotuning key."""
    SPARSE: tl.constexpr = SPARSE_BLOCK > 0
    EVEN_D: tl.constexpr = D == HEAD_D
    PER_BLOCK: tl.constexpr = SPARSE_BLOCK // BLOCK_M
    start_n, bh, b, h, qkv_off, do_off, g_off, qk_scale, sm_scale, dropout_p, threshold = _bwd_program(
        H, stride_b, stride_h, stride_dob, stride_doh, stride_gb, stride_gh, qk_scale, sm_scale, dropout_p, LPT, False)
    Q, K, V, DO = Q + qkv_off, K + qkv_off, V + qkv_off, DO + do_off
    DK, DV = (DK + qkv_off, DV + qkv_off) if DKV_LIKE_Q else (DK + g_off, DV + g_off)
    DQ_ACC += g_off
    LSE += bh.to(tl.int64) * N
    Delta += bh.to(tl.int64) * N
    offs_n = start_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_D)
    col = own_column_key(KEYS, bh, offs_n, N, DROPOUT)
    k = load_tile(K, offs_n, stride_n, offs_d, N, D, True, EVEN_D)
    v = load_tile(V, offs_n, stride_n, offs_d, N, D, True, EVEN_D)
    dk = tl.zeros([BLOCK_N, HEAD_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_D], dtype=tl.float32)
    part_lo, part_hi, part_ptr, full_lo, full_hi, full_ptr, tail_lo, tail_hi = _query_tile_ranges(
        start_n, h, N, full_cnt, full_idx, part_cnt, part_idx, s_ch, s_cm, s_ih, s_im,
        BLOCK_M, BLOCK_N, CAUSAL, SPARSE, SPARSE_BLOCK)
    dk, dv = _kv_tiles(dk, dv, k, v, Q, DO, DQ_ACC, LSE, Delta, stride_n, stride_don, stride_gn, offs_n,
                       offs_d, part_lo, part_hi, part_ptr, KEYS, col, bh, N, qk_scale, sm_scale, dropout_p,
                       threshold, D, BLOCK_M, BLOCK_N, CAUSAL, True, SPARSE, PER_BLOCK, DROPOUT, EVEN_D, DQ_ATOMIC)
    dk, dv = _kv_tiles(dk, dv, k, v, Q, DO, DQ_ACC, LSE, Delta, stride_n, stride_don, stride_gn, offs_n,
                       offs_d, full_lo, full_hi, full_ptr, KEYS, col, bh, N, qk_scale, sm_scale, dropout_p,
                       threshold, D, BLOCK_M, BLOCK_N, CAUSAL, False, SPARSE, PER_BLOCK, DROPOUT, EVEN_D, DQ_ATOMIC)
    dk, dv = _kv_tiles(dk, dv, k, v, Q, DO, DQ_ACC, LSE, Delta, stride_n, stride_don, stride_gn, offs_n,
                       offs_d, tail_lo, tail_hi, part_ptr, KEYS, col, bh, N, qk_scale, sm_scale, dropout_p,
                       threshold, D, BLOCK_M, BLOCK_N, CAUSAL, True, False, PER_BLOCK, DROPOUT, EVEN_D, DQ_ATOMIC)
    if DROPOUT:
        dv = dv * (1.0 / (1.0 - dropout_p))
    g_ptrs = offs_n[:, None] * (stride_n if DKV_LIKE_Q else stride_gn) + offs_d[None, :]
    _store_rows(DK + g_ptrs, (dk * sm_scale).to(DK.dtype.element_ty), offs_n[:, None], N, offs_d[None, :], D, EVEN_D)
    _store_rows(DV + g_ptrs, dv.to(DV.dtype.element_ty), offs_n[:, None], N, offs_d[None, :], D, EVEN_D)


@triton.jit
def _key_value_tiles_t(i, idx_ptr, K, V, b, h, stride_n, offs_d, N, D: tl.constexpr, HEAD_D: tl.constexpr,
                       BLOCK_N: tl.constexpr, SPARSE: tl.constexpr, PER_BLOCK: tl.constexpr, MASK: tl.constexpr,
                       EVEN_D: tl.constexpr, KV_DESC: tl.constexpr):
    """The i-th key tile's columns, K^T and V^T: through pointers into head (b, h)'s rows, or with KV_DESC through
    tensor descriptors of the (B, H, N, D) k and v (TMA copies on Hopper; rows past N and columns past D come back
    as zeros, as the masked loads give)."""
    if KV_DESC:
        start_n = tile_index(i, idx_ptr, SPARSE, PER_BLOCK) * BLOCK_N
        kT = tl.trans(K.load([b, h, start_n, 0]).reshape(BLOCK_N, HEAD_D))
        vT = tl.trans(V.load([b, h, start_n, 0]).reshape(BLOCK_N, HEAD_D))
        return start_n + tl.arange(0, BLOCK_N), kT, vT
    else:
        offs_n, kT = key_tile_t(i, idx_ptr, K, stride_n, offs_d, N, D, BLOCK_N, SPARSE, PER_BLOCK, MASK, EVEN_D)
        return offs_n, kT, load_tile_t(V, offs_n, stride_n, offs_d, N, D, MASK, EVEN_D)


@triton.jit
def _q_tiles(dq, q, do, lse, delta, K, V, b, h, stride_n, offs_m, offs_d, lo, hi, idx_ptr,
             KEYS, row_a, row_b, bh, N, qk_scale, dropout_p, threshold,
             D: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
             MASK: tl.constexpr, SPARSE: tl.constexpr, PER_BLOCK: tl.constexpr, DROPOUT: tl.constexpr,
             EVEN_D: tl.constexpr, KV_DESC: tl.constexpr):
    """Accumulate one query tile's dQ over key tiles lo..hi: the forward's iteration, recomputing P from the LSE."""
    for i in tl.range(lo, hi):
        offs_n, kT, vT = _key_value_tiles_t(i, idx_ptr, K, V, b, h, stride_n, offs_d, N, D, HEAD_D, BLOCK_N, SPARSE,
                                            PER_BLOCK, MASK, EVEN_D, KV_DESC)
        p = tl.math.exp2(tl.dot(q, kT) * qk_scale - lse[:, None])
        if MASK:
            p = tl.where(tile_keep(offs_m, offs_n, N, CAUSAL), p, 0.0)
        dp = tl.dot(do, vT)
        if DROPOUT:
            keep = rows_keep(KEYS, bh, row_a, row_b, offs_n, N, threshold, MASK)
            ds = p * (tl.where(keep, dp, 0.0) * (1.0 / (1.0 - dropout_p)) - delta[:, None])
        else:
            ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(kT.dtype), tl.trans(kT), dq)
    return dq


@triton.jit
def attn_bwd_dq(Q, K, V, O, DO, DQ, LSE, Delta, KEYS,
                full_cnt, full_idx, part_cnt, part_idx, s_ch, s_cm, s_ih, s_im,
                stride_b, stride_h, stride_n, stride_dob, stride_doh, stride_don, stride_gb, stride_gh, stride_gn,
                H, N, N_BUCKET, qk_scale, sm_scale, dropout_p,
                D: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                CAUSAL: tl.constexpr, SPARSE_BLOCK: tl.constexpr, DROPOUT: tl.constexpr, LPT: tl.constexpr,
                DQ_LIKE_Q: tl.constexpr, KV_DESC: tl.constexpr):
    """Deterministic backward, first pass: one program per query tile writes its dQ rows, and the delta of its rows
    for the key-tile pass that follows. Q, K, V share strides (stride_*), as do O and DQ (stride_g*); with
    DQ_LIKE_Q, DQ has q's strides instead (q's slot of a packed gradient, written in place). With KV_DESC, K and V
    are tensor descriptors of the (B, H, N, D) k and v, block 1 x 1 x BLOCK_N x HEAD_D."""
    SPARSE: tl.constexpr = SPARSE_BLOCK > 0
    EVEN_D: tl.constexpr = D == HEAD_D
    PER_BLOCK: tl.constexpr = SPARSE_BLOCK // BLOCK_N
    start_m, bh, b, h, qkv_off, do_off, g_off, qk_scale, sm_scale, dropout_p, threshold = _bwd_program(
        H, stride_b, stride_h, stride_dob, stride_doh, stride_gb, stride_gh, qk_scale, sm_scale, dropout_p, LPT, True)
    Q, DO, O = Q + qkv_off, DO + do_off, O + g_off
    if not KV_DESC:
        K, V = K + qkv_off, V + qkv_off
    DQ += qkv_off if DQ_LIKE_Q else g_off
    stride_dqn = stride_n if DQ_LIKE_Q else stride_gn
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_D)
    row_a, row_b = own_row_keys(KEYS, bh, offs_m, N, DROPOUT)
    q = load_tile(Q, offs_m, stride_n, offs_d, N, D, True, EVEN_D)
    do = load_tile(DO, offs_m, stride_don, offs_d, N, D, True, EVEN_D)
    delta = _row_delta(O, DO, stride_gn, stride_don, offs_m, offs_d, N, D, EVEN_D)
    tl.store(Delta + bh.to(tl.int64) * N + offs_m, delta, mask=offs_m < N)
    lse = tl.load(LSE + bh.to(tl.int64) * N + offs_m, mask=offs_m < N, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_D], dtype=tl.float32)
    full_lo, full_hi, full_ptr, part_lo, part_hi, part_ptr = key_tile_ranges(
        start_m, h, N, full_cnt, full_idx, part_cnt, part_idx, s_ch, s_cm, s_ih, s_im,
        BLOCK_M, BLOCK_N, CAUSAL, SPARSE, SPARSE_BLOCK)
    if DROPOUT:  # masked tiles first, as in the forward (C7515)
        dq = _q_tiles(dq, q, do, lse, delta, K, V, b, h, stride_n, offs_m, offs_d, part_lo, part_hi, part_ptr,
                      KEYS, row_a, row_b, bh, N, qk_scale, dropout_p, threshold, D, HEAD_D, BLOCK_N, CAUSAL, True,
                      SPARSE, PER_BLOCK, DROPOUT, EVEN_D, KV_DESC)
    dq = _q_tiles(dq, q, do, lse, delta, K, V, b, h, stride_n, offs_m, offs_d, full_lo, full_hi, full_ptr,
                  KEYS, row_a, row_b, bh, N, qk_scale, dropout_p, threshold, D, HEAD_D, BLOCK_N, CAUSAL, False,
                  SPARSE, PER_BLOCK, DROPOUT, EVEN_D, KV_DESC)
    if not DROPOUT:
        dq = _q_tiles(dq, q, do, lse, delta, K, V, b, h, stride_n, offs_m, offs_d, part_lo, part_hi, part_ptr,
                      KEYS, row_a, row_b, bh, N, qk_scale, dropout_p, threshold, D, HEAD_D, BLOCK_N, CAUSAL, True,
                      SPARSE, PER_BLOCK, DROPOUT, EVEN_D, KV_DESC)
    _store_rows(DQ + offs_m[:, None] * stride_dqn + offs_d[None, :], (dq * sm_scale).to(DQ.dtype.element_ty),
                offs_m[:, None], N, offs_d[None, :], D, EVEN_D)
