"""Attention benchmark: time, TFLOP/s and extra memory of attention implementations vs sequence length (CUDA).

Dense providers: naive (the model's `attn=naive`), ours (`kernels.flash_attention`, kernels/attention.py),
SDPA's flash backend, SDPA's cuDNN backend, FlexAttention (compiled, causal mask). Sparse: our block-sparse kernel
vs our dense flash and FlexAttention with the same block mask. With a baseline checkout (--baseline DIR, e.g.
main), its kernels run beside ours as `flash@baseline` and `block_sparse@baseline`, in the same process. Tokens per
batch are fixed (B = tokens / N).
FLOPs: 4 * B * H * N^2 * D forward times the computed fraction (the causal density, or the layout's for sparse);
backward 2.5x forward. Extra memory: peak allocated during one forward+backward minus what was allocated before
(inputs and dO). fwd_bwd_graph: fwd+bwd captured in a CUDA graph and replayed (GPU time, no host launch gaps);
eager fwd_bwd well above it means the call is host-bound. fwd_bwd_sustained (--sustain S): that graph replayed
for S seconds with the SM clock and power sampled (reporting/sustained.py). Rows follow the schema in
reporting/attention_results.py.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from functools import cache, lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from kernels import block_sparse_attention, flash_attention, flash_attention_qkvpacked
from kernels import sparsity_patterns as sp
from model.attention import causal_density, get_backend

from . import sustained
from .attention_results import DENSE_PROVIDERS, MODES, SPARSE_PROVIDERS, load, merge_rows, save, write_outputs
from .environment import environment

FLOP_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd_bwd": 3.5, "fwd_bwd_graph": 3.5, "fwd_bwd_sustained": 3.5}
QUICK = dict(seqs=(1024, 4096, 16384), head_dims=(64,), causals=(True,), dropouts=(0.0,),
             sparse_seqs=(4096, 16384), windows=(256,), density_seq=0, host=False)
FULL = dict(seqs=(512, 1024, 2048, 4096, 8192, 16384, 32768, 65536), head_dims=(64, 128), causals=(True, False),
            dropouts=(0.0, 0.1), sparse_seqs=(1024, 4096, 16384, 65536), windows=(256,), density_seq=8192, host=True)
TIMED_MODES = MODES[:4]  # fwd_bwd_sustained comes with fwd_bwd_graph when a sweep asks for it (sustain)
HOST_SHAPE = dict(B=1, H=1, N=128, D=64)  # GPU work of a few microseconds: a call's time is its host time


# ---- providers: (q, k, v, causal, dropout_p) -> o ----

def naive(q, k, v, causal, dropout_p):
    return get_backend("naive").attend(q, k, v, causal=causal, dropout_p=dropout_p)


def ours(q, k, v, causal, dropout_p):
    return flash_attention(q, k, v, causal=causal, dropout_p=dropout_p)


def _sdpa(backend_name: str):
    def attend(q, k, v, causal, dropout_p):
        from torch.nn.attention import SDPBackend, sdpa_kernel
        with sdpa_kernel(getattr(SDPBackend, backend_name)):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=dropout_p)
    return attend


@cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention
    torch._dynamo.config.cache_size_limit = 256  # one compile per shape and mask; never fall back to eager flex
    torch._functorch.config.donated_buffer = False  # the bwd timing keeps the graph (retain_graph=True)
    return torch.compile(flex_attention, dynamic=False)


_LAYOUTS: dict = {}  # (pattern, N, window) -> block layout, for the FlexAttention masks


@lru_cache(maxsize=16)
def _flex_block_mask(n, causal, layout_key=None, block_size=128):
    """FlexAttention block mask: causal, or a block layout (plus causal), built once per shape."""
    from torch.nn.attention.flex_attention import create_block_mask
    layout = _LAYOUTS[layout_key].cuda() if layout_key is not None else None

    def mask_mod(b, h, q_idx, kv_idx):
        keep = q_idx >= kv_idx if causal else q_idx >= 0
        if layout is not None:
            keep = keep & layout[q_idx // block_size, kv_idx // block_size]
        return keep
    return create_block_mask(mask_mod, None, None, n, n, device="cuda", BLOCK_SIZE=block_size, _compile=True)


def flex(q, k, v, causal, dropout_p, layout_key=None, block_size=128):
    if dropout_p:
        raise NotImplementedError("FlexAttention has no dropout")
    if not causal and layout_key is None:
        return _compiled_flex()(q, k, v)
    return _compiled_flex()(q, k, v, block_mask=_flex_block_mask(q.shape[-2], causal, layout_key, block_size))


PROVIDERS: dict[str, Callable] = {"naive": naive, "flash": ours, "sdpa_flash": _sdpa("FLASH_ATTENTION"),
                                  "sdpa_cudnn": _sdpa("CUDNN_ATTENTION"), "flex": flex}
# (qkv, causal, dropout_p) -> o over q, k, v packed in one (B, N, 3, H, D) tensor: what the model hands a backend
# with packed kernels (model/attention/registry.py, attend_packed), timed with --storage packed
PACKED_PROVIDERS: dict[str, Callable] = {
    "flash": lambda qkv, causal, dropout_p: flash_attention_qkvpacked(qkv, causal=causal, dropout_p=dropout_p)}
SPARSE_KERNELS: dict[str, Callable] = {"block_sparse": block_sparse_attention}  # (q, k, v, layout, ...) -> o


def load_baseline(checkout: str | Path, name: str = "baseline") -> tuple[str, str]:
    """Providers `flash@<name>` and `block_sparse@<name>`: the kernels package of another checkout of this
    repository (e.g. main), imported as package <name> and timed beside ours in the same process. Returns their
    names."""
    package = Path(checkout).resolve() / "kernels"
    if name in sys.modules:
        raise ValueError(f"a package named {name!r} is already imported: give the baseline another name")
    if not (package / "__init__.py").is_file():
        raise FileNotFoundError(f"{checkout} has no kernels/ package: pass the root of a checkout of this repository")
    spec = importlib.util.spec_from_file_location(name, package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    dense, sparse = f"flash@{name}", f"block_sparse@{name}"
    PROVIDERS[dense] = lambda q, k, v, causal, dropout_p: module.flash_attention(q, k, v, causal=causal,
                                                                                 dropout_p=dropout_p)
    PACKED_PROVIDERS[dense] = lambda qkv, causal, dropout_p: module.flash_attention_qkvpacked(
        qkv, causal=causal, dropout_p=dropout_p)
    SPARSE_KERNELS[sparse] = module.block_sparse_attention
    return dense, sparse


def provider(name: str) -> Callable:
    """The (q, k, v, causal, dropout_p) -> o function of a dense provider."""
    return PROVIDERS[name]


# ---- measurement ----

STORAGES = {"bhnd": "q, k, v and dO contiguous (B, H, N, D)",
            "packed": "one (B, N, 3·H·D) projection and dO of (B, N, H, D) storage, as the model passes them: "
                      "whole to providers with packed kernels (ours), as q, k, v views to the others; gradients "
                      "into the projection"}


def inputs(B, H, N, D, dtype=torch.bfloat16, storage="bhnd", device="cuda"):
    """(leaves, qkv, do): the tensors gradients are taken for, a function giving the (B, H, N, D) q, k, v, and dO.
    "packed" builds q, k, v as model/gpt.py does, views of one projection output (split, view, transpose), so each
    call pays the model's view ops and the backward gathers the three gradients into the projection's."""
    if storage == "bhnd":
        q, k, v = (torch.randn(B, H, N, D, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
        return (q, k, v), lambda: (q, k, v), torch.randn(B, H, N, D, device=device, dtype=dtype)
    if storage != "packed":
        raise ValueError(f"unknown storage '{storage}'; choose one of: {', '.join(STORAGES)}")
    x = torch.randn(B, N, 3 * H * D, device=device, dtype=dtype, requires_grad=True)
    qkv = lambda: tuple(t.view(B, N, H, D).transpose(1, 2) for t in x.split(H * D, 2))
    return (x,), qkv, torch.randn(B, N, H, D, device=device, dtype=dtype).transpose(1, 2)


def timed_call(fn, B, H, N, D, dtype=torch.bfloat16, storage="bhnd", packed=False, device="cuda"):
    """(leaves, call, do): random inputs stored as `storage` says and the call timed on them, o = fn(q, k, v), or
    with `packed` o = fn(qkv) on the projection viewed as (B, N, 3, H, D), as the model's attend_packed hands it."""
    leaves, qkv, do = inputs(B, H, N, D, dtype, storage, device)
    if not packed:
        return leaves, lambda: fn(*qkv()), do
    if storage != "packed":
        raise ValueError(f"a packed provider takes storage 'packed', not '{storage}'")
    return leaves, lambda: fn(leaves[0].view(B, N, 3, H, D)), do


