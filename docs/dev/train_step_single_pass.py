"""train.py's step with our single-pass backward (dQ by fp32 atomics) as a third backend, `flash_single`, beside
sdpa and flash in one process: scripts/bench_train_step.py's runs, rounds and tables. Why: in short runs the single
pass without dropout is 7-14 % slower than the two passes, but it runs 5 matrix products where they run 7, and a
training step runs at the board's power limit, where fewer joules buy clock for every kernel of the step
(docs/dev/kernel-notes.md, eleventh and twelfth sessions).

    python docs/dev/train_step_single_pass.py --cases 4096x4 --modes eager --rounds 2 --no-bare \\
        --attn sdpa flash flash_single --out DIR          # from a checkout's root, on a CUDA GPU

Takes bench_train_step.py's options. Inductor's graph caches are off, so that a compiled flash_single traces its
own backward instead of finding flash's.
"""

import os
import sys
from pathlib import Path

os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] = "0"
os.environ["TORCHINDUCTOR_AUTOGRAD_CACHE"] = "0"
sys.path.insert(0, str(Path.cwd()))
sys.path.insert(0, str(Path(__file__).parent))
from attention_power import single_pass  # noqa: E402

import reporting.train_step_bench as train_step_bench  # noqa: E402
from scripts import bench_train_step  # noqa: E402

measure = train_step_bench.measure


def measure_with_single_pass(seq, batch, attn, *args, **kwargs):
    if attn != "flash_single":
        return measure(seq, batch, attn, *args, **kwargs)
    with single_pass(True):
        return {**measure(seq, batch, "flash", *args, **kwargs), "attn": "flash_single"}


if __name__ == "__main__":
    train_step_bench.measure = measure_with_single_pass
    bench_train_step.main()
