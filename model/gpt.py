"""GPT-2 (Radford et al. 2019) with one seam where attention plugs in (model.attention's registry).

Learned positions, pre-LayerNorm blocks, GELU-tanh MLP, tied input/output embeddings, dropout on embeddings,
residuals and attention probabilities, GPT-2 init with residual projections scaled by 1/sqrt(2 * n_layer).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import attention_density, get_backend
from .presets import PRESETS


@dataclass
class GPTConfig:
    block_size: int = 1024  # context length
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for speed
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0  # embedding and residual dropout
    attn_dropout: float | None = None  # attention-probability dropout; None: same as dropout
    bias: bool = True
    attn: str = "sdpa"
    attn_options: dict = field(default_factory=dict)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def attn_dropout_p(self) -> float:
        return self.dropout if self.attn_dropout is None else self.attn_dropout

    @classmethod
    def preset(cls, name: str, **overrides) -> GPTConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown model preset '{name}'; choose one of: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        if config.n_embd % config.n_head != 0:
            raise ValueError(f"n_embd={config.n_embd} is not divisible by n_head={config.n_head}")
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.attn_dropout = config.attn_dropout_p
        self.attention = get_backend(config.attn)
        self.attn_options = dict(config.attn_options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        # the projection as q, k, v packed (B, N, 3, H, D): no copy forward; backends with packed kernels (flash,
        # block_sparse) write its gradient whole, elsewhere one copy joins the three gradients
        qkv = self.c_attn(x).view(B, N, 3, self.n_head, C // self.n_head)
        y = self.attention.attend_packed(qkv, causal=True, dropout_p=self.attn_dropout if self.training else 0.0,
                                         scale=None, **self.attn_options)
        y = y.transpose(1, 2).reshape(B, N, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        # Refuse what the backend cannot do now, not at the first forward pass.
        get_backend(config.attn).check(head_dim=config.head_dim, dropout_p=config.attn_dropout_p,
                                       causal=True, options=config.attn_options)
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied embeddings
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def check_attention(self, device, dtype) -> None:
        """Refuse a device/compute dtype the attention backend cannot serve (call once the run knows them)."""
        c = self.config
        get_backend(c.attn).check(device=device, dtype=dtype, head_dim=c.head_dim,
                                  dropout_p=c.attn_dropout_p, causal=True, options=c.attn_options)

    def describe_attention(self) -> str:
        return get_backend(self.config.attn).describe(self.config.attn_options)

    def attention_density(self, seq_len: int) -> float:
        """Fraction of the causal N x N score matrix the backend computes (for FLOPs and MFU)."""
        return attention_density(self.config.attn, self.config.attn_options, seq_len, causal=True)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, return_logits: bool = False):
        """(logits, loss). With targets, logits are None unless asked for: a training step must not keep the
        (B, N, vocab) logits alive through its backward."""
        B, N = idx.shape
        if N > self.config.block_size:
            raise ValueError(f"sequence length {N} exceeds the model's context of {self.config.block_size} "
                             f"tokens; use a shorter sequence or a model with model.block_size >= {N}")
        pos = torch.arange(N, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return (logits if return_logits else None), loss

    def configure_optimizers(self, weight_decay: float, learning_rate: float, betas: tuple[float, float],
                             device_type: str, fused: bool | None = None) -> torch.optim.AdamW:
        """AdamW with weight decay on 2-D weights (matmuls, embeddings) only; fused on CUDA."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        if fused is None:
            fused = device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)

    def flops_per_token(self, seq_len: int, attn_density: float) -> float:
        """Training FLOPs per token: 6 * params + attention's QK^T and PV (scaled by the mask's density)."""
        c = self.config
        return 6 * self.num_params() + 12 * c.n_layer * c.n_embd * seq_len * attn_density

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        for _ in range(max_new_tokens):
            idx_cond = idx[:, -self.config.block_size:]
            logits, _ = self(idx_cond)
            logits = logits[:, -1, :] / max(temperature, 1e-8)
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("inf")
            probs = F.softmax(logits, dim=-1)
            idx = torch.cat((idx, torch.multinomial(probs, num_samples=1, generator=generator)), dim=1)
        return idx

    @classmethod
    def from_pretrained(cls, name_or_path: str, attn: str = "sdpa", **overrides) -> GPT:
        """GPT-2 weights from the Hugging Face hub name or a local save_pretrained directory."""
        from .pretrained import load_pretrained
        return load_pretrained(cls, name_or_path, attn=attn, **overrides)

    @classmethod
    def from_checkpoint(cls, ckpt: dict, **overrides) -> GPT:
        """The model a train.py checkpoint dict holds (docs/dev/CONTRACTS.md), with GPTConfig overrides such as
        attn="flash" (another backend starts without the trained one's options)."""
        saved = ckpt["model_config"]
        if overrides.get("attn", saved.get("attn")) != saved.get("attn"):
            overrides.setdefault("attn_options", {})
        model = cls(GPTConfig(**{**saved, **overrides}))
        model.load_state_dict(ckpt["model"])
        return model

    def config_dict(self) -> dict:
        return asdict(self.config)
