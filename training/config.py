"""The config schema: structured configs registered with Hydra's ConfigStore; conf/*.yaml hold the choices.

`attn` and `data` stay open dicts: attn's keys besides `name` are backend options (checked by the backend),
and each dataset's yaml may carry what its prepare script needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


class ConfigError(ValueError):
    """A config value is out of range; the message says what is allowed."""


@dataclass
class ModelConfig:
    preset: str = "gpt2"  # a name in model/presets.py (model=<name> sets it); the vocab grows to fit the data
    impl: str = "ours"  # ours | hf (transformers' GPT2LMHeadModel, eager attention: the paper's baseline)
    block_size: int | None = None  # None: the preset's context length
    dropout: float = 0.0  # embedding and residual dropout
    attn_dropout: float | None = None  # attention-probability dropout; None: same as dropout
    overrides: dict[str, Any] = field(default_factory=dict)  # other GPTConfig fields: +model.overrides.n_layer=8


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw (weight decay on matrices and embeddings only; fused on CUDA)
    lr: float = 6e-4  # peak learning rate
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # AdamW's betas
    weight_decay: float = 0.1  # on 2-D weights only
    grad_clip: float = 1.0  # max global gradient norm; 0: no clipping
    lr_warmup_steps: int = 100  # linear learning-rate warm-up, in optimizer steps
    min_lr: float = 6e-5  # where the decay ends, at train.max_steps
    schedule: str = "cosine"  # cosine | linear | constant (after warm-up)
    warmup: int | None = None  # deprecated name of optim.lr_warmup_steps


@dataclass
class TrainConfig:
    batch_size: int = 16  # sequences per micro-step per rank
    seq_len: int = 1024  # tokens per sequence (<= the model's block_size)
    grad_accum: int = 1  # micro-steps per optimizer step
    max_steps: int = 1000  # optimizer steps; may be raised when resuming
    eval_interval: int = 250  # steps between evals; 0: eval only at the end
    eval_iters: int = 20  # validation batches per eval
    log_interval: int = 10  # steps between log lines (and host-device synchronisations)
    ckpt_interval: int = 250  # steps between checkpoints (also at the end and on Ctrl-C); 0: at the end only; -1: never
    compile: Any = "auto"  # torch.compile the model: auto (on CUDA, not on CPU) | true | false
    compile_mode: str = "default"  # torch.compile mode: default | reduce-overhead (CUDA graphs) | max-autotune | ...
    dtype: str = "auto"  # auto | bf16 | fp16 | fp32 (auto: bf16 on CUDA if supported else fp16; fp32 on CPU)
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 1337
    init_from: str = "scratch"  # scratch | resume | a Hugging Face name or local path (e.g. gpt2)
    resume_from: str | None = None  # run directory or ckpt.pt, for init_from=resume
    sample_at_eval: bool = False  # print a sample from the model at each eval
    sample_tokens: int = 200  # length of that sample
    untimed_steps: int = 3  # first steps left out of the timing (compile, allocator and autotune warm-up)
    peak_flops: float | None = None  # override the per-device peak used for MFU (FLOP/s per GPU)
    warmup_steps: int | None = None  # deprecated name of train.untimed_steps


@dataclass
class LoggerConfig:
    type: str = "none"  # none | wandb
    mode: str = "offline"  # online | offline | disabled (offline: a run never waits for a login)
    project: str = "flashgpt"  # wandb project
    group: str | None = None  # None: the sweep (python train.py -m ...), else <model>-<attn>-seq<seq_len>
    name: str | None = None  # None: <model>-<attn>-seq<seq_len>-bs<batch>
    tags: list[str] = field(default_factory=list)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    attn: dict[str, Any] = MISSING
    data: dict[str, Any] = MISSING
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def register_configs() -> None:
    """The schema, one `model` choice per preset in model/presets.py (the presets live there only), and the
    --help page."""
    from model.presets import PRESETS

    from .help import help_config

    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for preset in PRESETS:
        cs.store(group="model", name=preset, node={"preset": preset})
    cs.store(group="hydra/help", name="flashgpt", node=help_config(Config))


CHOICES = {
    "model.impl": ("ours", "hf"),
    "train.compile": ("auto", True, False),
    "train.compile_mode": ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
    "optim.name": ("adamw",),
    "optim.schedule": ("cosine", "linear", "constant"),
    "train.dtype": ("auto", "bf16", "fp16", "fp32"),
    "train.device": ("auto", "cpu", "cuda"),
    "logger.type": ("none", "wandb"),
    "logger.mode": ("online", "offline", "disabled"),
}
POSITIVE = ("train.batch_size", "train.seq_len", "train.grad_accum", "train.max_steps", "train.eval_iters",
            "train.log_interval", "train.sample_tokens")


def validate(cfg) -> None:
    """Check what the schema's types cannot: choices, ranges, and required keys of the open nodes."""
    from omegaconf import OmegaConf

    problems = []
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            problems.append(f"{key}={value} (allowed: {', '.join(allowed)})")
    for key in POSITIVE:
        if OmegaConf.select(cfg, key) < 1:
            problems.append(f"{key}={OmegaConf.select(cfg, key)} (must be >= 1)")
    if cfg.train.untimed_steps < 0 or cfg.optim.lr_warmup_steps < 0:
        problems.append("train.untimed_steps and optim.lr_warmup_steps must be >= 0")
    if cfg.model.impl == "hf" and cfg.train.init_from not in ("scratch", "resume"):
        problems.append(f"model.impl=hf trains from scratch only (train.init_from={cfg.train.init_from}); for "
                        "pretrained weights use model.impl=ours")
    if not 0 <= cfg.model.dropout < 1:
        problems.append(f"model.dropout={cfg.model.dropout} (must be in [0, 1))")
    if not cfg.attn.get("name"):
        problems.append("attn.name is missing (choose a backend: attn=sdpa, attn=naive, ...)")
    if not cfg.data.get("name"):
        problems.append("data.name is missing (e.g. data=stdlib_docs)")
    if cfg.train.compile_mode in ("reduce-overhead", "max-autotune") and cfg.train.grad_accum > 1:
        problems.append(f"train.compile_mode={cfg.train.compile_mode} records CUDA graphs, whose gradient buffers the "
                        "next micro-step reuses: it needs train.grad_accum=1 (or use train.compile_mode=default)")
    if cfg.train.init_from == "resume" and not cfg.train.resume_from:
        problems.append("train.init_from=resume needs train.resume_from=<run dir or ckpt.pt>")
    problems += optim_problems(cfg.optim) + model_problems(cfg.model)
    if cfg.attn.get("name") == "block_sparse":
        problems += block_sparse_problems(cfg.attn)
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))


