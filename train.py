"""Train GPT-2 with a swappable attention backend.

    python train.py                                    # quickstart: tiny GPT-2 on the embedded corpus, CPU ok
    python train.py attn=naive model=gpt2 train.batch_size=8
    python train.py -m attn=naive,sdpa,flash            # a sweep: one run directory (and wandb run) per job
    torchrun --standalone --nproc_per_node 2 train.py   # DDP: nccl on GPUs, gloo on CPUs
    python train.py train.init_from=resume train.resume_from=outputs/<date>/<time>

Config schema: training/config.py; choices: conf/. Run directory contents: docs/dev/CONTRACTS.md.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import sys
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from model import GPT, GPTConfig
from model.attention import UnsupportedAttentionError, attention_density, get_backend
from model.pretrained import PretrainedError
from training import distributed
from training.checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from training.config import ConfigError, register_configs, validate
from training.data import DataError, TokenBatches, check_vocab, prepare_data
from training.loggers import RunLogger
from training.lr import learning_rate
from training.metrics import StepTimer, mfu, peak_flops, peak_memory_gb

log = logging.getLogger("train")
register_configs()

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
USER_ERRORS = (ConfigError, DataError, CheckpointError, UnsupportedAttentionError, PretrainedError)


class NonFiniteLoss(RuntimeError):
    pass


def status_of(error: BaseException) -> str:
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return "oom"
    return "nan" if isinstance(error, NonFiniteLoss) else "error"


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


def model_config(cfg) -> GPTConfig:
    m = cfg.model
    overrides = dict(m.overrides)
    if m.block_size is not None:
        overrides["block_size"] = m.block_size
    options = {k: v for k, v in cfg.attn.items() if k != "name"}
    try:
        return GPTConfig.preset(m.preset, dropout=m.dropout, attn_dropout=m.attn_dropout, attn=cfg.attn.name,
                                attn_options=options, **overrides)
    except TypeError as e:  # an unknown GPTConfig field in model.overrides
        fields = ", ".join(GPTConfig.__dataclass_fields__)
        raise ConfigError(f"model.overrides: {e}; allowed fields: {fields}") from None
    except ValueError as e:
        raise ConfigError(f"{e} (model=<preset>)") from None


def build_model(cfg, config: GPTConfig):
    if cfg.model.impl == "hf":
        from training.hf_baseline import HFGPT
        return HFGPT(config)
    if cfg.train.init_from not in ("scratch", "resume"):  # the preset is ignored: the weights set the shape
        shape = {k: v for k, v in cfg.model.overrides.items() if k == "vocab_size"}
        if cfg.model.block_size is not None:
            shape["block_size"] = cfg.model.block_size
        return GPT.from_pretrained(cfg.train.init_from, attn=config.attn, attn_options=config.attn_options,
                                   dropout=config.dropout, attn_dropout=config.attn_dropout, **shape)
    return GPT(config)


def check_shape(config: GPTConfig, meta: dict, data_path, seq_len: int) -> None:
    check_vocab(meta, config.vocab_size, Path(data_path))
    if seq_len > config.block_size:
        raise ConfigError(f"train.seq_len={seq_len} is longer than the model's context "
                          f"(block_size={config.block_size}); use train.seq_len<={config.block_size} "
                          f"or model.block_size={seq_len}")


def describe_attention(model, config: GPTConfig) -> str:
    if hasattr(model, "describe_attention"):
        return model.describe_attention()
    return get_backend(config.attn).describe(config.attn_options)


def run_label(cfg, config: GPTConfig) -> str:
    options = "".join(f"-{v}" for v in config.attn_options.values())
    attn = "hf-eager" if cfg.model.impl == "hf" else config.attn + options
    return f"{cfg.model.preset}-{attn}-seq{cfg.train.seq_len}"


@torch.no_grad()
def evaluate(model, val_path, cfg, device, autocast, d) -> float:
    """Mean loss over the same eval_iters batches every time (a fixed seed), so evals compare."""
    model.eval()
    batches = TokenBatches(val_path, "val", cfg.train.batch_size, cfg.train.seq_len, device, cfg.train.seed, d.rank,
                           d.world_size)
    losses = []
    for _ in range(cfg.train.eval_iters):
        x, y = batches.next()
        with autocast:
            losses.append(model(x, y)[1].float())
    model.train()
    return distributed.all_reduce_mean(torch.stack(losses).mean(), d).item()


def sample_text(model, meta, device, n_tokens: int, seed: int) -> str:
    prompt = torch.full((1, 1), ord("\n") if meta["tokenizer"] == "bytes" else 198, device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    out = model.generate(prompt, n_tokens, temperature=0.8, top_k=50, generator=g)[0, 1:].tolist()
    model.train(was_training)
    if meta["tokenizer"] == "bytes":
        return bytes(out).decode("utf-8", errors="replace")
    try:
        from training.tokenizer import get_gpt2_encoding
        return get_gpt2_encoding().decode(out)
    except Exception as e:  # no GPT-2 ranks file offline: show the ids
        return f"{out} (token ids: {e})"


def start_metrics(run_dir: Path, resumed_from: Path | None, step: int) -> None:
    """A fresh run starts an empty metrics.jsonl; a resumed one starts with the old run's rows up to its checkpoint."""
    old = resumed_from / "metrics.jsonl" if resumed_from else None
    rows = [line for line in old.read_text().splitlines() if line and json.loads(line)["step"] <= step] \
        if old and old.is_file() else []
    (run_dir / "metrics.jsonl").write_text("".join(r + "\n" for r in rows))


