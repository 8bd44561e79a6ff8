"""Reproduce the FlashAttention paper's experiments: the plan of each mode, its sections, and the report they make.

Every training number comes from ordinary train.py runs (Hydra multirun, one job per config) under
<out>/runs/; kernel numbers from the attention benchmark under <out>/kernels/. Sections are kept in
<out>/sections.json, so a report can be built in several invocations (e.g. `--only kernels`, then
`--only throughput,parity,sparse`): each invocation replaces the sections it made.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from . import attention_bench, attention_results, report
from .environment import environment
from .runs import Run
from .sweeps import Progress, Sweeps
from .tables import loss_gap

SECTIONS = ("kernels", "throughput", "parity", "sparse")
# Hydra's multirun runs its jobs one after another in one process; naive goes last so that its large peak memory
# cannot leak into the others' peak-memory readings.
BACKENDS = ("flash", "block_sparse", "sdpa", "naive")

# Per mode: throughput sweep (models, seq lens, batch = tokens_per_step / seq, steps, untimed warm-up steps,
# log interval: the timed intervals are the logged ones after the warm-up; its backends, 'hf' being model.impl=hf;
# its train.compile), the small model of the convergence and block-sparse runs and their train.compile, how many
# block-sparse patterns, whether parity repeats its dropout-0 pair in fp32, and the kernel benchmark's sizes.
ALL_BACKENDS = [*BACKENDS, "hf"]
PLANS = {
    "tiny": dict(models=["gpt2-nano"], seqs=[64, 128], tokens_per_step=1024, steps=16, warmup_steps=4,
                 log_interval=3, backends=ALL_BACKENDS, compile="auto", small="gpt2-nano", small_seq=64,
                 small_batch=8, small_steps=20, small_compile="auto", patterns=3, parity_fp32=True,
                 bench={**attention_bench.QUICK, "seqs": (256, 1024), "sparse_seqs": (1024,)}),
    # to end inside 6 minutes on one H100/H200: causal D=64 kernels at 1K-16K; GPT-2 small at seq 1K, eager, for
    # flash, sdpa and HF's (the paper's baseline, eager as in the paper) at 16K tokens per step, where the eager
    # step is GPU-bound on an H200 (flash 0.99x sdpa, docs/results/h200/train_step_eager_graphs); short eager
    # convergence and block-sparse runs. Measured on the H200 (2026-12-01, fourth session) with compiled
    # throughput rows at 8K tokens and 60-step convergence runs: 433 s (kernels 114, throughput 172 of which
    # compiles ~90, parity 105, sparse 31). Eager throughput and 40-step convergence runs: 198 s (kernels 56 with
    # the autotune cache of an earlier run, throughput 36, parity 71, sparse 24).
    "quick": dict(models=["gpt2"], seqs=[1024], tokens_per_step=16384, steps=16, warmup_steps=4, log_interval=3,
                  backends=["flash", "sdpa", "hf"], compile="false", small="gpt2-mini", small_seq=256,
                  small_batch=16, small_steps=40, small_compile="false", patterns=1, parity_fp32=False,
                  bench={**attention_bench.QUICK, "sparse_seqs": (16384,)}),
    "full": dict(models=["gpt2", "gpt2-medium"], seqs=[1024, 2048, 4096], tokens_per_step=8192, steps=40,
                 warmup_steps=15, log_interval=5, backends=ALL_BACKENDS, compile="auto", small="gpt2-mini",
                 small_seq=512, small_batch=16, small_steps=500, small_compile="auto", patterns=3, parity_fp32=True,
                 bench=attention_bench.FULL),
}


def make_plan(mode: str, backends: list[str] | None = None, **overrides) -> dict:
    """PLANS[mode] with the command line's overrides (None: keep the plan's)."""
    return {**PLANS[mode], **{k: v for k, v in dict(overrides, backends=backends).items() if v}}


def backend_problem(name: str, device: str, interpret: bool) -> str | None:
    """Why a backend cannot run here (None if it can)."""
    from model.attention import UnsupportedAttentionError, get_backend

    if device == "cpu" and name in ("flash", "block_sparse") and not interpret:
        return ("on a CPU the Triton kernels run only in the Triton interpreter, far too slow for training runs "
                "(--triton-interpret to try anyway)")
    try:
        get_backend(name).check(device=device)
    except UnsupportedAttentionError as e:
        return str(e).split(". Change")[0]
    return None


# ---- sections ----

def throughput_backends(plan: dict, skipped: dict) -> list[str]:
    return [b for b in plan["backends"] if b not in skipped and b != "hf"]


def throughput(plan: dict, sweeps: Sweeps, skipped: dict) -> list[Run]:
    backends = throughput_backends(plan, skipped)
    runs = []
    for model in plan["models"]:
        for seq in plan["seqs"]:
            batch = max(1, plan["tokens_per_step"] // seq)
            warmup = min(plan["warmup_steps"], plan["steps"] // 2)
            shape = ["experiment=throughput", f"model={model}", f"model.block_size={seq}", f"train.seq_len={seq}",
                     f"train.batch_size={batch}", f"train.max_steps={plan['steps']}",
                     f"train.untimed_steps={warmup}", f"train.log_interval={plan['log_interval']}",
                     f"train.compile={plan['compile']}"]
            if backends:
                runs += sweeps.run(f"throughput/{model}_seq{seq}", "throughput",
                                   [*shape, f"attn={','.join(backends)}"], backends, plan["steps"])
            if "hf" in plan["backends"]:
                runs += sweeps.run(f"throughput/{model}_seq{seq}_hf", "throughput", [*shape, "model.impl=hf"],
                                   ["hf"], plan["steps"])
    return runs


def small_run_args(plan: dict, dropout: float, seed: int = 1337) -> list[str]:
    return [f"model={plan['small']}", f"model.block_size={plan['small_seq']}", f"model.dropout={dropout}",
            f"train.seq_len={plan['small_seq']}", f"train.batch_size={plan['small_batch']}",
            f"train.max_steps={plan['small_steps']}", "train.log_interval=1", "train.eval_interval=0",
            "train.eval_iters=5", f"train.seed={seed}", "train.dtype=auto", f"train.compile={plan['small_compile']}"]


def parity(plan: dict, sweeps: Sweeps, skipped: dict, device: str) -> tuple[list, str]:
    """Naive vs flash (or sdpa where flash cannot run): dropout 0 in the training dtype and in fp32, and dropout
    0.1 beside a noise floor. In bf16 any two exact kernels round differently and the runs drift apart over
    training; naive vs sdpa (another exact kernel) shows how far, and fp32 shows the drift is rounding."""
    other = "flash" if "flash" not in skipped else "sdpa"
    note = "" if other == "flash" else (f"flash cannot run here ({skipped['flash']}); naive vs sdpa instead, "
                                        "which checks the loop, not our kernel. ")
    m, steps = plan["small"], plan["small_steps"]
    exact = [other] + (["sdpa"] if other != "sdpa" else [])
    a, *rest = sweeps.run("parity/dropout0", "parity", [*small_run_args(plan, 0.0), f"attn=naive,{','.join(exact)}"],
                          ["naive", *exact], steps)
    pairs = [(f"naive vs {r.backend}, {m}, dropout 0, {a.config.get('dtype', 'auto')}", a, r) for r in rest]
    if device == "cuda" and plan["parity_fp32"]:  # on a CPU the training dtype is already fp32
        a32, b32 = sweeps.run("parity/dropout0_fp32", "parity",
                              [*small_run_args(plan, 0.0), "train.dtype=fp32", f"attn=naive,{other}"], ["naive", other],
                              steps)
        pairs.append((f"naive vs {other}, {m}, dropout 0, fp32 (flash: TF32 dots)", a32, b32))
    c, d = sweeps.run("parity/dropout0.1", "parity", [*small_run_args(plan, 0.1), f"attn=naive,{other}"],
                      ["naive", other], steps)
    (e,) = sweeps.run("parity/dropout0.1_seed2", "parity", [*small_run_args(plan, 0.1, seed=1338), "attn=naive"],
                      ["naive"], steps)
    pairs += [(f"naive vs {other}, {m}, dropout 0.1", c, d),
              ("noise floor: naive seed 1337 vs 1338, dropout 0.1", c, e)]
    note += ("Exact kernels still round differently (bf16, TF32), and training amplifies any difference: the gap "
             "starts at the first step's rounding level and grows. The naive-vs-sdpa row (two PyTorch kernels) "
             "shows the drift any pair of exact implementations has; the lower panels plot |Δloss| per step. ")
    note += ("With dropout the backends may draw different dropout masks, so the curves need agree only up to "
             "run-to-run noise; the last row measures that noise (same backend, another seed).")
    gap, noise = loss_gap(c, d)["mean_gap"], loss_gap(c, e)["mean_gap"]
    if gap is not None and noise:
        verdict = "within" if gap <= noise else "**outside**"
        note += (f" With dropout 0.1, naive vs {other}: mean |Δloss| {gap:.2e}, {verdict} the noise floor's "
                 f"{noise:.2e}.")
    return pairs, note


def parity_runs(plan: dict, device: str) -> int:
    return 3 + (2 if device == "cuda" and plan["parity_fp32"] else 0) + 2 + 1


def default_patterns(plan: dict) -> list[str]:
    """Block-sparse runs of the small model: blocks of seq/8 tokens, patterns of falling density."""
    seq = plan["small_seq"]
    bs = max(16, seq // 8)
    return [f"attn.pattern=local attn.block_size={bs} attn.window={seq // 4}",
            f"attn.pattern=butterfly attn.block_size={bs}",
            f"attn.pattern=local+global attn.block_size={bs} attn.window={bs} attn.num_global=1"][:plan["patterns"]]


def sparse(plan: dict, sweeps: Sweeps, skipped: dict, patterns: list[str]) -> list[Run]:
    dense = "flash" if "flash" not in skipped else "sdpa"
    runs = sweeps.run("sparse/dense", "sparse", [*small_run_args(plan, 0.0), f"attn={dense}"], [dense],
                      plan["small_steps"])
    if "block_sparse" in skipped:
        print(f"  block_sparse skipped: {skipped['block_sparse']}", flush=True)
        return runs
    for i, pattern in enumerate(patterns):
        runs += sweeps.run(f"sparse/pattern{i}", "sparse", [*small_run_args(plan, 0.0), "attn=block_sparse",
                                                            *pattern.split()], ["block_sparse"], plan["small_steps"])
    return runs


def draw_layouts(patterns: list[str], seq: int, out: Path) -> list[tuple[str, str]]:
    """Pictures of the block layouts the sparse runs use, causal as trained."""
    from kernels.sparsity_patterns import build_layout, layout_density

    from .plots import layout_picture

    pictures = []
    for i, pattern in enumerate(patterns):
        opts = {k.removeprefix("attn."): v for k, v in (kv.split("=", 1) for kv in pattern.split())}
        name, block = opts.pop("pattern"), int(opts.pop("block_size", 128))
        layout = build_layout(name, seq, block, **{k: int(v) for k, v in opts.items()})
        title = f"{name}  N={seq}  block={block}  density={layout_density(layout, seq, block, True):.3f}"
        pictures.append((pattern, layout_picture(layout, out / f"layout_{i}.png", title, causal=True)))
    return pictures


def kernels(sizes: dict, out: Path, device: str, reuse: bool) -> tuple[list[dict], str]:
    kdir = out / "kernels"
    links = "[kernels/results.md](kernels/results.md), [kernels/results.json](kernels/results.json)"
    if reuse:  # e.g. a benchmark run in parts with bench_attention.py --append --out <out>/kernels
        rows = attention_results.load(kdir / "results.json")[1]
        return rows, f"From an existing benchmark: {links}." if rows else f"--reuse-kernels: no rows in {kdir}."
    if device != "cuda":
        return [], "skipped: the kernel benchmark needs a CUDA GPU (this run uses --device cpu)."
    rows = attention_bench.sweep(kdir, sizes)
    return rows, f"Every provider and mode (fwd, bwd, fwd+bwd, TFLOP/s): {links}."


# ---- the report ----

KERNELS_HEADING = "Attention kernels: runtime and memory vs sequence length (paper Fig. 3, Tables 9–21)"
ORDER = ("skipped", "kernels", "io", "throughput", "parity", "sparse")


@dataclass
class Reproduction:
    """One invocation: its report directory, the sections kept from earlier invocations, and what it launches."""
    out: Path
    plan: dict
    env: dict
    device: str
    skipped: dict
    sweeps: Sweeps
    state: dict
    made: str  # the line under each section made now

    def keep(self, key: str, md: str, raw=None, footer: str | None = None) -> None:
        """Store a finished section and re-render, so a run stopped at a time limit keeps what it finished."""
        self.state[key] = {"md": md + ("\n" + (footer or self.made) if md else ""), "raw": raw}
        self.render()

    def render(self) -> Path:
        self.state["commands"] = self.state.get("prior_commands", []) + self.sweeps.log
        (self.out / "sections.json").write_text(json.dumps(self.state, indent=1, default=str))
        sections = ["How to read this report — what IO-aware means, the online softmax, and what each speedup "
                    "column measures: `docs/how-flash-attention-works.md` in the repository. Numbers in columns "
                    "marked **paper (A100)** are the paper's, as published; all others come from the runs below.\n"]
        sections += [self.state[k]["md"] for k in ORDER if k in self.state]
        timing = self.state.get("section_seconds", {})
        sections.append("## Commands\n\n" + "".join(
            f"- `{c['cmd']}` " + ("(runs reused from an earlier invocation)\n" if c["rc"] == "reused" else
                                  f"(rc {c['rc']}, {c['seconds']} s)\n") for c in self.state["commands"])
            + ("\nWall time per section: " + ", ".join(f"{k} {v:.0f} s" for k, v in timing.items()) + ".\n"
               if timing else ""))
        raw = {k: self.state[k]["raw"] for k in ORDER if k in self.state}
        raw |= {"plan": self.plan, "sweeps": self.state["commands"], "section_seconds": timing}
        return report.write_report(self.out, "Reproducing FlashAttention (Dao et al. 2022) with this repository",
                                   self.env, sections, raw)


def open_report(out: Path, plan: dict, mode: str, device: str, command: str, logger: str, group: str | None,
                data_dir: str | None, interpret: bool, reuse_runs: bool, fresh: bool, only: list[str]) -> Reproduction:
    """The report directory with the sections earlier invocations left (unless fresh), this machine's stamp (or,
    re-rendering reused runs, the stamp of the machine that ran them) and the backends that cannot run here."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**environment(), "command": command, "mode": mode, "device": device}
    skipped = {b: why for b in BACKENDS if (why := backend_problem(b, device, interpret))}
    state_path = out / "sections.json"
    state = json.loads(state_path.read_text()) if state_path.exists() and not fresh else {}
    made = f"_{env['date_utc']}, `{command}`_\n"
    if reuse_runs and state.get("env"):  # re-rendering elsewhere: keep the stamp of the machine that ran them
        made = f"_runs reused from an earlier invocation; rendered {env['date_utc']}, `{command}`_\n"
        env = {**state["env"], "rendered_by": command, "rendered_utc": env["date_utc"]}
        device, skipped = env["device"], (state.get("skipped") or {}).get("raw") or {}
    state["env"] = env
    state["prior_commands"] = state.get("commands", [])
    progress = Progress(planned_steps(plan, only, device, skipped))
    child_env = {"TRITON_INTERPRET": "1"} if interpret else {}
    sweeps = Sweeps(out, device, logger, group or out.name, data_dir, child_env, progress, reuse_runs)
    return Reproduction(out, plan, env, device, skipped, sweeps, state, made)


