"""The paper's "HuggingFace" baseline: transformers' GPT2LMHeadModel (eager attention) behind our interface.

Same shape as the preset, built from a GPT2Config (no download), trained by the same loop as our GPT.
Checkpoints hold the weights in our GPT's layout, so load_model() and the scripts read them alike.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import GPT, GPTConfig
from model.attention import causal_density

# HF's GPT-2 uses Conv1D (in, out) weights where our GPT has nn.Linear (out, in).
_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


class HFGPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        if not config.bias:
            raise ValueError("model.impl=hf builds GPT-2 with biases; drop model.overrides.bias=false")
        hf_config = GPT2Config(
            vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
            n_layer=config.n_layer, n_head=config.n_head, resid_pdrop=config.dropout, embd_pdrop=config.dropout,
            attn_pdrop=config.attn_dropout_p, activation_function="gelu_new", use_cache=False,
            bos_token_id=None, eos_token_id=None,
        )
        self.config = config
        self.hf = GPT2LMHeadModel._from_config(hf_config, attn_implementation="eager")

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        logits = self.hf(input_ids=idx).logits
        if targets is None:
            return logits[:, [-1], :], None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def check_attention(self, device, dtype) -> None:
        pass  # eager attention runs on any device and dtype torch does

    def describe_attention(self) -> str:
        return "hf-eager (transformers GPT2LMHeadModel, attn_implementation=eager)"

    def attention_density(self, seq_len: int) -> float:
        return causal_density(seq_len)

    # The same parameter count, FLOP count and optimizer grouping as our GPT.
    num_params = GPT.num_params
    flops_per_token = GPT.flops_per_token
    configure_optimizers = GPT.configure_optimizers
    generate = GPT.generate

    @property
    def transformer(self):
        return self.hf.transformer

    def gpt_state_dict(self) -> dict:
        """Weights under our GPT's names and layout."""
        sd = {k: v for k, v in self.hf.state_dict().items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
        return {k: v.t() if k.endswith(_TRANSPOSED) else v for k, v in sd.items()}

    def load_gpt_state_dict(self, sd: dict) -> None:
        self.hf.load_state_dict({k: v.t() if k.endswith(_TRANSPOSED) else v for k, v in sd.items()}, strict=False)
