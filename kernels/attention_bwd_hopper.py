"""Attention backward's dK/dV pass for Hopper (sm_90) in Gluon: register operands, warp-specialised.

Features
- One program per 128-row key tile; a load warp brings the tile's K and V once, then streams the 64-row Q and dO
  tiles of every query tile that sees it by TMA through a ring of shared-memory slots. Two consumer warpgroups own
  64 key rows each and hold their dK and dV in registers.
- Per query tile a consumer issues S^T = K Q^T and dP^T = V dO^T together, computes P^T while dP^T finishes, issues
  dV += P^T dO, computes dS^T while that runs, and issues dK += dS^T Q, which runs on into the next tile's score
  products. P^T and dS^T are the gradient products' A operands straight from registers (FlashAttention-3's
  layout: at head dim 64 the score accumulator's registers are the operand's); K and V stay in shared memory (held
  in registers too, they leave ptxas short of registers to keep the products in flight: C7512).
- 9 warps (two consumers and the load warp) at 224 registers a thread fill the register file; ptxas keeps the
  wgmma in flight only if they fit the launch cap, which the 12-warp layout of the forward (168) does not
  (docs/dev/kernel-notes.md, seventh, eighth and thirtieth sessions). Compiled for sm_90 on the CPU with triton 3.6
  and 3.9: 224 registers, pipelined, no spill.
- Causal: key tiles launch costliest first (the first key tiles, every head's before the next), the two query
  tiles on the diagonal masked; no atomics, bitwise repeatable.
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

BLOCK_M = 64  # the streamed query tile
BLOCK_N = 128  # a program's key tile: 64 rows a consumer warpgroup
STAGES = 3  # Q / dO ring slots
MAXNREG = 224  # 9 warps x 32 threads x 224 fill the 64K-register file
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


# ----------------------------------------------------------------------------------------------------------------
# dK/dV pass
# ----------------------------------------------------------------------------------------------------------------


@gluon.jit
def _kv_loads(q_desc, k_desc, v_desc, do_desc, kv_smem, kv_bar, ring, N, H, BH, HEAD_D: gl.constexpr,
              CAUSAL: gl.constexpr, IN_ROWS: gl.constexpr, DO_ROWS: gl.constexpr):
    """Load warp: the key tile's K and V once, then Q and dO of every query tile that sees it, each into a ring slot
    once both consumers have finished with it."""
    k_smem, v_smem = kv_smem
    q_smem, do_smem, ready, empty = ring
    STAGES: gl.constexpr = q_smem.shape[0]
    BLOCK_M: gl.constexpr = q_smem.shape[1]
    BLOCK_N: gl.constexpr = k_smem.shape[0]
    start_n, bh, lo, n_tiles = _kv_program(N, BH, BLOCK_M, BLOCK_N, CAUSAL)
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
def _kv_step(i, m, dk, dv, p_op, ds_op, kv_rows, ring, LSE, Delta, offs_n, qk_scale, t_layout: gl.constexpr,
             MASK: gl.constexpr):
    """Query tile i of the program (m within the head) against this warpgroup's key rows. In flight on entry: the
    previous tile's dV and dK products, reading p_op and ds_op. Returns with this tile's dV and dK in flight."""
    k_rows, v_rows = kv_rows
    q_smem, do_smem, ready, empty = ring
    STAGES: gl.constexpr = q_smem.shape[0]
    BLOCK_M: gl.constexpr = q_smem.shape[1]
    ROWS: gl.constexpr = offs_n.shape[0]
    slot = i % STAGES
    offs_m = m * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, t_layout))
    lse = gl.load(LSE + offs_m)
    delta = gl.load(Delta + offs_m)
    mbarrier.wait(ready.index(slot), (i // STAGES) & 1)
    zero = gl.zeros([ROWS, BLOCK_M], gl.float32, layout=t_layout)
    sT = warpgroup_mma(k_rows, q_smem.index(slot).permute((1, 0)), zero, use_acc=False, is_async=True)
    dpT = warpgroup_mma(v_rows, do_smem.index(slot).permute((1, 0)), zero, use_acc=False, is_async=True)
    # groups retire in order: all but dP^T done means the previous tile's products too, so its slot is free
    sT, dk, dv, p_op, ds_op = warpgroup_mma_wait(1, deps=(sT, dk, dv, p_op, ds_op))
    mbarrier.arrive(empty.index((i + STAGES - 1) % STAGES), count=1, pred=i > 0)
    pT = gl.exp2(sT * qk_scale - lse[None, :])
    if MASK:
        pT = gl.where(offs_m[None, :] >= offs_n[:, None], pT, 0.0)
    p_op = gl.convert_layout(pT.to(q_smem.dtype), p_op.type.layout)
    dv = warpgroup_mma(p_op, do_smem.index(slot), dv, is_async=True)
    dpT = warpgroup_mma_wait(1, deps=(dpT, ))  # dV's product runs on beside dS^T (P^T kept: the next wait's)
    ds_op = gl.convert_layout((pT * (dpT - delta[None, :])).to(q_smem.dtype), ds_op.type.layout)
    dk = warpgroup_mma(ds_op, q_smem.index(slot), dk, is_async=True)
    return dk, dv, p_op, ds_op


@gluon.jit
def _store_rows(desc, row, col, smem, value):
    """value -> smem -> TMA store at (row, col) of desc's view."""
    smem.store(value)
    fence_async_shared()
    _tma_store(desc, [row, col], smem)
    tma.store_wait(pendings=0)


