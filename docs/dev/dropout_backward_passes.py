"""With dropout, the single-pass backward (dQ by fp32 atomics) against the two passes (deterministic=True), per head
dim, causal, 16K tokens, fwd+bwd replayed from a CUDA graph; cuDNN with dropout beside. kernels/attention.py's
_single_pass() routes by what this measured (docs/dev/kernel-notes.md, seventh session).

    python docs/dev/dropout_backward_passes.py      # from a checkout's root, on a CUDA GPU
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path.cwd()))
from kernels import flash_attention  # noqa: E402 (from the checkout's root)

P = 0.1


def fwd_bwd_ms(attend, q, k, v, do) -> float:
    step = lambda: torch.autograd.grad(attend(q, k, v), (q, k, v), do)
    step()  # autotune and compile outside the graph
    torch.cuda.synchronize()
    return triton.testing.do_bench_cudagraph(step)


def main() -> None:
    for D in (128, 64):
        for N in (4096, 16384):
            B, H = 16384 // N, 12 if D == 64 else 6
            q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                       for _ in range(3))
            do = torch.randn_like(q)
            ms = {name: fwd_bwd_ms(lambda q, k, v, det=det: flash_attention(q, k, v, causal=True, dropout_p=P,
                                                                           deterministic=det), q, k, v, do)
                  for name, det in (("single pass", False), ("two passes", True))}
            ms["cudnn"] = fwd_bwd_ms(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                                     dropout_p=P), q, k, v, do)
            print(f"D={D} N={N} H={H} p={P} fwd+bwd ms: " + ", ".join(f"{k} {v:.3f}" for k, v in ms.items()) +
                  f"; two passes {ms['single pass'] / ms['two passes']:.3f}x the single pass's speed", flush=True)


if __name__ == "__main__":
    main()
