"""FlashAttention (Dao et al. 2022) in Triton, dense and block-sparse: launchers, the registered op, public functions.

Features
- Exact attention over (B, H, N, D) without the N x N matrix in memory: the forward (kernels/attention_fwd.py)
  saves the row log-sum-exp; the backward (kernels/attention_bwd.py) recomputes P from it.
- Backward: FlashAttention-2's single pass (dQ accumulated in fp32 with atomics across key tiles) when dropout is
  on and the head dim at most 64, the two-pass backward (bitwise repeatable) otherwise, whichever measured faster
  on the H200 (_single_pass); `deterministic=True` always takes the two passes.
- Causal, block-sparse (a layout of kept blocks, turned into a kernels.block_mask.BlockMask), and dropout inside
  the kernels, reproducible under torch.manual_seed: each call draws random keys per row and column, and the
  kernels hash them per element (kernels/attention_fwd.py); p applies at 2^-24 resolution.
- One path: the forward and backward are torch custom ops (triton_op + wrap_triton) joined by one
  torch.autograd.Function, called the same way eagerly and under torch.compile (no graph break). The packed
  backward is an opaque custom op that launches its kernels itself (see attention_bwd_qkvpacked). Host launch cost
  is left to CUDA graphs (torch.compile(mode="reduce-overhead"), train.compile_mode in train.py).
- Causal launches of long rows start the costliest tiles first (program_tile in kernels/attention_fwd.py).
- The packed backward's dQ pass (the model's path) loads its key tiles through tensor descriptors, TMA copies on
  Hopper, at head dims up to 64 (_dq_key_values).
- On Hopper (sm_90), the dense forward without dropout (causal at head dims 64 and 128, non-causal at 128) runs
  FlashAttention-3's warp-specialised pipeline, persistent, written in Gluon (kernels/attention_fwd_hopper.py), an
  opaque custom op under torch.compile; every other call runs the Triton kernels. FLASHGPT_GLUON=0 turns it off.
- Tiles, warps and pipeline stages are autotuned per (N rounded up to a power of two, head dim, causal, dropout,
  layout block size, dtype). The timings are cached on disk (Triton's cache directory, keyed by the kernel source,
  the GPU architecture and the tuning key), so a new process, e.g. every train.py run, reuses them instead of
  timing every config again. A GPU of the same architecture (H100 / H200) shares them.

Limits: q, k, v of equal shape (B, H, N, D) (self-attention lengths); D a multiple of 8 up to 128 (16, 32, 48,
64, 80, 96, 128 tested); fp16 / bf16, and fp32 with tf32 dots. CPU tensors run only through the Triton
interpreter (TRITON_INTERPRET=1), with one small tile config. A layout's block_size is a power of two >= 16.
q, k, v of one layout (e.g. views of one packed projection) run as they are; otherwise they are copied to
contiguous first. The *_qkvpacked functions take the packed projection itself, (B, N, 3, H, D), and return its
gradient in that layout (FlashAttention-2's qkvpacked functions), which saves the copy that joins three gradients.

Tested: triton 3.6 with torch 2.11 on an H200 (compiled kernels), and the triton 3.9 interpreter with torch 2.13
(CPU).
"""

from __future__ import annotations

import math
import os

import torch
import triton
from torch.library import triton_op, wrap_triton
from triton.tools.tensor_descriptor import TensorDescriptor

from . import block_mask as block_masks
from .attention_bwd import attn_bwd_dq, attn_bwd_kv, attn_bwd_preprocess
from .attention_fwd import attn_fwd
from .block_mask import BlockMask

try:  # the Hopper forward needs triton.experimental.gluon (triton >= 3.6)
    from . import attention_fwd_hopper as hopper
except ImportError:
    hopper = None

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
AUTOTUNE = os.environ.get("FLASHGPT_AUTOTUNE", "1") != "0"  # 0: first fitting config, no tuning (quick GPU tests)
LOG2E = 1.4426950408889634
DROPOUT_LEVELS = 2**24  # resolution of the dropout thresholds

# ----------------------------------------------------------------------------------------------------------------
# tile configs
# ----------------------------------------------------------------------------------------------------------------

