"""The Triton kernels with their streamed tiles loaded through tensor descriptors (TMA on Hopper) instead of pointer
loads, beside the library's, in one process: forward alone and fwd+bwd replayed from a CUDA graph, 16K tokens;
cuDNN beside (docs/dev/kernel-notes.md, twentieth session).

    python docs/dev/tma_loads.py                           # D = 64 causal, 1K / 4K / 16K, packed q, k, v
    python docs/dev/tma_loads.py --causal yes no --head-dims 64 128 --p 0 0.1 --check
    python docs/dev/tma_loads.py --variants kv dq --parts fwd+bwd --seqs 4096 16384    # one pass at a time

A variant (a copy of kernels/ imported as its own package; --variants names the passes it changes): each program
makes device-side descriptors of its head's streamed operands, (N, D) with the row stride of q, k, v or dO, and loads
every visited tile through them: K and V in the forward and the dQ pass, Q and dO in the dK/dV pass. The tile a
program keeps (its own Q, or K and V in the dK/dV pass) and every store stay as they are. Rows past N come back as
zeros, as the masked loads give. Limits of the copy: the head dim a power of two (D == HEAD_D), rows 16-byte
aligned. --check compares each variant's output and gradients with the library's.
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
from reporting.attention_bench import load_baseline  # noqa: E402

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
    "dq": [  # the dQ pass's key tiles
        ("attention_bwd.py",
         "        offs_n, kT = key_tile_t(i, idx_ptr, K, stride_n, offs_d, N, D, BLOCK_N, SPARSE, PER_BLOCK, MASK, "
         "EVEN_D)\n        vT = load_tile_t(V, offs_n, stride_n, offs_d, N, D, MASK, EVEN_D)\n",
         "        start_n = tile_index(i, idx_ptr, SPARSE, PER_BLOCK) * BLOCK_N\n"
         "        offs_n = start_n + tl.arange(0, BLOCK_N)\n        kT = tl.trans(K.load([start_n, 0]))\n"
         "        vT = tl.trans(V.load([start_n, 0]))\n"),
        ("attention_bwd.py",
         "    Q, K, V, DO, O = Q + qkv_off, K + qkv_off, V + qkv_off, DO + do_off, O + g_off\n",
         "    Q, K, V, DO, O = Q + qkv_off, K + qkv_off, V + qkv_off, DO + do_off, O + g_off\n"
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


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{path.name} changed where this probe edits it: update the probe"
    path.write_text(text.replace(old, new))


def tma_variant(passes: tuple[str, ...] = ("fwd", "dq", "kv")):
    """The attention module of a copy of kernels/ whose passes `passes` load their streamed tiles through tensor
    descriptors."""
    name = "tma_" + "_".join(passes)
    root = Path(tempfile.mkdtemp(prefix=f"{name}_"))
    shutil.copytree(Path.cwd() / "kernels", root / "kernels")
    for part in ("launchers", *passes):
        for file, old, new in EDITS[part]:
            _edit(root / "kernels" / file, old, new)
    load_baseline(root, name)
    return sys.modules[f"{name}.attention"]


def inputs(N: int, D: int, packed: bool, device: str, dtype: torch.dtype):
    B, H = max(1, 16384 // N), 12 if D == 64 else 6
    if packed:  # views of one (B, N, 3, H, D) projection, as the model passes them
        qkv = torch.randn(B, N, 3, H, D, device=device, dtype=dtype)
        q, k, v = (t.transpose(1, 2).detach().requires_grad_() for t in qkv.unbind(2))
    else:
        q, k, v = (torch.randn(B, H, N, D, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    return q, k, v, torch.randn_like(q)


def forward_ms(attend, q, k, v) -> float:
    with torch.no_grad():
        attend(q, k, v)
        torch.cuda.synchronize()
        return triton.testing.do_bench_cudagraph(lambda: attend(q, k, v))


def fwd_bwd_ms(attend, q, k, v, do) -> float:
    step = lambda: torch.autograd.grad(attend(q, k, v), (q, k, v), do)
    step()  # autotune and compile outside the graph
    torch.cuda.synchronize()
    return triton.testing.do_bench_cudagraph(step)


def check(variant, q, k, v, do, causal: bool, p: float) -> str:
    """Largest difference of the variant's output and gradients from the library's (same dropout keys)."""
    results = []
    for module in (library, variant):
        torch.manual_seed(0)
        o = module.flash_attention(q, k, v, causal=causal, dropout_p=p)
        results.append((o, *torch.autograd.grad(o, (q, k, v), do)))
    return ", ".join(f"{name} {(a.float() - b.float()).abs().max().item():.2e}"
                     for name, a, b in zip(("o", "dq", "dk", "dv"), *results, strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--head-dims", type=int, nargs="+", default=[64])
    ap.add_argument("--causal", nargs="+", choices=["yes", "no"], default=["yes"])
    ap.add_argument("--p", type=float, nargs="+", default=[0.0])
    ap.add_argument("--seqs", type=int, nargs="+", default=[1024, 4096, 16384])
    ap.add_argument("--storage", choices=["packed", "bhnd"], default="packed")
    ap.add_argument("--variants", nargs="+", default=["fwd,dq,kv"],
                    help="one variant per item: the passes (fwd, dq, kv) that load through descriptors")
    ap.add_argument("--parts", nargs="+", choices=["fwd", "fwd+bwd"], default=["fwd", "fwd+bwd"])
    ap.add_argument("--check", action="store_true", help="compare each variant's results with the library's")
    args = ap.parse_args()
    variants = {f"tma[{v}]": tma_variant(tuple(v.split(","))) for v in args.variants}
    providers = {"library": library.flash_attention, **{n: m.flash_attention for n, m in variants.items()},
                 "cudnn": lambda q, k, v, causal, dropout_p: F.scaled_dot_product_attention(
                     q, k, v, is_causal=causal, dropout_p=dropout_p)}
    for D in args.head_dims:
        for causal in (c == "yes" for c in args.causal):
            for p in args.p:
                for N in args.seqs:
                    q, k, v, do = inputs(N, D, args.storage == "packed", "cuda", torch.bfloat16)
                    label = f"D={D} N={N} causal={causal} p={p} {args.storage}"
                    for name, variant in variants.items() if args.check else ():
                        print(f"{label} {name} - library: {check(variant, q, k, v, do, causal, p)}", flush=True)
                    for part in args.parts:
                        ms = {}
                        for name, attend in providers.items():
                            f = lambda q, k, v, attend=attend, c=causal, p=p: attend(q, k, v, causal=c, dropout_p=p)
                            ms[name] = forward_ms(f, q, k, v) if part == "fwd" else fwd_bwd_ms(f, q, k, v, do)
                        print(f"{label} {part} ms: " + ", ".join(f"{n} {t:.4f}" for n, t in ms.items()) + "; " +
                              ", ".join(f"library / {n} {ms['library'] / ms[n]:.3f}" for n in variants) +
                              f", cudnn / library {ms['cudnn'] / ms['library']:.3f}", flush=True)

if __name__ == "__main__":
    main()
