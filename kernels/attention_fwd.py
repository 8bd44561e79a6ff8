"""FlashAttention forward in Triton, and the jit helpers the backward shares.

Features
- One program per (query tile, batch*head); online softmax with running max and sum in fp32, exp2 with log2(e)
  folded into the scale; the output is written once and the row log-sum-exp (base 2) is saved for the backward.
- Causal: key tiles above the diagonal are never visited; tiles fully below it take an unmasked path; only tiles
  on the diagonal (or crossing the sequence end) pay for element masks.
- Block-sparse: the same loop walks a BlockMask's per-block index lists (kernels/block_mask.py) instead of a
  computed range; the constexpr SPARSE picks which, so dense and sparse share every line of the inner loop. A
  layout block of SPARSE_BLOCK tokens is visited as SPARSE_BLOCK // BLOCK_N key tiles.
- Dropout inside the kernel (the paper's Algorithm 2) without storing a mask and without shuffling random bits
  into the tile's layout: every row of a head has two random 32-bit keys and every column one (a (B*H, 3, N) tensor
  drawn from torch's generator per call, so torch.manual_seed reproduces a run), and element (row, col) is kept
  iff a 32-bit hash of its row's and column's keys is >= p * 2^32 (p at 2^-24 resolution). The hash is an
  XOR and a multiply-add per element, computed in whatever layout the tile already has, in either orientation, so
  the backward regenerates the same mask on transposed tiles; kept values are scaled by 1 / (1 - p).

Limits: head dims up to 128 (padded to a power of two inside the kernel); unit last-dim strides, one stride set
shared by Q, K and V.
Tested: triton 3.6 (H200, torch 2.11, compiled) and the triton 3.9 interpreter (torch 2.13 CPU).
"""

from __future__ import annotations

import triton
import triton.language as tl

# ----------------------------------------------------------------------------------------------------------------
# jit helpers
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _load_key(ptrs, offs, N, MASK: tl.constexpr):
    if MASK:
        key = tl.load(ptrs, mask=offs < N, other=0)
    else:
        key = tl.load(ptrs)
    return key.to(tl.uint32, bitcast=True)


@triton.jit
def row_keys(KEYS, bh, offs, N, MASK: tl.constexpr):
    """The two uint32 keys of rows `offs` of head bh; KEYS is (B*H, 3, N) int32 holding row keys a, b, then the
    column key."""
    ptrs = KEYS + bh.to(tl.int64) * 3 * N + offs
    return _load_key(ptrs, offs, N, MASK), _load_key(ptrs + N, offs, N, MASK)


@triton.jit
def column_key(KEYS, bh, offs, N, MASK: tl.constexpr):
    """The uint32 key of columns `offs` of head bh."""
    return _load_key(KEYS + bh.to(tl.int64) * 3 * N + 2 * N + offs, offs, N, MASK)


@triton.jit
def own_row_keys(KEYS, bh, offs, N, DROPOUT: tl.constexpr):
    """The keys of the rows a program owns, loaded once; without dropout, placeholders never read."""
    if DROPOUT:
        return row_keys(KEYS, bh, offs, N, True)
    else:
        return offs, offs


@triton.jit
def own_column_key(KEYS, bh, offs, N, DROPOUT: tl.constexpr):
    """The key of the columns a program owns, loaded once; without dropout, a placeholder never read."""
    if DROPOUT:
        return column_key(KEYS, bh, offs, N, True)
    else:
        return offs


@triton.jit
def dropout_keep(row_a, row_b, col, threshold):
    """Keep mask of the elements whose row and column keys are broadcast against each other here (rows x columns or
    columns x rows alike), kernels/reference.py mirrors it in torch: (row_a ^ col) times an odd constant plus row_b,
    one XOR and one multiply-add per element, where integer throughput (half the fp32 rate on Hopper) bounds the
    cost of dropout. The comparison reads the top bits, which depend on every bit of row_a ^ col; row_b, uniform
    per row, decorrelates rows whose row_a collide. The keys are uniform, so one round suffices: elements of a row,
    of a column and of any 2 x 2 rectangle (where the row_a ^ col are linearly related) come out independent
    (tests/test_flash_attention.py; 10^8 - 3 x 10^8 rectangles, docs/dev/dropout_hash_stats.py and
    docs/dev/kernel-notes.md, seventeenth session)."""
    return ((row_a ^ col) * 0x7FEB352D + row_b) >= threshold


