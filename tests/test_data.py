"""The embedded corpus, random-window batches (deterministic, resumable) and the data-dir checks."""

import json

import numpy as np
import pytest
import torch

from training.corpus import main as corpus_main
from training.corpus import prepare_stdlib_docs
from training.data import DataError, TokenBatches, check_vocab, prepare_data


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return prepare_stdlib_docs(tmp_path_factory.mktemp("data") / "stdlib_docs")


def test_corpus_follows_the_data_dir_contract(corpus):
    meta = json.loads((corpus / "meta.json").read_text())
    assert meta["tokenizer"] == "bytes" and meta["vocab_size"] == 256
    train = np.memmap(corpus / "train.bin", dtype=np.uint16, mode="r")
    assert len(train) == meta["train_tokens"] > 1_000_000
    assert bytes(train[:2000].astype(np.uint8)).decode("utf-8", errors="ignore").count(" ") > 100  # real text


def test_batches_are_shifted_windows(corpus):
    x, y = TokenBatches(corpus, "train", 4, 32, torch.device("cpu"), seed=0).next()
    assert x.shape == y.shape == (4, 32) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_batches_are_deterministic_per_seed_and_rank_and_resumable(corpus):
    def make(seed=0, rank=0):
        return TokenBatches(corpus, "train", 2, 16, torch.device("cpu"), seed=seed, rank=rank)

    a, b = make(), make()
    assert torch.equal(a.next()[0], b.next()[0])
    assert not torch.equal(make(rank=1).next()[0], make(rank=0).next()[0])
    state = a.state_dict()
    expected = a.next()[0]
    c = make()  # a resumed run: same seed, position from the checkpoint
    c.load_state_dict(state)
    assert torch.equal(c.next()[0], expected)
    assert not torch.equal(make(seed=99).next()[0], make().next()[0])


def test_the_global_batch_does_not_depend_on_how_it_is_split(corpus):
    def make(rank, world_size):
        return TokenBatches(corpus, "train", 2, 16, torch.device("cpu"), seed=0, rank=rank, world_size=world_size)

    one = make(0, 1)  # one process, grad_accum=2: two micro-batches per step
    ranks = [make(0, 2), make(1, 2)]  # two ranks, grad_accum=1
    for _ in range(3):
        assert torch.equal(one.next()[0], ranks[0].next()[0])
        assert torch.equal(one.next()[0], ranks[1].next()[0])


def test_missing_data_says_how_to_prepare(tmp_path):
    with pytest.raises(DataError, match="python scripts/prepare_openwebtext.py"):
        prepare_data({"name": "openwebtext", "dir": str(tmp_path / "nothing"),
                      "prepare": "python scripts/prepare_openwebtext.py"})
    assert not (tmp_path / "nothing").exists()


def test_embedded_corpus_is_built_on_first_use(tmp_path):
    path, meta = prepare_data({"name": "stdlib_docs", "dir": str(tmp_path / "docs")})
    assert meta["vocab_size"] == 256 and (path / "train.bin").is_file()


def test_corpus_command_leaves_a_complete_build_and_refuses_other_files(corpus, tmp_path, capsys):
    """conf/data/stdlib_docs.yaml's prepare command, run again over the corpus train.py built, is not an error."""
    before = {f.name: f.stat().st_mtime_ns for f in corpus.iterdir()}
    corpus_main(str(corpus))
    assert capsys.readouterr().out.strip() == f"{corpus} (already built)"
    assert {f.name: f.stat().st_mtime_ns for f in corpus.iterdir()} == before
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="not made by this builder"):
        corpus_main(str(tmp_path))
    assert [f.name for f in tmp_path.iterdir()] == ["notes.txt"]


def test_vocab_mismatch_is_an_error(corpus):
    with pytest.raises(DataError, match="vocab_size"):
        check_vocab({"tokenizer": "gpt2", "vocab_size": 50257}, 256, corpus)
    check_vocab({"tokenizer": "bytes", "vocab_size": 256}, 50304, corpus)
