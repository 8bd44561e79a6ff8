"""Block-sparse FlashAttention vs a dense float64 reference with the layout expanded to elements (compiled on a
GPU host, through the Triton interpreter on CPU), and the BlockMask built from a layout."""

import pytest
import torch
from attention_checks import assert_matches_reference, packed_qkv, rel_err

from kernels import (
    block_sparse_attention,
    block_sparse_attention_qkvpacked,
    create_block_mask,
    draw_dropout_keys,
    dropout_keep_mask,
    flash_attention,
    kernel_dropout_p,
)
from kernels import sparsity_patterns as sp
from kernels.reference import expand_layout


def check(device, layout, B, H, N, D, bs, causal, dropout_p=0.0, deterministic=False):
    qkv, (q, k, v) = packed_qkv(B, H, N, D, device)
    torch.manual_seed(5)
    o = block_sparse_attention(q, k, v, layout, causal=causal, block_size=bs, dropout_p=dropout_p,
                               deterministic=deterministic)
    keep = None
    if dropout_p:
        torch.manual_seed(5)
        keep = dropout_keep_mask(draw_dropout_keys(B, H, N, q.device), B, H, dropout_p)
    mask = expand_layout(layout, N, bs).to(device)
    mask = mask[None] if layout.dim() == 3 else mask  # (H, N, N) broadcasts over B
    return assert_matches_reference(o, qkv, q, k, v, causal=causal, mask=mask, keep=keep,
                                    dropout_p=kernel_dropout_p(dropout_p))


@pytest.mark.parametrize("causal", [False, True])
def test_random_shared_layout_partial_last_block(kernel_device, causal):
    layout = sp.random_blocks(5, 2, seed=3) | sp.local(5, 1)
    check(kernel_device, layout, 2, 2, 70, 32, 16, causal)


def test_per_head_layout_with_empty_rows(kernel_device):
    layout = torch.stack([sp.local(3, 1), sp.random_blocks(3, 1, seed=1)])
    layout[1, 2] = False  # query block 2 of head 1 sees nothing: zero output and zero gradient
    o, dq, *_ = check(kernel_device, layout, 1, 2, 40, 16, 16, causal=False)
    assert o[0, 1, 32:].abs().max() == 0 and dq[0, 32:, 1].abs().max() == 0


@pytest.mark.parametrize("deterministic", [False, True])  # the single-pass and the two-pass backward
def test_bigger_blocks_than_tiles_and_dropout(kernel_device, deterministic):
    layout = sp.build_layout("local+global", 300, 64, window=64, num_global=1)
    check(kernel_device, layout, 1, 1, 300, 48, 64, True, dropout_p=0.2, deterministic=deterministic)


@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
def test_packed_qkv_matches_its_views(kernel_device, dropout_p):
    qkv, (q, k, v) = packed_qkv(1, 2, 70, 32, kernel_device)
    layout = sp.random_blocks(5, 2, seed=3) | sp.local(5, 1)
    do = torch.randn(1, 2, 70, 32, device=kernel_device, dtype=qkv.dtype)
    results = []
    for attend in (lambda: block_sparse_attention(q, k, v, layout, causal=True, block_size=16, dropout_p=dropout_p),
                   lambda: block_sparse_attention_qkvpacked(qkv, layout, causal=True, block_size=16,
                                                            dropout_p=dropout_p)):
        torch.manual_seed(3)
        o = attend()
        results.append((o, torch.autograd.grad(o, qkv, do)[0]))
    (o, grad), (o_packed, grad_packed) = results
    assert torch.equal(o_packed, o)
    assert rel_err(grad_packed, grad) < (1e-6 if q.dtype == torch.float32 else 1e-3)


@pytest.mark.parametrize("block_size", [16, 64])
def test_all_true_layout_equals_flash_attention(kernel_device, block_size):
    _, (q, k, v) = packed_qkv(1, 2, 150, 64, kernel_device)
    dense = flash_attention(q, k, v, causal=True)
    sparse = block_sparse_attention(q, k, v, sp.dense(-(-150 // block_size)), causal=True, block_size=block_size)
    assert rel_err(sparse, dense) < (1e-6 if q.dtype == torch.float32 else 1e-2)


def test_layout_changed_in_place_is_seen(kernel_device):
    _, (q, k, v) = packed_qkv(1, 1, 32, 16, kernel_device)
    layout = sp.dense(2)
    before = block_sparse_attention(q, k, v, layout, block_size=16)
    layout[1, 0] = False  # the cache is keyed by contents: the old mask must not be reused
    after = block_sparse_attention(q, k, v, layout, block_size=16)
    assert not torch.allclose(before, after)


def test_block_mask_lists_and_transpose():
    m = create_block_mask(sp.butterfly(4), 60, 16, True, "cpu")
    # partial: the diagonal, and every kept block of the last query block (it crosses N = 60)
    assert m.kv_part_count.tolist() == [[1, 1, 1, 3]] and m.kv_part_index[0, 3].tolist() == [1, 2, 3]
    assert m.kv_full_count.tolist() == [[0, 1, 1, 0]] and m.kv_full_index[0, 2, 0] == 0  # 2 ^ 0 has one bit
    assert m.q_full_count.tolist() == [[2, 0, 0, 0]] and m.q_full_index[0, 0, :2].tolist() == [1, 2]
    assert create_block_mask(sp.butterfly(4).clone(), 60, 16, True, "cpu") is m  # one cache, keyed by contents
    assert "blocks=4x4" in repr(m) and f"density={m.density:.3f}" in repr(m)


def test_block_mask_refuses_bad_layouts():
    with pytest.raises(ValueError, match="power of two"):
        create_block_mask(sp.dense(4), 64, 24, False, "cpu")
    with pytest.raises(ValueError, match="does not fit"):
        create_block_mask(sp.dense(3), 64, 16, False, "cpu")


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
