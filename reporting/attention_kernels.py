"""Where one attention forward+backward's GPU time goes, kernel by kernel (scripts/profile_attention_kernels.py).

For each shape and provider: torch.profiler's GPU time per call of every kernel the forward+backward launches, the
matrix products of N x N x D each kernel runs (its share of the causal mask's work), and the rate it reaches over
them. That is what tells two providers apart: ours runs the backward as a dQ pass (3 products: S, dP, dQ) and a
dK/dV pass (4: S, dP, dV, dK), or with dropout one pass of 5 that adds dQ atomically; cuDNN's and FlashAttention-2's
backward is one pass of 5. A provider that runs more products at a higher rate can still take longer.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from model.attention import causal_density

from .attention_bench import PACKED_PROVIDERS, fwd_flops, provider, timed_call
from .environment import one_line

PROVIDERS = ("flash", "sdpa_cudnn", "sdpa_flash")  # those whose kernels KERNEL_ROLES names
TOKENS = 16384  # per batch: B = TOKENS / N, as in the benchmark

# (name fragment, role, products of N x N x D). The first fragment a kernel's name contains decides; the dK/dV pass
# runs 5 products when no dQ pass ran (the single pass), else 4. Every other kernel (preprocess, dQ conversion,
# copies) runs none.
KERNEL_ROLES = (
    ("attn_fwd", "forward", 2), ("attn_bwd_dq", "backward: dQ pass", 3), ("attn_bwd_kv", "backward: dK/dV pass", 4),
    ("fprop", "forward", 2), ("bprop", "backward", 5),  # cuDNN
    ("flash_fwd", "forward", 2), ("flash_bwd_dq_dk_dv", "backward", 5),  # PyTorch's FlashAttention-2
)


def role(name: str, two_passes: bool) -> tuple[str, int]:
    """(role, products) of a kernel by its name."""
    for fragment, what, products in KERNEL_ROLES:
        if fragment in name:
            return what, (5 if fragment == "attn_bwd_kv" and not two_passes else products)
    return "other", 0


def profiled(call, iters: int, warmup: int = 3) -> profile:
    """torch.profiler's record of the GPU work of `iters` calls, after `warmup` untimed ones (autotuning)."""
    for _ in range(warmup):
        call()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            call()
        torch.cuda.synchronize()
    return prof


def kernel_times(call, iters: int) -> list[tuple[str, float, int]]:
    """(kernel name, GPU ms per call, launches per call) of `iters` calls, after three untimed ones (autotuning)."""
    prof = profiled(call, iters)
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA" and e.device_time_total > 0]
    events.sort(key=lambda e: -e.device_time_total)
    return [(e.key, e.device_time_total / iters / 1e3, round(e.count / iters)) for e in events]


def breakdown(name: str, B: int, H: int, N: int, D: int, causal: bool, dropout: float, storage: str = "packed",
              iters: int = 20) -> dict:
    """One provider's forward+backward at one shape: its kernels with role, products, ms and TFLOP/s."""
    packed = storage == "packed" and name in PACKED_PROVIDERS
    impl = PACKED_PROVIDERS[name] if packed else provider(name)
    leaves, call, do = timed_call(lambda *qkv: impl(*qkv, causal, dropout), B, H, N, D, storage=storage,
                                  packed=packed)
    step = lambda: torch.autograd.grad(call(), leaves, do)
    times = kernel_times(step, iters)
    two_passes = any("attn_bwd_dq" in kernel for kernel, _, _ in times)
    product_flops = fwd_flops(B, H, N, D, causal_density(N) if causal else 1.0) / 2
    kernels = []
    for kernel, ms, launches in times:
        what, products = role(kernel, two_passes)
        kernels.append(dict(name=kernel, role=what, products=products, ms=ms, launches=launches,
                            tflops=products * product_flops / (ms * 1e9) if products else None))
    total = sum(k["ms"] for k in kernels)
    products = sum(k["products"] for k in kernels)
    return dict(provider=name, B=B, H=H, N=N, D=D, causal=causal, dropout=dropout, storage=storage, ms=total,
                products=products, tflops=products * product_flops / (total * 1e9), kernels=kernels)