def planned_steps(plan: dict, only: list[str], device: str, skipped: dict) -> dict[str, int]:
    """Training steps each section will run, in the order they run (kernels: none, its rows are its progress)."""
    n_throughput = len(throughput_backends(plan, skipped)) + ("hf" in plan["backends"])
    steps = {"kernels": 0,
             "throughput": len(plan["models"]) * len(plan["seqs"]) * n_throughput * plan["steps"],
             "parity": parity_runs(plan, device) * plan["small_steps"],
             "sparse": (1 + (0 if "block_sparse" in skipped else plan["patterns"])) * plan["small_steps"]}
    return {k: v for k, v in steps.items() if k in only}


def kernels_step(r: Reproduction, reuse_kernels: bool) -> None:
    r.sweeps.progress.section("kernels", "attention benchmark" if r.device == "cuda" or reuse_kernels
                              else "no GPU: skipped")
    rows, note = kernels(r.plan["bench"] or attention_bench.QUICK, r.out, r.device, reuse_kernels)
    md = attention_results.kernel_section(rows, r.out, KERNELS_HEADING) if rows else f"## {KERNELS_HEADING}\n"
    r.keep("kernels", md + f"\n{note}\n", rows)


def throughput_step(r: Reproduction) -> None:
    plan = r.plan
    r.sweeps.progress.section("throughput", f"{', '.join(plan['models'])} at seq {plan['seqs']}, "
                                            f"{plan['steps']} steps per run")
    runs = throughput(plan, r.sweeps, r.skipped)
    md = report.throughput_section(runs, r.out, f"{r.device}, {', '.join(plan['models'])}",
                                   with_paper=r.device == "cuda")
    r.keep("throughput", md, [run.to_json(with_history=True) for run in runs])


