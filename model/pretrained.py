"""GPT-2 weights in and out: transformers' GPT2LMHeadModel <-> our GPT.

The two layouts differ only in that GPT-2's linear layers are `Conv1D`s storing weights as (in, out); ours are
nn.Linear (out, in). Names are otherwise the same, so conversion is a transpose of those four matrices per block.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .shape import ModelShapeError, check_shape

HUB_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# GPTConfig fields a caller may change on a pretrained model; the shape comes from the weights.
OVERRIDABLE = ("dropout", "attn_dropout", "attn_options", "block_size", "vocab_size")


class PretrainedError(ValueError):
    """The name or directory cannot be loaded as GPT-2."""


def gpt2_classes():
    """transformers' (GPT2Config, GPT2LMHeadModel). Where Hugging Face's `kernels` distribution is installed (a
    dependency of transformers from 5.25 on), transformers imports it by the name of this project's `kernels`
    package and fails: that failure becomes an error that says what to do."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as e:
        if "from 'kernels'" not in str(e):
            raise
        raise PretrainedError(
            f"transformers could not import GPT-2 ({e}): it imports Hugging Face's `kernels` package, whose import "
            f"name is this project's kernel package. Run `pip uninstall kernels` and `pip install 'transformers<5.25'` "
            f"(the range pyproject.toml allows).") from None
    return GPT2Config, GPT2LMHeadModel


def _resolve(name_or_path: str) -> str:
    """A local save_pretrained directory, or a known hub name; anything else is refused with the choices."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            hint = (" It holds a train.py checkpoint: load it with training.checkpoint.load_model "
                    "(or train.init_from=resume)." if (path / "ckpt.pt").exists() else "")
            raise PretrainedError(f"'{path}' has no config.json, so it is not a transformers model directory.{hint} "
                                  f"Pass a directory written by GPT2LMHeadModel.save_pretrained (or "
                                  f"scripts/export_hf.py), or a hub name: {', '.join(HUB_NAMES)}.")
        try:
            hf_config = json.loads(config_file.read_text())
        except ValueError as e:
            raise PretrainedError(f"'{config_file}' is not valid JSON ({e}); re-export the model") from None
        model_type = hf_config.get("model_type")
        if model_type != "gpt2":
            raise PretrainedError(f"'{path}' holds a '{model_type}' model, not GPT-2 (config.json model_type must "
                                  f"be 'gpt2'). Only GPT-2 checkpoints map onto this model.")
        _check_shape(hf_config, config_file)
        return str(path)
    if name_or_path.removeprefix("openai-community/") in HUB_NAMES:
        return name_or_path
    raise PretrainedError(f"'{name_or_path}' is neither a local directory nor a GPT-2 hub name. Use one of "
                          f"{', '.join(HUB_NAMES)} (needs the hub or its cache) or the path of a directory "
                          f"written by save_pretrained.")


def _check_shape(hf_config: dict, config_file: Path) -> None:
    """Refuse n_layer=10**9 or -1 before transformers starts building (it would run for minutes, or train nothing)."""
    names = {"n_layer": "n_layer", "n_head": "n_head", "n_embd": "n_embd", "n_positions": "block_size",
             "vocab_size": "vocab_size"}
    shape = {ours: hf_config[theirs] for theirs, ours in names.items() if theirs in hf_config}
    try:
        check_shape(shape, source=f"'{config_file}'")
    except ModelShapeError as e:
        raise PretrainedError(str(e)) from None


def load_hf(name_or_path: str):
    """transformers' GPT2LMHeadModel in fp32, with a clear error when the hub is out of reach."""
    _, GPT2LMHeadModel = gpt2_classes()

    source = _resolve(name_or_path)
    try:
        return GPT2LMHeadModel.from_pretrained(source)  # copied into our fp32 params whatever its dtype
    except OSError as e:
        raise PretrainedError(
            f"could not load '{name_or_path}' through transformers: {str(e).splitlines()[0][:300]}. Hub names need "
            f"network access or a copy in the Hugging Face cache (HF_HOME); offline, save the model once elsewhere "
            f"with GPT2LMHeadModel.from_pretrained('{name_or_path}').save_pretrained(DIR), copy DIR here and pass "
            f"its path.") from None


