"""Train GPT-2 with a swappable attention backend.

    python train.py                                    # quickstart: tiny GPT-2 on the embedded corpus, CPU ok
    python train.py attn=naive model=gpt2 train.batch_size=8
    python train.py -m attn=naive,sdpa,flash            # a sweep: one run directory per job, one wandb group
    torchrun --standalone --nproc_per_node 2 train.py   # DDP: nccl on GPUs, gloo on CPUs
    python train.py train.init_from=resume train.resume_from=outputs/<date>/<time>   # the run's own config

Config schema: training/config.py (`python train.py --help`); choices: conf/. Run directory: docs/dev/CONTRACTS.md.
"""

from __future__ import annotations

import errno
import gc
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from model import GPT, MODELS, GPTConfig
from model.attention import UnsupportedAttentionError
from model.pretrained import PretrainedError
from training import distributed
from training.checkpoint import (
    CheckpointError,
    NonFiniteState,
    check_resumable,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from training.config import ConfigError, register_configs
from training.data import DataError, TokenBatches, check_split, check_vocab, prepare_data
from training.interrupt import stop_on_ctrl_c
from training.loggers import RunLogger
from training.lr import learning_rate
from training.metrics import StepTimer, duration, mfu, peak_flops, peak_memory_gb
from training.run_config import resolve_config
from training.run_dir import RunDir, RunDirError, atomic_write_text, check_writable_location

log = logging.getLogger("train")
register_configs()

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
USER_ERRORS = (ConfigError, DataError, CheckpointError, UnsupportedAttentionError, PretrainedError, RunDirError)


class NonFiniteLoss(RuntimeError):
    pass


class Interrupted(Exception):
    """Ctrl-C was honoured at a step boundary (after a checkpoint)."""


@dataclass
class Run:
    """Everything the loop's parts share."""
    cfg: DictConfig
    run_dir: Path
    device: torch.device
    d: distributed.Dist
    autocast: object
    model: torch.nn.Module  # what the step calls: compiled and/or DDP-wrapped
    raw_model: torch.nn.Module  # GPT or HFGPT2, for checkpoints and samples
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    train_data: TokenBatches
    data_path: Path
    meta: dict
    logger: RunLogger | None
    info: dict  # config.json's extra fields: backend, model_config, n_params, ...
    density: float
    flops_per_token: float
    peak: float | None
    tokens_per_step: int
    timer: StepTimer
    step: int = 0
    start_step: int = 0
    started: float = field(default_factory=time.perf_counter)
    train_loss: float | None = None
    val_loss: float | None = None
    pending: list = field(default_factory=list)  # (step, loss on the device) not read back yet


# ---- set-up -------------------------------------------------------------------------------------------------------

def resolve_device(cfg) -> torch.device:
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA GPU is visible; use train.device=cpu (or auto)")
    if cfg.train.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.train.device)


def resolve_dtype(cfg, device: torch.device) -> torch.dtype:
    name = cfg.train.dtype
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name == "fp16" and device.type != "cuda":
        raise ConfigError("train.dtype=fp16 needs a CUDA GPU; on CPU use train.dtype=fp32 (or bf16)")
    return DTYPES[name]


def start_process(cfg) -> tuple[torch.device, distributed.Dist]:
    device = resolve_device(cfg)
    d = distributed.setup(device.type)
    if not d.is_main:
        log.setLevel(logging.WARNING)
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.init()  # the allocator must exist before its statistics can be reset
        torch.cuda.reset_peak_memory_stats(device)  # each job of a sweep reports its own peak
    return device, d


def load_data(cfg, d) -> tuple[Path, dict]:
    """Rank 0 locates the data (building the embedded corpus on first use); the others get its path, or its error."""
    found = None
    if d.is_main:
        try:
            path, meta = prepare_data(cfg.data)
            found = (str(path), meta)
        except DataError as e:
            found = str(e)
    found = distributed.broadcast(found, d)
    if isinstance(found, str):
        raise DataError(found)
    return Path(found[0]), found[1]


