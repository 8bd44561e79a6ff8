"""Attention forward for Hopper (sm_90) in Gluon: FlashAttention-3's warp-specialised pipeline.

Features
- A load partition (4 warps, 24 registers) streams K and V tiles by TMA into a ring of shared-memory slots; two
  consumer warpgroups (4 warps, 240 registers each) own 64 rows each of a 128-row query tile.
- Within a consumer, S_j = Q K_j^T and P_{j-1} V_{j-1} are issued together as asynchronous wgmma; the softmax of
  S_j runs while the second product finishes (the store of l_i before the last wait keeps ptxas from hoisting that
  wait above the softmax). The causal diagonal tile is masked, the tiles below it are not.
- Persistent: one program an SM walks query tiles one a round, from a list that runs costliest first (causal: every
  head's last tiles before the next rank; head by head where that measured faster, _heads_fastest), odd rounds
  backwards. The K/V ring runs on across a program's query tiles, so the next tile's loads go out while the
  consumers finish this one; at D = 64 Q is double-buffered.
- Outputs: O, and the row log-sum-exp in base 2 of the scaled scores, the same as kernels/attention_fwd.py's
  (kernels/attention_bwd.py reads either).

Limits: dense attention without dropout; bf16 / fp16; head dim 64 or 128 (the library routes ROUTED: causal at 64
and 128, non-causal at 128; without the mask at 64 the Triton forward measured faster); N a multiple of 128; q, k,
v (and o) with heads in rows ((B, H, N, D) contiguous) or heads in columns ((B, N, H, D) storage, e.g. views of one
packed projection), rows 16-byte aligned. `supports()` says whether a call fits; kernels/attention.py routes the
others, and every other GPU, to the Triton kernels.

Tested: triton 3.6 with torch 2.11 on an H200 (docs/dev/kernel-notes.md, sixth, seventh and twenty-ninth sessions);
compiles for sm_90 with triton 3.9 (the TMA load and store were renamed there: both names are resolved below).
"""

from __future__ import annotations

import functools
import os

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
from triton.runtime import driver

LOG2E = 1.4426950408889634
BLOCK = 128  # query and key tile: one diagonal tile per causal query tile
STAGES = 3  # K/V ring slots; 2 left the loads exposed, 4 do not fit next to Q at D = 128 (H200 timings)
HEAD_DIMS = (64, 128)
# (head dim, causal) the library routes here: where it measured faster than the tuned Triton forward on the H200,
# 16K tokens (kernel notes, twenty-ninth session): causal D = 64 0.925 against 0.987 ms at 16K (0.256 / 0.285 at
# 4K), causal D = 128 1.330 / 1.688, D = 128 without the mask 2.534 / 3.312; D = 64 without it 1.946 / 1.886 stays
# on Triton.
ROUTED = {(64, True), (128, True), (128, False)}
# 0: the Triton kernels everywhere (comparisons). Gluon's API moves between releases: 3.6 is the first this code
# compiles with (warp_specialize's argument list changed there).
TRITON_VERSION = tuple(int(part) for part in triton.__version__.split(".")[:2])
ENABLED = os.environ.get("FLASHGPT_GLUON", "1") != "0" and TRITON_VERSION >= (3, 6)

_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared  # triton >= 3.7 / 3.6
_tma_store = getattr(tma, "async_store", None) or tma.async_copy_shared_to_global

# ----------------------------------------------------------------------------------------------------------------
# jit helpers
# ----------------------------------------------------------------------------------------------------------------


@triton.constexpr_function
def _mma_layout(num_warps, n):
    """Accumulator layout of a wgmma over rows split across num_warps warps, n columns per instruction."""
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, n, 16])