def parity_step(r: Reproduction) -> None:
    r.sweeps.progress.section("parity", f"{r.plan['small']}, {r.plan['small_steps']} steps per run")
    pairs, note = parity(r.plan, r.sweeps, r.skipped, r.device)
    r.keep("parity", report.parity_section(pairs, r.out, note),
           [{"title": t, "a": a.to_json(True), "b": b.to_json(True)} for t, a, b in pairs])


def sparse_step(r: Reproduction, patterns: list[str]) -> None:
    plan = r.plan
    r.sweeps.progress.section("sparse", f"{plan['small']}, {len(patterns)} patterns, {plan['small_steps']} steps "
                                        "per run")
    runs = sparse(plan, r.sweeps, r.skipped, patterns)
    layouts = draw_layouts(patterns, plan["small_seq"], r.out) if "block_sparse" not in r.skipped else []
    r.keep("sparse", report.sparse_section(runs, r.out, layouts), [run.to_json(True) for run in runs])


def run_sections(r: Reproduction, only: list[str], patterns: list[str], reuse_kernels: bool) -> Path:
    """The backends left out and the IO model, then each asked-for section in turn, timed, each kept (and the
    report re-rendered) as soon as it is done."""
    r.keep("skipped", "**Backends that cannot run here** (left out of the runs):\n\n"
           + "".join(f"- `{b}`: {why}\n" for b, why in r.skipped.items()) if r.skipped else "", r.skipped)
    r.keep("io", report.io_section(), footer=f"_{r.env.get('rendered_utc') or r.env['date_utc']}_\n")  # a model
    steps = {"kernels": lambda: kernels_step(r, reuse_kernels), "throughput": lambda: throughput_step(r),
             "parity": lambda: parity_step(r), "sparse": lambda: sparse_step(r, patterns)}
    timing = r.state.setdefault("section_seconds", {})
    for name in [s for s in SECTIONS if s in only]:
        t0 = time.time()
        steps[name]()
        timing[name] = round(time.time() - t0, 1)
        r.sweeps.progress.section_done(name, timing[name])
    path = r.render()
    print(f"report: {path} ({r.sweeps.progress.elapsed()}; per section: "
          + ", ".join(f"{k} {v:.0f} s" for k, v in timing.items() if k in only) + ")")
    return path


def reproduce(mode: str, out: Path, device: str, only: list[str], *, logger: str = "offline",
              group: str | None = None, data_dir: str | None = None, backends: list[str] | None = None,
              plan_overrides: dict | None = None, patterns: list[str] | None = None, reuse_kernels: bool = False,
              reuse_runs: bool = False, fresh: bool = False, interpret: bool = False, command: str = "") -> Path:
    """Plan, open the report directory, run the asked-for sections, render."""
    if interpret:  # the Triton interpreter, for this process's backend checks and the training runs
        os.environ["TRITON_INTERPRET"] = "1"
    plan = make_plan(mode, backends, **(plan_overrides or {}))
    if reuse_runs and not (out / "runs").is_dir():  # before the report directory is touched
        raise SystemExit(f"--reuse-runs: no runs in {out / 'runs'}; make them first (the same command without "
                         f"--reuse-runs; <out>/runs/ is not committed, so a checkout's reports have none)")
    r = open_report(out, plan, mode, device, command, logger, group, data_dir, interpret, reuse_runs, fresh, only)
    return run_sections(r, only, default_patterns(plan) if patterns is None else patterns, reuse_kernels)
