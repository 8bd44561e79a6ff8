"""Offline GPT-2 tokenizer: the ranks file is used only with the expected sha256; fetch refuses bad archives."""

import base64
import hashlib
import io
import tarfile

import pytest

from training import tokenizer as tk

REAL = tk.ranks_path()
needs_real = pytest.mark.skipif(not REAL.exists(), reason=f"no GPT-2 ranks file at {REAL}; run "
                                                          f"`python -m training.tokenizer --fetch` to enable")


def write_ranks(path, merges=(b"he", b"ll", b"hell", b"hello")):
    tokens = [bytes([i]) for i in range(256)] + list(merges)
    path.write_bytes(b"".join(base64.b64encode(t) + b" %d\n" % i for i, t in enumerate(tokens)))
    return hashlib.sha256(path.read_bytes()).hexdigest(), len(tokens)


def fake_sdist(path, payload: bytes):
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(f"openai_whisper-20250625/{tk.WHISPER_ASSET}")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return path


def test_synthetic_ranks_load_and_round_trip(tmp_path):
    path = tmp_path / "toy.tiktoken"
    sha, n = write_ranks(path)
    enc = tk.encoding_from_file(path, expected_sha256=sha, name="toy", special_tokens={"<|endoftext|>": n},
                                n_vocab=n + 1)
    ids = enc.encode_ordinary("hello world")
    assert ids[0] == n - 1  # "hello" is the last merge
    assert enc.decode(ids) == "hello world"


def test_tampered_ranks_file_is_refused(tmp_path):
    path = tmp_path / "toy.tiktoken"
    sha, _ = write_ranks(path)
    path.write_bytes(path.read_bytes().replace(b" 259\n", b" 258\n"))
    with pytest.raises(tk.TokenizerError, match="sha256"):
        tk.encoding_from_file(path, expected_sha256=sha)


def test_tampered_cached_file_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHGPT_TOKENIZER_DIR", str(tmp_path))
    write_ranks(tmp_path / "gpt2.tiktoken")  # a valid ranks file, but not GPT-2's
    with pytest.raises(tk.TokenizerError, match="corrupt or not the GPT-2 vocabulary"):
        tk.get_gpt2_encoding()


def test_missing_file_offline_says_how_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHGPT_TOKENIZER_DIR", str(tmp_path))

    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tk.tiktoken, "get_encoding", offline)
    with pytest.raises(tk.TokenizerError, match="training.tokenizer --fetch"):
        tk.get_gpt2_encoding()


def test_fetch_refuses_an_archive_with_the_wrong_asset(tmp_path):
    sdist = fake_sdist(tmp_path / "openai_whisper-20250625.tar.gz", b"not the gpt2 ranks\n")
    dest = tmp_path / "out" / "gpt2.tiktoken"
    with pytest.raises(tk.TokenizerError, match="refusing"):
        tk.fetch(dest, sdist=sdist)
    assert not dest.exists()


@needs_real
def test_fetch_extracts_and_verifies_the_asset(tmp_path):
    sdist = fake_sdist(tmp_path / "openai_whisper-20250625.tar.gz", REAL.read_bytes())
    dest = tk.fetch(tmp_path / "gpt2.tiktoken", sdist=sdist)
    assert tk.sha256_file(dest) == tk.GPT2_RANKS_SHA256


@needs_real
def test_real_gpt2_encoding():
    enc = tk.get_gpt2_encoding()
    assert enc.n_vocab == 50257 and enc.eot_token == tk.EOT_ID
    assert enc.encode_ordinary("Hello world") == [15496, 995]
    text = "OpenWebText — naïve café, 日本語 <|endoftext|> stays text"
    assert enc.decode(enc.encode_ordinary(text)) == text