# Dropping elements whose bf16 conversion follows: tl.where(keep, x, 0.0) is moved by LLVM past the conversion,
# into selects of 16-bit halves (unpack, select, repack: 2.25 integer instructions an element where one FSEL was
# meant; kernel notes, seventeenth session). Both forms below keep the select on fp32 and give the same values.


@triton.jit
def zero_unless(keep, x, scalar):
    """tl.where(keep, x, 0.0), its 0.0 made from a finite runtime scalar (scalar * 0.0), which LLVM cannot fold
    and so leaves the select where it is: one FSEL an element (the forward's P)."""
    return tl.where(keep, x, scalar * 0.0)


@triton.jit
def keep_factor(keep):
    """1.0 where kept, 0.0 where dropped, to multiply by: one FSEL and one FMA-pipe multiply per use. The dK/dV
    pass drops P and dP with it; there two zero_unless selects compiled to more integer instructions."""
    return tl.where(keep, 1.0, 0.0)


@triton.jit
def rows_keep(KEYS, bh, row_a, row_b, offs_n, N, threshold, MASK: tl.constexpr):
    """Dropout keep mask of a (query rows, key tile) tile: the rows' keys given, the tile's column keys loaded."""
    return dropout_keep(row_a[:, None], row_b[:, None], column_key(KEYS, bh, offs_n, N, MASK)[None, :], threshold)


@triton.jit
def head_offset(b, h, stride_b, stride_h):
    return b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h