def model_config(cfg, meta: dict) -> GPTConfig:
    """The preset with the config's overrides; a vocabulary too small for the data's tokenizer grows to fit it."""
    m = cfg.model
    overrides = dict(m.overrides)
    if m.block_size is not None:
        overrides["block_size"] = m.block_size
    options = {k: v for k, v in cfg.attn.items() if k != "name"}
    try:
        config = GPTConfig.preset(m.preset, dropout=m.dropout, attn_dropout=m.attn_dropout, attn=cfg.attn.name,
                                  attn_options=options, **overrides)
    except TypeError as e:  # an unknown GPTConfig field in model.overrides
        fields = ", ".join(GPTConfig.__dataclass_fields__)
        raise ConfigError(f"model.overrides: {e}; allowed fields: {fields}") from None
    except ValueError as e:
        raise ConfigError(f"{e} (model=<preset>)") from None
    if "vocab_size" not in overrides and meta["vocab_size"] > config.vocab_size:
        padded = -(-meta["vocab_size"] // 64) * 64  # a multiple of 64 runs faster (GPT-2: 50257 -> 50304)
        log.info("model %s: vocab_size %d -> %d to fit the data's %s tokenizer (%d ids)", m.preset,
                 config.vocab_size, padded, meta["tokenizer"], meta["vocab_size"])
        config.vocab_size = padded
    return config


def build_model(cfg, config: GPTConfig, ckpt: dict | None) -> torch.nn.Module:
    tc = cfg.train
    if ckpt is not None:  # the checkpoint's shape, this run's attention
        config = GPTConfig(**{**ckpt["model_config"], "attn": config.attn, "attn_options": config.attn_options})
    if tc.init_from in ("scratch", "resume"):
        return MODELS[cfg.model.impl](config)
    shape = {k: v for k, v in cfg.model.overrides.items() if k == "vocab_size"}  # the weights set the rest
    if cfg.model.block_size is not None:
        shape["block_size"] = cfg.model.block_size
    return GPT.from_pretrained(tc.init_from, attn=config.attn, attn_options=config.attn_options,
                               dropout=config.dropout, attn_dropout=config.attn_dropout, **shape)


def check_fits(config: GPTConfig, meta: dict, data_path, seq_len: int, fixed_by: str | None = None) -> None:
    """The data's vocabulary and train.seq_len fit the model and both splits; `fixed_by`: what fixed its shape, if
    not the config. The val split is read at the last step if not before: a split too short fails now, not then."""
    check_vocab(meta, config.vocab_size, Path(data_path))
    if seq_len > config.block_size:
        bigger = f"a context of {config.block_size} fixed by {fixed_by}" if fixed_by else \
            f"context (block_size={config.block_size}); or set model.block_size={seq_len}"
        raise ConfigError(f"train.seq_len={seq_len} is longer than the model's {bigger}; use "
                          f"train.seq_len<={config.block_size}")
    for split in ("train", "val"):
        check_split(data_path, split, seq_len)


def compile_model(model, cfg, device):
    """torch.compile when train.compile says so (auto: on CUDA); compile_mode=reduce-overhead adds CUDA graphs."""
    tc = cfg.train
    if not (device.type == "cuda" if tc.compile == "auto" else tc.compile):
        return model, False
    return torch.compile(model, mode=None if tc.compile_mode == "default" else tc.compile_mode), True


def resume(run: Run, ckpt: dict) -> None:
    """Weights, optimizer, scaler, step, RNGs, data position."""
    run.raw_model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scaler.load_state_dict(ckpt["scaler"])
    run.step = run.start_step = ckpt["step"]
    if len(ckpt["data_state"]) == run.d.world_size:
        run.train_data.load_state_dict(ckpt["data_state"][run.d.rank])
        set_rng_state(ckpt["rng"][run.d.rank])
    else:
        log.warning("checkpoint from %d ranks, resuming on %d: data streams restart from the seed",
                    len(ckpt["data_state"]), run.d.world_size)


def run_label(cfg, backend: str) -> str:
    return f"{cfg.model.preset}-{backend.split(' (')[0].replace(' ', '-')}-seq{cfg.train.seq_len}"


def start_run_dir(run: Run, ckpt: dict | None, multirun: bool) -> RunLogger:
    """config.json, metrics.jsonl (a resumed run starts with the old run's rows up to its checkpoint), the logger."""
    cfg, tc, run_dir = run.cfg, run.cfg.train, run.run_dir
    label = run_label(cfg, run.info["backend"])
    sweep = f"sweep-{run_dir.parent}" if multirun else None  # a sweep's jobs share one wandb group
    cfg.logger.group = cfg.logger.group or sweep or label
    cfg.logger.name = cfg.logger.name or f"{label}-bs{tc.batch_size}"
    config = {**OmegaConf.to_container(cfg, resolve=True), **run.info}
    atomic_write_text(run_dir / "config.json", json.dumps(config, indent=2))
    old = resumed_dir(tc.resume_from) / "metrics.jsonl" if ckpt is not None else None
    rows = [line for line in old.read_text().splitlines() if line and json.loads(line)["step"] <= run.step] \
        if old and old.is_file() else []
    atomic_write_text(run_dir / "metrics.jsonl", "".join(r + "\n" for r in rows))
    return RunLogger(run_dir, cfg.logger, config, resume_id=ckpt.get("wandb_run_id") if ckpt else None)


def resumed_dir(resume_from: str) -> Path:
    return Path(resume_from) if Path(resume_from).is_dir() else Path(resume_from).parent


def set_up(cfg, run_dir: Path, device: torch.device, d, ckpt: dict | None, multirun: bool = False) -> Run:
    """Data, model (refused before training if the backend cannot serve the request), optimizer, resumed state,
    compile/DDP wrappers, run directory and logger."""
    tc = cfg.train
    if ckpt is not None:
        check_resumable(ckpt, tc.resume_from)
        if ckpt["step"] >= tc.max_steps:
            raise ConfigError(f"train.max_steps={tc.max_steps} but the checkpoint is already at step {ckpt['step']}: "
                              f"nothing to train; set train.max_steps > {ckpt['step']} to continue it")
    torch.manual_seed(tc.seed + d.rank)
    dtype = resolve_dtype(cfg, device)
    data_path, meta = load_data(cfg, d)
    config = model_config(cfg, meta)
    if ckpt is None and tc.init_from == "scratch":  # refuse before building a big model
        check_fits(config, meta, data_path, tc.seq_len)
    raw_model = build_model(cfg, config, ckpt).to(device)
    config = raw_model.config
    fixed_by = f"the checkpoint {tc.resume_from}" if ckpt is not None else \
        None if tc.init_from == "scratch" else f"the pretrained weights {tc.init_from}"
    check_fits(config, meta, data_path, tc.seq_len, fixed_by)
    raw_model.check_attention(device, dtype)
    backend = raw_model.describe_attention()
    density = raw_model.attention_density(tc.seq_len)
    optimizer = raw_model.configure_optimizers(cfg.optim.weight_decay, cfg.optim.lr, tuple(cfg.optim.betas),
                                               device.type)
    model, compiled = compile_model(raw_model, cfg, device)
    if d.enabled:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[d.local_rank]
                                                          if device.type == "cuda" else None)
    info = {"model_config": asdict(config), "backend": backend, "device": str(device),
            "gpu_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "n_params": raw_model.num_params(), "world_size": d.world_size,
            "dtype": str(dtype).removeprefix("torch."), "compiled": compiled}
    run = Run(cfg=cfg, run_dir=run_dir, device=device, d=d,
              autocast=torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext(),
              model=model, raw_model=raw_model, optimizer=optimizer,
              scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
              train_data=TokenBatches(data_path, "train", tc.batch_size, tc.seq_len, device, tc.seed, d.rank,
                                      d.world_size),
              data_path=data_path, meta=meta, logger=None, info=info, density=density,
              flops_per_token=raw_model.flops_per_token(tc.seq_len, density), peak=peak_flops(device, tc.peak_flops),
              tokens_per_step=tc.batch_size * tc.seq_len * tc.grad_accum * d.world_size,
              timer=StepTimer(device, skip=0))
    if ckpt is not None:
        resume(run, ckpt)
        log.info("resumed from %s at step %d", resumed_dir(tc.resume_from), run.step)
    run.timer = StepTimer(device, skip=run.start_step + tc.untimed_steps)
    if d.is_main:
        run.logger = start_run_dir(run, ckpt, multirun)
        log.info("model %s (%s, %.2fM params) | attention: %s | %s %s x%d%s | data %s (%s tokenizer, %d train "
                 "tokens)", cfg.model.preset, cfg.model.impl, info["n_params"] / 1e6, backend, device, info["dtype"],
                 d.world_size, " | compiled" if compiled else "", data_path, meta["tokenizer"], meta["train_tokens"])
        log.info("run directory: %s", run_dir.resolve())
    return run


