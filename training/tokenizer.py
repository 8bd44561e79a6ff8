"""GPT-2 BPE (tiktoken's `gpt2`, identical to `r50k_base`) that works offline.

tiktoken downloads its ranks file on first use. Without that network, `python -m training.tokenizer --fetch`
gets the same file from PyPI instead: the openai-whisper source archive ships `whisper/assets/gpt2.tiktoken`,
byte-identical to r50k_base.tiktoken. Whatever the source, the file is used only if its sha256 is the one
tiktoken itself expects; a mismatch is an error.

Lookup order: $FLASHGPT_TOKENIZER_DIR (default ~/.cache/flashgpt)/gpt2.tiktoken, then tiktoken's own download.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path

import tiktoken
from tiktoken.load import load_tiktoken_bpe

GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"  # tiktoken's r50k_base
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"
EOT_ID = 50256
VOCAB_SIZE = 50257
WHISPER_SDIST = "openai-whisper==20250625"
WHISPER_ASSET = "whisper/assets/gpt2.tiktoken"
FETCH_HINT = "python -m training.tokenizer --fetch"


class TokenizerError(RuntimeError):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("FLASHGPT_TOKENIZER_DIR", Path.home() / ".cache" / "flashgpt"))


def ranks_path() -> Path:
    return cache_dir() / "gpt2.tiktoken"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: str | Path, expected: str = GPT2_RANKS_SHA256) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise TokenizerError(
            f"GPT-2 ranks file {path} has sha256 {actual}, expected {expected}: it is corrupt or not the GPT-2 "
            f"vocabulary. Delete it and run `{FETCH_HINT}`.")


def encoding_from_file(path: str | Path, expected_sha256: str = GPT2_RANKS_SHA256, name: str = "gpt2",
                       special_tokens: dict[str, int] | None = None,
                       n_vocab: int | None = VOCAB_SIZE) -> tiktoken.Encoding:
    """A tiktoken Encoding from a `.tiktoken` ranks file, after checking its sha256 (tests pass their own)."""
    verify(path, expected_sha256)
    ranks = load_tiktoken_bpe(str(path))
    return tiktoken.Encoding(name=name, pat_str=GPT2_PAT_STR, mergeable_ranks=ranks,
                             special_tokens={EOT: EOT_ID} if special_tokens is None else special_tokens,
                             explicit_n_vocab=n_vocab)


@cache
def _cached(path: str, mtime: float) -> tiktoken.Encoding:
    return encoding_from_file(path)


def get_gpt2_encoding() -> tiktoken.Encoding:
    """The GPT-2 encoding: the verified local ranks file if present, else tiktoken's own (needs its download)."""
    path = ranks_path()
    if path.exists():
        return _cached(str(path), path.stat().st_mtime)
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # tiktoken raises requests' errors, or ValueError on a bad download
        raise TokenizerError(
            f"the GPT-2 tokenizer is not available offline ({type(e).__name__}: {str(e)[:200]}). "
            f"Run `{FETCH_HINT}` (downloads {WHISPER_SDIST} from PyPI and extracts its verified gpt2.tiktoken "
            f"to {path}), or set FLASHGPT_TOKENIZER_DIR to a directory holding gpt2.tiktoken.") from None


def codec(tokenizer: str) -> tuple[Callable[[str], list[int]], Callable[[list[int]], str]]:
    """(encode, decode) for the tokenizer a model was trained with: "bytes" (UTF-8) or "gpt2" (BPE)."""
    if tokenizer == "bytes":
        return (lambda s: list(s.encode("utf-8"))), (lambda ids: bytes(ids).decode("utf-8", errors="replace"))
    enc = get_gpt2_encoding()
    return (lambda s: enc.encode(s, allowed_special={"<|endoftext|>"})), enc.decode


def tokenizer_hash() -> str:
    """sha256 of the ranks file behind the GPT-2 encoding (recorded in meta.json)."""
    return GPT2_RANKS_SHA256


def fetch(dest: str | Path | None = None, sdist: str | Path | None = None) -> Path:
    """Put a verified gpt2.tiktoken at `dest` (default: ranks_path()), from a local sdist or PyPI via pip."""
    dest = Path(dest) if dest is not None else ranks_path()
    if dest.exists():
        verify(dest)
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        if sdist is None:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   "-d", tmp, WHISPER_SDIST]
            done = subprocess.run(cmd, capture_output=True, text=True)
            archives = list(Path(tmp).glob("openai_whisper-*.tar.gz")) + list(Path(tmp).glob("openai-whisper-*.tar.gz"))
            if not archives:
                raise TokenizerError(f"`{' '.join(cmd)}` did not produce the sdist (exit {done.returncode}):\n"
                                     f"{done.stderr[-2000:]}\nCheck that PyPI is reachable, or pass --sdist PATH.")
            sdist = archives[0]
        with tarfile.open(sdist) as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith(WHISPER_ASSET)), None)
            if member is None:
                raise TokenizerError(f"{sdist} has no {WHISPER_ASSET}; use the {WHISPER_SDIST} source archive.")
            data = tar.extractfile(member).read()
        actual = hashlib.sha256(data).hexdigest()
        if actual != GPT2_RANKS_SHA256:
            raise TokenizerError(f"{WHISPER_ASSET} in {sdist} has sha256 {actual}, expected {GPT2_RANKS_SHA256}; "
                                 f"refusing it.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = dest.with_suffix(f".tmp{os.getpid()}")
    tmp_path.write_bytes(data)
    os.replace(tmp_path, dest)
    return dest


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fetch", action="store_true", help="download and verify the GPT-2 ranks file")
    p.add_argument("--sdist", help="use this openai-whisper .tar.gz instead of downloading it")
    p.add_argument("--dest", help=f"where to put it (default: {ranks_path()})")
    p.add_argument("--encode", metavar="TEXT", help="print the token ids of TEXT")
    args = p.parse_args(argv)
    if args.fetch:
        print(f"GPT-2 ranks file verified (sha256 {GPT2_RANKS_SHA256[:12]}...): {fetch(args.dest, args.sdist)}")
    if args.encode is not None:
        print(get_gpt2_encoding().encode_ordinary(args.encode))
    if not args.fetch and args.encode is None:
        p.print_help()


if __name__ == "__main__":
    try:
        main()
    except TokenizerError as e:
        sys.exit(f"error: {e}")
