"""Model presets, attention-backend parity, causality, and no overhead against a minimal GPT-2."""

import collections

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from model import GPT, PRESETS, GPTConfig
from training.minimal_gpt2 import MinimalGPT2

# Parameter counts without position embeddings (as nanoGPT reports them), vocab padded to 50304.
EXPECTED_M = {"gpt2": 124, "gpt2-medium": 354, "gpt2-large": 773, "gpt2-xl": 1556}


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_shapes_and_params(name):
    config = GPTConfig.preset(name)
    with torch.device("meta"):
        model = GPT(config)
    assert model.transformer.wte.weight.shape == (config.vocab_size, config.n_embd)
    assert model.transformer.wpe.weight.shape == (config.block_size, config.n_embd)
    assert len(model.transformer.h) == config.n_layer
    assert model.transformer.h[0].attn.c_attn.weight.shape == (3 * config.n_embd, config.n_embd)
    if name in EXPECTED_M:
        assert model.num_params() / 1e6 == pytest.approx(EXPECTED_M[name], rel=0.01)
    x = torch.zeros(2, 16, dtype=torch.long, device="meta")
    logits, loss = model(x, x, return_logits=True)
    assert logits.shape == (2, 16, config.vocab_size) and loss.shape == ()


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="gpt2-nano"):
        GPTConfig.preset("gpt5")


def _pair(**overrides):
    torch.manual_seed(0)
    a = GPT(GPTConfig.preset("gpt2-nano", attn="naive", **overrides)).double()
    b = GPT(GPTConfig.preset("gpt2-nano", attn="sdpa", **overrides)).double()
    b.load_state_dict(a.state_dict())
    return a, b


def test_naive_and_sdpa_agree_on_logits_and_gradients():
    a, b = _pair()
    x = torch.randint(0, 256, (3, 40))
    y = torch.randint(0, 256, (3, 40))
    la, loss_a = a(x, y, return_logits=True)
    lb, loss_b = b(x, y, return_logits=True)
    torch.testing.assert_close(la, lb)
    loss_a.backward()
    loss_b.backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, msg=name)


@pytest.mark.parametrize("attn", ["naive", "sdpa"])
def test_causal_future_tokens_do_not_affect_the_past(attn):
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("gpt2-nano", attn=attn)).double()
    n, t = 24, 10
    x = torch.randint(0, 256, (1, n))
    emb = model.transformer.wte(x).detach().requires_grad_(True)
    # Run the blocks on the embeddings directly so gradients reach every input position.
    h = model.transformer.drop(emb + model.transformer.wpe(torch.arange(n)))
    for block in model.transformer.h:
        h = block(h)
    out = model.lm_head(model.transformer.ln_f(h))
    out[0, t].sum().backward()
    assert emb.grad[0, t + 1:].abs().max() == 0
    assert emb.grad[0, : t + 1].abs().sum() > 0


def test_training_forward_returns_the_loss_only():
    """A training step must not hold the (B, N, vocab) logits through its backward."""
    model = GPT(GPTConfig.preset("gpt2-nano"))
    x = torch.randint(0, 256, (2, 16))
    logits, loss = model(x, x)
    assert logits is None and loss.shape == ()
    assert model(x)[0].shape == (2, 16, 256) and model(x, x, return_logits=True)[0].shape == (2, 16, 256)


def minimal_twin(model: GPT) -> MinimalGPT2:
    c = model.config
    twin = MinimalGPT2(c.vocab_size, c.block_size, c.n_layer, c.n_head, c.n_embd)
    renames = (("transformer.", ""), ("attn.c_proj", "attn_proj"), ("mlp.c_proj", "mlp_proj"),
               ("attn.c_attn", "c_attn"), ("mlp.c_fc", "c_fc"))
    sd = {}
    for k, v in model.state_dict().items():
        for old, new in renames:
            k = k.replace(old, new)
        sd[k] = v
    twin.load_state_dict(sd)
    return twin


# Ops that only relabel memory (views, metadata) or are no-ops; the rest launch work on a GPU.
VIEW_OPS = {"as_strided", "view", "reshape", "transpose", "permute", "select", "slice", "narrow", "split", "unbind",
            "expand", "t", "detach", "alias", "_unsafe_view", "empty", "empty_like", "empty_strided", "_reshape_alias",
            "dropout", "unsqueeze", "squeeze", "contiguous", "lift_fresh", "result_type", "to", "resolve_conj"}


def work_ops(fn) -> collections.Counter:
    fn().backward()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn().backward()
    names = (e.name.removeprefix("aten::") for e in prof.events() if e.name.startswith("aten::"))
    return collections.Counter(n for n in names if n not in VIEW_OPS)


def test_no_more_work_than_a_minimal_gpt2():
    """Same maths as a nanoGPT-shaped GPT-2, and no extra copies or launches in one forward + backward."""
    torch.manual_seed(0)
    ours = GPT(GPTConfig.preset("gpt2-nano", attn="sdpa"))
    twin = minimal_twin(ours)
    xy = torch.randint(0, 256, (2, 33))
    x, y = xy[:, :-1], xy[:, 1:]
    torch.testing.assert_close(ours(x, y)[1], twin(x, y))
    extra = work_ops(lambda: ours(x, y)[1]) - work_ops(lambda: twin(x, y))
    assert not extra, f"ops the minimal GPT-2 does not run: {dict(extra)}"
