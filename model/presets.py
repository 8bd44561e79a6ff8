"""Model shapes. The GPT-2 family as released (vocab padded to 50304), and tiny presets for CPUs."""

PRESETS: dict[str, dict] = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024),  # 350M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280, block_size=1024),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600, block_size=1024),  # 1558M
    # Small shapes that train on a CPU in minutes (byte-level vocab by default for the embedded corpus).
    "gpt2-nano": dict(n_layer=2, n_head=2, n_embd=64, block_size=128, vocab_size=256),
    "gpt2-tiny": dict(n_layer=4, n_head=4, n_embd=128, block_size=256, vocab_size=256),
    "gpt2-mini": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=256),
}
