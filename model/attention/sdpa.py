"""PyTorch's fused scaled_dot_product_attention, a reference backend (it picks its own kernel)."""

import torch
import torch.nn.functional as F

from .registry import AttentionBackend, register


def sdpa_attention(q, k, v, *, causal: bool, dropout_p: float = 0.0, scale: float | None = None):
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal, scale=scale)


register(AttentionBackend(
    name="sdpa",
    attend=sdpa_attention,
    description="torch.nn.functional.scaled_dot_product_attention",
    devices=("cpu", "cuda"),
    dtypes=(torch.float32, torch.float16, torch.bfloat16, torch.float64),
))
