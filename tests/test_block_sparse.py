"""Block-sparse FlashAttention vs a dense float64 reference with the layout expanded to elements."""

import os

import pytest
import torch

from kernels import block_sparse_attention, draw_dropout_seed, dropout_keep_mask, flash_attention
from kernels import sparsity_patterns as sp
from kernels.block_mask import get_block_mask
from kernels.reference import assert_matches_reference, expand_layout, packed_qkv, reference_attention, rel_err

# These run the kernels on CPU tensors through the Triton interpreter (conftest sets it when there is no GPU).
pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="CPU tests through the Triton interpreter (TRITON_INTERPRET=1)")


def check(layout, B, H, N, D, bs, causal, dropout_p=0.0):
    qkv, (q, k, v) = packed_qkv(B, H, N, D)
    torch.manual_seed(5)
    o = block_sparse_attention(q, k, v, layout, causal=causal, block_size=bs, dropout_p=dropout_p)
    keep = None
    if dropout_p:
        torch.manual_seed(5)
        keep = dropout_keep_mask(draw_dropout_seed(q.device), B, H, N, dropout_p)
    mask = expand_layout(layout, N, bs)
    mask = mask[None] if layout.dim() == 3 else mask  # (H, N, N) broadcasts over B
    ref = reference_attention(q, k, v, causal=causal, mask=mask, keep=keep, dropout_p=dropout_p)
    return o, assert_matches_reference(o, ref, qkv)


@pytest.mark.parametrize("causal", [False, True])
def test_random_shared_layout_partial_last_block(causal):
    layout = sp.random_blocks(5, 2, seed=3) | sp.local(5, 1)
    check(layout, 2, 2, 70, 32, 16, causal)


def test_per_head_layout_with_empty_rows():
    layout = torch.stack([sp.local(3, 1), sp.random_blocks(3, 1, seed=1)])
    layout[1, 2] = False  # query block 2 of head 1 sees nothing: zero output and zero gradient
    o, _ = check(layout, 1, 2, 40, 16, 16, causal=False)
    assert o[0, 1, 32:].abs().max() == 0


def test_bigger_blocks_than_tiles_and_dropout():
    check(sp.build_layout("local+global", 100, 64, window=64, num_global=1), 1, 1, 100, 48, 64, True, dropout_p=0.2)


def test_all_true_layout_equals_flash_attention():
    _, (q, k, v) = packed_qkv(1, 2, 50, 64)
    dense = flash_attention(q, k, v, causal=True)
    sparse = block_sparse_attention(q, k, v, sp.dense(4), causal=True, block_size=16)
    assert rel_err(sparse, dense.double()) < 1e-6


def test_layout_changed_in_place_is_seen():
    _, (q, k, v) = packed_qkv(1, 1, 32, 16)
    layout = sp.dense(2)
    before = block_sparse_attention(q, k, v, layout, block_size=16)
    layout[1, 0] = False  # bumps the tensor's version: the cached plan must not be reused
    after = block_sparse_attention(q, k, v, layout, block_size=16)
    ref = reference_attention(q, k, v, mask=expand_layout(layout, 32, 16))
    assert rel_err(after, ref) < 1e-5 and not torch.allclose(before, after)


def test_block_mask_lists_and_transpose():
    layout = sp.butterfly(4)
    m = get_block_mask(layout, 60, 16, 16, 16, True, torch.device("cpu"))
    full_cnt, full_idx, part_cnt, part_idx = m.rows
    # masked: the diagonal, and every tile of the last query block (it crosses N = 60)
    assert part_cnt.tolist() == [[1, 1, 1, 3]] and part_idx[0, 3].tolist() == [1, 2, 3]
    assert full_cnt.tolist() == [[0, 1, 1, 0]] and full_idx[0, 2, 0] == 0  # 2 ^ 0 has one bit, 2 ^ 1 two
    assert get_block_mask(layout, 60, 16, 16, 16, True, torch.device("cpu")) is m  # cached
    assert m.cols[0].tolist() == [[2, 0, 0, 0]] and m.cols[1][0, 0, :2].tolist() == [1, 2]


def test_patterns_match_their_definitions():
    n = 8
    loc = sp.local(n, 2)
    assert all(loc[i, j] == (abs(i - j) <= 1) for i in range(n) for j in range(n))
    bf = sp.butterfly(n)
    assert bf.sum(1).tolist() == [4] * n  # diagonal + log2(8) partners
    assert all(bf[i, i ^ (1 << b)] for i in range(n) for b in range(3))
    st = sp.strided(n, 3)
    assert st[7, 1] and st[7, 4] and not st[7, 5]
    fx = sp.fixed(n, 4)
    assert fx[:, 3].all() and fx[:, 7].all() and fx.sum() == 2 * n
    gl = sp.global_blocks(n, 2)
    assert gl[:2].all() and gl[:, :2].all() and not gl[2:, 2:].any()
    rnd = sp.random_blocks(n, 3, seed=0)
    assert rnd.sum(1).tolist() == [3] * n and torch.equal(rnd, sp.random_blocks(n, 3, seed=0))
    assert torch.equal(sp.build_layout("local+global", 1000, 128, window=256, num_global=2),
                       sp.local(8, 2) | sp.global_blocks(8, 2))
    assert torch.equal(sp.build_layout("local&strided", 1024, 128, window=512, stride=2),
                       sp.local(8, 4) & sp.strided(8, 2))
    with pytest.raises(ValueError, match="unknown sparsity pattern"):
        sp.build_layout("nope", 100)


def test_density_counts_kept_blocks_and_causal_diagonal():
    assert sp.layout_density(sp.dense(8), 1024, 128, False) == 1.0
    assert sp.layout_density(sp.dense(8), 1024, 128, True) == pytest.approx(1025 / 2048)
    assert sp.layout_density(sp.local(8, 1), 1024, 128, False) == pytest.approx(1 / 8)
