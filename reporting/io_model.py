"""Count HBM (GPU main memory) traffic of one attention call: standard attention vs FlashAttention.

A model, not a measurement: it counts the elements each algorithm of the paper reads and writes, exactly as
written there (Algorithm 0 / 3 for standard attention, Algorithm 1 / 4 for FlashAttention), so the totals
can be set against Theorem 2: Θ(Nd + N²) for standard attention, Θ(N²d²/M) for FlashAttention.
Per (batch, head); multiply by batch * heads. M is the on-chip SRAM size in elements.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

STAT_BYTES = 4  # the softmax statistics m, l are kept in fp32


@dataclass(frozen=True)
class Traffic:
    fwd_bytes: float
    bwd_bytes: float

    @property
    def total_bytes(self) -> float:
        return self.fwd_bytes + self.bwd_bytes


def standard_attention(N: int, d: int, *, elt_bytes: int = 2, elementwise_passes: int = 0) -> Traffic:
    """Algorithm 0 (forward) and Algorithm 3 (backward) of the paper.

    `elementwise_passes`: extra N x N passes (each reads and writes the matrix once in the forward, and once
    more in the backward), e.g. 1 for a separate masking kernel, 1 for dropout, 1 for an fp32 upcast.
    """
    nn, nd = N * N, N * d
    # fwd: read Q,K, write S; read S, write P; read P,V, write O.
    fwd = (2 * nd + nn) + (nn + nn) + (nn + nd + nd)
    # bwd: dV = P^T dO; dP = dO V^T; dS = P * (dP - rowsum(dO*O)); dQ = dS K; dK = dS^T Q.
    bwd = (nn + nd + nd) + (2 * nd + nn) + (2 * nn + nn) + (nn + nd + nd) + (nn + nd + nd)
    extra = elementwise_passes * 2 * nn
    return Traffic((fwd + extra) * elt_bytes, (bwd + extra) * elt_bytes)


def flash_block_sizes(d: int, sram_elems: int) -> tuple[int, int]:
    """Algorithm 1, line 1: B_c = ceil(M / 4d), B_r = min(ceil(M / 4d), d)."""
    bc = math.ceil(sram_elems / (4 * d))
    return min(bc, d), bc


def flash_attention(N: int, d: int, *, sram_elems: int, elt_bytes: int = 2, density: float = 1.0) -> Traffic:
    """Algorithm 1 (forward) and Algorithm 4 (backward): K/V blocks in the outer loop, Q/O blocks inside.

    `density`: fraction of (Q block, K block) pairs computed (block-sparse FlashAttention, Algorithm 5).
    """
    _, bc = flash_block_sizes(d, sram_elems)
    t_c = math.ceil(N / bc)
    nd = N * d
    # fwd: K_j, V_j once each; per outer step, read Q_i, O_i, l_i, m_i and write O_i, l_i, m_i for all i.
    fwd = 2 * nd * elt_bytes + density * t_c * (3 * nd * elt_bytes + 4 * N * STAT_BYTES)
    # bwd: K_j, V_j read and dK_j, dV_j written once; per outer step, read Q_i, O_i, dO_i, dQ_i, l_i, m_i and
    # write dQ_i.
    bwd = 4 * nd * elt_bytes + density * t_c * (5 * nd * elt_bytes + 2 * N * STAT_BYTES)
    return Traffic(fwd, bwd)


def attention_layer(batch: int, heads: int, N: int, d: int, *, sram_bytes: int = 192 * 1024,
                    elt_bytes: int = 2, elementwise_passes: int = 0, density: float = 1.0) -> dict:
    """Both algorithms for one attention layer of a model; bytes summed over batch and heads."""
    bh = batch * heads
    std = standard_attention(N, d, elt_bytes=elt_bytes, elementwise_passes=elementwise_passes)
    fl = flash_attention(N, d, sram_elems=sram_bytes // elt_bytes, elt_bytes=elt_bytes, density=density)
    return {
        "shape": dict(batch=batch, heads=heads, seq_len=N, head_dim=d, sram_bytes=sram_bytes,
                      elt_bytes=elt_bytes, elementwise_passes=elementwise_passes, density=density),
        "standard_gb": bh * std.total_bytes / 1e9,
        "flash_gb": bh * fl.total_bytes / 1e9,
        "standard_fwd_gb": bh * std.fwd_bytes / 1e9,
        "flash_fwd_gb": bh * fl.fwd_bytes / 1e9,
        "ratio": std.total_bytes / fl.total_bytes,
        # Theorem 2's leading terms in elements (constants dropped): Nd + N^2 and N^2 d^2 / M.
        "theta_standard": bh * (N * d + N * N),
        "theta_flash": bh * N * N * d * d / (sram_bytes // elt_bytes),
    }


def attention_flops(batch: int, heads: int, N: int, d: int, *, recompute: bool) -> float:
    """Matmul FLOPs of fwd+bwd: 2 matmuls forward (4N²d), 4 backward (8N²d); recomputing S = QK^T in the
    backward (FlashAttention) adds one more (2N²d)."""
    per_head = 4 * N * N * d + 8 * N * N * d + (2 * N * N * d if recompute else 0)
    return batch * heads * per_head


def main() -> None:
    """Print the table quoted in docs/how-flash-attention-works.md."""
    print("| layer | N | standard fwd+bwd (GB) | flash fwd+bwd (GB) | ratio | Θ(Nd+N²) / Θ(N²d²/M) |")
    print("|---|---|---|---|---|---|")
    for name, (b, h, d) in {"GPT-2 small, batch 8": (8, 12, 64), "GPT-2 medium, batch 64": (64, 16, 64)}.items():
        for n in (1024, 2048, 4096):
            r = attention_layer(b, h, n, d, elementwise_passes=2)
            print(f"| {name} | {n} | {r['standard_gb']:.2f} | {r['flash_gb']:.2f} | {r['ratio']:.1f}× | "
                  f"{r['theta_standard'] / r['theta_flash']:.1f}× |")
    b, h, n, d = 8, 12, 1024, 64
    plain, fused = attention_flops(b, h, n, d, recompute=False), attention_flops(b, h, n, d, recompute=True)
    print(f"\nmatmul GFLOPs, GPT-2 small layer (batch 8, N=1024): standard {plain / 1e9:.1f}, "
          f"with recomputation {fused / 1e9:.1f} (+{100 * (fused / plain - 1):.0f}%)")


if __name__ == "__main__":
    main()
