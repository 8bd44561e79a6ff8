"""train.py's own optimizer step against a minimal bare GPT-2 loop, in one process (scripts/bench_train_step.py).

For each case (seq x batch, attention backend, mode: eager, compiled, or graphs, i.e. compiled with CUDA graphs:
torch.compile(mode="reduce-overhead") and train.py's train.compile_mode=reduce-overhead): the bare loop
(training/minimal_gpt2.py with the same attention function, random tokens already on the device, gradients clipped
at 1.0, AdamW fused on CUDA) and train.py's step (`train.set_up` + `train.optimizer_step`: its model, data
pipeline, autocast, clipping and loss bookkeeping), each warmed up, then timed over the same number of steps with
one synchronisation at the end. Peak memory is torch.cuda.max_memory_allocated per loop on CUDA (the process's
peak RSS on CPU, which only grows).
"""

from __future__ import annotations

import gc
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

import train
from model.attention import get_backend
from reporting.environment import environment
from reporting.plots import train_step_bars
from training.config import compose
from training.distributed import Dist
from training.metrics import peak_memory_gb, synchronize
from training.minimal_gpt2 import MinimalGPT2
from training.run_config import resolve_config


def reset_peak(device: torch.device) -> None:
    torch._dynamo.reset()  # each case compiles afresh and frees the last one's graphs
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def timed(step, warmup: int, steps: int, device: torch.device) -> float:
    """Seconds per step over `steps` steps, after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def train_py_case(overrides: list[str], device: torch.device, warmup: int, steps: int, run_dir: Path):
    """train.py's set-up and optimizer step, as its loop runs them between two synchronisation points."""
    cfg, _ = resolve_config(compose(overrides))
    run_dir.mkdir(parents=True, exist_ok=True)
    run = train.set_up(cfg, run_dir, device, Dist(), ckpt=None)
    counter = iter(range(1, 10**9))
    seconds = timed(lambda: train.optimizer_step(run, next(counter)), warmup, steps, device)
    train.read_losses(run, stop_requested=False)
    return seconds, run.train_loss, run.raw_model.config, getattr(torch, run.info["dtype"])


MODES = {"eager": None, "compiled": "default", "graphs": "reduce-overhead"}  # mode -> torch.compile mode


def mode_overrides(mode: str) -> list[str]:
    """train.py's settings for a bench mode."""
    if mode == "eager":
        return ["train.compile=false"]
    return ["train.compile=true", f"train.compile_mode={MODES[mode]}"]


def bare_case(c, seq: int, batch: int, device: torch.device, dtype: torch.dtype, mode: str, warmup: int,
              steps: int):
    """The minimal GPT-2, same shape and attention function as train.py's model, in a bare loop."""
    attend = get_backend(c.attn).attend_packed
    torch.manual_seed(0)
    p = c.attn_dropout_p  # train.py's model drops attention probabilities in training: so does this loop
    model = MinimalGPT2(c.vocab_size, c.block_size, c.n_layer, c.n_head, c.n_embd,
                        lambda qkv: attend(qkv, causal=True, dropout_p=p, scale=None)).to(device)
    optimizer = model.configure_optimizer(fused=device.type == "cuda")
    compiled = MODES[mode] is not None
    step_model = torch.compile(model, mode=None if MODES[mode] == "default" else MODES[mode]) if compiled else model
    x, y = (torch.randint(0, c.vocab_size, (batch, seq), device=device) for _ in range(2))
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    losses = []

    def step():
        if compiled:
            torch.compiler.cudagraph_mark_step_begin()  # as train.py: with CUDA graphs a new replay may begin
        with autocast:
            loss = step_model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # as nanoGPT and train.py (optim.grad_clip) do
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach().clone())  # a copy, as train.py keeps: the next replay reuses the output's memory

    seconds = timed(step, warmup, steps, device)
    return seconds, losses[-1].item()


