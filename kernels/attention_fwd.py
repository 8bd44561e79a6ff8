"""FlashAttention forward in Triton, and the jit helpers the backward shares.

Features
- One program per (query tile, batch*head); online softmax with running max and sum in fp32, exp2 with log2(e)
  folded into the scale; the output is written once and the row log-sum-exp (base 2) is saved for the backward.
- Causal: key tiles above the diagonal are never visited; tiles fully below it take an unmasked path; only tiles
  on the diagonal (or crossing the sequence end) pay for element masks.
- Block-sparse: the same loop walks a BlockMask's per-block index lists (kernels/block_mask.py) instead of a
  computed range; the constexpr SPARSE picks which, so dense and sparse share every line of the inner loop. A
  layout block of SPARSE_BLOCK tokens is visited as SPARSE_BLOCK // BLOCK_N key tiles.
- Dropout inside the kernel (the paper's Algorithm 2): one Philox call (tl.randint4x, 128 bits) gives 16 elements
  8 bits each, keyed on a seed drawn from torch's generator and on the element's (batch*head, row, column), so
  torch.manual_seed reproduces a run and the backward regenerates the same mask instead of storing it. An element
  is kept if its byte >= 256 p: p is rounded to a multiple of 1/256 by the caller (kernels/attention.py), and
  the kept values are scaled by 1 / (1 - p) with that rounded p, so the output stays unbiased.

Limits: head dims up to 128 (padded to a power of two inside the kernel); any strides with unit last dim.
Tested: triton 3.6 (H200, torch 2.11, compiled) and the triton 3.9 interpreter (torch 2.13 CPU).
"""

from __future__ import annotations

import triton
import triton.language as tl

