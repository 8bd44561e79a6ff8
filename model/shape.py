"""Refuse an impossible GPT-2 shape before anything is built: non-positive sizes, or more weights than memory.

A config from a user, a checkpoint or a Hugging Face config.json can say n_layer=10**9 (building would run for
minutes and exhaust memory) or n_layer=-1 (an empty model that "trains"). check_shape answers in microseconds.
"""

from __future__ import annotations

import os

import torch

FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")
BYTES_PER_PARAM = 4  # weights are built in fp32


class ModelShapeError(ValueError):
    """The model shape is invalid or does not fit in memory; the message says what is allowed."""


def estimated_params(n_layer: int, n_embd: int, block_size: int, vocab_size: int) -> int:
    """GPT-2 parameters: embeddings (tied head) + per block 12 n_embd^2 weights and 13 n_embd biases/norms."""
    return vocab_size * n_embd + block_size * n_embd + n_layer * (12 * n_embd * n_embd + 13 * n_embd) + 2 * n_embd


def memory_bytes(device: str | torch.device | None = None) -> int:
    """What the weights must fit in: the host's RAM (they are built there), and a CUDA device's memory."""
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available():
        return min(host, torch.cuda.get_device_properties(torch.device(device)).total_memory)
    return host


def check_shape(shape: dict, source: str = "the model config", device=None) -> None:
    """Raise ModelShapeError unless the FIELDS present in `shape` are positive ints that make a model that fits."""
    problems = [f"{k}={shape[k]!r}" for k in FIELDS
                if k in shape and (not isinstance(shape[k], int) or isinstance(shape[k], bool) or shape[k] < 1)]
    if problems:
        raise ModelShapeError(f"{source} has {', '.join(problems)}: model sizes must be positive integers")
    n_head, n_embd = shape.get("n_head"), shape.get("n_embd")
    if n_head and n_embd and n_embd % n_head:
        raise ModelShapeError(f"{source} has n_embd={n_embd} not divisible by n_head={n_head}; choose an "
                              f"n_head that divides n_embd")
    if all(k in shape for k in ("n_layer", "n_embd", "block_size", "vocab_size")):
        n = estimated_params(shape["n_layer"], shape["n_embd"], shape["block_size"], shape["vocab_size"])
        available = memory_bytes(device)
        if n * BYTES_PER_PARAM > available:
            raise ModelShapeError(f"{source} describes a model of about {n:.3g} parameters "
                                  f"({n * BYTES_PER_PARAM / 2**30:,.0f} GiB in fp32), more than the "
                                  f"{available / 2**30:,.0f} GiB of memory here; use a smaller n_layer / n_embd")
