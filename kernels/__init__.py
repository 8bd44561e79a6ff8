"""Triton attention kernels: FlashAttention (dense) and block-sparse FlashAttention, one kernel family."""

from .attention import (
    block_sparse_attention,
    block_sparse_attention_qkvpacked,
    draw_dropout_keys,
    flash_attention,
    flash_attention_qkvpacked,
    kernel_dropout_p,
)
from .block_mask import BlockMask, create_block_mask
from .reference import dropout_keep_mask

__all__ = ["BlockMask", "create_block_mask", "block_sparse_attention", "block_sparse_attention_qkvpacked",
           "draw_dropout_keys", "dropout_keep_mask", "flash_attention", "flash_attention_qkvpacked", "kernel_dropout_p"]
