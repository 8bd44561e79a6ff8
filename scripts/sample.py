"""Generate text from a train.py checkpoint or a GPT-2 (hub name or save_pretrained directory).

  python scripts/sample.py outputs/<date>/<time> --prompt "The meaning of life" --attn flash
  python scripts/sample.py gpt2 --num-samples 3 --max-new-tokens 100 --temperature 0.8 --top-k 200
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from model.attention import UnsupportedAttentionError, available_backends, get_backend
from training.sources import load_any
from training.tokenizer import codec


def read_prompt(prompt: str) -> str:
    """The prompt text; FILE:path reads the file."""
    if not prompt.startswith("FILE:"):
        return prompt
    try:
        return Path(prompt[5:]).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise SystemExit(f"error: cannot read the prompt file '{prompt[5:]}' ({getattr(e, 'strerror', None) or e}); "
                         f"pass an existing UTF-8 text file with --prompt FILE:<path>, or the text itself") from None


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv=None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="run directory / ckpt.pt, GPT-2 hub name (gpt2, gpt2-medium, ...) or HF directory")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline); FILE:path reads a file")
    p.add_argument("--num-samples", type=int, default=1, help="samples to draw (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=200,
                   help="tokens to generate per sample (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.8, help="softmax temperature (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=200, help="0: no top-k truncation (default: %(default)s)")
    p.add_argument("--attn", default="sdpa",
                   help=f"attention backend: {', '.join(available_backends())} (default: %(default)s)")
    p.add_argument("--seed", type=int, default=1337, help="sampling seed (default: %(default)s)")
    p.add_argument("--device", default=default_device(), help="default: %(default)s")
    args = p.parse_args(argv)

    model, tokenizer = load_any(args.model, attn=args.attn, map_location=args.device)
    model.check_attention(args.device, torch.float32)
    print(f"model: {args.model} ({model.num_params() / 1e6:.2f}M params), tokenizer: {tokenizer}, "
          f"backend: {get_backend(model.config.attn).describe(model.config.attn_options)}, device: {args.device}")
    encode, decode = codec(tokenizer)
    prompt = read_prompt(args.prompt)
    ids = encode(prompt)
    if not ids:
        raise SystemExit("error: the prompt encodes to no tokens; pass a non-empty --prompt")
    x = torch.tensor([ids], dtype=torch.long, device=args.device)
    g = torch.Generator(device=args.device).manual_seed(args.seed)
    samples = []
    for _ in range(args.num_samples):
        y = model.generate(x, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k or None,
                           generator=g)
        samples.append(decode(y[0].tolist()))
        print(samples[-1])
        print("---------------")
    return samples


if __name__ == "__main__":
    from training.checkpoint import CheckpointError
    from training.tokenizer import TokenizerError

    try:
        main()
    except UnsupportedAttentionError as e:
        sys.exit(f"error: {e} Choose it with --attn NAME.")
    except (CheckpointError, TokenizerError, ValueError) as e:  # ValueError: bad model name/dir, backend
        sys.exit(f"error: {e}")