def optim_problems(optim) -> list[str]:
    import math

    problems = [f"optim.{k}={optim[k]} (must be a finite number >= 0)" for k in ("lr", "min_lr", "weight_decay",
                                                                                  "grad_clip")
                if not (math.isfinite(optim[k]) and optim[k] >= 0)]
    betas = list(optim.betas)
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        problems.append(f"optim.betas={betas} (two numbers in [0, 1), e.g. [0.9,0.95])")
    return problems


def model_problems(model) -> list[str]:
    """Dropout ranges, and a shape (preset + overrides) that is positive, divisible and fits in memory."""
    from model.presets import PRESETS
    from model.shape import ModelShapeError, check_shape

    problems = []
    if model.attn_dropout is not None and not 0 <= model.attn_dropout < 1:
        problems.append(f"model.attn_dropout={model.attn_dropout} (must be in [0, 1), or null: model.dropout)")
    shape = {**PRESETS.get(model.preset, {}), **model.overrides}
    if model.block_size is not None:
        shape["block_size"] = model.block_size
    try:
        check_shape(shape, source="the model (preset, model.overrides, model.block_size)")
    except ModelShapeError as e:
        problems.append(str(e))
    return problems


def block_sparse_problems(attn) -> list[str]:
    """The block-sparse options, checked against the pattern parser before any kernel runs."""
    from kernels.sparsity_patterns import build_layout

    problems = []
    minimum = {"block_size": 16, "window": 1, "stride": 1, "num_global": 0, "num_random": 0}
    for key, low in minimum.items():
        value = attn.get(key)
        if value is not None and (not isinstance(value, int) or value < low):
            problems.append(f"attn.{key}={value} (must be an integer >= {low})")
    block_size = attn.get("block_size")
    if isinstance(block_size, int) and block_size >= 16 and block_size & (block_size - 1):
        problems.append(f"attn.block_size={block_size} (must be a power of two >= 16, e.g. 64 or 128)")
    try:
        build_layout(str(attn.get("pattern", "local")), 1, 1)
    except ValueError as e:
        problems.append(f"attn.pattern={attn.get('pattern')}: {e}")
    return problems


def compose(overrides: list[str] = (), config_name: str = "config"):
    """The config train.py would run with these command-line overrides (for tests, scripts, notebooks)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))
