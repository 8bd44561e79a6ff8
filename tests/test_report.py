"""The report builder on run directories made by real tiny train.py runs (naive vs sdpa on CPU)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reporting import attention_results, paper, report
from reporting.environment import environment
from reporting.runs import Run, load_runs
from reporting.tables import loss_gap, throughput_table

REPO = Path(__file__).resolve().parent.parent


def tiny_sweep(sweep_dir: Path, backends: str = "naive,sdpa", steps: int = 4) -> Path:
    cmd = [sys.executable, str(REPO / "train.py"), "-m", "model=gpt2-nano", f"attn={backends}", "train.device=cpu",
           f"train.max_steps={steps}", "train.untimed_steps=1", "train.seq_len=32", "train.batch_size=4",
           "train.log_interval=1", "train.eval_interval=0", "train.eval_iters=1", "train.ckpt_interval=-1",
           "train.sample_at_eval=false", "logger=none", f"hydra.sweep.dir={sweep_dir}",
           "hydra.sweep.subdir=${hydra.job.num}_${attn.name}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return sweep_dir


def add_oom_fixture(sweep_dir: Path) -> Path:
    """FIXTURE, not a measurement: a copy of the naive run whose summary says it ran out of memory, as train.py
    records an OOM on a GPU; it exercises the OOM row of the tables."""
    src = next(p for p in sorted(sweep_dir.iterdir()) if p.name.endswith("_naive"))
    dst = sweep_dir / "9_oom_fixture"
    shutil.copytree(src, dst)
    summary = json.loads((dst / "summary.json").read_text())
    summary.update(status="oom", error="CUDA out of memory (test fixture)", tokens_per_sec=None, mfu=None,
                   final_train_loss=None, final_val_loss=None, batch_size=summary["batch_size"])
    (dst / "summary.json").write_text(json.dumps(summary))
    (dst / "metrics.jsonl").write_text("")
    return dst


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    d = tiny_sweep(tmp_path_factory.mktemp("sweep") / "tiny")
    add_oom_fixture(d)
    (d / "10_killed" / ".hydra").mkdir(parents=True)  # a job killed before it wrote anything but its config
    (d / "10_killed" / ".hydra" / "config.yaml").write_text("model: {preset: gpt2-nano}\nattn: {name: naive}\n")
    return d


def test_loader_reads_the_contract(sweep):
    runs = load_runs([sweep])
    by_status = {r.status: r for r in runs}
    assert sorted(r.status for r in runs) == ["missing", "ok", "ok", "oom"]
    ok = [r for r in runs if r.status == "ok"]
    assert {r.backend for r in ok} == {"naive", "sdpa"}
    for r in ok:
        assert r.model == "gpt2-nano" and r.seq_len == 32 and r.batch_size == 4
        assert r.tokens_per_sec > 0 and r.final_train_loss is not None
        assert len(r.curve()[0]) == 4
    assert "no summary.json" in by_status["missing"].error


def test_tables_show_every_run_including_oom(sweep):
    runs = load_runs([sweep])
    md = throughput_table(runs)
    assert "**OOM** (CUDA out of memory (test fixture))" in md
    assert "**MISSING**" in md
    assert "| naive | ok |" in md and "| sdpa | ok |" in md
    assert "stdlib_docs (bytes)" in md  # the data and its tokenizer


def timed_run(backend, intervals, tokens_per_sec=None):
    history = [{"step": 1, "perf/tokens_per_sec": None}] + [{"step": i + 2, "perf/tokens_per_sec": t}
                                                            for i, t in enumerate(intervals)]
    return Run(name=backend, source="-", status="ok", backend=backend, model="gpt2-nano", seq_len=32, batch_size=4,
               steps=10, tokens_per_sec=tokens_per_sec or sorted(intervals)[len(intervals) // 2], history=history)


def test_a_speedup_needs_steady_timings_on_both_sides(tmp_path):
    naive = timed_run("naive", [1000, 1010, 990, 1005])
    steady_sdpa = timed_run("sdpa", [2000, 2020, 1980, 2010])
    assert "| sdpa | ok | 2,010 | 4 | 2% | – | – | 2.00× |" in throughput_table([naive, steady_sdpa])
    # two intervals, 695 and 10,736 tok/s (as one CPU HF run once logged): no ratio, and a caveat says why
    noisy_hf = timed_run("hf", [695, 10736], tokens_per_sec=695)
    md = report.throughput_section([naive, steady_sdpa, noisy_hf], tmp_path, "cpu")
    assert "| hf | ok | 695 | 2 | 176% | – | – | – |" in md
    assert "**Caveat:** 1 of 3 runs" in md and "(hf)" in md


def test_exact_backends_give_the_same_curve(sweep):
    ok = [r for r in load_runs([sweep]) if r.status == "ok"]
    naive, sdpa = sorted(ok, key=lambda r: r.backend)
    gap = loss_gap(naive, sdpa)
    assert gap["steps"] == 4 and gap["max_gap"] < 1e-4


def test_report_sections_and_plots(sweep, tmp_path):
    runs = load_runs([sweep])
    sections = [report.throughput_section(runs, tmp_path, "cpu"), report.parity_section(report.auto_pairs(runs),
                                                                                         tmp_path)]
    path = report.write_report(tmp_path, "test", environment(), sections, {"runs": [r.to_json() for r in runs]})
    md = path.read_text()
    assert "torch" in md and "date_utc" in md  # stamped
    assert "**OOM**" in md and "largest |Δ train loss|" in md
    for png in ("throughput.png", "parity_0.png"):
        assert (tmp_path / png).stat().st_size > 1000
    raw = json.loads((tmp_path / "raw.json").read_text())
    assert len(raw["runs"]) == 4 and "environment" in raw


def bench_row(provider, n, fwd_bwd, extra_mib=None, graph=None, **kw):
    """FIXTURE row in the benchmark's schema (reporting/attention_results.py), only to check the rendering."""
    row = {**dict(part="dense", provider=provider, N=n, B=16384 // n, H=12, D=64, causal=True, dropout=0.0,
                  fwd_bwd=fwd_bwd, fwd_bwd_tflops=1.0, extra_mib=extra_mib), **kw}
    if graph:
        row.update(fwd_bwd_graph=graph, fwd_bwd_graph_tflops=2.0)
    return row


