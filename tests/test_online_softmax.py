"""Tiling + the online softmax (paper Sec. 3.1): per-block maxima and sums combine into the exact softmax,
and the running max m(x) is what keeps exp() finite in fp16."""

import math

import pytest
import torch


def blockwise_attention(q, k, v, block: int, *, use_max: bool = True, offset: float | None = None):
    """One query row-block at a time over key blocks, keeping (m, l, o) as FlashAttention does.

    use_max=False replaces the running max by `offset` (a constant shift; 0 means no shift at all).
    """
    s_dtype = q.dtype
    n = k.shape[0]
    m = torch.full((q.shape[0], 1), -math.inf, dtype=s_dtype)
    l = torch.zeros((q.shape[0], 1), dtype=s_dtype)
    o = torch.zeros((q.shape[0], v.shape[1]), dtype=s_dtype)
    for j in range(0, n, block):
        s = q @ k[j:j + block].T
        if use_max:
            m_new = torch.maximum(m, s.max(dim=1, keepdim=True).values)
        else:
            m_new = torch.full_like(m, offset)
        p = torch.exp(s - m_new)
        alpha = torch.exp(m - m_new) if use_max else torch.ones_like(m)  # rescale what was summed so far
        l = alpha * l + p.sum(dim=1, keepdim=True)
        o = alpha * o + p @ v[j:j + block]
        m = m_new
    return o / l


def reference(q, k, v):
    return torch.softmax(q.double() @ k.double().T, dim=-1) @ v.double()


def make(n=64, d=16, scale=1.0, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(3))
    return (scale * q).to(dtype), k.to(dtype), v.to(dtype)


@pytest.mark.parametrize("block", [1, 7, 16, 64])
def test_blockwise_equals_full_softmax(block):
    q, k, v = make()
    torch.testing.assert_close(blockwise_attention(q, k, v, block), reference(q, k, v), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("offset", [0.0, -3.0, 5.0, 11.5])
def test_any_constant_offset_is_exact_in_exact_arithmetic(offset):
    # softmax(x) = e^(x-c) / sum e^(x-c) for any c; float64 with moderate scores stands in for exact arithmetic.
    q, k, v = make()
    out = blockwise_attention(q, k, v, 16, use_max=False, offset=offset)
    torch.testing.assert_close(out, reference(q, k, v), rtol=1e-10, atol=1e-10)


def test_dropping_the_running_max_overflows_in_fp16():
    # Scores around +-20: e^20 = 4.9e8 exceeds fp16's largest finite value, 65504.
    q, k, v = make(scale=5.0, dtype=torch.float16)
    assert (q.float() @ k.float().T).max() > math.log(torch.finfo(torch.float16).max)
    no_max = blockwise_attention(q, k, v, 16, use_max=False, offset=0.0)
    assert not torch.isfinite(no_max).all()  # inf / inf = nan
    with_max = blockwise_attention(q, k, v, 16)
    assert torch.isfinite(with_max).all()
    torch.testing.assert_close(with_max.double(), reference(q, k, v), rtol=0, atol=2e-2)


def test_a_fixed_offset_cannot_replace_the_max():
    # One constant can't suit every row: rows whose scores sit far below it underflow to 0/0 instead.
    q, k, v = make(scale=5.0, dtype=torch.float16)
    row_max = (q.float() @ k.float().T).max(dim=1).values
    offset = float(row_max.max())  # safe for the largest row ...
    out = blockwise_attention(q, k, v, 16, use_max=False, offset=offset)
    assert row_max.min() < offset - 20  # ... but some row sits far below it,
    assert not torch.isfinite(out).all()  # so its sum underflows
