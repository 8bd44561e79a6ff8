"""A model from anything a user can name: a train.py run directory or ckpt.pt, a GPT-2 hub name or a
save_pretrained directory (what scripts/sample.py, eval.py and export_hf.py accept)."""

from __future__ import annotations

from pathlib import Path

from model import GPT

from .checkpoint import load_checkpoint


def load_any(source: str, attn: str = "sdpa", map_location="cpu", **overrides) -> tuple[GPT, str]:
    """(model in eval mode, tokenizer name) from a train.py checkpoint or a GPT-2 hub name / directory."""
    path = Path(source).expanduser()
    if path.is_file() or (path / "ckpt.pt").is_file():
        ckpt = load_checkpoint(path, map_location=map_location)
        model = GPT.from_checkpoint(ckpt, attn=attn, **overrides)
        data_cfg = (ckpt.get("config") or {}).get("data") or {}
        tokenizer = data_cfg.get("tokenizer") or ("bytes" if model.config.vocab_size <= 256 else "gpt2")
        return model.to(map_location).eval(), tokenizer
    return GPT.from_pretrained(source, attn=attn, **overrides).to(map_location).eval(), "gpt2"