# ---- one optimizer step -------------------------------------------------------------------------------------------

def optimizer_step(run: Run, step: int) -> float:
    """grad_accum micro-steps (gradients all-reduced by DDP on the last one only), clipping, the update.
    The loss stays on the device (run.pending) until the next synchronisation point; returns the learning rate."""
    cfg, tc = run.cfg, run.cfg.train
    lr = learning_rate(step - 1, cfg.optim, tc.max_steps)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    total = torch.zeros((), device=run.device)
    for micro in range(tc.grad_accum):
        x, y = run.train_data.next()
        last = micro == tc.grad_accum - 1
        if run.info["compiled"]:
            torch.compiler.cudagraph_mark_step_begin()  # compile_mode=reduce-overhead: a new replay may begin
        with run.model.no_sync() if run.d.enabled and not last else nullcontext():
            with run.autocast:
                _, loss = run.model(x, y)
            run.scaler.scale(loss / tc.grad_accum if tc.grad_accum > 1 else loss).backward()
        total += loss.detach()  # read now: a CUDA graph's next replay reuses the output's memory
    if cfg.optim.grad_clip > 0:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.optim.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.pending.append((step, total / tc.grad_accum))
    return lr


def read_losses(run: Run, stop_requested: bool) -> bool:
    """Read the pending losses back (one synchronisation; with DDP their mean over ranks, and whether any rank was
    asked to stop). A non-finite loss stops the run before anything is saved."""
    flags = torch.tensor([float(stop_requested)], device=run.device)
    values = distributed.all_reduce_mean(torch.cat([torch.stack([loss for _, loss in run.pending]), flags]),
                                         run.d).tolist()
    losses, stop = values[:-1], values[-1] > 0
    bad = next((s for (s, _), value in zip(run.pending, losses, strict=True) if not math.isfinite(value)), None)
    if bad is not None:
        raise NonFiniteLoss(f"loss is {losses[bad - run.pending[0][0]]} at step {bad}: stopped. The last good "
                            f"checkpoint (if any) is kept in {run.run_dir}. {nonfinite_advice(run)}")
    run.pending.clear()
    run.train_loss = losses[-1]
    return stop


