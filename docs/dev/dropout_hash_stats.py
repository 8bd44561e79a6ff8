"""Independence of the dropout hash on 2 x 2 rectangles, the one place where the keys are related: the four
row_a ^ col_a of rows (r1, r2) and columns (c1, c2) XOR to zero, so a hash linear in them would fix a rectangle's
parity. Draws 10^8 rectangles of uniform keys and compares the 16 joint keep patterns with independent
Bernoulli(1 - p) draws (chi-square, 15 degrees of freedom: ~15 expected, > 50 is a dependence). CPU, ~1 minute:

    python docs/dev/dropout_hash_stats.py --p 0.1 0.5
"""

import argparse

import torch

U32 = 0xFFFFFFFF


def mul_u32(x: torch.Tensor, c: int) -> torch.Tensor:
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & U32


def one_multiply(row_a, row_b, col_a, col_b):
    """The kernels' hash from the fifth session to the seventeenth."""
    return mul_u32(row_a ^ col_a, 0x7FEB352D) ^ row_b ^ col_b


def two_rounds(row_a, row_b, col_a, col_b):
    """The hash before that: two multiply-xorshift rounds."""
    x = mul_u32(row_a ^ col_a, 0x7FEB352D)
    return mul_u32(x ^ (x >> 15), 0x846CA68B) ^ row_b ^ col_b


def multiply_add(row_a, row_b, col_a, col_b):
    """The kernels' hash (kernels/attention_fwd.py dropout_keep) since the eighteenth session, one instruction an
    element cheaper than one_multiply: the row's second key added by the multiply's own addend (one IMAD), no
    column second key (col_b unused)."""
    return (mul_u32(row_a ^ col_a, 0x7FEB352D) + row_b) & U32


def xor_only(row_a, row_b, col_a, col_b):
    """A linear hash, as a control that the statistic sees the dependence."""
    return row_a ^ col_a ^ row_b ^ col_b


def rectangle_chi2(hash_fn, p: float, rectangles: int, chunk: int = 4_000_000) -> float:
    threshold = round(p * 2**24) << 8
    counts = torch.zeros(16, dtype=torch.float64)
    for _ in range(rectangles // chunk):
        rows, cols = (torch.randint(0, 2**32, (4, chunk), dtype=torch.int64) for _ in range(2))
        code = torch.zeros(chunk, dtype=torch.int64)
        for r, c in ((0, 0), (0, 2), (2, 0), (2, 2)):  # keys (a, b) of rows r1 / r2 and columns c1 / c2
            code = 2 * code + (hash_fn(rows[r], rows[r + 1], cols[c], cols[c + 1]) >= threshold).long()
        counts += torch.bincount(code, minlength=16).double()
    kept = torch.tensor([bin(c).count("1") for c in range(16)], dtype=torch.float64)
    expected = counts.sum() * (1 - p) ** kept * p ** (4 - kept)
    return ((counts - expected) ** 2 / expected).sum().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--p", type=float, nargs="+", default=[0.1, 0.5])
    parser.add_argument("--rectangles", type=int, default=100_000_000)
    args = parser.parse_args()
    torch.manual_seed(1)
    for p in args.p:
        for hash_fn in (one_multiply, two_rounds, multiply_add, xor_only):
            chi2 = rectangle_chi2(hash_fn, p, args.rectangles)
            print(f"p={p} {hash_fn.__name__:13s} chi2 (15 dof) over {args.rectangles:,} rectangles: {chi2:.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
