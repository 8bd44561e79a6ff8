"""Attention backward's dK/dV pass for Hopper (sm_90) in Gluon: register operands at 255 registers a thread.

Features
- One program (8 warps, two warpgroups) per 128-row key tile, 64 key rows a warpgroup, each holding its dK and dV in
  registers. The tile's K and V are loaded once; the 64-row Q and dO tiles of every query tile that sees it stream
  by TMA through a ring of shared-memory slots, issued STAGES - 1 tiles ahead by one thread once every warp has
  finished with the slot (a CTA barrier a tile).
- Per query tile each warpgroup issues S^T = K Q^T and dP^T = V dO^T together, computes P^T while dP^T finishes,
  issues dV += P^T dO, computes dS^T while that runs, and issues dK += dS^T Q, which runs on into the next tile's
  score products. P^T and dS^T are the gradient products' A operands straight from registers (FlashAttention-3's
  layout: at head dim 64 the score accumulator's registers are the operand's).
- Why not warp-specialised like the forward: a load partition makes three warpgroups (12 warps, a load warp is
  padded to one), so 168 registers a thread, under which ptxas serialises register-operand products (C7512) and
  P^T, dS^T went through shared memory, which then bound the pass (docs/dev/kernel-notes.md, seventh, eighth and
  thirtieth sessions). 8 warps have 255.
- Causal: key tiles launch costliest first (the first key tiles, every head's before the next), the two query tiles
  on the diagonal masked. No atomics: bitwise repeatable.
- Inputs: the forward's LSE (base 2 of the scaled scores) and delta = rowsum(dO * O), which the Triton dQ pass
  (kernels/attention_bwd.py) writes; it runs first.

Limits: dense, no dropout; bf16 / fp16; head dim 64; N a multiple of 128; q, k, v, dO, dK, dV with heads in rows or
in columns (kernels/attention_fwd_hopper.py's TMA views). `supports()` says whether a call fits.

Tested: compiles for sm_90 on the CPU (triton 3.6 and 3.9, `python docs/dev/gluon_bwd_hopper.py --compile-only`).
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
    ENABLED,
    LOG2E,
    _barriers,
    _descriptor,
    _head_origin,
    _mma_layout,
    _rows_view,
    _tma_load,
    _tma_store,
)

_cta_barrier = getattr(gl, "barrier", None) or gl.thread_barrier  # triton >= 3.7 / 3.6

BLOCK_M = 64  # the streamed query tile
BLOCK_N = 128  # a program's key tile: 64 rows a warpgroup
STAGES = 3  # Q / dO ring slots
NUM_WARPS = 8
KV_IN_REGISTERS = False  # K and V as the score products' A operands: from shared memory, or loaded to registers
HEAD_DIMS = (64,)
# (head dim, causal) the library routes here: none until it has measured faster than the Triton pass on the GPU.
ROUTED: set[tuple[int, bool]] = set()

# ----------------------------------------------------------------------------------------------------------------
# jit helpers
# ----------------------------------------------------------------------------------------------------------------


@gluon.jit
def _kv_program(N, BH, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr):
    """(key tile, batch*head, first query tile, query tiles). Causal: every head's first key tiles, which see the
    most query tiles, start first; without the mask a head's tiles run side by side (its Q and dO shared in L2)."""
    pid = gl.program_id(0)
    if CAUSAL:
        start_n, bh = pid // BH, pid % BH
        lo = start_n * (BLOCK_N // BLOCK_M)
    else:
        n_tiles_n = N // BLOCK_N
        start_n, bh = pid % n_tiles_n, pid // n_tiles_n
        lo = 0
    return start_n, bh, lo, N // BLOCK_M - lo


@gluon.jit
def _load_query_tile(i, n_tiles, lo, q_at, do_at, q_desc, do_desc, ring):
    """Q and dO of the program's query tile i into slot i % STAGES, if there is such a tile."""
    q_smem, do_smem, ready = ring
    STAGES: gl.constexpr = q_smem.shape[0]
    BLOCK_M: gl.constexpr = q_smem.shape[1]
    slot = i % STAGES
    pred = i < n_tiles
    mbarrier.expect(ready.index(slot), q_desc.block_type.nbytes + do_desc.block_type.nbytes, pred=pred)
    _tma_load(q_desc, [q_at[0] + (lo + i) * BLOCK_M, q_at[1]], ready.index(slot), q_smem.index(slot), pred=pred)
    _tma_load(do_desc, [do_at[0] + (lo + i) * BLOCK_M, do_at[1]], ready.index(slot), do_smem.index(slot), pred=pred)


# ----------------------------------------------------------------------------------------------------------------
# dK/dV pass
# ----------------------------------------------------------------------------------------------------------------


@gluon.jit
def _query_rows(i, lo, N, LSE, Delta, layout: gl.constexpr, BLOCK_M: gl.constexpr):
    """LSE and delta of the program's query tile i (zeros past the head's rows)."""
    offs_m = (lo + i) * BLOCK_M + gl.arange(0, BLOCK_M, layout=layout)
    return gl.load(LSE + offs_m, mask=offs_m < N, other=0.0), gl.load(Delta + offs_m, mask=offs_m < N, other=0.0)


@gluon.jit
def _kv_step(i, program, dk, dv, p_op, ds_op, rows, kv_ops, ring, loads, LSE, Delta, offs_n, qk_scale,
             t_layout: gl.constexpr, MASK: gl.constexpr):
    """The program's query tile i against its key rows. In flight on entry: the previous tile's dV and dK products,
    reading p_op and ds_op. `rows`: tile i's LSE and delta, loaded a tile ahead (their latency from L2 would
    otherwise stand between the scores and P^T every tile). Returns with this tile's dV and dK in flight, and tile
    i + 1's rows."""
    k_op, v_op = kv_ops
    q_smem, do_smem, ready = ring
    STAGES: gl.constexpr = q_smem.shape[0]
    BLOCK_M: gl.constexpr = q_smem.shape[1]
    ROWS: gl.constexpr = offs_n.shape[0]
    lo, n_tiles, N = program
    slot = i % STAGES
    offs_m = (lo + i) * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, t_layout))
    lse, delta = rows
    rows = _query_rows(i + 1, lo, N, LSE, Delta, gl.SliceLayout(0, t_layout), BLOCK_M)
    mbarrier.wait(ready.index(slot), (i // STAGES) & 1)
    zero = gl.zeros([ROWS, BLOCK_M], gl.float32, layout=t_layout)
    sT = warpgroup_mma(k_op, q_smem.index(slot).permute((1, 0)), zero, use_acc=False, is_async=True)
    dpT = warpgroup_mma(v_op, do_smem.index(slot).permute((1, 0)), zero, use_acc=False, is_async=True)
    # groups retire in order: all but dP^T done means the previous tile's products too; once every warp is there,
    # its slot takes the tile STAGES - 1 ahead
    sT, dk, dv, p_op, ds_op = warpgroup_mma_wait(1, deps=(sT, dk, dv, p_op, ds_op))
    _cta_barrier()
    _load_query_tile(i + STAGES - 1, n_tiles, lo, *loads, ring)
    pT = gl.exp2(sT * qk_scale - lse[None, :])
    if MASK:
        pT = gl.where(offs_m[None, :] >= offs_n[:, None], pT, 0.0)
    p_op = gl.convert_layout(pT.to(q_smem.dtype), p_op.type.layout)
    dv = warpgroup_mma(p_op, do_smem.index(slot), dv, is_async=True)
    dpT = warpgroup_mma_wait(1, deps=(dpT, ))  # dV's product runs on beside dS^T (P^T kept: the next wait's)
    ds_op = gl.convert_layout((pT * (dpT - delta[None, :])).to(q_smem.dtype), ds_op.type.layout)
    dk = warpgroup_mma(ds_op, q_smem.index(slot), dk, is_async=True)
    return dk, dv, p_op, ds_op, rows


@gluon.jit
def _store_rows(desc, row, col, smem, value):
    """value -> smem -> TMA store at (row, col) of desc's view."""
    smem.store(value)
    fence_async_shared()
    _tma_store(desc, [row, col], smem)
    tma.store_wait(pendings=0)


@gluon.jit
def attn_bwd_kv_hopper(q_desc, k_desc, v_desc, do_desc, dk_desc, dv_desc, LSE, Delta, N, H, BH, qk_scale, sm_scale,
                       HEAD_D: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                       CAUSAL: gl.constexpr, IN_ROWS: gl.constexpr, DO_ROWS: gl.constexpr, OUT_ROWS: gl.constexpr,
                       KV_IN_REGISTERS: gl.constexpr):
    """dK, dV of one key tile over every query tile that sees it (causal: the two on the diagonal first, masked)."""
    gl.static_assert(BLOCK_N % BLOCK_M == 0, "causal: the key tile's diagonal on query tile edges")
    NUM_WARPS: gl.constexpr = gl.num_warps()
    dtype: gl.constexpr = q_desc.dtype
    t_layout: gl.constexpr = _mma_layout(NUM_WARPS, BLOCK_M)  # S^T, dP^T: keys x queries
    g_layout: gl.constexpr = _mma_layout(NUM_WARPS, HEAD_D)  # dK, dV: keys x head dim
    grad_a: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=g_layout, k_width=2)
    k_smem = gl.allocate_shared_memory(dtype, [BLOCK_N, HEAD_D], k_desc.layout)
    v_smem = gl.allocate_shared_memory(dtype, [BLOCK_N, HEAD_D], v_desc.layout)
    q_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_M, HEAD_D], q_desc.layout)
    do_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_M, HEAD_D], do_desc.layout)
    kv_bar = _barriers(1, 1).index(0)
    ring = (q_smem, do_smem, _barriers(STAGES, 1))

    start_n, bh, lo, n_tiles = _kv_program(N, BH, BLOCK_M, BLOCK_N, CAUSAL)
    row, col = _head_origin(bh, N, H, HEAD_D, IN_ROWS)
    loads = ((row, col), _head_origin(bh, N, H, HEAD_D, DO_ROWS), q_desc, do_desc)
    mbarrier.expect(kv_bar, k_desc.block_type.nbytes + v_desc.block_type.nbytes)
    _tma_load(k_desc, [row + start_n * BLOCK_N, col], kv_bar, k_smem)
    _tma_load(v_desc, [row + start_n * BLOCK_N, col], kv_bar, v_smem)
    for i in gl.static_range(STAGES - 1):
        _load_query_tile(i, n_tiles, lo, *loads, ring)

    offs_n = start_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, t_layout))
    LSE += bh * N
    Delta += bh * N
    dk = warpgroup_mma_init(gl.zeros([BLOCK_N, HEAD_D], gl.float32, layout=g_layout))
    dv = warpgroup_mma_init(gl.zeros([BLOCK_N, HEAD_D], gl.float32, layout=g_layout))
    p_op = gl.zeros([BLOCK_N, BLOCK_M], dtype, layout=grad_a)
    ds_op = gl.zeros([BLOCK_N, BLOCK_M], dtype, layout=grad_a)
    program = (lo, n_tiles, N)
    rows = _query_rows(0, lo, N, LSE, Delta, gl.SliceLayout(0, t_layout), BLOCK_M)
    n_masked = 0
    if CAUSAL:
        n_masked = BLOCK_N // BLOCK_M
    mbarrier.wait(kv_bar, 0)
    kv_ops = (k_smem, v_smem)
    if KV_IN_REGISTERS:  # the score products' A operands from registers too
        score_a: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=t_layout, k_width=2)
        kv_ops = (k_smem.load(score_a), v_smem.load(score_a))
    for i in range(0, n_masked):
        dk, dv, p_op, ds_op, rows = _kv_step(i, program, dk, dv, p_op, ds_op, rows, kv_ops, ring, loads, LSE, Delta,
                                             offs_n, qk_scale, t_layout, True)
    for i in range(n_masked, n_tiles):
        dk, dv, p_op, ds_op, rows = _kv_step(i, program, dk, dv, p_op, ds_op, rows, kv_ops, ring, loads, LSE, Delta,
                                             offs_n, qk_scale, t_layout, False)
    dk, dv, p_op, ds_op = warpgroup_mma_wait(0, deps=(dk, dv, p_op, ds_op))
    _cta_barrier()  # every warp done reading K and V, whose buffers take dK and dV out
    row, col = _head_origin(bh, N, H, HEAD_D, OUT_ROWS)
    _store_rows(dk_desc, row + start_n * BLOCK_N, col, k_smem, (dk * sm_scale).to(dtype))
    _store_rows(dv_desc, row + start_n * BLOCK_N, col, v_smem, dv.to(dtype))