def nonfinite_advice(run: Run) -> str:
    fp16 = " or use train.dtype=bf16 (fp16 overflows)" if run.info["dtype"] == "float16" else ""
    return f"Lower optim.lr (now {run.cfg.optim.lr}){fp16}, or clip gradients harder (optim.grad_clip)."


# ---- log, eval, checkpoint, summary -------------------------------------------------------------------------------

def log_progress(run: Run, step: int, lr: float, step_ms: float | None) -> None:
    tc = run.cfg.train
    tps = run.tokens_per_step / (step_ms / 1e3) if step_ms else None
    row = {"step": step, "train/loss": run.train_loss, "train/lr": lr, "perf/tokens_per_sec": tps,
           "perf/step_ms": step_ms, "perf/mfu": mfu(run.flops_per_token, tps, run.peak, run.d.world_size),
           "perf/peak_mem_gb": peak_memory_gb(run.device), "attn/density": run.density}
    if not run.d.is_main:
        return
    run.logger.log(row)
    elapsed = time.perf_counter() - run.started
    eta = elapsed / (step - run.start_step) * (tc.max_steps - step)
    log.info("step %d/%d | loss %.4f | lr %.2e | %s tok/s | %s ms/step | mfu %s | mem %.2f GB | %s elapsed, eta %s",
             step, tc.max_steps, run.train_loss, lr, f"{tps:,.0f}" if tps else "-",
             f"{step_ms:.1f}" if step_ms else "-", f"{row['perf/mfu']:.1%}" if row["perf/mfu"] is not None else "-",
             row["perf/peak_mem_gb"], duration(elapsed), duration(eta))


