"""How evenly the persistent Gluon forward's schedule spreads causal work over its programs, counted on the CPU.

Mirrors kernels/attention_fwd_hopper.py's _schedule and _round_tile: one program an SM, one query tile a round
from a list that runs costliest first (every head's tile of a rank before the next rank, or head by head), odd
rounds backwards. A causal query tile costs its key tiles plus one (its Q load and O store); the line per shape is
the busiest program's work over the mean, for each order (1.00: perfectly even).

    python docs/dev/persistent_schedule.py                 # 16K tokens, 12 heads, 132 SMs (the H200 benchmark)
    python docs/dev/persistent_schedule.py --heads 6 --sms 114
"""

import argparse

BLOCK = 128


def tile(i: int, n_m: int, bh: int, heads_fastest: bool) -> int:
    """Query tile (rank from the costliest) of list entry i."""
    return i // bh if heads_fastest else i % n_m


def busiest_over_mean(n_m: int, bh: int, programs: int, heads_fastest: bool) -> float:
    tiles = n_m * bh
    programs = min(programs, tiles)
    full, rest = divmod(tiles, programs)
    work = []
    for p in range(programs):
        place = p if full % 2 == 0 else programs - 1 - p
        rounds = full + (place < rest)
        total = 0
        for r in range(rounds):
            i = r * programs + (p if r % 2 == 0 else programs - 1 - p)
            total += n_m - tile(i, n_m, bh, heads_fastest) + 1
        work.append(total)
    return max(work) / (sum(work) / programs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--sms", type=int, default=132)
    ap.add_argument("--seqs", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    args = ap.parse_args()
    for N in args.seqs:
        n_m, bh = N // BLOCK, args.tokens // N * args.heads
        print(f"N={N:6d}: heads-fastest {busiest_over_mean(n_m, bh, args.sms, True):.3f}, "
              f"head by head {busiest_over_mean(n_m, bh, args.sms, False):.3f}")


if __name__ == "__main__":
    main()
