"""A model of how the GPU fills its SMs with one causal attention launch: programs start in grid order (axis 0
fastest) on the first free slot, and a program's time is its number of key tiles (of 64) plus one (load Q, store
O). Prints the makespan of each order over the ideal (total work / slots), per N at 16K tokens, H = 12:
    python docs/dev/schedule_model.py                                   # 128-row query tiles, 1-2 programs an SM
    python docs/dev/schedule_model.py --block-m 64 --per-sm 2 3 4 --seqs 1024 2048 4096
Orders: the library's (tiles, B*H) with a head's tiles in order; the same last-first; LPT, (B*H, tiles) last-first;
and paired, a program per two tiles of a head, n - 1 - p then p (measured 15 % slower at 1K: kernel notes,
seventeenth session).
It ignores memory contention and that resident programs share an SM, so its gaps are upper bounds (it favoured
LPT at 1K, which measured 5 % slower there: kernel notes, fourth session)."""

import argparse
import heapq


def makespan(works: list[float], slots: int) -> float:
    free = [0.0] * slots
    for w in works:
        heapq.heappush(free, heapq.heappop(free) + w)
    return max(free)


def orders(n_tiles: int, heads: int, key_tiles_per_query_tile: int) -> dict[str, list[float]]:
    cost = [(m + 1) * key_tiles_per_query_tile + 1.0 for m in range(n_tiles)]
    pairs = [cost[n_tiles - 1 - p] + (cost[p] if p < n_tiles - 1 - p else 0.0) for p in range((n_tiles + 1) // 2)]
    return {"(tiles, B*H), tiles in order": [c for _ in range(heads) for c in cost],
            "(tiles, B*H), tiles last-first": [c for _ in range(heads) for c in cost[::-1]],
            "(B*H, tiles), tiles last-first": [c for c in cost[::-1] for _ in range(heads)],
            "paired": [c for _ in range(heads) for c in pairs]}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--block-m", type=int, default=128, help="query tile rows (key tiles of 64)")
    ap.add_argument("--per-sm", type=int, nargs="+", default=[1, 2], help="resident programs an SM")
    ap.add_argument("--seqs", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    args = ap.parse_args()
    for per_sm in args.per_sm:
        print(f"132 SMs x {per_sm} resident program(s), {args.block_m} x 64 tiles; makespan / ideal")
        for n in args.seqs:
            works = orders(n // args.block_m, 16384 // n * 12, args.block_m // 64)
            ideal = sum(next(iter(works.values()))) / (132 * per_sm)
            print(f"  N={n:5d}  " + "   ".join(f"{k}: {makespan(w, 132 * per_sm) / ideal:.3f}"
                                               for k, w in works.items()))