def sweep(providers, seqs, head_dims=(64,), heads: int = 12, causals=(True,), dropouts=(0.0,),
          storage: str = "packed", iters: int = 20, log=print) -> list[dict]:
    """breakdown() of each provider at each shape, TOKENS tokens per batch."""
    rows = []
    for D in head_dims:
        for causal in causals:
            for dropout in dropouts:
                for N in seqs:
                    for name in providers:
                        rows.append(breakdown(name, max(1, TOKENS // N), heads, N, D, causal, dropout, storage, iters))
                        log(f"{name} N={N} D={D} causal={causal} p={dropout:g}: {rows[-1]['ms']:.3f} ms")
    return rows


def write(rows: list[dict], out: Path, env: dict, args: dict) -> str:
    """out/attention_kernels.{json,md,png}, stamped with env (GPU, versions, commit, date); returns the Markdown."""
    title = f"Attention kernels per forward+backward (bf16, {args['storage']} q, k, v); {one_line(env)}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "attention_kernels.json").write_text(json.dumps({"env": env, "args": args, "rows": rows}, indent=1))
    text = markdown(rows, f"# {title}")
    (out / "attention_kernels.md").write_text(text + "\n![GPU time by role](attention_kernels.png)\n")
    plot(rows, out / "attention_kernels.png", title)
    return text


def shape_title(row: dict) -> str:
    mask = "causal" if row["causal"] else "no mask"
    return f"N={row['N']} (B={row['B']}), H={row['H']}, D={row['D']}, {mask}, dropout {row['dropout']:g}"


def markdown(rows: list[dict], title: str) -> str:
    """Per shape: each provider's total, then its kernels; ratios against the first provider of the shape."""
    lines = [title]
    for key in dict.fromkeys((r["N"], r["H"], r["D"], r["causal"], r["dropout"]) for r in rows):
        sel = [r for r in rows if (r["N"], r["H"], r["D"], r["causal"], r["dropout"]) == key]
        base = sel[0]
        lines += ["", f"## {shape_title(base)}", "",
                  f"| provider | GPU ms per fwd+bwd | ÷ {base['provider']} | products of N·N·D | TFLOP/s over them |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['provider']} | {r['ms']:.3f} | {r['ms'] / base['ms']:.2f}× | {r['products']} | "
                  f"{r['tflops']:.0f} |" for r in sel]
        for r in sel:
            lines += ["", f"{r['provider']}:", "", "| kernel | role | ms | launches | products | TFLOP/s |",
                      "|---|---|---|---|---|---|"]
            lines += [f"| `{k['name'][:60]}` | {k['role']} | {k['ms']:.3f} | {k['launches']} | {k['products']} | "
                      f"{k['tflops']:.0f} |" if k["tflops"] else
                      f"| `{k['name'][:60]}` | {k['role']} | {k['ms']:.3f} | {k['launches']} | 0 | – |"
                      for k in r["kernels"]]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path, title: str) -> None:
    """Stacked bars: per shape and provider, the GPU time of each role."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    roles = list(dict.fromkeys(k["role"] for r in rows for k in r["kernels"]))
    labels = [f"{r['provider']}\nN={r['N']} D={r['D']}\n{'causal' if r['causal'] else 'no mask'}"
              f"{' p=' + format(r['dropout'], 'g') if r['dropout'] else ''}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows)), 4.5))
    bottom = [0.0] * len(rows)
    for what in roles:
        ms = [sum(k["ms"] for k in r["kernels"] if k["role"] == what) for r in rows]
        ax.bar(range(len(rows)), ms, bottom=bottom, label=what)
        bottom = [b + m for b, m in zip(bottom, ms, strict=True)]
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel("GPU ms per forward+backward")
    ax.set_ylim(0, 1.05 * max(bottom))
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
