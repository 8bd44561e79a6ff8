"""Hardware counters of the attention kernels of one causal fwd+bwd (GPU, Nsight Compute): ours under a program
order, or cuDNN's. For every (N, provider) this file starts again under `ncu` (clocks left alone), which profiles
every kernel of the second fwd+bwd (the first compiles and tunes our kernels, unprofiled): D = 64, 16K tokens, the
model's packed projection. Nsight Compute runs one kernel at a time and flushes L2 before each, so durations are
not a pipeline's; read the rates and ratios. Prints the counters side by side and writes kernel_counters.json, .md
and .png.

    python docs/dev/kernel_counters.py --out DIR                               # from a checkout's root
    python docs/dev/kernel_counters.py --seqs 8192 --providers landed grid all cudnn --out DIR

Providers: `cudnn`, or one of our program orders as in docs/dev/lpt_ab.py (`landed`, `grid`, `G<n>`, `all`).
"""

import argparse
import csv
import glob
import io
import json
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

SECTIONS = ["SpeedOfLight", "ComputeWorkloadAnalysis", "MemoryWorkloadAnalysis", "Occupancy", "WarpStateStats",
            "LaunchStats"]
PIPES = [f"sm__{p}.avg.pct_of_peak_sustained_active" for p in (
    "pipe_tensor_op_gmma_cycles_active", "pipe_tensor_op_hmma_cycles_active", "pipe_shared_cycles_active",
    "inst_executed_pipe_xu", "pipe_fma_cycles_active", "inst_executed_pipe_alu",
    "inst_executed_pipe_lsu")]
STALLS = [f"smsp__average_warps_issue_stalled_{r}_per_issue_active.ratio" for r in (
    "long_scoreboard", "barrier", "wait", "math_pipe_throttle", "mio_throttle", "short_scoreboard", "dispatch_stall",
    "not_selected", "selected")]
WORK = ["sm__ops_path_tensor_src_bf16_dst_fp32.sum", "smsp__inst_executed.sum",
        "l1tex__data_pipe_lsu_wavefronts_mem_shared.sum"]
EXTRA_METRICS = [*WORK, "dram__bytes_read.sum", "lts__t_sector_hit_rate.pct", "lts__t_sectors_srcunit_ltcfabric.sum",
                 *PIPES, *STALLS]
SHOWN = ["Duration", "Registers Per Thread", "Achieved Occupancy", "Compute (SM) Throughput", "Memory Throughput",
         "DRAM Throughput", "L2 Hit Rate", "L1/TEX Hit Rate", "Issue Slots Busy",
         "Warp Cycles Per Issued Instruction", *EXTRA_METRICS]


def ncu() -> str:
    """Nsight Compute's command line: on the PATH, or where the CUDA images install it."""
    found = shutil.which("ncu") or next(iter(sorted(glob.glob("/opt/nvidia/nsight-compute/*/ncu"))[-1:]), None)
    if found is None:
        sys.exit("ncu (Nsight Compute) not found: put it on the PATH")
    return found


def known(metrics: list[str]) -> list[str]:
    """The metrics whose base name this GPU's ncu lists (an unknown one would fail the whole profile)."""
    listed = subprocess.run([ncu(), "--query-metrics"], capture_output=True, text=True).stdout
    names = {line.split()[0] for line in listed.splitlines() if line.strip()}
    return [m for m in metrics if m.split(".")[0] in names]


def drive(N: int, provider: str) -> None:
    """Run under ncu: fwd+bwd twice, the second between cudaProfilerStart and Stop."""
    sys.path.insert(0, str(Path.cwd()))
    sys.path.insert(0, str(Path(__file__).parent))
    import lpt_ab
    import torch

    from kernels import flash_attention_qkvpacked

    if provider != "cudnn":
        lpt_ab.set_order(provider)
    attend = (lambda qkv: lpt_ab.cudnn(qkv, 0.0)) if provider == "cudnn" else (
        lambda qkv: flash_attention_qkvpacked(qkv, causal=True))
    qkv, do = lpt_ab.inputs(N)
    for step in range(2):
        torch.cuda.synchronize()
        if step:
            torch.cuda.profiler.start()
        out = attend(qkv)
        torch.autograd.grad(out, qkv, do)
        torch.cuda.synchronize()
    torch.cuda.profiler.stop()


