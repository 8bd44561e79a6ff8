"""The causal forward's program order alone (GPU): every order of docs/dev/lpt_ab.py for the forward, while the two
backward passes keep the landed order (kernels/attention.py: _LPT_ORDER). D = 64, 16K tokens, the model's packed
projection, forward and forward+backward from CUDA-graph replays, cuDNN beside; rounds alternate the orders'
sequence. One process: the configs are tuned once, under the first order.

    python docs/dev/forward_order_ab.py                          # from a checkout's root
    python docs/dev/forward_order_ab.py --seqs 8192 --orders landed grid G4 --rounds 4 --dropout 0.1

Orders: `landed` (the forward's own, as the library launches it), `grid`, `G<n>` (groups of n heads), `all`.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path.cwd()))
sys.path.insert(0, str(Path(__file__).parent))
import lpt_ab  # noqa: E402

from kernels import attention, flash_attention_qkvpacked  # noqa: E402

LAUNCH_FWD = attention._launch_fwd  # the library's, looked up by the forward op at each call


def forward_in(order: str) -> None:
    """Make the forward launch in `order`, and nothing else."""
    if order == "landed":
        attention._launch_fwd = LAUNCH_FWD
        return

    def launch_fwd(*args, **kwargs):
        lpt_ab.set_order(order)
        try:
            return LAUNCH_FWD(*args, **kwargs)
        finally:
            lpt_ab.set_order("landed")

    attention._launch_fwd = launch_fwd


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seqs", type=int, nargs="+", default=[8192, 16384, 4096])
    p.add_argument("--orders", nargs="+", default=["landed", "grid", "G2", "G4", "G8", "G16"])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.0, metavar="P")
    args = p.parse_args()
    flash = lambda qkv: flash_attention_qkvpacked(qkv, causal=True, dropout_p=args.dropout)
    for N in args.seqs:
        qkv, do = lpt_ab.inputs(N)
        for round_, results in lpt_ab.alternating_rounds(args.orders, forward_in, flash, qkv, do, args.rounds):
            forward_in("landed")
            ref = lpt_ab.times(lambda qkv: lpt_ab.cudnn(qkv, args.dropout), qkv, do)
            print(f"N={N} round {round_}: cuDNN fwd {ref[0]:.4f} fwd+bwd {ref[1]:.4f} ms; " + "; ".join(
                f"{o} fwd {f:.4f} fwd+bwd {fb:.4f} (cuDNN {ref[1] / fb:.3f}x)" for o, (f, fb) in results.items()),
                flush=True)


if __name__ == "__main__":
    main()
