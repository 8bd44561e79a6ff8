"""Attention benchmark results: the one schema, its results.json, and the one renderer (Markdown tables, plots).

Used by scripts/bench_attention.py (results.md, dense.png, sparse.png) and by the reproduction report's kernel
section (the same tables with the paper's columns beside ours).

results.json = {"env": environment(), "rows": [row, ...]}; a row:
  part "dense" | "sparse" | "host", provider (DENSE_PROVIDERS / SPARSE_PROVIDERS), N, B, H, D, causal, dropout;
  sparse rows also pattern, window, density (kept fraction of the causal score matrix);
  per timed mode m in MODES: m (median ms) and m_tflops; extra_mib (MiB above the inputs during fwd+bwd);
  host rows instead fwd_host and fwd_bwd_host (ms of host time per eager call, at a size with negligible GPU work);
  fwd_bwd_sustained (--sustain) with sustained_seconds, sustained_clock_mhz and sustained_power_w (medians of
  nvidia-smi's samples during the replays; None where it gave none);
  status only when the case did not run ("OOM" or "error: ..."); fwd_bwd_graph_status when no graph was captured;
  storage "packed" when the inputs were one projection as the model passes them (attention_bench.STORAGES), absent
  for (B, H, N, D).
"""

from __future__ import annotations

import json
from pathlib import Path

from model.attention import causal_density

from . import paper
from .environment import one_line
from .tables import fmt, markdown_table

DENSE_PROVIDERS = ("naive", "flash", "sdpa_flash", "sdpa_cudnn", "flex")
SPARSE_PROVIDERS = ("block_sparse", "flash", "flex")
MODES = ("fwd", "bwd", "fwd_bwd", "fwd_bwd_graph", "fwd_bwd_sustained")
MODE_NAMES = {"fwd": "forward", "bwd": "backward", "fwd_bwd": "forward+backward",
              "fwd_bwd_graph": "forward+backward replayed from a CUDA graph",
              "fwd_bwd_sustained": "forward+backward replayed from a CUDA graph for seconds (at the power limit)"}
PAPER_PASS = {"fwd": "fwd", "bwd": "bwd", "fwd_bwd": "fwd+bwd"}  # our mode -> the paper's table
PAPER_ROWS = ("PyTorch Attention", "FlashAttention", "Block-Sparse FlashAttention")


# ---- results.json ----

def row_key(row: dict) -> tuple:
    return tuple(row.get(k) for k in ("part", "provider", "pattern", "window", "N", "D", "causal", "dropout",
                                      "storage"))


def merge_rows(old: list[dict], new: list[dict]) -> list[dict]:
    """Rows of several partial runs in one table; a re-measured case replaces its old row."""
    fresh = {row_key(r) for r in new}
    return [r for r in old if row_key(r) not in fresh] + new


def load(path: str | Path) -> tuple[dict, list[dict]]:
    """(env, rows) of a results.json, or ({}, []) if there is none."""
    path = Path(path)
    if not path.exists():
        return {}, []
    data = json.loads(path.read_text())
    return data["env"], data["rows"]


def save(path: str | Path, env: dict, rows: list[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"env": env, "rows": rows}, indent=1))


def write_outputs(rows: list[dict], out_dir: str | Path, env: dict) -> str:
    """results.json, results.md, dense.png, sparse.png in out_dir; returns the Markdown."""
    out_dir = Path(out_dir)
    save(out_dir / "results.json", env, rows)
    md = markdown(rows, env, plots(rows, env, out_dir))
    (out_dir / "results.md").write_text(md)
    return md


# ---- cells ----

def ok(row: dict | None, mode: str) -> bool:
    return bool(row) and "status" not in row and row.get(mode) is not None


def cell(row: dict | None, mode: str) -> str:
    """'0.53 (120)': median ms and TFLOP/s (sustained: and the SM clock); the status where the case did not run."""
    if row is None:
        return "–"
    if "status" in row:
        return f"**{row['status'].split(':')[0].upper()}**"
    if mode not in row:
        return "–"
    text = f"{row[mode]:.2f} ({row[mode + '_tflops']:.0f})"
    if mode == "fwd_bwd_sustained" and row.get("sustained_clock_mhz"):
        text += f" {row['sustained_clock_mhz']:.0f} MHz"
    return text


def ratio(a: dict | None, b: dict | None, mode: str) -> str:
    """a's time over b's ("2.00×": b is twice as fast)."""
    return f"{a[mode] / b[mode]:.2f}×" if ok(a, mode) and ok(b, mode) else "–"


def _ordered(names, order) -> list[str]:
    return [p for p in order if p in names] + sorted(set(names) - set(order))


