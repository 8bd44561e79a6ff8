"""Attention backends. Importing this package registers every backend this installation has."""

from . import block_sparse, flash, naive, sdpa  # noqa: F401  (registration side effects)
from .registry import (
    AttentionBackend,
    UnsupportedAttentionError,
    attention_density,
    available_backends,
    causal_density,
    get_backend,
    register,
)

__all__ = [
    "AttentionBackend", "UnsupportedAttentionError", "attention_density", "available_backends",
    "causal_density", "get_backend", "register",
]
