"""scripts/compare.py on real tiny run directories, and the wandb loader on a stand-in for wandb.Api."""

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
from script_loader import load_script
from test_report import REPO, add_oom_fixture, tiny_sweep

from reporting import runs as runs_mod
from reporting.comparison import CompareError, gather


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    d = tiny_sweep(tmp_path_factory.mktemp("cmp") / "sweep")
    add_oom_fixture(d)
    return d


def test_compare_local_dirs(sweep, tmp_path):
    compare = load_script("compare")
    one_run = next(p for p in sweep.iterdir() if p.name.endswith("_sdpa"))
    # a sweep dir (searched recursively) and a single run dir, listed twice on purpose: both are loaded
    md_path = compare.main([str(sweep), str(one_run), "--out", str(tmp_path / "out")])
    md = Path(md_path).read_text()
    assert "**OOM**" in md and "| naive | ok |" in md
    assert "naive vs sdpa" in md and "largest |Δ train loss|" in md
    for png in ("throughput.png", "loss.png", "parity_0.png"):
        assert (tmp_path / "out" / png).exists()
    rows = json.loads((tmp_path / "out" / "runs.json").read_text())
    assert sorted(r["status"] for r in rows) == ["ok", "ok", "ok", "oom"]


def test_compare_needs_some_runs(tmp_path):
    compare = load_script("compare")
    with pytest.raises(SystemExit):
        compare.main(["--out", str(tmp_path)])


def test_a_missing_or_empty_path_is_named(tmp_path):
    with pytest.raises(CompareError, match="'nowhere' does not exist"):
        gather(["nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompareError, match="no runs in"):
        gather([str(tmp_path / "empty")])
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "compare.py"), "nowhere", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip() == ("error: 'nowhere' does not exist; pass run or sweep directories "
                                   "(outputs/<date>/<time>, multirun/<date>/<time>)")  # one line, no traceback


def test_wandb_without_a_login_is_one_line(monkeypatch):
    import wandb

    class NoLogin:
        def runs(self, path, filters=None):
            raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")

    monkeypatch.setattr(wandb, "Api", NoLogin)
    with pytest.raises(CompareError, match="cannot read the wandb project 'me/flashgpt': No API key configured"):
        gather([], "me/flashgpt")


def test_wandb_runs_map_to_records(monkeypatch, sweep):
    """wandb.Api().runs(path, filters={"group": ...}) -> Run records, from a stand-in (no network in tests)."""
    local = {r.backend: r for r in runs_mod.load_runs([sweep]) if r.status == "ok"}
    seen = {}

    def fake_run(r, run_id):
        summary = {"status": "ok", "tokens_per_sec": r.tokens_per_sec, "final_train_loss": r.final_train_loss,
                   "model": r.model, "seq_len": r.seq_len, "batch_size": r.batch_size, "steps": r.steps}
        # training/loggers.py logs each metrics.jsonl row without "step", passing it as wandb's _step
        history = [{"_step": h["step"], **{k: v for k, v in h.items() if k != "step" and v is not None}}
                   for h in r.history]
        return types.SimpleNamespace(name=r.name, id=run_id, state="finished", summary=summary, config=r.config,
                                     scan_history=lambda: iter(history))

    class Api:
        def runs(self, path, filters=None):
            seen.update(path=path, filters=filters)
            return [fake_run(local["naive"], "a1"), fake_run(local["sdpa"], "b2")]

    import wandb

    monkeypatch.setattr(wandb, "Api", Api)
    got = runs_mod.load_wandb_runs("me/flashgpt", "cpu-throughput")
    assert seen == {"path": "me/flashgpt", "filters": {"group": "cpu-throughput"}}
    assert [r.backend for r in got] == ["naive", "sdpa"]
    assert got[0].source == "wandb:me/flashgpt/a1"
    assert got[0].curve() == local["naive"].curve()