def shape_note(rows: list[dict]) -> str:
    timed = [r for r in rows if r["part"] != "host"]
    tokens = sorted({r["B"] * r["N"] for r in timed if r.get("B")})
    heads = sorted({r["H"] for r in timed if r.get("H")})
    packed = any(r.get("storage") == "packed" for r in timed)
    rounds = max((r.get("rounds", 1) for r in timed), default=1)
    note = "; q, k, v packed in one projection as the model passes them (whole to ours, as views to the others)"
    rounds_note = f"; each time the median of {rounds} rounds, providers in alternating order" if rounds > 1 else ""
    return (f"{'/'.join(f'{t:,}' for t in tokens) or '?'} tokens per batch (B = tokens / N), "
            f"{'/'.join(map(str, heads)) or '?'} heads{note if packed else ''}{rounds_note}")


# ---- tables ----

def dense_groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Dense rows by (D, causal, dropout): causal first, then no dropout first."""
    dense = [r for r in rows if r["part"] == "dense"]
    keys = sorted({(r["D"], r["causal"], r["dropout"]) for r in dense}, key=lambda g: (g[0], not g[1], g[2]))
    return {k: [r for r in dense if (r["D"], r["causal"], r["dropout"]) == k] for k in keys}


def group_title(D: int, causal: bool, dropout: float) -> str:
    return f"D={D}, {'causal' if causal else 'no mask'}, dropout {dropout:g}"


def dense_table(sel: list[dict], mode: str, *, with_paper: bool = False) -> str:
    """One row per N: each provider's time, each other provider's time over flash's, and (with_paper, head dim
    64) the paper's A100 times for the same pass, dropout and masking (its masking is a padding mask)."""
    provs = _ordered({r["provider"] for r in sel}, DENSE_PROVIDERS)
    others = [p for p in provs if p != "flash"] if "flash" in provs else []
    D, causal, dropout = sel[0]["D"], sel[0]["causal"], sel[0]["dropout"]
    table = None
    if with_paper and D == 64 and mode in PAPER_PASS:
        table = paper.RUNTIME_TABLES[(PAPER_PASS[mode], dropout > 0, causal)]
    headers = ["N", *provs, *[f"{p} ÷ flash" for p in others]]
    if table:
        headers += [f"paper (A100): {p}" for p in PAPER_ROWS] + ["paper (A100): PyTorch ÷ FlashAttention"]
    rows = []
    for n in sorted({r["N"] for r in sel}):
        by = {r["provider"]: r for r in sel if r["N"] == n}
        line = [n, *[cell(by.get(p), mode) for p in provs], *[ratio(by.get(p), by.get("flash"), mode) for p in others]]
        if table:
            theirs = [table[1][p][paper.SEQ_LENS.index(n)] if n in paper.SEQ_LENS else None for p in PAPER_ROWS]
            line += [fmt(t, ".2f") for t in theirs]
            line.append(f"{theirs[0] / theirs[1]:.2f}×" if theirs[0] and theirs[1] else "–")
        rows.append(line)
    return markdown_table(headers, rows)


def memory_table(sel: list[dict], *, with_paper: bool = False) -> str:
    provs = _ordered({r["provider"] for r in sel}, DENSE_PROVIDERS)
    headers = ["N", *[f"{p} (MiB)" for p in provs]]
    if with_paper:
        headers += [f"paper (A100): {p} (MB)" for p in PAPER_ROWS[:2]]
    rows = []
    for n in sorted({r["N"] for r in sel}):
        by = {r["provider"]: r for r in sel if r["N"] == n}
        line = [n, *[fmt(by[p]["extra_mib"], ",.0f") if ok(by.get(p), "extra_mib") else cell(by.get(p), "")
                     for p in provs]]
        if with_paper:
            line += [fmt(paper.paper_memory_mb(b, n), ",d") for b in ("naive", "flash")]
        rows.append(line)
    return markdown_table(headers, rows)


def sparse_table(rows: list[dict], modes=("fwd", "fwd_bwd", "fwd_bwd_graph")) -> str:
    """Block-sparse vs dense flash and FlexAttention (same mask) per pattern, window and N. Ideal: the time ratio
    if time followed the computed fraction, dense causal density over the layout's."""
    sparse = [r for r in rows if r["part"] == "sparse"]
    baselines = sorted({r["provider"] for r in sparse} - set(SPARSE_PROVIDERS))  # another checkout's kernels
    headers = ["pattern", "window", "N", "density", "mode", "block_sparse", "flash (dense)", "flex (same mask)",
               "flash ÷ block_sparse", "ideal", "fraction of ideal", "block_sparse ÷ flex",
               *[h for b in baselines for h in (b, f"{b} ÷ block_sparse")]]
    out = []
    for pat, window, n in sorted({(r["pattern"], r["window"], r["N"]) for r in sparse}):
        by = {r["provider"]: r for r in sparse if (r["pattern"], r["window"], r["N"]) == (pat, window, n)}
        density = next(iter(by.values()))["density"]
        ideal = causal_density(n) / density
        for mode in modes:
            bs, fl = by.get("block_sparse"), by.get("flash")
            frac = f"{fl[mode] / bs[mode] / ideal:.2f}" if ok(bs, mode) and ok(fl, mode) else "–"
            out.append([pat, window, n, f"{density:.3f}", mode, cell(bs, mode), cell(fl, mode),
                        cell(by.get("flex"), mode), ratio(fl, bs, mode), f"{ideal:.2f}×", frac,
                        ratio(bs, by.get("flex"), mode),
                        *[c for b in baselines for c in (cell(by.get(b), mode), ratio(by.get(b), bs, mode))]])
    return markdown_table(headers, out)


