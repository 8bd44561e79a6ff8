"""Report sections (Markdown + PNG), shared by scripts/reproduce.py and scripts/compare.py."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from . import io_model, paper, plots
from .runs import Run
from .tables import (
    MAX_SPREAD,
    MIN_INTERVALS,
    fmt,
    loss_gap,
    markdown_table,
    parity_table,
    sparse_table,
    steady,
    throughput_table,
)


def stamp(env: dict) -> str:
    rows = [[k, f"`{v}`"] for k, v in env.items()]
    return markdown_table(["", ""], rows)


# ---- IO model ----

def io_section() -> str:
    md = ["## IO model: HBM bytes moved by one attention layer (paper Theorem 2, Fig. 2)\n",
          "Counted by `reporting/io_model.py`: the reads and writes in the paper's Algorithms 0/3 (standard) "
          "and 1/4 (FlashAttention), "
          "fp16, SRAM M = 192 KiB (A100; the H100 has 228 KiB). Not a measurement. Standard attention is "
          "counted with 2 extra elementwise N×N passes (mask, dropout), as in the paper's Fig. 2 setting.\n"]
    rows = []
    for name, (b, h, d) in {"GPT-2 small (batch 8)": (8, 12, 64), "GPT-2 medium (batch 64)": (64, 16, 64)}.items():
        for n in (1024, 2048, 4096):
            r = io_model.attention_layer(b, h, n, d, elementwise_passes=2)
            ref = ""
            if b == 64 and n == 1024:
                f2 = paper.FIG2_GPT2_MEDIUM
                ref = f"{f2['standard']['hbm_gb']} vs {f2['flash']['hbm_gb']} GB (Fig. 2)"
            rows.append([name, n, fmt(r["standard_gb"], ".2f"), fmt(r["flash_gb"], ".2f"),
                         f"{r['ratio']:.1f}×", ref])
    md.append(markdown_table(["layer", "N", "standard (GB)", "flash (GB)", "ratio", "paper (A100)"], rows))
    return "\n".join(md)


# ---- end-to-end training ----

def throughput_section(runs: list[Run], out: Path, title: str, png_name: str = "throughput.png",
                       with_paper: bool = False) -> str:
    """Tokens/s per run; with_paper: the paper's GPT-2 training speedups beside them (GPU runs of GPT-2 only)."""
    if not runs:
        return ""
    png = plots.throughput_bars(runs, out / png_name, title=title)
    failed = [r for r in runs if r.status != "ok"]
    noisy = [r for r in runs if r.status == "ok" and not steady(r)]
    devices = {"GPU" if str(r.device or "").startswith("cuda") else "CPU" for r in runs if r.status == "ok"}
    memory = {"GPU": "the CUDA allocator's peak", "CPU": "the process's peak resident memory (RSS)"}
    md = [f"## End-to-end training throughput ({title}{'; paper Tables 2 and 4' if with_paper else ''})\n",
          "Each row is one ordinary `train.py` run (Hydra multirun job); tokens/s is the median over the timed "
          f"log intervals (after the warm-up steps), *spread* their range over that median. MFU counts the "
          f"attention FLOPs the backend computes; peak memory is {' on GPU, '.join(memory[d] for d in sorted(devices))}"
          f"{' on CPU' if len(devices) > 1 else ''}. Speedups divide tokens/s by those of the naive / HF run of the "
          f"same model, seq len and batch, and are left out (–) where either run has fewer than {MIN_INTERVALS} "
          f"timed intervals or a spread above {MAX_SPREAD:.0%}.\n"]
    if failed:
        md.append(f"{len(failed)} of {len(runs)} runs did not finish (status shown in the table, e.g. OOM).\n")
    if noisy:
        md.append(f"**Caveat:** {len(noisy)} of {len(runs)} runs have too few timed intervals or a spread above "
                  f"{MAX_SPREAD:.0%} ({', '.join(r.label for r in noisy)}): their tokens/s are noise-level "
                  "readings, not a speed comparison; longer runs give one (train.max_steps; reproduce.py --steps).\n")
    md += [throughput_table(runs, with_paper=with_paper), f"\n![throughput]({png})\n"]
    if with_paper:
        md.append(paper_training_table())
    return "\n".join(md)


def paper_training_table() -> str:
    """The paper's Tables 2 and 4 as published (8×A100, OpenWebText), kept apart from our rows."""
    rows = [[f"GPT-2 {'small' if m == 'gpt2' else 'medium'}", impl, "1K", v["ppl"], v["days"], f"{v['speedup']}× vs HF",
             "Table 2"] for (m, impl), v in paper.GPT2_TRAINING.items()]
    rows += [["GPT-2 small", impl, f"{n // 1024}K", v["ppl"], v["days"], f"{v['speedup']}× vs Megatron 1K", "Table 4"]
             for (impl, n), v in paper.GPT2_LONG_CONTEXT.items()]
    return ("For reference, **paper (8×A100)**, as published (" + paper.CITATION + "):\n\n"
            + markdown_table(["model", "implementation", "context", "OpenWebText ppl", "training days", "speedup",
                              "source"], rows))


def parity_section(pairs: list[tuple[str, Run, Run]], out: Path, note: str = "") -> str:
    if not pairs:
        return ""
    md = ["## Convergence parity: exact attention gives the same loss curve\n",
          "Same seed, same batches, same init; only the attention backend differs. " + note + "\n",
          parity_table(pairs)]
    exact = [(t, loss_gap(a, b)) for t, a, b in pairs if a.dropout == 0 and b.dropout == 0]
    for title, g in exact:
        if g["max_gap"] is not None:
            md.append(f"\n**{title}: largest |Δ train loss| over the {g['steps']} logged steps = "
                      f"{g['max_gap']:.2e} (step {g['max_gap_step']}).**\n")
    if any(gap == 0 for _, a, b in pairs for gap in loss_gap(a, b)["gaps"]):
        md.append(f"\nWhere two curves agree exactly (|Δ| = 0), the lower panel draws the point at "
                  f"{plots.ZERO_DRAWN_AT:g}, the bottom of its log scale.\n")
    for i, (title, a, b) in enumerate(pairs):
        png = plots.parity_plot(*legend_labels(a, b), out / f"parity_{i}.png", title=title)
        md.append(f"\n![{title}]({png})\n")
    return "\n".join(md)


def legend_labels(a: Run, b: Run) -> tuple[tuple[str, Run], tuple[str, Run]]:
    """(label, run) pairs for a plot legend; runs of one backend are told apart by their seed."""
    if a.label != b.label:
        return (a.label, a), (b.label, b)
    return (f"{a.label}, seed {a.seed}", a), (f"{b.label}, seed {b.seed}", b)


def sparse_section(runs: list[Run], out: Path, layouts: list[tuple[str, str]] = ()) -> str:
    if not runs:
        return ""
    md = ["## Block-sparse attention in training: what it costs in loss\n",
          "The kernel's speed against density is in the attention kernels section. Small GPT-2 trained with each "
          "pattern, same seed and batches (density: fraction of the N×N score matrix computed, from the run's "
          "`attn/density`).\n", sparse_table(runs)]
    if not any(r.backend == "block_sparse" for r in runs):
        md.append("No block-sparse runs here (the backend cannot run on this device); the dense reference only.\n")
    png = plots.loss_curves([(r.label, r) for r in runs], out / "sparse_loss.png", title="loss by pattern")
    md.append(f"\n![loss by pattern]({png})\n")
    if layouts:
        md.append("Layouts of the trained patterns (query blocks down, key blocks across; causal part shown):\n")
        md += [f"![{caption}]({png})" for caption, png in layouts]
    return "\n".join(md)


def number_sections(sections: list[str]) -> list[str]:
    """'## Title' -> '## 1. Title', counting only the sections present (a skipped one leaves no gap)."""
    numbered, n = [], 0
    for s in sections:
        if s.startswith("## "):
            n += 1
            s = f"## {n}. {s[3:]}"
        numbered.append(s)
    return numbered


def write_report(out: Path, title: str, env: dict, sections: list[str], raw: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "raw.json").write_text(json.dumps({"environment": env, **raw}, indent=1, default=str))
    body = [f"# {title}\n", stamp(env), *number_sections([s for s in sections if s])]
    path = out / "report.md"
    path.write_text("\n".join(body))
    return path


def auto_pairs(runs: list[Run]) -> list[tuple[str, Run, Run]]:
    """Pairs of finished runs that differ only in the (exact) attention backend: naive (else the first) vs each
    other. HF and block-sparse runs are left out: their init or their attention is not the same function."""
    groups = defaultdict(list)
    for r in runs:
        if r.status == "ok" and r.history and r.backend not in ("hf", "block_sparse"):
            groups[(r.model, r.seq_len, r.batch_size, r.seed, r.dropout, r.steps)].append(r)
    pairs = []
    for (model, seq, _, seed, dropout, _), group in groups.items():
        group = list({r.label: r for r in reversed(group)}.values())[::-1]  # one run per backend: the first
        if len(group) < 2:
            continue
        ref = next((r for r in group if r.backend == "naive"), group[0])
        for r in group:
            if r.label != ref.label:
                title = f"{ref.label} vs {r.label}, {model}, seq {seq}, seed {seed}, dropout {dropout:g}"
                pairs.append((title, ref, r))
    return pairs