@torch.no_grad()
def evaluate(run: Run) -> float:
    """Mean loss over the same eval_iters batches every time (a fixed seed), so evals compare."""
    tc = run.cfg.train
    run.model.eval()
    batches = TokenBatches(run.data_path, "val", tc.batch_size, tc.seq_len, run.device, tc.seed, run.d.rank,
                           run.d.world_size)
    total = torch.zeros((), device=run.device)
    for _ in range(tc.eval_iters):
        x, y = batches.next()
        if run.info["compiled"]:
            torch.compiler.cudagraph_mark_step_begin()
        with run.autocast:
            total += run.model(x, y)[1].float()  # read now: a CUDA graph's next replay reuses the output's memory
    run.model.train()
    return distributed.all_reduce_mean(total / tc.eval_iters, run.d).item()


def eval_and_log(run: Run, step: int) -> None:
    run.val_loss = evaluate(run)
    if not run.d.is_main:
        return
    ppl = math.exp(min(run.val_loss, 50))
    run.logger.log({"step": step, "val/loss": run.val_loss, "val/ppl": ppl})
    log.info("eval step %d | val loss %.4f | val ppl %.2f", step, run.val_loss, ppl)
    if run.cfg.train.sample_at_eval:
        log.info("sample:\n%s", sample_text(run.raw_model, run.meta, run.device, run.cfg.train))


def sample_text(model, meta: dict, device: torch.device, tc) -> str:
    """A sample that starts after a newline, decoded with the data's own tokenizer."""
    if meta["tokenizer"] == "bytes":
        encode, decode = (lambda s: list(s.encode())), (lambda ids: bytes(ids).decode("utf-8", errors="replace"))
    else:
        try:
            from training.tokenizer import get_gpt2_encoding
            encoding = get_gpt2_encoding()
            encode, decode = encoding.encode_ordinary, encoding.decode
        except Exception as e:  # no GPT-2 ranks file offline: nothing to sample with
            return f"(no sample: the {meta['tokenizer']} tokenizer is not available here: {e})"
    prompt = torch.tensor([encode("\n")], device=device)
    g = torch.Generator(device=device).manual_seed(tc.seed)
    was_training = model.training
    model.eval()
    out = model.generate(prompt, tc.sample_tokens, temperature=0.8, top_k=50, generator=g)[0, prompt.size(1):]
    model.train(was_training)
    return decode(out.tolist())


def write_checkpoint(run: Run, step: int) -> None:
    """The one place a checkpoint is written (ckpt.pt contract in docs/dev/CONTRACTS.md); every rank calls it."""
    states = distributed.gather((rng_state(), run.train_data.state_dict()), run.d)
    if not run.d.is_main:
        return
    cfg = run.cfg
    save_checkpoint({"model": run.raw_model.state_dict(), "model_config": run.info["model_config"],
                     "impl": cfg.model.impl, "optimizer": run.optimizer.state_dict(),
                     "scaler": run.scaler.state_dict(), "step": step, "rng": [s[0] for s in states],
                     "data_state": [s[1] for s in states], "wandb_run_id": run.logger.run_id,
                     "config": OmegaConf.to_container(cfg, resolve=True)}, run.run_dir / "ckpt.pt")


def write_summary(run_dir: Path, summary: dict) -> None:
    """The one place summary.json is written (rank 0): atomically, so a full disk leaves the old one whole."""
    try:
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    except OSError as e:
        log.error("could not write %s (%s); the run's outcome is in this log", run_dir / "summary.json", e.strerror)


