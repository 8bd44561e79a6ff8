"""Float64 attention reference: an explicit element mask and an explicit dropout keep mask (tests, benchmarks)."""

from __future__ import annotations

import math

import torch


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
