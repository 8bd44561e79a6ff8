"""The costliest-first causal order (kernels/attention.py: _LPT_ORDER; program_tile) against the grid order, on a
GPU: causal D = 64, 16K tokens, the model's packed projection (flash_attention_qkvpacked), forward and
forward+backward, CUDA-graph replays (triton.testing.do_bench_cudagraph), cuDNN on the same tensors beside. One
process: the configs are tuned once, under the first order, and every order runs with them. Orders: `grid` (a
head's tiles side by side), `G<n>` (groups of n heads, each group's costliest tiles first), `all` (every head's
costliest tiles first). Rounds alternate the orders' sequence.

    python docs/dev/lpt_ab.py                                      # from a checkout's root
    python docs/dev/lpt_ab.py --seqs 1024 2048 --groups 8 16 32 64
    python docs/dev/lpt_ab.py --seqs 4096 8192 --groups 16 --rounds 4 --dropout 0.1
"""

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path.cwd()))
from kernels import attention, flash_attention_qkvpacked  # noqa: E402

H, D = 12, 64


TABLES = [name for name in vars(attention) if name.endswith("LPT_ORDER")]  # kernels/attention.py's order tables
LANDED = {name: getattr(attention, name) for name in TABLES}


def table(order: str) -> tuple:
    """An order table that puts every N bucket in `order`: `grid`, `G<n>` or `all`."""
    heads = 0 if order == "grid" else int(order[1:]) if order.startswith("G") else attention._LPT_ALL_HEADS
    return ((1, heads),)


def set_order(order: str) -> None:
    """Every kernel in `order`, or in the library's own orders (`landed`)."""
    for name in TABLES:
        setattr(attention, name, LANDED[name] if order == "landed" else table(order))


def times(attend, qkv, do) -> tuple[float, float]:
    """(forward ms, forward+backward ms)."""
    fwd_bwd = lambda: torch.autograd.grad(attend(qkv), qkv, do)
    fwd_bwd()
    torch.cuda.synchronize()
    return triton.testing.do_bench_cudagraph(lambda: attend(qkv)), triton.testing.do_bench_cudagraph(fwd_bwd)


def inputs(N: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The packed projection (B, N, 3, H, D) at 16K tokens, and dO."""
    B = 16384 // N
    qkv = torch.randn(B, N, 3, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    return qkv, torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16)


def alternating_rounds(orders: list[str], apply, attend, qkv, do, rounds: int):
    """Per round, (round, {order: times(...)}) with apply(order) before each order; every other round reversed."""
    for round_ in range(rounds):
        results = {}
        for order in orders if round_ % 2 == 0 else orders[::-1]:
            apply(order)
            results[order] = times(attend, qkv, do)
        yield round_, results


def cudnn(qkv, dropout_p: float):
    q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seqs", type=int, nargs="+", default=[1024, 2048, 4096, 16384])
    p.add_argument("--groups", type=int, nargs="*", default=[], help="head-group sizes to time beside grid and all")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.0, metavar="P", help="attention dropout, ours and cuDNN's")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("lpt_ab.py needs a CUDA GPU")
    orders = ["grid", *(f"G{g}" for g in args.groups), "all"]
    flash = lambda qkv: flash_attention_qkvpacked(qkv, causal=True, dropout_p=args.dropout)
    for N in args.seqs:
        qkv, do = inputs(N)
        for round_, results in alternating_rounds(orders, set_order, flash, qkv, do, args.rounds):
            base, ref = results["grid"], times(lambda qkv: cudnn(qkv, args.dropout), qkv, do)
            print(f"N={N:5d} round {round_}: cuDNN fwd {ref[0]:.4f} fwd+bwd {ref[1]:.4f} ms; " + "; ".join(
                f"{o} fwd {f:.4f} ({base[0] / f:.3f}x, cuDNN {ref[0] / f:.3f}x) fwd+bwd {fb:.4f} ({base[1] / fb:.3f}x, "
                f"cuDNN {ref[1] / fb:.3f}x)" for o, (f, fb) in results.items()), flush=True)


if __name__ == "__main__":
    main()
