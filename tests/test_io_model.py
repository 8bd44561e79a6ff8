"""The HBM-traffic model reproduces the shape of the paper's Theorem 2 and its Figure 2 comparison."""

from reporting import paper
from reporting.io_model import attention_layer, flash_attention, flash_block_sizes, standard_attention


def test_standard_counts_by_hand():
    # N=4, d=2: fwd 4Nd + 4N^2 = 32 + 64; bwd 8Nd + 7N^2 = 64 + 112 (elements, 1 byte each).
    t = standard_attention(4, 2, elt_bytes=1)
    assert t.fwd_bytes == 96 and t.bwd_bytes == 176


def test_standard_is_quadratic_flash_is_quadratic_over_m():
    d = 64
    s1, s2 = standard_attention(4096, d).total_bytes, standard_attention(8192, d).total_bytes
    assert 3.8 < s2 / s1 < 4.01  # N^2 dominates
    m = 48 * 1024
    f1 = flash_attention(8192, d, sram_elems=m).total_bytes
    f2 = flash_attention(8192, d, sram_elems=2 * m).total_bytes
    assert 1.7 < f1 / f2 < 2.01  # doubling SRAM roughly halves the N^2 d^2 / M term


def test_block_sizes_follow_algorithm_1():
    assert flash_block_sizes(64, 96 * 1024) == (64, 384)


def test_block_sparse_scales_with_density():
    dense = flash_attention(16384, 64, sram_elems=96 * 1024).total_bytes
    sparse = flash_attention(16384, 64, sram_elems=96 * 1024, density=0.25).total_bytes
    assert 3.0 < dense / sparse < 4.0


def test_figure2_order_of_magnitude():
    """Paper, Fig. 2: 40.3 GB (standard, with mask + dropout) vs 4.4 GB (FlashAttention) for GPT-2 medium."""
    shape = paper.FIG2_GPT2_MEDIUM["shape"]
    r = attention_layer(shape["batch"], shape["heads"], shape["seq_len"], shape["head_dim"], elementwise_passes=2)
    assert 0.75 < r["standard_gb"] / paper.FIG2_GPT2_MEDIUM["standard"]["hbm_gb"] < 1.25
    assert 0.75 < r["flash_gb"] / paper.FIG2_GPT2_MEDIUM["flash"]["hbm_gb"] < 1.25
    assert r["ratio"] > 5
