"""FlashAttention kernel vs a float64 reference (CPU: Triton interpreter, small odd shapes)."""

import os

import pytest
import torch

from kernels import draw_dropout_seed, dropout_keep_mask, flash_attention
from kernels.reference import assert_matches_reference, packed_qkv, reference_attention, rel_err

# These run the kernels on CPU tensors through the Triton interpreter (conftest sets it when there is no GPU).
pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="CPU tests through the Triton interpreter (TRITON_INTERPRET=1)")


def check_against_reference(B, H, N, D, causal, **ref_kwargs):
    qkv, (q, k, v) = packed_qkv(B, H, N, D)
    o = flash_attention(q, k, v, causal=causal)
    ref = reference_attention(q, k, v, causal=causal, **ref_kwargs)
    assert_matches_reference(o, ref, qkv)


@pytest.mark.parametrize("B,H,N,D,causal", [
    (1, 1, 37, 64, False),
    (2, 3, 37, 48, True),
    (1, 2, 70, 80, True),
    (1, 1, 45, 128, False),
    (2, 1, 33, 16, True),
    (1, 1, 1, 64, True),
    (1, 1, 64, 32, True),  # exact multiple of the tiles
])
def test_forward_and_gradients_match_reference(B, H, N, D, causal):
    check_against_reference(B, H, N, D, causal)


def test_custom_op_path_matches_reference():
    # torch.compile goes through the registered op (eager calls skip it); check it and its autograd directly
    from kernels.flash_attention import _NO_TILES, attention_fwd

    qkv, (q, k, v) = packed_qkv(2, 2, 37, 32)
    o, lse = attention_fwd(q, k, v, None, [], _NO_TILES, True, 0.0, 0.25)
    ref = reference_attention(q, k, v, causal=True, scale=0.25)
    assert rel_err(o, ref) < 1e-5 and lse.shape == (2, 2, 37)
    do = torch.randn_like(o)
    assert rel_err(torch.autograd.grad(o, qkv, do)[0], torch.autograd.grad(ref, qkv, do.double())[0]) < 1e-5


def test_contiguous_and_half_inputs():
    # fp16 here; bf16 only on the GPU (the interpreter mishandles bf16 tensors: numpy has no bfloat16)
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 2, 40, 64, dtype=torch.float16) for _ in range(3))
    o = flash_attention(q, k, v, causal=True, scale=0.3)
    assert o.dtype == torch.float16
    assert rel_err(o, reference_attention(q, k, v, causal=True, scale=0.3)) < 1e-2


def test_dropout_reproducible_and_matches_reference_with_same_mask():
    p, (B, H, N, D) = 0.3, (2, 2, 37, 32)
    qkv, (q, k, v) = packed_qkv(B, H, N, D)
    torch.manual_seed(123)
    o1 = flash_attention(q, k, v, causal=True, dropout_p=p)
    torch.manual_seed(123)
    o2 = flash_attention(q, k, v, causal=True, dropout_p=p)
    assert torch.equal(o1, o2)
    torch.manual_seed(123)
    keep = dropout_keep_mask(draw_dropout_seed(q.device), B, H, N, p)
    ref = reference_attention(q, k, v, causal=True, keep=keep, dropout_p=p)
    assert rel_err(o1, ref) < 1e-5
    do = torch.randn_like(o1)
    (grad,) = torch.autograd.grad(o1, qkv, do)
    (grad_ref,) = torch.autograd.grad(ref, qkv, do.double())
    assert rel_err(grad, grad_ref) < 1e-5


def test_dropout_keep_rate_within_statistical_bounds():
    p, n = 0.25, 2 * 3 * 64 * 64
    keep = dropout_keep_mask(torch.tensor([7]), 2, 3, 64, p)
    rate = keep.float().mean().item()
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(rate - (1 - p)) < 5 * sigma
    assert not torch.equal(keep, dropout_keep_mask(torch.tensor([8]), 2, 3, 64, p))


def test_refuses_bad_inputs_with_a_message():
    q = torch.randn(1, 1, 8, 64)
    with pytest.raises(ValueError, match="head dim"):
        flash_attention(*(torch.randn(1, 1, 8, 256),) * 3)
    with pytest.raises(ValueError, match="unit stride"):
        flash_attention(q, q, q.transpose(-1, -2).contiguous().transpose(-1, -2))
    with pytest.raises(ValueError, match="dropout_p"):
        flash_attention(q, q, q, dropout_p=1.0)
    with pytest.raises(ValueError, match="positive"):
        flash_attention(q, q, q, scale=-1.0)