# ---- the loop -----------------------------------------------------------------------------------------------------

def train(run: Run) -> None:
    """Optimizer steps; the host synchronises with the device only at log, eval and checkpoint steps (and when
    Ctrl-C asks to stop), so it runs ahead of the GPU in between as a plain loop does."""
    tc = run.cfg.train
    run.timer.mark(run.step)
    run.started = time.perf_counter()
    with stop_on_ctrl_c() as ctrl_c:
        for step in range(run.start_step + 1, tc.max_steps + 1):
            lr = optimizer_step(run, step)
            run.step = step
            last = step == tc.max_steps
            log_now = step % tc.log_interval == 0 or last
            eval_now = (tc.eval_interval > 0 and step % tc.eval_interval == 0) or last
            ckpt_now = tc.ckpt_interval >= 0 and ((tc.ckpt_interval > 0 and step % tc.ckpt_interval == 0) or last)
            ask_stop = ctrl_c.requested and not run.d.enabled  # with DDP, ranks agree at their next sync point
            if not (log_now or eval_now or ckpt_now or ask_stop or step == run.timer.skip):
                continue
            stop = read_losses(run, ctrl_c.requested)
            step_ms = run.timer.mark(step)
            if log_now or stop:
                log_progress(run, step, lr, step_ms)
            if eval_now:
                eval_and_log(run, step)
            if ckpt_now or (stop and tc.ckpt_interval >= 0):
                write_checkpoint(run, step)
            if stop:
                raise Interrupted(f"stopped by Ctrl-C after step {step}" + (
                    f"; resume with: python train.py train.init_from=resume train.resume_from={run.run_dir}"
                    if tc.ckpt_interval >= 0 else ""))
            if eval_now or ckpt_now:
                run.timer.restart(step)


def outcome(error: BaseException | None, cfg) -> tuple[str, str | None]:
    """The one place that decides a run's status (ok | oom | nan | error | interrupted) and its message."""
    if error is None:
        return "ok", None
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return "oom", (f"out of memory ({str(error).splitlines()[0] if str(error) else type(error).__name__}; "
                       f"{cfg.model.preset}, batch {cfg.train.batch_size}, seq {cfg.train.seq_len}): lower "
                       "train.batch_size or train.seq_len, raise train.grad_accum, or choose a memory-efficient "
                       "backend (attn=flash)")
    if isinstance(error, (NonFiniteLoss, NonFiniteState)):
        return "nan", str(error)
    if disk_error(error):
        return "error", (f"{error.strerror} writing '{error.filename or 'a file'}': free disk space or choose "
                         f"another hydra.run.dir, then resume from the last checkpoint")
    if isinstance(error, (Interrupted, KeyboardInterrupt)):
        return "interrupted", str(error) or "interrupted (Ctrl-C); the last checkpoint, if any, is kept"
    if isinstance(error, UnsupportedAttentionError):
        return "error", f"{error} Choose it with attn=NAME."
    if isinstance(error, USER_ERRORS):
        return "error", str(error)
    return "error", f"{type(error).__name__}: {error}"