_KEY = ["N_BUCKET", "HEAD_D", "CAUSAL", "DROPOUT", "SPARSE_BLOCK"]

# (query tile, key tile, warps, stages). Dense causal needs the diagonal on a tile edge: the forward's and the dQ
# pass's query tile is a multiple of its key tile, the dK/dV pass's key tile a multiple of its query tile. The dQ
# pass's key tile is set by the host (_dq_key_tile), not tuned: its tiles are (query tile, warps, stages).
_FWD_TILES = [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (128, 32, 4, 4), (64, 64, 4, 3), (64, 64, 4, 4),
              (64, 32, 4, 3), (32, 32, 4, 3), (16, 16, 4, 2)]
_KV_TILES = [(64, 128, 8, 3), (32, 128, 4, 3), (64, 128, 4, 3), (32, 64, 4, 3), (64, 64, 4, 3), (128, 128, 8, 2),
             (32, 32, 4, 3), (16, 16, 4, 2)]
_DQ_TILES = [(128, 8, 3), (128, 4, 3), (64, 4, 3), (32, 4, 3), (16, 4, 2)]
_INTERPRET_TILES = {"fwd": [(32, 16, 4, 1), (16, 16, 4, 1)], "kv": [(16, 32, 4, 1), (16, 16, 4, 1)],
                    "dq": [(32, 4, 1), (16, 4, 1)]}  # small, so that tests cross tile edges


def _configs(tiles, names=("BLOCK_M", "BLOCK_N")):
    return [triton.Config(dict(zip(names, tile, strict=False)), num_warps=tile[-2], num_stages=tile[-1])
            for tile in tiles]


def _prune(configs, named_args, **kwargs):
    """Tiles that fit: within a sparse layout's block, and no more than 64 x 128 per tile pair for D > 64 (the
    accumulators stay in registers). Dense keeps tiles of 64 and up."""
    args = {**named_args, **kwargs}
    block, head_d = args["SPARSE_BLOCK"], args["HEAD_D"]
    limit = block if block else 128

    def fits(c):
        m, n = c.kwargs["BLOCK_M"], c.kwargs.get("BLOCK_N", args.get("BLOCK_N"))
        small_ok = block or INTERPRET or min(m, n) >= 32
        on_edge = "BLOCK_N" in c.kwargs or m % n == 0  # the listed pairs are on tile edges by construction
        return m <= limit and n <= limit and (head_d <= 64 or m * n <= 8192) and small_ok and on_edge

    fitting = [c for c in configs if fits(c)] or configs[-1:]
    return fitting if AUTOTUNE and not INTERPRET else fitting[:1]  # the interpreter cannot time configs


def _tuned(kernel, name, tiles, key=(), names=("BLOCK_M", "BLOCK_N"), **options):
    tiles = _INTERPRET_TILES[name] if INTERPRET else tiles
    return triton.autotune(_configs(tiles, names), key=_KEY + list(key),
                           prune_configs_by={"early_config_prune": _prune}, cache_results=True, **options)(kernel)


_fwd = _tuned(attn_fwd, "fwd", _FWD_TILES)
# the single pass (DQ_ATOMIC) tunes apart from the two passes' dK/dV pass; its tuning runs add into DQ_ACC
_bwd_kv = _tuned(attn_bwd_kv, "kv", _KV_TILES, key=["DQ_ATOMIC"], reset_to_zero=["DQ_ACC"])
_bwd_dq = _tuned(attn_bwd_dq, "dq", _DQ_TILES, names=("BLOCK_M",))

# ----------------------------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------------------------


def _strides(t):
    return t.stride(0), t.stride(1), t.stride(2)


def _empty_bhnd(t: torch.Tensor, dtype=None) -> torch.Tensor:
    """(B, H, N, D) stored as (B, N, H, D), so the model's transpose(1, 2) back to (B, N, H*D) is free."""
    B, H, N, D = t.shape
    return t.new_empty((B, N, H, D), dtype=dtype or t.dtype).transpose(1, 2)


# A kernel takes one stride set per group of tensors (q, k, v; the outputs, with o and the dQ accumulator): every
# argument adds host time to each launch (Triton's autotuner matches each argument name against all the others).


