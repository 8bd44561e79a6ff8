"""The single-pass backward (dQ by fp32 atomics) against the two passes (deterministic=True), per head dim, mask and
dropout, 16K tokens, fwd+bwd replayed from a CUDA graph; cuDNN beside. kernels/attention.py's _single_pass() routes
by what this measured (docs/dev/kernel-notes.md, seventh and eleventh sessions). Without dropout the library never
takes the single pass; --p 0 forces it here (by replacing _single_pass) to measure it.

    python docs/dev/dropout_backward_passes.py                     # p = 0.1, D = 128 and 64, causal
    python docs/dev/dropout_backward_passes.py --p 0 --head-dims 64 --causal yes no
"""

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path.cwd()))
import kernels.attention as library  # noqa: E402 (from the checkout's root)
from kernels import flash_attention  # noqa: E402


def fwd_bwd_ms(attend, q, k, v, do) -> float:
    step = lambda: torch.autograd.grad(attend(q, k, v), (q, k, v), do)
    step()  # autotune and compile outside the graph
    torch.cuda.synchronize()
    return triton.testing.do_bench_cudagraph(step)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--p", type=float, default=0.1)
    ap.add_argument("--head-dims", type=int, nargs="+", default=[128, 64])
    ap.add_argument("--causal", nargs="+", choices=["yes", "no"], default=["yes"])
    ap.add_argument("--seqs", type=int, nargs="+", default=[4096, 16384])
    args = ap.parse_args()
    routed = library._single_pass
    library._single_pass = lambda p, deterministic, d: not deterministic  # every non-deterministic call: one pass
    for D in args.head_dims:
        for causal in (c == "yes" for c in args.causal):
            for N in args.seqs:
                B, H = 16384 // N, 12 if D == 64 else 6
                q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                           for _ in range(3))
                do = torch.randn_like(q)
                ms = {name: fwd_bwd_ms(lambda q, k, v, det=det, causal=causal: flash_attention(
                    q, k, v, causal=causal, dropout_p=args.p, deterministic=det), q, k, v, do)
                      for name, det in (("single pass", False), ("two passes", True))}
                ms["cudnn"] = fwd_bwd_ms(lambda q, k, v, causal=causal: F.scaled_dot_product_attention(
                    q, k, v, is_causal=causal, dropout_p=args.p), q, k, v, do)
                library_takes = "single pass" if routed(args.p, False, D) else "two passes"
                print(f"D={D} N={N} H={H} causal={causal} p={args.p} fwd+bwd ms: " +
                      ", ".join(f"{k} {v:.3f}" for k, v in ms.items()) +
                      f"; single / two passes {ms['single pass'] / ms['two passes']:.3f}; the library takes the "
                      f"{library_takes}", flush=True)


if __name__ == "__main__":
    main()
