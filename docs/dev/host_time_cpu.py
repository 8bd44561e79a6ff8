"""Host (Python) time of the kernels' eager launch path, on a machine without a GPU.

Triton compiles the kernels for a faked sm_90 target and "launches" them into a no-op, so what is timed is the
Python and C++ host work of an eager call: the custom ops, autograd, the autotuner's per-call key, Triton's argument
binding. Per line: the best of 9 rounds of 300 calls at B = H = 1, N = 128, D = 64, causal.

    FLASHGPT_AUTOTUNE=0 python docs/dev/host_time_cpu.py [--profile]

Machines like CI's vary run to run by 30%; compare two checkouts' kernels by alternating processes and taking
medians, e.g. `for i in 1 2 3 4 5 6 7; do for d in A B; do (cd $d && echo $d $(FLASHGPT_AUTOTUNE=0 python
/path/to/host_time_cpu.py | grep fwd+bwd)); done; done`. Run from a checkout's root (it imports `kernels`).
"""

import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch
from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver


class _Launcher:
    def __init__(self, src, metadata):
        pass

    def __call__(self, *args):
        pass


class _Utils:
    def load_binary(self, name, kernel, shared, device):
        return 1, 1, 64, 0, 1024

    def get_device_properties(self, device):
        return {"max_shared_mem": 232448, "multiprocessor_count": 132, "max_num_regs": 65536, "warpSize": 32}


class FakeHopper:
    """Enough of a CUDA driver for Triton to compile for sm_90 and call a launcher that does nothing."""
    utils = _Utils()
    launcher_cls = _Launcher

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_device_interface(self):
        return torch.cuda

    def get_active_torch_device(self):
        return torch.device("cpu")

    def get_benchmarker(self):
        """The autotuner times the first call of every key (cache_results included): one equal time per config."""
        return lambda fn, quantiles=None, **kwargs: [1.0] * len(quantiles or [0])


def best_us(fn, calls=300, rounds=9) -> float:
    for _ in range(20):
        fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls * 1e6)
    return best


def main() -> None:
    driver.set_active(FakeHopper())
    sys.path.insert(0, str(Path.cwd()))
    from kernels import attention as A  # noqa: E402 (after the fake driver)

    A.INTERPRET = True  # lets the public functions take CPU tensors; the kernels were built for sm_90 regardless

    q, k, v = (torch.randn(1, 1, 128, 64, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    do = torch.randn(1, 1, 128, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        qd, kd, vd = q.detach(), k.detach(), v.detach()
        o, lse = A.attention_fwd(qd, kd, vd, None, [], 0, True, 0.0, 0.125, False)
        rows = {"fwd op (no grad)": lambda: A.attention_fwd(qd, kd, vd, None, [], 0, True, 0.0, 0.125, False),
                "bwd op": lambda: A.attention_bwd(do, qd, kd, vd, o, lse, None, [], 0, True, 0.0, 0.125, False)}
        timed = {name: best_us(fn) for name, fn in rows.items()}
    fwd_bwd = lambda: A.flash_attention(q, k, v, causal=True).backward(do)
    timed["fwd+bwd (autograd)"] = best_us(fwd_bwd)
    if hasattr(A, "flash_attention_qkvpacked"):  # the model's call: the projection whole
        qkv = torch.randn(1, 128, 3, 1, 64, dtype=torch.bfloat16, requires_grad=True)
        do_packed = do.transpose(1, 2).contiguous().transpose(1, 2)  # (B, H, N, D) stored as the model's (B, N, H, D)
        views = lambda: A.flash_attention(*(t.transpose(1, 2) for t in qkv.unbind(2)), causal=True)
        timed["fwd+bwd qkv views"] = best_us(lambda: views().backward(do_packed))
        timed["fwd+bwd packed"] = best_us(lambda: A.flash_attention_qkvpacked(qkv, causal=True).backward(do_packed))
    if hasattr(A, "block_sparse_attention"):  # a local window of two 64-token blocks, the layout on the CPU
        from kernels.sparsity_patterns import build_layout
        layout = build_layout("local", 128, 64, window=128)
        sparse = lambda: A.block_sparse_attention(q, k, v, layout, causal=True, block_size=64)
        timed["fwd+bwd block-sparse"] = best_us(lambda: sparse().backward(do))
        timed["  of it, the mask"] = best_us(lambda: A.block_masks.create_block_mask(layout, 128, 64, True, "cpu"))
    for name, us in timed.items():
        print(f"{name:20s} {us:7.1f} us")
    if "--profile" in sys.argv:
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(1000):
            fwd_bwd()
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
