"""The per-kernel attention report (scripts/profile_attention_kernels.py): kernels get their role and product
count by name, the tables and the plot render from rows, and on a GPU our passes are found and counted."""

import json

import pytest
import torch
from script_loader import load_script

from reporting import attention_kernels
from reporting.attention_kernels import markdown, role, write

CUDNN_FPROP = "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x"
CUDNN_BPROP = "cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26_64"


def test_kernels_get_their_role_and_products_by_name():
    assert role("attn_fwd", True) == ("forward", 2)
    assert role("attn_fwd_hopper", True) == ("forward", 2)
    assert role("attn_bwd_dq", True) == ("backward: dQ pass", 3)
    assert role("attn_bwd_kv", True) == ("backward: dK/dV pass", 4)
    assert role("attn_bwd_kv", False) == ("backward: dK/dV pass", 5)  # the single pass: dQ's product too
    assert role("attn_bwd_preprocess", False) == ("other", 0)
    assert role(CUDNN_FPROP, False) == ("forward", 2) and role(CUDNN_BPROP, False) == ("backward", 5)
    assert role("void cudnn::fusion::convert_dq_to_16bits<true>(void const*, void*, uns", False) == ("other", 0)
    assert role("void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash", False) == ("backward", 5)
    assert role("void pytorch_flash::flash_bwd_convert_dq_kernel<Flash_bwd_kernel_trait", False) == ("other", 0)


def fake_row(name, ms, kernels):
    return dict(provider=name, B=1, H=12, N=16384, D=64, causal=True, dropout=0.0, storage="packed", ms=ms,
                products=sum(k["products"] for k in kernels), tflops=400.0, kernels=kernels)


def test_tables_give_each_providers_total_ratio_and_kernels_and_the_outputs_are_stamped(tmp_path):
    ours = fake_row("flash", 3.6, [
        dict(name="attn_bwd_kv", role="backward: dK/dV pass", products=4, ms=1.6, launches=1, tflops=560.0),
        dict(name="attn_bwd_dq", role="backward: dQ pass", products=3, ms=1.05, launches=1, tflops=550.0),
        dict(name="attn_fwd", role="forward", products=2, ms=0.95, launches=1, tflops=430.0)])
    cudnn = fake_row("sdpa_cudnn", 3.24, [
        dict(name=CUDNN_BPROP, role="backward", products=5, ms=2.3, launches=1, tflops=450.0),
        dict(name="convert_dq", role="other", products=0, ms=0.02, launches=1, tflops=None),
        dict(name=CUDNN_FPROP, role="forward", products=2, ms=0.92, launches=1, tflops=450.0)])
    text = markdown([ours, cudnn], "# title")
    assert "## N=16384 (B=1), H=12, D=64, causal, dropout 0" in text
    assert "| sdpa_cudnn | 3.240 | 0.90× | 7 | 400 |" in text and "| flash | 3.600 | 1.00× | 9 | 400 |" in text
    assert "| `attn_bwd_dq` | backward: dQ pass | 1.050 | 1 | 3 | 550 |" in text
    assert "| `convert_dq` | other | 0.020 | 1 | 0 | – |" in text
    env = {"gpu": "test GPU", "torch": "x", "triton": "y", "git_commit": "abc1234def", "git_dirty": False}
    text = write([ours, cudnn], tmp_path / "out", env, {"storage": "packed"})
    assert text.startswith("# Attention kernels per forward+backward (bf16, packed q, k, v); test GPU")
    assert "commit abc1234" in text
    saved = json.loads((tmp_path / "out" / "attention_kernels.json").read_text())
    assert saved["env"] == env and [r["provider"] for r in saved["rows"]] == ["flash", "sdpa_cudnn"]
    assert (tmp_path / "out" / "attention_kernels.png").stat().st_size > 0


def test_the_cli_needs_a_gpu(tmp_path, monkeypatch):
    cli = load_script("profile_attention_kernels")
    monkeypatch.setattr(cli.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        cli.main(["--out", str(tmp_path)])


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.profiler's kernels)")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dropout, products", [(0.0, 2 + 3 + 4), (0.1, 2 + 5)])
def test_our_passes_are_found_and_counted_on_a_gpu(dropout, products):
    row = attention_kernels.breakdown("flash", 2, 2, 512, 64, True, dropout, iters=2)
    assert row["products"] == products and row["ms"] > 0 and row["tflops"] > 0


@pytest.mark.gpu
@needs_gpu
def test_the_cli_profiles_ours_and_cudnn_on_a_gpu(tmp_path):
    cli = load_script("profile_attention_kernels")
    cli.main(["--seqs", "512", "--heads", "2", "--iters", "2", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "attention_kernels.json").read_text())
    assert {r["provider"] for r in saved["rows"]} == {"flash", "sdpa_cudnn"}
    assert (tmp_path / "attention_kernels.png").exists()
