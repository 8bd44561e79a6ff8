"""FlashAttention in Triton (kernels.attention): exact attention without the N x N matrix in memory."""

import os

import torch

from .registry import AttentionBackend, register

HEAD_DIMS = (16, 32, 48, 64, 80, 96, 128)


def flash_attend(q, k, v, *, causal: bool, dropout_p: float = 0.0, scale: float | None = None,
                 deterministic: bool = False):
    from kernels import flash_attention  # imported on first use: the model itself never needs Triton

    return flash_attention(q, k, v, causal=causal, dropout_p=dropout_p, scale=scale, deterministic=deterministic)


def flash_attend_qkv(qkv, *, causal: bool, dropout_p: float = 0.0, scale: float | None = None,
                     deterministic: bool = False):
    from kernels import flash_attention_qkvpacked

    return flash_attention_qkvpacked(qkv, causal=causal, dropout_p=dropout_p, scale=scale,
                                     deterministic=deterministic)


def triton_unavailable(device_type: str) -> str | None:
    """Why the Triton kernels cannot run on this device type in this process, or None."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "Triton, which is not installed (pip install triton, Linux with a CUDA GPU)"
    if device_type == "cuda" and not torch.cuda.is_available():
        return "CUDA, which this process cannot use (no GPU visible)"
    if device_type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return ("CPU tensors without the Triton interpreter (set TRITON_INTERPRET=1 before starting, for tests; "
                "it is slow)")
    return None


register(AttentionBackend(
    name="flash",
    attend=flash_attend,
    attend_qkv=flash_attend_qkv,
    description="FlashAttention in Triton: tiled online softmax, recomputing backward, in-kernel dropout; on Hopper "
                "GPUs the dense forward without dropout at head dim 128 runs a FlashAttention-3-style Gluon kernel",
    options=("deterministic",),  # True: the two-pass backward, bitwise repeatable (default: the faster)
    devices=("cuda", "cpu"),
    dtypes=(torch.float16, torch.bfloat16, torch.float32),
    head_dims=HEAD_DIMS,
    unavailable=triton_unavailable,
))