def main(cfg: DictConfig, run_dir: str | Path, multirun: bool = False) -> dict:
    """Train as `cfg` says, writing into run_dir; returns the summary (also in run_dir/summary.json)."""
    run_dir = Path(run_dir)
    summary = {"status": "error", "error": None, "tokens_per_sec": None, "mfu": None, "peak_mem_gb": None,
               "final_train_loss": None, "final_val_loss": None, "steps": 0, "backend": cfg.attn.get("name"),
               "model": cfg.model.preset, "seq_len": cfg.train.seq_len, "batch_size": cfg.train.batch_size}
    d = distributed.Dist()
    try:
        validate(cfg)
        device = resolve_device(cfg)
        d = distributed.setup(device.type)
        if not d.is_main:
            log.setLevel(logging.WARNING)
        if device.type == "cuda":
            device = torch.device("cuda", d.local_rank)
            torch.cuda.init()  # the allocator must exist before its statistics can be reset
            torch.cuda.reset_peak_memory_stats(device)  # each job of a sweep reports its own peak
        run_dir = Path(distributed.broadcast(str(run_dir), d))
        summary = trainer(cfg, run_dir, device, d, summary)
    except USER_ERRORS as e:
        summary.update(status="error", error=str(e))
        log.error("error: %s", e)
    except (torch.OutOfMemoryError, MemoryError) as e:
        summary.update(status="oom", error=f"out of memory: {str(e).splitlines()[0] if str(e) else ''}")
        log.error("out of memory (%s, batch %d, seq %d): lower train.batch_size or train.seq_len, raise "
                  "train.grad_accum, or choose a memory-efficient backend (attn=flash)",
                  cfg.model.preset, cfg.train.batch_size, cfg.train.seq_len)
    except NonFiniteLoss as e:
        summary.update(status="nan", error=str(e))
        log.error("%s", e)
    except KeyboardInterrupt:
        summary.update(status="error", error="interrupted")
        log.error("interrupted; the last checkpoint (if any) is in %s", run_dir)
        raise  # a Ctrl-C stops a sweep too
    finally:
        if d.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        distributed.cleanup()
    if summary["status"] == "oom" and torch.cuda.is_available():
        gc.collect()  # give the failed job's memory back before the sweep's next job
        torch.cuda.empty_cache()
    if summary["status"] != "ok" and multirun:
        log.error("job failed (%s); the sweep goes on", summary["status"])
    return summary


