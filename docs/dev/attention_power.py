"""SM clock and board power while one attention fwd+bwd is replayed from a CUDA graph for a few seconds, ours against
cuDNN's, in alternating rounds. Why: in the compiled GPT-2 step the GEMMs beside our kernels ran 2-6 % slower than
beside cuDNN's, whichever backend ran first (docs/dev/kernel-notes.md, eleventh session); a higher power draw of our
kernels, and the lower clocks it brings under the power limit, would explain it.

    python docs/dev/attention_power.py [--seconds 5] [--rounds 2]     # from a checkout's root, on a CUDA GPU
    python docs/dev/attention_power.py --providers flash flash_single cudnn --seq 16384 --no-causal

flash_single: our single-pass backward (dQ by fp32 atomics) without dropout, which the library never takes there
(kernels/attention.py's _single_pass, replaced here): 5 matrix products where the two passes run 7, so fewer joules
in the products, more in the atomics.
"""

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path.cwd()))
import kernels.attention as library  # noqa: E402 (from the checkout's root)
from kernels import flash_attention  # noqa: E402
from reporting import sustained  # noqa: E402

H, D, TOKENS = 12, 64, 16384


def attention(name: str, causal: bool):
    if name == "cudnn":
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return lambda q, k, v: flash_attention(q, k, v, causal=causal)


@contextmanager
def single_pass(on: bool):
    """While on, our backward takes the single pass wherever it may (read at each backward launch, so a graph
    captured inside keeps it)."""
    routed = library._single_pass
    if on:
        library._single_pass = lambda p, deterministic, d: not deterministic
    try:
        yield
    finally:
        library._single_pass = routed


def graphed(name: str, causal: bool, q, k, v, do) -> torch.cuda.CUDAGraph:
    attend = attention(name, causal)
    with single_pass(name == "flash_single"):
        return sustained.capture(lambda: torch.autograd.grad(attend(q, k, v), (q, k, v), do))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--providers", nargs="+", choices=("flash", "flash_single", "cudnn"), default=["flash", "cudnn"])
    ap.add_argument("--seq", type=int, default=4096, help="N; B = 16384 / N")
    ap.add_argument("--causal", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args()
    B, N = max(1, TOKENS // args.seq), args.seq
    q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    do = torch.randn_like(q)
    graphs = {name: graphed(name, args.causal, q, k, v, do) for name in args.providers}
    for r in range(args.rounds):
        for name in list(graphs) if r % 2 == 0 else list(graphs)[::-1]:
            result = sustained.replay(graphs[name], args.seconds)
            print(f"round {r} {name} (B={B} N={N} causal={args.causal}): fwd+bwd {result}", flush=True)


if __name__ == "__main__":
    main()
