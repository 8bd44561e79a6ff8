"""Float64 attention reference for tests: an explicit element mask and an explicit dropout keep mask."""

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


def packed_qkv(B, H, N, D, dtype=torch.float32, seed=0, device="cpu"):
    """(qkv, (q, k, v)): q, k, v as strided views of one packed projection, as the model makes them."""
    torch.manual_seed(seed)
    qkv = torch.randn(B, N, 3, H, D, dtype=dtype, device=device, requires_grad=True)
    return qkv, qkv.permute(2, 0, 3, 1, 4)


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """||x - ref|| / ||ref|| in float64 (the denominator floored at 1 for near-zero references)."""
    return ((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1.0)).item()


def assert_matches_reference(o, ref, qkv, tol=1e-5):
    """Output and the gradients wrt the packed qkv of `o` (ours) and `ref` (float64) agree to `tol`."""
    do = torch.randn_like(o)
    (grad,) = torch.autograd.grad(o, qkv, do)
    (grad_ref,) = torch.autograd.grad(ref, qkv, do.double())
    assert rel_err(o, ref) < tol, f"output: {rel_err(o, ref):.2e}"
    for i, name in enumerate("qkv"):
        err = rel_err(grad[:, :, i], grad_ref[:, :, i])
        assert err < tol, f"d{name}: {err:.2e}"
    return grad
