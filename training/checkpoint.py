"""Checkpoints (the ckpt.pt contract in docs/dev/CONTRACTS.md): verified atomic save, checked load, load_model.

Saving refuses non-finite weights or optimizer state (the last good checkpoint stays), stores a sha256 of the
content, writes a uniquely named temp file, reads it back and verifies it, and only then renames it over the old
ckpt.pt. Loading uses torch.load(weights_only=True) (no code in a pickle runs), verifies the sha256, and checks
that the stored config describes the stored weights before anything is built.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

from model import GPT, GPTConfig
from model.shape import ModelShapeError, check_shape

from .run_dir import temp_path

CKPT_NAME = "ckpt.pt"
REQUIRED_KEYS = ("model", "model_config", "step")
RESUME_KEYS = ("optimizer", "scaler", "rng", "data_state")
CHECKSUM_KEY = "sha256"
log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, corrupt or not one of ours."""


class NonFiniteState(CheckpointError):
    """The weights or optimizer state hold NaN/inf: such a state is never saved."""


def checkpoint_path(path: str | os.PathLike) -> Path:
    """A run directory or a .pt file -> the checkpoint file; a clear error when there is none."""
    path = Path(path)
    if path.is_dir():
        path = path / CKPT_NAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at '{path}'. Pass a run directory that contains {CKPT_NAME} "
                              f"(e.g. outputs/<date>/<time>) or the path of a .pt file written by train.py.")
    return path


