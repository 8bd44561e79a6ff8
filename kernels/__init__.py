"""Triton attention kernels: FlashAttention (dense) and block-sparse FlashAttention, one kernel family."""

from .flash_attention import block_sparse_attention, draw_dropout_seed, dropout_keep_mask, flash_attention

__all__ = ["block_sparse_attention", "draw_dropout_seed", "dropout_keep_mask", "flash_attention"]