def host_table(rows: list[dict]) -> str:
    """Host time per eager call by provider, and each over flash's (same masking and dropout)."""
    host = [r for r in rows if r["part"] == "host"]
    out = []
    for causal, dropout in sorted({(r["causal"], r["dropout"]) for r in host}, key=lambda g: (not g[0], g[1])):
        by = {r["provider"]: r for r in host if (r["causal"], r["dropout"]) == (causal, dropout)}
        for prov in _ordered(by, DENSE_PROVIDERS):
            r = by[prov]
            out.append([prov, "causal" if causal else "no mask", f"{dropout:g}",
                        *[f"{r[m]:.3f}" if ok(r, m) else cell(r, m) for m in ("fwd_host", "fwd_bwd_host")],
                        ratio(r, by.get("flash"), "fwd_bwd_host")])
    return markdown_table(["provider", "mask", "dropout", "forward (ms)", "forward+backward (ms)",
                           "fwd+bwd ÷ flash's"], out)


def host_section(rows: list[dict], level: str = "##") -> list[str]:
    if not any(r["part"] == "host" for r in rows):
        return []
    r = next(r for r in rows if r["part"] == "host")
    return [f"\n{level} Host time per eager call (B = {r['B']}, H = {r['H']}, N = {r['N']}, D = {r['D']}: the GPU work "
            "is a few microseconds, so this is what launching costs the CPU; a training step pays it wherever its "
            "GPU work is shorter)\n", host_table(rows)]


def markdown(rows: list[dict], env: dict, pngs: list[str] = ()) -> str:
    """results.md: every mode of every dense group, extra memory, and the block-sparse table."""
    md = [f"# Attention benchmark\n\n{one_line(env)}. bf16."]
    if any(r["part"] != "host" for r in rows):
        md[0] += (f" {shape_note(rows)}. Cells: median ms (TFLOP/s). Extra memory: MiB above the inputs during "
                  "forward+backward. fwd_bwd_graph: the same fwd+bwd captured in a CUDA graph and replayed, so the "
                  "host's launch time is left out (GPU time; eager calls are host-bound where fwd_bwd is well above "
                  "it).")
        if any("fwd_bwd_sustained" in r for r in rows):
            seconds = next(r["sustained_seconds"] for r in rows if "fwd_bwd_sustained" in r)
            md[0] += (f" fwd_bwd_sustained: that graph replayed for {seconds:g} s, as training runs it, with the "
                      "median SM clock: there the board's power limit sets the clock, lower for a kernel that "
                      "spends more energy per unit of work.")
    md[0] += "\n"
    for (D, causal, dropout), sel in dense_groups(rows).items():
        for mode in [m for m in MODES if any(m in r for r in sel)]:
            md += [f"\n## Dense, {group_title(D, causal, dropout)}: {mode}\n", dense_table(sel, mode)]
        md += [f"\n## Dense, {group_title(D, causal, dropout)}: extra memory\n", memory_table(sel)]
    if any(r["part"] == "sparse" for r in rows):
        md += ["\n## Block-sparse, causal: ms (TFLOP/s over the computed blocks)\n", sparse_table(rows)]
    md += host_section(rows)
    md += [f"\n![{Path(p).stem}]({Path(p).name})\n" for p in pngs]
    return "\n".join(md)


