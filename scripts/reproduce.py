"""Reproduce the FlashAttention paper's experiments in one command; writes a self-contained report directory.

    python scripts/reproduce.py --quick --out docs/results/h100   # GPT-2 small, seq 1K/2K: ~12 min on one H100
    python scripts/reproduce.py --full --out docs/results/h100    # GPT-2 small + medium, seq 1K/2K/4K
    python scripts/reproduce.py --tiny --device cpu --out /tmp/r  # smoke test: tiny models, CPU backends
    python scripts/reproduce.py --quick --only kernels --out R; python scripts/reproduce.py --quick \
        --only throughput,parity,sparse --out R                    # the same report in two commands
    python scripts/bench_attention.py --part dense --out R/kernels [--append] ...   # a long benchmark in parts,
    python scripts/reproduce.py --full --only kernels --reuse-kernels --out R       # then put in the report
    python scripts/reproduce.py --quick --only parity --reuse-runs --out R         # re-render from R/runs/

Every training number comes from ordinary train.py runs (Hydra multirun, one job per config) under
<out>/runs/; kernel numbers from scripts/bench_attention.py under <out>/kernels/. The report is <out>/report.md
with PNGs and raw.json beside it. The paper's published numbers appear only in columns marked "paper (A100)".
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from reporting import attention_bench, attention_results, report
from reporting.environment import environment
from reporting.runs import Run, load_runs
from reporting.tables import loss_gap

ROOT = Path(__file__).resolve().parent.parent

SECTIONS = ("kernels", "throughput", "parity", "sparse")

# Per mode: models and sequence lengths of the throughput sweep (batch = tokens_per_step / seq), steps per
# timed run, and the small model used for the convergence and block-sparse runs.
PLANS = {
    "tiny": dict(models=["gpt2-nano"], seqs=[64, 128], tokens_per_step=1024, steps=6, warmup_steps=2,
                 small="gpt2-nano", small_seq=64, small_batch=8, small_steps=20, log_interval=2),
    "quick": dict(models=["gpt2"], seqs=[1024, 2048], tokens_per_step=8192, steps=25, warmup_steps=10,
                  small="gpt2-mini", small_seq=256, small_batch=16, small_steps=200, log_interval=5),
    "full": dict(models=["gpt2", "gpt2-medium"], seqs=[1024, 2048, 4096], tokens_per_step=8192, steps=40,
                 warmup_steps=15, small="gpt2-mini", small_seq=512, small_batch=16, small_steps=500,
                 log_interval=5),
}
# Hydra's multirun runs its jobs one after another in one process; naive goes last so that its large peak memory
# cannot leak into the others' peak-memory readings (should train.py not reset the CUDA peak per job).
BACKENDS = ("flash", "block_sparse", "sdpa", "naive")


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


class Sweeps:
    """Launches train.py multiruns into <out>/runs/<name>/ and remembers what each was meant to produce."""

    def __init__(self, out: Path, device: str, logger: str, group: str, data_dir: str | None, env: dict,
                 reuse: bool = False):
        self.out, self.device, self.logger, self.group, self.data_dir = out, device, logger, group, data_dir
        self.env = env  # the child processes' environment
        self.reuse = reuse  # load the runs an earlier invocation left in the sweep directories instead of training
        self.log: list[dict] = []

    def common(self, section: str) -> list[str]:
        args = [f"train.device={self.device}", "train.ckpt_interval=-1", "train.sample_at_eval=false"]
        if self.data_dir:
            args.append(f"data.dir={self.data_dir}")
        if self.logger == "none":
            args.append("logger=none")
        else:
            args += ["logger=wandb", f"logger.mode={self.logger}", f"logger.group={self.group}-{section}"]
        return args

    def run(self, name: str, section: str, overrides: list[str], expected: list[str]) -> list[Run]:
        sweep_dir = self.out / "runs" / name
        cmd = [sys.executable, str(ROOT / "train.py"), "-m", *overrides, *self.common(section),
               f"hydra.sweep.dir={sweep_dir}", "hydra.sweep.subdir=${hydra.job.num}_${model.impl}_${attn.name}"]
        shown = shlex.join(["python", "train.py", *cmd[2:]])
        if self.reuse:
            runs = load_runs([sweep_dir]) if sweep_dir.exists() else []
            if not runs:
                raise SystemExit(f"--reuse-runs: no runs in {sweep_dir}; make them first (the same command "
                                 "without --reuse-runs)")
            self.log.append(dict(name=name, cmd=shown, rc="reused", seconds=0))
            return runs
        print("+", shlex.join(cmd), flush=True)
        t0 = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=self.env)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / "sweep.log").write_text(proc.stdout + proc.stderr)
        self.log.append(dict(name=name, cmd=shown, rc=proc.returncode, seconds=round(time.time() - t0, 1)))
        runs = load_runs([sweep_dir]) if sweep_dir.exists() else []
        if proc.returncode != 0:
            print(f"  sweep {name} exited with {proc.returncode}; see {sweep_dir / 'sweep.log'}", flush=True)
        # A job the sweep never reached is still a row: "missing", with the reason.
        for label in expected[len(runs):]:
            runs.append(Run(name=label, source=str(sweep_dir), status="missing", backend=label, model="?",
                            seq_len=None, batch_size=None,
                            error=f"job never ran (sweep rc={proc.returncode}, see sweep.log)"))
        return runs


def throughput(plan: dict, sweeps: Sweeps, skipped: dict) -> list[Run]:
    backends = [b for b in plan["backends"] if b not in skipped and b != "hf"]
    runs = []
    for model in plan["models"]:
        for seq in plan["seqs"]:
            batch = max(1, plan["tokens_per_step"] // seq)
            warmup = min(plan["warmup_steps"], plan["steps"] // 2)
            shape = ["experiment=throughput", f"model={model}", f"model.block_size={seq}", f"train.seq_len={seq}",
                     f"train.batch_size={batch}", f"train.max_steps={plan['steps']}",
                     f"train.warmup_steps={warmup}", f"train.log_interval={plan['log_interval']}"]
            if backends:
                runs += sweeps.run(f"throughput/{model}_seq{seq}", "throughput",
                                   [*shape, f"attn={','.join(backends)}"], backends)
            if "hf" in plan["backends"]:
                runs += sweeps.run(f"throughput/{model}_seq{seq}_hf", "throughput", [*shape, "model.impl=hf"],
                                   ["hf"])
    return runs


def small_run_args(plan: dict, dropout: float, seed: int = 1337) -> list[str]:
    return [f"model={plan['small']}", f"model.block_size={plan['small_seq']}", f"model.dropout={dropout}",
            f"train.seq_len={plan['small_seq']}", f"train.batch_size={plan['small_batch']}",
            f"train.max_steps={plan['small_steps']}", "train.log_interval=1", "train.eval_interval=0",
            "train.eval_iters=5", f"train.seed={seed}", "train.dtype=auto"]


def parity(plan: dict, sweeps: Sweeps, skipped: dict, device: str) -> tuple[list, str]:
    """Naive vs flash (or sdpa where flash cannot run): dropout 0 in the training dtype and in fp32, and dropout
    0.1 beside a noise floor. In bf16 any two exact kernels round differently and the runs drift apart over
    training; naive vs sdpa (another exact kernel) shows how far, and fp32 shows the drift is rounding."""
    other = "flash" if "flash" not in skipped else "sdpa"
    note = "" if other == "flash" else (f"flash cannot run here ({skipped['flash']}); naive vs sdpa instead, "
                                        "which checks the loop, not our kernel. ")
    m = plan["small"]
    exact = [other] + (["sdpa"] if other != "sdpa" else [])
    a, *rest = sweeps.run("parity/dropout0", "parity", [*small_run_args(plan, 0.0), f"attn=naive,{','.join(exact)}"],
                          ["naive", *exact])
    pairs = [(f"naive vs {r.backend}, {m}, dropout 0, {a.config.get('dtype', 'auto')}", a, r) for r in rest]
    if device == "cuda":  # on a CPU the training dtype is already fp32
        a32, b32 = sweeps.run("parity/dropout0_fp32", "parity",
                              [*small_run_args(plan, 0.0), "train.dtype=fp32", f"attn=naive,{other}"], ["naive", other])
        pairs.append((f"naive vs {other}, {m}, dropout 0, fp32 (flash: TF32 dots)", a32, b32))
    c, d = sweeps.run("parity/dropout0.1", "parity", [*small_run_args(plan, 0.1), f"attn=naive,{other}"],
                      ["naive", other])
    (e,) = sweeps.run("parity/dropout0.1_seed2", "parity", [*small_run_args(plan, 0.1, seed=1338), "attn=naive"],
                      ["naive"])
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


def sparse(plan: dict, sweeps: Sweeps, skipped: dict, patterns: list[str]) -> list[Run]:
    dense = "flash" if "flash" not in skipped else "sdpa"
    runs = sweeps.run("sparse/dense", "sparse", [*small_run_args(plan, 0.0), f"attn={dense}"], [dense])
    if "block_sparse" in skipped:
        print(f"  block_sparse skipped: {skipped['block_sparse']}", flush=True)
        return runs
    for i, pattern in enumerate(patterns):
        runs += sweeps.run(f"sparse/pattern{i}", "sparse", [*small_run_args(plan, 0.0), "attn=block_sparse",
                                                            *pattern.split()], ["block_sparse"])
    return runs


BENCH_SIZES = {  # the paper's conditions at head dim 64
    "quick": {**attention_bench.QUICK, "sparse_seqs": (16384,)},
    "full": {**attention_bench.FULL, "head_dims": (64, 128)},
}


def draw_layouts(patterns: list[str], seq: int, out: Path) -> list[tuple[str, str]]:
    """Pictures of the block layouts the sparse runs use (scripts/draw_layout.py), causal as trained."""
    pictures = []
    for i, pattern in enumerate(patterns):
        opts = dict(kv.split("=", 1) for kv in pattern.split())
        flags = [x for k, v in opts.items() for x in (f"--{k.removeprefix('attn.').replace('_', '-')}", v)]
        png = out / f"layout_{i}.png"
        cmd = [sys.executable, str(ROOT / "scripts" / "draw_layout.py"), *flags, "--seq-len", str(seq), "--causal",
               "--out", str(png)]
        if subprocess.run(cmd, cwd=ROOT, capture_output=True).returncode == 0:
            pictures.append((pattern, png.name))
    return pictures


def kernels(mode: str, out: Path, device: str, reuse: bool) -> tuple[list[dict], str]:
    kdir = out / "kernels"
    links = "[kernels/results.md](kernels/results.md), [kernels/results.json](kernels/results.json)"
    if reuse:  # e.g. a benchmark run in parts with bench_attention.py --append --out <out>/kernels
        rows = attention_results.load(kdir / "results.json")[1]
        return rows, f"From an existing benchmark: {links}." if rows else f"--reuse-kernels: no rows in {kdir}."
    if device != "cuda":
        return [], "skipped: the kernel benchmark needs a CUDA GPU (this run uses --device cpu)."
    rows = attention_bench.sweep(kdir, BENCH_SIZES.get(mode, attention_bench.QUICK))
    return rows, f"Every provider and mode (fwd, bwd, fwd+bwd, TFLOP/s): {links}."


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", const="quick", dest="mode")
    mode.add_argument("--full", action="store_const", const="full", dest="mode")
    mode.add_argument("--tiny", action="store_const", const="tiny", dest="mode", help="tiny models, for CPUs/tests")
    p.add_argument("--out", required=True, help="report directory (created)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of sections: {', '.join(SECTIONS)}")
    p.add_argument("--logger", default="offline", choices=["none", "offline", "online"],
                   help="wandb mode for the training runs (none: metrics.jsonl only)")
    p.add_argument("--group", default=None, help="wandb group prefix (default: the report directory's name)")
    p.add_argument("--data-dir", default=None, help="data.dir for train.py (default: data/stdlib_docs)")
    p.add_argument("--models", nargs="+", help="throughput models (presets), e.g. gpt2 gpt2-medium")
    p.add_argument("--seqs", nargs="+", type=int, help="throughput sequence lengths, e.g. 1024 2048 4096")
    p.add_argument("--backends", default=",".join((*BACKENDS, "hf")),
                   help="throughput backends, comma list; 'hf' is model.impl=hf")
    p.add_argument("--steps", type=int, help="steps per throughput run")
    p.add_argument("--tokens-per-step", type=int, help="throughput batch = this // seq len")
    p.add_argument("--small-steps", type=int, help="steps per convergence / block-sparse run")
    p.add_argument("--reuse-kernels", action="store_true",
                   help="with --only kernels: render <out>/kernels/results.json instead of running the benchmark")
    p.add_argument("--reuse-runs", action="store_true",
                   help="build the --only training sections from the runs an earlier invocation left under <out>/runs "
                        "(no training); the report keeps that invocation's machine stamp")
    p.add_argument("--fresh", action="store_true", help="forget sections made by earlier runs into --out")
    p.add_argument("--triton-interpret", action="store_true",
                   help="on CPU, run flash/block_sparse through the (slow) Triton interpreter instead of skipping")
    p.add_argument("--sparse-patterns", nargs="*", default=None,
                   help="attn overrides per block-sparse run, e.g. 'attn.pattern=local attn.window=2'")
    args = p.parse_args(argv)
    mode = args.mode or "quick"
    plan = {**PLANS[mode], "backends": [b.strip() for b in args.backends.split(",") if b.strip()]}
    for key in ("models", "seqs", "steps", "small_steps", "tokens_per_step"):
        if getattr(args, key):
            plan[key] = getattr(args, key)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    if unknown := set(only) - set(SECTIONS):
        p.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")

    import importlib.util

    import torch

    missing = [m for m in ("hydra", "omegaconf", *(["wandb"] if args.logger != "none" else []))
               if importlib.util.find_spec(m) is None]
    if missing:
        p.error(f"train.py needs {', '.join(missing)}, not installed here (pip install hydra-core wandb; "
                "or --logger none to train without wandb)")
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**environment(), "command": shlex.join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
           "mode": mode, "device": device}
    child_env = dict(os.environ)
    if device == "cpu" and args.triton_interpret:
        child_env["TRITON_INTERPRET"] = "1"
        os.environ["TRITON_INTERPRET"] = "1"  # for backend_problem's check in this process
    skipped = {b: why for b in BACKENDS if (why := backend_problem(b, device, args.triton_interpret))}
    patterns = args.sparse_patterns if args.sparse_patterns is not None else default_patterns(plan)

    # Sections are kept in <out>/sections.json, so that a report can be built in several invocations (e.g.
    # --only kernels, then --only throughput,parity,sparse): each run replaces the sections it made.
    state_path = out / "sections.json"
    state = json.loads(state_path.read_text()) if state_path.exists() and not args.fresh else {}
    made = stamp_now = f"_{env['date_utc']}, `{env['command']}`_\n"
    earlier_env = state.get("env") or (json.loads((out / "raw.json").read_text()).get("environment")
                                       if (out / "raw.json").exists() else None)
    if args.reuse_runs and earlier_env:  # re-rendering elsewhere: keep the stamp of the machine that ran them
        made = f"_runs reused from an earlier invocation; rendered {env['date_utc']}, `{env['command']}`_\n"
        env = {**earlier_env, "rendered_by": env["command"], "rendered_utc": env["date_utc"]}
        device, skipped = env["device"], state.get("skipped", {}).get("raw") or {}
    state["env"] = env
    sweeps = Sweeps(out, device, args.logger, args.group or out.name, args.data_dir, child_env, args.reuse_runs)

    prior_commands = state.get("commands", [])

    def save() -> Path:  # after every section, so a run stopped at a time limit keeps the sections it finished
        state["commands"] = prior_commands + sweeps.log
        state_path.write_text(json.dumps(state, indent=1, default=str))
        return render(out, state, env, plan)

    def keep(key: str, md: str, raw=None, footer=None):
        state[key] = {"md": md + ("\n" + (footer or made) if md else ""), "raw": raw}
        save()

    keep("skipped", "**Backends that cannot run here** (left out of the runs):\n\n"
         + "".join(f"- `{b}`: {why}\n" for b, why in skipped.items()) if skipped else "", skipped)
    bench: list[dict] = state.get("kernels", {}).get("raw") or []
    if "kernels" in only:
        bench, note = kernels(mode, out, device, args.reuse_kernels)
        heading = "1. Attention kernels: runtime and memory vs sequence length (paper Fig. 3, Tables 9–21)"
        keep("kernels", attention_results.kernel_section(bench, out, heading) + f"\n{note}\n" if bench else
             f"## 1. Attention kernels\n\n{note}\n", bench)
    keep("io", report.io_section(), footer=stamp_now)  # a model, not runs
    if "throughput" in only:
        runs = throughput(plan, sweeps, skipped)
        keep("throughput", report.throughput_section(runs, out, f"{device}, {', '.join(plan['models'])}"),
             [r.to_json() for r in runs])
    if "parity" in only:
        pairs, note = parity(plan, sweeps, skipped, device)
        keep("parity", report.parity_section(pairs, out, note),
             [{"title": t, "a": a.to_json(True), "b": b.to_json(True)} for t, a, b in pairs])
    if "sparse" in only:
        sruns = sparse(plan, sweeps, skipped, patterns)
        layouts = draw_layouts(patterns, plan["small_seq"], out) if "block_sparse" not in skipped else []
        state["sparse_runs"] = {"runs": [r.to_json(True) for r in sruns], "layouts": layouts}
        saved = state["sparse_runs"]
        keep("sparse", report.sparse_section([Run.from_json(r) for r in saved["runs"]], out,
                                             [tuple(x) for x in saved["layouts"]]), saved["runs"])
    path = save()
    print(f"report: {path}")
    return path


def render(out: Path, state: dict, env: dict, plan: dict) -> Path:
    order = ("skipped", "kernels", "io", "throughput", "parity", "sparse")
    sections = ["How to read this report — what IO-aware means, the online softmax, and what each speedup column "
                "measures: `docs/how-flash-attention-works.md` in the repository. Numbers in columns marked "
                "**paper (A100)** are the paper's, as published; all others come from the runs below.\n"]
    sections += [state[k]["md"] for k in order if k in state]
    sections.append("## Commands\n\n" + "".join(
        f"- `{c['cmd']}` " + ("(runs reused from an earlier invocation)\n" if c["rc"] == "reused" else
                              f"(rc {c['rc']}, {c['seconds']} s)\n") for c in state["commands"]))
    raw = {k: state[k]["raw"] for k in order if k in state} | {"plan": plan, "sweeps": state["commands"]}
    return report.write_report(out, "Reproducing FlashAttention (Dao et al. 2022) with this repository", env,
                               sections, raw)


def default_patterns(plan: dict) -> list[str]:
    """Block-sparse runs of the small model: blocks of seq/8 tokens, three patterns of falling density."""
    seq = plan["small_seq"]
    bs = max(16, seq // 8)
    return [f"attn.pattern=local attn.block_size={bs} attn.window={seq // 4}",
            f"attn.pattern=local+global attn.block_size={bs} attn.window={bs} attn.num_global=1",
            f"attn.pattern=butterfly attn.block_size={bs}"]


if __name__ == "__main__":
    main()
