"""scripts/sample.py, eval.py and the export behind export_hf.py on tiny checkpoints and tiny transformers GPT-2s."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from script_loader import load_script
from transformers import GPT2Config, GPT2LMHeadModel

from model import GPT, GPTConfig
from reporting.evaluation import EvalError
from training.checkpoint import save_checkpoint
from training.export import ExportError, export
from training.tokenizer import ranks_path

ROOT = Path(__file__).resolve().parent.parent

eval_script, sample = load_script("eval"), load_script("sample")


def write_ckpt(run_dir, vocab_size, tokenizer, seed=0, config=None):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=64, n_layer=2, n_head=4, n_embd=32))
    run_dir.mkdir(parents=True)
    save_checkpoint({"model": model.state_dict(), "model_config": model.config_dict(), "step": 0,
                     "config": config or {"data": {"tokenizer": tokenizer}}}, run_dir / "ckpt.pt")
    return model.eval()


def write_data(path, tokens, tokenizer, vocab_size):
    path.mkdir(parents=True)
    np.asarray(tokens, dtype=np.uint16).tofile(path / "val.bin")
    np.asarray(tokens, dtype=np.uint16).tofile(path / "train.bin")
    (path / "meta.json").write_text(json.dumps({"tokenizer": tokenizer, "vocab_size": vocab_size,
                                                "train_tokens": len(tokens), "val_tokens": len(tokens)}))
    return path


@pytest.fixture(scope="module")
def bytes_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "bytes"
    return run, write_ckpt(run, 256, "bytes")


def test_export_round_trip_with_padded_vocab(tmp_path):
    model = write_ckpt(tmp_path / "run", 50304, "gpt2")
    out = export(str(tmp_path / "run"), tmp_path / "hf")
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert hf.config.vocab_size == 50257 and hf.config.n_positions == 64
    x = torch.randint(0, 50257, (2, 64))
    with torch.no_grad():
        ours = model(x)[0][..., :50257]
        torch.testing.assert_close(hf(x).logits, ours, atol=1e-4, rtol=0)
        back = GPT.from_pretrained(str(out), attn="naive").eval()
        torch.testing.assert_close(back(x)[0], ours, atol=1e-4, rtol=0)


def test_export_keeps_a_byte_vocab(bytes_run, tmp_path):
    export(str(bytes_run[0] / "ckpt.pt"), tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["vocab_size"] == 256


def test_sample_is_seeded_and_names_the_backend(bytes_run, capsys):
    args = [str(bytes_run[0]), "--prompt", "def ", "--max-new-tokens", "12", "--attn", "naive", "--device", "cpu"]
    first = sample.main(args)
    assert "backend: naive" in capsys.readouterr().out
    assert first == sample.main(args) and first[0].startswith("def ")
    assert first != sample.main([*args, "--seed", "7"])


@pytest.mark.parametrize("script", ["sample", "eval"])
def test_a_refused_backend_names_the_scripts_own_flag(bytes_run, script, tmp_path):
    """The backend registry's refusal lists the alternatives; each command line adds how it takes them (`--attn`
    here, `attn=` in train.py), so no one is told to type another program's syntax."""
    data = write_data(tmp_path / "data", np.zeros(200, dtype=np.int64), "bytes", 256)
    args = [str(bytes_run[0]), "--attn", "flash", "--device", "cpu", *(["--data", str(data)] * (script == "eval"))]
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / f"{script}.py"), *args], capture_output=True,
                         text=True, cwd=ROOT, timeout=300)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert "attention backend 'flash' does not support" in run.stderr and "choose another backend: " in run.stderr
    assert run.stderr.strip().endswith(". Choose it with --attn NAME.") and "attn=" not in run.stderr


@pytest.mark.skipif(not ranks_path().exists(), reason=f"no GPT-2 ranks file at {ranks_path()}")
def test_sample_from_a_gpt2_directory(tmp_path, capsys):
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_positions=32, n_embd=32, n_layer=1, n_head=2)).save_pretrained(tmp_path)
    out = sample.main([str(tmp_path), "--prompt", "Hello", "--max-new-tokens", "4", "--attn", "sdpa",
                       "--num-samples", "2", "--device", "cpu"])
    assert len(out) == 2 and all(s.startswith("Hello") for s in out)
    assert "backend: sdpa" in capsys.readouterr().out