def _shared_strides(q, k, v):
    """q, k, v, or contiguous copies of all three when their strides differ (views of one packed projection, the
    model's case, share them)."""
    if q.stride() == k.stride() == v.stride():
        return q, k, v
    return q.contiguous(), k.contiguous(), v.contiguous()


def _as_bhnd(t: torch.Tensor) -> torch.Tensor:
    """t, or a copy of it laid out as _empty_bhnd's."""
    B, H, N, D = t.shape
    return t if t.stride() == (N * H * D, D, H * D, 1) else _empty_bhnd(t).copy_(t)


def _unpack(qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, H, N, D) views of q, k, v packed in one (B, N, 3, H, D) tensor."""
    return tuple(t.transpose(1, 2) for t in qkv.unbind(2))


def _mask_args(mask: BlockMask | None, by_key: bool, device: torch.device) -> tuple:
    """A BlockMask's lists for one pass (per query block, or per key block for the dK/dV pass) and their strides;
    head stride 0 for a layout shared by heads. Dense: a one-element placeholder, never read. (Not another
    argument: the dK/dV pass's dQ atomics are addressed through these lists, so torch.compile's mutation analysis
    counts them as written and copies whatever stands in for them.)"""
    if mask is None:
        placeholder = torch.empty(1, dtype=torch.int32, device=device)
        return placeholder, placeholder, placeholder, placeholder, 0, 0, 0, 0
    if by_key:
        lists = mask.q_full_count, mask.q_full_index, mask.q_part_count, mask.q_part_index
    else:
        lists = mask.kv_full_count, mask.kv_full_index, mask.kv_part_count, mask.kv_part_index
    count, index = lists[0], lists[1]
    shared = count.shape[0] == 1
    return (*lists, 0 if shared else count.stride(0), count.stride(1), 0 if shared else index.stride(0),
            index.stride(1))


# Causal launches start the costliest tiles first (program_tile's LPT), from each N bucket below on, in groups of that
# many heads. Every head at once from 8K; below it, with many short heads, every head's K and V live at once cost L2
# traffic, so 2K and 4K take groups of 16 heads (fwd+bwd against the next order: 2K 1.01-1.02x the grid order without
# dropout, 1.05x with it, 1.08x at head dim 128; 4K 1.014-1.018x every head, at one set of configs and at each order's
# own best, 1.03x with dropout; docs/dev/lpt_ab.py, docs/dev/tuning_spread.py), and 1K keeps the grid order, a head's
# tiles side by side, which its forward measured fastest (any such order 2-10 % slower). At 8K groups of 16 and every
# head measured level. (docs/dev/kernel-notes.md, fourth, twenty-fifth and twenty-sixth sessions.)
_LPT_ALL_HEADS = 1 << 30
_LPT_ORDER = ((8192, _LPT_ALL_HEADS), (2048, 16))
# The single pass adds dQ into the fp32 accumulators of the heads its programs run. With LPT's order (heads fastest
# within a group) a group's are written at once (50 MB at 16K tokens and 12 heads, the H200's L2); from this N
# bucket on its dK/dV launch runs head-major (tiles fastest; a key-tile pass's first tiles are its costliest
# anyway), which keeps about one head's live. With dropout at 16K: backward 4 % faster on (B, H, N, D) tensors,
# level on the model's packed projection; level at 4K (docs/dev/kernel-notes.md, nineteenth and twentieth sessions).
_SINGLE_PASS_HEAD_MAJOR_N_BUCKET = 16384


def _grid(N, BH, lpt, block):
    """Programs over (tiles of `block` rows, batch*head), or (batch*head, tiles) with LPT (program_tile)."""
    return lambda meta: (BH, triton.cdiv(N, meta[block])) if lpt else (triton.cdiv(N, meta[block]), BH)


def _common(q, causal, dropout_p, mask):
    B, H, N, D = q.shape
    n_bucket = triton.next_power_of_2(N)
    return dict(H=H, N=N, N_BUCKET=n_bucket, dropout_p=dropout_p, D=D, HEAD_D=max(16, triton.next_power_of_2(D)),
                CAUSAL=causal, SPARSE_BLOCK=mask.block_size if mask is not None else 0, DROPOUT=dropout_p > 0,
                LPT=_lpt(causal, n_bucket))


def _lpt(causal: bool, n_bucket: int) -> int:
    """program_tile's LPT: the head-group size of the costliest-first order, or 0 for the grid order."""
    return next((heads for start, heads in _LPT_ORDER if causal and n_bucket >= start), 0)


