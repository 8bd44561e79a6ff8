"""The Triton kernels with their streamed tiles loaded through tensor descriptors (TMA on Hopper) instead of pointer
loads, beside the library's, in one process: forward alone and fwd+bwd replayed from a CUDA graph, 16K tokens;
cuDNN beside (docs/dev/kernel-notes.md, twentieth session).

    python docs/dev/tma_loads.py                           # D = 64 causal, 1K / 4K / 16K, packed q, k, v
    python docs/dev/tma_loads.py --causal yes no --head-dims 64 128 --p 0 0.1 --check
    python docs/dev/tma_loads.py --variants kv fwd --parts fwd+bwd --seqs 4096 16384    # one pass at a time

A variant (a copy of kernels/ imported as its own package; --variants names the passes it changes): each program
makes device-side descriptors of its head's streamed operands, (N, D) with the row stride of q, k, v or dO, and loads
every visited tile through them: K and V in the forward, Q and dO in the dK/dV pass. The tile a program keeps and
every store stay as they are. Rows past N come back as zeros, as the masked loads give. Limits of the copy: the head
dim a power of two (D == HEAD_D), rows 16-byte aligned. --check compares each variant's output and gradients with
the library's.

The dQ pass's key tiles load through descriptors in the library itself since cb98863 (the packed backward, host-side
descriptors of the (B, H, N, D) k and v: kernels/attention.py, _dq_key_values); the variants that measured its forms
against the kernels before (`dq` device-side, `dq-host` over all heads' rows, `dq-host4d`, the form taken):
`git show d88c02c:docs/dev/tma_loads.py`, run in a checkout of d88c02c.
"""

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path.cwd()))
import kernels.attention as library  # noqa: E402 (from the checkout's root)
from reporting.attention_bench import graphed, load_baseline  # noqa: E402

DESCRIPTOR = "tl.make_tensor_descriptor({0}, [N, D], [{1}, 1], [{2}, HEAD_D])"
EDITS = {  # pass: (file, old, new) edits
    "fwd": [  # the forward's key tiles
        ("attention_fwd.py",
         "        offs_n, kT = key_tile_t(i, idx_ptr, K, stride_n, offs_d, N, D, BLOCK_N, SPARSE, PER_BLOCK, MASK, "
         "EVEN_D)\n        qk = tl.dot(q, kT)\n",
         "        start_n = tile_index(i, idx_ptr, SPARSE, PER_BLOCK) * BLOCK_N\n"
         "        offs_n = start_n + tl.arange(0, BLOCK_N)\n        qk = tl.dot(q, tl.trans(K.load([start_n, 0])))\n"),
        ("attention_fwd.py", "        v = load_tile(V, offs_n, stride_n, offs_d, N, D, MASK, EVEN_D)\n",
         "        v = V.load([start_n, 0])\n"),
        ("attention_fwd.py", "    Q, K, V = Q + qkv_off, K + qkv_off, V + qkv_off\n",
         "    Q, K, V = Q + qkv_off, K + qkv_off, V + qkv_off\n"
         f"    K = {DESCRIPTOR.format('K', 'stride_n', 'BLOCK_N')}\n"
         f"    V = {DESCRIPTOR.format('V', 'stride_n', 'BLOCK_N')}\n"),
    ],
    "kv": [  # the dK/dV pass's query tiles
        ("attention_bwd.py",
         "        offs_m = tile_index(i, idx_ptr, SPARSE, PER_BLOCK) * BLOCK_M + tl.arange(0, BLOCK_M)\n"
         "        qT = load_tile_t(Q, offs_m, stride_qn, offs_d, N, D, MASK, EVEN_D)\n",
         "        start_m = tile_index(i, idx_ptr, SPARSE, PER_BLOCK) * BLOCK_M\n"
         "        offs_m = start_m + tl.arange(0, BLOCK_M)\n        qT = tl.trans(Q.load([start_m, 0]))\n"),
        ("attention_bwd.py", "        do = load_tile(DO, offs_m, stride_don, offs_d, N, D, MASK, EVEN_D)\n",
         "        do = DO.load([start_m, 0])\n"),
        ("attention_bwd.py", "    Q, K, V, DO = Q + qkv_off, K + qkv_off, V + qkv_off, DO + do_off\n",
         "    Q, K, V, DO = Q + qkv_off, K + qkv_off, V + qkv_off, DO + do_off\n"
         f"    Q = {DESCRIPTOR.format('Q', 'stride_n', 'BLOCK_M')}\n"
         f"    DO = {DESCRIPTOR.format('DO', 'stride_don', 'BLOCK_M')}\n"),
    ],
    # device-side descriptors live in a per-launch global scratch that Triton asks its allocator for; the allocator
    # is a context variable, so it is set on each launcher's call (the backward runs in autograd's own thread)
    "launchers": [
        ("attention.py", "def _launch_fwd(q, k, v, keys, mask, causal, dropout_p, scale):\n",
         "def _scratch(size, alignment, stream):\n    return torch.empty(size, dtype=torch.int8, device=\"cuda\")\n\n\n"
         "def _launch_fwd(q, k, v, keys, mask, causal, dropout_p, scale):\n    triton.set_allocator(_scratch)\n"),
        ("attention.py", "    launch = launch or wrap_triton\n",
         "    launch = launch or wrap_triton\n    triton.set_allocator(_scratch)\n"),
    ],
}


def _edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert text.count(old) == count, f"{path.name} changed where this probe edits it: update the probe"
    path.write_text(text.replace(old, new))


