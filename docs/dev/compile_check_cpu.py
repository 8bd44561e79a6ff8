"""Compile every tile config the autotuner would try, for sm_90, on a machine without a GPU: Triton's real code
generation, ptxas and shared-memory check run; the launch is a no-op (host_time_cpu.FakeHopper). Catches kernels
that do not compile or do not fit before any GPU time is spent, and names each config whose wgmma pipeline ptxas
serialises (C7511, C7512, C7515, ...: every product then waits out its latency; the autotuner times such configs
like any other). Run from a checkout's root:

    python docs/dev/compile_check_cpu.py        # ~5 minutes; one line per variant, every failure and serialisation

Variants: causal D = 64; non-causal D = 64; causal D = 128 with dropout (two passes: the dropout backward's
choice at D = 128); causal D = 64 block-sparse; non-causal D = 48 with dropout (the single pass); non-causal D = 64
with dropout; non-causal D = 128. N = 4096 (causal launches there use the costliest-first order, if the kernels have
it). Each of the forward, dQ-pass and dK/dV-pass configs is compiled once per variant, the dQ pass's again as
the packed backward runs it at head dims up to 64 (dqp: key tiles through tensor descriptors). Then the Gluon
forward for Hopper (kernels/attention_fwd_hopper.py), where the installed Triton has Gluon: D = 64 and 128, causal
or not, heads in rows and in columns.
"""

import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from host_time_cpu import FakeHopper
from kernel_resources_cpu import ptxas_log
from torch._library.triton import set_wrap_triton_enabled
from triton.runtime.driver import driver

VARIANTS = [(64, True, 0.0, False), (64, False, 0.0, False), (128, True, 0.1, False), (64, True, 0.0, True),
            (48, False, 0.1, False), (64, False, 0.1, False), (128, False, 0.0, False)]
DUMP = Path(tempfile.mkdtemp(prefix="compile_check_"))  # each compiled kernel's PTX, for ptxas' verdict
KERNELS = {"fwd": "attn_fwd", "dq": "attn_bwd_dq", "dqp": "attn_bwd_dq", "kv": "attn_bwd_kv"}


def serialised(kernel: str) -> str | None:
    """ptxas' code if it serialises the wgmma pipeline of the kernel just compiled (its PTX in DUMP)."""
    for ptx in DUMP.glob(f"*/{kernel}.ptx"):
        log = ptxas_log(ptx, DUMP / "check.cubin")
        if "serialized" in log:
            code = re.search(r"C75\d\d", log)
            return code.group(0) if code else "serialized"
    return None


def compile_variant(A, D: int, causal: bool, p: float, sparse: bool) -> tuple[int, int]:
    """Compile each config of the three kernels for one variant; (compiled, failed)."""
    from kernels.block_mask import create_block_mask

    B, H, N = 1, 2, 4096
    q, k, v, do = (torch.randn(B, H, N, D, dtype=torch.bfloat16) for _ in range(4))
    o, lse = torch.empty_like(q), torch.zeros(B, H, N)
    layout = torch.ones(N // 128, N // 128, dtype=torch.bool)
    mask = create_block_mask(layout, N, 128, causal, "cpu") if sparse else None
    keys = A.draw_dropout_keys(B, H, N, "cpu") if p else None
    args = {"SPARSE_BLOCK": 128 if sparse else 0, "HEAD_D": max(16, 1 << (D - 1).bit_length()),
            "BLOCK_N": A._dq_key_tile(mask)}  # the dQ pass's key tile (the others' configs carry theirs)
    launches = {"fwd": (A._fwd, lambda: A._launch_fwd(q, k, v, keys, mask, causal, p, 0.125)),
                "dq": (A._bwd_dq, lambda: A._launch_bwd(do, q, k, v, o, lse, keys, mask, causal, p, 0.125, True)),
                "kv": (A._bwd_kv, lambda: A._launch_bwd(do, q, k, v, o, lse, keys, mask, causal, p, 0.125, False))}
    if args["HEAD_D"] <= A._DQ_DESCRIPTOR_MAX_HEAD_D:  # the packed op's dQ pass: key tiles through descriptors
        qkv = torch.randn(B, N, 3, H, D, dtype=torch.bfloat16)
        launches["dqp"] = (A._bwd_dq, lambda: A._launch_bwd(do, *A._unpack(qkv), o, lse, keys, mask, causal, p, 0.125,
                                                            True, dqkv=torch.empty_like(qkv),
                                                            launch=A._launch_directly))
    every = {tuned: tuned.configs for tuned, _ in launches.values()}
    fitting = {tuned: tuned.early_config_prune(configs, args) for tuned, configs in every.items()}
    compiled = failed = 0
    for name, (tuned, launch) in launches.items():
        for config in fitting[tuned]:
            for other in every:  # one config per kernel, so that nothing is timed
                other.configs = [config] if other is tuned else fitting[other][:1]
            shutil.rmtree(DUMP, ignore_errors=True)
            try:
                with torch.no_grad(), set_wrap_triton_enabled(False):
                    launch()
                compiled += 1
                code = serialised(KERNELS[name])
                if code:
                    print(f"SERIALISED ({code}) {name} D={D} causal={causal} p={p} sparse={sparse} {config}",
                          flush=True)
            except Exception as e:  # report and go on: every failure is worth seeing
                failed += 1
                print(f"FAIL {name} D={D} causal={causal} p={p} sparse={sparse} {config}: {type(e).__name__}: "
                      f"{str(e).splitlines()[0][:200] if str(e) else ''}", flush=True)
    for tuned, configs in every.items():
        tuned.configs = configs
    return compiled, failed


def compile_hopper(A) -> int:
    """Compile the Gluon forward's variants; the number that failed."""
    failed = 0
    for D in A.hopper.HEAD_DIMS:
        for causal in (True, False):
            for heads_in_rows in (True, False):
                shape = (1, 2, 1024, D) if heads_in_rows else (1, 1024, 2, D)
                q, k, v = (torch.randn(shape, dtype=torch.bfloat16) for _ in range(3))
                if not heads_in_rows:
                    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
                o, lse = A._empty_bhnd(q), torch.empty(1, 2, 1024)
                what = f"Gluon forward D={D} causal={causal} heads in " \
                       f"{'rows' if heads_in_rows else 'columns'}"
                try:
                    A.hopper.forward(q, k, v, o, lse, causal=causal, scale=D**-0.5)
                    print(f"{what}: compiled", flush=True)
                except Exception as e:  # report and go on
                    failed += 1
                    print(f"FAIL {what}: {type(e).__name__}: {str(e)[-300:]}", flush=True)
    return failed


def main() -> int:
    os.environ.update(TRITON_KERNEL_DUMP="1", TRITON_DUMP_DIR=str(DUMP), TRITON_ALWAYS_COMPILE="1")
    driver.set_active(FakeHopper())
    sys.path.insert(0, str(Path.cwd()))
    from kernels import attention as A  # noqa: E402 (after the fake driver)

    A.AUTOTUNE = True  # the configs the autotuner would time; each is then compiled alone
    failed, start = 0, time.time()
    for D, causal, p, sparse in VARIANTS:
        compiled, bad = compile_variant(A, D, causal, p, sparse)
        failed += bad
        print(f"D={D} causal={causal} dropout={p} sparse={sparse}: {compiled} configs compiled, {bad} failed "
              f"({time.time() - start:.0f} s so far)", flush=True)
    if A.hopper is not None:
        failed += compile_hopper(A)
    print(f"{failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
