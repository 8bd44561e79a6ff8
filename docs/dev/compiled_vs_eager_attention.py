"""The model's attention call, eager against torch.compile, on the model's layout (q, k, v views of one (B, N, 3C)
projection, the output back to (B, N, C)): fwd+bwd ms per call (CUDA events, median of do_bench), ours and cuDNN's.
Why: end to end at seq 4096 x 4, flash is 0.985x sdpa eager but 0.969x compiled, and the compiled profile's
attention kernels ran slower than the eager one's (docs/dev/kernel-notes.md, eleventh session). Writes Inductor's
code for the compiled calls of ours to OUT/compiled_<provider>_code.py. flash_packed: the projection handed whole to
flash_attention_qkvpacked, as the model does since the twelfth session (its backward writes the packed gradient).

    python docs/dev/compiled_vs_eager_attention.py --out OUT                        # B = 4, N = 4096
    python docs/dev/compiled_vs_eager_attention.py --batch 16 --seq 1024 --out OUT

Also times the forward alone (the kernel Inductor launches itself: the triton_op's traced body) and prints the
configs Inductor's autotuning chose for our kernels in this run (its cache's .best_config files), then the ones our
own autotuner chose for the eager calls (and for the packed op's calls, which it launches itself, compiled or not).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from torch._inductor.runtime.cache_dir_utils import cache_dir
from torch._inductor.utils import run_and_get_code

sys.path.insert(0, str(Path.cwd()))
from kernels import attention, flash_attention, flash_attention_qkvpacked  # noqa: E402 (from the checkout's root)

H, D = 12, 64


def layer(attend, B, N, packed: bool = False):
    def f(x):
        qkv = x.view(B, N, 3, H, D)
        o = attend(qkv) if packed else attend(*(t.transpose(1, 2) for t in qkv.unbind(2)))
        return o.transpose(1, 2).reshape(B, N, H * D)
    return f


def fwd_ms(f, x) -> float:
    with torch.no_grad():
        for _ in range(3):
            f(x)
        torch.cuda.synchronize()
        return triton.testing.do_bench(lambda: f(x), warmup=50, rep=300)


def chosen_configs(since: float) -> list[str]:
    """Inductor's autotuning choices written since `since` (one .best_config file per tuned kernel)."""
    return [f"{p.parent.name}/{p.name}: {json.loads(p.read_text())}" for p in Path(cache_dir()).rglob("*.best_config")
            if p.stat().st_mtime >= since]


def fwd_bwd_ms(f, x, do) -> float:
    step = lambda: torch.autograd.grad(f(x), x, do)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    return triton.testing.do_bench(step, warmup=50, rep=300)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--out", type=Path, default=Path("."))
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("compiled_vs_eager_attention.py needs a CUDA GPU")
    B, N, out = args.batch, args.seq, args.out
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    x = torch.randn(B, N, 3 * H * D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    do = torch.randn(B, N, H * D, device="cuda", dtype=torch.bfloat16)
    attends = {"flash": lambda q, k, v: flash_attention(q, k, v, causal=True),
               "flash_packed": lambda qkv: flash_attention_qkvpacked(qkv, causal=True),
               "cudnn": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)}
    layers = {name: layer(a, B, N, packed=name == "flash_packed") for name, a in attends.items()}
    compiled = {name: torch.compile(f) for name, f in layers.items()}
    start = time.time()
    for name in ("flash", "flash_packed"):
        _, code = run_and_get_code(lambda name=name: torch.autograd.grad(compiled[name](x), x, do))
        (out / f"compiled_{name}_code.py").write_text("\n\n# ----- next graph -----\n\n".join(code))
    print("Inductor's choices:", *chosen_configs(start) or ["none found"], sep="\n  ")
    for round_ in range(2):  # twice, the order reversed: clocks drift as the GPU heats
        names = list(attends) if round_ == 0 else list(attends)[::-1]
        for name in names:
            eager, comp = fwd_bwd_ms(layers[name], x, do), fwd_bwd_ms(compiled[name], x, do)
            eager_f, comp_f = fwd_ms(layers[name], x), fwd_ms(compiled[name], x)
            print(f"round {round_} {name}: fwd+bwd eager {eager:.3f} ms, compiled {comp:.3f} ({comp / eager:.3f}); "
                  f"fwd eager {eager_f:.3f}, compiled {comp_f:.3f} ({comp_f / eager_f:.3f})", flush=True)
    print("Our autotuner's choices (key: config):")
    for name in ("_fwd", "_bwd_dq", "_bwd_kv"):
        for key, config in getattr(attention, name).cache.items():
            print(f"  {name} {key}: {config}")


if __name__ == "__main__":
    main()
