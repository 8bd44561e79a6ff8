"""GPU checks of the Triton attention kernels at realistic sizes (skipped without CUDA)."""

import pytest
import torch
import torch.nn.functional as F

from kernels import block_sparse_attention, draw_dropout_seed, dropout_keep_mask, flash_attention
from kernels import sparsity_patterns as sp
from kernels.reference import expand_layout, reference_attention

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def rel_err(x, ref):
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


def fwd_bwd(fn, q, k, v, do):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    o = fn(q, k, v)
    o.backward(do)
    return o, q.grad, k.grad, v.grad


@pytest.mark.parametrize("dtype,causal,B,H,N,D", [
    (torch.bfloat16, True, 4, 12, 2048, 64),
    (torch.float16, False, 4, 12, 2048, 64),
    (torch.bfloat16, False, 2, 6, 1000, 128),
    (torch.bfloat16, True, 3, 5, 777, 80),
    (torch.float16, True, 2, 4, 513, 48),
])
def test_error_at_most_twice_sdpa_error(dtype, causal, B, H, N, D):
    torch.manual_seed(0)
    qkv = torch.randn(B, N, 3, H, D, device="cuda", dtype=dtype)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # strided views, like the model's
    do = torch.randn(B, H, N, D, device="cuda", dtype=dtype)
    ref = fwd_bwd(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=causal),
                  *(t.float() for t in (q, k, v, do)))
    ours = fwd_bwd(lambda a, b, c: flash_attention(a, b, c, causal=causal), q, k, v, do)
    sdpa = fwd_bwd(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=causal), q, k, v, do)
    for name, x, s, r in zip(["o", "dq", "dk", "dv"], ours, sdpa, ref, strict=True):
        assert torch.isfinite(x).all(), name
        assert rel_err(x, r) <= 2 * rel_err(s, r) + 1e-4, f"{name}: ours {rel_err(x, r):.2e} sdpa {rel_err(s, r):.2e}"


def test_repeated_runs_are_bitwise_identical_with_dropout():
    torch.manual_seed(0)
    q, k, v, do = (torch.randn(2, 12, 1536, 64, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    runs = []
    for _ in range(2):
        torch.manual_seed(42)
        runs.append(fwd_bwd(lambda a, b, c: flash_attention(a, b, c, causal=True, dropout_p=0.1), q, k, v, do))
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def test_dropout_matches_reference_with_same_mask():
    torch.manual_seed(0)
    B, H, N, D, p = 2, 3, 300, 64, 0.2
    q, k, v, do = (torch.randn(B, H, N, D, device="cuda", dtype=torch.float16) for _ in range(4))
    torch.manual_seed(7)
    ours = fwd_bwd(lambda a, b, c: flash_attention(a, b, c, causal=True, dropout_p=p), q, k, v, do)
    torch.manual_seed(7)
    keep = dropout_keep_mask(draw_dropout_seed("cuda"), B, H, N, p)
    assert abs(keep.float().mean().item() - (1 - p)) < 0.01
    ref = fwd_bwd(lambda a, b, c: reference_attention(a, b, c, causal=True, keep=keep, dropout_p=p),
                  *(t.double() for t in (q, k, v, do)))
    for name, x, r in zip(["o", "dq", "dk", "dv"], ours, ref, strict=True):
        assert rel_err(x, r) < 5e-3, name


@pytest.mark.parametrize("block_size", [64, 128])
@pytest.mark.parametrize("causal", [True, False])
def test_block_sparse_matches_masked_reference(block_size, causal):
    torch.manual_seed(0)
    B, H, N, D = 2, 4, 1000, 64
    q, k, v, do = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    layout = sp.build_layout("local+random+global", N, block_size, window=128, num_random=2, seed=1)
    ours = fwd_bwd(lambda a, b, c: block_sparse_attention(a, b, c, layout, causal=causal, block_size=block_size),
                   q, k, v, do)
    mask = expand_layout(layout, N, block_size).cuda()
    ref = fwd_bwd(lambda a, b, c: reference_attention(a, b, c, causal=causal, mask=mask),
                  *(t.double() for t in (q, k, v, do)))
    for name, x, r in zip(["o", "dq", "dk", "dv"], ours, ref, strict=True):
        assert rel_err(x, r) < 1e-2, name


def test_all_true_layout_equals_flash():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 1024, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    dense = flash_attention(q, k, v, causal=True)
    sparse = block_sparse_attention(q, k, v, sp.dense(8), causal=True, block_size=128)
    assert rel_err(sparse, dense) < 1e-2