def _launch_fwd(q, k, v, keys, mask, causal, dropout_p, scale):
    B, H, N, D = q.shape
    q, k, v = _shared_strides(q, k, v)
    if hopper is not None and hopper.supports(q, k, v, causal=causal, dropout_p=dropout_p, sparse=mask is not None):
        return attention_fwd_hopper(q, k, v, causal, scale)
    o, lse = _empty_bhnd(q), q.new_empty((B, H, N), dtype=torch.float32)
    common = _common(q, causal, dropout_p, mask)
    wrap_triton(_fwd)[_grid(N, B * H, common["LPT"], "BLOCK_M")](
        q, k, v, o, lse, keys, *_mask_args(mask, False, q.device), *_strides(q), *_strides(o),
        qk_scale=scale * LOG2E, **common)
    return o, lse


def _single_pass(dropout_p: float, deterministic: bool, head_dim: int) -> bool:
    """The single pass saves two of seven matrix products and a dropout-mask regeneration, but adds N^2 D / BLOCK_N
    fp32 atomics per head. Measured on the H200 (docs/dev/kernel-notes.md): with dropout at D = 64 faster (the mask
    is the larger cost); without dropout, and with dropout at D = 128 (products and atomics grow with D, the mask
    does not), the two passes win."""
    return dropout_p > 0 and not deterministic and head_dim <= 64


def _dq_key_tile(mask: BlockMask | None) -> int:
    """The dQ pass's key tile: 64 (every dQ config the H200 tuned had it), within a layout block; 16 in the
    interpreter. Set here, not tuned: the block shape of its key tiles' descriptors is fixed when they are made,
    and torch.compile refuses the autotuner hook that could set it per config."""
    if INTERPRET:
        return 16
    return min(64, mask.block_size) if mask is not None else 64


# The packed backward's dQ pass (the model's path) loads its key tiles through tensor descriptors, TMA copies on
# Hopper, at head dims up to 64: fwd+bwd 1-3 % faster at 1K-16K on the H200; at D = 128 they lost 2 % at 16K
# (docs/dev/kernel-notes.md, twentieth and twenty-first sessions). Not in the triton_ops: torch.compile's tracing of
# their bodies does not capture descriptors (torch 2.11 to 2.13 hand the kernel wrapper no TMA metadata there).
_DQ_DESCRIPTOR_MAX_HEAD_D = 64


def _dq_key_values(k, v, head_d: int, block_n: int, launch) -> tuple:
    """(K, V, KV_DESC) for the dQ pass: descriptors of k and v (block 1 x 1 x block_n x head_d) where the rule
    above takes them and TMA can address the tensors (16-byte aligned start and strides), else k and v."""
    if launch is not _launch_directly or head_d > _DQ_DESCRIPTOR_MAX_HEAD_D:  # (traced: no data pointers)
        return k, v, False
    if any(t.data_ptr() % 16 for t in (k, v)) or any(s * k.element_size() % 16 for s in k.stride()[:-1]):
        return k, v, False
    block = [1, 1, block_n, head_d]
    return TensorDescriptor.from_tensor(k, block), TensorDescriptor.from_tensor(v, block), True


def _launch_directly(kernel):
    """An opaque op's launch: the kernel itself, through our autotuners. (wrap_triton outside a triton_op routes
    each launch through torch's kernel wrapper, which re-wraps our pruned configs in a new autotuner per call:
    a full tuning on every launch; docs/dev/kernel-notes.md, thirteenth session.)"""
    return kernel