# ----------------------------------------------------------------------------------------------------------------
# launcher
# ----------------------------------------------------------------------------------------------------------------


def supports(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dk: torch.Tensor,
             dv: torch.Tensor, *, causal: bool) -> bool:
    """Whether this pass serves a dense backward without dropout: a Hopper GPU, a routed (head dim, causal), and
    every tensor in a TMA view."""
    if not ENABLED or q.device.type != "cuda":
        return False
    B, H, N, D = q.shape
    if ((D, causal) not in ROUTED or N % BLOCK_N or q.dtype not in (torch.bfloat16, torch.float16)
            or torch.cuda.get_device_capability(q.device) != (9, 0)):
        return False
    views = [_rows_view(t) for t in (q, k, v, do, dk, dv)]
    return (all(views) and len({(view[1], view[2]) for view in views[:3]}) == 1 and do.dtype == q.dtype
            and views[4][1:] == views[5][1:])


def backward_kv(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lse: torch.Tensor,
                delta: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, *, causal: bool, scale: float,
                stages: int = STAGES, kv_in_registers: bool = KV_IN_REGISTERS, num_warps: int = NUM_WARPS) -> None:
    """dK, dV into dk, dv. lse: the forward's (B, H, N); delta: rowsum(dO * O), (B, H, N) fp32. `stages`,
    `kv_in_registers` and `num_warps` (4: one warpgroup, 64 keys a program, two programs an SM) for comparisons."""
    B, H, N, D = q.shape
    block_n = 16 * num_warps  # 16 key rows a warp
    layouts = dict(IN_ROWS=_rows_view(q)[2], DO_ROWS=_rows_view(do)[2], OUT_ROWS=_rows_view(dk)[2])
    attn_bwd_kv_hopper[(N // block_n * B * H, )](
        _descriptor(q, BLOCK_M), _descriptor(k, block_n), _descriptor(v, block_n), _descriptor(do, BLOCK_M),
        _descriptor(dk, block_n), _descriptor(dv, block_n), lse, delta, N, H, B * H, scale * LOG2E, scale,
        HEAD_D=D, BLOCK_M=BLOCK_M, BLOCK_N=block_n, STAGES=stages, CAUSAL=causal, **layouts,
        KV_IN_REGISTERS=kv_in_registers, num_warps=num_warps)
