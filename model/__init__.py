"""GPT-2 with a swappable attention backend. `from model import GPT, GPTConfig`."""

from .attention import available_backends, get_backend
from .gpt import GPT, GPTConfig
from .hf_gpt2 import HFGPT2
from .presets import PRESETS

# model.impl -> the class train.py builds; both present the same interface (forward, configure_optimizers,
# flops_per_token, attention_density, describe_attention, state_dict in GPT's layout).
MODELS = {"ours": GPT, "hf": HFGPT2}

__all__ = ["GPT", "GPTConfig", "HFGPT2", "MODELS", "PRESETS", "available_backends", "get_backend"]
