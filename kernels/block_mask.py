"""BlockMask: which key blocks each query block visits, and the transpose, built from a block layout.

A layout is a bool tensor (num_q_blocks, num_k_blocks), shared by heads, or (H, num_q_blocks, num_k_blocks), at
`block_size` granularity (layout[i, j]: query block i sees key block j). Each kept block is either *full* (every
element kept: the kernels' unmasked path) or *partial* (on the causal diagonal or crossing the sequence end: the
kernels apply element masks). Kernel tiles divide block_size, so a kernel visits a listed block as several tiles.

Like FlexAttention's BlockMask: per query block the counts and ascending indices of full and partial key blocks
(`kv_*`, walked by the forward and the deterministic dQ pass), and per key block the same over query blocks
(`q_*`, walked by the dK/dV pass). Index lists are padded to the longest row. `create_block_mask()` is the one
constructor; it keeps the last 64 masks, keyed by the layout's contents and the shapes.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, fields

import torch

CACHE_SIZE = 64


@dataclass(frozen=True)
class BlockMask:
    block_size: int
    seq_len: int
    causal: bool
    kv_full_count: torch.Tensor  # (H or 1, q blocks) int32
    kv_full_index: torch.Tensor  # (H or 1, q blocks, width) int32
    kv_part_count: torch.Tensor
    kv_part_index: torch.Tensor
    q_full_count: torch.Tensor  # (H or 1, k blocks): the transpose
    q_full_index: torch.Tensor
    q_part_count: torch.Tensor
    q_part_index: torch.Tensor

    @property
    def shape(self) -> tuple[int, int, int]:
        n = self.kv_full_count.shape[-1]
        return self.kv_full_count.shape[0], n, n

    @property
    def density(self) -> float:
        """Fraction of (head, query block, key block) triples visited."""
        visited = int(self.kv_full_count.sum()) + int(self.kv_part_count.sum())
        h, n, _ = self.shape
        return visited / (h * n * n)

    def tensors(self) -> list[torch.Tensor]:
        """The index tensors in field order: how the mask crosses the custom-op boundary (see from_tensors)."""
        return [getattr(self, f.name) for f in fields(self)[3:]]  # after block_size, seq_len, causal

    @classmethod
    def from_tensors(cls, tensors: list[torch.Tensor], block_size: int, seq_len: int, causal: bool) -> BlockMask:
        return cls(block_size, seq_len, causal, *tensors)

    def __repr__(self) -> str:
        h, n, _ = self.shape
        return (f"BlockMask(heads={h}, blocks={n}x{n}, block_size={self.block_size}, seq_len={self.seq_len}, "
                f"causal={self.causal}, density={self.density:.3f})")


def check_layout(layout: torch.Tensor, seq_len: int, block_size: int) -> torch.Tensor:
    """Validate a layout and return it as (H or 1, nqb, nkb) bool on the CPU."""
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block_size={block_size}: must be a power of two >= 16 (e.g. 64 or 128)")
    if layout.dim() == 2:
        layout = layout.unsqueeze(0)
    n_blocks = -(-seq_len // block_size)
    if layout.dim() != 3 or layout.shape[-2:] != (n_blocks, n_blocks):
        raise ValueError(f"layout of shape {tuple(layout.shape)} does not fit N={seq_len} with block_size="
                         f"{block_size}: expected ({n_blocks}, {n_blocks}) or (H, {n_blocks}, {n_blocks}), "
                         f"i.e. ceil(N / block_size) blocks per side")
    return layout.to(device="cpu", dtype=torch.bool)


def block_status(layout: torch.Tensor, seq_len: int, block_size: int, causal: bool) -> torch.Tensor:
    """(H, query blocks, key blocks) int8: 0 skipped, 1 full, 2 partial (element masks needed)."""
    n = layout.shape[-1]
    lo = torch.arange(n) * block_size
    hi = lo + block_size - 1
    kept = layout.clone()
    partial = (hi[:, None] >= seq_len) | (hi[None, :] >= seq_len)
    if causal:
        kept &= lo[None, :] <= hi[:, None]  # some element on or below the diagonal
        partial = partial | (hi[None, :] > lo[:, None])  # some element above it
    status = kept.to(torch.int8)
    status[kept & partial.expand_as(kept)] = 2
    return status


def _lists(status: torch.Tensor, value: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts (H, rows) and ascending column indices (H, rows, width) where status == value."""
    hit = status == value
    counts = hit.sum(-1, dtype=torch.int32)
    cols = torch.arange(status.shape[-1], dtype=torch.int32).expand_as(hit)
    order = torch.where(hit, cols, status.shape[-1] + cols).argsort(dim=-1)[..., :width]
    return counts.contiguous(), order.to(torch.int32).contiguous()


def _full_and_partial(status: torch.Tensor) -> list[torch.Tensor]:
    """Full and partial lists padded to one width, so the kernels index both with the same strides."""
    width = max(1, *(int((status == v).sum(-1).max()) for v in (1, 2)))
    return [*_lists(status, 1, width), *_lists(status, 2, width)]


def _build(layout: torch.Tensor, seq_len: int, block_size: int, causal: bool, device: torch.device) -> BlockMask:
    status = block_status(layout, seq_len, block_size, causal)
    lists = [*_full_and_partial(status), *_full_and_partial(status.transpose(1, 2))]
    return BlockMask(block_size, seq_len, causal, *(t.to(device) for t in lists))


_CACHE: OrderedDict[tuple, BlockMask] = OrderedDict()


def cache_key(layout: torch.Tensor, seq_len: int, block_size: int, causal: bool, device: torch.device | str) -> tuple:
    layout = check_layout(layout, seq_len, block_size)
    contents = hashlib.sha1(layout.numpy().tobytes()).hexdigest()
    return contents, tuple(layout.shape), seq_len, block_size, causal, str(torch.device(device))


def create_block_mask(layout: torch.Tensor, seq_len: int, block_size: int, causal: bool,
               device: torch.device | str) -> BlockMask:
    """The BlockMask of a layout at this sequence length, on `device` (built once per contents, then cached)."""
    return cached(cache_key(layout, seq_len, block_size, causal, device), layout)


def cached(key: tuple, layout: torch.Tensor | None = None) -> BlockMask:
    """The cached mask for a cache_key; builds it from `layout` on a miss."""
    mask = _CACHE.get(key)
    if mask is None:
        _, shape, seq_len, block_size, causal, device = key
        mask = _build(check_layout(layout, seq_len, block_size), seq_len, block_size, causal, torch.device(device))
        _CACHE[key] = mask
        if len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(key)
    return mask


def traced(key: tuple) -> BlockMask:
    """The cached mask for a key already built (no reordering of the cache: safe to trace under torch.compile)."""
    return _CACHE[key]
