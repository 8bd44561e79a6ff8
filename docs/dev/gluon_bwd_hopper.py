"""The Gluon dK/dV pass for Hopper (kernels/attention_bwd_hopper.py) beside the Triton one, on the same inputs.

    python docs/dev/gluon_bwd_hopper.py --compile-only   # no GPU: compile its variants for sm_90 (faked driver):
                                                        # registers, spill, wgmma waits, serialisation
    python docs/dev/gluon_bwd_hopper.py 64:4096:causal 64:16384:causal   # a Hopper GPU: per shape, dK and dV's
        # max error against fp32 (the Gluon pass's VARIANTS; Triton), the pass's time (CUDA graph, median), and
        # fwd+bwd through the library with the pass routed, not routed, and cuDNN

Shapes: 16K tokens a batch, 12 heads, bf16. Kernel notes, thirtieth session.
"""

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path.cwd()))
from kernels import attention, attention_bwd_hopper  # noqa: E402 (from the checkout's root)

# 8 warps (128 keys a program) or 4 (64, two programs an SM); Q / dO ring slots; K and V in shared memory or registers
VARIANTS = {f"gluon {warps}w {stages}{' kv-regs' if regs else ''}":
            dict(stages=stages, kv_in_registers=regs, num_warps=warps)
            for warps, stages, regs in ((8, 3, False), (4, 3, False), (4, 4, False))}


def compile_only() -> None:
    dump = Path(tempfile.mkdtemp(prefix="gluon_bwd_dump_"))
    os.environ.update(TRITON_KERNEL_DUMP="1", TRITON_DUMP_DIR=str(dump), TRITON_ALWAYS_COMPILE="1")
    sys.path.insert(0, str(Path(__file__).parent))
    from host_time_cpu import FakeHopper
    from kernel_resources_cpu import ptxas_log, resources
    from triton.runtime.driver import driver

    driver.set_active(FakeHopper())
    q, k, v, do, dk, dv = (torch.randn(1, 2, 1024, 64, dtype=torch.bfloat16) for _ in range(6))
    lse, delta = (torch.randn(1, 2, 1024) for _ in range(2))
    for causal in (True, False):
        for name, variant in VARIANTS.items():
            shutil.rmtree(dump, ignore_errors=True)
            attention_bwd_hopper.backward_kv(do, q, k, v, lse, delta, dk, dv, causal=causal, scale=0.125,
                                             **variant)
            (cubin, ) = dump.glob("*/attn_bwd_kv_hopper.cubin")
            use = resources(cubin)
            ptx = cubin.with_suffix(".ptx")
            waits = re.findall(r"wgmma\.wait_group\.sync\.aligned (\d)", ptx.read_text())
            log = ptxas_log(ptx, dump / "check.cubin")
            codes = " ".join(sorted(set(re.findall(r"C75\d\d", log))))
            serial = f"SERIALISED by ptxas ({codes})" if "serialized" in log else "pipelined"
            print(f"{name} causal={causal}: registers {use['REG']}, spill {use['STACK']} B, wgmma waits "
                  f"{' '.join(waits)}, {serial}", flush=True)


def _errors(outs, reference) -> str:
    return " ".join(f"{(x.float() - r).abs().max().item():.1e}" for x, r in zip(outs, reference, strict=True))


def check(D: int, N: int, causal: bool) -> str:
    B, H = 16384 // N, 12
    q, k, v, do = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    x = [t.float().requires_grad_() for t in (q, k, v)]
    ref = F.scaled_dot_product_attention(*x, is_causal=causal)
    ref_dk, ref_dv = torch.autograd.grad(ref, x[1:], do.float())
    scale = D ** -0.5
    o, lse = attention._launch_fwd(q, k, v, None, None, causal, 0.0, scale)
    delta = (o.float() * do.float()).sum(-1)
    bench = triton.testing.do_bench_cudagraph
    errors, times = {}, {}
    for name, variant in VARIANTS.items():
        dk, dv = torch.empty_like(k), torch.empty_like(v)

        def run(dk=dk, dv=dv, **variant):
            attention_bwd_hopper.backward_kv(do, q, k, v, lse, delta, dk, dv, causal=causal, scale=scale,
                                             **variant)
        run()
        errors[name] = _errors([dk, dv], [ref_dk, ref_dv])
        times[name] = bench(run)
    # the Triton pair of passes (the library's route without the Gluon pass): the dQ pass and the dK/dV pass
    routed = attention_bwd_hopper.ROUTED
    attention_bwd_hopper.ROUTED = set()

    def triton_bwd():
        return attention._launch_bwd(do, q, k, v, o, lse, None, None, causal, 0.0, scale, True,
                                     launch=attention._launch_directly)
    errors["triton"] = _errors(triton_bwd()[1:], [ref_dk, ref_dv])
    times["triton dq+kv"] = bench(triton_bwd)
    attention_bwd_hopper.ROUTED = {(D, causal)}
    errors["routed"] = _errors(triton_bwd()[1:], [ref_dk, ref_dv])
    times["routed dq+kv"] = bench(triton_bwd)

    # fwd+bwd as the model calls it: q, k, v views of one packed projection, the packed backward
    qkv = torch.randn(B, N, 3, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dout = torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16)

    def fwd_bwd():
        out = attention.flash_attention_qkvpacked(qkv, causal=causal)
        return torch.autograd.grad(out, qkv, dout)

    def cudnn():
        out = F.scaled_dot_product_attention(*qkv.permute(2, 0, 3, 1, 4), is_causal=causal)
        return torch.autograd.grad(out, qkv, dout)
    times["fwd+bwd routed"] = bench(fwd_bwd)
    attention_bwd_hopper.ROUTED = set()
    times["fwd+bwd triton"] = bench(fwd_bwd)
    attention_bwd_hopper.ROUTED = routed
    times["fwd+bwd cudnn"] = bench(cudnn)
    return (f"D={D} N={N} causal={causal}: max error dk dv: " + ", ".join(f"{k} {v}" for k, v in errors.items()) +
            "; ms " + ", ".join(f"{k} {v:.3f}" for k, v in times.items()))


def main() -> None:
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
        sys.exit("gluon_bwd_hopper.py needs a Hopper GPU; without one, --compile-only")
    for text in sys.argv[1:]:
        D, N, mask = text.split(":")
        try:
            print(check(int(D), int(N), mask == "causal"), flush=True)
        except Exception as e:  # report, go on
            print(f"{text}: {type(e).__name__}: {str(e)[:400]}", flush=True)


if __name__ == "__main__":
    compile_only() if "--compile-only" in sys.argv else main()
