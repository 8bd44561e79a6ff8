"""Registers, spills and the tensor-core waits of the attention kernels compiled for sm_90, on a machine without a
GPU (Triton's real code generation and ptxas; the launch is a no-op, host_time_cpu.FakeHopper). Answers, before
any GPU time is spent, whether a tile config spills, how many programs fit on an SM by registers, and whether the
score product q k^T stays in flight while the softmax runs (it does not if its wait comes right after it).

    python docs/dev/kernel_resources_cpu.py                          # from a checkout root; the configs below
    python docs/dev/kernel_resources_cpu.py kv:128:64,128,8,4 fwd:64:128,64,8,3

A config is kernel:head_dim:BLOCK_M,BLOCK_N,warps,stages[:dropout_p] (kernel: fwd, kv, dq, or dqp: the dQ pass
writing into a packed gradient, as the model's backward runs it, key tiles through tensor descriptors; kv1 / kvp:
the single pass's dK/dV pass, which needs dropout_p > 0, on separate q, k, v / writing dK, dV into a packed
gradient); causal, bf16, N = 4096. The dQ pass's BLOCK_N is the host's (64).
kv, dq and dqp are the two passes' (deterministic).
Also printed: the integer instructions of the SASS (IMAD, LOP3, SHF, IADD3, where dropout's hash spends its time;
PRMT and SEL, where a select moved past a bf16 conversion works on 16-bit halves: seventeenth session),
and its memory instructions (local: spills; shared; global, with cp.async's LDGSTS and the atomics) and HGMMAs.
The codegen is the installed Triton's, which may differ from the GPU host's version.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import triton
from host_time_cpu import FakeHopper
from torch._library.triton import set_wrap_triton_enabled
from triton.runtime.driver import driver

KERNELS = {"fwd": "attn_fwd", "kv": "attn_bwd_kv", "dq": "attn_bwd_dq", "dqp": "attn_bwd_dq", "kv1": "attn_bwd_kv",
           "kvp": "attn_bwd_kv"}
DEFAULT = ["fwd:64:128,64,8,3", "fwd:128:128,64,8,3", "fwd:128:128,128,8,3", "kv:64:32,128,4,3",
           "kv:64:64,128,8,3", "kv:128:64,128,8,3", "kv:128:64,128,8,4", "dq:64:64,64,4,3", "dq:128:128,64,8,3"]
REGISTERS_PER_SM = 65536
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
OPCODE = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", flags=re.MULTILINE)  # cuobjdump -sass


def compile_config(A, kind: str, D: int, tile: tuple, dropout_p: float) -> None:
    """Compile one config of one kernel (the others keep their first fitting config) by a faked launch."""
    m, n, w, s = tile
    tuned = {"fwd": A._fwd, "dq": A._bwd_dq, "dqp": A._bwd_dq}.get(kind, A._bwd_kv)
    dq_key_tile = A._dq_key_tile(None)  # the dQ pass's key tile is the host's, not a config's
    if tuned is A._bwd_dq and n != dq_key_tile:
        raise ValueError(f"the dQ pass's key tile is {dq_key_tile} (kernels/attention.py, _dq_key_tile), not {n}")
    tile_kwargs = {"BLOCK_M": m} if tuned is A._bwd_dq else {"BLOCK_M": m, "BLOCK_N": n}
    config = triton.Config(tile_kwargs, num_warps=w, num_stages=s)
    every = {t: t.configs for t in (A._fwd, A._bwd_kv, A._bwd_dq)}
    args = {"SPARSE_BLOCK": 0, "HEAD_D": max(16, 1 << (D - 1).bit_length()), "BLOCK_N": dq_key_tile}
    for t, configs in every.items():  # one config each: an autotuner with several would time them
        t.configs = [config] if t is tuned else t.early_config_prune(configs, args)[:1]
    B, H, N = 1, 2, 4096
    q, k, v, do = (torch.randn(B, H, N, D, dtype=torch.bfloat16) for _ in range(4))
    packed = kind in ("dqp", "kvp")
    if packed:  # q, k, v views of one packed projection, its gradient packed alike
        qkv = torch.randn(B, N, 3, H, D, dtype=torch.bfloat16)
        q, k, v = A._unpack(qkv)
    o, lse = torch.empty_like(q), torch.zeros(B, H, N)
    keys = A.draw_dropout_keys(B, H, N, "cpu") if dropout_p else None
    try:
        with torch.no_grad(), set_wrap_triton_enabled(False):
            if kind == "fwd":
                A._launch_fwd(q, k, v, keys, None, True, dropout_p, 0.125)
            else:  # the two-pass backward (deterministic), or the single pass for kv1 / kvp
                dqkv = torch.empty_like(qkv) if packed else None
                deterministic = kind not in ("kv1", "kvp")
                A._launch_bwd(do, q, k, v, o, lse, keys, None, True, dropout_p, 0.125, deterministic, dqkv=dqkv,
                              launch=A._launch_directly if packed else None)  # packed: the opaque op's launches
    finally:
        for t, configs in every.items():
            t.configs = configs


def ptxas_log(ptx: Path, cubin: Path) -> str:
    """ptxas -v's log for sm_90a, from the ptxas Triton itself compiles sm_90 with (triton 3.6: `ptxas`; 3.9:
    `ptxas-blackwell`, whose newer PTX the other rejects). A ptxas error raises: a log without "serialized" in it
    must mean a compiled kernel."""
    from triton.backends.nvidia.compiler import get_ptxas

    run = subprocess.run([get_ptxas(90).path, "-arch=sm_90a", "-v", str(ptx), "-o", str(cubin)], capture_output=True,
                         text=True)
    if run.returncode:
        raise RuntimeError(f"ptxas failed on {ptx}: {run.stderr.strip()[:300]}")
    return run.stderr


def resources(cubin: Path) -> dict:
    text = subprocess.run([str(CUOBJDUMP), "--dump-resource-usage", str(cubin)], capture_output=True,
                          text=True).stdout
    return {k: int(v) for k, v in re.findall(r"(REG|STACK|LOCAL):(\d+)", text)}


def integer_instructions(sass: str) -> dict:
    """Static counts of the integer instructions in the kernel's SASS."""
    ops = OPCODE.findall(sass)
    return {op: ops.count(op) for op in ("IMAD", "LOP3", "SHF", "IADD3", "PRMT", "SEL")}