def measure(fn, B, H, N, D, dtype=torch.bfloat16, modes=TIMED_MODES, warmup=10, rep=60, storage="bhnd",
            sustain: float = 0.0, packed: bool = False) -> dict:
    """Median ms per mode and extra memory (MiB) of o = fn(q, k, v) on random (B, H, N, D) inputs stored as
    `storage` says (STORAGES), or with `packed` (storage "packed") of o = fn(qkv), the projection viewed as
    (B, N, 3, H, D); with `sustain` seconds, the graph mode's replays sustained as well."""
    import triton.testing

    torch.manual_seed(0)
    leaves, call, do = timed_call(fn, B, H, N, D, dtype, storage, packed)
    bench = lambda f: triton.testing.do_bench(f, warmup=warmup, rep=rep, return_mode="median")
    out = {}
    torch.autograd.grad(call(), leaves, do)  # compile / autotune (forward and backward) outside the
    torch.cuda.synchronize()                 # timings and the memory reading
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    torch.autograd.grad(call(), leaves, do)
    torch.cuda.synchronize()
    out["extra_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    if "fwd" in modes:
        with torch.no_grad():
            out["fwd"] = bench(call)
    if "bwd" in modes:
        o = call()
        out["bwd"] = bench(lambda: torch.autograd.grad(o, leaves, do, retain_graph=True))
        del o
    if "fwd_bwd" in modes:
        out["fwd_bwd"] = bench(lambda: torch.autograd.grad(call(), leaves, do))
    if "fwd_bwd_graph" in modes:
        out.update(graphed(lambda: torch.autograd.grad(call(), leaves, do), bench, sustain))
    return out


def graphed(step, bench, sustain: float = 0.0) -> dict:
    """The same fwd+bwd captured once in a CUDA graph and replayed: GPU time without the host's launch gaps; with
    `sustain`, replayed for that many seconds too, with the SM clock and power beside."""
    side = torch.cuda.Stream()  # warm-up off the default stream, as torch.cuda.graphs asks before a capture
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.empty_cache()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            step()
    except RuntimeError as e:
        return {"fwd_bwd_graph_status": f"not capturable: {str(e).splitlines()[0][:100]}"}
    out = {"fwd_bwd_graph": bench(graph.replay)}
    if sustain:
        result = sustained.replay(graph, sustain)
        out.update(fwd_bwd_sustained=result.ms, sustained_seconds=sustain, sustained_clock_mhz=result.clock_mhz,
                   sustained_power_w=result.power_w)
    del graph
    torch.cuda.empty_cache()
    return out


def measure_host(fn, device="cuda", dtype=torch.bfloat16, calls=300) -> dict:
    """Milliseconds per eager call of o = fn(q, k, v), forward and forward+backward, at HOST_SHAPE: what a call
    costs the CPU that launches it (Python, dispatch, launches), which a step pays wherever its GPU work is short."""
    B, H, N, D = (HOST_SHAPE[k] for k in "BHND")
    torch.manual_seed(0)
    (q, k, v), _, do = inputs(B, H, N, D, dtype, device=device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else lambda: None

    def per_call(step) -> float:
        for _ in range(20):  # compile, autotune, allocator
            step()
        sync()
        start = time.perf_counter()
        for _ in range(calls):
            step()
        sync()
        return (time.perf_counter() - start) / calls * 1e3

    with torch.no_grad():
        fwd = per_call(lambda: fn(q, k, v))
    return {"fwd_host": fwd, "fwd_bwd_host": per_call(lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), do))}


