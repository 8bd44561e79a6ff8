"""A minimal GPT-2 (nanoGPT's shape): the reference the project's model and training step are timed against.

Same parameters and maths as model.GPT without dropout; nothing else (no registry, no checks), so whatever the
project's model costs beyond this is overhead (tests/test_model.py, scripts/bench_train_step.py). Attention is
causal SDPA unless another `attend(qkv)` is given, over the projection viewed as q, k, v packed (B, N, 3, H, D),
returning (B, H, N, D) (e.g. a backend's attend_packed, for the same kernels as the model's).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def sdpa_causal(qkv: torch.Tensor) -> torch.Tensor:
    q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, attend):
        super().__init__()
        self.n_head, self.attend = n_head, attend
        self.ln_1, self.ln_2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.c_attn, self.attn_proj = nn.Linear(n_embd, 3 * n_embd), nn.Linear(n_embd, n_embd)
        self.c_fc, self.mlp_proj = nn.Linear(n_embd, 4 * n_embd), nn.Linear(4 * n_embd, n_embd)

    def forward(self, x):
        B, T, C = x.shape
        y = self.attend(self.c_attn(self.ln_1(x)).view(B, T, 3, self.n_head, C // self.n_head))
        x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class MinimalGPT2(nn.Module):
    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int, attend=None):
        super().__init__()
        attend = attend or sdpa_causal
        self.wte, self.wpe = nn.Embedding(vocab_size, n_embd), nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList(Block(n_embd, n_head, attend) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight
        for name, p in self.named_parameters():  # GPT-2's init, as model.GPT's
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02 / (2 * n_layer) ** 0.5 if name.endswith("proj.weight") else 0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))

    def configure_optimizer(self, lr: float = 6e-4, weight_decay: float = 0.1, fused: bool = False):
        decay = [p for p in self.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.dim() < 2]
        return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95), fused=fused)
