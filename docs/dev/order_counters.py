"""Hardware counters of one causal attention kernel under each program order (GPU, Nsight Compute). For every
(N, order) it starts this file again under `ncu` (clocks left alone), which profiles the second launch of the
kernel (the first compiles it): D = 64, 16K tokens, the model's packed projection, configs untuned (the first
fitting one, FLASHGPT_AUTOTUNE=0, which for the forward is the tuned 128 x 64 x 4 warps x 3 stages). Prints the
counters side by side and writes order_counters.json and .md.

    python docs/dev/order_counters.py --out DIR                          # from a checkout's root
    python docs/dev/order_counters.py --kernel dq --seqs 8192 --orders grid all --out DIR

Orders as in docs/dev/lpt_ab.py: `landed`, `grid`, `G<n>` (groups of n heads), `all`.
"""

import argparse
import csv
import glob
import io
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

KERNELS = {"fwd": "attn_fwd", "dq": "attn_bwd_dq", "kv": "attn_bwd_kv"}
SECTIONS = ["SpeedOfLight", "MemoryWorkloadAnalysis", "MemoryWorkloadAnalysis_Tables", "Occupancy",
            "WarpStateStats", "SchedulerStats", "LaunchStats"]
STALLS = [f"smsp__average_warps_issue_stalled_{r}_per_issue_active.ratio"
          for r in ("long_scoreboard", "barrier", "wait", "math_pipe_throttle", "mio_throttle", "short_scoreboard")]
EXTRA_METRICS = ["dram__bytes_read.sum", "lts__t_sectors_srcunit_tex_op_read.sum", "lts__t_sector_hit_rate.pct",
                 "lts__t_sectors_srcunit_ltcfabric.sum", *STALLS]
SHOWN = ["Duration", "DRAM Throughput", "L2 Hit Rate", "L1/TEX Hit Rate", "Achieved Occupancy",
         "Compute (SM) Throughput", "Memory Throughput", "Issue Slots Busy", "Warp Cycles Per Issued Instruction",
         *EXTRA_METRICS]


def ncu() -> str:
    """Nsight Compute's command line: on the PATH, or where the CUDA images install it."""
    found = shutil.which("ncu") or next(iter(sorted(glob.glob("/opt/nvidia/nsight-compute/*/ncu"))[-1:]), None)
    if found is None:
        sys.exit("ncu (Nsight Compute) not found: put it on the PATH")
    return found


def drive(kernel: str, N: int, order: str) -> None:
    """Run under ncu: the kernel twice (compile, then the profiled launch) in `order`."""
    sys.path.insert(0, str(Path.cwd()))
    sys.path.insert(0, str(Path(__file__).parent))
    import lpt_ab
    import torch

    from kernels import flash_attention_qkvpacked

    lpt_ab.set_order(order)
    qkv, do = lpt_ab.inputs(N)
    for _ in range(2):
        out = flash_attention_qkvpacked(qkv, causal=True)
        if kernel != "fwd":
            torch.autograd.grad(out, qkv, do)
    torch.cuda.synchronize()


def profile(kernel: str, N: int, order: str, metrics: list[str]) -> dict[str, str] | None:
    """{metric name: "value unit"} of the kernel's second launch, or None if ncu failed."""
    cmd = [ncu(), "--clock-control", "none", "-k", f"regex:^{KERNELS[kernel]}$", "--launch-skip", "1",
           "--launch-count", "1", "--csv", "--page", "details", *(a for s in SECTIONS for a in ("--section", s))]
    cmd += ["--metrics", ",".join(metrics)] if metrics else []
    cmd += [sys.executable, __file__, "--drive", kernel, str(N), order]
    run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "FLASHGPT_AUTOTUNE": "0"})
    rows = [line for line in run.stdout.splitlines() if line.startswith('"')]
    if run.returncode or not rows:
        print(f"ncu failed (rc {run.returncode}) for {kernel} N={N} {order}:\n{run.stdout[-1500:]}{run.stderr[-1500:]}",
              flush=True)
        return None
    return {f'{r["Metric Name"]}': f'{r["Metric Value"]} {r["Metric Unit"]}'.strip()
            for r in csv.DictReader(io.StringIO("\n".join(rows)))}


def markdown(meta: dict, results: dict) -> str:
    cols = list(results)
    names = [m for m in SHOWN if any(m in r for r in results.values())]
    lines = [f"# Counters of {meta['kernel']} per program order", "", f"{meta['gpu']}, torch {meta['torch']}, "
             f"triton {meta['triton']}, commit {meta['commit']}, {meta['date']}", "",
             "| metric | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {m} | " + " | ".join(results[c].get(m, "–") for c in cols) + " |" for m in names]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernel", choices=list(KERNELS), default="fwd")
    p.add_argument("--seqs", type=int, nargs="+", default=[8192, 16384])
    p.add_argument("--orders", nargs="+", default=["grid", "all"])
    p.add_argument("--out", type=Path, required=True, help="directory for order_counters.json and .md")
    p.add_argument("--drive", nargs=3, metavar=("KERNEL", "N", "ORDER"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.drive:
        return drive(args.drive[0], int(args.drive[1]), args.drive[2])

    import torch
    import triton

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    meta = {"kernel": KERNELS[args.kernel], "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": triton.__version__, "commit": commit, "date": datetime.now(timezone.utc).isoformat()}
    metrics, results = EXTRA_METRICS, {}
    for N in args.seqs:
        for order in args.orders:
            counters = profile(args.kernel, N, order, metrics)
            if counters is None and metrics:  # a metric this ncu does not know: the sections alone
                metrics = []
                counters = profile(args.kernel, N, order, metrics)
            results[f"N={N} {order}"] = counters or {}
            print(f"N={N} {order}: " + "; ".join(f"{m} {counters[m]}" for m in SHOWN if m in (counters or {})),
                  flush=True)
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "order_counters.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
            (args.out / "order_counters.md").write_text(markdown(meta, results))


if __name__ == "__main__":
    main()
