"""FlashAttention kernels vs a float64 reference: the same cases compiled on a GPU host and through the Triton
interpreter on CPU (fp32 there, bf16 on the GPU; see attention_checks)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from attention_checks import assert_matches_reference, packed_qkv, rel_err

import kernels.attention as attention_ops
from kernels import (
    create_block_mask,
    draw_dropout_keys,
    dropout_keep_mask,
    flash_attention,
    flash_attention_qkvpacked,
    kernel_dropout_p,
)


@pytest.mark.parametrize("B,H,N,D,causal", [
    (1, 1, 37, 64, False),
    (2, 3, 37, 48, True),
    (1, 2, 70, 80, True),
    (1, 1, 45, 128, False),
    (2, 1, 33, 16, True),
    (1, 1, 1, 64, True),
    (1, 1, 64, 32, True),  # exact multiple of the tiles
    (1, 2, 200, 64, True),  # several tiles on every device
])
def test_forward_and_gradients_match_reference(kernel_device, B, H, N, D, causal):
    qkv, (q, k, v) = packed_qkv(B, H, N, D, kernel_device)
    o = flash_attention(q, k, v, causal=causal)
    assert_matches_reference(o, qkv, q, k, v, causal=causal)


def test_custom_scale_and_fp16(kernel_device):
    qkv, (q, k, v) = packed_qkv(1, 2, 40, 64, kernel_device, dtype=torch.float16)
    o = flash_attention(q, k, v, causal=True, scale=0.3)
    assert o.dtype == torch.float16
    assert_matches_reference(o, qkv, q, k, v, causal=True, scale=0.3)


def test_large_scores_do_not_overflow(kernel_device):
    """The online softmax subtracts a running max: scores of several hundred would overflow exp() otherwise."""
    qkv, (q, k, v) = packed_qkv(1, 1, 70, 32, kernel_device, std=6.0)  # |q.k| / sqrt(32) up to several hundred
    o = flash_attention(q, k, v, causal=True)
    assert_matches_reference(o, qkv, q, k, v, causal=True)


def test_deterministic_backward_is_bitwise_repeatable(kernel_device):
    qkv, (q, k, v) = packed_qkv(2, 3, 150, 64, kernel_device)
    do = torch.randn(2, 3, 150, 64, device=kernel_device, dtype=q.dtype)

    def grad():
        torch.manual_seed(0)
        return torch.autograd.grad(flash_attention(q, k, v, causal=True, dropout_p=0.1, deterministic=True), qkv, do)[0]

    grads = [grad() for _ in range(3)]
    assert all(torch.equal(grads[0], g) for g in grads[1:])


@pytest.mark.parametrize("deterministic", [False, True])  # the single-pass and the two-pass backward
@pytest.mark.parametrize("B,H,N,D,causal", [(2, 2, 37, 32, True), (1, 2, 150, 64, False), (1, 1, 70, 80, True)])
def test_dropout_reproducible_and_matches_reference_with_same_mask(kernel_device, B, H, N, D, causal, deterministic):
    p = 0.3
    qkv, (q, k, v) = packed_qkv(B, H, N, D, kernel_device)
    torch.manual_seed(123)
    o1 = flash_attention(q, k, v, causal=causal, dropout_p=p, deterministic=deterministic)
    torch.manual_seed(123)
    o2 = flash_attention(q, k, v, causal=causal, dropout_p=p, deterministic=deterministic)
    assert torch.equal(o1, o2)
    torch.manual_seed(123)
    keep = dropout_keep_mask(draw_dropout_keys(B, H, N, q.device), B, H, p)
    assert_matches_reference(o1, qkv, q, k, v, causal=causal, keep=keep, dropout_p=kernel_dropout_p(p))


@pytest.mark.parametrize("D,deterministic,single_pass", [(64, False, True), (64, True, False), (128, False, False)])
def test_dropout_backward_takes_the_pass_measured_faster(kernel_device, monkeypatch, D, deterministic, single_pass):
    """With dropout the single pass (a preprocess kernel, then dK/dV adding dQ) runs at D <= 64 unless
    deterministic; at D = 128 the two passes (dQ pass, then dK/dV) measured faster on the H200."""
    from kernels import attention

    launched = []
    real_wrap = attention.wrap_triton
    monkeypatch.setattr(attention, "wrap_triton", lambda kernel: launched.append(kernel) or real_wrap(kernel))
    qkv, (q, k, v) = packed_qkv(1, 1, 32, D, kernel_device)
    o = flash_attention(q, k, v, causal=True, dropout_p=0.2, deterministic=deterministic)
    launched.clear()
    o.backward(torch.randn_like(o))
    assert (attention.attn_bwd_preprocess in launched) == single_pass
    assert (attention._bwd_dq in launched) == (not single_pass)
    assert attention._bwd_kv in launched


def test_inputs_of_different_layouts(kernel_device):
    """The kernels take one stride set for q, k and v, and one for o and the gradients: q, k, v laid out apart are
    copied to one layout, and an o laid out apart is copied to the gradients' layout, with the same results."""
    from kernels import attention

    qkv, (q, k, v) = packed_qkv(1, 2, 70, 32, kernel_device)
    do = torch.randn_like(q)
    o = flash_attention(q, k, v, causal=True)
    packed = [o, *torch.autograd.grad(o, qkv, do)[0].unbind(2)]
    apart = [q.detach().contiguous(), k.detach().transpose(1, 2).contiguous().transpose(1, 2),
             v.detach().transpose(0, 1).contiguous().transpose(0, 1)]
    assert len({t.stride() for t in apart}) == 3
    apart = [t.requires_grad_() for t in apart]
    o = flash_attention(*apart, causal=True)
    grads = torch.autograd.grad(o, apart, do)
    assert all(torch.equal(a, b) for a, b in zip(packed, [o, *(g.transpose(1, 2) for g in grads)], strict=True))

    with torch.no_grad():
        q, k, v = (t.detach() for t in (q, k, v))
        o, lse = attention.attention_fwd(q, k, v, None, [], 0, True, 0.0, 0.25, False)
        grads = attention.attention_bwd(do, q, k, v, o, lse, None, [], 0, True, 0.0, 0.25, False)
        o_apart = o.contiguous()
        assert o_apart.stride() != o.stride()
        again = attention.attention_bwd(do, q, k, v, o_apart, lse, None, [], 0, True, 0.0, 0.25, False)
    assert all(torch.equal(a, b) for a, b in zip(grads, again, strict=True))


