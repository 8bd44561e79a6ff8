"""Every option of every config group composes against the schema, and bad values are refused."""

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from model import PRESETS
from model.attention import available_backends
from training.config import ConfigError, TrainConfig, compose, validate

CONF = Path(__file__).resolve().parent.parent / "conf"
# conf/<group>/*.yaml, and the model presets (registered from model/presets.py)
CHOICES = [(group.name, f.stem) for group in sorted(CONF.iterdir()) if group.is_dir()
           for f in sorted(group.glob("*.yaml"))] + [("model", name) for name in PRESETS]


@pytest.mark.parametrize("group,option", CHOICES, ids=[f"{g}={o}" for g, o in CHOICES])
def test_every_group_option_composes(group, option):
    cfg = compose([f"{group}={option}"])
    OmegaConf.to_container(cfg, resolve=True)
    validate(cfg)
    if group == "attn":
        assert cfg.attn.name == option
    if group == "model":
        assert cfg.model.preset == option


def test_defaults_are_the_quickstart():
    cfg = compose()
    assert (cfg.model.preset, cfg.attn.name, cfg.data.name, cfg.logger.type) == ("gpt2-tiny", "sdpa",
                                                                                 "stdlib_docs", "none")
    assert cfg.train.seq_len <= 256 and cfg.train.max_steps <= 1000


def test_runs_checkpoint_periodically_by_default():
    """A kill or Ctrl-C of the default run leaves a checkpoint to resume from, not only one at the end."""
    quickstart = compose().train
    assert 0 < quickstart.ckpt_interval < quickstart.max_steps
    assert 0 < TrainConfig.ckpt_interval < TrainConfig.max_steps


def test_experiments_state_their_own_learning_rate():
    """Naming another experiment replaces the quickstart: nothing of it (its lr 2e-3) leaks into the others."""
    quickstart = compose().optim.lr
    for f in sorted((CONF / "experiment").glob("*.yaml")):
        assert "lr" in OmegaConf.load(f).optim, f"{f.name} states no optim.lr"
        cfg = compose([f"experiment={f.stem}"])
        assert f.stem == "quickstart" or cfg.optim.lr != quickstart, f.stem
    throughput = compose(["experiment=throughput", "attn=flash", "train.batch_size=16"])
    assert (throughput.model.preset, throughput.train.batch_size, throughput.train.ckpt_interval) == ("gpt2", 16, -1)


def test_model_presets_are_defined_once():
    """conf/ holds no copy of model/presets.py: each preset is a model choice, the HF baseline is model.impl=hf."""
    assert not list(CONF.glob("model/*.yaml"))
    assert compose(["model=gpt2-mini", "model.impl=hf"]).model == {
        "preset": "gpt2-mini", "impl": "hf", "block_size": None, "dropout": 0.0, "attn_dropout": None,
        "overrides": {}}


@pytest.mark.parametrize("old,new,value", [("train.warmup_steps", "untimed_steps", 7),
                                           ("optim.warmup", "lr_warmup_steps", 9)])
def test_old_warmup_names_still_work_with_a_deprecation_line(old, new, value, caplog):
    from training.run_config import resolve_config

    cfg, _ = resolve_config(compose([f"{old}={value}"]))
    assert cfg[old.split(".")[0]][new] == value
    assert [r.getMessage() for r in caplog.records] == [f"{old} is deprecated: use "
                                                         f"{old.split('.')[0]}.{new}={value} (same meaning)"]


def test_compile_is_auto_and_its_mode_is_checked():
    cfg = compose()
    assert cfg.train.compile == "auto" and cfg.train.compile_mode == "default"
    validate(compose(["train.compile=true", "train.compile_mode=reduce-overhead"]))
    with pytest.raises(ConfigError, match="train.compile_mode=fast .allowed: default, reduce-overhead"):
        validate(compose(["train.compile_mode=fast"]))
    with pytest.raises(ConfigError, match="needs train.grad_accum=1"):  # CUDA graphs reuse the gradient buffers
        validate(compose(["train.compile=true", "train.compile_mode=reduce-overhead", "train.grad_accum=2"]))


def test_help_lists_choices_and_field_descriptions_without_schemas(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(CONF.parent / "train.py"), "--help"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120).stdout
    assert "_schema" not in out
    assert "model: gpt2, gpt2-large" in out and "experiment: finetune_owt, gpt2_owt, quickstart, throughput" in out
    assert "train.untimed_steps=3" in out and "first steps left out of the timing" in out


def test_every_backend_yaml_names_a_registered_backend():
    for f in (CONF / "attn").glob("*.yaml"):
        name = OmegaConf.load(f).name
        if name in ("flash", "block_sparse") and name not in available_backends():
            continue  # kernels not importable in this environment
        assert name in available_backends(), f


def test_attn_node_is_open_for_backend_options():
    cfg = compose(["+attn.window=256"])
    assert cfg.attn == {"name": "sdpa", "window": 256}


def test_schema_types_are_checked():
    with pytest.raises((ValidationError, ConfigCompositionException), match="batch_size"):
        compose(["train.batch_size=many"])


@pytest.mark.parametrize("override,match", [
    ("train.dtype=fp8", "train.dtype=fp8 .allowed: auto, bf16, fp16, fp32"),
    ("train.device=tpu", "train.device"),
    ("model.impl=jax", "model.impl"),
    ("logger.type=tensorboard", "logger.type"),
    ("train.seq_len=0", "train.seq_len=0"),
    ("train.init_from=resume", "train.resume_from"),
])
def test_validate_says_what_is_allowed(override, match):
    with pytest.raises(ConfigError, match=match):
        validate(compose([override]))
