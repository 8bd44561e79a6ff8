"""Block-sparse FlashAttention in Triton: only the blocks a sparsity pattern keeps are computed."""

import torch

from .flash import HEAD_DIMS, triton_unavailable
from .registry import AttentionBackend, register

DEFAULTS = dict(pattern="local", block_size=128, window=256, stride=4, num_global=1, num_random=2, seed=0,
                deterministic=False)


@torch.compiler.assume_constant_result  # torch.compile: built once while tracing, a constant of the graph
def layout_for(options: dict, seq_len: int) -> torch.Tensor:
    """The (shared by heads) block layout the options describe at this sequence length. Not cached here: the
    kernels cache the BlockMask built from it by its contents."""
    from kernels.sparsity_patterns import build_layout

    o = {**DEFAULTS, **options}
    return build_layout(str(o["pattern"]), seq_len, int(o["block_size"]), window=int(o["window"]),
                        stride=int(o["stride"]), num_global=int(o["num_global"]), num_random=int(o["num_random"]),
                        seed=int(o["seed"]))


def block_sparse_attend(q, k, v, *, causal: bool, dropout_p: float = 0.0, scale: float | None = None, **options):
    from kernels import block_sparse_attention

    o = {**DEFAULTS, **options}
    return block_sparse_attention(q, k, v, layout_for(options, q.shape[-2]), causal=causal, dropout_p=dropout_p,
                                  scale=scale, block_size=int(o["block_size"]), deterministic=bool(o["deterministic"]))


def block_sparse_attend_qkv(qkv, *, causal: bool, dropout_p: float = 0.0, scale: float | None = None, **options):
    from kernels import block_sparse_attention_qkvpacked

    o = {**DEFAULTS, **options}
    return block_sparse_attention_qkvpacked(qkv, layout_for(options, qkv.shape[1]), causal=causal,
                                            dropout_p=dropout_p, scale=scale, block_size=int(o["block_size"]),
                                            deterministic=bool(o["deterministic"]))


def density(options: dict, seq_len: int, causal: bool) -> float:
    """Kept fraction of the N x N scores (kept blocks, causal diagonal halves counted): what MFU should count."""
    from kernels.sparsity_patterns import layout_density

    block_size = int(options.get("block_size", DEFAULTS["block_size"]))
    return layout_density(layout_for(options, seq_len), seq_len, block_size, causal)


register(AttentionBackend(
    name="block_sparse",
    attend=block_sparse_attend,
    attend_qkv=block_sparse_attend_qkv,
    description="block-sparse FlashAttention in Triton (patterns: dense, local, butterfly, strided, fixed, global, "
                "random; combine with + and &)",
    devices=("cuda", "cpu"),
    dtypes=(torch.float16, torch.bfloat16, torch.float32),
    head_dims=HEAD_DIMS,
    options=tuple(DEFAULTS),
    density=density,
    unavailable=triton_unavailable,
))
