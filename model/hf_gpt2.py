"""The paper's "HuggingFace" baseline: transformers' GPT2LMHeadModel (eager attention) with GPT's interface.

Same shape as the preset, built from a GPT2Config (no download), trained by the same loop as GPT. Its state dict
is in GPT's names and layout, so checkpoints, load_model() and the scripts read both alike.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import causal_density
from .gpt import GPT, GPTConfig
from .pretrained import CONV1D, gpt2_classes

DESCRIPTION = "hf-eager (transformers GPT2LMHeadModel, attn_implementation=eager)"


class HFGPT2(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        GPT2Config, GPT2LMHeadModel = gpt2_classes()
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

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, return_logits: bool = False):
        logits = self.hf(input_ids=idx).logits
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return (logits if return_logits else None), loss

    def check_attention(self, device, dtype) -> None:
        pass  # eager attention runs on any device and dtype torch does

    def describe_attention(self) -> str:
        return DESCRIPTION

    def attention_density(self, seq_len: int) -> float:
        return causal_density(seq_len)

    # The same parameter count, FLOP count, optimizer grouping and sampling as GPT.
    num_params = GPT.num_params
    flops_per_token = GPT.flops_per_token
    configure_optimizers = GPT.configure_optimizers
    generate = GPT.generate

    @property
    def transformer(self):
        return self.hf.transformer

    def state_dict(self, *args, **kwargs) -> dict:
        """Weights under GPT's names and layout (Conv1D (in, out) matrices transposed to Linear's (out, in))."""
        sd = self.hf.state_dict(*args, **kwargs)
        return {k: v.t() if k.endswith(CONV1D) else v for k, v in sd.items()
                if not k.endswith((".attn.bias", ".attn.masked_bias"))}

    def load_state_dict(self, state_dict: dict, strict: bool = True, assign: bool = False):
        sd = {k: v.t() if k.endswith(CONV1D) else v for k, v in state_dict.items()}
        return self.hf.load_state_dict(sd, strict=strict, assign=assign)
