"""Which key tiles each query tile visits (and the transpose), built from a block layout; cached.

A layout is a bool tensor (num_q_blocks, num_k_blocks), shared by heads, or (H, num_q_blocks, num_k_blocks), at
`block_size` granularity. Kernel tiles may be smaller than a layout block (never larger: a tile must divide
block_size, so each tile lies inside one block and is either wholly kept or wholly dropped by the layout). Each
kept tile pair is then either *full* (every element kept: unmasked fast path) or *partial* (on the causal diagonal
or crossing the sequence end: the kernel applies element masks).

For each query tile: count and ascending indices of full key tiles, likewise partial ones ("rows"); for each key
tile, the same over query tiles ("cols"), which the dK/dV pass walks. Index lists are padded to the longest row.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

_CACHE: OrderedDict = OrderedDict()
_CACHE_SIZE = 64


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


def tile_status(layout: torch.Tensor, seq_len: int, block_size: int, tile_m: int, tile_n: int,
                causal: bool) -> torch.Tensor:
    """(H, query tiles, key tiles) int8: 0 skipped, 1 full, 2 partial (element masks needed)."""
    if block_size % tile_m or block_size % tile_n:
        raise ValueError(f"tiles {tile_m}x{tile_n} must divide block_size={block_size}")
    n_m, n_n = -(-seq_len // tile_m), -(-seq_len // tile_n)
    qi = torch.arange(n_m)
    ki = torch.arange(n_n)
    kept = layout[:, (qi * tile_m // block_size)][:, :, (ki * tile_n // block_size)]
    q_lo, q_hi = qi[:, None] * tile_m, qi[:, None] * tile_m + tile_m - 1
    k_lo, k_hi = ki[None, :] * tile_n, ki[None, :] * tile_n + tile_n - 1
    partial = (q_hi >= seq_len) | (k_hi >= seq_len)
    if causal:
        kept = kept & (k_lo <= q_hi)  # some element on or below the diagonal
        partial = partial | (k_hi > q_lo)  # some element above it
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


class BlockMask:
    """Index lists for one (layout, N, tiles, causal); `rows` and `cols` are (full_cnt, full_idx, part_cnt,
    part_idx), on the device of the attention inputs."""

    def __init__(self, status: torch.Tensor, device: torch.device):
        self.status = status
        self.rows = self._both(status, device)
        self.cols = self._both(status.transpose(1, 2), device)

    @staticmethod
    def _both(status, device):
        """Full and partial lists padded to one width, so the kernel indexes both with the same strides."""
        width = max(int((status == v).sum(-1).max()) for v in (1, 2)) if status.numel() else 1
        lists = (*_lists(status, 1, max(width, 1)), *_lists(status, 2, max(width, 1)))
        return tuple(t.to(device) for t in lists)

    def __getitem__(self, which: str):
        return getattr(self, which)

    @property
    def visited_fraction(self) -> float:
        return float((self.status > 0).float().mean())


def get_block_mask(layout: torch.Tensor, seq_len: int, block_size: int, tile_m: int, tile_n: int, causal: bool,
                   device: torch.device) -> BlockMask:
    layout = check_layout(layout, seq_len, block_size)
    key = (layout.numpy().tobytes(), tuple(layout.shape), seq_len, block_size, tile_m, tile_n, causal, str(device))
    mask = _CACHE.get(key)
    if mask is None:
        mask = BlockMask(tile_status(layout, seq_len, block_size, tile_m, tile_n, causal), device)
        _CACHE[key] = mask
        if len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(key)
    return mask
