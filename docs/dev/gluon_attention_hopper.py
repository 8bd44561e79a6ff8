"""The Gluon forward for Hopper (kernels/attention_fwd_hopper.py) beside the Triton kernels and cuDNN, on the same
inputs: max error against fp32, CUDA-graph times of the forward and of forward+backward. The Triton side runs with
the Gluon routing turned off (attention_fwd_hopper.ENABLED).

    python docs/dev/gluon_attention_hopper.py                  # a Hopper GPU, triton 3.6 (triton.experimental.gluon)
    python docs/dev/gluon_attention_hopper.py --compile-only   # no GPU: compile every kernel for sm_90 (faked
                                                               # driver): registers, spills, waits, serialisation
    python docs/dev/gluon_attention_hopper.py --forward 64:1024:causal 64:2048:causal   # forwards of these shapes:
                                     # the Gluon kernel's four launches (LAUNCHES) beside the Triton forward and cuDNN

History in docs/dev/kernel-notes.md (sixth, seventh and twenty-ninth sessions): the first prototypes (no warp
specialisation) ran at 0.53x cuDNN; the warp-specialised forward at 1.03-1.15x cuDNN at D = 128; persistent, from
1.01x at 2K to 1.03x at 16K at D = 64 (causal). A ping-pong schedule between the consumer warpgroups and
warp-specialised backward passes measured slower (seventh session; the backward is in the git history, commit
b85d986).
"""

import contextlib
import os
import re
import shutil
import sys
import tempfile
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path.cwd()))
from kernels import attention, flash_attention  # noqa: E402 (from the checkout's root)


@contextlib.contextmanager
def triton_only():
    """The library's Triton kernels for every call (the Gluon routing off)."""
    attention.hopper.ENABLED = False
    try:
        yield
    finally:
        attention.hopper.ENABLED = True


def gluon_forward(q, k, v, causal, **launch):
    """The Gluon forward; `launch`: hopper.forward's programs and heads_fastest."""
    o, lse = attention._empty_bhnd(q), q.new_empty(q.shape[:3], dtype=torch.float32)
    attention.hopper.forward(q, k, v, o, lse, causal=causal, scale=q.shape[-1] ** -0.5, **launch)
    return o


# The Gluon forward's launches side by side: one program an SM walking the tiles, or one program a tile; the tiles
# every head's costliest first, or head by head
LAUNCHES = {f"{walk} {order}": dict(programs=programs, heads_fastest=heads_fastest)
            for walk, programs in (("persistent", None), ("tile-a-program", 1 << 30))
            for order, heads_fastest in (("heads-fastest", True), ("head-by-head", False))}


def compile_only() -> None:
    """Compile every variant for sm_90 on a machine without a GPU (docs/dev/host_time_cpu.py's faked driver); print
    the kernel's registers and spill bytes (ptxas, via kernel_resources_cpu.py) and its wgmma waits (PTX)."""
    dump = Path(tempfile.mkdtemp(prefix="gluon_dump_"))
    os.environ.update(TRITON_KERNEL_DUMP="1", TRITON_DUMP_DIR=str(dump), TRITON_ALWAYS_COMPILE="1")
    sys.path.insert(0, str(Path(__file__).parent))
    from host_time_cpu import FakeHopper
    from kernel_resources_cpu import ptxas_log, resources
    from triton.runtime.driver import driver

    driver.set_active(FakeHopper())

    for D in (64, 128):
        for causal in (True, False):
            q, k, v = (torch.randn(1, 2, 1024, D, dtype=torch.bfloat16) for _ in range(3))
            shutil.rmtree(dump, ignore_errors=True)
            gluon_forward(q, k, v, causal)
            (cubin,) = dump.glob("*/attn_fwd_hopper.cubin")
            use = resources(cubin)
            ptx = cubin.with_suffix(".ptx")
            waits = re.findall(r"wgmma\.wait_group\.sync\.aligned (\d)", ptx.read_text())
            # ptxas says when it serialises the wgmma pipeline (C7511, C7512, ...: "wgmma.mma_async instructions are
            # serialized due to ..."): every product then waits out its latency
            log = ptxas_log(ptx, dump / "check.cubin")
            serial = "SERIALISED by ptxas" if "serialized" in log else "pipelined"
            print(f"forward D={D} causal={causal}: registers {use['REG']}, spill {use['STACK']} B, wgmma waits "
                  f"{' '.join(waits)}, {serial}", flush=True)