def kernel_section(rows: list[dict], out: Path, heading: str) -> str:
    """The report's kernel section: head dim 64, forward+backward per condition with the paper's columns (Tables
    9-21), extra memory beside Table 21, the block-sparse table, and the benchmark's plots."""
    d64 = [r for r in rows if r["D"] == 64]
    md = [f"## {heading}\n",
          f"Ours: this machine, {shape_note(rows)}, d = 64, median of repeated calls; cells are ms (TFLOP/s). "
          f"Paper: {paper.CITATION}, Appendix E.6: A100 40 GB, batch 16 at every N, 8 heads, d = 64, fp16, mean of "
          "100 calls. Our batch shrinks as N grows, so our times grow about linearly with N and the paper's "
          "quadratically: compare the ratio columns, not absolute times. The paper's *masking* is a padding mask, "
          "set beside our *causal* runs. *fwd_bwd_graph*: the same fwd+bwd replayed from a captured CUDA graph, "
          "i.e. GPU time without the host's launch gaps (where the eager time is well above it, the call is "
          "host-bound).\n"]
    for (D, causal, dropout), sel in dense_groups(d64).items():
        for mode in [m for m in ("fwd_bwd", "fwd_bwd_graph") if any(m in r for r in sel)]:
            md += [f"### {group_title(D, causal, dropout)}: {MODE_NAMES[mode]}\n",
                   dense_table(sel, mode, with_paper=True)]
    groups = dense_groups(d64)
    key = (64, False, 0.0) if (64, False, 0.0) in groups else next(iter(groups), None)
    if key:
        md += [f"### Extra memory of forward+backward, {group_title(*key)} (paper: Table 21, no dropout, no "
               "masking)\n", memory_table(groups[key], with_paper=True)]
    if any(r["part"] == "sparse" for r in rows):
        md += ["### Block-sparse, causal (ms (TFLOP/s over the computed blocks))\n", sparse_table(rows, ("fwd_bwd",))]
    md += host_section(rows, "###")
    md += [f"\n![{Path(p).stem}]({Path(p).name})\n" for p in plots(rows, {}, out, prefix="kernels_")]
    return "\n".join(md)


# ---- plots ----

def plots(rows: list[dict], env: dict, out_dir: str | Path, prefix: str = "") -> list[str]:
    """dense.png (fwd+bwd time and extra memory vs N per dense group, the paper's head-dim-64 times dashed) and
    sparse.png (block-sparse vs N, and vs density); returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    title = one_line(env) if env else ""
    paths = []
    groups = dense_groups(rows)
    if groups:
        fig, axes = plt.subplots(2, len(groups), figsize=(4.5 * len(groups), 8), squeeze=False)
        for col, ((D, causal, dropout), sel) in enumerate(groups.items()):
            for i, prov in enumerate(_ordered({r["provider"] for r in sel}, DENSE_PROVIDERS)):
                for ax, key in zip(axes[:, col], ("fwd_bwd", "extra_mib"), strict=True):
                    pts = sorted((r["N"], r[key]) for r in sel if r["provider"] == prov and ok(r, key))
                    if pts:
                        ax.plot(*zip(*pts, strict=True), "o-", color=f"C{i}", label=prov)
            if D == 64:
                table = paper.RUNTIME_TABLES[("fwd+bwd", dropout > 0, causal)][1]
                for j, name in enumerate(PAPER_ROWS[:2]):
                    pts = [(n, t) for n, t in zip(paper.SEQ_LENS, table[name], strict=True) if t and n <= 16384]
                    axes[0, col].plot(*zip(*pts, strict=True), "x--", color=f"C{len(DENSE_PROVIDERS) + j}",
                                      alpha=0.6, label=f"{name} (paper, A100, B=16)")
            axes[0, col].set_title(group_title(D, causal, dropout), fontsize=9)
            axes[0, col].set_ylabel("fwd+bwd ms")
            axes[1, col].set_ylabel("extra memory MiB")
            for ax in axes[:, col]:
                if ax.lines:
                    ax.set_yscale("log")
                    ax.set_xscale("log", base=2)
                    ax.legend(fontsize=7)
                ax.set_xlabel("N")
                ax.grid(alpha=0.3, which="both")
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        paths.append(str(out_dir / f"{prefix}dense.png"))
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    sparse = [r for r in rows if r["part"] == "sparse" and ok(r, "fwd_bwd")]
    if sparse:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        styles = (("block_sparse", "o-"), ("flex", "s--"), ("flash", "x:"))
        for pat in sorted({r["pattern"] for r in sparse}):
            for prov, style in styles:
                pts = sorted((r["N"], r["fwd_bwd"]) for r in sparse
                             if r["pattern"] == pat and r["window"] == 256 and r["provider"] == prov)
                if pts:
                    axes[0].plot(*zip(*pts, strict=True), style, label=f"{pat} {prov}")
        axes[0].set(xscale="log", yscale="log", xlabel="N", ylabel="fwd+bwd ms", title="causal, vs N")
        local = [r for r in sparse if r["pattern"] == "local"]
        n_d = max((r["N"] for r in local), default=0)
        for prov, style in styles:
            pts = sorted((r["density"], r["fwd_bwd"]) for r in local if r["N"] == n_d and r["provider"] == prov)
            if pts:
                axes[1].plot(*zip(*pts, strict=True), style, label=prov)
        axes[1].set(xlabel="density (kept fraction)", ylabel="fwd+bwd ms", title=f"local windows, N={n_d}")
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        paths.append(str(out_dir / f"{prefix}sparse.png"))
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths
