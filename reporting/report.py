"""Report sections (Markdown + PNG), shared by scripts/reproduce.py and scripts/compare.py."""

from __future__ import annotations

import datetime
import json
import platform
import subprocess
from collections import defaultdict
from pathlib import Path

from . import io_model, paper, plots
from .runs import Run
from .tables import fmt, loss_gap, markdown_table, parity_table, sparse_table, throughput_table


def environment() -> dict:
    """GPU, versions, date and commit, stamped on every report."""
    import torch

    env = {"date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
           "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
           "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    for mod in ("triton", "transformers"):
        try:
            env[mod] = __import__(mod).__version__
        except ImportError:
            env[mod] = None
    for key, cmd in (("git_commit", ["git", "rev-parse", "HEAD"]), ("git_dirty", ["git", "status", "--porcelain"])):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
            env[key] = out if key == "git_commit" else bool(out)
        except (OSError, subprocess.SubprocessError):
            env[key] = None
    return env


def stamp(env: dict) -> str:
    rows = [[k, f"`{v}`"] for k, v in env.items()]
    return markdown_table(["", ""], rows)


# ---- attention kernels (paper Fig. 3, Appendix E tables) ----

def normalize_bench(data) -> list[dict]:
    """Flatten scripts/bench_attention.py's results.json ({"env", "rows"}) into records: backend, seq_len,
    head_dim, causal, dropout, fwd_ms, bwd_ms, fwd_bwd_ms, mem_mb, status, part, pattern, window, density."""
    rows = data.get("rows", data.get("results", [])) if isinstance(data, dict) else data
    out = []
    for r in rows:
        status = str(r.get("status", "ok"))
        out.append({
            "backend": r.get("provider") or r.get("backend"),
            "seq_len": r.get("N") or r.get("seq_len"),
            "head_dim": r.get("D"), "heads": r.get("H"), "batch": r.get("B"),
            "causal": bool(r.get("causal", False)),
            "dropout": float(r.get("dropout", r.get("dropout_p", 0.0)) or 0.0) > 0,
            "fwd_ms": r.get("fwd", r.get("fwd_ms")), "bwd_ms": r.get("bwd", r.get("bwd_ms")),
            "fwd_bwd_ms": r.get("fwd_bwd", r.get("fwd_bwd_ms")), "fwd_bwd_graph_ms": r.get("fwd_bwd_graph"),
            "mem_mb": r.get("extra_mib", r.get("mem_mb")),  # MiB; the paper's table says MB
            "status": "oom" if status.lower() == "oom" else ("ok" if status == "ok" else "error"),
            "part": r.get("part", "dense"), "pattern": r.get("pattern"), "window": r.get("window"),
            "density": r.get("density"),
        })
    return out


def kernel_section(records: list[dict], out: Path) -> str:
    if not records:
        return ""
    shapes = sorted({(r["batch"] * r["seq_len"], r["heads"]) for r in records if r.get("batch") and r.get("heads")})
    ours = (f"batch × N = {shapes[0][0]:,} tokens (batch shrinks as N grows), {shapes[0][1]} heads" if shapes
            else "see the raw output")
    md = ["## 1. Attention kernels: runtime and memory vs sequence length (paper Fig. 3, Tables 9–21)\n",
          f"Ours: this machine, {ours}, d = 64, median of repeated calls. Paper: {paper.CITATION}, Appendix E.6: "
          "A100 40 GB, batch 16 at every N, 8 heads, d = 64, fp16, dropout 0.1, mean of 100 calls. "
          "So our times grow about linearly with N and the paper's quadratically: compare the *speedup* columns "
          "(naive ÷ flash, PyTorch ÷ FlashAttention), not absolute times. The paper's *masking* is a padding "
          "mask, set beside our *causal* runs. Missing cells: OOM or not supported. *CUDA graph*: the same "
          "fwd+bwd replayed from a captured graph, i.e. GPU time without the host's launch gaps (where the eager "
          "time is well above it, the call is host-bound).\n"]
    # The paper's tables are for head dim 64; other head dims stay in the raw output (kernels/results.md).
    seq = [r for r in records if r["part"] == "dense" and r.get("head_dim") in (None, 64)]
    backends = sorted({r["backend"] for r in seq}, key=lambda b: (b != "naive", b != "flash", b))
    for causal in (True, False):
        for dropout in (False, True):
            cond = [r for r in seq if r["causal"] == causal and r["dropout"] == dropout]
            if not cond:
                continue
            ns = sorted({r["seq_len"] for r in cond})
            cell = {(r["backend"], r["seq_len"]): r for r in cond}
            table_no, ptab = paper.RUNTIME_TABLES[("fwd+bwd", dropout, causal)]
            prow = ["PyTorch Attention", "FlashAttention", "Block-Sparse FlashAttention"]
            graphed = any(r.get("fwd_bwd_graph_ms") for r in cond if r["backend"] == "flash")
            headers = ["N", *[f"{b} (ms)" for b in backends], *(["flash, CUDA graph (ms)"] if graphed else []),
                       "naive ÷ flash",
                       *[f"paper (A100): {p}" for p in prow], "paper (A100): PyTorch ÷ FlashAttention"]
            rows = []
            for n in ns:
                ours = [_ms(cell.get((b, n))) for b in backends]
                theirs = [ptab[p][paper.SEQ_LENS.index(n)] if n in paper.SEQ_LENS else None for p in prow]
                graph = [fmt((cell.get(("flash", n)) or {}).get("fwd_bwd_graph_ms"), ".2f")] if graphed else []
                rows.append([n, *ours, *graph, _ratio(cell.get(("naive", n)), cell.get(("flash", n))),
                             *[fmt(t, ".2f") for t in theirs],
                             f"{theirs[0] / theirs[1]:.2f}×" if theirs[0] and theirs[1] else "–"])
            tag = f"{'causal' if causal else 'no mask'}, {'dropout' if dropout else 'no dropout'}"
            series = {b: _xy(cond, b, "fwd_bwd_ms") for b in backends}
            paper_series = {p: _paper_xy(ptab[p]) for p in ("PyTorch Attention", "FlashAttention")}
            name = f"kernels_fwd_bwd_{'causal' if causal else 'nomask'}_{'drop' if dropout else 'nodrop'}.png"
            png = plots.series_vs_n(series, out / name, title=f"attention fwd+bwd ({tag})", ylabel="ms",
                                    paper=paper_series)
            md += [f"### fwd+bwd runtime, {tag} (paper column: Table {table_no}, "
                   f"{'masking' if causal else 'no masking'}{', dropout' if dropout else ''})\n",
                   markdown_table(headers, rows), f"\n![{tag}]({png})\n"]
    mem = [r for r in seq if not r["causal"] and not r["dropout"] and r.get("mem_mb") is not None] or \
          [r for r in seq if r.get("mem_mb") is not None]
    if mem:
        ns = sorted({r["seq_len"] for r in mem})
        cell = {(r["backend"], r["seq_len"]): r for r in mem}
        mb = sorted({r["backend"] for r in mem}, key=lambda b: (b != "naive", b != "flash", b))
        pm = paper.MEMORY_TABLE[1]
        headers = ["N", *[f"{b} (MiB)" for b in mb], "paper (A100): PyTorch (MB)", "paper (A100): FlashAttention (MB)"]
        rows = [[n, *[fmt(cell[(b, n)]["mem_mb"], ",.0f") if (b, n) in cell else "–" for b in mb],
                 *[fmt(pm[p][paper.SEQ_LENS.index(n)], ",d") if n in paper.SEQ_LENS else "–"
                   for p in ("PyTorch Attention", "FlashAttention")]] for n in ns]
        png = plots.series_vs_n({b: _xy(mem, b, "mem_mb") for b in mb}, out / "kernels_memory.png",
                                title="attention fwd+bwd extra memory", ylabel="MB",
                                paper={p: _paper_xy(pm[p]) for p in ("PyTorch Attention", "FlashAttention")})
        md += ["### Memory of fwd+bwd (paper column: Table 21, no dropout, no masking)\n",
               markdown_table(headers, rows), f"\n![memory]({png})\n"]
    return "\n".join(md)


def _ratio(a, b):
    ok = a and b and a.get("status") == "ok" and b.get("status") == "ok" and a.get("fwd_bwd_ms") and b.get("fwd_bwd_ms")
    return f"{a['fwd_bwd_ms'] / b['fwd_bwd_ms']:.2f}×" if ok else "–"


def _ms(r):
    if r is None:
        return "–"
    if r.get("status", "ok") != "ok":
        return f"**{str(r['status']).upper()}**"
    return fmt(r.get("fwd_bwd_ms"), ".2f")


def _xy(records, backend, key):
    pts = sorted((r["seq_len"], r[key]) for r in records
                 if r["backend"] == backend and r.get(key) is not None and r.get("status", "ok") == "ok")
    return [p[0] for p in pts], [p[1] for p in pts]


def _paper_xy(values):
    pts = [(n, v) for n, v in zip(paper.SEQ_LENS, values, strict=True) if v is not None and n <= 16384]
    return [p[0] for p in pts], [p[1] for p in pts]


# ---- IO model ----

def io_section() -> str:
    md = ["## 1b. IO model: HBM bytes moved by one attention layer (paper Theorem 2, Fig. 2)\n",
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

def throughput_section(runs: list[Run], out: Path, title: str, png_name: str = "throughput.png") -> str:
    if not runs:
        return ""
    png = plots.throughput_bars(runs, out / png_name, title=title)
    failed = [r for r in runs if r.status != "ok"]
    note = (f"{len(failed)} of {len(runs)} runs did not finish (status shown in the table, e.g. OOM).\n"
            if failed else "")
    return "\n".join([
        f"## 2. End-to-end training throughput ({title}; paper Tables 2 and 4)\n",
        "Each row is one ordinary `train.py` run (Hydra multirun job); tokens/s is the median over timed steps, "
        "MFU counts the attention FLOPs the backend computes, peak memory is the allocator's peak. "
        "Speedups divide tokens/s by those of the naive / HF run of the same model, seq len and batch. "
        "The paper column is its Table 2 training-time ratio (8×A100, FlashAttention vs HuggingFace, seq 1K), "
        "for orientation only.\n", note, throughput_table(runs), f"\n![throughput]({png})\n", paper_training_table()])


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
    md = ["## 3. Convergence parity: exact attention gives the same loss curve\n",
          "Same seed, same batches, same init; only the attention backend differs. " + note + "\n",
          parity_table(pairs)]
    exact = [(t, loss_gap(a, b)) for t, a, b in pairs if a.dropout == 0 and b.dropout == 0]
    for title, g in exact:
        if g["max_gap"] is not None:
            md.append(f"\n**{title}: largest |Δ train loss| over {g['steps']} steps = {g['max_gap']:.2e} "
                      f"(step {g['max_gap_step']}).**\n")
    for i, (title, a, b) in enumerate(pairs):
        png = plots.parity_plot((a.label, a), (b.label, b), out / f"parity_{i}.png", title=title)
        md.append(f"\n![{title}]({png})\n")
    return "\n".join(md)


def sparse_section(runs: list[Run], bench: list[dict], out: Path, layouts: list[tuple[str, str]] = ()) -> str:
    if not runs and not bench:
        return ""
    md = ["## 4. Block-sparse attention: speed vs density, and what it costs in loss\n"]
    if runs and not any(r.backend == "block_sparse" for r in runs):
        md.append("No block-sparse runs here (the backend cannot run on this device); the dense reference only.\n")
    sp = [r for r in bench if r["part"] == "sparse"]
    if sp:
        md.append(sparse_bench_table(sp))
        by_n = defaultdict(list)
        for r in sp:
            if r["backend"] == "block_sparse" and r["status"] == "ok" and r.get("fwd_bwd_ms") is not None:
                by_n[r["seq_len"]].append((r["density"], r["fwd_bwd_ms"]))
        series = {f"N={n}": ([p[0] for p in sorted(v)], [p[1] for p in sorted(v)])
                  for n, v in sorted(by_n.items()) if len(v) > 1}
        if series:
            png = plots.xy(series, out / "sparse_speed_vs_density.png", title="block-sparse fwd+bwd vs density",
                           xlabel="density (kept fraction of the causal N×N scores)", ylabel="ms")
            md.append(f"![speed vs density]({png})\n")
    if runs:
        md += ["Small GPT-2 trained with each pattern, same seed and batches (density: fraction of the N×N "
               "score matrix computed, from the run's `attn/density`).\n", sparse_table(runs)]
        png = plots.loss_curves([(r.label, r) for r in runs], out / "sparse_loss.png", title="loss by pattern")
        md.append(f"\n![loss by pattern]({png})\n")
    if layouts:
        md.append("Layouts of the trained patterns (query blocks down, key blocks across; causal part shown):\n")
        md += [f"![{caption}]({png})" for caption, png in layouts]
    return "\n".join(md)


def sparse_bench_table(rows: list[dict]) -> str:
    """Block-sparse kernel vs dense flash (and FlexAttention with the same block mask), causal, from the bench."""
    cells = defaultdict(dict)
    for r in rows:
        cells[(r["pattern"], r["window"], r["seq_len"], r["density"])][r["backend"]] = r
    providers = sorted({r["backend"] for r in rows}, key=lambda b: (b != "block_sparse", b))
    headers = ["pattern", "window", "N", "density", *[f"{p} fwd+bwd (ms)" for p in providers],
               "speedup over flash", "ideal (dense causal / density)"]
    out = []
    for (pat, window, n, dens), by in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1] or 0)):
        bs, fl = by.get("block_sparse"), by.get("flash")
        speed = (f"{fl['fwd_bwd_ms'] / bs['fwd_bwd_ms']:.2f}×" if bs and fl and bs.get("fwd_bwd_ms")
                 and fl.get("fwd_bwd_ms") else "–")
        ideal = f"{((n + 1) / (2 * n)) / dens:.2f}×" if dens else "–"
        out.append([pat, window, n, fmt(dens, ".3f"), *[_ms(by.get(p)) for p in providers], speed, ideal])
    return ("Kernel: causal, batch × N = 16K tokens, 12 heads, d = 64, block 128 (from `scripts/bench_attention.py`)."
            "\n\n" + markdown_table(headers, out))


def write_report(out: Path, title: str, env: dict, sections: list[str], raw: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "raw.json").write_text(json.dumps({"environment": env, **raw}, indent=1, default=str))
    body = [f"# {title}\n", stamp(env), *[s for s in sections if s]]
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