def test_eval_matches_the_model_loss(bytes_run, tmp_path, capsys):
    run, model = bytes_run
    tokens = np.random.default_rng(0).integers(0, 256, 2000)
    data = write_data(tmp_path / "data", tokens, "bytes", 256)
    result = eval_script.main([str(run), "--data", str(data), "--seq-len", "32", "--batch-size", "5",
                               "--attn", "naive", "--device", "cpu", "--json", str(tmp_path / "r.json")])
    n = (len(tokens) - 1) // 32
    w = torch.from_numpy(np.stack([tokens[i * 32:i * 32 + 33] for i in range(n)]).astype(np.int64))
    with torch.no_grad():
        expected = model(w[:, :-1], w[:, 1:])[1].item()
    assert result["tokens"] == n * 32 and result["loss"] == pytest.approx(expected, abs=1e-5)
    assert result["ppl"] == pytest.approx(math.exp(expected), rel=1e-5)
    assert json.loads((tmp_path / "r.json").read_text())["backend"] == "naive"
    assert "backend: naive" in capsys.readouterr().out


def test_eval_of_a_gpt2_directory_matches_transformers(tmp_path):
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_positions=64, n_embd=32, n_layer=2, n_head=4)).eval()
    hf.save_pretrained(tmp_path / "hf")
    tokens = np.random.default_rng(0).integers(0, 50257, 64 * 3 + 1)
    data = write_data(tmp_path / "data", tokens, "gpt2", 50257)
    result = eval_script.main([str(tmp_path / "hf"), "--data", str(data), "--device", "cpu", "--attn", "sdpa"])
    w = torch.from_numpy(np.stack([tokens[i * 64:i * 64 + 65] for i in range(3)]).astype(np.int64))
    with torch.no_grad():
        logits = hf(w[:, :-1]).logits
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten()).item()
    assert result["seq_len"] == 64 and result["tokens"] == 192
    assert result["loss"] == pytest.approx(expected, abs=1e-4)


def test_eval_refuses_data_of_another_tokenizer(bytes_run, tmp_path):
    data = write_data(tmp_path / "data", np.arange(500) % 50257, "gpt2", 50257)
    with pytest.raises(EvalError, match="tokenized with gpt2"):
        eval_script.main([str(bytes_run[0]), "--data", str(data), "--device", "cpu"])
    with pytest.raises(EvalError, match="not a prepared data directory"):
        eval_script.main([str(bytes_run[0]), "--data", str(tmp_path / "nowhere"), "--device", "cpu"])


def test_a_checkpoint_of_one_backend_loads_under_another(tmp_path):
    from training.sources import load_any

    torch.manual_seed(0)
    trained = GPT(GPTConfig(vocab_size=256, block_size=64, n_layer=1, n_head=2, n_embd=32, attn="block_sparse",
                            attn_options={"pattern": "local", "block_size": 16, "window": 16}))
    save_checkpoint({"model": trained.state_dict(), "model_config": trained.config_dict(), "step": 0},
                    tmp_path / "ckpt.pt")
    model, tokenizer = load_any(str(tmp_path), attn="naive")
    assert model.config.attn == "naive" and model.config.attn_options == {} and tokenizer == "bytes"


def test_eval_defaults_to_the_runs_own_data_and_sequence_length(tmp_path, capsys):
    tokens = np.random.default_rng(0).integers(0, 256, 2000)
    data = write_data(tmp_path / "data", tokens, "bytes", 256)
    config = {"data": {"name": "mine", "dir": str(data), "tokenizer": "bytes"}, "train": {"seq_len": 16}}
    write_ckpt(tmp_path / "run", 256, "bytes", config=config)
    result = eval_script.main([str(tmp_path / "run"), "--attn", "naive", "--device", "cpu", "--max-batches", "2"])
    assert result["seq_len"] == 16 and result["data"] == str(data)
    captured = capsys.readouterr()
    assert f"data: {data}/val.bin" in captured.out and "seq_len: 16" in captured.out
    assert "the run's own data and training sequence length" in captured.out
    assert "eval: 100%" in captured.err  # a progress bar while it scores


def test_help_shows_the_defaults(capsys):
    for script, shown in ((sample, ("(default: 200)", "(default: 1337)", "(default: sdpa)")),
                          (eval_script, ("default: 8", "default: val", "a run's training seq len"))):
        with pytest.raises(SystemExit):
            script.main(["--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert all(s in out for s in shown), out


def test_export_of_a_missing_run_says_it_is_missing(tmp_path):
    with pytest.raises(ExportError, match="'outputs/nope' does not exist") as e:
        export("outputs/nope", tmp_path / "hf")
    assert "hub" not in str(e.value)
