"""Shared checks for the attention kernel tests: inputs as the model makes them, errors against references."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.reference import reference_attention


def dtype_for(device: str) -> torch.dtype:
    """bf16 on a GPU (what training runs); fp32 through the interpreter (numpy has no bf16)."""
    return torch.bfloat16 if device == "cuda" else torch.float32


def packed_qkv(B, H, N, D, device="cpu", dtype=None, seed=0, std=1.0):
    """(qkv, (q, k, v)): q, k, v as strided views of one packed projection, as the model makes them."""
    torch.manual_seed(seed)
    qkv = (torch.randn(B, N, 3, H, D, device=device) * std).to(dtype or dtype_for(device)).requires_grad_()
    return qkv, qkv.permute(2, 0, 3, 1, 4)


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """||x - ref|| / ||ref|| in float64 (the denominator floored at 1 for near-zero references)."""
    return ((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1.0)).item()


def output_and_grads(o: torch.Tensor, qkv: torch.Tensor, do: torch.Tensor) -> list[torch.Tensor]:
    (grad,) = torch.autograd.grad(o, qkv, do.to(o.dtype))
    return [o, grad[:, :, 0], grad[:, :, 1], grad[:, :, 2]]


def torch_low_precision(q, k, v, causal, mask=None):
    """PyTorch's own attention in the inputs' dtype: the error budget for ours."""
    allowed = None
    N = q.shape[-2]
    if mask is not None or causal:
        allowed = torch.ones(N, N, dtype=torch.bool, device=q.device)
        allowed = allowed.tril() if causal else allowed
        allowed = allowed & mask if mask is not None else allowed
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


def assert_matches_reference(o, qkv, q, k, v, *, causal=False, mask=None, keep=None, dropout_p=0.0, scale=None):
    """Output and gradients of ours (o, from the packed qkv) against the float64 reference: within 1e-5 in fp32
    (interpreter), within twice PyTorch's own error in bf16/fp16 (GPU; 2e-2 with dropout, which PyTorch cannot
    apply with our mask)."""
    ref = reference_attention(q, k, v, causal=causal, mask=mask, keep=keep, dropout_p=dropout_p, scale=scale)
    do = torch.randn_like(ref)
    ours, exact = output_and_grads(o, qkv, do), output_and_grads(ref, qkv, do)
    if o.dtype == torch.float32:
        budget = [1e-5] * 4
    elif keep is not None:
        budget = [2e-2] * 4
    else:
        theirs = output_and_grads(torch_low_precision(q, k, v, causal, mask), qkv, do)
        budget = [2 * rel_err(t, r) + 1e-4 for t, r in zip(theirs, exact, strict=True)]
    for name, x, r, b in zip(["o", "dq", "dk", "dv"], ours, exact, budget, strict=True):
        assert torch.isfinite(x).all(), name
        assert rel_err(x, r) <= b, f"{name}: {rel_err(x, r):.2e} > {b:.2e}"
    return ours