# ----------------------------------------------------------------------------------------------------------------
# jit helpers
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def dropout_keep(seed, bh, offs_m, start_n, N, threshold, BLOCK_N: tl.constexpr):
    """Keep mask (len(offs_m), BLOCK_N) of rows offs_m x columns start_n .. start_n + BLOCK_N of head bh.

    Element (row, col) always draws Philox counter (bh*N + row) * ceil(N/16) + col // 16 and byte col % 16,
    whatever the tile, so every pass regenerates the same mask. start_n % 16 == 0; kept iff byte >= threshold."""
    offsets = ((bh * N + offs_m[:, None]).to(tl.int64) * tl.cdiv(N, 16)
               + (start_n // 16 + tl.arange(0, BLOCK_N // 16))[None, :])
    r0, r1, r2, r3 = tl.randint4x(seed, offsets)
    b0 = tl.join(tl.join(r0 & 0xFF, (r0 >> 8) & 0xFF), tl.join((r0 >> 16) & 0xFF, r0 >> 24))
    b1 = tl.join(tl.join(r1 & 0xFF, (r1 >> 8) & 0xFF), tl.join((r1 >> 16) & 0xFF, r1 >> 24))
    b2 = tl.join(tl.join(r2 & 0xFF, (r2 >> 8) & 0xFF), tl.join((r2 >> 16) & 0xFF, r2 >> 24))
    b3 = tl.join(tl.join(r3 & 0xFF, (r3 >> 8) & 0xFF), tl.join((r3 >> 16) & 0xFF, r3 >> 24))
    bits = tl.join(tl.join(b0, b1), tl.join(b2, b3))
    return tl.reshape(bits, (offs_m.shape[0], BLOCK_N)) >= threshold


@triton.jit
def head_offset(b, h, stride_b, stride_h):
    return b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h


@triton.jit
def qkv_heads(Q, K, V, b, h, stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh):
    """Q, K, V advanced to head (b, h)."""
    return (Q + head_offset(b, h, stride_qb, stride_qh), K + head_offset(b, h, stride_kb, stride_kh),
            V + head_offset(b, h, stride_vb, stride_vh))


@triton.jit
def tile_index(i, idx_ptr, SPARSE: tl.constexpr, PER_BLOCK: tl.constexpr):
    """The i-th visited tile: i itself for a dense range; when sparse, tile i % PER_BLOCK of the (i // PER_BLOCK)-th
    listed layout block, a block holding PER_BLOCK tiles."""
    if SPARSE:
        return tl.load(idx_ptr + i // PER_BLOCK) * PER_BLOCK + i % PER_BLOCK
    else:
        return i


@triton.jit
def program_tile(H):
    """(tile, bh, b, h) of this program: grid axis 0 is the tile, axis 1 the batch*head."""
    bh = tl.program_id(1)
    return tl.program_id(0), bh, bh // H, bh % H


@triton.jit
def dropout_setup(seed_ptr, dropout_p, DROPOUT: tl.constexpr):
    """(seed, keep threshold, p as fp32): torch.compile passes Python floats as fp64 scalars."""
    dropout_p = tl.cast(dropout_p, tl.float32)
    seed = 0
    if DROPOUT:
        seed = tl.load(seed_ptr)
    return seed, (dropout_p * 256.0 + 0.5).to(tl.uint32), dropout_p


@triton.jit
def _masked_load(ptrs, row_ok, d_ok, ROW_MASK: tl.constexpr, EVEN_D: tl.constexpr):
    if ROW_MASK:
        if EVEN_D:
            return tl.load(ptrs, mask=row_ok, other=0.0)
        else:
            return tl.load(ptrs, mask=row_ok & d_ok, other=0.0)
    else:
        if EVEN_D:
            return tl.load(ptrs)
        else:
            return tl.load(ptrs, mask=d_ok, other=0.0)


@triton.jit
def load_tile(base, rows, stride, offs_d, N, D: tl.constexpr, ROW_MASK: tl.constexpr, EVEN_D: tl.constexpr):
    """The (len(rows), HEAD_D) tile of a (N, D) matrix with row stride `stride`; masks only what may be out of
    bounds (rows when ROW_MASK, the padded head dim unless EVEN_D)."""
    return _masked_load(base + rows[:, None] * stride + offs_d[None, :], rows[:, None] < N, offs_d[None, :] < D,
                        ROW_MASK, EVEN_D)


@triton.jit
def load_tile_t(base, rows, stride, offs_d, N, D: tl.constexpr, ROW_MASK: tl.constexpr, EVEN_D: tl.constexpr):
    """The same tile transposed, (HEAD_D, len(rows)), loaded through transposed pointers."""
    return _masked_load(base + rows[None, :] * stride + offs_d[:, None], rows[None, :] < N, offs_d[:, None] < D,
                        ROW_MASK, EVEN_D)


@triton.jit
def tile_keep(offs_m, offs_n, N, CAUSAL: tl.constexpr):
    """Element mask of a boundary tile: inside the sequence, and on or below the diagonal when causal."""
    keep = (offs_m[:, None] < N) & (offs_n[None, :] < N)
    if CAUSAL:
        keep = keep & (offs_m[:, None] >= offs_n[None, :])
    return keep


@triton.jit
def key_tile_ranges(start_m, h, N, full_cnt, full_idx, part_cnt, part_idx, s_ch, s_cm, s_ih, s_im,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, SPARSE: tl.constexpr,
                    SPARSE_BLOCK: tl.constexpr):
    """The key tiles query tile start_m visits, as two ranges: unmasked (full) tiles, then masked (partial) ones.

    Dense: BLOCK_M is a multiple of BLOCK_N, so the causal diagonal of a query tile starts on a key-tile edge.
    Sparse: the BlockMask row of the layout block holding this query tile. Returns (full_lo, full_hi, full_ptr,
    part_lo, part_hi, part_ptr); ranges count tiles, pointers are index lists (unused when dense)."""
    if SPARSE:
        PER_BLOCK: tl.constexpr = SPARSE_BLOCK // BLOCK_N
        row = start_m * BLOCK_M // SPARSE_BLOCK
        full_hi = tl.load(full_cnt + h * s_ch + row * s_cm) * PER_BLOCK
        part_hi = tl.load(part_cnt + h * s_ch + row * s_cm) * PER_BLOCK
        return 0, full_hi, full_idx + h * s_ih + row * s_im, 0, part_hi, part_idx + h * s_ih + row * s_im
    else:
        if CAUSAL:
            full_hi = start_m * (BLOCK_M // BLOCK_N)
            part_hi = tl.minimum(full_hi + BLOCK_M // BLOCK_N, tl.cdiv(N, BLOCK_N))
        else:
            full_hi = N // BLOCK_N
            part_hi = tl.cdiv(N, BLOCK_N)
        return 0, full_hi, full_idx, full_hi, part_hi, part_idx


# ----------------------------------------------------------------------------------------------------------------
# forward
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _fwd_tiles(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, offs_m, offs_d, lo, hi, idx_ptr,
               seed, bh, N, qk_scale, threshold,
               D: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, MASK: tl.constexpr,
               SPARSE: tl.constexpr, PER_BLOCK: tl.constexpr, DROPOUT: tl.constexpr, EVEN_D: tl.constexpr):
    """The inner loop: fold key tiles lo..hi into one query tile's running softmax."""
    for i in tl.range(lo, hi):
        start_n = tile_index(i, idx_ptr, SPARSE, PER_BLOCK) * BLOCK_N
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kT = load_tile_t(K, offs_n, stride_kn, offs_d, N, D, MASK, EVEN_D)
        qk = tl.dot(q, kT)
        if MASK:
            s = tl.where(tile_keep(offs_m, offs_n, N, CAUSAL), qk * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_new = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing kept yet: any finite reference works
            s = s - m_new[:, None]
        else:  # max before scaling (scale > 0), so the scale and the shift fuse into one FMA per element
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            s = qk * qk_scale - m_new[:, None]
        p = tl.math.exp2(s)
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if DROPOUT:
            p = tl.where(dropout_keep(seed, bh, offs_m, start_n, N, threshold, BLOCK_N), p, 0.0)
        v = load_tile(V, offs_n, stride_vn, offs_d, N, D, MASK, EVEN_D)
        acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def attn_fwd(Q, K, V, O, LSE, seed_ptr,
             full_cnt, full_idx, part_cnt, part_idx, s_ch, s_cm, s_ih, s_im,
             stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
             stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
             H, N, N_BUCKET, qk_scale, dropout_p,
             D: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
             CAUSAL: tl.constexpr, SPARSE: tl.constexpr, SPARSE_BLOCK: tl.constexpr, DROPOUT: tl.constexpr):
    """N_BUCKET (next power of two of N) is only an autotuning key."""
    EVEN_D: tl.constexpr = D == HEAD_D
    PER_BLOCK: tl.constexpr = SPARSE_BLOCK // BLOCK_N
    qk_scale = tl.cast(qk_scale, tl.float32)  # torch.compile passes Python floats as fp64 scalars
    seed, threshold, dropout_p = dropout_setup(seed_ptr, dropout_p, DROPOUT)
    start_m, bh, b, h = program_tile(H)
    Q, K, V = qkv_heads(Q, K, V, b, h, stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh)
    O += head_offset(b, h, stride_ob, stride_oh)
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_D)
    q = load_tile(Q, offs_m, stride_qn, offs_d, N, D, True, EVEN_D)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_D], dtype=tl.float32)
    full_lo, full_hi, full_ptr, part_lo, part_hi, part_ptr = key_tile_ranges(
        start_m, h, N, full_cnt, full_idx, part_cnt, part_idx, s_ch, s_cm, s_ih, s_im,
        BLOCK_M, BLOCK_N, CAUSAL, SPARSE, SPARSE_BLOCK)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, offs_m, offs_d, full_lo, full_hi,
                               full_ptr, seed, bh, N, qk_scale, threshold,
                               D, BLOCK_N, CAUSAL, False, SPARSE, PER_BLOCK, DROPOUT, EVEN_D)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, offs_m, offs_d, part_lo, part_hi,
                               part_ptr, seed, bh, N, qk_scale, threshold,
                               D, BLOCK_N, CAUSAL, True, SPARSE, PER_BLOCK, DROPOUT, EVEN_D)

    # A row that kept no key (possible only with a sparse layout) has l_i == 0: output 0 and LSE +inf, so the
    # backward sees P == 0 for it.
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    inv_l = tl.where(empty, 0.0, 1.0 / l_safe)
    if DROPOUT:
        inv_l = inv_l / (1.0 - dropout_p)
    acc = acc * inv_l[:, None]
    lse = tl.where(empty, float("inf"), m_i + tl.math.log2(l_safe))
    tl.store(LSE + bh.to(tl.int64) * N + offs_m, lse, mask=offs_m < N)
    o_ptrs = O + offs_m[:, None] * stride_on + offs_d[None, :]
    if EVEN_D:
        tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=offs_m[:, None] < N)
    else:
        tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=(offs_m[:, None] < N) & (offs_d[None, :] < D))


@triton.jit
def dropout_mask_kernel(Out, seed_ptr, N, dropout_p, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """The keep mask the attention kernels apply, for ROWS rows of one batch*head (tests and debugging)."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    bh = tl.program_id(1)
    cols = tl.arange(0, BLOCK)
    threshold = (tl.cast(dropout_p, tl.float32) * 256.0 + 0.5).to(tl.uint32)
    for start in range(0, N, BLOCK):
        keep = dropout_keep(tl.load(seed_ptr), bh, rows, start, N, threshold, BLOCK)
        tl.store(Out + (bh.to(tl.int64) * N + rows[:, None]) * N + start + cols[None, :], keep.to(tl.int8),
                 mask=(rows[:, None] < N) & (start + cols[None, :] < N))