def _launch_bwd(do, q, k, v, o, lse, keys, mask, causal, dropout_p, scale, deterministic, dqkv=None, launch=None):
    """(dq, dk, dv); or, given `dqkv`, a (B, N, 3, H, D) gradient of q, k, v packed, the three written into it (no
    cat to join them afterwards). Each pass takes one stride set for its outputs: the dQ pass O's, or q's when dQ
    goes straight into its packed slot (the slots have q's strides when qkv and dqkv are laid out alike); the
    dK/dV pass the packed slots, or in the single pass its fp32 dQ accumulator's, laid out as O, with dK and dV
    stored through q's (dQ then converted into its slot). Slots not laid out as q get buffers and copies.
    `launch`: wrap_triton (a triton_op's body, which torch.compile traces) or _launch_directly (an opaque op's)."""
    launch = launch or wrap_triton
    B, H, N, D = q.shape
    single_pass = _single_pass(dropout_p, deterministic, D)
    if do.stride(-1) != 1:
        do = do.contiguous()
    q, k, v = _shared_strides(q, k, v)
    o = _as_bhnd(o)  # the forward's output already is, unless a caller passes another o
    slots = _unpack(dqkv) if dqkv is not None else None
    slots_like_q = slots is not None and slots[0].stride() == q.stride()  # the three slots share their strides
    dk, dv = slots[1:] if slots and (slots_like_q or not single_pass) else (_empty_bhnd(q), _empty_bhnd(q))
    delta = torch.empty_like(lse)
    common = dict(qk_scale=scale * LOG2E, sm_scale=scale, **_common(q, causal, dropout_p, mask))
    kv_common = common
    if single_pass and common["N_BUCKET"] >= _SINGLE_PASS_HEAD_MAJOR_N_BUCKET:
        kv_common = {**common, "LPT": 0}
    grid_m, grid_n = _grid(N, B * H, common["LPT"], "BLOCK_M"), _grid(N, B * H, kv_common["LPT"], "BLOCK_N")
    if single_pass:  # delta and a zeroed fp32 dQ accumulator, then one pass that adds into it
        dq_acc = _empty_bhnd(q, torch.float32)
        launch(attn_bwd_preprocess)[(triton.cdiv(N, 64), B * H)](
            o, do, delta, dq_acc, *_strides(o), *_strides(do), H, N, D=D, HEAD_D=common["HEAD_D"], BLOCK_M=64)
    else:  # dQ pass (writes delta), then the dK/dV pass; a one-element stand-in for the accumulator it never uses
        dq = slots[0] if slots_like_q else _empty_bhnd(q)
        block_n = _dq_key_tile(mask)
        dq_k, dq_v, kv_desc = _dq_key_values(k, v, common["HEAD_D"], block_n, launch)
        launch(_bwd_dq)[grid_m](q, dq_k, dq_v, o, do, dq, lse, delta, keys, *_mask_args(mask, False, q.device),
                                *_strides(q), *_strides(do), *_strides(o), BLOCK_N=block_n, DQ_LIKE_Q=slots_like_q,
                                KV_DESC=kv_desc, **common)
        dq_acc = lse.new_empty((1, 1, 1))
    dkv_like_q = single_pass and slots_like_q
    launch(_bwd_kv)[grid_n](q, k, v, do, dk, dv, dq_acc, lse, delta, keys, *_mask_args(mask, True, q.device),
                            *_strides(q), *_strides(do), *_strides(dq_acc if dkv_like_q else dk),
                            DQ_ATOMIC=single_pass, DKV_LIKE_Q=dkv_like_q, **kv_common)
    if slots is None:
        return (dq_acc.to(q.dtype) if single_pass else dq), dk, dv
    if single_pass:
        slots[0].copy_(dq_acc)
        if not slots_like_q:
            slots[1].copy_(dk)
            slots[2].copy_(dv)
    elif not slots_like_q:
        slots[0].copy_(dq)
    return dqkv


# ----------------------------------------------------------------------------------------------------------------
# op registration
# ----------------------------------------------------------------------------------------------------------------


def _block_mask(tensors: list[torch.Tensor], block_size: int, N: int, causal: bool) -> BlockMask | None:
    return BlockMask.from_tensors(tensors, block_size, N, causal) if tensors else None


# The ops' namespace follows the package's name: a copy of this package imported under another name (a baseline
# checkout in scripts/bench_attention.py --baseline) registers its own ops beside these.
OPS_NAMESPACE = f"flashgpt_{__package__}"


