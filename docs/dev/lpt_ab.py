"""The costliest-first causal order (kernels/attention.py, _LPT_MIN_N_BUCKET) forced off and on, on a GPU: causal
D = 64 forward and forward+backward at 16K tokens, CUDA-graph replays (triton.testing.do_bench_cudagraph).

    python docs/dev/lpt_ab.py      # from a checkout's root
"""

import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path.cwd()))
from kernels import attention, flash_attention  # noqa: E402


def times(q, k, v, do) -> tuple[float, float]:
    """(forward ms, forward+backward ms)."""
    fwd = lambda: flash_attention(q, k, v, causal=True)
    fwd_bwd = lambda: torch.autograd.grad(flash_attention(q, k, v, causal=True), (q, k, v), do)
    fwd_bwd()
    torch.cuda.synchronize()
    return triton.testing.do_bench_cudagraph(fwd), triton.testing.do_bench_cudagraph(fwd_bwd)


def main() -> None:
    for N in (1024, 2048, 4096, 16384):
        B, H, D = 16384 // N, 12, 64
        q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        do = torch.randn_like(q)
        attention._LPT_MIN_N_BUCKET = 1 << 40
        a = times(q, k, v, do)
        attention._LPT_MIN_N_BUCKET = 1
        b = times(q, k, v, do)
        print(f"N={N:5d} fwd {a[0]:.3f} -> {b[0]:.3f} ms ({a[0] / b[0]:.3f}x)   fwd+bwd {a[1]:.3f} -> {b[1]:.3f} ms "
              f"({a[1] / b[1]:.3f}x)", flush=True)


if __name__ == "__main__":
    main()