def test_costliest_tiles_first_changes_the_order_not_the_results(kernel_device, monkeypatch):
    """Causal launches of long rows run their programs costliest first, in groups of heads (program_tile's LPT;
    from N = 2048 on, here forced on at a small N, in groups of 4 of the 6 heads, then 2, and all heads at once):
    every program computes what it did in grid order, so without dropout the outputs and gradients are bitwise
    those of the in-order grid; with dropout (the single pass) they match the reference, with the single pass's
    dK/dV launch in LPT order and in the head-major order it takes from the 16K bucket on."""
    from kernels import attention

    qkv, (q, k, v) = packed_qkv(2, 3, 150, 64, kernel_device)
    do = torch.randn_like(q)

    def run(**kw):
        o = flash_attention(q, k, v, causal=True, **kw)
        return [o, *torch.autograd.grad(o, qkv, do)]

    in_order = run()
    for heads in (4, attention._LPT_ALL_HEADS):
        monkeypatch.setattr(attention, "_LPT_ORDER", ((1, heads),))
        assert all(torch.equal(a, b) for a, b in zip(in_order, run(), strict=True))
    torch.manual_seed(5)
    keep = dropout_keep_mask(draw_dropout_keys(2, 3, 150, q.device), 2, 3, 0.2)
    for head_major_from in (None, 1):
        if head_major_from:
            monkeypatch.setattr(attention, "_SINGLE_PASS_HEAD_MAJOR_N_BUCKET", head_major_from)
        torch.manual_seed(5)
        o = flash_attention(q, k, v, causal=True, dropout_p=0.2)
        assert_matches_reference(o, qkv, q, k, v, causal=True, keep=keep, dropout_p=kernel_dropout_p(0.2))


