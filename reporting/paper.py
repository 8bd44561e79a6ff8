"""The FlashAttention paper's published numbers, for "paper (A100)" columns next to ours (never mixed in).

Source: Tri Dao, Daniel Y. Fu, Stefano Ermon, Atri Rudra, Christopher Ré, "FlashAttention: Fast and
Memory-Efficient Exact Attention with IO-Awareness", NeurIPS 2022, arXiv:2205.14135 (v2).
Kernel tables: Appendix E.6, Tables 9-21: one A100 40 GB, batch 16, 8 heads, head dim 64, fp16, dropout 0.1,
"masking" = a *padding* mask (random lengths in [N-20, N]), not a causal mask; mean of 100 calls.
Memory (Table 21) is measured for fwd+bwd without dropout or masking.
"""

CITATION = "Dao et al., FlashAttention, NeurIPS 2022 (arXiv:2205.14135)"
PAPER_URL = "https://arxiv.org/abs/2205.14135"
BENCH_SETUP = dict(batch=16, heads=8, head_dim=64, dtype="float16", dropout_p=0.1, gpu="A100 40GB")

SEQ_LENS = (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
_ = None  # "-" in the paper: out of memory or unsupported

# (pass, dropout, masking) -> table number and runtime (ms) per method, indexed like SEQ_LENS.
RUNTIME_TABLES: dict[tuple[str, bool, bool], tuple[int, dict[str, list]]] = {
    ("fwd", True, True): (9, {
        "PyTorch Attention": [0.36, 0.34, 0.78, 2.54, 9.33, 36.33, _, _, _, _],
        "Megatron": [0.40, 0.40, 1.10, 3.65, 16.19, _, _, _, _, _],
        "FlashAttention": [0.04, 0.06, 0.21, 0.82, 2.85, 10.41, 41.74, 167.19, 670.76, 2682.35],
        "Block-Sparse FlashAttention": [0.06, 0.06, 0.06, 0.12, 0.44, 0.86, 1.70, 3.29, 6.55, 13.34]}),
    ("bwd", True, True): (10, {
        "PyTorch Attention": [0.37, 0.49, 1.66, 5.81, 22.32, 87.67, _, _, _, _],
        "Megatron": [0.35, 0.32, 0.77, 2.42, 8.43, _, _, _, _, _],
        "FlashAttention": [0.30, 0.26, 0.68, 2.02, 6.84, 26.89, 105.70, 418.96, 1666.89, 6660.44],
        "Block-Sparse FlashAttention": [0.30, 0.27, 0.29, 0.59, 1.50, 2.94, 5.82, 11.85, 23.98, 47.61]}),
    ("fwd+bwd", True, True): (11, {
        "PyTorch Attention": [0.84, 0.86, 2.35, 8.29, 31.75, 124.19, _, _, _, _],
        "Megatron": [0.87, 0.89, 1.33, 4.21, 16.50, _, _, _, _, _],
        "FlashAttention": [0.43, 0.41, 0.95, 2.55, 9.56, 37.49, 147.75, 586.61, 2339.11, 9341.30],
        "Block-Sparse FlashAttention": [0.44, 0.44, 0.45, 0.89, 1.95, 4.12, 7.64, 16.60, 32.73, 64.11]}),
    ("fwd", False, True): (12, {
        "PyTorch Attention": [0.30, 0.30, 0.63, 1.93, 7.08, 27.45, 112.90, _, _, _],
        "Megatron": [0.45, 0.41, 0.43, 1.52, 5.80, _, _, _, _, _],
        "FlashAttention": [0.03, 0.04, 0.17, 0.68, 2.28, 8.40, 33.55, 134.14, 537.50, 2150.88],
        "Block-Sparse FlashAttention": [0.05, 0.04, 0.05, 0.11, 0.35, 0.68, 1.33, 2.54, 5.34, 10.73]}),
    ("bwd", False, True): (13, {
        "PyTorch Attention": [0.44, 0.46, 1.53, 5.33, 20.34, 79.87, _, _, _, _],
        "Megatron": [0.29, 0.31, 0.65, 1.95, 6.49, _, _, _, _, _],
        "FlashAttention": [0.21, 0.22, 0.62, 1.84, 5.77, 22.25, 86.21, 338.91, 1343.91, 5361.09],
        "Block-Sparse FlashAttention": [0.22, 0.22, 0.26, 0.57, 1.55, 3.13, 5.98, 12.21, 23.49, 47.85]}),
    ("fwd+bwd", False, True): (14, {
        "PyTorch Attention": [0.80, 0.81, 2.08, 7.23, 27.51, 107.58, _, _, _, _],
        "Megatron": [0.81, 0.83, 1.09, 3.36, 12.39, _, _, _, _, _],
        "FlashAttention": [0.32, 0.30, 0.83, 2.37, 7.95, 30.77, 119.98, 473.65, 1883.43, 7513.01],
        "Block-Sparse FlashAttention": [0.34, 0.34, 0.36, 0.69, 1.85, 3.89, 7.16, 14.85, 30.46, 60.03]}),
    ("fwd", True, False): (15, {
        "PyTorch Attention": [0.26, 0.24, 0.57, 1.80, 6.56, 25.34, _, _, _, _],
        "Megatron": [0.27, 0.27, 0.56, 1.88, 6.56, _, _, _, _, _],
        "FlashAttention": [0.10, 0.10, 0.22, 0.83, 2.81, 10.38, 41.63, 167.01, 668.74, 2678.11],
        "Block-Sparse FlashAttention": [0.54, 0.51, 0.68, 0.61, 0.67, 1.10, 1.89, 3.71, 7.18, 14.41]}),
    ("bwd", True, False): (16, {
        "PyTorch Attention": [0.44, 0.35, 0.90, 2.94, 10.77, 41.67, _, _, _, _],
        "Megatron": [0.28, 0.33, 0.92, 2.94, 10.80, _, _, _, _, _],
        "FlashAttention": [0.15, 0.18, 0.58, 1.86, 6.50, 26.21, 104.27, 416.10, 1661.92, 6643.01],
        "Block-Sparse FlashAttention": [0.17, 0.17, 0.17, 0.40, 1.10, 2.04, 4.43, 9.33, 18.28, 37.31]}),
    ("fwd+bwd", True, False): (17, {
        "PyTorch Attention": [0.66, 0.67, 1.43, 4.82, 17.47, 67.29, _, _, _, _],
        "Megatron": [0.88, 0.90, 1.49, 4.73, 17.41, _, _, _, _, _],
        "FlashAttention": [0.35, 0.36, 0.80, 2.52, 9.16, 36.70, 146.13, 583.45, 2332.01, 9323.63],
        "Block-Sparse FlashAttention": [0.91, 0.83, 0.94, 0.92, 1.83, 3.50, 7.02, 13.56, 26.71, 53.92]}),
    ("fwd", False, False): (18, {
        "PyTorch Attention": [0.21, 0.22, 0.43, 1.27, 4.32, 16.47, 67.77, _, _, _],
        "Megatron": [0.24, 0.26, 0.42, 1.33, 4.28, _, _, _, _, _],
        "FlashAttention": [0.08, 0.09, 0.18, 0.68, 2.40, 8.42, 33.54, 134.03, 535.95, 2147.05],
        "Block-Sparse FlashAttention": [0.56, 0.52, 0.63, 0.65, 0.61, 0.96, 1.69, 3.02, 5.69, 11.77]}),
    ("bwd", False, False): (19, {
        "PyTorch Attention": [0.26, 0.29, 0.78, 2.44, 8.82, 33.87, _, _, _, _],
        "Megatron": [0.29, 0.30, 0.80, 2.59, 8.86, _, _, _, _, _],
        "FlashAttention": [0.11, 0.16, 0.52, 1.62, 5.45, 21.57, 84.75, 336.00, 1338.56, 5343.19],
        "Block-Sparse FlashAttention": [0.11, 0.12, 0.16, 0.38, 1.20, 2.34, 4.69, 9.10, 18.74, 37.04]}),
    ("fwd+bwd", False, False): (20, {
        "PyTorch Attention": [0.67, 0.70, 1.18, 3.67, 13.22, 50.44, _, _, _, _],
        "Megatron": [0.74, 0.65, 1.23, 3.80, 13.21, _, _, _, _, _],
        "FlashAttention": [0.31, 0.31, 0.73, 2.29, 7.64, 30.09, 118.50, 470.51, 1876.08, 7492.85],
        "Block-Sparse FlashAttention": [0.74, 0.77, 0.82, 0.88, 1.71, 3.21, 6.56, 12.60, 24.93, 50.39]}),
}

# Table 21: memory (MB) of fwd+bwd, no dropout, no masking.
MEMORY_TABLE = (21, {
    "PyTorch Attention": [36, 104, 336, 1184, 4416, 17024, _, _, _, _],
    "Megatron": [36, 104, 336, 1184, 4416, _, _, _, _, _],
    "FlashAttention": [22, 44, 104, 209, 418, 836, 1672, 3344, 6688, 13376],
    "Block-Sparse FlashAttention": [22, 44, 104, 209, 418, 836, 1672, 3344, 6690, 13384],
})

# Our backends -> the paper's row they correspond to.
BACKEND_TO_PAPER = {
    "naive": "PyTorch Attention",
    "flash": "FlashAttention",
    "block_sparse": "Block-Sparse FlashAttention",
}

# Table 2 (8xA100, OpenWebText, seq 1K): training time in days and speedup over HuggingFace.
GPT2_TRAINING = {
    ("gpt2", "hf"): dict(ppl=18.2, days=9.5, speedup=1.0),
    ("gpt2", "megatron"): dict(ppl=18.2, days=4.7, speedup=2.0),
    ("gpt2", "flash"): dict(ppl=18.2, days=2.7, speedup=3.5),
    ("gpt2-medium", "hf"): dict(ppl=14.2, days=21.0, speedup=1.0),
    ("gpt2-medium", "megatron"): dict(ppl=14.3, days=11.5, speedup=1.8),
    ("gpt2-medium", "flash"): dict(ppl=14.3, days=6.9, speedup=3.0),
}

# Table 4 (GPT-2 small, 8xA100): context length vs training time, speedup over Megatron-LM at 1K.
GPT2_LONG_CONTEXT = {
    ("megatron", 1024): dict(ppl=18.2, days=4.7, speedup=1.0),
    ("flash", 1024): dict(ppl=18.2, days=2.7, speedup=1.7),
    ("flash", 2048): dict(ppl=17.6, days=3.0, speedup=1.6),
    ("flash", 4096): dict(ppl=17.5, days=3.6, speedup=1.3),
}

# Figure 2 (left): GPT-2 medium attention, N=1024, d=64, 16 heads, batch 64, fwd+bwd on A100.
FIG2_GPT2_MEDIUM = dict(
    shape=dict(batch=64, heads=16, seq_len=1024, head_dim=64),
    standard=dict(gflops=66.6, hbm_gb=40.3, runtime_ms=41.7),
    flash=dict(gflops=75.2, hbm_gb=4.4, runtime_ms=7.3),
)


def paper_runtime(backend: str, seq_len: int, *, pass_: str = "fwd+bwd", dropout: bool, mask: bool):
    """The paper's runtime (ms) for the row matching one of our backends, or None."""
    row = BACKEND_TO_PAPER.get(backend)
    if row is None or seq_len not in SEQ_LENS:
        return None
    return RUNTIME_TABLES[(pass_, dropout, mask)][1][row][SEQ_LENS.index(seq_len)]


def paper_memory_mb(backend: str, seq_len: int):
    row = BACKEND_TO_PAPER.get(backend)
    if row is None or seq_len not in SEQ_LENS:
        return None
    return MEMORY_TABLE[1][row][SEQ_LENS.index(seq_len)]
