"""An interrupted run resumed from its checkpoint continues the same loss curve, exactly, on CPU."""

import json

import train
from training.config import compose
from training.corpus import prepare_stdlib_docs
from training.data import TokenBatches

# Dropout on, so the restored torch RNG matters as well as the data stream and the optimizer state.
FAST = ["model=gpt2-nano", "model.dropout=0.1", "train.batch_size=4", "train.seq_len=32", "train.eval_iters=2",
        "train.log_interval=1", "train.eval_interval=4", "train.ckpt_interval=4", "train.max_steps=10",
        "train.sample_at_eval=false", "optim.lr_warmup_steps=2"]


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {(r["step"], k): r[k] for r in rows for k in ("train/loss", "val/loss") if k in r}


def test_resume_reproduces_the_uninterrupted_run(tmp_path, monkeypatch):
    data = prepare_stdlib_docs(tmp_path / "data")
    base = [f"data.dir={data}", *FAST]
    assert train.main(compose(base), tmp_path / "full")["status"] == "ok"

    # Interrupt the second run during step 7: its last checkpoint is from step 4.
    real_next, calls = TokenBatches.next, []

    def interrupted(self):
        if self.file.name == "train.bin":
            calls.append(1)
            if len(calls) == 7:
                raise KeyboardInterrupt
        return real_next(self)

    monkeypatch.setattr(TokenBatches, "next", interrupted)
    assert train.main(compose(base), tmp_path / "cut")["status"] == "interrupted"
    monkeypatch.undo()
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["status"] == "interrupted"

    resumed = train.main(compose([*base, "train.init_from=resume", f"train.resume_from={tmp_path / 'cut'}"]),
                         tmp_path / "resumed")
    assert resumed["status"] == "ok" and resumed["steps"] == 10
    full, again = losses(tmp_path / "full"), losses(tmp_path / "resumed")
    assert sorted(again) == sorted(full)  # the resumed metrics.jsonl carries steps 1-4 over
    assert again == full  # exactly

    # Resuming into the interrupted run's own directory drops its rows after the checkpoint, then continues.
    again_in_place = train.main(compose([*base, "train.init_from=resume", f"train.resume_from={tmp_path / 'cut'}"]),
                                tmp_path / "cut")
    assert again_in_place["status"] == "ok" and losses(tmp_path / "cut") == full


def test_resume_restores_the_runs_own_config_and_applies_allowed_overrides(tmp_path, caplog):
    """The resume command need not repeat the run's settings: they come from its checkpoint; max_steps may grow."""
    data = prepare_stdlib_docs(tmp_path / "data")
    first = [f"data.dir={data}", *FAST, "optim.lr=1e-3", "train.max_steps=6", "train.ckpt_interval=3"]
    assert train.main(compose(first), tmp_path / "a", overrides=first)["status"] == "ok"

    caplog.set_level("INFO", logger="train")
    again = [f"data.dir={data}", "train.init_from=resume", f"train.resume_from={tmp_path / 'a'}",
             "train.max_steps=8"]
    summary = train.main(compose(again), tmp_path / "b", overrides=again)
    assert summary["status"] == "ok" and summary["steps"] == 8 and summary["model"] == "gpt2-nano"
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert (config["model"]["preset"], config["optim"]["lr"], config["train"]["seq_len"]) == ("gpt2-nano", 1e-3, 32)
    assert config["train"]["ckpt_interval"] == 3 and config["train"]["max_steps"] == 8
    messages = [r.getMessage() for r in caplog.records]
    assert f"resumed from {tmp_path / 'a'} at step 6" in messages
    assert "resume: train.max_steps 6 -> 8" in messages


def test_resume_refuses_overrides_that_change_the_run(tmp_path):
    data = prepare_stdlib_docs(tmp_path / "data")
    first = [f"data.dir={data}", *FAST, "train.max_steps=2"]
    assert train.main(compose(first), tmp_path / "a", overrides=first)["status"] == "ok"
    again = [f"data.dir={data}", "train.init_from=resume", f"train.resume_from={tmp_path / 'a'}", "model=gpt2-tiny",
             "train.max_steps=4"]
    summary = train.main(compose(again), tmp_path / "b", overrides=again)
    assert summary["status"] == "error"
    assert "model.preset gpt2-nano -> gpt2-tiny" in summary["error"] and "would change the run" in summary["error"]
    assert "train.max_steps" not in summary["error"].split("Allowed")[0]