@gluon.jit
def _barriers(COUNT: gl.constexpr, ARRIVALS: gl.constexpr):
    bars = gl.allocate_shared_memory(gl.int64, [COUNT, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(COUNT):
        mbarrier.init(bars.index(i), count=ARRIVALS)
    return bars


@gluon.jit
def _schedule(N, BH, BLOCK: gl.constexpr):
    """(query tiles a head, this program's rounds). Program p takes tile p of round 0, then one tile a round, the
    rounds alternating direction (_round_tile)."""
    n_m = N // BLOCK
    tiles = n_m * BH
    programs = gl.num_programs(0)
    full, rest = tiles // programs, tiles % programs
    place = gl.program_id(0)
    if full % 2 == 1:
        place = programs - 1 - place
    return n_m, full + (place < rest).to(gl.int32)


@gluon.jit
def _round_tile(r, n_m, BH, CAUSAL: gl.constexpr, HEADS_FASTEST: gl.constexpr):
    """(query tile, batch*head, key tiles it visits) of this program's round r. The list runs costliest first
    (causal: the last query tiles), every head's before the next rank (HEADS_FASTEST) or head by head; odd rounds
    walk it backwards, so the program that took a round's costliest tile takes the next round's cheapest."""
    programs = gl.num_programs(0)
    place = gl.program_id(0)
    if r % 2 == 1:
        place = programs - 1 - place
    i = r * programs + place
    if HEADS_FASTEST:
        rank, bh = i // BH, i % BH
    else:
        rank, bh = i % n_m, i // n_m
    start_m = n_m - 1 - rank
    n_tiles = n_m
    if CAUSAL:
        n_tiles = start_m + 1
    return start_m, bh, n_tiles


@gluon.jit
def _head_origin(bh, N, H, HEAD_D: gl.constexpr, HEADS_IN_ROWS: gl.constexpr):
    """Row and column of a head's first element in a tensor's 2-D TMA view (_rows_view)."""
    if HEADS_IN_ROWS:
        return bh * N, 0
    else:
        return (bh // H) * N, (bh % H) * HEAD_D


@gluon.jit
def _softmax_update(s, m_i, l_i, qk_scale):
    """Online softmax of one score tile: (p, alpha, m_new, l_new), in base 2 of the scaled scores."""
    m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
    p = gl.exp2(s * qk_scale - m_new[:, None])
    alpha = gl.exp2(m_i - m_new)
    return p, alpha, m_new, l_i * alpha + gl.sum(p, 1)


@gluon.jit
def _causal_mask(s, row0, col0, s_layout: gl.constexpr):
    rows = row0 + gl.arange(0, s.shape[0], layout=gl.SliceLayout(1, s_layout))
    cols = col0 + gl.arange(0, s.shape[1], layout=gl.SliceLayout(0, s_layout))
    return gl.where(rows[:, None] >= cols[None, :], s, float("-inf"))


# ----------------------------------------------------------------------------------------------------------------
# forward
# ----------------------------------------------------------------------------------------------------------------


@gluon.jit
def _load_kv(j, c, row, col, k_desc, v_desc, ring):
    """Key tile j of a head (the c-th this program loads) into its slot once both consumers have freed it."""
    k_smem, v_smem, k_ready, v_ready, kv_empty = ring
    STAGES: gl.constexpr = k_smem.shape[0]
    BLOCK: gl.constexpr = k_smem.shape[1]
    slot = c % STAGES
    mbarrier.wait(kv_empty.index(slot), ((c // STAGES) & 1) ^ 1)  # the first round passes at once
    mbarrier.expect(k_ready.index(slot), k_desc.block_type.nbytes)
    _tma_load(k_desc, [row + j * BLOCK, col], k_ready.index(slot), k_smem.index(slot))
    mbarrier.expect(v_ready.index(slot), v_desc.block_type.nbytes)
    _tma_load(v_desc, [row + j * BLOCK, col], v_ready.index(slot), v_smem.index(slot))
    return c + 1


@gluon.jit
def _load_partition(q_desc, k_desc, v_desc, q_ring, ring, N, H, BH, HEAD_D: gl.constexpr, CAUSAL: gl.constexpr,
                    HEADS_IN_ROWS: gl.constexpr, HEADS_FASTEST: gl.constexpr):
    """For each of the program's query tiles: its first K and V tile, its Q (once both consumers have stored the
    O that last went out through that Q buffer), its other K and V tiles. The ring runs on across query tiles, so
    the next tile's loads go out while the consumers finish this one."""
    q_smem, q_ready, q_empty = q_ring
    QBUFS: gl.constexpr = q_smem.shape[0]
    BLOCK: gl.constexpr = q_smem.shape[1]
    n_m, rounds = _schedule(N, BH, BLOCK)
    c = 0
    for r in range(rounds):
        start_m, bh, n_tiles = _round_tile(r, n_m, BH, CAUSAL, HEADS_FASTEST)
        row, col = _head_origin(bh, N, H, HEAD_D, HEADS_IN_ROWS)
        c = _load_kv(0, c, row, col, k_desc, v_desc, ring)
        qb = r % QBUFS
        mbarrier.wait(q_empty.index(qb), ((r // QBUFS) & 1) ^ 1)
        mbarrier.expect(q_ready.index(qb), q_desc.block_type.nbytes)
        _tma_load(q_desc, [row + start_m * BLOCK, col], q_ready.index(qb), q_smem.index(qb))
        for j in range(1, n_tiles):
            c = _load_kv(j, c, row, col, k_desc, v_desc, ring)


@gluon.jit
def _key_tile(j, c, p_op, acc, m_i, l_i, q_rows, ring, pin, qk_scale, row0, s_layout: gl.constexpr,
              o_layout: gl.constexpr, p_layout: gl.constexpr, MASK: gl.constexpr):
    """Key tile j (the program's c-th): S_j and P_{j-1} V_{j-1} in flight together, the softmax of S_j while the
    second finishes; then tile j - 1's slot goes back to the load partition."""
    k_smem, v_smem, k_ready, v_ready, kv_empty = ring
    STAGES: gl.constexpr = k_smem.shape[0]
    BLOCK: gl.constexpr = k_smem.shape[1]
    ROWS: gl.constexpr = q_rows.shape[0]
    slot, prev = c % STAGES, (c - 1) % STAGES
    mbarrier.wait(k_ready.index(slot), (c // STAGES) & 1)
    mbarrier.wait(v_ready.index(prev), ((c - 1) // STAGES) & 1)
    s = warpgroup_mma(q_rows, k_smem.index(slot).permute((1, 0)),
                      gl.zeros([ROWS, BLOCK], gl.float32, layout=s_layout), use_acc=False, is_async=True)
    acc = warpgroup_mma(p_op, v_smem.index(prev), acc, is_async=True)
    s = warpgroup_mma_wait(1, deps=(s, ))
    if MASK:
        s = _causal_mask(s, row0, j * BLOCK, s_layout)
    p, alpha, m_i, l_i = _softmax_update(s, m_i, l_i, qk_scale)
    p_next = gl.convert_layout(p.to(q_rows.dtype), p_layout)
    pin.store(l_i)  # a side effect before the wait: without it ptxas hoists the wait above the softmax
    acc, p_op = warpgroup_mma_wait(0, deps=(acc, p_op))
    mbarrier.arrive(kv_empty.index(prev), count=1)
    acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))[:, None]
    return p_next, acc, m_i, l_i


@gluon.jit
def _query_tile(c, n_tiles, q_rows, ring, pin, qk_scale, row0, HEAD_D: gl.constexpr, CAUSAL: gl.constexpr):
    """This warpgroup's rows of one query tile against its key tiles (the program's c-th onwards; the causal
    diagonal last, masked): (O unnormalised, m, l)."""
    k_smem, v_smem, k_ready, v_ready, kv_empty = ring
    STAGES: gl.constexpr = k_smem.shape[0]
    BLOCK: gl.constexpr = k_smem.shape[1]
    ROWS: gl.constexpr = q_rows.shape[0]
    s_layout: gl.constexpr = _mma_layout(4, BLOCK)
    o_layout: gl.constexpr = _mma_layout(4, HEAD_D)
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    rows_s: gl.constexpr = gl.SliceLayout(1, s_layout)

    mbarrier.wait(k_ready.index(c % STAGES), (c // STAGES) & 1)
    s = warpgroup_mma(q_rows, k_smem.index(c % STAGES).permute((1, 0)),
                      gl.zeros([ROWS, BLOCK], gl.float32, layout=s_layout), use_acc=False, is_async=True)
    s = warpgroup_mma_wait(0, deps=(s, ))
    if CAUSAL:
        if n_tiles == 1:
            s = _causal_mask(s, row0, 0, s_layout)
    m_i = gl.full([ROWS], float("-inf"), gl.float32, layout=rows_s)
    p, _, m_i, l_i = _softmax_update(s, m_i, gl.zeros([ROWS], gl.float32, layout=rows_s), qk_scale)
    p_op = gl.convert_layout(p.to(q_rows.dtype), p_layout)
    acc = gl.zeros([ROWS, HEAD_D], gl.float32, layout=o_layout)
    for j in range(1, n_tiles - CAUSAL):
        p_op, acc, m_i, l_i = _key_tile(j, c + j, p_op, acc, m_i, l_i, q_rows, ring, pin, qk_scale, row0, s_layout,
                                        o_layout, p_layout, False)
    if CAUSAL:
        if n_tiles > 1:
            p_op, acc, m_i, l_i = _key_tile(n_tiles - 1, c + n_tiles - 1, p_op, acc, m_i, l_i, q_rows, ring, pin,
                                            qk_scale, row0, s_layout, o_layout, p_layout, True)
    last = c + n_tiles - 1
    mbarrier.wait(v_ready.index(last % STAGES), (last // STAGES) & 1)
    acc = warpgroup_mma(p_op, v_smem.index(last % STAGES), acc, is_async=True)
    acc = warpgroup_mma_wait(0, deps=(acc, ))
    mbarrier.arrive(kv_empty.index(last % STAGES), count=1)
    return acc, m_i, l_i


@gluon.jit
def _consumer_partition(o_desc, LSE, q_ring, ring, N, H, BH, qk_scale, HEAD_D: gl.constexpr, CAUSAL: gl.constexpr,
                        O_HEADS_IN_ROWS: gl.constexpr, HEADS_FASTEST: gl.constexpr, WG: gl.constexpr):
    """Rows WG * BLOCK / 2 .. of each of the program's query tiles: O (out through this warpgroup's own Q rows,
    which only it read) and LSE; then the Q buffer goes back to the load partition."""
    q_smem, q_ready, q_empty = q_ring
    QBUFS: gl.constexpr = q_smem.shape[0]
    BLOCK: gl.constexpr = q_smem.shape[1]
    ROWS: gl.constexpr = BLOCK // 2
    o_layout: gl.constexpr = _mma_layout(4, HEAD_D)
    rows_s: gl.constexpr = gl.SliceLayout(1, _mma_layout(4, BLOCK))
    pin = gl.allocate_shared_memory(gl.float32, [ROWS], gl.SwizzledSharedLayout(1, 1, 1, [0]))
    n_m, rounds = _schedule(N, BH, BLOCK)
    c = 0
    for r in range(rounds):
        start_m, bh, n_tiles = _round_tile(r, n_m, BH, CAUSAL, HEADS_FASTEST)
        qb = r % QBUFS
        q_rows = q_smem.index(qb).slice(WG * ROWS, ROWS)
        row0 = start_m * BLOCK + WG * ROWS  # within the head
        mbarrier.wait(q_ready.index(qb), (r // QBUFS) & 1)
        acc, m_i, l_i = _query_tile(c, n_tiles, q_rows, ring, pin, qk_scale, row0, HEAD_D, CAUSAL)
        c += n_tiles

        acc = acc / gl.convert_layout(l_i, gl.SliceLayout(1, o_layout))[:, None]
        gl.store(LSE + bh * N + row0 + gl.arange(0, ROWS, layout=rows_s), m_i + gl.log2(l_i))
        q_rows.store(acc.to(q_smem.dtype))
        fence_async_shared()
        row, col = _head_origin(bh, N, H, HEAD_D, O_HEADS_IN_ROWS)
        _tma_store(o_desc, [row + row0, col], q_rows)
        tma.store_wait(pendings=0)
        mbarrier.arrive(q_empty.index(qb), count=1)


@gluon.jit
def attn_fwd_hopper(q_desc, k_desc, v_desc, o_desc, LSE, N, H, BH, qk_scale, HEAD_D: gl.constexpr,
                    BLOCK: gl.constexpr, STAGES: gl.constexpr, QBUFS: gl.constexpr, CAUSAL: gl.constexpr,
                    HEADS_IN_ROWS: gl.constexpr, O_HEADS_IN_ROWS: gl.constexpr, HEADS_FASTEST: gl.constexpr):
    q_smem = gl.allocate_shared_memory(q_desc.dtype, [QBUFS, BLOCK, HEAD_D], q_desc.layout)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [STAGES, BLOCK, HEAD_D], k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [STAGES, BLOCK, HEAD_D], v_desc.layout)
    q_ring = (q_smem, _barriers(QBUFS, 1), _barriers(QBUFS, 2))  # empty: both consumers
    ring = (k_smem, v_smem, _barriers(STAGES, 1), _barriers(STAGES, 1), _barriers(STAGES, 2))
    gl.warp_specialize([(_load_partition, (q_desc, k_desc, v_desc, q_ring, ring, N, H, BH, HEAD_D, CAUSAL,
                                           HEADS_IN_ROWS, HEADS_FASTEST)),
                        (_consumer_partition, (o_desc, LSE, q_ring, ring, N, H, BH, qk_scale, HEAD_D, CAUSAL,
                                               O_HEADS_IN_ROWS, HEADS_FASTEST, 0)),
                        (_consumer_partition, (o_desc, LSE, q_ring, ring, N, H, BH, qk_scale, HEAD_D, CAUSAL,
                                               O_HEADS_IN_ROWS, HEADS_FASTEST, 1))], [4, 4], [240, 240])


# ----------------------------------------------------------------------------------------------------------------
# launcher
# ----------------------------------------------------------------------------------------------------------------


def _rows_view(t: torch.Tensor) -> tuple[list[int], int, bool] | None:
    """t (B, H, N, D) as 2-D rows for TMA: (shape, row stride, heads in rows), or None if its layout is neither
    heads-in-rows ((B, H, N, D) storage) nor heads-in-columns ((B, N, H, D) storage, packed projections too)."""
    B, H, N, D = t.shape
    sb, sh, sn, sd = t.stride()
    # allocations are 512-byte aligned: the offset into the storage decides (and fake tensors under torch.compile
    # have one, where they have no data pointer)
    if sd != 1 or (t.storage_offset() * t.element_size()) % 16 or (sn * t.element_size()) % 16:
        return None
    if sn >= D and sh == N * sn and sb == H * sh:
        return [B * H * N, D], sn, True
    if sh == D and sn >= H * D and sb == N * sn:
        return [B * N, H * D], sn, False
    return None


def supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, dropout_p: float,
             sparse: bool) -> bool:
    """Whether this kernel serves the call: a Hopper GPU, dense, no dropout, and the limits in the docstring. (The
    output is allocated heads-in-columns, (B, N, H, D) storage, which always fits.)"""
    if not ENABLED or sparse or dropout_p > 0 or q.device.type != "cuda":
        return False
    B, H, N, D = q.shape
    if ((D, causal) not in ROUTED or N % BLOCK or q.dtype not in (torch.bfloat16, torch.float16)
            or torch.cuda.get_device_capability(q.device) != (9, 0)):
        return False
    views = [_rows_view(t) for t in (q, k, v)]
    return all(views) and len({(view[1], view[2]) for view in views}) == 1


def _descriptor(t: torch.Tensor, rows: int) -> TensorDescriptor:
    shape, row_stride, _ = _rows_view(t)
    dtype = gl.bfloat16 if t.dtype == torch.bfloat16 else gl.float16
    layout = gl.NVMMASharedLayout.get_default_for([rows, t.shape[-1]], dtype)
    return TensorDescriptor(t, shape, [row_stride, 1], [rows, t.shape[-1]], layout)


def _heads_fastest(N: int, D: int, causal: bool) -> bool:
    """The tile order. Causal, every head's costliest tiles first gives each round tiles of one cost, which balances
    the programs; head by head, a round's programs share a few heads' K and V in L2 but take tiles of every cost,
    which balances only short rows. Without the mask every tile costs the same and head by head keeps the L2. H200,
    12 heads (kernel notes, twenty-ninth session): causal D = 128 head by head 0.131 / 0.216 ms against 0.149 / 0.240
    at 1K / 2K (a round of heads-fastest tiles reads up to 132 heads' K and V, 69-96 MB, past the L2), 1.42x slower at
    16K; heads-fastest equal or faster at D = 64 and from 4K; without the mask head by head 2-3 % faster at 16K."""
    return causal and (D <= 64 or N > 2048)


@functools.cache
def _sm_count(device_index: int) -> int:
    # through Triton's driver, as its tutorials ask, so that the faked one of docs/dev/host_time_cpu.py answers too
    return driver.active.utils.get_device_properties(device_index)["multiprocessor_count"]


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor, *, causal: bool,
            scale: float, programs: int | None = None, heads_fastest: bool | None = None) -> None:
    """O and LSE ((B, H, N) fp32) of q, k, v into o and lse; supports(...) must hold, and o fit _rows_view.
    `programs`: how many programs walk the query tiles (default one per SM; as many as tiles: a program each).
    `heads_fastest`: the tile order (default per head dim, HEADS_FASTEST_HEAD_DIMS)."""
    B, H, N, D = q.shape
    tiles = N // BLOCK * B * H
    programs = min(tiles, programs or _sm_count(q.device.index or 0))
    if heads_fastest is None:
        heads_fastest = _heads_fastest(N, D, causal)
    descriptors = [_descriptor(t, BLOCK) for t in (q, k, v)] + [_descriptor(o, BLOCK // 2)]
    # 4 launch warps load; 168 registers x 12 warps is the register file, reallocated 24 / 240 / 240
    attn_fwd_hopper[(programs, )](*descriptors, lse, N, H, B * H, scale * LOG2E, HEAD_D=D, BLOCK=BLOCK,
                                  STAGES=STAGES, QBUFS=2 if D <= 64 else 1, CAUSAL=causal,
                                  HEADS_IN_ROWS=_rows_view(q)[2], O_HEADS_IN_ROWS=_rows_view(o)[2],
                                  HEADS_FASTEST=heads_fastest, num_warps=4, maxnreg=168)
