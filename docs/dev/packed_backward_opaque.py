"""The packed QKV gradient under torch.compile, through an opaque custom op: an experiment for the next GPU call.

Why: the library's packed backward (kernels/attention.py, attention_bwd_qkvpacked) is a triton_op, which Inductor
traces into; its dK/dV launch writes through two views of the fresh packed gradient, and Inductor's
functionalization clones that gradient once per view and merges dQ and the clones into a fourth buffer (three
full-size copies, where the views' path has one fused stack). So compiled steps take the views' path
(docs/dev/kernel-notes.md, twelfth session). Here the same op runs inside an opaque torch.library.custom_op:
Inductor calls it as it is (as it calls the Gluon forward), sees only its output, and has nothing to clone; the
library's autotuners pick the configs at run time, as in eager calls.

    python docs/dev/packed_backward_opaque.py --cases 4096x4 --modes compiled --rounds 1 --no-bare \\
        --attn flash flash_opaque sdpa --warmup 5 --steps 30 --out DIR    # from a checkout's root, on a CUDA GPU

`flash_opaque` is a third backend beside scripts/bench_train_step.py's (its options, runs and tables; each
compiled backend takes ~2 minutes on a fresh H200, Inductor's caches being off). Before the runs, one layer's
gradient is checked compiled against eager, and the compiled backward's tuning is checked to happen once.
"""

import os
import sys
from contextlib import contextmanager
from pathlib import Path

os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] = "0"  # a compiled flash_opaque must not find flash's graph
os.environ["TORCHINDUCTOR_AUTOGRAD_CACHE"] = "0"
sys.path.insert(0, str(Path.cwd()))
import torch  # noqa: E402

import kernels.attention as library  # noqa: E402
import reporting.train_step_bench as train_step_bench  # noqa: E402
from scripts import bench_train_step  # noqa: E402


@torch.library.custom_op("flashgpt_dev::attention_bwd_qkvpacked_opaque", mutates_args=())
def attention_bwd_qkvpacked_opaque(do: torch.Tensor, qkv: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
                                   dropout_keys: torch.Tensor | None, mask: list[torch.Tensor], block_size: int,
                                   causal: bool, dropout_p: float, scale: float, deterministic: bool) -> torch.Tensor:
    """The library's triton_op, called inside: a triton_op run eagerly launches its kernels directly, where a
    custom_op's body that launched them itself would go through wrap_triton's graph path, which wraps our pruned
    configs in a new autotuner on every call and so re-tunes every launch (measured: 19.6 s a GPT-2 step; kernel
    notes, thirteenth session)."""
    return library.attention_bwd_qkvpacked(do, qkv, o, lse, dropout_keys, mask, block_size, causal, dropout_p,
                                           scale, deterministic)


@attention_bwd_qkvpacked_opaque.register_fake
def _(do, qkv, o, lse, dropout_keys, mask, block_size, causal, dropout_p, scale, deterministic):
    return qkv.new_empty(qkv.shape)


class PackedOpaque(library._AttentionQKVPacked):
    @staticmethod
    def backward(ctx, do):
        qkv, o, lse, keys, *mask = ctx.saved_tensors
        dqkv = attention_bwd_qkvpacked_opaque(do, qkv, o, lse, keys, mask, *ctx.options)
        return dqkv, None, None, None, None, None, None, *([None] * len(mask))


def flash_attention_opaque(qkv, *, causal=False, dropout_p=0.0, scale=None, deterministic=False):
    """kernels.flash_attention_qkvpacked with the opaque backward, in eager and compiled calls alike."""
    library._check_packed(qkv)
    q, k, v = library._unpack(qkv)
    library._check_inputs(q, k, v, scale)
    p = library.kernel_dropout_p(float(dropout_p))
    scale = 1.0 / q.shape[-1] ** 0.5 if scale is None else float(scale)
    B, H, N, _ = q.shape
    keys = library.draw_dropout_keys(B, H, N, q.device) if p > 0 else None
    return PackedOpaque.apply(qkv, keys, 0, causal, p, scale, deterministic)


@contextmanager
def opaque_backward():
    """While on, the flash backend's attend_qkv (the model's call) runs flash_attention_opaque."""
    from model.attention import get_backend

    backend = get_backend("flash")
    original = backend.attend_qkv
    object.__setattr__(backend, "attend_qkv", flash_attention_opaque)  # a frozen dataclass, shared by the models
    try:
        yield
    finally:
        object.__setattr__(backend, "attend_qkv", original)


def check_one_layer(B=4, N=1024, H=12, D=64) -> None:
    """Compiled against eager, the layer's projection gradient (bf16: relative error below 1e-2); and the compiled
    backward's launches tune once, in the library's autotuners (a second compiled call tunes nothing)."""
    torch.manual_seed(0)
    x = torch.randn(B, N, 3, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    do = torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16)
    attend = lambda qkv: flash_attention_opaque(qkv, causal=True)  # noqa: E731
    compiled_attend = torch.compile(attend, fullgraph=True)
    (compiled,) = torch.autograd.grad(compiled_attend(x), x, do)
    tuned = {kernel: dict(kernel.cache) for kernel in (library._bwd_dq, library._bwd_kv)}
    (eager,) = torch.autograd.grad(attend(x), x, do)
    torch.autograd.grad(compiled_attend(x), x, do)
    err = ((compiled.float() - eager.float()).norm() / eager.float().norm()).item()
    print(f"one layer, compiled against eager: relative error {err:.2e}", flush=True)
    assert err < 1e-2, err
    for kernel, cache in tuned.items():  # tuned by the compiled call, and reused since
        assert cache and kernel.cache == cache, f"{kernel.base_fn.__name__}: tuned {cache}, now {kernel.cache}"


measure = train_step_bench.measure


def measure_with_opaque(seq, batch, attn, *args, **kwargs):
    if attn != "flash_opaque":
        return measure(seq, batch, attn, *args, **kwargs)
    with opaque_backward():
        return {**measure(seq, batch, "flash", *args, **kwargs), "attn": "flash_opaque"}


if __name__ == "__main__":
    check_one_layer()
    train_step_bench.measure = measure_with_opaque
    bench_train_step.main()
