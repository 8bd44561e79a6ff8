"""Matplotlib figures for the report: loss curves, throughput bars, kernel runtime/memory vs N."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .runs import Run  # noqa: E402
from .tables import group_by_shape  # noqa: E402


def _save(fig, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path.name


def loss_curves(runs: list[tuple[str, Run]], path: Path, title: str, key: str = "train/loss") -> str:
    """Overlay of loss curves; `runs` are (legend label, run) pairs."""
    fig, ax = plt.subplots(figsize=(7, 4))
    styles = ["-", "--", ":", "-."]
    for i, (label, run) in enumerate(runs):
        steps, losses = run.curve(key)
        ax.plot(steps, losses, styles[i % len(styles)], label=label, linewidth=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(runs) > 6:
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1))
    else:
        ax.legend(fontsize=8)
    return _save(fig, path)


def throughput_bars(runs: list[Run], path: Path, title: str = "training throughput") -> str:
    """Tokens/s per backend, one group of bars per (model, seq len); failed runs drawn as an 'OOM'/'error' label."""
    groups = group_by_shape(runs)
    labels = sorted({r.label for r in runs}, key=lambda lab: next(r for r in runs if r.label == lab).backend)
    width = 0.8 / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups) + 2), 4))
    for i, lab in enumerate(labels):
        for g, (_, group) in enumerate(groups.items()):
            run = next((r for r in group if r.label == lab), None)
            if run is None:
                continue
            x = g + (i - (len(labels) - 1) / 2) * width
            if run.status == "ok" and run.tokens_per_sec:
                ax.bar(x, run.tokens_per_sec, width, color=f"C{i}", label=lab if g == 0 else None)
            else:
                ax.bar(x, 0, width, color=f"C{i}", label=lab if g == 0 else None)
                ax.text(x, 0, run.status.upper(), rotation=90, ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{k[0]}\nseq {k[1]}, bs {k[2]}" for k in groups], fontsize=8)
    ax.set_ylabel("tokens / s")
    ax.set_title(title)
    handles, names = ax.get_legend_handles_labels()
    uniq = dict(zip(names, handles, strict=True))
    ax.legend(uniq.values(), uniq.keys(), fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def train_step_bars(rows: list[dict], path: Path, title: str) -> str:
    """scripts/bench_train_step.py's rows: one group per (seq x batch, mode), per backend a solid bar (train.py's
    tokens/s) beside a hatched one (the bare loop's, when it ran)."""
    groups = list(dict.fromkeys((r["seq"], r["batch"], r["mode"]) for r in rows))
    attns = list(dict.fromkeys(r["attn"] for r in rows))
    width = 0.8 / (2 * len(attns))
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(groups) + 2), 4))
    for g, key in enumerate(groups):
        for i, attn in enumerate(attns):
            row = next((r for r in rows if (r["seq"], r["batch"], r["mode"]) == key and r["attn"] == attn), None)
            if row is None:
                continue
            x = g + (2 * i - (2 * len(attns) - 1) / 2) * width
            ax.bar(x, row["train_py_tokens_per_sec"], width, color=f"C{i}",
                   label=f"{attn}, train.py" if g == 0 else None)
            if row["bare_tokens_per_sec"] is not None:
                ax.bar(x + width, row["bare_tokens_per_sec"], width, color=f"C{i}", alpha=0.5, hatch="//",
                       label=f"{attn}, bare loop" if g == 0 else None)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{seq} x {batch}\n{mode}" for seq, batch, mode in groups], fontsize=8)
    ax.set_ylabel("tokens / s")
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def series_vs_n(series: dict[str, tuple[list[int], list[float]]], path: Path, *, title: str, ylabel: str,
                paper: dict[str, tuple[list[int], list[float]]] | None = None) -> str:
    """Log-log lines of a quantity vs sequence length; the paper's values dashed and labelled '(paper, A100)'."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, (xs, ys)) in enumerate(series.items()):
        ax.plot(xs, ys, "o-", color=f"C{i}", label=name)
    for i, (name, (xs, ys)) in enumerate((paper or {}).items()):
        ax.plot(xs, ys, "x--", color=f"C{i + len(series)}", alpha=0.6, label=f"{name} (paper, A100)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length N")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return _save(fig, path)


ZERO_DRAWN_AT = 1e-12  # where a zero difference sits on the log scale


def parity_plot(a: tuple[str, Run], b: tuple[str, Run], path: Path, title: str, key: str = "train/loss") -> str:
    """Two loss curves overlaid, and below them |a - b| per step on a log scale."""
    (la, ra), (lb, rb) = a, b
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True, height_ratios=[2, 1])
    (sa, ya), (sb, yb) = ra.curve(key), rb.curve(key)
    top.plot(sa, ya, "-", label=la, linewidth=1.5)
    top.plot(sb, yb, "--", label=lb, linewidth=1.5)
    top.set_ylabel(key)
    top.set_title(title)
    top.grid(alpha=0.3)
    top.legend(fontsize=8)
    db = dict(zip(sb, yb, strict=True))
    gap = [(s, abs(y - db[s])) for s, y in zip(sa, ya, strict=True) if s in db]
    if gap:
        bottom.semilogy([g[0] for g in gap], [max(g[1], ZERO_DRAWN_AT) for g in gap], ".-", color="C3", linewidth=0.8)
        if any(g[1] == 0 for g in gap):
            bottom.axhline(ZERO_DRAWN_AT, color="grey", linewidth=0.6, linestyle=":")
            bottom.text(0.01, 0.04, f"identical losses (|Δ| = 0) drawn at {ZERO_DRAWN_AT:g}", fontsize=7,
                        transform=bottom.transAxes)
    bottom.set_ylabel(f"|Δ {key}|")
    bottom.set_xlabel("step")
    bottom.grid(alpha=0.3, which="both")
    return _save(fig, path)


def xy(points: dict[str, tuple[list[float], list[float]]], path: Path, *, title: str, xlabel: str, ylabel: str) -> str:
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, (xs, ys)) in enumerate(points.items()):
        ax.plot(xs, ys, "o-", color=f"C{i}", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def layout_picture(layout, path: Path, title: str, causal: bool = False) -> str:
    """A block layout as an image: query blocks down, key blocks across (the causal part only if causal)."""
    shown = layout.tril() if causal else layout
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(shown.numpy(), cmap="Blues", interpolation="nearest", vmin=0, vmax=1)
    ax.set(xlabel="key block", ylabel="query block", title=title)
    return _save(fig, path)
