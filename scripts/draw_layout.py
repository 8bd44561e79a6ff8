"""Draw a block-sparse layout to PNG: python scripts/draw_layout.py --pattern local+global --seq-len 4096 --out x.png"""

import argparse
from pathlib import Path

from kernels.sparsity_patterns import build_layout, layout_density
from reporting.plots import layout_picture


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--pattern", default="local", help="e.g. local, butterfly, local+global, local&strided")
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--window", type=int, default=256, help="local: tokens either side (whole blocks)")
    ap.add_argument("--stride", type=int, default=4, help="strided / fixed: in blocks")
    ap.add_argument("--num-global", type=int, default=1)
    ap.add_argument("--num-random", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--causal", action="store_true", help="show the causal part only")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    layout = build_layout(a.pattern, a.seq_len, a.block_size, window=a.window, stride=a.stride,
                          num_global=a.num_global, num_random=a.num_random, seed=a.seed)
    density = layout_density(layout, a.seq_len, a.block_size, a.causal)
    layout_picture(layout, Path(a.out), f"{a.pattern}  N={a.seq_len}  block={a.block_size}  density={density:.3f}",
                   a.causal)
    print(f"{a.out}: {tuple(layout.shape)} blocks, density {density:.4f}")


if __name__ == "__main__":
    main()