@torch.library.custom_op(f"{OPS_NAMESPACE}::attention_fwd_hopper", mutates_args=())
def attention_fwd_hopper(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                         scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(o, lse) from the Gluon forward for Hopper (kernels/attention_fwd_hopper.py). An opaque op: torch.compile
    calls it as it is (Inductor takes Triton kernels only), from inside attention_fwd's traced body."""
    o, lse = _empty_bhnd(q), q.new_empty(q.shape[:3], dtype=torch.float32)
    hopper.forward(q, k, v, o, lse, causal=causal, scale=scale)
    return o, lse


@attention_fwd_hopper.register_fake
def _(q, k, v, causal, scale):
    return _empty_bhnd(q), q.new_empty(q.shape[:3], dtype=torch.float32)


@triton_op(f"{OPS_NAMESPACE}::attention_fwd", mutates_args=())
def attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_keys: torch.Tensor | None,
                  mask: list[torch.Tensor], block_size: int, causal: bool, dropout_p: float, scale: float,
                  deterministic: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(o, lse). `dropout_keys`: draw_dropout_keys(...) when dropout_p > 0. `mask`: a BlockMask's tensors
    (BlockMask.tensors()) and its block_size; empty and 0 when dense. `deterministic` picks the backward."""
    return _launch_fwd(q, k, v, dropout_keys, _block_mask(mask, block_size, q.shape[2], causal), causal, dropout_p,
                       scale)


@triton_op(f"{OPS_NAMESPACE}::attention_bwd", mutates_args=())
def attention_bwd(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                  lse: torch.Tensor, dropout_keys: torch.Tensor | None, mask: list[torch.Tensor], block_size: int,
                  causal: bool, dropout_p: float, scale: float,
                  deterministic: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _launch_bwd(do, q, k, v, o, lse, dropout_keys, _block_mask(mask, block_size, q.shape[2], causal), causal,
                       dropout_p, scale, deterministic)


@torch.library.custom_op(f"{OPS_NAMESPACE}::attention_bwd_qkvpacked", mutates_args=())
def attention_bwd_qkvpacked(do: torch.Tensor, qkv: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
                            dropout_keys: torch.Tensor | None, mask: list[torch.Tensor], block_size: int,
                            causal: bool, dropout_p: float, scale: float, deterministic: bool) -> torch.Tensor:
    """attention_bwd for q, k, v packed in one (B, N, 3, H, D) tensor: their gradient, packed the same way.

    Opaque to torch.compile, unlike the triton_ops: its kernels write through views of the packed gradient, and
    Inductor, tracing them, would clone that gradient once per view and merge the clones (three full copies, more
    than the fused copy that joins three separate gradients). Called as it is, the kernels write the slots in
    place; only the single pass's fp32 dQ accumulator is converted into its slot afterwards (measured in GPT-2
    small: docs/dev/kernel-notes.md, fourteenth to sixteenth sessions)."""
    q, k, v = _unpack(qkv)
    return _launch_bwd(do, q, k, v, o, lse, dropout_keys, _block_mask(mask, block_size, q.shape[2], causal), causal,
                       dropout_p, scale, deterministic, dqkv=qkv.new_empty(qkv.shape), launch=_launch_directly)


@attention_bwd_qkvpacked.register_fake
def _(do, qkv, o, lse, dropout_keys, mask, block_size, causal, dropout_p, scale, deterministic):
    return qkv.new_empty(qkv.shape)


class _Attention(torch.autograd.Function):
    """Autograd over the two ops, the same in eager calls and under torch.compile (which traces it into one graph).
    A torch.autograd.Function rather than the ops' register_autograd: same graphs, but an eager forward+backward
    spends a quarter less time in Python (register_autograd's wrapper flattens and refills every argument twice;
    docs/dev/kernel-notes.md)."""

    @staticmethod
    def forward(ctx, q, k, v, keys, block_size, causal, dropout_p, scale, deterministic, *mask):
        o, lse = attention_fwd(q, k, v, keys, list(mask), block_size, causal, dropout_p, scale, deterministic)
        ctx.save_for_backward(q, k, v, o, lse, keys, *mask)
        ctx.options = (block_size, causal, dropout_p, scale, deterministic)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, keys, *mask = ctx.saved_tensors
        dq, dk, dv = attention_bwd(do, q, k, v, o, lse, keys, mask, *ctx.options)
        return dq, dk, dv, None, None, None, None, None, None, *([None] * len(mask))


class _AttentionQKVPacked(torch.autograd.Function):
    """_Attention over q, k, v packed in one (B, N, 3, H, D) tensor, whose gradient the backward writes whole."""

    @staticmethod
    def forward(ctx, qkv, keys, block_size, causal, dropout_p, scale, deterministic, *mask):
        o, lse = attention_fwd(*_unpack(qkv), keys, list(mask), block_size, causal, dropout_p, scale, deterministic)
        ctx.save_for_backward(qkv, o, lse, keys, *mask)
        ctx.options = (block_size, causal, dropout_p, scale, deterministic)
        return o

    @staticmethod
    def backward(ctx, do):
        qkv, o, lse, keys, *mask = ctx.saved_tensors
        dqkv = attention_bwd_qkvpacked(do, qkv, o, lse, keys, mask, *ctx.options)
        return dqkv, None, None, None, None, None, None, *([None] * len(mask))


# ----------------------------------------------------------------------------------------------------------------
# public functions
# ----------------------------------------------------------------------------------------------------------------


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> None:
    if not (q.dim() == 4 and q.shape == k.shape == v.shape):
        raise ValueError(f"q, k, v must all be (B, H, N, D); got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"q, k, v must share one dtype of float16, bfloat16 or float32; got {q.dtype}, "
                         f"{k.dtype}, {v.dtype}")
    if q.shape[-1] > 128 or q.shape[-1] % 8:
        raise ValueError(f"head dim {q.shape[-1]} not supported: use a multiple of 8 up to 128 "
                         "(16, 32, 48, 64, 80, 96, 128 are tested)")
    if any(t.stride(-1) != 1 for t in (q, k, v)):
        raise ValueError("q, k, v need unit stride in the last (head) dimension; call .contiguous() first")
    if scale is not None and not scale > 0:
        raise ValueError(f"scale={scale} must be positive (default 1/sqrt(head dim))")
    if q.device.type != "cuda" and not (q.device.type == "cpu" and INTERPRET):
        raise RuntimeError(f"flash attention runs on CUDA tensors; got {q.device.type}. On the CPU it runs only "
                           "through the Triton interpreter (slow, for tests): set TRITON_INTERPRET=1 before "
                           "triton is imported.")


def kernel_dropout_p(dropout_p: float) -> float:
    """The dropout probability the kernels apply: p rounded to a multiple of 2^-24 (the hash's threshold)."""
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p={dropout_p} must be in [0, 1)")
    rounded = round(dropout_p * DROPOUT_LEVELS) / DROPOUT_LEVELS
    if (rounded == 0) != (dropout_p == 0) or rounded >= 1:
        raise ValueError(f"dropout_p={dropout_p} rounds to {rounded} at the kernels' 2^-24 resolution; "
                         f"use 0 or a value in [2^-24, 1 - 2^-24]")
    return rounded


def draw_dropout_keys(B: int, H: int, N: int, device: torch.device | str) -> torch.Tensor:
    """The random keys of one attention call with dropout: (B*H, 3, N) int32, two per row then one per column of
    each head, drawn from torch's generator (torch.manual_seed reproduces them)."""
    return torch.randint(-2**31, 2**31, (B * H, 3, N), dtype=torch.int32, device=device)


def _check_packed(qkv: torch.Tensor) -> None:
    if qkv.dim() != 5 or qkv.shape[2] != 3:
        raise ValueError(f"qkv must be (B, N, 3, H, D), q, k, v packed as a fused projection makes them (its "
                         f"(B, N, 3 * H * D) output viewed so); got {tuple(qkv.shape)}")


def _attention(q, k, v, mask: BlockMask | None, causal, dropout_p, scale, deterministic, qkv=None) -> torch.Tensor:
    """Checks, dropout keys, then the autograd function: _AttentionQKVPacked when given qkv (q, k, v its
    views), _Attention otherwise."""
    _check_inputs(q, k, v, scale)
    p = kernel_dropout_p(float(dropout_p))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    B, H, N, _ = q.shape
    keys = draw_dropout_keys(B, H, N, q.device) if p > 0 else None
    tensors, block_size = (mask.tensors(), mask.block_size) if mask is not None else ([], 0)
    if qkv is not None:
        return _AttentionQKVPacked.apply(qkv, keys, block_size, causal, p, scale, deterministic, *tensors)
    return _Attention.apply(q, k, v, keys, block_size, causal, p, scale, deterministic, *tensors)


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                    dropout_p: float = 0.0, scale: float | None = None, deterministic: bool = False) -> torch.Tensor:
    """softmax(q k^T * scale [causal mask]) [dropout] v over (B, H, N, D) tensors, without the N x N matrix.

    deterministic=True: always the two-pass backward, whose gradients are bitwise repeatable; by default dropout
    runs at head dims up to 64 take the faster single pass, which accumulates dQ with atomics whose order varies
    in the last bits."""
    return _attention(q, k, v, None, causal, dropout_p, scale, deterministic)