def tma_variant(passes: tuple[str, ...] = ("fwd", "kv")):
    """The attention module of a copy of kernels/ whose passes `passes` load their streamed tiles through tensor
    descriptors."""
    name = "tma_" + "_".join(passes)
    root = Path(tempfile.mkdtemp(prefix=f"{name}_"))
    shutil.copytree(Path.cwd() / "kernels", root / "kernels")
    for part in ("launchers", *passes):
        for file, *edit in EDITS[part]:
            _edit(root / "kernels" / file, *edit)
    load_baseline(root, name)
    return sys.modules[f"{name}.attention"]


class Inputs:
    """`tokens` (16K) of q, k, v: views of one packed (B, N, 3, H, D) projection (`qkv`, the leaf; ours take it whole,
    as the model calls them) or separate (B, H, N, D) tensors (the leaves)."""

    def __init__(self, N: int, D: int, packed: bool, device: str = "cuda", dtype: torch.dtype = torch.bfloat16,
                 tokens: int = 16384, heads: int | None = None):
        B, H = max(1, tokens // N), heads or (12 if D == 64 else 6)
        if packed:
            self.qkv = torch.randn(B, N, 3, H, D, device=device, dtype=dtype, requires_grad=True)
            self.leaves = (self.qkv,)
        else:
            self.qkv = None
            self.leaves = tuple(torch.randn(B, H, N, D, device=device, dtype=dtype, requires_grad=True)
                                for _ in range(3))
        self.do = torch.randn(B, H, N, D, device=device, dtype=dtype)

    def views(self):
        """q, k, v as (B, H, N, D): made in each call (views made once, outside a CUDA graph's capture, would put
        their backward on the default stream, which the capture refuses)."""
        if self.qkv is None:
            return self.leaves
        return tuple(t.transpose(1, 2) for t in self.qkv.unbind(2))


def ours(module):
    """The (inputs, causal, p) -> o function of a kernels module: the packed op when q, k, v are packed."""
    def attend(x: Inputs, causal: bool, p: float):
        if x.qkv is not None:
            return module.flash_attention_qkvpacked(x.qkv, causal=causal, dropout_p=p)
        return module.flash_attention(*x.views(), causal=causal, dropout_p=p)
    return attend


def cudnn(x: Inputs, causal: bool, p: float):
    return F.scaled_dot_product_attention(*x.views(), is_causal=causal, dropout_p=p)


def forward_ms(attend, x: Inputs) -> float:
    with torch.no_grad():
        attend(x)
        torch.cuda.synchronize()
        return triton.testing.do_bench_cudagraph(lambda: attend(x))


def fwd_bwd_ms(attend, x: Inputs) -> float:
    """fwd+bwd replayed from a CUDA graph, captured as the benchmark captures it (reporting.attention_bench)."""
    step = lambda: torch.autograd.grad(attend(x), x.leaves, x.do)
    step()  # autotune and compile outside the graph
    torch.cuda.synchronize()
    bench = lambda f: triton.testing.do_bench(f, warmup=10, rep=60, return_mode="median")
    result = graphed(step, bench)
    if "fwd_bwd_graph" not in result:
        print(result["fwd_bwd_graph_status"], flush=True)
    return result.get("fwd_bwd_graph", float("nan"))


def check(variant, x: Inputs, causal: bool, p: float) -> str:
    """Largest difference of the variant's output and gradients from the library's (same dropout keys)."""
    results = []
    for module in (library, variant):
        torch.manual_seed(0)
        o = ours(module)(x, causal, p)
        results.append((o, *torch.autograd.grad(o, x.leaves, x.do)))
    names = ("o", "dqkv") if x.qkv is not None else ("o", "dq", "dk", "dv")
    return ", ".join(f"{name} {(a.float() - b.float()).abs().max().item():.2e}"
                     for name, a, b in zip(names, *results, strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--head-dims", type=int, nargs="+", default=[64])
    ap.add_argument("--causal", nargs="+", choices=["yes", "no"], default=["yes"])
    ap.add_argument("--p", type=float, nargs="+", default=[0.0])
    ap.add_argument("--seqs", type=int, nargs="+", default=[1024, 4096, 16384])
    ap.add_argument("--storage", choices=["packed", "bhnd"], default="packed")
    ap.add_argument("--variants", nargs="+", default=["fwd,kv"],
                    help="one variant per item: the passes (fwd, kv) that load through descriptors")
    ap.add_argument("--parts", nargs="+", choices=["fwd", "fwd+bwd"], default=["fwd", "fwd+bwd"])
    ap.add_argument("--check", action="store_true", help="compare each variant's results with the library's")
    args = ap.parse_args()
    variants = {f"tma[{v}]": tma_variant(tuple(v.split(","))) for v in args.variants}
    providers = {"library": ours(library), **{n: ours(m) for n, m in variants.items()}, "cudnn": cudnn}
    for D in args.head_dims:
        for causal in (c == "yes" for c in args.causal):
            for p in args.p:
                for N in args.seqs:
                    x = Inputs(N, D, args.storage == "packed")
                    label = f"D={D} N={N} causal={causal} p={p} {args.storage}"
                    for name, variant in variants.items() if args.check else ():
                        print(f"{label} {name} - library: {check(variant, x, causal, p)}", flush=True)
                    for part in args.parts:
                        ms = {}
                        for name, attend in providers.items():
                            f = lambda x, attend=attend, c=causal, p=p: attend(x, c, p)
                            ms[name] = forward_ms(f, x) if part == "fwd" else fwd_bwd_ms(f, x)
                        print(f"{label} {part} ms: " + ", ".join(f"{n} {t:.4f}" for n, t in ms.items()) + "; " +
                              ", ".join(f"library / {n} {ms['library'] / ms[n]:.3f}" for n in variants) +
                              f", cudnn / library {ms['cudnn'] / ms['library']:.3f}", flush=True)


if __name__ == "__main__":
    main()
