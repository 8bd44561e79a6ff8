"""The attention benchmark without a GPU: its providers compute attention, its bookkeeping keeps what a stopped run
measured, and its command line still takes the flags GPU runs use."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from script_loader import load_script

from kernels import block_sparse_attention, flash_attention
from reporting import attention_bench
from reporting.attention_results import markdown


def fake_rows(n):
    return [attention_bench.add_rates(
        dict(part="dense", provider=p, N=N, B=16384 // N, H=12, D=64, causal=True, dropout=0.0, fwd=0.1 * i + 0.1,
             bwd=0.3, fwd_bwd=0.4, extra_mib=98.0), flops_fwd=1e9)
        for i, (p, N) in enumerate([("flash", 1024), ("sdpa_flash", 1024), ("flash", 4096)][:n])]


@pytest.mark.parametrize("causal", [True, False])
def test_providers_compute_the_same_attention(causal):
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 32, 16) for _ in range(3))
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    for name in ("naive", "flash", "sdpa_flash"):
        torch.testing.assert_close(attention_bench.provider(name)(q, k, v, causal, 0.0), want, atol=2e-3, rtol=0)


def test_a_baseline_checkout_runs_beside_ours(tmp_path, kernel_device):
    """--baseline DIR: another checkout's kernels package, imported under another name, registers its own ops and
    runs beside ours in one process (here the checkout is a copy of this one, so it computes the same outputs); its
    sparse rows get their own columns."""
    with pytest.raises(FileNotFoundError, match="no kernels/ package"):
        attention_bench.load_baseline(tmp_path)
    shutil.copytree(Path(__file__).parents[1] / "kernels", tmp_path / "kernels")
    dense, sparse = attention_bench.load_baseline(tmp_path, name="baseline_copy")
    assert (dense, sparse) == ("flash@baseline_copy", "block_sparse@baseline_copy")
    with pytest.raises(ValueError, match="already imported"):
        attention_bench.load_baseline(tmp_path, name="baseline_copy")
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 64, 16, device=kernel_device) for _ in range(3))
    assert torch.equal(attention_bench.provider(dense)(q, k, v, True, 0.0), flash_attention(q, k, v, causal=True))
    layout = torch.eye(4, dtype=torch.bool)
    assert torch.equal(attention_bench.SPARSE_KERNELS[sparse](q, k, v, layout, causal=True, block_size=16),
                       block_sparse_attention(q, k, v, layout, causal=True, block_size=16))
    rows = [attention_bench.add_rates(dict(part="sparse", provider=p, pattern="local", window=256, N=4096, B=4, H=12,
                                           D=64, causal=True, dropout=0.0, density=0.1, fwd=t, fwd_bwd=3 * t), 1e9)
            for p, t in (("block_sparse", 0.1), (sparse, 0.2))]
    assert f"| {sparse} ÷ block_sparse |" in markdown(rows, {"gpu": "g"})


def test_quick_plan_and_flop_count():
    quick = attention_bench.plan(True, head_dims=(128,), dropouts=(0.1,))
    assert quick["seqs"] == (1024, 4096, 16384) and quick["head_dims"] == (64,) and quick["dropouts"] == (0.0,)
    assert attention_bench.plan(False, [512])["seqs"] == (512,)
    asked = attention_bench.plan(False, [4096, 16384], windows=(256, 1024))
    assert asked["sparse_seqs"] == (4096, 16384) and asked["windows"] == (256, 1024)
    row = attention_bench.add_rates({"fwd": 1.0, "fwd_bwd": 3.5}, attention_bench.fwd_flops(1, 1, 1024, 64, 0.5))
    assert row["fwd_tflops"] == pytest.approx(4 * 1024 * 1024 * 64 * 0.5 / 1e-3 / 1e12)
    assert row["fwd_bwd_tflops"] == pytest.approx(row["fwd_tflops"])


def test_sparse_sweep_over_n_takes_each_local_window(monkeypatch):
    monkeypatch.setattr(attention_bench, "guarded", lambda *args: {"fwd": 1.0, "fwd_bwd": 3.0, "extra_mib": 0.0})
    rows = attention_bench.run_sparse(seqs=(1024, 2048), patterns=("local", "butterfly"), windows=(256, 512),
                                      density_seq=1024, density_windows=(256, 512), providers=("block_sparse",),
                                      log=lambda *_: None)
    cases = [(r["pattern"], r["N"], r["window"]) for r in rows]
    assert cases == [("local", 1024, 256), ("local", 1024, 512), ("local", 2048, 256), ("local", 2048, 512),
                     ("butterfly", 1024, 256), ("butterfly", 2048, 256)]  # the density sweep's are already there


def test_rounds_alternate_the_providers_order_and_report_medians(monkeypatch):
    """--rounds: each shape's providers measured in rounds, every other one reversed; each time the median of the
    rounds, which stay beside it; a failed round stands for the provider at that shape."""
    order = []
    monkeypatch.setattr(attention_bench, "provider", lambda name: order.append(name) or (lambda *args: None))
    results = iter([{"fwd": t, "extra_mib": 0.0} for t in (5.0, 3.0, 1.0, 4.0, 9.0)] + [{"status": "OOM"}])
    monkeypatch.setattr(attention_bench, "guarded", lambda *args, **kwargs: next(results))
    rows = attention_bench.run_dense((1024,), (64,), (True,), (0.0,), providers=("flash", "naive"), rounds=3,
                                     log=lambda *_: None)
    assert order == ["flash", "naive", "naive", "flash", "flash", "naive"]
    flash, naive = rows
    assert (flash["provider"], flash["fwd"], flash["fwd_rounds"], flash["rounds"]) == ("flash", 5.0, [5.0, 4.0, 9.0], 3)
    assert flash["fwd_tflops"] > 0
    assert naive["status"] == "OOM"  # its third round failed
    assert "each time the median of 3 rounds" in markdown(rows, {"gpu": "test GPU"})


def test_results_json_grows_row_by_row(tmp_path, monkeypatch):
    def stopped_after_two(*args, on_row=None, **kwargs):
        for row in fake_rows(2):
            on_row(row)
        raise KeyboardInterrupt  # e.g. the device's time limit

    cli = load_script("bench_attention")
    monkeypatch.setattr(cli.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(attention_bench, "environment", lambda: {"gpu": "test GPU", "torch": "x", "triton": "y"})
    monkeypatch.setattr(attention_bench, "run_dense", stopped_after_two)
    with pytest.raises(KeyboardInterrupt):
        cli.main(["--out", str(tmp_path), "--part", "dense", "--quick"])
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [(r["provider"], r["N"]) for r in rows] == [("flash", 1024), ("sdpa_flash", 1024)]

    storages = []

    def third(*args, on_row=None, storage="bhnd", **kwargs):  # a later part, appended: the earlier rows stay
        storages.append(storage)
        on_row(fake_rows(3)[2])

    monkeypatch.setattr(attention_bench, "run_dense", third)
    cli.main(["--out", str(tmp_path), "--part", "dense", "--head-dims", "64", "--causal", "yes", "--dropout", "0",
              "--seqs", "4096", "--providers", "flash", "--storage", "packed", "--append"])
    assert storages == ["packed"]
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [(r["provider"], r["N"]) for r in rows] == [("flash", 1024), ("sdpa_flash", 1024), ("flash", 4096)]
    md = (tmp_path / "results.md").read_text()
    assert "| 1024 | 0.10 (10) | 0.20 (5) | 2.00× |" in md  # fwd: sdpa_flash's time over flash's
    assert (tmp_path / "dense.png").stat().st_size > 1000


def test_heads_reach_the_sweep_and_another_head_count_is_not_appended(tmp_path, monkeypatch, capsys):
    seen = []

    def record(*args, heads=12, on_row=None, **kwargs):
        seen.append(heads)
        on_row(fake_rows(1)[0])  # 12 heads

    cli = load_script("bench_attention")
    monkeypatch.setattr(cli.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(attention_bench, "environment", lambda: {"gpu": "test GPU", "torch": "x", "triton": "y"})
    monkeypatch.setattr(attention_bench, "run_dense", record)
    cli.main(["--out", str(tmp_path), "--part", "dense", "--quick"])
    cli.main(["--out", str(tmp_path / "d128"), "--part", "dense", "--quick", "--heads", "6"])
    assert seen == [12, 6]
    with pytest.raises(SystemExit):
        cli.main(["--out", str(tmp_path), "--part", "dense", "--quick", "--heads", "6", "--append"])
    assert "holds rows with 12 heads, not 6: write another --out" in capsys.readouterr().err
    assert seen == [12, 6]  # refused before anything ran
    with pytest.raises(ValueError, match="12 heads, not 6"):
        attention_bench.sweep(tmp_path, attention_bench.QUICK, "dense", append=True, heads=6)


def test_sustained_rows_render_their_clock_and_the_cli_passes_the_seconds(tmp_path, monkeypatch):
    from reporting.sustained import parse

    text = "1980, 350.1\n1980, 480.0\n1900, 690.2\n1755, 689.9\n[N/A], 690.0\n1760, 690.4\n"
    assert parse(text) == [(1755.0, 689.9), (1760.0, 690.4)]  # the first three lag the load; unreadable left out
    rows = [attention_bench.add_rates(dict(row, fwd_bwd_graph=0.5, fwd_bwd_sustained=s, sustained_seconds=3.0,
                                           sustained_clock_mhz=mhz, sustained_power_w=690.0), flops_fwd=1e9)
            for row, s, mhz in zip(fake_rows(2), (0.55, 0.5), (1755.0, 1886.0), strict=True)]
    md = markdown(rows, {"gpu": "g"})
    assert "fwd_bwd_sustained: that graph replayed for 3 s" in md
    assert "| 1024 | 0.55 (6) 1755 MHz | 0.50 (7) 1886 MHz | 0.91× |" in md

    seconds = []
    cli = load_script("bench_attention")
    monkeypatch.setattr(cli.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(attention_bench, "environment", lambda: {"gpu": "test GPU", "torch": "x", "triton": "y"})
    monkeypatch.setattr(attention_bench, "run_dense", lambda *a, sustain=0.0, **k: seconds.append(sustain) or [])
    cli.main(["--out", str(tmp_path), "--part", "dense", "--quick", "--sustain", "2.5"])
    assert seconds == [2.5]
    with pytest.raises(SystemExit):
        cli.main(["--out", str(tmp_path), "--part", "dense", "--quick", "--sustain", "-1"])


def test_failed_cases_are_rows_not_crashes():
    rows = fake_rows(1) + [dict(part="dense", provider="naive", N=1024, B=16, H=12, D=64, causal=True, dropout=0.0,
                                status="OOM")]
    md = markdown(rows, {"gpu": "g"})
    assert "| 1024 | **OOM** | 0.10 (10) | – |" in md


def test_host_time_per_call_is_measured_and_rendered():
    rows = attention_bench.run_host(("naive",), device="cpu", calls=20, log=lambda *_: None)
    (row,) = rows
    assert row["part"] == "host" and row["fwd_host"] > 0 and row["fwd_bwd_host"] > 0  # timings: no order asserted
    md = markdown(rows + [dict(row, provider="flash", fwd_host=0.1, fwd_bwd_host=0.4)], {"gpu": "g"})
    assert "Host time per eager call (B = 1, H = 1, N = 128, D = 64" in md
    assert "| flash | causal | 0 | 0.100 | 0.400 | 1.00× |" in md


def test_host_time_runs_the_forward_alone_then_forward_and_backward():
    counts = {"fwd": 0, "bwd": 0}

    class Counted(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q):
            counts["fwd"] += 1
            return q * 2

        @staticmethod
        def backward(ctx, grad):
            counts["bwd"] += 1
            return grad * 2

    attention_bench.measure_host(lambda q, k, v: Counted.apply(q) + k + v, device="cpu", dtype=torch.float32, calls=5)
    assert counts == {"fwd": 2 * (20 + 5), "bwd": 20 + 5}  # 20 warm-up calls before each timed 5


def test_the_cli_needs_a_gpu(tmp_path, monkeypatch):
    cli = load_script("bench_attention")
    monkeypatch.setattr(cli.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        cli.main(["--out", str(tmp_path), "--quick"])


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CUDA events, graphs)")


@pytest.mark.gpu
@needs_gpu
def test_a_tiny_sweep_times_every_mode_on_a_gpu(tmp_path):
    sizes = {**attention_bench.QUICK, "seqs": (256,), "sparse_seqs": (512,)}
    rows = attention_bench.sweep(tmp_path, sizes, providers=("naive", "flash", "sdpa_flash"))
    flash = next(r for r in rows if r["part"] == "dense" and r["provider"] == "flash")
    assert all(flash[m] > 0 for m in ("fwd", "bwd", "fwd_bwd", "fwd_bwd_graph")) and flash["extra_mib"] > 0
    assert {r["provider"] for r in rows if r["part"] == "sparse"} == {"block_sparse", "flash", "flex"}
    assert (tmp_path / "results.md").exists()


@pytest.mark.gpu
@needs_gpu
def test_a_sustained_replay_records_time_clock_and_power():
    sizes = {**attention_bench.QUICK, "seqs": (256,)}
    rows = attention_bench.run_dense(sizes["seqs"], (64,), (True,), (0.0,), ("flash",), log=lambda *_: None,
                                     sustain=0.5)
    (row,) = rows
    assert row["fwd_bwd_sustained"] > 0 and row["sustained_seconds"] == 0.5
    if shutil.which("nvidia-smi"):
        assert row["sustained_clock_mhz"] > 0 and row["sustained_power_w"] > 0


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("name", ["flash", "block_sparse"])
def test_profile_times_public_calls_on_a_gpu(name):
    from reporting import attention_profile

    lines = []
    attention_profile.report(name, 256, 2, 2, 64, 0.0, "local", iters=3, log=lines.append)
    assert any(line.startswith("fwd+bwd: host enqueue") for line in lines)
    assert any("GPU kernel time per fwd+bwd" in line for line in lines)


def test_packed_inputs_are_the_models_views_and_grads_reach_the_projection():
    """--storage packed: q, k, v are what model/gpt.py hands the attention (views of one projection output), dO has
    the (B, N, H, D) storage of the gradient that reaches it, and the backward fills the projection's gradient."""
    from model import GPT, GPTConfig

    B, H, N, D = 2, 3, 8, 4
    leaves, qkv, do = attention_bench.inputs(B, H, N, D, torch.float32, "packed", device="cpu")
    (x,) = leaves
    q, k, v = qkv()
    seen = []
    model = GPT(GPTConfig.preset("gpt2-nano", attn="sdpa", n_head=H, n_embd=H * D, block_size=N))
    attn = model.transformer.h[0].attn
    spy = lambda q, k, v, **kw: seen.append((q.stride(), k.stride(), v.stride())) or q
    attn.attention = dataclasses.replace(attn.attention, attend=spy)
    attn(torch.randn(B, N, H * D))
    assert seen == [(q.stride(), k.stride(), v.stride())]
    assert q.data_ptr() == x.data_ptr() and k.data_ptr() == x.data_ptr() + H * D * x.element_size()
    assert do.shape == (B, H, N, D) and do.stride() == (N * H * D, D, H * D, 1)
    (gx,) = torch.autograd.grad(attention_bench.provider("naive")(q, k, v, True, 0.0), leaves, do)
    assert gx.shape == x.shape and gx.abs().sum() > 0
    with pytest.raises(ValueError, match="unknown storage"):
        attention_bench.inputs(B, H, N, D, storage="bnhd", device="cpu")


