"""The config a run trains with: old key names mapped to new ones, values checked, and when resuming, the run's own
config restored with the command line's allowed changes on top (each printed; the others refused)."""

from __future__ import annotations

import copy
import logging

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from .checkpoint import load_checkpoint
from .config import ConfigError, validate

log = logging.getLogger("train")

DEPRECATED = {"train.warmup_steps": "train.untimed_steps", "optim.warmup": "optim.lr_warmup_steps"}
# What a resumed run may change: how long it runs, what it logs and when, where and how fast it runs. The rest
# (model, data, batch, optimizer) would make it another run.
RESUME_MAY_CHANGE = ("train.max_steps", "train.eval_interval", "train.eval_iters", "train.log_interval",
                     "train.ckpt_interval", "train.sample_at_eval", "train.sample_tokens", "train.compile",
                     "train.compile_mode", "train.device", "train.dtype", "train.untimed_steps", "train.peak_flops",
                     "train.init_from", "train.resume_from", "data.dir", "attn", "logger")


def resolve_config(cfg: DictConfig, overrides=()) -> tuple[DictConfig, dict | None]:
    """(the config to train with, the checkpoint to resume from or None). `overrides`: the command line's."""
    cfg = copy.deepcopy(cfg)
    rename_deprecated(cfg, warn=True)
    validate(cfg)
    if cfg.train.init_from != "resume":
        return cfg, None
    ckpt = load_checkpoint(cfg.train.resume_from)
    if not ckpt.get("config"):
        log.warning("the checkpoint holds no config (an older train.py): the run continues with this command's")
        return cfg, ckpt
    run = restore(cfg, ckpt["config"], overrides)
    validate(run)
    return run, ckpt


def rename_deprecated(cfg: DictConfig, warn: bool = False) -> None:
    for old, new in DEPRECATED.items():
        value = OmegaConf.select(cfg, old)
        if value is not None:
            if warn:
                log.warning("%s is deprecated: use %s=%s (same meaning)", old, new, value)
            OmegaConf.update(cfg, new, value)
            OmegaConf.update(cfg, old, None)


def restore(cfg: DictConfig, saved: dict, overrides) -> DictConfig:
    """`saved` (a checkpoint's resolved config) in cfg's schema, then the overrides that may change a run."""
    run = copy.deepcopy(cfg)
    for section in ("model", "optim", "train", "logger"):
        for key, value in (saved.get(section) or {}).items():
            if key in run[section]:  # keys of older versions are left out
                run[section][key] = value
    run.attn, run.data = saved["attn"], saved["data"]
    rename_deprecated(run)
    changed, refused = [], []
    for key in override_keys(overrides):
        if key.split(".")[0] not in cfg:  # e.g. experiment=...: it may change anything
            refused.append(f"{key} (a preset of many settings)")
            continue
        diffs = differences(OmegaConf.select(run, key), OmegaConf.select(cfg, key), key)
        if not diffs:
            continue
        if may_change(key):
            OmegaConf.update(run, key, OmegaConf.select(cfg, key), merge=False)
            changed += diffs
        else:
            refused += diffs
    if refused:
        raise ConfigError(f"resume restores the run's own config; these overrides would change the run: "
                          f"{'; '.join(refused)}. Allowed on resume: {', '.join(RESUME_MAY_CHANGE)}. "
                          f"Drop them, or start a new run for another model, data or schedule.")
    for diff in changed:
        log.info("resume: %s", diff)
    run.train.init_from, run.train.resume_from = "resume", cfg.train.resume_from
    return run


def override_keys(overrides) -> list[str]:
    keys = [o.key_or_group for o in OverridesParser.create().parse_overrides(list(overrides))]
    return [DEPRECATED.get(k, k) for k in keys if not k.startswith("hydra")]


def may_change(key: str) -> bool:
    return any(key == allowed or key.startswith(allowed + ".") for allowed in RESUME_MAY_CHANGE)


def differences(old, new, key: str) -> list[str]:
    """'key: old -> new' for each leaf that differs."""
    old, new = (OmegaConf.to_container(v) if isinstance(v, DictConfig) else v for v in (old, new))
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new)) for d in differences(old.get(k), new.get(k), f"{key}.{k}")]
    return [] if old == new else [f"{key} {old} -> {new}"]