def test_dropout_mask_keeps_at_rate_1_minus_p_with_independent_neighbours():
    """The keep mask (kernels' hash, mirrored in torch and checked against the kernels above): keep rate 1 - p, and
    no dependence between an element and its right neighbour, the one below, or its transpose off the diagonal (all
    would agree with probability p^2 + (1-p)^2 if independent; 1-2M pairs each, 4 sigma)."""
    p, B, H, N = 0.3, 2, 4, 512
    torch.manual_seed(7)
    keys = draw_dropout_keys(B, H, N, "cpu")
    keep = dropout_keep_mask(keys, B, H, p)
    rate, sigma = keep.float().mean().item(), (p * (1 - p) / keep.numel()) ** 0.5
    assert abs(rate - (1 - p)) < 4 * sigma
    rows, cols = torch.triu_indices(N, N, 1)
    agree = p * p + (1 - p) * (1 - p)
    for a, b in ((keep[..., 1:, 1:], keep[..., 1:, :-1]), (keep[..., 1:, 1:], keep[..., :-1, 1:]),
                 (keep[..., rows, cols], keep[..., cols, rows])):
        assert abs((a == b).float().mean().item() - agree) < 4 * (agree * (1 - agree) / a.numel()) ** 0.5
    assert not torch.equal(keep, dropout_keep_mask(draw_dropout_keys(B, H, N, "cpu"), B, H, p))
    assert kernel_dropout_p(0.1) == round(0.1 * 2**24) / 2**24


def test_dropout_mask_rectangles_are_independent():
    """The hash's one weak spot would be 2 x 2 rectangles: their four row ^ column keys XOR to zero, so a hash
    linear in them would fix the rectangle's parity. The 16 keep patterns of disjoint rectangles must follow the
    independent Bernoulli(1 - p) frequencies (chi-square, 15 degrees of freedom, p-value ~1e-5 at 50)."""
    p, B, H, N = 0.3, 2, 4, 512
    torch.manual_seed(7)
    keep = dropout_keep_mask(draw_dropout_keys(B, H, N, "cpu"), B, H, p).long()
    code = 8 * keep[..., 0::2, 0::2] + 4 * keep[..., 0::2, 1::2] + 2 * keep[..., 1::2, 0::2] + keep[..., 1::2, 1::2]
    observed = torch.bincount(code.flatten(), minlength=16).double()
    kept = torch.tensor([bin(c).count("1") for c in range(16)], dtype=torch.float64)
    expected = code.numel() * (1 - p) ** kept * p ** (4 - kept)
    assert ((observed - expected) ** 2 / expected).sum().item() < 50


@pytest.mark.parametrize("dropout_p,deterministic,padded", [(0.0, False, False), (0.0, False, True),
                                                             (0.3, False, False), (0.3, False, True),
                                                             (0.3, True, False)])
def test_packed_qkv_matches_its_views(kernel_device, dropout_p, deterministic, padded):
    """flash_attention_qkvpacked runs the kernels of flash_attention on q, k, v views of the same tensor: the same
    output, and the gradient it writes packed equals the one autograd joins from three (dQ, dK, dV stored into
    the packed slots, the single pass's dQ converted there from its accumulator; or copied there when qkv's
    strides are not the gradient's, as in a padded qkv: dQ in the two passes, all three in the single pass, whose
    dQ atomics reorder only the last bits on the GPU)."""
    qkv, (q, k, v) = packed_qkv(2, 3, 70, 32 + 8 * padded, kernel_device)
    if padded:
        qkv = qkv[..., :32]
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
    do = torch.randn(2, 3, 70, 32, device=kernel_device, dtype=qkv.dtype)

    def run(attend):
        torch.manual_seed(7)
        o = attend()
        return o, torch.autograd.grad(o, qkv, do)[0]

    o, grad = run(lambda: flash_attention(q, k, v, causal=True, dropout_p=dropout_p, deterministic=deterministic))
    o_packed, grad_packed = run(lambda: flash_attention_qkvpacked(qkv, causal=True, dropout_p=dropout_p,
                                                                  deterministic=deterministic))
    assert torch.equal(o_packed, o) and grad_packed.shape == qkv.shape and grad_packed.is_contiguous()
    packed_fn = flash_attention_qkvpacked(qkv, causal=True, dropout_p=dropout_p).grad_fn
    assert type(packed_fn).__name__ == "_AttentionQKVPackedBackward"  # eager: the packed gradient, no cat
    two_passes = dropout_p == 0 or deterministic
    if two_passes or kernel_device == "cpu":
        assert torch.equal(grad_packed[:, :, 1:], grad[:, :, 1:])
        # the packed dQ pass loads its key tiles through descriptors: the same values, but numpy (the interpreter)
        # rounds fp32 products of the tiles so laid out differently
        fp32_products = two_passes and qkv.dtype == torch.float32
        assert rel_err(grad_packed[:, :, 0], grad[:, :, 0]) <= (1e-6 if fp32_products else 0)
    else:
        assert rel_err(grad_packed, grad) < 1e-3