def test_profile_differences_rank_kernels_by_the_gap_between_steps():
    from reporting.train_step_profile import differences

    base = {"kernels": [("gemm", 10.0, 4), ("cat", 0.5, 12)]}
    other = {"kernels": [("gemm", 10.1, 4), ("attn_fwd", 2.0, 12)]}
    assert differences(base, other) == [("attn_fwd", 0.0, 2.0), ("cat", 0.5, 0.0), ("gemm", 10.0, 10.1)]
    assert differences(base, other, top=1) == [("attn_fwd", 0.0, 2.0)]


def test_profile_counts_our_kernels_and_pytorchs_as_attention():
    from reporting.train_step_profile import is_attention_kernel

    ours = ["attn_fwd", "attn_bwd_dq", "attn_bwd_kv", "attn_bwd_preprocess", "attn_fwd_hopper"]
    theirs = ["cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26_64",
              "void cudnn::fusion::convert_dq_to_16bits<true>(void const*, void*, uns",
              "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128",
              "fmha_cutlassF_bf16_aligned_64x64"]
    model = ["nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT", "triton_poi_fused_gelu_view_10",
             "triton_per_fused__to_copy_add_native_layer_norm_backward_view_9"]
    assert all(map(is_attention_kernel, ours + theirs)) and not any(map(is_attention_kernel, model))


