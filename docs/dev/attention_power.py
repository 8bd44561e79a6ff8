"""SM clock and board power while one attention fwd+bwd is replayed from a CUDA graph for a few seconds, ours against
cuDNN's, in alternating rounds. Why: in the compiled GPT-2 step the GEMMs beside our kernels ran 2-6 % slower than
beside cuDNN's, whichever backend ran first (docs/dev/kernel-notes.md, eleventh session); a higher power draw of our
kernels, and the lower clocks it brings under the power limit, would explain it.

    python docs/dev/attention_power.py [--seconds 5] [--rounds 2]     # from a checkout's root, on a CUDA GPU
"""

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path.cwd()))
from kernels import flash_attention  # noqa: E402 (from the checkout's root)

B, H, N, D = 4, 12, 4096, 64
PROVIDERS = {"flash": lambda q, k, v: flash_attention(q, k, v, causal=True),
             "cudnn": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)}


def graphed(attend, q, k, v, do) -> torch.cuda.CUDAGraph:
    step = lambda: torch.autograd.grad(attend(q, k, v), (q, k, v), do)
    for _ in range(3):  # tune and compile outside the graph
        step()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph


def replay(graph: torch.cuda.CUDAGraph, seconds: float) -> tuple[float, list[tuple[float, float]]]:
    """ms per replay, and (SM MHz, W) samples taken every 100 ms while the replays ran."""
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
    smi.terminate()
    lines = smi.communicate()[0].strip().splitlines()
    samples = [tuple(float(x) for x in line.split(",")) for line in lines[3:]]  # the first ones lag the load
    return start.elapsed_time(end) / count, samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    do = torch.randn_like(q)
    graphs = {name: graphed(attend, q, k, v, do) for name, attend in PROVIDERS.items()}
    for r in range(args.rounds):
        for name in list(graphs) if r % 2 == 0 else list(graphs)[::-1]:
            ms, samples = replay(graphs[name], args.seconds)
            clock = statistics.median(s[0] for s in samples)
            power = statistics.median(s[1] for s in samples)
            print(f"round {r} {name}: {ms:.3f} ms per fwd+bwd, SM clock {clock:.0f} MHz, power {power:.0f} W "
                  f"(medians of {len(samples)} samples)", flush=True)


if __name__ == "__main__":
    main()
