"""bench_attention.py's bookkeeping (no GPU needed): a run stopped part-way keeps the rows it measured."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import bench_attention  # noqa: E402


def fake_rows(n):
    return [bench_attention._add_rates(
        dict(part="dense", provider=p, N=N, B=16384 // N, H=12, D=64, causal=True, dropout=0.0, fwd=0.1 * i + 0.1,
             bwd=0.3, fwd_bwd=0.4, extra_mib=98.0), flops_fwd=1e9)
        for i, (p, N) in enumerate([("flash", 1024), ("sdpa_flash", 1024), ("flash", 4096)][:n])]


def test_results_json_grows_row_by_row(tmp_path, monkeypatch):
    def stopped_after_two(*args, on_row=None, **kwargs):
        for row in fake_rows(2):
            on_row(row)
        raise KeyboardInterrupt  # e.g. the device's time limit

    monkeypatch.setattr(bench_attention.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench_attention, "environment",
                        lambda: {"gpu": "test GPU", "torch": "x", "triton": "y", "date": "today"})
    monkeypatch.setattr(bench_attention, "run_dense", stopped_after_two)
    with pytest.raises(KeyboardInterrupt):
        bench_attention.main(["--out", str(tmp_path), "--part", "dense"])
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [(r["provider"], r["N"]) for r in rows] == [("flash", 1024), ("sdpa_flash", 1024)]

    def third(*args, on_row=None, **kwargs):  # a later part, appended: the earlier rows stay
        on_row(fake_rows(3)[2])

    monkeypatch.setattr(bench_attention, "run_dense", third)
    bench_attention.main(["--out", str(tmp_path), "--part", "dense", "--append"])
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [(r["provider"], r["N"]) for r in rows] == [("flash", 1024), ("sdpa_flash", 1024), ("flash", 4096)]
    assert "flash" in (tmp_path / "results.md").read_text()
