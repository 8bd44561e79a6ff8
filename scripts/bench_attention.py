"""Attention benchmark: time, TFLOP/s and extra memory of attention implementations vs sequence length.

Dense: naive, ours (flash), SDPA's flash backend, SDPA's cuDNN backend, FlexAttention (compiled, causal mask).
Sparse: our block-sparse kernel vs our dense flash and FlexAttention with the same block mask.
Tokens per batch are fixed (B = tokens / N). FLOPs: 4 * B * H * N^2 * D forward (times the kept fraction:
about half for causal, the layout's density for sparse), backward 2.5x forward. Extra memory: peak allocated
during one forward+backward minus what was allocated before (inputs and dO). fwd_bwd_graph: fwd+bwd captured in a
CUDA graph and replayed (GPU time, no host launch gaps); eager fwd_bwd well above it means host-bound.

    python scripts/bench_attention.py --quick --out /tmp/bench                # a few sizes (under 3 minutes)
    python scripts/bench_attention.py --out DIR                               # everything (over 10 minutes)
    # the full sweep in parts that each fit a 10-minute slot, merged into one table:
    python scripts/bench_attention.py --part dense --head-dims 64 --out DIR
    python scripts/bench_attention.py --part dense --head-dims 128 --out DIR --append
    python scripts/bench_attention.py --part sparse --out DIR --append

Importable: `run_dense(...)`, `run_sparse(...)`, `write_outputs(...)`. Needs a CUDA GPU; no hydra, no wandb.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from functools import cache, lru_cache

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from kernels import block_sparse_attention, flash_attention  # noqa: E402
from kernels import sparsity_patterns as sp  # noqa: E402

DENSE_PROVIDERS = ("naive", "flash", "sdpa_flash", "sdpa_cudnn", "flex")
SPARSE_PROVIDERS = ("block_sparse", "flash", "flex")
MODES = ("fwd", "bwd", "fwd_bwd", "fwd_bwd_graph")
FLOP_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd_bwd": 3.5, "fwd_bwd_graph": 3.5}


# ------------------------------------------------------------------------------------------------------------
# implementations: (q, k, v, causal, dropout_p) -> o
# ------------------------------------------------------------------------------------------------------------

def naive(q, k, v, causal, dropout_p):
    s = (q @ k.transpose(-2, -1)).float() * q.shape[-1] ** -0.5
    if causal:
        n = q.shape[-2]
        s = s.masked_fill(~torch.ones(n, n, dtype=torch.bool, device=q.device).tril(), float("-inf"))
    p = torch.softmax(s, dim=-1).to(q.dtype)
    return F.dropout(p, dropout_p) @ v


def _sdpa(backend):
    def attend(q, k, v, causal, dropout_p):
        from torch.nn.attention import sdpa_kernel
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=dropout_p)
    return attend


@cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention
    torch._dynamo.config.cache_size_limit = 256  # one compile per shape and mask; never fall back to eager flex
    torch._functorch.config.donated_buffer = False  # the bwd timing keeps the graph (retain_graph=True)
    return torch.compile(flex_attention, dynamic=False)


@lru_cache(maxsize=16)
def _flex_block_mask(n, causal, layout_key=None, block_size=128):
    """FlexAttention block mask: causal, or a block layout (plus causal), built once per shape."""
    from torch.nn.attention.flex_attention import create_block_mask
    layout = _LAYOUTS[layout_key].cuda() if layout_key is not None else None

    def mask_mod(b, h, q_idx, kv_idx):
        keep = q_idx >= kv_idx if causal else q_idx >= 0
        if layout is not None:
            keep = keep & layout[q_idx // block_size, kv_idx // block_size]
        return keep
    return create_block_mask(mask_mod, None, None, n, n, device="cuda", BLOCK_SIZE=block_size, _compile=True)


def flex(q, k, v, causal, dropout_p, layout_key=None, block_size=128):
    if dropout_p:
        raise NotImplementedError("FlexAttention has no dropout")
    if not causal and layout_key is None:
        return _compiled_flex()(q, k, v)
    return _compiled_flex()(q, k, v, block_mask=_flex_block_mask(q.shape[-2], causal, layout_key, block_size))


def ours(q, k, v, causal, dropout_p):
    return flash_attention(q, k, v, causal=causal, dropout_p=dropout_p)


_LAYOUTS: dict = {}


def _impl(provider: str):
    from torch.nn.attention import SDPBackend
    return {"naive": naive, "flash": ours, "sdpa_flash": _sdpa(SDPBackend.FLASH_ATTENTION),
            "sdpa_cudnn": _sdpa(SDPBackend.CUDNN_ATTENTION), "flex": flex}[provider]


# ------------------------------------------------------------------------------------------------------------
# measurement
# ------------------------------------------------------------------------------------------------------------

def measure(fn, B, H, N, D, dtype=torch.bfloat16, modes=MODES, warmup=10, rep=60) -> dict:
    """Median ms per mode and extra memory (MiB) of o = fn(q, k, v) on random (B, H, N, D) inputs."""
    import triton.testing

    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    do = torch.randn(B, H, N, D, device="cuda", dtype=dtype)
    out = {}
    torch.autograd.grad(fn(q, k, v), (q, k, v), do)  # compile / autotune (forward and backward) outside the
    torch.cuda.synchronize()                         # timings and the memory reading
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    torch.autograd.grad(fn(q, k, v), (q, k, v), do)
    torch.cuda.synchronize()
    out["extra_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    if "fwd" in modes:
        with torch.no_grad():
            out["fwd"] = triton.testing.do_bench(lambda: fn(q, k, v), warmup=warmup, rep=rep, return_mode="median")
    if "bwd" in modes:
        o = fn(q, k, v)
        out["bwd"] = triton.testing.do_bench(lambda: torch.autograd.grad(o, (q, k, v), do, retain_graph=True),
                                             warmup=warmup, rep=rep, return_mode="median")
        del o
    if "fwd_bwd" in modes:
        out["fwd_bwd"] = triton.testing.do_bench(lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), do),
                                                 warmup=warmup, rep=rep, return_mode="median")
    if "fwd_bwd_graph" in modes:
        out.update(_graphed(lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), do), warmup, rep))
    return out


def _graphed(step, warmup, rep) -> dict:
    """The same fwd+bwd captured once in a CUDA graph and replayed: GPU time without the host's launch gaps
    (METHOD.md: "for many small launches, capture a graph and time its replays")."""
    import triton.testing

    side = torch.cuda.Stream()  # warm-up off the default stream, as torch.cuda.graphs asks before a capture
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.empty_cache()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            step()
    except RuntimeError as e:
        return {"fwd_bwd_graph_status": f"not capturable: {str(e).splitlines()[0][:100]}"}
    ms = triton.testing.do_bench(graph.replay, warmup=warmup, rep=rep, return_mode="median")
    del graph
    torch.cuda.empty_cache()
    return {"fwd_bwd_graph": ms}


def _guarded(fn, *args, **kwargs) -> dict:
    """measure(), recording OOM or an unsupported configuration instead of stopping the sweep."""
    try:
        return measure(fn, *args, **kwargs)
    except torch.cuda.OutOfMemoryError:
        return {"status": "OOM"}
    except Exception as e:  # noqa: BLE001  (a backend refusing a shape is a result, not a crash)
        return {"status": f"error: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"}
    finally:
        torch.cuda.empty_cache()


def _add_rates(row: dict, flops_fwd: float) -> dict:
    for m in MODES:
        if m in row:
            row[f"{m}_tflops"] = flops_fwd * FLOP_FACTOR[m] / (row[m] * 1e-3) / 1e12
    return row


def run_dense(seqs, head_dims=(64, 128), causals=(True, False), dropouts=(0.0, 0.1), providers=DENSE_PROVIDERS,
              heads=12, tokens=16384, dtype=torch.bfloat16, log=print, on_row=None) -> list[dict]:
    rows = []
    for D in head_dims:
        for causal in causals:
            for p in dropouts:
                for N in seqs:
                    B = max(1, tokens // N)
                    flops = 4 * B * heads * N * N * D * ((N + 1) / (2 * N) if causal else 1.0)
                    for prov in providers:
                        if prov == "flex" and p:
                            continue
                        impl = _impl(prov)
                        fn = lambda q, k, v, impl=impl, causal=causal, p=p: impl(q, k, v, causal, p)
                        # naive is GPU-bound, and a graph's second memory pool would not fit beside it at 16K
                        modes = MODES if prov != "naive" else MODES[:3]
                        row = dict(part="dense", provider=prov, N=N, B=B, H=heads, D=D, causal=causal, dropout=p,
                                   **_guarded(fn, B, heads, N, D, dtype, modes=modes))
                        rows.append(_add_rates(row, flops))
                        log(_fmt(row))
                        if on_row:
                            on_row(row)
    return rows


def run_sparse(seqs=(1024, 4096, 16384, 65536), patterns=("local", "butterfly"), density_seq=8192,
               windows=(256, 512, 1024, 2048, 4096), providers=SPARSE_PROVIDERS, D=64, heads=12, tokens=16384,
               block_size=128, dtype=torch.bfloat16, log=print, on_row=None) -> list[dict]:
    """Causal block-sparse vs N for each pattern, then vs density (local window sweep at density_seq)."""
    cases = [(pat, N, 256) for pat in patterns for N in seqs]
    cases += [("local", density_seq, w) for w in windows if density_seq]
    rows = []
    for pat, N, window in cases:
        B = max(1, tokens // N)
        layout = sp.build_layout(pat, N, block_size, window=window)
        key = (pat, N, window)
        _LAYOUTS[key] = layout
        density = sp.layout_density(layout, N, block_size, causal=True)
        dense_flops = 4 * B * heads * N * N * D * (N + 1) / (2 * N)
        for prov in providers:
            if prov == "block_sparse":
                fn = lambda q, k, v, layout=layout: block_sparse_attention(q, k, v, layout, causal=True,
                                                                           block_size=block_size)
            elif prov == "flex":
                fn = lambda q, k, v, key=key: flex(q, k, v, True, 0.0, layout_key=key, block_size=block_size)
            else:
                fn = lambda q, k, v: flash_attention(q, k, v, causal=True)
            row = dict(part="sparse", provider=prov, pattern=pat, window=window, N=N, B=B, H=heads, D=D, causal=True,
                       dropout=0.0, density=density, **_guarded(fn, B, heads, N, D, dtype))
            # FLOPs counted over kept blocks only (dense flash computes more, at the dense causal count)
            rows.append(_add_rates(row, dense_flops if prov == "flash" else 4 * B * heads * N * N * D * density))
            log(_fmt(row))
            if on_row:
                on_row(row)
    return rows


# ------------------------------------------------------------------------------------------------------------
# outputs
# ------------------------------------------------------------------------------------------------------------

def _fmt(row: dict) -> str:
    head = (f"{row['part']:6s} {row['provider']:12s} {row.get('pattern', ''):9s} N={row['N']:6d} D={row['D']:3d} "
            f"causal={int(row['causal'])} p={row['dropout']:.1f}")
    if "status" in row:
        return f"{head}  {row['status']}"
    times = " ".join(f"{m}={row[m]:.3f}ms({row[m + '_tflops']:.0f}TF)" for m in MODES if m in row)
    return f"{head}  {times} mem={row['extra_mib']:.0f}MiB"


def environment() -> dict:
    import triton
    return {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
            "torch": torch.__version__, "triton": triton.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def _cell(row, mode):
    if row is None:
        return "-"
    if "status" in row:
        return row["status"].split(":")[0]
    return f"{row[mode]:.2f} ({row[mode + '_tflops']:.0f})" if mode in row else "-"


def markdown(rows: list[dict], env: dict) -> str:
    lines = [f"# Attention benchmark\n\n{env['gpu']}, torch {env['torch']}, triton {env['triton']}, {env['date']}. "
             "bf16, H=12, 16K tokens per batch (B = 16384 / N). Cells: median ms (TFLOP/s). "
             "Extra memory: MiB above inputs during forward+backward. fwd_bwd_graph: the same fwd+bwd captured in a "
             "CUDA graph and replayed, so the host's launch time is left out (GPU time; eager calls are host-bound "
             "where fwd_bwd is well above it).\n"]
    dense = [r for r in rows if r["part"] == "dense"]
    groups = sorted({(r["D"], r["causal"], r["dropout"]) for r in dense}, key=lambda g: (g[0], not g[1], g[2]))
    for D, causal, p in groups:
        sel = [r for r in dense if (r["D"], r["causal"], r["dropout"]) == (D, causal, p)]
        provs = [x for x in DENSE_PROVIDERS if any(r["provider"] == x for r in sel)]
        for mode in [m for m in MODES if any(m in r for r in sel)]:
            lines.append(f"\n## Dense, D={D}, {'causal' if causal else 'non-causal'}, dropout {p}: {mode}\n")
            lines.append("| N | " + " | ".join(provs) + " | speedup vs sdpa_flash | speedup vs sdpa_cudnn |")
            lines.append("|---" * (len(provs) + 3) + "|")
            for N in sorted({r["N"] for r in sel}):
                by = {r["provider"]: r for r in sel if r["N"] == N}
                lines.append(f"| {N} | " + " | ".join(_cell(by.get(x), mode) for x in provs)
                             + f" | {_speedup(by, 'sdpa_flash', mode)} | {_speedup(by, 'sdpa_cudnn', mode)} |")
        lines.append(f"\n## Dense, D={D}, {'causal' if causal else 'non-causal'}, dropout {p}: extra memory (MiB)\n")
        lines.append("| N | " + " | ".join(provs) + " |")
        lines.append("|---" * (len(provs) + 1) + "|")
        for N in sorted({r["N"] for r in sel}):
            by = {r["provider"]: r for r in sel if r["N"] == N}
            lines.append(f"| {N} | " + " | ".join(
                f"{by[x]['extra_mib']:.0f}" if x in by and "extra_mib" in by[x] else _cell(by.get(x), "fwd")
                for x in provs) + " |")
    sparse = [r for r in rows if r["part"] == "sparse"]
    if sparse:
        lines.append("\n## Block-sparse (causal, D=64, block 128): ms (TFLOP/s over kept blocks)\n")
        lines.append("| pattern | window | N | density | mode | block_sparse | flash (dense) | flex (same mask) | "
                     "speedup vs flash | ideal | fraction of ideal | block_sparse / flex time |")
        lines.append("|---" * 12 + "|")
        for pat, window, N in sorted({(r["pattern"], r["window"], r["N"]) for r in sparse}):
            by = {r["provider"]: r for r in sparse if (r["pattern"], r["window"], r["N"]) == (pat, window, N)}
            density = next(iter(by.values()))["density"]
            ideal = ((N + 1) / (2 * N)) / density
            for mode in ("fwd", "fwd_bwd", "fwd_bwd_graph"):
                sp_ = _ratio(by, "flash", "block_sparse", mode)
                frac = f"{float(sp_) / ideal:.2f}" if sp_ != "-" else "-"
                lines.append(f"| {pat} | {window} | {N} | {density:.3f} | {mode} | "
                             f"{_cell(by.get('block_sparse'), mode)} | {_cell(by.get('flash'), mode)} | "
                             f"{_cell(by.get('flex'), mode)} | {sp_} | "
                             f"{ideal:.2f} | {frac} | {_ratio(by, 'block_sparse', 'flex', mode)} |")
    return "\n".join(lines) + "\n"


def _ratio(by, num, den, mode):
    """by[num] time / by[den] time."""
    a, b = by.get(num), by.get(den)
    if not a or not b or mode not in a or mode not in b:
        return "-"
    return f"{a[mode] / b[mode]:.2f}"


def _speedup(by, other, mode):
    return _ratio(by, other, "flash", mode)


def plots(rows: list[dict], env: dict, out_dir: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    dense = [r for r in rows if r["part"] == "dense"]
    groups = sorted({(r["D"], r["causal"], r["dropout"]) for r in dense})
    if groups:
        fig, axes = plt.subplots(2, len(groups), figsize=(4.5 * len(groups), 8), squeeze=False)
        for col, (D, causal, p) in enumerate(groups):
            sel = [r for r in dense if (r["D"], r["causal"], r["dropout"]) == (D, causal, p)]
            for prov in DENSE_PROVIDERS:
                pts = sorted((r["N"], r) for r in sel if r["provider"] == prov and "fwd_bwd" in r)
                if pts:
                    axes[0, col].plot([n for n, _ in pts], [r["fwd_bwd"] for _, r in pts], "o-", label=prov)
                    axes[1, col].plot([n for n, _ in pts], [r["extra_mib"] for _, r in pts], "o-", label=prov)
            axes[0, col].set_title(f"D={D} {'causal' if causal else 'full'} dropout={p}", fontsize=9)
            axes[0, col].set_ylabel("fwd+bwd ms")
            axes[1, col].set_ylabel("extra memory MiB")
            for ax in axes[:, col]:
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_xlabel("N")
                ax.legend(fontsize=7)
        fig.suptitle(f"{env['gpu']}  torch {env['torch']}  triton {env['triton']}  {env['date']}", fontsize=9)
        fig.tight_layout()
        paths.append(os.path.join(out_dir, "dense.png"))
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    sparse = [r for r in rows if r["part"] == "sparse"]
    if sparse:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for pat in sorted({r["pattern"] for r in sparse}):
            for prov, style in (("block_sparse", "o-"), ("flex", "s--"), ("flash", "x:")):
                pts = sorted((r["N"], r["fwd_bwd"]) for r in sparse if r["pattern"] == pat and r["window"] == 256
                             and r["provider"] == prov and "fwd_bwd" in r)
                if pts:
                    axes[0].plot(*zip(*pts, strict=True), style, label=f"{pat} {prov}")
        axes[0].set(xscale="log", yscale="log", xlabel="N", ylabel="fwd+bwd ms", title="causal, vs N")
        dens = [r for r in sparse if r["pattern"] == "local" and "fwd_bwd" in r]
        n_d = max((r["N"] for r in dens), default=0)
        for prov, style in (("block_sparse", "o-"), ("flex", "s--"), ("flash", "x:")):
            pts = sorted((r["density"], r["fwd_bwd"]) for r in dens if r["N"] == n_d and r["provider"] == prov)
            if pts:
                axes[1].plot(*zip(*pts, strict=True), style, label=prov)
        axes[1].set(xlabel="density (kept fraction)", ylabel="fwd+bwd ms", title=f"local windows, N={n_d}")
        for ax in axes:
            ax.legend(fontsize=7)
        fig.suptitle(f"{env['gpu']}  torch {env['torch']}  triton {env['triton']}  {env['date']}", fontsize=9)
        fig.tight_layout()
        paths.append(os.path.join(out_dir, "sparse.png"))
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def _row_key(row: dict) -> tuple:
    return tuple(row.get(k) for k in ("part", "provider", "pattern", "window", "N", "D", "causal", "dropout"))


def load_rows(out_dir: str) -> list[dict]:
    path = os.path.join(out_dir, "results.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)["rows"]


def merge_rows(old: list[dict], new: list[dict]) -> list[dict]:
    """Rows of several partial runs in one table; a re-measured case replaces its old row."""
    fresh = {_row_key(r) for r in new}
    return [r for r in old if _row_key(r) not in fresh] + new


def write_outputs(rows: list[dict], out_dir: str, env: dict | None = None) -> None:
    env = env or environment()
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({"env": env, "rows": rows}, f, indent=1)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(markdown(rows, env))
    plots(rows, env, out_dir)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory (results.json, results.md, *.png)")
    ap.add_argument("--quick", action="store_true", help="a few sizes: causal D=64 N in 1K, 4K, 16K; sparse at 4K, 16K")
    ap.add_argument("--part", choices=("dense", "sparse", "all"), default="all")
    ap.add_argument("--seqs", type=int, nargs="+", help="sequence lengths (default 512 ... 16K, plus 32K, 64K)")
    ap.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--causal", choices=("yes", "no", "both"), default="both")
    ap.add_argument("--dropout", type=float, nargs="+", default=[0.0, 0.1])
    ap.add_argument("--providers", nargs="+", default=list(DENSE_PROVIDERS), choices=DENSE_PROVIDERS)
    ap.add_argument("--append", action="store_true",
                    help="merge into --out's existing results.json (run the full sweep in parts: it takes >10 min)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_attention.py needs a CUDA GPU (the kernels' CPU path is the slow Triton interpreter)")
    causals = {"yes": (True,), "no": (False,), "both": (True, False)}[args.causal]
    seqs = args.seqs or [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536]
    head_dims, dropouts, sparse_seqs, density_seq = args.head_dims, args.dropout, (1024, 4096, 16384, 65536), 8192
    if args.quick:
        seqs, head_dims, causals, dropouts = args.seqs or [1024, 4096, 16384], [64], (True,), [0.0]
        sparse_seqs, density_seq = (4096, 16384), 0
    earlier = load_rows(args.out) if args.append else []
    rows, env = [], environment()

    def keep(row):  # results.json grows row by row, so a run stopped at a time limit keeps what it measured
        rows.append(row)
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump({"env": env, "rows": merge_rows(earlier, rows)}, f, indent=1)

    if args.part in ("dense", "all"):
        run_dense(seqs, head_dims, causals, dropouts, tuple(args.providers), on_row=keep)
    if args.part in ("sparse", "all"):
        run_sparse(sparse_seqs, density_seq=density_seq, on_row=keep)
    rows = merge_rows(earlier, rows)
    write_outputs(rows, args.out, env)
    print(markdown(rows, environment()))


if __name__ == "__main__":
    main()
