"""Block layouts for block-sparse attention: one small function per pattern, combined by union or intersection.

Each pattern maps a number of blocks per side to a bool (n, n) layout; layout[i, j] keeps query block i's view of
key block j. `build_layout("local+global", ...)` takes the union of terms, "a&b" their intersection ("&" binds
tighter than "+"). Causal masking is applied by the kernel, not here.
"""

from __future__ import annotations

import torch


def dense(n: int) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool)


def local(n: int, width: int) -> torch.Tensor:
    """Sliding window: blocks at distance < width (width 1: the diagonal only)."""
    i = torch.arange(n)
    return (i[:, None] - i[None, :]).abs() < width


def butterfly(n: int) -> torch.Tensor:
    """Flat butterfly (FlashAttention appendix, after Pixelated Butterfly): i == j or i, j differ in one bit."""
    i = torch.arange(n)
    x = i[:, None] ^ i[None, :]
    return (x & (x - 1)) == 0


def strided(n: int, stride: int) -> torch.Tensor:
    """Sparse Transformer strided: blocks a multiple of `stride` apart."""
    i = torch.arange(n)
    return (i[:, None] - i[None, :]) % stride == 0


def fixed(n: int, stride: int) -> torch.Tensor:
    """Sparse Transformer fixed: the last block of every `stride`-block chunk is a summary seen by all."""
    j = torch.arange(n)
    return (j % stride == stride - 1)[None, :].expand(n, n).clone()


def global_blocks(n: int, num_global: int) -> torch.Tensor:
    """The first num_global blocks attend to everything and are attended by everything."""
    i = torch.arange(n)
    return (i[:, None] < num_global) | (i[None, :] < num_global)


def random_blocks(n: int, num_random: int, seed: int) -> torch.Tensor:
    """BigBird random: each query block keeps num_random key blocks drawn with a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    layout = torch.zeros(n, n, dtype=torch.bool)
    k = min(num_random, n)
    for row in range(n):
        layout[row, torch.randperm(n, generator=gen)[:k]] = True
    return layout


def _term(name: str, n: int, block_size: int, window: int, stride: int, num_global: int, num_random: int,
          seed: int) -> torch.Tensor:
    makers = {
        "dense": lambda: dense(n),
        "local": lambda: local(n, max(1, -(-window // block_size))),
        "butterfly": lambda: butterfly(n),
        "strided": lambda: strided(n, stride),
        "fixed": lambda: fixed(n, stride),
        "global": lambda: global_blocks(n, num_global),
        "random": lambda: random_blocks(n, num_random, seed),
    }
    if name not in makers:
        raise ValueError(f"unknown sparsity pattern '{name}'; choose from {', '.join(makers)}, combined with "
                         "'+' (union) or '&' (intersection), e.g. pattern=local+global")
    return makers[name]()


def build_layout(pattern: str, seq_len: int, block_size: int = 128, *, window: int = 256, stride: int = 4,
                 num_global: int = 1, num_random: int = 2, seed: int = 0) -> torch.Tensor:
    """Layout (ceil(N / block_size) per side) for a pattern expression such as "local+global" or "local&strided".

    window is in tokens (rounded up to whole blocks); stride, num_global and num_random count blocks.
    """
    n = -(-seq_len // block_size)
    layout = torch.zeros(n, n, dtype=torch.bool)
    for union_term in pattern.replace(" ", "").split("+"):
        part = torch.ones(n, n, dtype=torch.bool)
        for name in union_term.split("&"):
            part &= _term(name, n, block_size, window, stride, num_global, num_random, seed)
        layout |= part
    return layout


def layout_density(layout: torch.Tensor, seq_len: int, block_size: int, causal: bool) -> float:
    """Fraction of the N x N score matrix a layout keeps (element-exact, causal diagonal halves included)."""
    if layout.dim() == 3:
        return sum(layout_density(h, seq_len, block_size, causal) for h in layout) / layout.shape[0]
    n = layout.shape[-1]
    sizes = torch.full((n,), block_size, dtype=torch.float64)
    sizes[-1] = seq_len - block_size * (n - 1)
    area = sizes[:, None] * sizes[None, :]
    if causal:
        area = torch.tril(area, -1) + torch.diag(sizes * (sizes + 1) / 2)
    return float((area * layout).sum() / (seq_len * seq_len))