def _max_errors(outs, reference) -> str:
    return " ".join(f"{(x.float() - r).abs().max().item():.1e}" for x, r in zip(outs, reference, strict=True))


def _inputs(D: int, N: int, causal: bool):
    """q, k, v, dO (16K tokens, 12 heads) and the fp32 reference's o, dq, dk, dv."""
    B, H = 16384 // N, 12
    q, k, v, do = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    x = [t.float().requires_grad_() for t in (q, k, v)]
    ref_o = F.scaled_dot_product_attention(*x, is_causal=causal)
    return q, k, v, do, [ref_o, *torch.autograd.grad(ref_o, x, do.float())]


def check_forward(D: int, N: int, causal: bool) -> str:
    """The forward's error against fp32 and its time: the Gluon launches, Triton, cuDNN."""
    q, k, v, _, ref = _inputs(D, N, causal)
    bench = triton.testing.do_bench_cudagraph
    errors, times = {}, {}
    for name, launch in LAUNCHES.items():
        errors[name] = _max_errors([gluon_forward(q, k, v, causal, **launch)], ref[:1])
        times[name] = bench(partial(gluon_forward, q, k, v, causal, **launch))
    with triton_only():
        errors["triton"] = _max_errors([flash_attention(q, k, v, causal=causal)], ref[:1])
        times["triton"] = bench(lambda: flash_attention(q, k, v, causal=causal))
    times["cudnn"] = bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))
    return (f"forward D={D} N={N} causal={causal}: max error " + ", ".join(f"{k} {v}" for k, v in errors.items()) +
            "; ms " + ", ".join(f"{k} {v:.3f}" for k, v in times.items()))


def check_backward(D: int, N: int, causal: bool) -> str:
    """Forward+backward: errors of o, dq, dk, dv against fp32 and times, the routed library (Gluon where it routes)
    against Triton only and cuDNN."""
    q, k, v, do, ref = _inputs(D, N, causal)
    y = [t.clone().requires_grad_() for t in (q, k, v)]

    def fwd_bwd():
        o = flash_attention(*y, causal=causal)
        return [o, *torch.autograd.grad(o, y, do)]

    def cudnn():
        o = F.scaled_dot_product_attention(*y, is_causal=causal)
        return [o, *torch.autograd.grad(o, y, do)]

    bench = triton.testing.do_bench_cudagraph
    errors = {"routed": _max_errors(fwd_bwd(), ref)}
    with triton_only():
        errors["triton"] = _max_errors(fwd_bwd(), ref)
        times = {"triton": bench(fwd_bwd)}
    times.update(routed=bench(fwd_bwd), cudnn=bench(cudnn))
    return (f"fwd+bwd D={D} N={N} causal={causal}: max error o dq dk dv: " +
            ", ".join(f"{k} {v}" for k, v in errors.items()) + "; ms " +
            ", ".join(f"{k} {v:.3f}" for k, v in times.items()))


def _shape(text: str) -> tuple[int, int, bool]:
    """'D:N:causal' or 'D:N:full'."""
    D, N, mask = text.split(":")
    if mask not in ("causal", "full"):
        raise SystemExit(f"--forward takes D:N:causal or D:N:full, got {text!r}")
    return int(D), int(N), mask == "causal"


def main() -> None:
    """Every forward first, then forward+backward (a hang in a new kernel then costs only what follows it)."""
    if attention.hopper is None or not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
        sys.exit("gluon_attention_hopper.py needs a Hopper GPU (sm_90) and triton >= 3.6; without one, "
                 "--compile-only compiles its kernels for sm_90")
    shapes = [(64, 4096, True), (64, 16384, True), (128, 16384, True), (128, 16384, False), (64, 4096, False)]
    checks = (check_forward, check_backward)
    if "--forward" in sys.argv:
        shapes, checks = [_shape(s) for s in sys.argv[sys.argv.index("--forward") + 1:]], (check_forward,)
    for check in checks:
        for D, N, causal in shapes:
            try:
                print(check(D, N, causal), flush=True)
            except Exception as e:  # report, go on
                print(f"{check.__name__} D={D} N={N} causal={causal}: {type(e).__name__}: {str(e)[:300]}", flush=True)


if __name__ == "__main__":
    compile_only() if "--compile-only" in sys.argv else main()