def measure(seq: int, batch: int, attn: str, mode: str, model: str, device: torch.device, warmup: int, steps: int,
            data: str, attn_dropout: float, bare: bool) -> dict:
    """One row: train.py's step (and the bare loop's, when `bare`) at one case, backend and mode."""
    dtype_name = "bf16" if device.type == "cuda" else "fp32"
    overrides = ["experiment=throughput", f"model={model}", f"model.block_size={seq}", f"attn={attn}",
                 f"train.seq_len={seq}", f"train.batch_size={batch}", *mode_overrides(mode),
                 f"train.dtype={dtype_name}", f"train.device={device.type}", f"data.dir={data}",
                 f"model.attn_dropout={attn_dropout}"]
    row = {"seq": seq, "batch": batch, "attn": attn, "mode": mode}
    reset_peak(device)
    with tempfile.TemporaryDirectory() as run_dir:
        seconds, loss, config, dtype = train_py_case(overrides, device, warmup, steps, Path(run_dir))
    row.update(train_py_tokens_per_sec=batch * seq / seconds, train_py_peak_gb=peak_memory_gb(device),
               train_py_loss=loss)
    row.update(bare_tokens_per_sec=None, bare_peak_gb=None, bare_loss=None, ratio=None, extra_memory_gb=None)
    if bare:
        reset_peak(device)
        seconds, loss = bare_case(config, seq, batch, device, dtype, mode, warmup, steps)
        row.update(bare_tokens_per_sec=batch * seq / seconds, bare_peak_gb=peak_memory_gb(device), bare_loss=loss)
        row["ratio"] = row["train_py_tokens_per_sec"] / row["bare_tokens_per_sec"]
        row["extra_memory_gb"] = row["train_py_peak_gb"] - row["bare_peak_gb"]
    reset_peak(device)
    return row


def round_order(attns: list[str], r: int) -> list[str]:
    """The backends' order in round r: reversed every other round, so that a GPU whose clocks drift over the run
    (they fall as it heats) does not favour the backend that runs first."""
    return list(attns) if r % 2 == 0 else list(attns)[::-1]