def memory_instructions(sass: str) -> dict:
    """Static counts of the memory instructions in the kernel's SASS, by group, and of its HGMMAs."""
    ops = OPCODE.findall(sass)
    groups = {"LDL": ("LDL",), "STL": ("STL",), "LDS": ("LDS", "LDSM"), "STS": ("STS", "STSM"), "LDG": ("LDG",),
              "LDGSTS": ("LDGSTS",), "STG": ("STG",), "RED/ATOM": ("RED", "REDG", "ATOM", "ATOMG", "ATOMS"),
              "HGMMA": ("HGMMA",)}
    return {name: sum(ops.count(op) for op in group) for name, group in groups.items()}


def immediate_score_waits(ttgir: str) -> tuple[int, int]:
    """(score products waited for at once, score products) over the kernel's loops: a warp_group_dot whose result
    feeds a warp_group_dot_wait on the next line has nothing to overlap with."""
    lines = ttgir.splitlines()
    dots = [i for i, line in enumerate(lines) if "ttng.warp_group_dot " in line and "memdesc" in line.split("*")[0]]
    immediate = sum(1 for i in dots if i + 1 < len(lines) and "warp_group_dot_wait" in lines[i + 1]
                    and "pendings = 0" in lines[i + 1])
    return immediate, len(dots)


def report(spec: str) -> None:
    """Compile one config in this process (a fresh one: Triton's in-memory cache would skip the dump) and print."""
    dump = Path(tempfile.mkdtemp(prefix="kernel_dump_"))
    os.environ.update(TRITON_KERNEL_DUMP="1", TRITON_DUMP_DIR=str(dump), TRITON_ALWAYS_COMPILE="1")
    driver.set_active(FakeHopper())
    sys.path.insert(0, str(Path.cwd()))
    from kernels import attention as A  # noqa: E402 (after the fake driver)

    A.AUTOTUNE = False  # the other kernels take their first fitting config: nothing is timed
    kind, D, tile, *dropout = spec.split(":")
    tile = tuple(int(x) for x in tile.split(","))
    compile_config(A, kind, int(D), tile, float(dropout[0]) if dropout else 0.0)
    (cubin,) = dump.glob(f"*/{KERNELS[kind]}.cubin")
    use = resources(cubin)
    per_sm = REGISTERS_PER_SM // (use["REG"] * 32 * tile[2])
    immediate, dots = immediate_score_waits(cubin.with_suffix(".ttgir").read_text())
    # Not Triton's .sass dump: triton 3.6's stops at 64 KiB of code (a 4-hex-digit offset), the larger kernels' end
    sass = subprocess.run([str(CUOBJDUMP), "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
    memory = "  ".join(f"{op} {n}" for op, n in memory_instructions(sass).items())
    print(f"{spec:26s} registers {use['REG']:3d}  spill {use['STACK']:4d} B  programs/SM {per_sm}  "
          f"waited at once {immediate}/{dots}  {integer_instructions(sass)}\n{'':26s} {memory}", flush=True)
    shutil.rmtree(dump)


def main(specs: list[str]) -> None:
    print(f"triton {triton.__version__}, sm_90; registers per thread, spill stack bytes, programs per SM by "
          "registers, products read from shared memory (S, dP) waited for at once", flush=True)
    for spec in specs:
        subprocess.run([sys.executable, __file__, "--one", spec], check=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        report(sys.argv[2])
    else:
        main(sys.argv[1:] or DEFAULT)