def _check_architecture(hc) -> None:
    unsupported = []
    if hc.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
        unsupported.append(f"activation_function={hc.activation_function} (ours is gelu_new)")
    if hc.n_inner not in (None, 4 * hc.n_embd):
        unsupported.append(f"n_inner={hc.n_inner} (ours is 4 * n_embd)")
    if not hc.scale_attn_weights or hc.scale_attn_by_inverse_layer_idx:
        unsupported.append("non-standard attention scaling")
    if not hc.tie_word_embeddings:
        unsupported.append("untied input/output embeddings (ours are tied)")
    if abs(hc.layer_norm_epsilon - 1e-5) > 1e-12:
        unsupported.append(f"layer_norm_epsilon={hc.layer_norm_epsilon} (ours is 1e-5)")
    if unsupported:
        raise PretrainedError("this GPT-2 variant differs from our architecture: " + "; ".join(unsupported))


def load_pretrained(cls, name_or_path: str, attn: str = "sdpa", **overrides):
    """Our GPT (class `cls`) with the weights of a hub GPT-2 or a save_pretrained directory.

    overrides: dropout / attn_dropout (for fine-tuning; default 0), attn_options, block_size (<= the
    checkpoint's n_positions: crops the position table) and vocab_size (>= the checkpoint's: pads the embedding
    with zero rows, e.g. 50304 for speed; the extra ids never occur in GPT-2 tokenized data).
    """
    from .gpt import GPTConfig

    bad = sorted(set(overrides) - set(OVERRIDABLE))
    if bad:
        raise PretrainedError(f"cannot override {bad} on a pretrained model (its shape comes from the weights); "
                              f"allowed: {', '.join(OVERRIDABLE)}")
    hf = load_hf(name_or_path)
    hc = hf.config
    _check_architecture(hc)
    block_size = overrides.pop("block_size", None) or hc.n_positions
    vocab_size = overrides.pop("vocab_size", None) or hc.vocab_size
    if block_size > hc.n_positions:
        raise PretrainedError(f"block_size={block_size} exceeds the {hc.n_positions} positions '{name_or_path}' was "
                              f"trained with; use block_size <= {hc.n_positions}")
    if vocab_size < hc.vocab_size:
        raise PretrainedError(f"vocab_size={vocab_size} is smaller than the checkpoint's {hc.vocab_size}")
    config = GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=hc.n_layer, n_head=hc.n_head,
                       n_embd=hc.n_embd, bias=True, attn=attn, **{"dropout": 0.0, **overrides})
    model = cls(config)
    ours = model.state_dict()
    sd = {k: v for k, v in hf.state_dict().items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    with torch.no_grad():
        for k, v in sd.items():
            if k.endswith(CONV1D):
                v = v.t()
            if k == "transformer.wpe.weight":
                v = v[:block_size]
            if k in ("transformer.wte.weight", "lm_head.weight"):
                v = torch.cat([v, v.new_zeros(vocab_size - v.size(0), v.size(1))])
            target = ours[k]
            if target.shape != v.shape:
                raise PretrainedError(f"weight {k}: checkpoint shape {tuple(v.shape)} != model {tuple(target.shape)}")
            target.copy_(v)
    missing = set(ours) - set(sd)
    if missing:
        raise PretrainedError(f"'{name_or_path}' lacks weights {sorted(missing)[:5]}; is it a GPT2LMHeadModel?")
    return model


def to_hf(model, vocab_size: int | None = None):
    """A transformers GPT2LMHeadModel with our model's weights; the vocab is cut back to `vocab_size` if given."""
    GPT2Config, GPT2LMHeadModel = gpt2_classes()

    c = model.config
    vocab_size = vocab_size or c.vocab_size
    if vocab_size > c.vocab_size:
        raise ValueError(f"vocab_size={vocab_size} exceeds the model's {c.vocab_size}")
    if not c.bias:
        raise ValueError("GPT-2 in transformers always has biases; this model was trained with bias=False")
    eot = 50256 if vocab_size > 50256 else None  # GPT-2's <|endoftext|>, when the vocab is GPT-2's
    hc = GPT2Config(vocab_size=vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
                    n_head=c.n_head, activation_function="gelu_new", resid_pdrop=c.dropout, embd_pdrop=c.dropout,
                    attn_pdrop=c.attn_dropout_p, layer_norm_epsilon=1e-5, tie_word_embeddings=True,
                    bos_token_id=eot, eos_token_id=eot)
    hf = GPT2LMHeadModel(hc)
    hf_sd = hf.state_dict()
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if k not in hf_sd:
                continue
            v = v.t() if k.endswith(CONV1D) else v
            if k in ("transformer.wte.weight", "lm_head.weight"):
                v = v[:vocab_size]
            hf_sd[k].copy_(v)
    return hf.eval()