@triton.jit
def tile_index(i, idx_ptr, SPARSE: tl.constexpr, PER_BLOCK: tl.constexpr):
    """The i-th visited tile: i itself for a dense range; when sparse, tile i % PER_BLOCK of the (i // PER_BLOCK)-th
    listed layout block, a block holding PER_BLOCK tiles."""
    if SPARSE:
        return tl.load(idx_ptr + i // PER_BLOCK) * PER_BLOCK + i % PER_BLOCK
    else:
        return i


@triton.jit
def program_tile(H, LPT: tl.constexpr, LAST_FIRST: tl.constexpr):
    """(tile, bh, b, h) of this program. LPT == 0: grid (tiles, B*H), the tiles of one head side by side, sharing
    its K and V in L2. LPT > 0 (causal rows from 2K on; kernels/attention.py decides): grid (B*H, tiles), programs
    taken in groups of LPT heads (the last group may be smaller), and within a group the costliest tiles of its
    heads start first (the last query tiles, LAST_FIRST, or the first key tiles), heads fastest: longest processing
    time first, as the GPU starts programs in grid order, axis 0 fastest, so the cheap tiles fill the last wave.
    LPT >= B*H orders every head's costliest tiles first; a smaller group keeps fewer heads' K and V live in L2."""
    if LPT:
        heads, tiles = tl.num_programs(0).to(tl.int64), tl.num_programs(1)  # int64: LPT may stand for all heads
        order = tl.program_id(1) * heads + tl.program_id(0)
        first = order // (tiles.to(tl.int64) * LPT) * LPT
        group = tl.minimum(heads - first, LPT)
        rank = order - first * tiles
        tile, bh = (rank // group).to(tl.int32), (first + rank % group).to(tl.int32)
        if LAST_FIRST:
            tile = tiles - 1 - tile
    else:
        tile, bh = tl.program_id(0), tl.program_id(1)
    return tile, bh, bh // H, bh % H


@triton.jit
def dropout_threshold(dropout_p):
    """(uint32 keep threshold, p as fp32). p is a multiple of 2^-24 (kernels/attention.py rounds it), exact in fp32;
    torch.compile passes Python floats as fp64 scalars."""
    dropout_p = tl.cast(dropout_p, tl.float32)
    return (dropout_p * 16777216.0).to(tl.uint32) << 8, dropout_p


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
def key_tile_t(i, idx_ptr, K, stride_kn, offs_d, N, D: tl.constexpr, BLOCK_N: tl.constexpr, SPARSE: tl.constexpr,
               PER_BLOCK: tl.constexpr, MASK: tl.constexpr, EVEN_D: tl.constexpr):
    """The i-th key tile a query tile visits: its columns and K^T."""
    offs_n = tile_index(i, idx_ptr, SPARSE, PER_BLOCK) * BLOCK_N + tl.arange(0, BLOCK_N)
    return offs_n, load_tile_t(K, offs_n, stride_kn, offs_d, N, D, MASK, EVEN_D)


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
def _fwd_tiles(acc, l_i, m_i, q, K, V, stride_n, offs_m, offs_d, lo, hi, idx_ptr,
               KEYS, row_a, row_b, bh, N, qk_scale, threshold,
               D: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, MASK: tl.constexpr,
               SPARSE: tl.constexpr, PER_BLOCK: tl.constexpr, DROPOUT: tl.constexpr, EVEN_D: tl.constexpr):
    """The inner loop: fold key tiles lo..hi into one query tile's running softmax."""
    for i in tl.range(lo, hi):
        offs_n, kT = key_tile_t(i, idx_ptr, K, stride_n, offs_d, N, D, BLOCK_N, SPARSE, PER_BLOCK, MASK, EVEN_D)
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
            p = zero_unless(rows_keep(KEYS, bh, row_a, row_b, offs_n, N, threshold, MASK), p, qk_scale)
        v = load_tile(V, offs_n, stride_n, offs_d, N, D, MASK, EVEN_D)
        acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def attn_fwd(Q, K, V, O, LSE, KEYS,
             full_cnt, full_idx, part_cnt, part_idx, s_ch, s_cm, s_ih, s_im,
             stride_b, stride_h, stride_n, stride_ob, stride_oh, stride_on,
             H, N, N_BUCKET, qk_scale, dropout_p,
             D: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
             CAUSAL: tl.constexpr, SPARSE_BLOCK: tl.constexpr, DROPOUT: tl.constexpr, LPT: tl.constexpr):
    """Q, K and V share their strides (stride_*); N_BUCKET (next power of two of N) is only an autotuning key;
    SPARSE_BLOCK > 0: a block mask of that block size; LPT: program order (program_tile)."""
    SPARSE: tl.constexpr = SPARSE_BLOCK > 0
    EVEN_D: tl.constexpr = D == HEAD_D
    PER_BLOCK: tl.constexpr = SPARSE_BLOCK // BLOCK_N
    qk_scale = tl.cast(qk_scale, tl.float32)  # torch.compile passes Python floats as fp64 scalars
    threshold, dropout_p = dropout_threshold(dropout_p)
    start_m, bh, b, h = program_tile(H, LPT, True)
    qkv_off = head_offset(b, h, stride_b, stride_h)
    Q, K, V = Q + qkv_off, K + qkv_off, V + qkv_off
    O += head_offset(b, h, stride_ob, stride_oh)
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_a, row_b = own_row_keys(KEYS, bh, offs_m, N, DROPOUT)
    offs_d = tl.arange(0, HEAD_D)
    q = load_tile(Q, offs_m, stride_n, offs_d, N, D, True, EVEN_D)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_D], dtype=tl.float32)
    full_lo, full_hi, full_ptr, part_lo, part_hi, part_ptr = key_tile_ranges(
        start_m, h, N, full_cnt, full_idx, part_cnt, part_idx, s_ch, s_cm, s_ih, s_im,
        BLOCK_M, BLOCK_N, CAUSAL, SPARSE, SPARSE_BLOCK)
    # With dropout, ptxas serialises the products of an unmasked loop that follows the zeroed accumulator (C7515),
    # so the masked tiles go first there; without dropout that order measured slower (kernel notes, ninth session).
    if DROPOUT:
        acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, K, V, stride_n, offs_m, offs_d, part_lo, part_hi,
                                   part_ptr, KEYS, row_a, row_b, bh, N, qk_scale, threshold,
                                   D, BLOCK_N, CAUSAL, True, SPARSE, PER_BLOCK, DROPOUT, EVEN_D)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, K, V, stride_n, offs_m, offs_d, full_lo, full_hi,
                               full_ptr, KEYS, row_a, row_b, bh, N, qk_scale, threshold,
                               D, BLOCK_N, CAUSAL, False, SPARSE, PER_BLOCK, DROPOUT, EVEN_D)
    if not DROPOUT:
        acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, K, V, stride_n, offs_m, offs_d, part_lo, part_hi,
                                   part_ptr, KEYS, row_a, row_b, bh, N, qk_scale, threshold,
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