def flash_attention_qkvpacked(qkv: torch.Tensor, *, causal: bool = False, dropout_p: float = 0.0,
                              scale: float | None = None, deterministic: bool = False) -> torch.Tensor:
    """flash_attention over q, k, v packed in one (B, N, 3, H, D) tensor, e.g. a fused QKV projection's output
    viewed so; returns (B, H, N, D). Same kernels; the backward writes the packed gradient itself, where separate
    q, k, v leave autograd a copy that joins three gradients into the projection's."""
    _check_packed(qkv)
    return _attention(*_unpack(qkv), None, causal, dropout_p, scale, deterministic, qkv=qkv)


@torch.compiler.assume_constant_result
def _block_mask_key(layout: torch.Tensor, seq_len: int, block_size: int, causal: bool, device: str) -> tuple:
    """Under torch.compile this runs once, eagerly, while tracing: it builds the mask into the cache and returns
    its key, a constant of the graph, which then reads the mask's tensors from the cache as inputs (no graph
    break, no rebuild per call)."""
    key = block_masks.cache_key(layout, seq_len, block_size, causal, device)
    block_masks.cached(key, layout)
    return key


def _layout_mask(layout: torch.Tensor, q: torch.Tensor, causal: bool, block_size: int) -> BlockMask:
    """The BlockMask of a layout at q's length: from the bounded cache (while tracing, a constant of the graph)."""
    N, H = q.shape[2], q.shape[1]
    if layout.dim() == 3 and layout.shape[0] not in (1, H):
        raise ValueError(f"per-head layout has {layout.shape[0]} heads but the inputs have H={H}")
    if torch.compiler.is_compiling():
        return block_masks.traced(_block_mask_key(layout, N, block_size, causal, str(q.device)))
    return block_masks.create_block_mask(layout, N, block_size, causal, q.device)


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: torch.Tensor, *,
                           causal: bool = False, dropout_p: float = 0.0, scale: float | None = None,
                           block_size: int = 128, deterministic: bool = False) -> torch.Tensor:
    """Attention where query i sees key j only if layout[i // block_size, j // block_size] (and j <= i if causal).

    layout: bool (nqb, nkb) shared by heads or (H, nqb, nkb), with nqb = nkb = ceil(N / block_size). Only kept
    blocks are computed. A query row with no kept key outputs 0 and gets 0 gradient.
    """
    return _attention(q, k, v, _layout_mask(layout, q, causal, block_size), causal, dropout_p, scale, deterministic)


def block_sparse_attention_qkvpacked(qkv: torch.Tensor, layout: torch.Tensor, *, causal: bool = False,
                                     dropout_p: float = 0.0, scale: float | None = None, block_size: int = 128,
                                     deterministic: bool = False) -> torch.Tensor:
    """block_sparse_attention over q, k, v packed in one (B, N, 3, H, D) tensor (see flash_attention_qkvpacked)."""
    _check_packed(qkv)
    q, k, v = _unpack(qkv)
    return _attention(q, k, v, _layout_mask(layout, q, causal, block_size), causal, dropout_p, scale, deterministic,
                      qkv=qkv)
