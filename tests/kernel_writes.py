"""Which tensor arguments torch.compile's mutation analysis counts as written by each kernel launch.

Run as a script (tests/test_flash_attention.py does, in a subprocess): it needs compiled-mode Triton kernels, not the
interpreter, and a GPU target for the kernels' TTIR, which it fakes (sm_90) so that a CPU-only machine can run it.
Prints one JSON line per launch: {"kernel", "case", "writes"}. torch.compile copies every tensor it counts as
written, so an input counted here would be copied on every compiled call.
"""

import json
import os

import torch
from torch._higher_order_ops.triton_kernel_wrap import get_mutated_tensors, kernel_side_table
from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver

assert os.environ.get("TRITON_INTERPRET") != "1", "run without TRITON_INTERPRET: the analysis reads compiled TTIR"


class Hopper:
    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_current_device(self):
        return 0


driver.set_active(Hopper())

from kernels import attention  # noqa: E402  (after the driver is set)
from kernels.block_mask import create_block_mask  # noqa: E402

launches = []


class Recorder:
    """Stands in for torch.library.wrap_triton: records (kernel, arguments) instead of launching."""

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        return lambda *args, **kwargs: launches.append((self.kernel, args, kwargs))


attention.wrap_triton = Recorder
B, H, N, D = 2, 2, 256, 64
qkv = torch.randn(B, N, 3, H, D, dtype=torch.bfloat16)
q, k, v = qkv.permute(2, 0, 3, 1, 4)
do = torch.randn_like(q)
keys = torch.zeros(B * H, 3, N, dtype=torch.int32)
mask = create_block_mask(torch.ones(N // 64, N // 64, dtype=torch.bool).tril(), N, 64, True, "cpu")
# (the packed backward, an opaque op, launches its kernels itself: torch.compile does not trace them)
for case, (dropout, block_mask, deterministic) in {
        "dense": (0.0, None, False), "dense, dropout": (0.1, None, False),
        "dense, dropout, deterministic": (0.1, None, True), "sparse, dropout": (0.1, mask, False)}.items():
    start = len(launches)
    o, lse = attention._launch_fwd(q, k, v, keys if dropout else None, block_mask, True, dropout, 0.125)
    attention._launch_bwd(do, q, k, v, o, lse, keys if dropout else None, block_mask, True, dropout, 0.125,
                          deterministic)
    for kernel, args, kwargs in launches[start:]:
        jit = kernel.fn if hasattr(kernel, "configs") else kernel
        named = {**dict(zip(jit.arg_names, args, strict=False)), **kwargs}
        if hasattr(kernel, "configs"):
            named.update(kernel.configs[0].kwargs)
        # the call torch.compile makes when it functionalizes a launch (torch 2.11 and 2.13 alike)
        writes = sorted(get_mutated_tensors(kernel_side_table.add_kernel(kernel),
                                            kernel_side_table.add_constant_args({}), named, {}))
        print(json.dumps({"kernel": jit.__name__, "case": case, "writes": writes}))