def test_kernel_section_keeps_paper_columns_apart(tmp_path):
    # the paper's numbers must sit in their own "paper (A100)" columns, never in ours
    dense = [bench_row(p, n, t, m) for p, t, m in (("naive", 1.5, 300.0), ("flash", 0.5, 30.0)) for n in (1024, 2048)]
    dense.append(dict(part="dense", provider="naive", N=4096, B=4, H=12, D=64, causal=True, dropout=0.0,
                      status="OOM"))
    cases = (("block_sparse", 256, 0.05, 1.0), ("block_sparse", 1024, 0.2, 3.0), ("flash", 256, 0.05, 8.0))
    sparse = [bench_row(p, 8192, t, part="sparse", pattern="local", window=w, density=d) for p, w, d, t in cases]
    md = attention_results.kernel_section(dense + sparse, tmp_path, "Attention kernels")
    assert "| N | naive | flash | naive ÷ flash | paper (A100): PyTorch Attention |" in md
    # ours, then the paper's Table 14 (masking, no dropout): PyTorch 7.23, FlashAttention 2.37, block-sparse 0.69
    assert "| 1024 | 1.50 (1) | 0.50 (1) | 3.00× | 7.23 | 2.37 | 0.69 | 3.05× |" in md
    assert paper.paper_runtime("naive", 1024, dropout=False, mask=True) == 7.23
    assert "| 4096 | **OOM** | – | – |" in md
    # the ideal speedup is the dense causal density over the layout's: (8193 / 16384) / 0.05 = 10.00
    assert "| local | 256 | 8192 | 0.050 | fwd_bwd | 1.00 (1) | 8.00 (1) | – | 8.00× | 10.00× | 0.80 | – |" in md
    assert (tmp_path / "kernels_dense.png").exists() and (tmp_path / "kernels_sparse.png").exists()


def test_kernel_section_shows_the_cuda_graph_time_when_measured(tmp_path):
    dense = [bench_row("naive", 1024, 1.5), bench_row("flash", 1024, 0.5, graph=0.25)]
    md = attention_results.kernel_section(dense, tmp_path, "Attention kernels")
    assert "### D=64, causal, dropout 0: forward+backward replayed from a CUDA graph" in md
    assert "| 1024 | – | 0.25 (2) | – |" in md


def test_parity_of_identical_curves_and_of_one_backend_with_two_seeds(tmp_path):
    a, b = timed_run("naive", [1000] * 3), timed_run("naive", [1000] * 3)
    a.seed, b.seed = 1337, 1338
    for run in (a, b):
        run.history = [{"step": s, "train/loss": 5.0 - s / 10} for s in range(1, 6)]
    md = report.parity_section([("noise floor", a, b)], tmp_path)
    assert "| noise floor | 0.0 | 5 |" in md  # logged steps compared
    assert "largest |Δ train loss| over the 5 logged steps = 0.00e+00" in md
    assert "the lower panel draws the point at 1e-12" in md
    assert [label for label, _ in report.legend_labels(a, b)] == ["naive, seed 1337", "naive, seed 1338"]
