"""The flash and block_sparse attention backends inside the model (CPU: interpreter; GPU: torch.compile)."""

import os

import pytest
import torch

from model import GPT, GPTConfig
from model.attention import UnsupportedAttentionError, attention_density, get_backend

TINY = dict(block_size=64, vocab_size=128, n_layer=2, n_head=2, n_embd=64, dropout=0.0, bias=True)


def _loss_and_grads(attn, attn_options=None, seed=0):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**TINY, attn=attn, attn_options=attn_options or {}))
    x = torch.randint(0, 128, (2, 40))
    _, loss = model(x, x)
    loss.backward()
    return loss.item(), [p.grad for p in model.parameters()]


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="CPU test through the Triton interpreter")
@pytest.mark.parametrize("attn,options", [("flash", {}), ("block_sparse", {"pattern": "dense", "block_size": 16})])
def test_model_with_triton_backend_matches_sdpa(attn, options):
    loss_ref, grads_ref = _loss_and_grads("sdpa")
    loss, grads = _loss_and_grads(attn, options)
    assert loss == pytest.approx(loss_ref, rel=1e-5)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-3, atol=1e-5)


def test_backend_refuses_what_it_cannot_do():
    flash = get_backend("flash")
    with pytest.raises(UnsupportedAttentionError, match="head dim 256"):
        flash.check(head_dim=256)
    with pytest.raises(UnsupportedAttentionError, match="float64"):
        flash.check(dtype=torch.float64)
    with pytest.raises(UnsupportedAttentionError, match="options"):
        flash.check(options={"window": 256})
    get_backend("block_sparse").check(head_dim=64, options={"pattern": "local", "window": 256})


def test_refusal_suggests_only_backends_that_run_here(monkeypatch):
    """Without a GPU (and without the interpreter) flash and block_sparse both refuse the CPU: neither may be
    suggested as the alternative to the other."""
    from model.attention import flash

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert flash.triton_unavailable("cpu")
    with pytest.raises(UnsupportedAttentionError) as refused:
        get_backend("flash").check(device="cpu")
    alternatives = str(refused.value).rsplit("choose another backend:", 1)[1]
    assert "sdpa" in alternatives and "naive" in alternatives and "block_sparse" not in alternatives


def test_block_sparse_density_for_mfu():
    local = {"pattern": "local", "block_size": 128, "window": 256}  # diagonal block and one neighbour each side
    assert attention_density("block_sparse", local, 1024, causal=False) == pytest.approx(22 / 64)
    dense_causal = attention_density("block_sparse", {"pattern": "dense"}, 1024, causal=True)
    assert dense_causal == pytest.approx(attention_density("flash", {}, 1024, causal=True))


@pytest.mark.parametrize("options", [{"pattern": "local", "block_size": 16, "window": 16},
                                     {"pattern": "butterfly", "block_size": 16}])
def test_block_mask_is_built_while_tracing(monkeypatch, options):
    """torch.compile sees the same block mask as eager, with no graph break. On the CPU the Triton op cannot be
    traced (the interpreter needs real data), so the kernel is replaced by a function of the mask lists."""
    import sys

    fa = sys.modules["kernels.attention"]
    uses_mask = lambda q, k, v, mask, *rest, qkv=None: q + sum(  # noqa: E731
        (j + 1) * t.float().sum() for j, t in enumerate(mask.tensors())) * 1e-3 + mask.block_size
    monkeypatch.setattr(fa, "_attention", uses_mask)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**TINY, "n_embd": 128}, attn="block_sparse", attn_options=options))
    x = torch.randint(0, 128, (2, 64))
    _, eager = model(x, x)
    _, compiled = torch.compile(model, backend="aot_eager", fullgraph=True)(x, x)  # fullgraph: a break raises
    assert compiled.item() == pytest.approx(eager.item(), abs=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.compile through Triton)")
@pytest.mark.parametrize("attn,options", [("flash", {}), ("block_sparse", {"pattern": "local", "block_size": 16,
                                                                           "window": 16})])
def test_compiled_model_matches_eager(attn, options):
    """Both compile into one graph with no break: flash's custom ops, and block_sparse's, whose layout and block
    mask are built once while tracing (torch.compiler.assume_constant_result) and read by the graph as inputs."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**TINY, "n_embd": 128}, attn=attn, attn_options=options)).cuda()
    x = torch.randint(0, 128, (2, 64), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        explanation = torch._dynamo.explain(model)(x, x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(model)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        _, loss = compiled(x, x)
        _, loss_eager = model(x, x)
    loss.backward()
    assert loss.item() == pytest.approx(loss_eager.item(), rel=1e-2)
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CUDA graphs)")
@pytest.mark.parametrize("attn,options", [("flash", {}), ("block_sparse", {"pattern": "local", "block_size": 16,
                                                                           "window": 16})])
def test_cuda_graph_training_steps_match_eager(attn, options):
    """torch.compile(mode="reduce-overhead") (train.compile_mode=reduce-overhead) records the step in a CUDA graph:
    the custom ops must be capturable (no host sync, no allocation outside the graph's pool) and replay correctly."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**TINY, "n_embd": 128}, attn=attn, attn_options=options)).cuda()
    graphed = torch.compile(model, mode="reduce-overhead")
    x = torch.randint(0, 128, (2, 64), device="cuda")
    for _ in range(4):  # warm-up, recording, then replays; train.py marks and zeroes each step the same way
        torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = graphed(x, x)
        loss.backward()
        model.zero_grad(set_to_none=True)  # .grad would otherwise be a graph output that the next replay reuses
    torch.compiler.cudagraph_mark_step_begin()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = graphed(x, x)[1].item()
        _, loss_eager = model(x, x)
    assert loss == pytest.approx(loss_eager.item(), rel=1e-2)
