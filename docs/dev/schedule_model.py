"""A model of how the GPU fills its SMs with one causal attention launch: programs start in grid order (axis 0
fastest) on the first free slot, and a program's time is its number of key tiles plus one (load Q, store O).
Prints the makespan of three orders over the ideal (total work / slots), per N at 16K tokens, H = 12:
    python docs/dev/schedule_model.py
It ignores memory contention and that two resident programs share an SM, so its gaps are upper bounds."""

import heapq


def makespan(works: list[float], slots: int) -> float:
    free = [0.0] * slots
    for w in works:
        heapq.heappush(free, heapq.heappop(free) + w)
    return max(free)


def orders(n_tiles: int, heads: int, key_tiles_per_query_tile: int) -> dict[str, list[float]]:
    cost = [(m + 1) * key_tiles_per_query_tile + 1.0 for m in range(n_tiles)]
    return {"(tiles, B*H), tiles in order": [c for _ in range(heads) for c in cost],
            "(tiles, B*H), tiles last-first": [c for _ in range(heads) for c in cost[::-1]],
            "(B*H, tiles), tiles last-first": [c for c in cost[::-1] for _ in range(heads)]}


if __name__ == "__main__":
    for per_sm in (1, 2):
        print(f"132 SMs x {per_sm} resident program(s), 128 x 64 tiles; makespan / ideal")
        for n in (1024, 2048, 4096, 8192, 16384):
            works = orders(n // 128, 16384 // n * 12, 2)
            ideal = sum(next(iter(works.values()))) / (132 * per_sm)
            print(f"  N={n:5d}  " + "   ".join(f"{k}: {makespan(w, 132 * per_sm) / ideal:.3f}"
                                               for k, w in works.items()))
