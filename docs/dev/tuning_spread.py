"""How far the autotuner's choice lands from the best config in use (GPU). Causal, D = 64, 16K tokens, the model's
packed projection (flash_attention_qkvpacked), forward+backward replayed from a CUDA graph, the way a compiled
training step runs it; cuDNN on the same tensors beside.

1. Tunings: the three autotuners (forward, dQ pass, dK/dV pass) tuned again from scratch, --tunings times under
   each benchmark policy: `cold` (Triton's default: L2 flushed before each timed launch, a 100 ms burst a config)
   and `graph` (launches replayed from a CUDA graph, L2 warm). Each tuning's picks and the fwd+bwd time they give.
2. In use: every config an autotuner timed, forced one kernel at a time (the other two at the first tuning's
   picks), fwd+bwd time, in --rounds rounds (every other round in reverse); then each kernel's best together.

    python docs/dev/tuning_spread.py                                    # from a checkout's root
    python docs/dev/tuning_spread.py --seqs 4096 8192 --orders all G16 --tunings 3 --out DIR

--orders: `landed` (kernels/attention.py's order tables), `grid`, `G<n>` (groups of n heads), `all` (every head).
Nothing is written to Triton's autotuning disk cache.
"""

import argparse
import json
import statistics
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path.cwd()))
sys.path.insert(0, str(Path(__file__).parent))
import lpt_ab  # noqa: E402

from kernels import attention, flash_attention_qkvpacked  # noqa: E402

H, D, TOKENS = 12, 64, 16384
TUNERS = {"fwd": "_fwd", "dq": "_bwd_dq", "kv": "_bwd_kv"}
POLICIES = {
    "cold": None,  # the driver's benchmarker: triton.testing.do_bench
    "graph": lambda fn, quantiles: triton.testing.do_bench_cudagraph(fn, rep=100, quantiles=quantiles),
}


def tuner(kind: str):
    return getattr(attention, TUNERS[kind])


def in_use_ms(call) -> float:
    call()
    torch.cuda.synchronize()
    return triton.testing.do_bench_cudagraph(call, rep=200, return_mode="median")


def retune(policy: str, call) -> dict:
    """Forget every tuning, tune again under `policy`, and return {kind: (picked config, the tuner's timings)}."""
    for kind in TUNERS:
        t = tuner(kind)
        t.cache.clear()
        t.cache_results = False
        t.__dict__.pop("do_bench", None)  # a cached_property over _do_bench
        t._do_bench = POLICIES[policy]
    call()
    torch.cuda.synchronize()
    return {kind: (tuner(kind).best_config, dict(tuner(kind).configs_timings)) for kind in TUNERS}


def pin(picks: dict) -> None:
    """Each autotuner answers its (single) tuning key with the given config."""
    for kind, config in picks.items():
        cache = tuner(kind).cache
        assert len(cache) == 1, f"{kind}: {len(cache)} tuning keys; one shape at a time"
        cache[next(iter(cache))] = config


def name(config) -> str:
    kw = config.kwargs
    return "x".join(str(v) for v in (kw["BLOCK_M"], kw.get("BLOCK_N", "h"), config.num_warps, config.num_stages))


def cudnn_call(qkv, do, dropout_p: float):
    def call():
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
        torch.autograd.grad(o, qkv, do)
    return call


def tunings(call, label: str, count: int, cudnn_ms: float) -> tuple[list[dict], dict]:
    """`count` fresh tunings under each policy, each pick timed in use; and the first tuning (picks, timings)."""
    out, first = [], None
    for policy in POLICIES:
        for _ in range(count):
            tuned = retune(policy, call)
            first = first or tuned
            picks = {kind: name(config) for kind, (config, _) in tuned.items()}
            out.append({"policy": policy, "picks": picks, "ms": in_use_ms(call)})
            print(f"{label} tuning ({policy}): " + " ".join(f"{k} {c}" for k, c in picks.items())
                  + f" -> {out[-1]['ms']:.4f} ms (cuDNN {cudnn_ms:.4f})", flush=True)
    return out, first