@pytest.mark.parametrize("D,misaligned", [(48, False), (64, False), (64, True)])
def test_packed_dq_pass_loads_key_tiles_through_descriptors(kernel_device, monkeypatch, D, misaligned):
    """The packed backward's dQ pass (the model's path) loads its key tiles through tensor descriptors, TMA copies
    on Hopper, at head dims up to 64 (D = 48's padded columns read as zeros); q, k, v that TMA cannot address (a
    start not 16-byte aligned) take pointer loads. In bf16 the gradient equals the views' backward, whose dQ pass
    loads through pointers, to the bit: a tile read one row or column off fails this."""
    from kernels import attention

    taken = []
    real = attention._dq_key_values
    monkeypatch.setattr(attention, "_dq_key_values", lambda *args: taken.append(real(*args)) or taken[-1])
    B, H, N = 1, 2, 150
    flat = torch.randn(B * N * 3 * H * D + misaligned, device=kernel_device, dtype=torch.bfloat16)
    qkv = flat[int(misaligned):].view(B, N, 3, H, D).detach().requires_grad_()
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    do = torch.randn(B, H, N, D, device=kernel_device, dtype=qkv.dtype)
    grad_views = torch.autograd.grad(flash_attention(q, k, v, causal=True), qkv, do)[0]
    grad_packed = torch.autograd.grad(flash_attention_qkvpacked(qkv, causal=True), qkv, do)[0]
    assert [kv_desc for *_, kv_desc in taken] == [False, not misaligned]  # the views' triton_op, then the packed op
    assert torch.equal(grad_packed, grad_views)


@pytest.mark.parametrize("dropout_p,sparse", [(0.0, False), (0.2, False), (0.2, True)])
def test_packed_backward_is_a_well_formed_opaque_op(kernel_device, dropout_p, sparse):
    """The packed backward is a custom op that torch.compile calls as it is: its schema, its fake implementation
    (shapes and strides without running it) and its autograd registration agree with what it computes, dense or
    with a block mask's tensors, with or without dropout keys."""
    B, H, N, D = 1, 2, 48, 32
    qkv = packed_qkv(B, H, N, D, kernel_device)[0].detach()  # the backward op has no backward of its own
    do = torch.randn(B, H, N, D, device=kernel_device, dtype=qkv.dtype)
    keys = draw_dropout_keys(B, H, N, kernel_device) if dropout_p else None
    layout = torch.ones(N // 16, N // 16, dtype=torch.bool).tril().fill_diagonal_(False)
    mask, block_size = (create_block_mask(layout, N, 16, True, kernel_device).tensors(), 16) if sparse else ([], 0)
    options = (mask, block_size, True, dropout_p, D**-0.5, False)
    o, lse = attention_ops.attention_fwd(*attention_ops._unpack(qkv), keys, *options)
    torch.library.opcheck(attention_ops.attention_bwd_qkvpacked, (do, qkv, o, lse, keys, *options))


def test_packed_qkv_matches_reference(kernel_device):
    qkv, (q, k, v) = packed_qkv(1, 2, 150, 64, kernel_device)
    assert_matches_reference(flash_attention_qkvpacked(qkv, causal=True), qkv, q, k, v, causal=True)


def test_refuses_bad_inputs_with_a_message(kernel_device):
    q = torch.randn(1, 1, 8, 64, device=kernel_device)
    with pytest.raises(ValueError, match="head dim"):
        flash_attention(*(torch.randn(1, 1, 8, 256, device=kernel_device),) * 3)
    with pytest.raises(ValueError, match="unit stride"):
        flash_attention(q, q, q.transpose(-1, -2).contiguous().transpose(-1, -2))
    with pytest.raises(ValueError, match="dropout_p"):
        flash_attention(q, q, q, dropout_p=1.0)
    with pytest.raises(ValueError, match="rounds to 0"):
        flash_attention(q, q, q, dropout_p=1e-9)
    with pytest.raises(ValueError, match="positive"):
        flash_attention(q, q, q, scale=-1.0)
    with pytest.raises(ValueError, match=r"\(B, N, 3, H, D\)"):
        flash_attention_qkvpacked(torch.randn(1, 8, 2, 1, 64, device=kernel_device))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.compile through Triton)")
