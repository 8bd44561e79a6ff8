"""The single-pass backward (dQ by fp32 atomics) against the two passes (deterministic=True), per head dim, mask and
dropout, 16K tokens, fwd+bwd replayed from a CUDA graph; cuDNN beside. kernels/attention.py's _single_pass() routes
by what this measured (docs/dev/kernel-notes.md, seventh, eleventh and nineteenth sessions). Without dropout the
library never takes the single pass; --p 0 forces it here (by replacing _single_pass) to measure it.

    python docs/dev/dropout_backward_passes.py                     # p = 0.1, D = 128 and 64, causal
    python docs/dev/dropout_backward_passes.py --p 0 --head-dims 64 --causal yes no
    python docs/dev/dropout_backward_passes.py --p 0 --head-dims 64 --causal yes no --free-dq-adds
    python docs/dev/dropout_backward_passes.py --p 0 --head-dims 64 --free-dq-adds --kv-tiles
    python docs/dev/dropout_backward_passes.py --p 0.1 --head-dims 64 --free-dq-adds --head-major

Variants, each a copy of kernels/ imported as its own package (timing only):
- --free-dq-adds: the single pass with its dQ adds predicated off at run time (tl.atomic_add's mask gains
  `offs_m < 0`, which the compiler cannot know: the REDs issue and move no data; dQ is wrong). It bounds what any
  cheaper dQ reduction (FlashAttention-3's TMA reduce-add) could give the single pass in these kernels.
- --head-major: the single pass's dK/dV launch in head-major order (tiles fastest) where the library uses LPT's
  heads-fastest order (causal, N >= 4K), so that fewer heads' fp32 dQ accumulators are live in L2 at once.
- --kv-tiles: the single pass (and its free-adds copy, with --free-dq-adds) with each dK/dV tile config forced,
  causal only: what the adds cost by key tile (their bytes fall as 1 / BLOCK_N).
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

ATOMIC = "tl.atomic_add(dq_ptrs, dq, "
KV_LAUNCH = "    dkv_like_q = single_pass and slots_like_q\n"
KV_TILES = [(64, 64, 4, 3), (32, 64, 4, 3), (32, 128, 4, 3), (64, 128, 4, 3), (64, 128, 8, 3), (128, 128, 8, 2),
            (32, 128, 8, 3), (32, 256, 8, 2), (64, 64, 8, 3)]  # (BLOCK_M, BLOCK_N, warps, stages)


def _edit(path: Path, old: str, new: str, count: int) -> None:
    text = path.read_text()
    assert text.count(old) == count, f"{path.name} changed where this probe edits it: update the probe"
    path.write_text(text.replace(old, new))


def variant(name: str, *, free_dq_adds: bool = False, head_major: bool = False):
    """The attention module of a copy of kernels/ with the variant's edits, imported as package `name`, its every
    non-deterministic call a single pass."""
    root = Path(tempfile.mkdtemp(prefix=f"{name}_"))
    shutil.copytree(Path.cwd() / "kernels", root / "kernels")
    if free_dq_adds:
        bwd = root / "kernels" / "attention_bwd.py"
        _edit(bwd, ATOMIC + "mask=(", ATOMIC + "mask=(offs_m[:, None] < 0) & (", 1)
        _edit(bwd, ATOMIC + 'sem="relaxed")', ATOMIC + 'mask=offs_m[:, None] < 0, sem="relaxed")', 1)
    if head_major:
        _edit(root / "kernels" / "attention.py", KV_LAUNCH, KV_LAUNCH + '    if single_pass:\n'
              '        common["LPT"] = False\n        grid_n = _grid(N, B * H, False, "BLOCK_N")\n', 1)
    load_baseline(root, name)
    module = sys.modules[f"{name}.attention"]
    module._single_pass = lambda p, deterministic, d: not deterministic
    return module


def fwd_bwd_ms(attend, q, k, v, do) -> float:
    step = lambda: torch.autograd.grad(attend(q, k, v), (q, k, v), do)
    step()  # autotune and compile outside the graph
    torch.cuda.synchronize()
    return triton.testing.do_bench_cudagraph(step)


def kv_tile_sweep(modules: dict, q, k, v, do, p: float, label: str) -> None:
    """Each module's single pass with each dK/dV tile config forced (the forward and the rest tuned as usual)."""
    for name, module in modules.items():
        tuned = module._bwd_kv.configs
        attend = lambda q, k, v, module=module: module.flash_attention(q, k, v, causal=True, dropout_p=p)
        try:
            for m, n, w, s in KV_TILES:
                module._bwd_kv.configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)]
                print(f"{label} {name} dK/dV {m} x {n} x {w} warps x {s} stages: "
                      f"{fwd_bwd_ms(attend, q, k, v, do):.3f} ms", flush=True)
        finally:
            module._bwd_kv.configs = tuned


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--p", type=float, default=0.1)
    ap.add_argument("--head-dims", type=int, nargs="+", default=[128, 64])
    ap.add_argument("--causal", nargs="+", choices=["yes", "no"], default=["yes"])
    ap.add_argument("--seqs", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--free-dq-adds", action="store_true", help="also time the single pass with its dQ adds off")
    ap.add_argument("--head-major", action="store_true", help="also time the single pass's dK/dV launch head-major")
    ap.add_argument("--kv-tiles", action="store_true", help="the single pass with each dK/dV tile config, causal")
    args = ap.parse_args()
    routed = library._single_pass
    library._single_pass = lambda p, deterministic, d: not deterministic  # every non-deterministic call: one pass
    variants = {"single pass": library}
    if args.head_major:
        variants["single pass, head-major"] = variant("head_major", head_major=True)
    if args.free_dq_adds:
        variants["single pass, dQ adds off"] = variant("free_dq_adds", free_dq_adds=True)
    if args.free_dq_adds and args.head_major:
        variants["single pass, dQ adds off, head-major"] = variant("free_head_major", free_dq_adds=True,
                                                                   head_major=True)
    for D in args.head_dims:
        for causal in (c == "yes" for c in args.causal):
            for N in args.seqs:
                B, H = 16384 // N, 12 if D == 64 else 6
                q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                           for _ in range(3))
                do = torch.randn_like(q)
                label = f"D={D} N={N} H={H} causal={causal} p={args.p}"
                if args.kv_tiles:
                    if causal:
                        kv_tile_sweep(variants, q, k, v, do, args.p, label)
                    continue
                ms = {name: fwd_bwd_ms(lambda q, k, v, module=module, causal=causal: module.flash_attention(
                    q, k, v, causal=causal, dropout_p=args.p), q, k, v, do) for name, module in variants.items()}
                ms["two passes"] = fwd_bwd_ms(lambda q, k, v, causal=causal: library.flash_attention(
                    q, k, v, causal=causal, dropout_p=args.p, deterministic=True), q, k, v, do)
                ms["cudnn"] = fwd_bwd_ms(lambda q, k, v, causal=causal: F.scaled_dot_product_attention(
                    q, k, v, is_causal=causal, dropout_p=args.p), q, k, v, do)
                library_takes = "single pass" if routed(args.p, False, D) else "two passes"
                print(f"{label} fwd+bwd ms: " + ", ".join(f"{k} {v:.3f}" for k, v in ms.items()) +
                      f"; single / two passes {ms['single pass'] / ms['two passes']:.3f}; the library takes the "
                      f"{library_takes}", flush=True)


if __name__ == "__main__":
    main()
