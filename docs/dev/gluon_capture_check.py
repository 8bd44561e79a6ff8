"""Does the routed forward (the Gluon forward where kernels/attention_fwd_hopper.py's ROUTED routes,
Triton elsewhere) capture and replay in CUDA graphs with the backward? Each case runs in its own process (a failed
capture leaves the CUDA context unusable) and prints ok, or the error:

- fwd+bwd: the packed causal fwd+bwd captured in one graph after a warm-up on a side stream;
- fwd graph first: a forward-only graph (triton.testing.do_bench_cudagraph), then the fwd+bwd one, the order in
  which the twenty-eighth session saw cudaErrorStreamCaptureImplicit with D = 64 routed;
- separate graphs: torch.compile(mode="reduce-overhead") of a block of attention, forward and backward in two
  graphs, as train.compile_mode=reduce-overhead runs the model.

    FLASHGPT_AUTOTUNE=0 python docs/dev/gluon_capture_check.py                 # a Hopper GPU, triton >= 3.6
    FLASHGPT_AUTOTUNE=0 python docs/dev/gluon_capture_check.py --routed-only   # without the Triton-only cases
"""

import subprocess
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path.cwd()))
from kernels import attention, flash_attention_qkvpacked  # noqa: E402 (from the checkout's root)

CASES = ("fwd+bwd", "fwd graph first", "separate graphs")
ROUTES = {"D=64 and 128 routed": (64, 128), "Triton only": ()}  # --routed-only: the first


def _inputs(D: int):
    B, N, H = 2, 4096, 768 // D
    qkv = torch.randn(B, N, 3, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    return qkv, torch.randn(B, N, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)  # as the output


def run(case: str, D: int) -> None:
    qkv, do = _inputs(D)

    def forward():
        return flash_attention_qkvpacked(qkv, causal=True)

    def fwd_bwd():
        return torch.autograd.grad(forward(), qkv, do)

    if case == "fwd+bwd":
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                fwd_bwd()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            (grad,) = fwd_bwd()
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(grad, fwd_bwd()[0]), "the replayed gradient differs from an eager call's"
    elif case == "fwd graph first":
        with torch.no_grad():
            triton.testing.do_bench_cudagraph(forward)
        triton.testing.do_bench_cudagraph(fwd_bwd)
    else:
        step = torch.compile(lambda x: flash_attention_qkvpacked(x, causal=True).float().square().mean(),
                             mode="reduce-overhead")
        for _ in range(4):
            torch.compiler.cudagraph_mark_step_begin()
            step(qkv).backward()
            qkv.grad = None
    torch.cuda.synchronize()


def main() -> None:
    if attention.hopper is None or not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
        sys.exit("gluon_capture_check.py needs a Hopper GPU (sm_90) and triton >= 3.6")
    if len(sys.argv) == 4 and sys.argv[1] in CASES:  # a child: case, D, routed head dims
        case, D, routed = sys.argv[1], int(sys.argv[2]), sys.argv[3]
        attention.hopper.ROUTED = {(int(d), True) for d in routed.split(",") if d}
        run(case, D)
        return
    routes = list(ROUTES.items())[:1] if "--routed-only" in sys.argv else ROUTES.items()
    for route, dims in routes:
        for D in (64, 128):
            for case in CASES:
                child = subprocess.run([sys.executable, __file__, case, str(D), ",".join(map(str, dims))],
                                       capture_output=True, text=True)
                error = (child.stderr.strip().splitlines() or ["?"])[-1][:200]
                print(f"{route}, D={D}, {case}: {'ok' if child.returncode == 0 else 'FAILED: ' + error}", flush=True)


if __name__ == "__main__":
    main()
