"""The dK/dV pass with its registers capped (triton.Config's maxnreg) so that a third program fits on an SM (GPU):
causal D = 64, 16K tokens, the model's packed projection, fwd+bwd replayed from a CUDA graph; the forward and the
dQ pass at the autotuner's picks, the dK/dV pass forced to each config in turn, rounds alternating their order;
cuDNN beside.

    python docs/dev/kv_register_cap.py                                   # from a checkout's root
    python docs/dev/kv_register_cap.py --seqs 16384 --caps 168 128 --rounds 3

Configs: the autotuner's pick, and each tile of --tiles (BLOCK_M x BLOCK_N x warps x stages) uncapped and at each
cap of --caps.
"""

import argparse
import statistics
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path.cwd()))
sys.path.insert(0, str(Path(__file__).parent))
import lpt_ab  # noqa: E402
from tuning_spread import pin, tuner  # noqa: E402

from kernels import flash_attention_qkvpacked  # noqa: E402


def config(tile: str, cap: int | None) -> triton.Config:
    m, n, warps, stages = (int(x) for x in tile.split("x"))
    return triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=warps, num_stages=stages, maxnreg=cap)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seqs", type=int, nargs="+", default=[16384, 8192, 4096])
    p.add_argument("--tiles", nargs="+", default=["32x64x4x3", "32x128x4x3", "64x64x4x3"])
    p.add_argument("--caps", type=int, nargs="+", default=[168])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("kv_register_cap.py needs a CUDA GPU")
    flash = lambda qkv: flash_attention_qkvpacked(qkv, causal=True)
    for N in args.seqs:
        for kind in ("fwd", "dq", "kv"):
            tuner(kind).cache.clear()
        qkv, do = lpt_ab.inputs(N)
        torch.autograd.grad(flash(qkv), qkv, do)  # tunes the three kernels
        tuned = next(iter(tuner("kv").cache.values()))
        variants = {"tuned " + "x".join(str(v) for v in (*tuned.kwargs.values(), tuned.num_warps, tuned.num_stages)):
                    tuned}
        variants |= {f"{t} cap {c}": config(t, c) for t in args.tiles for c in [None, *args.caps]}
        ms = {name: [] for name in variants}
        cudnn = []
        for r in range(args.rounds):
            for name in variants if r % 2 == 0 else list(variants)[::-1]:
                pin({"kv": variants[name]})
                ms[name].append(lpt_ab.times(flash, qkv, do)[1])
            cudnn.append(lpt_ab.times(lambda qkv: lpt_ab.cudnn(qkv, 0.0), qkv, do)[1])
        ref = statistics.median(cudnn)
        print(f"N={N}: cuDNN fwd+bwd {ref:.4f} ms; " + "; ".join(
            f"{name} {statistics.median(t):.4f} (cuDNN {ref / statistics.median(t):.3f}x)"
            for name, t in sorted(ms.items(), key=lambda x: statistics.median(x[1]))), flush=True)


if __name__ == "__main__":
    main()
