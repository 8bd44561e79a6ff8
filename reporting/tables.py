"""Markdown tables from run records: throughput (paper Tables 2/4), convergence parity, block-sparse losses."""

from __future__ import annotations

from collections import defaultdict

from . import paper
from .runs import Run

BACKEND_ORDER = ("hf", "naive", "sdpa", "flash", "block_sparse")


def fmt(x, spec: str = ".3g", suffix: str = "") -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and x != x:
        return "nan"
    return f"{x:{spec}}{suffix}"


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def backend_key(run: Run):
    b = run.backend
    return (BACKEND_ORDER.index(b) if b in BACKEND_ORDER else len(BACKEND_ORDER), run.label)


def status_cell(run: Run) -> str:
    if run.status == "ok":
        return "ok"
    reason = (run.error or "").splitlines()[0][:80] if run.error else ""
    return f"**{run.status.upper()}**" + (f" ({reason})" if reason else "")


def group_by_shape(runs: list[Run]) -> dict[tuple, list[Run]]:
    """Runs comparable for speed: same model, seq len and batch (and steps and dropout, so a sweep's timing
    runs don't mix with longer convergence runs of the same shape)."""
    groups = defaultdict(list)
    for r in runs:
        groups[(r.model, r.seq_len, r.batch_size, r.steps if r.status == "ok" else None, r.dropout)].append(r)
    for key in [k for k in groups if k[3] is None]:  # failed runs join the group of their shape, if any
        home = next((k for k in groups if k[:3] == key[:3] and k[4] == key[4] and k[3] is not None), None)
        if home is not None:
            groups[home] += groups.pop(key)
    order = lambda kv: (str(kv[0][0]), kv[0][1] or 0, kv[0][2] or 0, kv[0][3] or 0, kv[0][4])
    return {k: sorted(v, key=backend_key) for k, v in sorted(groups.items(), key=order)}


MIN_INTERVALS = 3  # timed log intervals below which a run's tokens/s is not compared
MAX_SPREAD = 0.25  # (max - min) / median of the intervals above which it is not compared either


def spread(run: Run) -> float | None:
    """Range of the run's timed intervals' tokens/s over their median (None without two intervals)."""
    tps = sorted(run.intervals)
    if len(tps) < 2:
        return None
    median = tps[len(tps) // 2] if len(tps) % 2 else (tps[len(tps) // 2 - 1] + tps[len(tps) // 2]) / 2
    return (tps[-1] - tps[0]) / median


def steady(run: Run) -> bool:
    """Enough timed intervals, close enough together, for the run's tokens/s to be compared with another's."""
    s = spread(run)
    return len(run.intervals) >= MIN_INTERVALS and s is not None and s <= MAX_SPREAD


def _speedup(run: Run, base: Run | None) -> str:
    if base is None or run.status != "ok" or base.status != "ok" or not base.tokens_per_sec:
        return "–"
    if not (steady(run) and steady(base)):
        return "–"
    return f"{run.tokens_per_sec / base.tokens_per_sec:.2f}×"


def throughput_table(runs: list[Run], with_paper: bool = False) -> str:
    """One row per run: data, tokens/s with its timed intervals and spread, MFU, peak memory, speedup over naive
    and over HF of the same shape (only between steady runs, see steady()). with_paper: the paper's Table 2
    speedup (FlashAttention over HuggingFace, 8xA100, seq 1K) beside flash rows, for orientation only."""
    headers = ["model", "data", "seq", "batch", "backend", "status", "tokens/s", "timed intervals", "spread", "MFU",
               "peak mem (GB)", "vs naive", "vs hf", *(["paper (A100): flash vs HF"] if with_paper else []), "run"]
    rows = []
    for (model, seq, batch, *_), group in group_by_shape(runs).items():
        base = {b: next((r for r in group if r.backend == b and not r.attn_options), None) for b in ("naive", "hf")}
        for r in group:
            ref = paper.GPT2_TRAINING.get((model, "flash")) if r.backend == "flash" and seq == 1024 else None
            paper_cell = [f"{ref['speedup']}× (Table 2)" if ref else ""] if with_paper else []
            rows.append([model, r.data, seq, batch, r.label, status_cell(r), fmt(r.tokens_per_sec, ",.0f"),
                         len(r.intervals), fmt(spread(r), ".0%"),
                         fmt(None if r.mfu is None else 100 * r.mfu, ".1f", "%"),
                         fmt(r.peak_mem_gb, ".2f"), _speedup(r, base["naive"]), _speedup(r, base["hf"]), *paper_cell,
                         f"`{r.name}`"])
    return markdown_table(headers, rows)


def loss_gap(a: Run, b: Run, key: str = "train/loss") -> dict:
    """Gap between two loss curves at the steps both logged."""
    sa, la = a.curve(key)
    sb, lb = b.curve(key)
    common = sorted(set(sa) & set(sb))
    da, db = dict(zip(sa, la, strict=True)), dict(zip(sb, lb, strict=True))
    gaps = [abs(da[s] - db[s]) for s in common]
    return {
        "steps": len(common),
        "first_gap": gaps[0] if gaps else None,
        "max_gap": max(gaps) if gaps else None,
        "max_gap_step": common[gaps.index(max(gaps))] if gaps else None,
        "mean_gap": sum(gaps) / len(gaps) if gaps else None,
        "final_a": da[common[-1]] if common else None,
        "final_b": db[common[-1]] if common else None,
        "gaps": gaps,
    }


def parity_table(pairs: list[tuple[str, Run, Run]]) -> str:
    headers = ["comparison", "dropout", "logged steps compared", "|Δloss| at first logged step", "max |Δloss|",
               "at step", "mean |Δloss|", "final loss (a)", "final loss (b)"]
    rows = []
    for title, a, b in pairs:
        g = loss_gap(a, b)
        failed = [f"{r.label}: {status_cell(r)}" for r in (a, b) if r.status != "ok"]
        title = title + (f" ({'; '.join(failed)})" if failed else "")
        rows.append([title, a.dropout, g["steps"], fmt(g["first_gap"], ".2e"), fmt(g["max_gap"], ".2e"),
                     fmt(g["max_gap_step"], "d"), fmt(g["mean_gap"], ".2e"), fmt(g["final_a"], ".4f"),
                     fmt(g["final_b"], ".4f")])
    return markdown_table(headers, rows)


def sparse_table(runs: list[Run]) -> str:
    headers = ["backend / pattern", "density", "status", "final train loss", "final val loss", "tokens/s"]
    rows = []
    for r in sorted(runs, key=backend_key):
        dens = [h["attn/density"] for h in r.history if h.get("attn/density") is not None]
        rows.append([r.label, fmt(dens[-1] if dens else None, ".3f"), status_cell(r), fmt(r.final_train_loss, ".4f"),
                     fmt(r.final_val_loss, ".4f"), fmt(r.tokens_per_sec, ",.0f")])
    return markdown_table(headers, rows)
