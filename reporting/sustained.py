"""Sustained timing: a call captured in a CUDA graph and replayed for seconds while nvidia-smi samples the SM clock
and the board's power (scripts/bench_attention.py --sustain, docs/dev/attention_power.py, tile_sweep.py --sustain).

Why: replayed for seconds, as training runs them, kernels reach the board's power limit, and one that spends more
energy per unit of work then runs at a lower clock; a timing of a fraction of a second (do_bench) sees the boost
clock and does not show it (docs/dev/kernel-notes.md, eleventh session). nvidia-smi samples every GPU of the host:
run where one is visible.
"""

import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass

import torch


@dataclass
class Sustained:
    ms: float  # per replay
    clock_mhz: float | None  # SM clock, median of the samples
    power_w: float | None  # board power, median of the samples
    samples: int

    def __str__(self) -> str:
        if not self.samples:
            return f"{self.ms:.3f} ms (no clock / power samples)"
        return f"{self.ms:.3f} ms at {self.clock_mhz:.0f} MHz, {self.power_w:.0f} W ({self.samples} samples)"


def capture(call) -> torch.cuda.CUDAGraph:
    """call() run three times (autotuning and compiling outside the graph), then captured."""
    for _ in range(3):
        call()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    return graph


def parse(text: str, skip: int = 3) -> list[tuple[float, float]]:
    """(MHz, W) from nvidia-smi's `clocks.sm,power.draw` CSV lines, the first `skip` dropped (they lag the load);
    lines it could not read (e.g. "[N/A]") left out."""
    samples = []
    for line in text.strip().splitlines()[skip:]:
        try:
            clock, power = (float(x) for x in line.split(","))
        except ValueError:
            continue
        samples.append((clock, power))
    return samples


def replay(graph: torch.cuda.CUDAGraph, seconds: float) -> Sustained:
    """Replays for `seconds`, nvidia-smi sampling every 100 ms meanwhile (no samples where there is no nvidia-smi)."""
    smi = None
    if shutil.which("nvidia-smi"):
        smi = subprocess.Popen(["nvidia-smi", "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader,nounits",
                                "-lms", "100"], stdout=subprocess.PIPE, text=True)
        time.sleep(0.3)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    count, t0 = 0, time.perf_counter()
    start.record()
    while time.perf_counter() - t0 < seconds:
        for _ in range(20):
            graph.replay()
        count += 20
        torch.cuda.synchronize()  # keeps the host within 20 replays of the GPU, so the loop lasts `seconds`
    end.record()
    torch.cuda.synchronize()
    samples = []
    if smi:
        smi.terminate()
        samples = parse(smi.communicate()[0])
    median = lambda i: statistics.median(s[i] for s in samples) if samples else None
    return Sustained(start.elapsed_time(end) / count, median(0), median(1), len(samples))
