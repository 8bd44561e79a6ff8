"""Model presets, attention-backend parity and causality."""

import pytest
import torch

from model import GPT, PRESETS, GPTConfig

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
    logits, loss = model(x, x)
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
    la, loss_a = a(x, y)
    lb, loss_b = b(x, y)
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
