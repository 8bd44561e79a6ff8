"""Where one GPT-2 training step's time goes, per attention backend: GPU busy vs wall, attention kernels, top kernels.

    python scripts/profile_train_step.py --attn sdpa flash --model gpt2 --batch 16 --seq 1024
    python scripts/profile_train_step.py --attn flash --compile

Random tokens, bf16 autocast, AdamW (fused), the same step as train.py without data loading or logging. For each
backend: wall time per step (CUDA events), the summed GPU kernel time per step (busy) — wall well above busy means
the GPU waits for the host — and the GPU time of the attention kernels themselves (forward and backward).
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from model import GPT, GPTConfig

# Kernel-name fragments of fused attention kernels (ours, PyTorch's flash/cuDNN/efficient); naive's matmuls and
# softmax are not told apart from the rest of the model
ATTENTION_KERNELS = ("_attn_", "flash", "fmha", "cudnn", "attention")


def train_step(model, optimizer, x, y):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        _, loss = model(x, y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def profile_backend(attn: str, args) -> dict:
    torch.manual_seed(0)
    config = GPTConfig.preset(args.model, attn=attn, block_size=max(1024, args.seq))
    model = GPT(config).cuda()
    model.check_attention(torch.device("cuda"), torch.bfloat16)
    optimizer = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), "cuda")
    step_model = torch.compile(model) if args.compile else model
    x, y = (torch.randint(0, config.vocab_size, (args.batch, args.seq), device="cuda") for _ in range(2))
    for _ in range(args.warmup):
        train_step(step_model, optimizer, x, y)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(args.steps):
        train_step(step_model, optimizer, x, y)
    end.record()
    torch.cuda.synchronize()
    wall_ms = start.elapsed_time(end) / args.steps
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            train_step(step_model, optimizer, x, y)
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    busy_ms = sum(e.device_time_total for e in kernels) / args.steps / 1e3
    attn_ms = sum(e.device_time_total for e in kernels
                  if any(s in e.key.lower() for s in ATTENTION_KERNELS)) / args.steps / 1e3
    top = sorted(kernels, key=lambda e: -e.device_time_total)[:args.top]
    del model, optimizer, step_model
    torch.cuda.empty_cache()
    return {"attn": attn, "wall_ms": wall_ms, "busy_ms": busy_ms, "attention_ms": attn_ms,
            "tokens_per_sec": args.batch * args.seq / (wall_ms / 1e3),
            "top": [(e.key[:70], e.device_time_total / args.steps / 1e3, e.count // args.steps) for e in top]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--attn", nargs="+", default=["sdpa", "flash"])
    p.add_argument("--model", default="gpt2")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--top", type=int, default=12)
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("profile_train_step.py needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    rows = [profile_backend(attn, args) for attn in args.attn]
    print(f"{args.model}, batch {args.batch}, seq {args.seq}, bf16, {'compiled' if args.compile else 'eager'}, "
          f"{torch.cuda.get_device_name()}")
    print("| attn | tok/s | wall ms/step | GPU busy ms/step | GPU idle | attention kernels ms/step |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['attn']} | {r['tokens_per_sec']:,.0f} | {r['wall_ms']:.2f} | {r['busy_ms']:.2f} | "
              f"{1 - r['busy_ms'] / r['wall_ms']:.1%} | {r['attention_ms']:.2f} |")
    for r in rows:
        print(f"\n{r['attn']}: top kernels (ms/step, launches/step)")
        for name, ms, count in r["top"]:
            print(f"  {ms:7.3f}  {count:4d}  {name}")


if __name__ == "__main__":
    main()
