"""The single-pass backward (dQ by fp32 atomics) against the two passes (deterministic=True), per head dim, mask and
dropout, 16K tokens, fwd+bwd replayed from a CUDA graph; cuDNN beside. kernels/attention.py's _single_pass() routes
by what this measured (docs/dev/kernel-notes.md, seventh and eleventh sessions). Without dropout the library never
takes the single pass; --p 0 forces it here (by replacing _single_pass) to measure it.

    python docs/dev/dropout_backward_passes.py                     # p = 0.1, D = 128 and 64, causal
    python docs/dev/dropout_backward_passes.py --p 0 --head-dims 64 --causal yes no
    python docs/dev/dropout_backward_passes.py --p 0 --head-dims 64 --free-dq-adds

--free-dq-adds adds a timing-only row: the single pass with its dQ adds predicated off at run time (a copy of
kernels/ whose tl.atomic_add masks gain `offs_m < 0`, so the REDs issue and move no data; its dQ is wrong). It bounds
what any cheaper dQ reduction (FlashAttention-3's TMA reduce-add) could give the single pass in these kernels.
"""

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path.cwd()))
import kernels.attention as library  # noqa: E402 (from the checkout's root)
from kernels import flash_attention  # noqa: E402
from reporting.attention_bench import load_baseline  # noqa: E402

ATOMIC = "tl.atomic_add(dq_ptrs, dq, "


def free_dq_adds_kernels():
    """The library's kernels with the single pass's dQ atomics predicated off (a query row is never negative, which
    the compiler cannot know: the SASS keeps the REDs, kernel notes, nineteenth session), imported as package
    `free_dq_adds`; returns its flash_attention."""
    root = Path(tempfile.mkdtemp(prefix="free_dq_adds_"))
    shutil.copytree(Path.cwd() / "kernels", root / "kernels")
    bwd = root / "kernels" / "attention_bwd.py"
    text = bwd.read_text()
    assert text.count(ATOMIC) == 2, "the single pass's two tl.atomic_add calls moved: update this probe"
    text = text.replace(ATOMIC + "mask=(", ATOMIC + "mask=(offs_m[:, None] < 0) & (").replace(
        ATOMIC + 'sem="relaxed")', ATOMIC + 'mask=offs_m[:, None] < 0, sem="relaxed")')
    bwd.write_text(text)
    load_baseline(root, "free_dq_adds")
    module = sys.modules["free_dq_adds.attention"]
    module._single_pass = lambda p, deterministic, d: not deterministic
    return module.flash_attention


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
    ap.add_argument("--free-dq-adds", action="store_true", help="also time the single pass with its dQ adds off")
    args = ap.parse_args()
    free_dq_adds = free_dq_adds_kernels() if args.free_dq_adds else None
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
                if free_dq_adds:
                    ms["single pass, dQ adds off"] = fwd_bwd_ms(lambda q, k, v, causal=causal: free_dq_adds(
                        q, k, v, causal=causal, dropout_p=args.p), q, k, v, do)
                ms["cudnn"] = fwd_bwd_ms(lambda q, k, v, causal=causal: F.scaled_dot_product_attention(
                    q, k, v, is_causal=causal, dropout_p=args.p), q, k, v, do)
                library_takes = "single pass" if routed(args.p, False, D) else "two passes"
                print(f"D={D} N={N} H={H} causal={causal} p={args.p} fwd+bwd ms: " +
                      ", ".join(f"{k} {v:.3f}" for k, v in ms.items()) +
                      f"; single / two passes {ms['single pass'] / ms['two passes']:.3f}; the library takes the "
                      f"{library_takes}", flush=True)


if __name__ == "__main__":
    main()
