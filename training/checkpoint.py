"""Checkpoints (the ckpt.pt contract in docs/dev/CONTRACTS.md): atomic save, checked load, load_model."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from model import GPT, GPTConfig

CKPT_NAME = "ckpt.pt"
REQUIRED_KEYS = ("model", "model_config", "step")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or not one of ours."""


def checkpoint_path(path: str | os.PathLike) -> Path:
    """A run directory or a .pt file -> the checkpoint file; a clear error when there is none."""
    path = Path(path)
    if path.is_dir():
        path = path / CKPT_NAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at '{path}'. Pass a run directory that contains {CKPT_NAME} "
                              f"(e.g. outputs/<date>/<time>) or the path of a .pt file written by train.py.")
    return path


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write to a temp file then rename: a crash mid-write never leaves a half-written ckpt.pt."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    path = checkpoint_path(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch.load fails in many ways on a truncated or foreign file
        raise CheckpointError(f"checkpoint '{path}' is corrupt or not a torch checkpoint ({type(e).__name__}). "
                              f"Use another checkpoint or start from scratch (train.init_from=scratch).") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint '{path}' lacks {missing}; it was not written by train.py.")
    return ckpt


def load_model(path: str | os.PathLike, map_location="cpu", **config_overrides) -> GPT:
    """Rebuild the trained GPT from a checkpoint (or run directory), in eval mode.

    Overrides change the GPTConfig, e.g. load_model(run_dir, attn="flash") or dropout=0.0.
    """
    ckpt = load_checkpoint(path, map_location=map_location)
    config = GPTConfig(**{**ckpt["model_config"], **config_overrides})
    model = GPT(config)
    model.load_state_dict(ckpt["model"])
    return model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu").eval()


def rng_state() -> dict:
    """Every RNG a step can draw from, in types torch.load(weights_only=True) accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],
        "python": [list(random.getstate()[1]), random.getstate()[2]],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    py_state, gauss_next = state["python"]
    random.setstate((3, tuple(py_state), gauss_next))