def sweep_in_use(call, label: str, first: dict, rounds: int) -> tuple[dict, dict]:
    """Every config each tuner timed, forced one kernel at a time (the others at `first`'s picks), fwd+bwd in use in
    `rounds` rounds. Returns per kernel and config the rounds' ms and the tuner's own kernel ms; and each kernel's
    best."""
    base = {kind: config for kind, (config, _) in first.items()}
    out, best = {}, {}
    for kind, (_, timings) in first.items():
        configs = list(timings)
        times = {name(c): [] for c in configs}
        for r in range(rounds):
            for config in configs if r % 2 == 0 else configs[::-1]:
                pin({**base, kind: config})
                times[name(config)].append(in_use_ms(call))
        mean = {c: statistics.fmean(ms) for c, ms in times.items()}
        tuner_ms = {name(c): t[0] for c, t in timings.items()}  # the tuner's own median, kernel alone
        best[kind] = min(configs, key=lambda c: mean[name(c)])
        out[kind] = {c: {"fwd_bwd_ms": times[c], "tuner_kernel_ms": tuner_ms[c]} for c in times}
        print(f"{label} {kind} in use (fwd+bwd ms, mean of {rounds}; tuner's kernel ms): " + "  ".join(
            f"{c} {m:.4f} ({tuner_ms[c]:.4f})" for c, m in sorted(mean.items(), key=lambda x: x[1])), flush=True)
    return out, best


def measure(N: int, order: str, args) -> dict:
    B = TOKENS // N
    qkv = torch.randn(B, N, 3, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    do = torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16)
    lpt_ab.set_order(order)
    call = lambda: torch.autograd.grad(flash_attention_qkvpacked(qkv, causal=True, dropout_p=args.dropout), qkv, do)
    label = f"N={N} {order}"
    out = {"N": N, "order": order, "cudnn_ms": in_use_ms(cudnn_call(qkv, do, args.dropout))}
    out["tunings"], first = tunings(call, label, args.tunings, out["cudnn_ms"])
    out["in_use"], best = sweep_in_use(call, label, first, args.rounds)
    pin(best)
    out["best"] = {"picks": {k: name(c) for k, c in best.items()}, "ms": in_use_ms(call)}
    print(f"{label} best in use: " + " ".join(f"{k} {c}" for k, c in out["best"]["picks"].items())
          + f" -> {out['best']['ms']:.4f} ms; cuDNN / best {out['cudnn_ms'] / out['best']['ms']:.3f}", flush=True)
    return out


def markdown(meta: dict, results: list[dict]) -> str:
    lines = [f"# The autotuner's picks against the best config in use ({meta['gpu']}, torch {meta['torch']}, "
             f"triton {meta['triton']}; commit {meta['commit']}, {meta['date']})", "",
             f"Causal, D = {D}, {H} heads, {TOKENS} tokens, packed, dropout {meta['dropout']}; fwd+bwd ms from "
             "CUDA-graph replays (docs/dev/tuning_spread.py). Configs: query tile x key tile x warps x stages (the "
             "dQ pass's key tile, `h`, is set by the host); policies: `cold` Triton's default benchmark, `graph` "
             "CUDA-graph replays.", ""]
    for r in results:
        lines += [f"## N = {r['N']}, order {r['order']}: cuDNN {r['cudnn_ms']:.4f} ms; best in use "
                  f"{r['best']['ms']:.4f} ms (cuDNN ÷ best {r['cudnn_ms'] / r['best']['ms']:.3f})", "",
                  "| tuning | fwd | dQ | dK/dV | ms |", "|---|---|---|---|---|"]
        lines += [f"| {t['policy']} | {t['picks']['fwd']} | {t['picks']['dq']} | {t['picks']['kv']} | {t['ms']:.4f} |"
                  for t in r["tunings"]]
        lines += [f"| best in use | {r['best']['picks']['fwd']} | {r['best']['picks']['dq']} | "
                  f"{r['best']['picks']['kv']} | {r['best']['ms']:.4f} |", ""]
        for kind, configs in r["in_use"].items():
            ranked = sorted(configs.items(), key=lambda x: statistics.fmean(x[1]["fwd_bwd_ms"]))
            lines.append(f"- {kind}, each config in use (fwd+bwd ms; the tuner's kernel ms): " + ", ".join(
                f"{c} {statistics.fmean(v['fwd_bwd_ms']):.4f} ({v['tuner_kernel_ms']:.4f})" for c, v in ranked))
        lines.append("")
    return "\n".join(lines)


def git_commit() -> str:
    run = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return run.stdout.strip() or "unknown"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seqs", type=int, nargs="+", default=[4096, 8192, 16384])
    p.add_argument("--orders", nargs="+", default=["landed"])
    p.add_argument("--tunings", type=int, default=2, help="tunings per policy")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.0, metavar="P")
    p.add_argument("--out", type=Path, help="write tuning_spread.json and .md here")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("tuning_spread.py needs a CUDA GPU")
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "commit": git_commit(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "dropout": args.dropout}
    results = []
    for N in args.seqs:
        for order in args.orders:
            results.append(measure(N, order, args))
            if args.out:  # after each shape, so that a run cut by a time limit keeps what it measured
                args.out.mkdir(parents=True, exist_ok=True)
                (args.out / "tuning_spread.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
                (args.out / "tuning_spread.md").write_text(markdown(meta, results))


if __name__ == "__main__":
    main()
