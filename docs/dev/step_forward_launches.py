"""Why our attention forward runs slower inside the compiled GPT-2 step than alone (1024 x 16: 0.109 ms a layer in
the step's profile against 0.094 in the kernel benchmark; cuDNN's fprop 0.086 against 0.082; kernel notes,
twenty-third to twenty-fifth sessions). Three measurements, each per attention-forward launch (torch.profiler):

1. The compiled training step (reporting/train_step_profile.py's step): every launch of the attention forward in
   order, so a slow layer (e.g. a call site for which Inductor's own autotuning chose another config) stands out;
   and the configs Inductor chose in this process (its cache's .best_config files).
2. A step's neighbourhood without the rest of the step: the QKV projection (the model's Linear, bf16) then the
   attention forward, repeated; the same with a 256 MB buffer zeroed between them (the L2 state the projection
   leaves replaced by another); and the forward alone, repeated on one input (the benchmark's condition).
3. The same three with cuDNN (SDPA's default on Hopper) in place of ours.

    python docs/dev/step_forward_launches.py --batch 16 --seq 1024
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path.cwd()))
sys.path.insert(0, str(Path(__file__).parent))
from compiled_vs_eager_attention import chosen_configs  # noqa: E402

from kernels import flash_attention_qkvpacked  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from reporting.attention_kernels import profiled  # noqa: E402
from reporting.train_step_profile import train_step  # noqa: E402

FORWARDS = ("attn_fwd", "sdpa_sm90_flash_fprop")


def forward_launches(prof) -> dict[str, list[float]]:
    """Durations (ms) of each attention-forward launch, in launch order, by kernel name."""
    kernels = sorted((e for e in prof.events() if e.device_type.name == "CUDA"), key=lambda e: e.time_range.start)
    found: dict[str, list[float]] = {}
    for e in kernels:
        name = next((n for n in FORWARDS if n in e.name), None)
        if name:
            found.setdefault(name, []).append(e.time_range.elapsed_us() / 1e3)
    return found


def summary(ms: list[float]) -> str:
    return f"median {statistics.median(ms):.4f} ms, min {min(ms):.4f}, max {max(ms):.4f}, n {len(ms)}"


def step_launches(attn: str, batch: int, seq: int, steps: int = 5) -> None:
    torch.manual_seed(0)
    config = GPTConfig.preset("gpt2", attn=attn, block_size=max(1024, seq))
    model = GPT(config).cuda()
    optimizer = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), "cuda")
    step_model = torch.compile(model)
    x, y = (torch.randint(0, config.vocab_size, (batch, seq), device="cuda") for _ in range(2))
    start = time.time()
    for _ in range(5):
        train_step(step_model, optimizer, x, y)
    torch.cuda.synchronize()
    if attn == "flash":
        print("Inductor's choices in this compile:", *chosen_configs(start) or ["none found"], sep="\n  ")
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            train_step(step_model, optimizer, x, y)
        torch.cuda.synchronize()
    for name, ms in forward_launches(prof).items():
        layers = [statistics.median(ms[i::config.n_layer]) for i in range(config.n_layer)]
        print(f"step {attn} {name}: {summary(ms)}; per layer (median over steps): "
              + " ".join(f"{t:.4f}" for t in layers), flush=True)
    del model, optimizer, step_model
    torch.cuda.empty_cache()


def neighbourhood(attn: str, batch: int, seq: int, reps: int = 50) -> None:
    """The projection then the forward; with an L2-replacing zero-fill between; the forward alone."""
    H, D = 12, 64
    C = H * D
    proj = torch.nn.Linear(C, 3 * C, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(batch, seq, C, device="cuda", dtype=torch.bfloat16)
    flush = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")

    def attend(qkv):
        qkv = qkv.view(batch, seq, 3, H, D)
        if attn == "flash":
            return flash_attention_qkvpacked(qkv, causal=True)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    fixed = proj(x)
    variants = {"projection, forward": lambda: attend(proj(x)),
                "projection, zero-fill, forward": lambda: (qkv := proj(x), flush.zero_(), attend(qkv)),
                "forward alone": lambda: attend(fixed)}
    with torch.no_grad():
        for name, run in variants.items():
            for kernel, ms in forward_launches(profiled(run, reps, warmup=10)).items():
                print(f"neighbourhood {attn} {kernel} [{name}]: {summary(ms)}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--skip-step", action="store_true", help="only the neighbourhood measurements")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("step_forward_launches.py needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    for attn in ("flash", "sdpa"):
        neighbourhood(attn, args.batch, args.seq)
    if not args.skip_step:
        for attn in ("flash", "sdpa"):
            step_launches(attn, args.batch, args.seq)


if __name__ == "__main__":
    main()
