"""Where one GPT-2 training step's time goes, per attention backend (scripts/profile_train_step.py).

Random tokens, bf16 autocast, AdamW (fused), the same step as train.py without data loading or logging. For each
backend: wall time per step (CUDA events), the summed GPU kernel time per step (busy) — wall well above busy means
the GPU waits for the host — and the GPU time of the attention kernels themselves (forward and backward).
"""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

from model import GPT, GPTConfig

# Kernel-name fragments of fused attention kernels: PyTorch's flash / cuDNN / efficient ones, and ours, whose names
# begin with attn_ (kernels/attention_*.py). Naive's matmuls and softmax are not told apart from the rest of the model.
ATTENTION_KERNELS = ("flash", "fmha", "cudnn", "attention")


def is_attention_kernel(name: str) -> bool:
    name = name.lower()
    return name.startswith("attn_") or any(s in name for s in ATTENTION_KERNELS)


def train_step(model, optimizer, x, y) -> None:
    with torch.autocast("cuda", dtype=torch.bfloat16):
        _, loss = model(x, y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def profile_backend(attn: str, model_name: str = "gpt2", batch: int = 16, seq: int = 1024, compiled: bool = False,
                    warmup: int = 5, steps: int = 10, top: int = 12, attn_dropout: float = 0.0) -> dict:
    """One backend's step: wall and GPU-busy ms per step, attention kernels' ms per step, the top kernels. The GPU's
    idle share compares busy time with the wall time of the same (profiled) steps: clocks drift between phases."""
    torch.manual_seed(0)
    config = GPTConfig.preset(model_name, attn=attn, block_size=max(1024, seq), attn_dropout=attn_dropout)
    model = GPT(config).cuda()
    model.check_attention(torch.device("cuda"), torch.bfloat16)
    optimizer = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), "cuda")
    step_model = torch.compile(model) if compiled else model
    x, y = (torch.randint(0, config.vocab_size, (batch, seq), device="cuda") for _ in range(2))
    for _ in range(warmup):
        train_step(step_model, optimizer, x, y)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        train_step(step_model, optimizer, x, y)
    end.record()
    torch.cuda.synchronize()
    wall_ms = start.elapsed_time(end) / steps
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start.record()
        for _ in range(steps):
            train_step(step_model, optimizer, x, y)
        end.record()
        torch.cuda.synchronize()
    profiled_wall_ms = start.elapsed_time(end) / steps  # the steps busy_ms sums: their ratio is the GPU's busy share
    kernels = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    busy_ms = sum(e.device_time_total for e in kernels) / steps / 1e3
    attn_ms = sum(e.device_time_total for e in kernels if is_attention_kernel(e.key)) / steps / 1e3
    ranked = sorted(kernels, key=lambda e: -e.device_time_total)
    del model, optimizer, step_model
    torch.cuda.empty_cache()
    per_step = [(e.key[:70], e.device_time_total / steps / 1e3, e.count // steps) for e in ranked]
    return {"attn": attn, "wall_ms": wall_ms, "profiled_wall_ms": profiled_wall_ms, "busy_ms": busy_ms,
            "attention_ms": attn_ms, "tokens_per_sec": batch * seq / (wall_ms / 1e3), "top": per_step[:top],
            "kernels": per_step}


def differences(base: dict, other: dict, top: int = 12) -> list[tuple[str, float, float]]:
    """(kernel, base ms/step, other ms/step) for the kernels whose GPU time differs most between two backends'
    steps, a kernel one step lacks counting 0 there: where a backend's step spends time the other does not."""
    a = {name: ms for name, ms, _ in base["kernels"]}
    b = {name: ms for name, ms, _ in other["kernels"]}
    names = sorted(set(a) | set(b), key=lambda n: -abs(b.get(n, 0.0) - a.get(n, 0.0)))
    return [(n, a.get(n, 0.0), b.get(n, 0.0)) for n in names[:top]]


def markdown(rows: list[dict], title: str) -> str:
    """The per-backend table, then each backend's top kernels."""
    lines = [title, "| attn | tok/s | wall ms/step | GPU busy ms/step | GPU idle | attention kernels ms/step |",
             "|---|---|---|---|---|---|"]
    idle = lambda r: 1 - r["busy_ms"] / r.get("profiled_wall_ms", r["wall_ms"])  # older files lack the profiled wall
    lines += [f"| {r['attn']} | {r['tokens_per_sec']:,.0f} | {r['wall_ms']:.2f} | {r['busy_ms']:.2f} | "
              f"{idle(r):.1%} | {r['attention_ms']:.2f} |" for r in rows]
    for r in rows:
        lines += ["", f"{r['attn']}: top kernels (ms/step, launches/step)"]
        lines += [f"  {ms:7.3f}  {count:4d}  {name}" for name, ms, count in r["top"]]
    base = rows[0]
    for r in rows[1:]:
        lines += ["", f"largest differences, {base['attn']} -> {r['attn']} (ms/step)"]
        lines += [f"  {a:7.3f} -> {b:7.3f}  ({b - a:+.3f})  {name}" for name, a, b in differences(base, r)]
    return "\n".join(lines)
