"""The cached eager launch path: same binary reused per specialisation, arguments passed in signature order."""

import pytest
import torch

from kernels.flash_attention import _CachedLaunch, _launch_key


class FakeCompiled:
    def __init__(self, log):
        self.log = log

    def __getitem__(self, grid):
        return lambda *args: self.log.append(("direct", grid, args))


class FakeKernel:
    arg_names = ["X", "n", "scale", "BLOCK"]

    def __init__(self):
        self.log = []

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.log.append(("triton", grid, args, kwargs))
            return FakeCompiled(self.log)
        return run


def test_key_tells_apart_what_triton_specialises_on():
    aligned = torch.zeros(64, dtype=torch.float16)
    assert _launch_key([aligned, 16]) == _launch_key([torch.ones(8, dtype=torch.float16), 16])
    assert _launch_key([aligned, 16]) != _launch_key([aligned.float(), 16])  # dtype
    assert _launch_key([aligned, 16]) != _launch_key([aligned[1:], 16])  # 16-byte alignment
    assert _launch_key([aligned, 16]) != _launch_key([aligned, 17])  # ints by value
    assert _launch_key([aligned, True]) != _launch_key([aligned, False])  # constexpr values
    assert _launch_key([aligned, None]) != _launch_key([aligned, 0])


def test_second_launch_reuses_the_binary_with_arguments_in_order():
    kernel = FakeKernel()
    launch = _CachedLaunch(kernel)
    x = torch.zeros(64)
    grid = lambda meta: (meta["n"] // meta["BLOCK"], 2)
    launch[grid](x, 64, 0.5, BLOCK=16, num_warps=4)
    launch[grid](x, 64, 0.5, BLOCK=16, num_warps=4)  # same key: cached binary
    launch[grid](x.clone(), 64, 0.5, BLOCK=16, num_warps=4)  # another tensor of the same dtype and alignment
    launch[grid](x, 65, 0.5, BLOCK=16, num_warps=4)  # another value: Triton again
    kinds = [entry[0] for entry in kernel.log]
    assert kinds == ["triton", "direct", "direct", "triton"]
    assert kernel.log[1][1] == (4, 2, 1)
    assert kernel.log[1][2] == (x, 64, 0.5, 16)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("causal", [True, False])
def test_cached_launch_equals_tritons_own_launch(monkeypatch, causal):
    from kernels import flash_attention

    def run(cache: str):
        monkeypatch.setenv("FLASHGPT_LAUNCH_CACHE", cache)
        outs = []
        for _ in range(3):  # the first call compiles, the later ones reuse the binary
            q, k, v = (x.clone().requires_grad_() for x in qkv)
            o = flash_attention(q, k, v, causal=causal)
            outs.append((o, *torch.autograd.grad(o, (q, k, v), do)))
        return outs

    torch.manual_seed(0)
    qkv = [torch.randn(3, 5, 777, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
    do = torch.randn_like(qkv[0])
    reference = run("0")[0]
    for outs in run("1"):
        for got, want in zip(outs, reference, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)  # the same binary: bitwise equal
