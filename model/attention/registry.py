"""The attention seam: a registry of backends, each a function over (B, H, N, D) tensors.

A backend is `attend(q, k, v, *, causal, dropout_p, scale, **options) -> o`, plus a declaration of what it
supports. The model calls `attend_packed(qkv, ...)` with its fused projection's output viewed as (B, N, 3, H, D):
a backend whose kernels take q, k, v packed (`attend_qkv`) gets it whole, so its backward can write the
projection's gradient in one piece; the others get (B, H, N, D) views of it. The model asks for a backend by
name when it is built; a request the backend cannot serve is refused there, with a message that says what is
allowed, never silently served by another backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


class UnsupportedAttentionError(ValueError):
    """The requested backend cannot serve this configuration."""


@dataclass(frozen=True)
class AttentionBackend:
    name: str
    attend: Callable[..., torch.Tensor]
    description: str
    devices: tuple[str, ...]  # torch device types, e.g. ("cuda", "cpu")
    dtypes: tuple[torch.dtype, ...]
    head_dims: tuple[int, ...] | None = None  # None: any head dim
    dropout: bool = True
    causal: bool = True
    non_causal: bool = True
    options: tuple[str, ...] = ()  # names of backend-specific options (e.g. block-sparse pattern)
    # (options, seq_len, causal) -> fraction of the N x N score matrix computed; used by MFU.
    density: Callable[[dict, int, bool], float] | None = None
    # (device type) -> why this backend cannot run there in this process (e.g. no GPU), or None.
    unavailable: Callable[[str], str | None] | None = field(default=None, compare=False)
    # attend over q, k, v packed in one (B, N, 3, H, D) tensor; None: attend_packed hands `attend` views of it.
    attend_qkv: Callable[..., torch.Tensor] | None = None

    def attend_packed(self, qkv: torch.Tensor, **kwargs) -> torch.Tensor:
        """Attention over q, k, v packed in one (B, N, 3, H, D) tensor (a fused projection's output): (B, H, N, D)."""
        if self.attend_qkv is not None:
            return self.attend_qkv(qkv, **kwargs)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
        return self.attend(q, k, v, **kwargs)

    def check(self, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
              head_dim: int | None = None, dropout_p: float = 0.0, causal: bool = True,
              options: dict | None = None) -> None:
        """Raise UnsupportedAttentionError naming what is allowed if this request cannot be served."""
        problems = []
        device_type = torch.device(device).type if device is not None else None
        if device_type is not None and device_type not in self.devices:
            problems.append(f"device '{device_type}' (supported: {', '.join(self.devices)})")
        if dtype is not None and dtype not in self.dtypes:
            allowed = ", ".join(str(d).removeprefix("torch.") for d in self.dtypes)
            problems.append(f"dtype {str(dtype).removeprefix('torch.')} (supported: {allowed})")
        if head_dim is not None and self.head_dims is not None and head_dim not in self.head_dims:
            problems.append(f"head dim {head_dim} (supported: {', '.join(map(str, self.head_dims))})")
        if dropout_p > 0 and not self.dropout:
            problems.append(f"attention dropout {dropout_p} (this backend has none; set dropout to 0)")
        if causal and not self.causal:
            problems.append("causal masking")
        if not causal and not self.non_causal:
            problems.append("non-causal attention")
        unknown = sorted(set(options or {}) - set(self.options))
        if unknown:
            allowed = ", ".join(self.options) or "none"
            problems.append(f"options {unknown} (this backend takes: {allowed})")
        if not problems and device_type is not None and self.unavailable is not None:
            reason = self.unavailable(device_type)
            if reason:
                problems.append(reason)
        if problems:
            others = ", ".join(n for n in available_backends() if n != self.name and _runs_on(n, device_type))
            raise UnsupportedAttentionError(
                f"attention backend '{self.name}' does not support " + "; ".join(problems)
                + f". Change the request or choose another backend: {others}.")

    def describe(self, options: dict | None = None) -> str:
        extra = "".join(f" {k}={v}" for k, v in sorted((options or {}).items()))
        return f"{self.name}{extra} ({self.description})"


_BACKENDS: dict[str, AttentionBackend] = {}


def register(backend: AttentionBackend) -> AttentionBackend:
    if backend.name in _BACKENDS:
        raise ValueError(f"attention backend '{backend.name}' is already registered")
    _BACKENDS[backend.name] = backend
    return backend


def _runs_on(name: str, device_type: str | None) -> bool:
    """Whether a backend can run on this device type in this process (any device when none is given)."""
    backend = _BACKENDS[name]
    if device_type is None:
        return True
    return device_type in backend.devices and not (backend.unavailable and backend.unavailable(device_type))


def available_backends() -> list[str]:
    return sorted(_BACKENDS)


def get_backend(name: str) -> AttentionBackend:
    try:
        return _BACKENDS[name]
    except KeyError:
        raise UnsupportedAttentionError(
            f"unknown attention backend '{name}'; choose one of: {', '.join(available_backends())}") from None


def attention_density(name: str, options: dict | None, seq_len: int, causal: bool) -> float:
    """Fraction of the N x N attention matrix a backend computes (0.5-ish for causal dense)."""
    backend = get_backend(name)
    if backend.density is not None:
        return backend.density(options or {}, seq_len, causal)
    return causal_density(seq_len) if causal else 1.0


def causal_density(seq_len: int) -> float:
    return (seq_len + 1) / (2 * seq_len)
