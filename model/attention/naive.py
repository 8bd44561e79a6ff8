"""Standard attention, the paper's baseline: the N x N score matrix is materialised in memory."""

import math

import torch
import torch.nn.functional as F

from .registry import AttentionBackend, register


def naive_attention(q, k, v, *, causal: bool, dropout_p: float = 0.0, scale: float | None = None):
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)).float() * scale
    if causal:
        n_q, n_k = q.size(-2), k.size(-2)
        keep = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril(n_k - n_q)
        scores = scores.masked_fill(~keep, float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    if dropout_p > 0:
        probs = F.dropout(probs, p=dropout_p)
    return probs @ v


register(AttentionBackend(
    name="naive",
    attend=naive_attention,
    description="materialised QK^T -> mask -> softmax (fp32) -> dropout -> .V",
    devices=("cpu", "cuda"),
    dtypes=(torch.float32, torch.float16, torch.bfloat16, torch.float64),
))