def guarded(fn, *args, measure=measure, **kwargs) -> dict:
    """measure() (or another measurement), recording OOM or an unsupported configuration instead of stopping the
    sweep."""
    try:
        return measure(fn, *args, **kwargs)
    except torch.cuda.OutOfMemoryError:
        return {"status": "OOM"}
    except Exception as e:  # noqa: BLE001  (a backend refusing a shape is a result, not a crash)
        return {"status": f"error: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"}
    finally:
        torch.cuda.empty_cache()


def add_rates(row: dict, flops_fwd: float) -> dict:
    for m in MODES:
        if m in row:
            row[f"{m}_tflops"] = flops_fwd * FLOP_FACTOR[m] / (row[m] * 1e-3) / 1e12
    return row


def fwd_flops(B, H, N, D, density: float) -> float:
    return 4 * B * H * N * N * D * density


# ---- sweeps ----

def run_dense(seqs, head_dims=(64, 128), causals=(True, False), dropouts=(0.0, 0.1), providers=DENSE_PROVIDERS,
              heads=12, tokens=16384, dtype=torch.bfloat16, log=print, on_row=None, storage="bhnd",
              sustain: float = 0.0, rounds: int = 1) -> list[dict]:
    """Every provider at every shape; with `rounds` > 1 each shape's providers are measured that many times, every
    other round in reverse order, and each time is the median over rounds (a GPU's clock drifts within a run, and
    one pass in a fixed order hands that drift to whichever provider comes last)."""
    rows = []
    for D in head_dims:
        for causal in causals:
            for p in dropouts:
                for N in seqs:
                    B = max(1, tokens // N)
                    flops = fwd_flops(B, heads, N, D, causal_density(N) if causal else 1.0)
                    wanted = [prov for prov in providers if not (prov == "flex" and p)]
                    measured = {prov: [] for prov in wanted}
                    for r in range(rounds):
                        for prov in wanted if r % 2 == 0 else wanted[::-1]:
                            packed = storage == "packed" and prov in PACKED_PROVIDERS
                            impl = PACKED_PROVIDERS[prov] if packed else provider(prov)
                            fn = lambda *qkv, impl=impl, causal=causal, p=p: impl(*qkv, causal, p)
                            # naive is GPU-bound, and a graph's second memory pool would not fit beside it at 16K
                            modes = TIMED_MODES if prov != "naive" else TIMED_MODES[:3]
                            measured[prov].append(guarded(fn, B, heads, N, D, dtype, modes=modes, storage=storage,
                                                          sustain=sustain, packed=packed))
                    for prov in wanted:
                        row = dict(part="dense", provider=prov, N=N, B=B, H=heads, D=D, causal=causal, dropout=p,
                                   **({"storage": storage} if storage != "bhnd" else {}),
                                   **median_of_rounds(measured[prov]))
                        rows.append(add_rates(row, flops))
                        log(one_line(row))
                        if on_row:
                            on_row(row)
    return rows


def median_of_rounds(results: list[dict]) -> dict:
    """One row from a provider's rounds at one shape: each time the median over rounds, with the rounds' times
    beside it (`<mode>_rounds`); everything else from the first round; a round that failed stands for them all."""
    if len(results) == 1:
        return results[0]
    if failed := next((r for r in results if "status" in r), None):
        return failed
    out = {**results[0], "rounds": len(results)}
    for mode in MODES:
        if all(mode in r for r in results):
            out[mode] = statistics.median(r[mode] for r in results)
            out[f"{mode}_rounds"] = [r[mode] for r in results]
    return out


def run_host(providers=DENSE_PROVIDERS, causals=(True,), dropouts=(0.0,), device="cuda", calls=300, log=print,
             on_row=None) -> list[dict]:
    """Host time per eager call (measure_host) of each dense provider."""
    rows = []
    for causal in causals:
        for p in dropouts:
            for prov in providers:
                if prov == "flex" and p:
                    continue
                impl = provider(prov)
                fn = lambda q, k, v, impl=impl, causal=causal, p=p: impl(q, k, v, causal, p)
                row = dict(part="host", provider=prov, **HOST_SHAPE, causal=causal, dropout=p,
                           **guarded(fn, device, measure=measure_host, calls=calls))
                rows.append(row)
                log(one_line(row))
                if on_row:
                    on_row(row)
    return rows


def run_sparse(seqs=(1024, 4096, 16384, 65536), patterns=("local", "butterfly"), windows=(256,), density_seq=8192,
               density_windows=(256, 512, 1024, 2048, 4096), providers=SPARSE_PROVIDERS, D=64, heads=12,
               tokens=16384, block_size=128, dtype=torch.bfloat16, log=print, on_row=None) -> list[dict]:
    """Causal block-sparse vs N for each pattern (the local one at each of windows), then vs density (a local window
    sweep at density_seq)."""
    cases = [(pat, N, w) for pat in patterns for N in seqs for w in (windows if pat == "local" else (256,))]
    cases += [("local", density_seq, w) for w in density_windows
              if density_seq and ("local", density_seq, w) not in cases]
    rows = []
    for pat, N, window in cases:
        B = max(1, tokens // N)
        layout = sp.build_layout(pat, N, block_size, window=window)
        key = (pat, N, window)
        _LAYOUTS[key] = layout
        density = sp.layout_density(layout, N, block_size, causal=True)
        for prov in providers:
            if prov in SPARSE_KERNELS:
                fn = lambda q, k, v, layout=layout, kernel=SPARSE_KERNELS[prov]: kernel(q, k, v, layout, causal=True,
                                                                                        block_size=block_size)
            elif prov == "flex":
                fn = lambda q, k, v, key=key: flex(q, k, v, True, 0.0, layout_key=key, block_size=block_size)
            else:
                fn = lambda q, k, v: flash_attention(q, k, v, causal=True)
            row = dict(part="sparse", provider=prov, pattern=pat, window=window, N=N, B=B, H=heads, D=D, causal=True,
                       dropout=0.0, density=density, **guarded(fn, B, heads, N, D, dtype))
            # FLOPs counted over kept blocks only (dense flash computes more, at the dense causal count)
            rows.append(add_rates(row, fwd_flops(B, heads, N, D, causal_density(N) if prov == "flash" else density)))
            log(one_line(row))
            if on_row:
                on_row(row)
    return rows


def one_line(row: dict) -> str:
    head = (f"{row['part']:6s} {row['provider']:12s} {row.get('pattern') or '':9s} N={row['N']:6d} D={row['D']:3d} "
            f"causal={int(row['causal'])} p={row['dropout']:.1f}")
    if "status" in row:
        return f"{head}  {row['status']}"
    if row["part"] == "host":
        return f"{head}  host per call: fwd={row['fwd_host']:.3f}ms fwd_bwd={row['fwd_bwd_host']:.3f}ms"
    times = " ".join(f"{m}={row[m]:.3f}ms({row[m + '_tflops']:.0f}TF)" for m in MODES if m in row)
    if row.get("sustained_clock_mhz"):
        times += f" at {row['sustained_clock_mhz']:.0f}MHz {row['sustained_power_w']:.0f}W"
    return f"{head}  {times} mem={row['extra_mib']:.0f}MiB"


def plan(quick: bool, seqs=None, head_dims=(64, 128), causals=(True, False), dropouts=(0.0, 0.1),
         windows=None) -> dict:
    """The sizes to measure: --quick's few (causal D=64 at 1K/4K/16K; sparse at 4K/16K), else what was asked.
    seqs, where given, are the block-sparse sweep's too; windows: the local pattern's in that sweep."""
    base = QUICK if quick else FULL
    sizes = {**base, "seqs": tuple(seqs or base["seqs"]), "sparse_seqs": tuple(seqs or base["sparse_seqs"]),
             "windows": tuple(windows or base["windows"])}
    if quick:
        return sizes
    return {**sizes, "head_dims": tuple(head_dims), "causals": tuple(causals), "dropouts": tuple(dropouts)}


def heads_conflict(results: str | Path, heads: int) -> str | None:
    """Why rows with `heads` heads cannot join results.json (it holds rows with another head count), or None."""
    other = {r["H"] for r in load(results)[1] if r.get("H")} - {heads}
    if other:
        return f"{results} holds rows with {', '.join(map(str, sorted(other)))} heads, not {heads}: write another --out"
    return None


def sweep(out_dir: str | Path, sizes: dict, part: str = "all", providers=DENSE_PROVIDERS, append: bool = False,
          env: dict | None = None, baseline: str | Path | None = None, storage: str = "bhnd",
          sustain: float = 0.0, heads: int = 12, rounds: int = 1) -> list[dict]:
    """Measure `part` ("dense", "sparse", "host" or "all": dense, sparse and, where sizes ask, host) at `sizes`
    (plan()) with `heads` heads into out_dir: results.json grows row by row, so a run stopped at a time limit keeps
    what it measured; with append, rows of an earlier run stay unless re-measured (an earlier run with another head
    count is refused: its rows would share the tables' cells). With a baseline checkout, its kernels run beside
    ours (load_baseline); with `sustain` seconds, each dense graph is also replayed that long (fwd_bwd_sustained);
    with `rounds`, each dense time is the median of that many rounds (run_dense).
    Writes results.md and the plots at the end; returns all rows."""
    sparse_providers = SPARSE_PROVIDERS
    if baseline is not None:
        dense, sparse = load_baseline(baseline)
        providers, sparse_providers = (*providers, dense), (*SPARSE_PROVIDERS, sparse)
    results = Path(out_dir) / "results.json"
    if append and (conflict := heads_conflict(results, heads)):
        raise ValueError(conflict)
    earlier = load(results)[1] if append else []
    env = env or environment()
    rows: list[dict] = []

    def keep(row):
        rows.append(row)
        save(results, env, merge_rows(earlier, rows))

    if part in ("dense", "all"):
        run_dense(sizes["seqs"], sizes["head_dims"], sizes["causals"], sizes["dropouts"], tuple(providers),
                  heads=heads, on_row=keep, storage=storage, sustain=sustain, rounds=rounds)
    if part in ("sparse", "all"):
        run_sparse(sizes["sparse_seqs"], windows=sizes["windows"], density_seq=sizes["density_seq"],
                   providers=sparse_providers, heads=heads, on_row=keep)
    if part == "host" or (part == "all" and sizes["host"]):
        run_host(tuple(providers), sizes["causals"], sizes["dropouts"], on_row=keep)
    rows = merge_rows(earlier, rows)
    write_outputs(rows, out_dir, env)
    return rows