def test_compiled_matches_eager_on_views_of_a_packed_projection():
    """q, k, v as views of one graph input, as the model makes them: compiling must neither copy them back (an
    op counted as writing its inputs cannot be compiled over such views) nor change the result."""
    qkv, (q, k, v) = packed_qkv(2, 4, 300, 64, device="cuda")
    ref_qkv, (rq, rk, rv) = packed_qkv(2, 4, 300, 64, device="cuda")
    attend = lambda q, k, v: flash_attention(q, k, v, causal=True)  # noqa: E731
    o = torch.compile(attend, fullgraph=True)(q, k, v)
    ref = attend(rq, rk, rv)
    do = torch.randn_like(o)
    o.backward(do)
    ref.backward(do)
    assert rel_err(o, ref) < 5e-3 and rel_err(qkv.grad, ref_qkv.grad) < 5e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.compile through Triton)")
def test_compiled_packed_backward_tunes_once_and_matches_eager():
    """Compiled, the packed backward runs as an opaque op through the library's autotuners: the first call tunes
    them (or reads their disk cache) and a second call re-tunes nothing. (Launched through wrap_triton from such
    an op, each launch was wrapped in a fresh autotuner and tuned again: 19.6 s a GPT-2 step.)"""
    qkv, _ = packed_qkv(2, 4, 300, 64, device="cuda")
    ref_qkv, _ = packed_qkv(2, 4, 300, 64, device="cuda")
    attend = lambda qkv: flash_attention_qkvpacked(qkv, causal=True)  # noqa: E731
    compiled = torch.compile(attend, fullgraph=True)
    tuners = (attention_ops._bwd_dq, attention_ops._bwd_kv)
    for tuner in tuners:
        tuner.cache.clear()
    do = torch.randn(2, 4, 300, 64, device="cuda", dtype=qkv.dtype)
    compiled(qkv).backward(do)
    tuned = [dict(tuner.cache) for tuner in tuners]
    assert all(tuned), "the compiled backward did not launch through the library's autotuners"
    grad = qkv.grad.clone()
    qkv.grad = None
    compiled(qkv).backward(do)
    assert [tuner.cache for tuner in tuners] == tuned
    assert torch.equal(qkv.grad, grad)
    attend(ref_qkv).backward(do)
    assert rel_err(grad, ref_qkv.grad) < 5e-3


def test_compile_counts_only_the_outputs_as_written():
    """torch.compile copies every tensor its mutation analysis counts as written by a Triton kernel. A helper that
    took q, k, v and dO and returned the program's coordinates once made it count all four as written by the
    backward (copies on every compiled call, and an illegal memory access in GPT-2 at seq 4096). The dK/dV pass's
    dQ atomics are addressed through the BlockMask's per-key lists, so those small lists count as written there."""
    script = Path(__file__).with_name("kernel_writes.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(script.parents[1]), env.get("PYTHONPATH", "")])
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    writes = {(r["kernel"], r["case"]): set(r["writes"]) for r in map(json.loads, run.stdout.splitlines())}
    lists = {"full_cnt", "full_idx", "part_cnt", "part_idx"}
    single_pass = {"DK", "DV", "DQ_ACC"} | lists
    assert writes == {
        ("attn_fwd", "dense"): {"O", "LSE"},
        ("attn_bwd_dq", "dense"): {"DQ", "Delta"},
        ("attn_bwd_kv", "dense"): {"DK", "DV"},
        ("attn_fwd", "dense, dropout"): {"O", "LSE"},
        ("attn_bwd_preprocess", "dense, dropout"): {"Delta", "DQ_ACC"},
        ("attn_bwd_kv", "dense, dropout"): single_pass,
        ("attn_fwd", "dense, dropout, deterministic"): {"O", "LSE"},
        ("attn_bwd_dq", "dense, dropout, deterministic"): {"DQ", "Delta"},
        ("attn_bwd_kv", "dense, dropout, deterministic"): {"DK", "DV"},
        ("attn_fwd", "sparse, dropout"): {"O", "LSE"},
        ("attn_bwd_preprocess", "sparse, dropout"): {"Delta", "DQ_ACC"},
        ("attn_bwd_kv", "sparse, dropout"): single_pass,
    }
