"""The model's attention call, eager against torch.compile, on the model's layout (q, k, v views of one (B, N, 3C)
projection, the output back to (B, N, C)): fwd+bwd ms per call (CUDA events, median of do_bench), ours and cuDNN's.
Why: end to end at seq 4096 x 4, flash is 0.985x sdpa eager but 0.969x compiled, and the compiled profile's
attention kernels ran slower than the eager one's (docs/dev/kernel-notes.md, eleventh session). Writes Inductor's
code for the compiled calls of ours to OUT/compiled_<provider>_code.py. flash_packed: the projection handed whole to
flash_attention_qkvpacked, as the model does since the twelfth session (its backward writes the packed gradient).

    python docs/dev/compiled_vs_eager_attention.py [OUT]
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from torch._inductor.utils import run_and_get_code

sys.path.insert(0, str(Path.cwd()))
from kernels import flash_attention, flash_attention_qkvpacked  # noqa: E402 (from the checkout's root)

B, N, H, D = 4, 4096, 12, 64


def layer(attend, packed: bool = False):
    def f(x):
        qkv = x.view(B, N, 3, H, D)
        o = attend(qkv) if packed else attend(*(t.transpose(1, 2) for t in qkv.unbind(2)))
        return o.transpose(1, 2).reshape(B, N, H * D)
    return f


def fwd_bwd_ms(f, x, do) -> float:
    step = lambda: torch.autograd.grad(f(x), x, do)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    return triton.testing.do_bench(step, warmup=50, rep=300)


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    x = torch.randn(B, N, 3 * H * D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    do = torch.randn(B, N, H * D, device="cuda", dtype=torch.bfloat16)
    attends = {"flash": lambda q, k, v: flash_attention(q, k, v, causal=True),
               "flash_packed": lambda qkv: flash_attention_qkvpacked(qkv, causal=True),
               "cudnn": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)}
    layers = {name: layer(a, packed=name == "flash_packed") for name, a in attends.items()}
    compiled = {name: torch.compile(f) for name, f in layers.items()}
    for name in ("flash", "flash_packed"):
        _, code = run_and_get_code(lambda name=name: torch.autograd.grad(compiled[name](x), x, do))
        (out / f"compiled_{name}_code.py").write_text("\n\n# ----- next graph -----\n\n".join(code))
    for round_ in range(2):  # twice, the order reversed: clocks drift as the GPU heats
        names = list(attends) if round_ == 0 else list(attends)[::-1]
        for name in names:
            eager = fwd_bwd_ms(layers[name], x, do)
            comp = fwd_bwd_ms(compiled[name], x, do)
            print(f"round {round_} {name}: eager {eager:.3f} ms, compiled {comp:.3f} ms "
                  f"(compiled / eager {comp / eager:.3f})", flush=True)


if __name__ == "__main__":
    main()