def trainer(cfg, run_dir: Path, device: torch.device, d, summary: dict) -> dict:
    tc = cfg.train
    torch.manual_seed(tc.seed + d.rank)
    dtype = resolve_dtype(cfg, device)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()

    # Data (rank 0 builds the embedded corpus on first use; the others get its path, or its error)
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
    data_path, meta = found

    # Model, refused before training if the backend cannot serve this request
    config = model_config(cfg)
    if tc.init_from == "scratch":  # refuse before building a big model
        check_shape(config, meta, data_path, tc.seq_len)
    if cfg.model.impl == "hf" and tc.init_from not in ("scratch", "resume"):
        raise ConfigError("model.impl=hf trains from scratch only; for pretrained weights use model.impl=ours")
    ckpt = load_checkpoint(tc.resume_from) if tc.init_from == "resume" else None
    if ckpt is not None:
        if ckpt.get("impl", "ours") != cfg.model.impl:
            raise CheckpointError(f"the checkpoint was trained with model.impl={ckpt.get('impl', 'ours')}; "
                                  f"resume with the same (got model.impl={cfg.model.impl})")
        config = GPTConfig(**{**ckpt["model_config"], "attn": config.attn, "attn_options": config.attn_options})
    model = build_model(cfg, config).to(device)
    config = model.config
    check_shape(config, meta, data_path, tc.seq_len)
    model.check_attention(device, dtype)
    backend = describe_attention(model, config)
    density = model.attention_density(tc.seq_len) if hasattr(model, "attention_density") else \
        attention_density(config.attn, config.attn_options, tc.seq_len, causal=True)
    optimizer = model.configure_optimizers(cfg.optim.weight_decay, cfg.optim.lr, tuple(cfg.optim.betas), device.type)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    # Resume: weights, optimizer, scaler, step, RNGs, data position
    train_data = TokenBatches(data_path, "train", tc.batch_size, tc.seq_len, device, tc.seed, d.rank, d.world_size)
    start_step, wandb_id = 0, None
    if ckpt is not None:
        if cfg.model.impl == "hf":
            model.load_gpt_state_dict(ckpt["model"])
        else:
            model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        start_step, wandb_id = ckpt["step"], ckpt.get("wandb_run_id")
        if len(ckpt["data_state"]) == d.world_size:
            train_data.load_state_dict(ckpt["data_state"][d.rank])
            set_rng_state(ckpt["rng"][d.rank])
        else:
            log.warning("checkpoint from %d ranks, resuming on %d: data streams restart from the seed",
                        len(ckpt["data_state"]), d.world_size)
    raw_model = model
    if tc.compile:
        model = torch.compile(model)
    if d.enabled:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[d.local_rank] if device.type == "cuda"
                                                          else None)

    # Run directory, loggers, and what MFU needs
    label = run_label(cfg, config)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    info = {"model_config": asdict(config), "backend": backend, "device": str(device), "gpu_name": gpu_name,
            "n_params": raw_model.num_params(), "world_size": d.world_size, "dtype": str(dtype).removeprefix("torch.")}
    peak = peak_flops(device, tc.peak_flops)
    flops_per_token = raw_model.flops_per_token(tc.seq_len, density)
    tokens_per_step = tc.batch_size * tc.seq_len * tc.grad_accum * d.world_size
    logger = None
    if d.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps({**resolved, **info}, indent=2))
        resumed_from = None if ckpt is None else \
            Path(tc.resume_from) if Path(tc.resume_from).is_dir() else Path(tc.resume_from).parent
        start_metrics(run_dir, resumed_from, start_step)
        lc = cfg.logger
        logger = RunLogger(run_dir, OmegaConf.merge(lc, {"group": lc.group or label,
                                                         "name": lc.name or f"{label}-bs{tc.batch_size}"}),
                           {**resolved, **info}, resume_id=wandb_id)
        log.info("model %s (%s, %.2fM params) | attention: %s | %s %s x%d | data %s (%d train tokens)",
                 cfg.model.preset, cfg.model.impl, info["n_params"] / 1e6, backend, device, info["dtype"],
                 d.world_size, data_path, meta["train_tokens"])
        log.info("run directory: %s", run_dir.resolve())

    summary.update(backend=backend, model=cfg.model.preset)
    timer = StepTimer(device, skip=start_step + tc.warmup_steps)
    train_loss = val_loss = None
    pending: list[tuple[int, torch.Tensor]] = []  # (step, loss on the device) not read back yet
    try:
        step = start_step
        timer.mark(step)
        for step in range(start_step + 1, tc.max_steps + 1):
            lr = learning_rate(step - 1, cfg.optim, tc.max_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # One optimizer step: grad_accum micro-steps, gradients all-reduced (DDP) on the last one only
            loss_sum = torch.zeros((), device=device)
            for micro in range(tc.grad_accum):
                x, y = train_data.next()
                last = micro == tc.grad_accum - 1
                with model.no_sync() if d.enabled and not last else nullcontext():
                    with autocast:
                        _, loss = model(x, y)
                    # The engine runs a CUDA backward on its per-GPU thread; backward_in_caller_thread keeps it on
                    # this one (an experiment: slower end to end on an H100, docs/dev/kernel-notes.md v3).
                    with torch.autograd.set_multithreading_enabled(not tc.backward_in_caller_thread):
                        scaler.scale(loss / tc.grad_accum).backward()
                loss_sum += loss.detach()
            if cfg.optim.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            pending.append((step, loss_sum / tc.grad_accum))

            last_step = step == tc.max_steps
            log_now = step % tc.log_interval == 0 or last_step
            eval_now = (tc.eval_interval > 0 and step % tc.eval_interval == 0) or last_step
            ckpt_now = tc.ckpt_interval >= 0 and ((tc.ckpt_interval > 0 and step % tc.ckpt_interval == 0) or last_step)
            if not (log_now or eval_now or ckpt_now or step == timer.skip):
                continue  # no host-device synchronisation between these points: the host runs ahead

            # Read the losses back (one sync); a non-finite one stops the run before anything is saved
            losses = distributed.all_reduce_mean(torch.stack([loss for _, loss in pending]), d).tolist()
            bad = next((s for (s, _), value in zip(pending, losses, strict=True) if not math.isfinite(value)), None)
            if bad is not None:
                raise NonFiniteLoss(f"loss is {losses[bad - pending[0][0]]} at step {bad}: stopped. The last good "
                                    f"checkpoint (if any) is kept in {run_dir}. Lower optim.lr or use "
                                    "train.dtype=bf16/fp32.")
            pending.clear()
            train_loss = losses[-1]
            step_ms = timer.mark(step)

            if log_now:
                tps = tokens_per_step / (step_ms / 1e3) if step_ms else None
                row = {"step": step, "train/loss": train_loss, "train/lr": lr, "perf/tokens_per_sec": tps,
                       "perf/step_ms": step_ms, "perf/mfu": mfu(flops_per_token, tps, peak, d.world_size),
                       "perf/peak_mem_gb": peak_memory_gb(device), "attn/density": density}
                if d.is_main:
                    logger.log(row)
                    log.info("step %d/%d | loss %.4f | lr %.2e | %s tok/s | %s ms/step | mfu %s | mem %.2f GB",
                             step, tc.max_steps, train_loss, lr, f"{tps:,.0f}" if tps else "-",
                             f"{step_ms:.1f}" if step_ms else "-",
                             f"{row['perf/mfu']:.1%}" if row["perf/mfu"] is not None else "-",
                             row["perf/peak_mem_gb"])
            if eval_now:
                val_loss = evaluate(model, data_path, cfg, device, autocast, d)
                if d.is_main:
                    logger.log({"step": step, "val/loss": val_loss, "val/ppl": math.exp(min(val_loss, 50))})
                    log.info("eval step %d | val loss %.4f | val ppl %.2f", step, val_loss, math.exp(min(val_loss, 50)))
                    if tc.sample_at_eval:
                        log.info("sample: %r", sample_text(raw_model, meta, device, tc.sample_tokens, tc.seed))
            if ckpt_now:
                states = distributed.gather((rng_state(), train_data.state_dict()), d)
                if d.is_main:
                    weights = raw_model.gpt_state_dict() if cfg.model.impl == "hf" else raw_model.state_dict()
                    save_checkpoint({"model": weights, "model_config": asdict(config), "impl": cfg.model.impl,
                                     "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                                     "step": step, "rng": [s[0] for s in states],
                                     "data_state": [s[1] for s in states], "wandb_run_id": logger.run_id,
                                     "config": resolved}, run_dir / "ckpt.pt")
            if eval_now or ckpt_now:
                timer.restart(step)
        summary["status"] = "ok"
    except BaseException as e:
        summary["status"] = status_of(e)
        raise
    finally:
        median_ms = timer.median_ms()
        tps = tokens_per_step / (median_ms / 1e3) if median_ms else None
        summary.update(tokens_per_sec=tps, mfu=mfu(flops_per_token, tps, peak, d.world_size),
                       peak_mem_gb=peak_memory_gb(device), final_train_loss=train_loss, final_val_loss=val_loss,
                       steps=step)
        if d.is_main:
            if summary["status"] != "ok":
                logger.log({"step": step, "status": summary["status"]})
            logger.finish(summary)
            log.info("done (%s): %d steps | %s tok/s | peak mem %.2f GB | train loss %s | val loss %s | files in %s",
                     summary["status"], step, f"{tps:,.0f}" if tps else "-", summary["peak_mem_gb"],
                     f"{train_loss:.4f}" if train_loss is not None else "-",
                     f"{val_loss:.4f}" if val_loss is not None else "-", run_dir)
    return summary


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    summary = main(cfg, hc.runtime.output_dir, multirun=multirun)
    if summary["status"] != "ok" and not multirun:
        sys.exit(1)


if __name__ == "__main__":
    if distributed.launched_by_torchrun() and os.environ["RANK"] != "0":
        # Only rank 0 keeps a Hydra run directory (the others are told its path); keep the rest from making one.
        sys.argv = [a for a in sys.argv if not a.startswith(("hydra.run.dir=", "hydra.output_subdir="))]
        sys.argv += ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=disabled"]
    hydra_main()
