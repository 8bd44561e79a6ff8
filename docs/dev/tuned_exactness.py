"""Exactness of the configs the autotuner picks at large shapes (GPU). The kernel tests run small shapes with
FLASHGPT_AUTOTUNE=0 (the first fitting config); this checks what a benchmark or a training run actually launches:
causal attention at 16K tokens, ours and cuDNN in bf16 against an fp32 reference (SDPA's math backend), output and
gradients, with the project's bound (ours within 2x cuDNN's max error).

    python docs/dev/tuned_exactness.py --head-dims 64 128 --seqs 4096 16384    # from a checkout's root

Exits 1 if any tensor is outside the bound.
"""

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path.cwd()))
from kernels import flash_attention  # noqa: E402

TOKENS, HEADS = 16384, 12


def sdpa(backend):
    def attend(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return attend


def outputs_and_grads(attend, q, k, v, do, dtype) -> list[torch.Tensor]:
    x = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    o = attend(*x)
    return [o.float(), *(g.float() for g in torch.autograd.grad(o, x, do.to(dtype)))]


def check(D: int, N: int) -> bool:
    g = torch.Generator(device="cuda").manual_seed(1)
    q, k, v, do = (torch.randn(TOKENS // N, HEADS, N, D, device="cuda", dtype=torch.bfloat16, generator=g)
                   for _ in range(4))
    reference = outputs_and_grads(sdpa(SDPBackend.MATH), q, k, v, do, torch.float32)
    ours = outputs_and_grads(lambda *x: flash_attention(*x, causal=True), q, k, v, do, torch.bfloat16)
    cudnn = outputs_and_grads(sdpa(SDPBackend.CUDNN_ATTENTION), q, k, v, do, torch.bfloat16)
    ok = True
    for name, ref, a, c in zip(["o", "dq", "dk", "dv"], reference, ours, cudnn, strict=True):
        ours_err, cudnn_err = (a - ref).abs().max().item(), (c - ref).abs().max().item()
        within = ours_err <= 2 * cudnn_err
        ok &= within
        print(f"D={D} N={N} {name}: max error ours {ours_err:.2e}, cuDNN {cudnn_err:.2e} "
              f"({ours_err / cudnn_err:.2f}x) {'ok' if within else 'OUTSIDE 2x'}", flush=True)
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--seqs", type=int, nargs="+", default=[16384])
    args = parser.parse_args()
    results = [check(D, N) for D in args.head_dims for N in args.seqs]
    torch.cuda.empty_cache()
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