def disk_error(error: BaseException) -> bool:
    """A full disk or a read-only file system: the user's to fix, not a bug."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS,
                                                          errno.EACCES)


def summarize(run: Run | None, cfg, status: str, message: str | None) -> dict:
    tc = cfg.train
    summary = {"status": status, "error": message, "tokens_per_sec": None, "mfu": None, "peak_mem_gb": None,
               "final_train_loss": None, "final_val_loss": None, "steps": 0, "backend": cfg.attn.get("name"),
               "model": cfg.model.preset, "seq_len": tc.seq_len, "batch_size": tc.batch_size}
    if run is not None:
        median_ms = run.timer.median_ms()
        tps = run.tokens_per_step / (median_ms / 1e3) if median_ms else None
        summary.update(tokens_per_sec=tps, mfu=mfu(run.flops_per_token, tps, run.peak, run.d.world_size),
                       peak_mem_gb=peak_memory_gb(run.device), final_train_loss=run.train_loss,
                       final_val_loss=run.val_loss, steps=run.step, backend=run.info["backend"])
    return summary


def finish(run: Run | None, summary: dict, run_dir: Path) -> None:
    if run is not None and run.logger is not None:
        if summary["status"] != "ok":
            run.logger.log({"step": run.step, "status": summary["status"]})
        run.logger.finish(summary)
    log_end = log.info if summary["status"] == "ok" else log.error
    if summary["error"]:
        log_end("%s: %s", summary["status"], summary["error"])
    fmt = lambda v, f: format(v, f) if v is not None else "-"  # noqa: E731
    log_end("done (%s): %d steps | %s tok/s | peak mem %s GB | train loss %s | val loss %s | files in %s",
            summary["status"], summary["steps"], fmt(summary["tokens_per_sec"], ",.0f"),
            fmt(summary["peak_mem_gb"], ".2f"), fmt(summary["final_train_loss"], ".4f"),
            fmt(summary["final_val_loss"], ".4f"), run_dir)


def main(cfg: DictConfig, run_dir: str | Path, multirun: bool = False, overrides: Sequence[str] = ()) -> dict:
    """Train as `cfg` says, writing into run_dir; returns the summary (also in run_dir/summary.json).

    Resuming (train.init_from=resume) restores the run's own config; `overrides` (the command line's) are applied on
    top where they may change (train.max_steps, ...) and refused where they would change the run (the model, ...)."""
    run_dir = Path(run_dir)
    d, run, error, claim = distributed.Dist(), None, None, None
    try:
        claim = claim_run_dir(cfg, run_dir)
        cfg, ckpt = resolve_config(cfg, overrides)
        device, d = start_process(cfg)
        run_dir = Path(distributed.broadcast(str(run_dir), d))
        run = set_up(cfg, run_dir, device, d, ckpt, multirun)
        del ckpt
        train(run)
    except BaseException as e:  # recorded below; only a bug's traceback is shown
        error = e
    status, message = outcome(error, cfg)
    summary = summarize(run, cfg, status, message)
    try:
        if claim is not None and (claim.fresh or run is not None):  # never over another run's (or before ours starts)
            write_summary(run_dir, summary)
        if d.is_main:
            finish(run, summary, run_dir)
    finally:
        if claim is not None:
            claim.release()
        if run is not None:  # DDP's reducer must go while its process group lives: freed later, gloo can deadlock
            run.model = None
        distributed.cleanup()
    if status == "oom" and torch.cuda.is_available():
        del run
        gc.collect()  # give the failed job's memory back before the sweep's next job
        torch.cuda.empty_cache()
    if status == "error" and not isinstance(error, USER_ERRORS) and not disk_error(error):
        raise error  # a bug: its traceback helps
    if status not in ("ok", "interrupted") and multirun:
        log.error("job failed (%s); the sweep goes on", status)
    return summary


def claim_run_dir(cfg, run_dir: Path) -> RunDir | None:
    """Rank 0 locks the run directory (one live run per directory); one holding another run's results is refused
    unless this run resumes from it."""
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    resuming = cfg.train.resume_from if cfg.train.init_from == "resume" else None
    return RunDir(run_dir, resuming_from=resuming)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    summary = main(cfg, hc.runtime.output_dir, multirun=multirun, overrides=list(hc.overrides.task))
    if summary["status"] == "interrupted":
        sys.exit(130)  # Ctrl-C stops a sweep too
    if summary["status"] != "ok" and not multirun:
        sys.exit(1)


if __name__ == "__main__":
    if distributed.launched_by_torchrun() and os.environ["RANK"] != "0":
        # Only rank 0 keeps a Hydra run directory (the others are told its path); keep the rest from making one.
        sys.argv = [a for a in sys.argv if not a.startswith(("hydra.run.dir=", "hydra.output_subdir="))]
        sys.argv += ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=disabled"]
    try:  # Hydra creates the run directory before main(): an unwritable one is refused here, in one line
        check_writable_location(sys.argv[1:])
    except RunDirError as e:
        sys.exit(f"error: {e}")
    hydra_main()