@gluon.jit
def _kv_consumer(dk_desc, dv_desc, kv_smem, kv_bar, ring, LSE, Delta, N, H, BH, qk_scale, sm_scale,
                 HEAD_D: gl.constexpr, CAUSAL: gl.constexpr, OUT_ROWS: gl.constexpr, WG: gl.constexpr):
    """dK, dV of key rows WG * BLOCK_N / 2 .. of the program's tile, over every query tile that sees them (causal:
    the two on the diagonal first, masked)."""
    k_smem, v_smem = kv_smem
    q_smem = ring[0]
    BLOCK_M: gl.constexpr = q_smem.shape[1]
    BLOCK_N: gl.constexpr = k_smem.shape[0]
    ROWS: gl.constexpr = BLOCK_N // 2
    t_layout: gl.constexpr = _mma_layout(4, BLOCK_M)  # S^T, dP^T: keys x queries
    g_layout: gl.constexpr = _mma_layout(4, HEAD_D)  # dK, dV: keys x head dim
    grad_a: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=g_layout, k_width=2)
    start_n, bh, lo, n_tiles = _kv_program(N, BH, BLOCK_M, BLOCK_N, CAUSAL)
    k_rows, v_rows = k_smem.slice(WG * ROWS, ROWS), v_smem.slice(WG * ROWS, ROWS)
    kv_rows = (k_rows, v_rows)
    offs_n = start_n * BLOCK_N + WG * ROWS + gl.arange(0, ROWS, layout=gl.SliceLayout(1, t_layout))
    LSE += bh * N
    Delta += bh * N
    mbarrier.wait(kv_bar, 0)
    dk = warpgroup_mma_init(gl.zeros([ROWS, HEAD_D], gl.float32, layout=g_layout))
    dv = warpgroup_mma_init(gl.zeros([ROWS, HEAD_D], gl.float32, layout=g_layout))
    p_op = gl.zeros([ROWS, BLOCK_M], q_smem.dtype, layout=grad_a)
    ds_op = gl.zeros([ROWS, BLOCK_M], q_smem.dtype, layout=grad_a)
    n_masked = 0
    if CAUSAL:
        n_masked = BLOCK_N // BLOCK_M
    for i in range(0, n_masked):
        dk, dv, p_op, ds_op = _kv_step(i, lo + i, dk, dv, p_op, ds_op, kv_rows, ring, LSE, Delta, offs_n, qk_scale,
                                       t_layout, True)
    for i in range(n_masked, n_tiles):
        dk, dv, p_op, ds_op = _kv_step(i, lo + i, dk, dv, p_op, ds_op, kv_rows, ring, LSE, Delta, offs_n, qk_scale,
                                       t_layout, False)
    dk, dv, p_op, ds_op = warpgroup_mma_wait(0, deps=(dk, dv, p_op, ds_op))
    row, col = _head_origin(bh, N, H, HEAD_D, OUT_ROWS)
    row += start_n * BLOCK_N + WG * ROWS
    # out through this warpgroup's own K and V rows, which only it read
    _store_rows(dk_desc, row, col, k_rows, (dk * sm_scale).to(k_smem.dtype))
    _store_rows(dv_desc, row, col, v_rows, dv.to(v_smem.dtype))


@gluon.jit
def attn_bwd_kv_hopper(q_desc, k_desc, v_desc, do_desc, dk_desc, dv_desc, LSE, Delta, N, H, BH, qk_scale, sm_scale,
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
    kv_smem = (k_smem, v_smem)
    # the launch's 4 warps are the first consumer; the second and the load warp are workers, every warp at the
    # launch cap (a smaller count for the load warp makes ptxas serialise the consumers' products: C7512)
    gl.warp_specialize([(_kv_consumer, (dk_desc, dv_desc, kv_smem, kv_bar, ring, LSE, Delta, N, H, BH, qk_scale,
                                        sm_scale, HEAD_D, CAUSAL, OUT_ROWS, 0)),
                        (_kv_consumer, (dk_desc, dv_desc, kv_smem, kv_bar, ring, LSE, Delta, N, H, BH, qk_scale,
                                        sm_scale, HEAD_D, CAUSAL, OUT_ROWS, 1)),
                        (_kv_loads, (q_desc, k_desc, v_desc, do_desc, kv_smem, kv_bar, ring, N, H, BH, HEAD_D,
                                     CAUSAL, IN_ROWS, DO_ROWS))], [4, 1], [224, 224])


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
                stages: int = STAGES) -> None:
    """dK, dV into dk, dv. lse: the forward's (B, H, N); delta: rowsum(dO * O), (B, H, N) fp32. `stages`: Q / dO
    ring slots (comparisons)."""
    B, H, N, D = q.shape
    layouts = dict(IN_ROWS=_rows_view(q)[2], DO_ROWS=_rows_view(do)[2], OUT_ROWS=_rows_view(dk)[2])
    # 4 launch warps (a consumer), a 4-warp consumer and a load warp, every warp at MAXNREG
    attn_bwd_kv_hopper[(N // BLOCK_N * B * H, )](
        _descriptor(q, BLOCK_M), _descriptor(k, BLOCK_N), _descriptor(v, BLOCK_N), _descriptor(do, BLOCK_M),
        _descriptor(dk, BLOCK_N // 2), _descriptor(dv, BLOCK_N // 2), lse, delta, N, H, B * H, scale * LOG2E, scale,
        HEAD_D=D, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, STAGES=stages, CAUSAL=causal, **layouts, num_warps=4,
        maxnreg=MAXNREG)
