"""Triton attention kernels: FlashAttention (dense) and block-sparse FlashAttention, one kernel family."""

from .attention import block_sparse_attention, draw_dropout_keys, flash_attention, kernel_dropout_p
from .block_mask import BlockMask, create_block_mask
from .reference import dropout_keep_mask

__all__ = ["BlockMask", "create_block_mask", "block_sparse_attention", "draw_dropout_keys", "dropout_keep_mask",
           "flash_attention", "kernel_dropout_p"]
