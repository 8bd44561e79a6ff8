"""The packed attention backward (flash_attention_qkvpacked, the model's path) of this checkout against another's, in
one process: fwd+bwd replayed from a CUDA graph, the two alternating, with cuDNN on views of the same projection
(what attn=sdpa runs) beside. Before timing, the two checkouts' gradients must agree bitwise (dropout 0 takes the
deterministic two passes). Built for the fifteenth session's change: the two-pass dQ pass storing into q's slot of
the packed gradient instead of a buffer copied there (docs/dev/kernel-notes.md).

    python docs/dev/packed_backward_ab.py --baseline ../main                      # 4096x4, causal, D = 64
    python docs/dev/packed_backward_ab.py --baseline ../main --cases 1024x16 8192x2 --rounds 5
"""

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path.cwd()))
from kernels import flash_attention_qkvpacked  # noqa: E402 (from the checkout's root)
from reporting import attention_bench  # noqa: E402


def case(text: str) -> tuple[int, int]:
    seq, batch = text.split("x")
    return int(seq), int(batch)


def fwd_bwd_ms(attend, qkv, do) -> float:
    step = lambda: torch.autograd.grad(attend(qkv), qkv, do)
    step()  # autotune outside the graph
    torch.cuda.synchronize()
    return triton.testing.do_bench_cudagraph(step)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, metavar="DIR", help="another checkout of this repository")
    ap.add_argument("--cases", nargs="+", type=case, default=[(4096, 4)], help="SEQxBATCH (default: 4096x4)")
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds, the order reversed every round")
    args = ap.parse_args()
    attention_bench.load_baseline(args.baseline)
    baseline = sys.modules["baseline"]
    H, D = args.heads, args.head_dim
    for N, B in args.cases:
        qkv = torch.randn(B, N, 3, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        do = torch.randn(B, N, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)  # as the model's o
        attend = {"ours": lambda x: flash_attention_qkvpacked(x, causal=True),
                  "baseline": lambda x: baseline.flash_attention_qkvpacked(x, causal=True),
                  "cudnn": lambda x: F.scaled_dot_product_attention(*x.permute(2, 0, 3, 1, 4), is_causal=True)}
        grads = {name: torch.autograd.grad(attend[name](qkv), qkv, do)[0] for name in ("ours", "baseline")}
        if not torch.equal(grads["ours"], grads["baseline"]):
            raise SystemExit(f"{N}x{B}: the packed gradients differ from the baseline's")
        times = {name: [] for name in attend}
        for r in range(args.rounds):
            for name in (list(attend) if r % 2 == 0 else list(attend)[::-1]):
                with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
                    times[name].append(fwd_bwd_ms(attend[name], qkv, do))
        ms = {name: statistics.median(t) for name, t in times.items()}
        print(f"{N}x{B} H={H} D={D} causal, packed fwd+bwd graph ms (median of {args.rounds}): " +
              ", ".join(f"{k} {v:.4f}" for k, v in ms.items()) +
              f"; baseline / ours {ms['baseline'] / ms['ours']:.4f}, cudnn / ours {ms['cudnn'] / ms['ours']:.4f}, "
              f"gradients bitwise equal", flush=True)


if __name__ == "__main__":
    main()
