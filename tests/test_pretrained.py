"""GPT-2 weights in: tiny GPT-2s saved by transformers load into our GPT with equal logits, on every backend."""

import json
import sys
import types

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from model import GPT, available_backends, get_backend
from model.pretrained import PretrainedError, gpt2_classes

VOCAB, CTX = 101, 48


def save_tiny_gpt2(path, seed=0, **kw):
    torch.manual_seed(seed)
    config = GPT2Config(**{"vocab_size": VOCAB, "n_positions": CTX, "n_embd": 64, "n_layer": 2, "n_head": 4, **kw})
    hf = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # GPT-2's init leaves biases and LayerNorms trivial; make them count in the comparison
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(path)
    return hf


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-gpt2")
    return path, save_tiny_gpt2(path)


def backends():
    for name in ("naive", "sdpa", "flash"):
        if name not in available_backends():
            yield pytest.param(name, marks=pytest.mark.skip(reason=f"attention backend '{name}' not registered"))
        else:
            yield name


@pytest.mark.parametrize("attn", list(backends()))
def test_logits_match_transformers(tiny, attn):
    path, hf = tiny
    try:
        get_backend(attn).check(device="cpu", dtype=torch.float32, head_dim=16)
    except ValueError as e:
        pytest.skip(f"{attn} cannot run here: {e}")
    model = GPT.from_pretrained(str(path), attn=attn).eval()
    assert model.config.attn == attn and model.config.vocab_size == VOCAB and model.config.block_size == CTX
    x = torch.randint(0, VOCAB, (2, CTX))
    with torch.no_grad():
        ours, _ = model(x)
        theirs = hf(x).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_overrides_for_fine_tuning(tiny):
    path, hf = tiny
    model = GPT.from_pretrained(str(path), attn="naive", dropout=0.1, block_size=16, vocab_size=128)
    assert model.config.dropout == 0.1 and model.config.block_size == 16 and model.config.vocab_size == 128
    x = torch.randint(0, VOCAB, (1, 16))
    with torch.no_grad():
        ours, _ = model.eval()(x)
        torch.testing.assert_close(ours[..., :VOCAB], hf(x).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("overrides, match", [
    ({"block_size": CTX + 1}, "exceeds the 48 positions"),
    ({"vocab_size": VOCAB - 1}, "smaller than the checkpoint"),
    ({"n_layer": 3}, "cannot override"),
])
def test_bad_overrides(tiny, overrides, match):
    with pytest.raises(PretrainedError, match=match):
        GPT.from_pretrained(str(tiny[0]), **overrides)


def test_directory_that_is_not_gpt2(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(PretrainedError, match="'bert' model, not GPT-2"):
        GPT.from_pretrained(str(tmp_path))
    (tmp_path / "config.json").unlink()
    (tmp_path / "ckpt.pt").write_bytes(b"")
    with pytest.raises(PretrainedError, match="no config.json.*train.py checkpoint"):
        GPT.from_pretrained(str(tmp_path))


def test_gpt2_variant_with_another_architecture(tmp_path):
    save_tiny_gpt2(tmp_path, activation_function="relu")
    with pytest.raises(PretrainedError, match="activation_function=relu"):
        GPT.from_pretrained(str(tmp_path))


def test_unknown_name():
    with pytest.raises(PretrainedError, match="gpt2, gpt2-medium, gpt2-large, gpt2-xl"):
        GPT.from_pretrained("gpt-5")


def test_hub_name_offline_says_what_to_do(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache, whatever this machine holds
    with pytest.raises(PretrainedError, match="save_pretrained"):
        GPT.from_pretrained("gpt2-xl")


def test_transformers_failing_on_hugging_faces_kernels_package_is_a_clear_error(monkeypatch):
    """Hugging Face's `kernels` distribution, where installed, is imported by transformers under the name of this
    project's kernel package; the ImportError that gives becomes an error saying what to run."""

    def clash(name):
        raise ImportError("cannot import name 'CUDAProperties' from 'kernels' (/repo/kernels/__init__.py)")

    broken = types.ModuleType("transformers")
    broken.__getattr__ = clash
    monkeypatch.setitem(sys.modules, "transformers", broken)
    with pytest.raises(PretrainedError, match=r"pip uninstall kernels.*transformers<5\.25"):
        gpt2_classes()

    def other(name):
        raise ImportError("No module named 'safetensors'")

    broken.__getattr__ = other
    with pytest.raises(ImportError, match="safetensors"):  # any other import failure stays as it was
        gpt2_classes()
