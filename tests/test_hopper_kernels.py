"""The Gluon forward for Hopper (kernels/attention_fwd_hopper.py): its TMA views on any machine; its outputs, the
library's routing to it and torch.compile through it on a Hopper GPU (skipped elsewhere)."""

import math

import pytest
import torch
from attention_checks import assert_matches_reference, packed_qkv, rel_err, torch_low_precision

from kernels import attention, flash_attention
from kernels.reference import reference_attention

hopper = attention.hopper
needs_hopper = pytest.mark.skipif(
    hopper is None or not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
    reason="needs a Hopper GPU (sm_90) and triton.experimental.gluon")


@pytest.mark.skipif(hopper is None, reason="needs triton.experimental.gluon")
def test_tma_views_of_the_layouts_the_library_sees():
    B, H, N, D = 2, 3, 256, 64
    _, (q, _, _) = packed_qkv(B, H, N, D)  # views of one (B, N, 3, H, D) projection: heads in columns
    assert hopper._rows_view(q) == ([B * N, H * D], 3 * H * D, False)
    contiguous = torch.randn(B, H, N, D)
    assert hopper._rows_view(contiguous) == ([B * H * N, D], D, True)
    out = attention._empty_bhnd(contiguous)  # the outputs' (B, N, H, D) storage
    assert hopper._rows_view(out) == ([B * N, H * D], H * D, False)
    assert hopper._rows_view(contiguous.transpose(2, 3).contiguous().transpose(2, 3)) is None  # D not unit stride
    assert hopper._rows_view(torch.randn(B * H * N * D + 1)[1:].view(B, H, N, D)) is None  # 4 bytes off
    assert not hopper.supports(contiguous, contiguous, contiguous, causal=True, dropout_p=0.0,
                               sparse=False)  # a CPU tensor


def _lse_reference(q, k, causal):
    """log2 of the row sums of exp of the scaled scores (the kernels' LSE), in float64."""
    scale = 1 / math.sqrt(q.shape[-1])
    s = (q.double() @ k.double().transpose(-1, -2)) * scale
    if causal:
        s = s.masked_fill(torch.ones_like(s, dtype=torch.bool).triu(1), float("-inf"))
    return torch.logsumexp(s, -1) / math.log(2)


@needs_hopper
@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("D,N", [(64, 384), (128, 128), (128, 512)])
def test_hopper_forward_matches_reference(D, N, causal, packed):
    B, H = 2, 3
    _, (q, k, v) = packed_qkv(B, H, N, D, "cuda")
    q, k, v = (t.detach() for t in (q, k, v))
    if not packed:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    o, lse = attention._empty_bhnd(q), q.new_empty((B, H, N), dtype=torch.float32)
    hopper.forward(q, k, v, o, lse, causal=causal, scale=1 / math.sqrt(D))
    exact = reference_attention(q, k, v, causal=causal)
    budget = 2 * rel_err(torch_low_precision(q, k, v, causal), exact) + 1e-4
    assert rel_err(o, exact) <= budget
    lse_exact = _lse_reference(q, k, causal)
    assert ((lse.double() - lse_exact).abs() / lse_exact.abs().clamp_min(1)).max() < 1e-3


@needs_hopper
@pytest.mark.parametrize("heads_fastest", [True, False])
@pytest.mark.parametrize("programs", [5, 7])
def test_persistent_programs_walk_every_tile_once(programs, heads_fastest):
    """24 query tiles over a few programs: 5 take four full rounds and a partial one forwards, 7 three full rounds
    and a reversed partial one; a tile skipped or taken twice, or a K/V or Q buffer's phase lost between tiles,
    shows in the output or the LSE."""
    B, H, N, D = 2, 3, 512, 64
    _, (q, k, v) = packed_qkv(B, H, N, D, "cuda")
    q, k, v = (t.detach() for t in (q, k, v))
    o, lse = attention._empty_bhnd(q).fill_(float("nan")), q.new_full((B, H, N), float("nan"), dtype=torch.float32)
    hopper.forward(q, k, v, o, lse, causal=True, scale=1 / math.sqrt(D), programs=programs,
                   heads_fastest=heads_fastest)
    exact = reference_attention(q, k, v, causal=True)
    assert rel_err(o, exact) <= 2 * rel_err(torch_low_precision(q, k, v, True), exact) + 1e-4
    lse_exact = _lse_reference(q, k, True)
    assert ((lse.double() - lse_exact).abs() / lse_exact.abs().clamp_min(1)).max() < 1e-3


@needs_hopper
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("causal", [True, False])
def test_routed_head_dims_run_the_hopper_forward(D, causal):
    from torch.profiler import ProfilerActivity, profile

    qkv, (q, k, v) = packed_qkv(2, 2, 256, D, "cuda")
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        o = flash_attention(q, k, v, causal=causal)
        o.backward(torch.randn_like(o))
        torch.cuda.synchronize()
    names = " ".join(e.key for e in prof.key_averages())
    assert ("attn_fwd_hopper" in names) == ((D, causal) in hopper.ROUTED)
    assert_matches_reference(flash_attention(q, k, v, causal=causal), qkv, q, k, v, causal=causal)


@needs_hopper
def test_compiled_hopper_forward_matches_eager_without_graph_breaks():
    qkv, (q, k, v) = packed_qkv(2, 2, 256, 128, "cuda")
    compiled = torch.compile(lambda q, k, v: flash_attention(q, k, v, causal=True), fullgraph=True)
    eager = flash_attention(q, k, v, causal=True)
    out = compiled(q, k, v)
    torch.testing.assert_close(out, eager, rtol=0, atol=0)
    do = torch.randn_like(eager)
    (g_eager,) = torch.autograd.grad(eager, qkv, do)
    (g_compiled,) = torch.autograd.grad(out, qkv, do)
    torch.testing.assert_close(g_compiled, g_eager)