def profile(N: int, provider: str, metrics: list[str]) -> dict[str, dict[str, str]]:
    """{kernel: {metric: "value unit"}} for the kernels of the profiled fwd+bwd."""
    cmd = [ncu(), "--clock-control", "none", "--profile-from-start", "off", "--csv", "--page", "details",
           *(a for s in SECTIONS for a in ("--section", s)), *(["--metrics", ",".join(metrics)] if metrics else []),
           sys.executable, __file__, "--drive", str(N), provider]
    run = subprocess.run(cmd, capture_output=True, text=True)
    rows = [line for line in run.stdout.splitlines() if line.startswith('"')]
    if run.returncode or not rows:
        print(f"ncu failed (rc {run.returncode}) for N={N} {provider}:\n{run.stdout[-1500:]}{run.stderr[-1500:]}",
              flush=True)
        return {}
    kernels: dict[str, dict[str, str]] = {}
    for r in csv.DictReader(io.StringIO("\n".join(rows))):
        name = f'{r["ID"]} {r["Kernel Name"].split("(")[0][:60]}'
        kernels.setdefault(name, {})[r["Metric Name"]] = f'{r["Metric Value"]} {r["Metric Unit"]}'.strip()
    return kernels


def markdown(meta: dict, results: dict) -> str:
    lines = ["# Attention kernels' counters, causal fwd+bwd", "", f"{meta['gpu']}, torch {meta['torch']}, triton "
             f"{meta['triton']}, commit {meta['commit']}, {meta['date']}; D = 64, 16K tokens, packed projection.", ""]
    for case, kernels in results.items():
        cols = list(kernels)
        names = [m for m in SHOWN if any(m in k for k in kernels.values())]
        lines += [f"## {case}", "", "| metric | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        lines += [f"| {m} | " + " | ".join(kernels[c].get(m, "–") for c in cols) + " |" for m in names] + [""]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """Each case's kernels as stacked bars of their duration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.6 * len(results) + 1.5))
    for row, kernels in enumerate(results.values()):
        left = 0.0
        for kernel, counters in kernels.items():
            value, unit = counters.get("Duration", "0 ns").replace(",", "").split()[:2]
            ms = float(value) * {"ns": 1e-6, "us": 1e-3, "usecond": 1e-3, "msecond": 1.0, "ms": 1.0}.get(unit, 1e-6)
            ax.barh(row, ms, left=left)
            label = kernel.split(" ", 1)[1].removeprefix("void ").split("<")[0].split("::")[-1]
            label = next((f"cuDNN {p}" for p in ("fprop", "bprop") if p in label), label)
            ax.text(left + ms / 2, row, label[:16], ha="center", va="center", fontsize=6, rotation=90 * (ms < 0.2))
            left += ms
    ax.set_yticks(range(len(results)), list(results))
    ax.set_xlabel("ms under Nsight Compute (one kernel at a time, L2 flushed before each)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seqs", type=int, nargs="+", default=[16384, 8192])
    p.add_argument("--providers", nargs="+", default=["landed", "cudnn"])
    p.add_argument("--out", type=Path, help="directory for kernel_counters.json, .md and .png (required)")
    p.add_argument("--drive", nargs=2, metavar=("N", "PROVIDER"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.drive:
        return drive(int(args.drive[0]), args.drive[1])
    if args.out is None:
        p.error("--out DIR is required")

    import torch
    import triton

    if not torch.cuda.is_available():
        sys.exit("kernel_counters.py needs a CUDA GPU (and Nsight Compute's ncu)")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "commit": commit, "date": datetime.now(timezone.utc).isoformat()}
    metrics, results = known(EXTRA_METRICS), {}
    meta["not_listed_by_ncu"] = [m for m in EXTRA_METRICS if m not in metrics]
    print("not listed by ncu --query-metrics, left out: " + ", ".join(meta["not_listed_by_ncu"]), flush=True)
    for N in args.seqs:
        for provider in args.providers:
            results[f"N={N} {provider}"] = kernels = profile(N, provider, metrics)
            for kernel, counters in kernels.items():
                print(f"N={N} {provider} {kernel}: " + "; ".join(
                    f"{m} {counters[m]}" for m in SHOWN if m in counters), flush=True)
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "kernel_counters.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
            (args.out / "kernel_counters.md").write_text(markdown(meta, results))
            plot(results, args.out / "kernel_counters.png")


if __name__ == "__main__":
    main()
