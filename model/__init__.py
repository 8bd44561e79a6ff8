"""GPT-2 with a swappable attention backend. `from model import GPT, GPTConfig`."""

from .attention import available_backends, get_backend
from .gpt import GPT, GPTConfig
from .presets import PRESETS

__all__ = ["GPT", "GPTConfig", "PRESETS", "available_backends", "get_backend"]
