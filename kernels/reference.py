"""Float64 attention reference with an explicit element mask and dropout keep mask, and the kernels' dropout mask
computed with torch ops (tests, benchmarks, debugging)."""

from __future__ import annotations

import math

import torch

from .attention import DROPOUT_LEVELS, kernel_dropout_p

_U32 = 0xFFFFFFFF


def _mul_u32(x: torch.Tensor, c: int) -> torch.Tensor:
    """x * c mod 2^32 for x, c < 2^32 held in int64, without int64 overflow."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _U32


def dropout_keep_mask(keys: torch.Tensor, B: int, H: int, dropout_p: float) -> torch.Tensor:
    """(B, H, N, N) bool: the keep mask the kernels apply for these keys (draw_dropout_keys; small N only). The same
    hash as kernels/attention_fwd.py's dropout_keep, in int64 arithmetic."""
    k = keys.long() & _U32
    row_a, row_b, col = k[:, 0, :, None], k[:, 1, :, None], k[:, 2, None, :]
    x = (_mul_u32(row_a ^ col, 0x7FEB352D) + row_b) & _U32
    threshold = round(kernel_dropout_p(dropout_p) * DROPOUT_LEVELS) << 8
    N = keys.shape[-1]
    return (x >= threshold).view(B, H, N, N)


def expand_layout(layout: torch.Tensor, seq_len: int, block_size: int) -> torch.Tensor:
    """Block layout (.., nqb, nkb) -> element mask (.., N, N)."""
    idx = torch.arange(seq_len, device=layout.device) // block_size
    return layout[..., idx, :][..., idx]


def reference_attention(q, k, v, *, causal=False, scale=None, mask=None, keep=None, dropout_p=0.0):
    """softmax(q k^T * scale, masked) [* keep / (1 - p)] v in float64; fully masked rows give 0."""
    q, k, v = (t.double() for t in (q, k, v))
    N = q.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (q @ k.transpose(-1, -2)) * scale
    allowed = torch.ones(N, N, dtype=torch.bool, device=q.device)
    if causal:
        allowed = allowed.tril()
    if mask is not None:
        allowed = allowed & mask
    s = s.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    if keep is not None:
        p = p * keep / (1.0 - dropout_p)
    return p @ v