def test_packed_storage_hands_ours_the_projection_whole_and_the_others_views(monkeypatch):
    """With --storage packed, a provider with packed kernels (ours) is timed on the projection viewed as (B, N, 3,
    H, D), the call model/attention/registry.py's attend_packed makes for it; the others on q, k, v views."""
    B, H, N, D = 2, 3, 8, 4
    seen = {}

    def guarded(fn, B, H, N, D, dtype, storage, packed, **kwargs):
        leaves, call, do = attention_bench.timed_call(fn, B, H, N, D, torch.float32, storage, packed, device="cpu")
        (gx,) = torch.autograd.grad(call(), leaves, do)
        assert gx.shape == (B, N, 3 * H * D) and gx.abs().sum() > 0
        return {"fwd": 1.0, "extra_mib": 0.0}

    def packed_flash(qkv, causal, dropout_p):
        seen["flash"] = qkv.shape
        return attention_bench.provider("naive")(*qkv.permute(2, 0, 3, 1, 4), causal, dropout_p)

    def naive(q, k, v, causal, dropout_p):
        seen["naive"] = q.shape
        return attention_bench.provider("naive")(q, k, v, causal, dropout_p)

    monkeypatch.setattr(attention_bench, "guarded", guarded)
    monkeypatch.setitem(attention_bench.PACKED_PROVIDERS, "flash", packed_flash)
    monkeypatch.setitem(attention_bench.PROVIDERS, "sdpa_flash", naive)
    rows = attention_bench.run_dense([N], head_dims=(D,), causals=(True,), dropouts=(0.0,),
                                     providers=("flash", "sdpa_flash"), heads=H, tokens=B * N, log=lambda row: None,
                                     storage="packed")
    assert seen == {"flash": (B, N, 3, H, D), "naive": (B, H, N, D)}
    assert [r["storage"] for r in rows] == ["packed", "packed"]
    with pytest.raises(ValueError, match="takes storage 'packed'"):
        attention_bench.timed_call(packed_flash, B, H, N, D, torch.float32, "bhnd", True, device="cpu")