def bench(cases: list[tuple[int, int]], attns: list[str], modes: list[str], model: str, device: str,
          warmup: int, steps: int, data_dir: str | None = None, attn_dropout: float = 0.0, rounds: int = 1,
          bare: bool = True, on_row: Callable[[dict], None] | None = None) -> dict:
    """Every row, each printed as it is measured; `on_row(result so far)` after each (e.g. to write it, so that a
    run cut short by a time limit keeps what it measured)."""
    device = torch.device(device)
    result = {"environment": environment(), "model": model, "dtype": "bf16" if device.type == "cuda" else "fp32",
              "attn_dropout": attn_dropout, "warmup": warmup, "steps": steps, "rounds": rounds,
              "memory": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "process peak RSS (grows only)",
              "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = data_dir or str(Path(tmp) / "stdlib_docs")
        for seq, batch in cases:
            for r in range(rounds):
                for attn in round_order(attns, r):
                    for mode in modes:
                        row = measure(seq, batch, attn, mode, model, device, warmup, steps, data, attn_dropout,
                                      bare)
                        result["rows"].append({**row, "round": r})
                        print(markdown_row(row), flush=True)
                        if on_row:
                            on_row(result)
    return result


def medians(rows: list[dict]) -> list[dict]:
    """One row per (case, backend, mode), each measured number the median over its rounds (the row itself when it
    ran once)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["seq"], r["batch"], r["attn"], r["mode"]), []).append(r)
    out = []
    for group in groups.values():
        row = {k: v for k, v in group[0].items() if k != "round"}
        for k, v in row.items():
            if isinstance(v, float):
                row[k] = statistics.median(g[k] for g in group)
        out.append({**row, "rounds": len(group)})
    return out


HEADER = ("| seq x batch | attn | mode | bare tok/s | train.py tok/s | ratio | bare peak GB | train.py peak GB "
          "| extra GB |\n|---|---|---|---|---|---|---|---|---|")


def _cell(value, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def markdown_row(r: dict) -> str:
    return (f"| {r['seq']} x {r['batch']} | {r['attn']} | {r['mode']} | {_cell(r['bare_tokens_per_sec'], ',.0f')} | "
            f"{r['train_py_tokens_per_sec']:,.0f} | {_cell(r['ratio'], '.3f')} | {_cell(r['bare_peak_gb'], '.2f')} | "
            f"{r['train_py_peak_gb']:.2f} | {_cell(r['extra_memory_gb'], '+.2f')} |")


def against_sdpa(rows: list[dict]) -> list[str]:
    """Markdown lines: each backend's train.py tokens/s over sdpa's at the same case and mode (attn=sdpa is what a
    user would otherwise run; on Hopper it is cuDNN)."""
    sdpa = {(r["seq"], r["batch"], r["mode"]): r["train_py_tokens_per_sec"] for r in rows if r["attn"] == "sdpa"}
    others = [r for r in rows if r["attn"] != "sdpa" and (r["seq"], r["batch"], r["mode"]) in sdpa]
    if not others:
        return []
    lines = ["", "train.py tokens/s against attn=sdpa's in the same case and mode:", "",
             "| seq x batch | attn | mode | ÷ sdpa |", "|---|---|---|---|"]
    lines += [f"| {r['seq']} x {r['batch']} | {r['attn']} | {r['mode']} | "
              f"{r['train_py_tokens_per_sec'] / sdpa[r['seq'], r['batch'], r['mode']]:.3f}× |" for r in others]
    return lines


def markdown(result: dict) -> str:
    env = result["environment"]
    dropout = result.get("attn_dropout", 0.0)
    rounds = result.get("rounds", 1)
    summary = medians(result["rows"])
    bare = any(r["bare_tokens_per_sec"] is not None for r in summary)
    lines = [f"# train.py step vs a minimal bare GPT-2 loop ({result['model']}, {result['dtype']}"
             f"{f', attention dropout {dropout}' if dropout else ''})", "",
             f"{env['gpu'] or 'CPU'} · torch {env['torch']} · CUDA {env['cuda']} · triton {env['triton']} · "
             f"commit {(env['git_commit'] or '?')[:7]}{' (dirty)' if env['git_dirty'] else ''} · {env['date_utc']}",
             "", *([f"`{result['command']}`", ""] if result.get("command") else []),
             f"{result['steps']} timed steps after {result['warmup']} warm-up steps per loop; one process; "
             f"peak memory: {result['memory']}." + (" ratio = train.py / bare tokens per second (target >= 0.98; "
                                                     "extra memory target <= 0.3 GB)." if bare else
                                                     " The bare loop did not run (--no-bare)."), ""]
    if rounds > 1:
        lines += [f"Each row ran in {rounds} rounds, the backends' order reversed every other round (GPU clocks drift "
                  "as it heats, which would favour whichever runs first): medians over the rounds, then each "
                  "round.", ""]
    lines += [HEADER, *(markdown_row(r) for r in summary)]
    lines += against_sdpa(summary)
    if rounds > 1:
        lines += ["", "train.py tokens/s by round (in the order they ran):", "", "| round | seq x batch | attn | mode "
                  "| train.py tok/s |", "|---|---|---|---|---|"]
        lines += [f"| {r['round']} | {r['seq']} x {r['batch']} | {r['attn']} | {r['mode']} | "
                  f"{r['train_py_tokens_per_sec']:,.0f} |" for r in result["rows"]]
    lines += ["", "![tokens per second](train_step_bench.png)"]
    return "\n".join(lines) + "\n"


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_step_bench.json").write_text(json.dumps(result, indent=2))
    (out / "train_step_bench.md").write_text(markdown(result))
    env = result["environment"]
    train_step_bars(medians(result["rows"]), out / "train_step_bench.png",
                    f"{result['model']}, {env['gpu'] or 'CPU'}, commit {(env['git_commit'] or '?')[:7]}")