def content_sha256(obj) -> str:
    """sha256 over a checkpoint's content: tensor bytes with dtype and shape, other values by repr, in order."""
    h = hashlib.sha256()

    def feed(x):
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(x.shape)}".encode())
            if t.numel():
                h.update(memoryview(t.view(torch.uint8).numpy()))
        elif isinstance(x, dict):
            h.update(b"{")
            for k, v in x.items():
                feed(k)
                feed(v)
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[" if isinstance(x, list) else b"(")
            for v in x:
                feed(v)
            h.update(b"]")
        else:
            h.update(f"{type(x).__name__}:{x!r};".encode())

    feed(obj)
    return h.hexdigest()


def nonfinite_tensors(state: dict) -> list[str]:
    """Names of the model weights and optimizer-state tensors holding NaN or inf (one fused max-abs per device)."""
    named = [(f"model.{k}", v) for k, v in state.get("model", {}).items()]
    for pid, slots in (state.get("optimizer") or {}).get("state", {}).items():
        named += [(f"optimizer.state[{pid}].{k}", v) for k, v in slots.items()]
    named = [(n, t) for n, t in named if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel()]
    if not named:
        return []
    norms = torch._foreach_norm([t for _, t in named], float("inf"))
    by_device: dict[torch.device, list[int]] = {}
    for i, n in enumerate(norms):
        by_device.setdefault(n.device, []).append(i)
    if all(torch.stack([norms[i].float() for i in idx]).isfinite().all().item() for idx in by_device.values()):
        return []
    return [named[i][0] for i, n in enumerate(norms) if not n.isfinite().item()]


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Check, checksum, write to a unique temp file, verify it, then rename: ckpt.pt is always a good checkpoint.

    Raises NonFiniteState (nothing written) for NaN/inf weights or optimizer state, CheckpointError when the
    file cannot be written (disk full, permissions); in both cases the previous ckpt.pt is untouched.
    """
    path = Path(path)
    bad = nonfinite_tensors(state)
    if bad:
        raise NonFiniteState(f"step {state.get('step')}: {len(bad)} weight/optimizer tensors hold NaN or inf "
                             f"(first: {bad[0]}); not saved, the previous checkpoint in '{path.parent}' is kept")
    state = {**state, CHECKSUM_KEY: content_sha256(state)}
    tmp = None
    try:
        tmp = temp_path(path)
        torch.save(state, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        _verify(torch.load(tmp, map_location="cpu", weights_only=True, mmap=True), tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        raise CheckpointError(f"could not write the checkpoint '{path}' ({reason}); the previous checkpoint (if "
                              f"any) is kept. Free disk space or fix the directory's permissions, then resume "
                              f"with train.init_from=resume train.resume_from={path.parent}") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def _verify(ckpt: dict, path: Path) -> dict:
    """Check the stored sha256 against the content (a checkpoint from before checksums is let through)."""
    stored = ckpt.pop(CHECKSUM_KEY, None)
    if stored is None:
        log.warning("checkpoint '%s' has no checksum (written before checksums were stored): not verified", path)
    elif content_sha256(ckpt) != stored:
        raise CheckpointError(f"checkpoint '{path}' is corrupt: its content does not match the sha256 stored when "
                              f"it was written (the file changed on disk). Use another checkpoint or start from "
                              f"scratch (train.init_from=scratch).")
    return ckpt


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """A verified checkpoint: loaded without running pickled code, checksum checked, config matching weights."""
    path = checkpoint_path(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch.load fails in many ways on a truncated, foreign or malicious file
        raise CheckpointError(f"checkpoint '{path}' is corrupt or not a torch checkpoint ({type(e).__name__}). "
                              f"Use another checkpoint or start from scratch (train.init_from=scratch).") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint '{path}' lacks {missing}; it was not written by train.py.")
    _verify(ckpt, path)
    check_weights_match_config(ckpt, path)
    return ckpt


def check_resumable(ckpt: dict, path: str | os.PathLike) -> None:
    """A checkpoint to resume needs the optimizer, scaler, RNG and data states, not only weights."""
    missing = [k for k in RESUME_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint '{path}' lacks {missing}, so training cannot resume from it exactly. "
                              f"Resume from a checkpoint written by train.py, or export its weights "
                              f"(scripts/export_hf.py) and start a new run from them with train.init_from=<dir>.")


def check_weights_match_config(ckpt: dict, path: str | os.PathLike) -> GPTConfig:
    """The stored model_config builds a model whose parameter names and shapes are the stored weights'."""
    saved = ckpt["model_config"]
    fields = {f.name for f in dataclasses.fields(GPTConfig)}
    unknown = sorted(set(saved) - fields) if isinstance(saved, dict) else ["(not a dict)"]
    if unknown:
        raise CheckpointError(f"checkpoint '{path}' has a model_config with unknown fields {unknown} (allowed: "
                              f"{', '.join(sorted(fields))}); it was written by another version or edited. "
                              f"Use a checkpoint written by this train.py.")
    try:
        check_shape(saved, source=f"checkpoint '{path}'")
        config = GPTConfig(**{**saved, "attn": "sdpa", "attn_options": {}})  # shapes do not depend on attention
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in GPT(config).state_dict().items()}
    except (ModelShapeError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint '{path}': {e}") from None
    weights = ckpt["model"]
    stored = {k: tuple(v.shape) for k, v in weights.items()} if isinstance(weights, dict) else {}
    wrong = sorted(set(expected) ^ set(stored)) or sorted(k for k in expected if expected[k] != stored[k])
    if wrong:
        k = wrong[0]
        raise CheckpointError(f"checkpoint '{path}' does not match its own model_config: {len(wrong)} weights differ "
                              f"(e.g. {k}: stored {stored.get(k, 'missing')}, config expects "
                              f"{expected.get(k, 'none')}). The file was edited or assembled from two runs; use "
                              f"a checkpoint written by train.py.")
    return config


def load_model(path: str | os.PathLike, map_location="cpu", **config_overrides) -> GPT:
    """Rebuild the trained GPT from a checkpoint (or run directory), in eval mode.

    Overrides change the GPTConfig, e.g. load_model(run_dir, attn="flash") or dropout=0.0.
    """
    model = GPT.from_checkpoint(load_checkpoint(path, map_location=map_location), **config_overrides)
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
