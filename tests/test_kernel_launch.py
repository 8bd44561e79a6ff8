"""The cached eager launch path: same binary reused per specialisation, arguments passed in signature order."""

import pytest
import torch

from kernels.flash_attention import _CachedLaunch, _spec


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


def test_spec_follows_triton_specialisation():
    assert _spec(16) == _spec(32) != _spec(8)
    assert _spec(1) != _spec(17)
    assert _spec(2**40) != _spec(16)
    assert _spec(0.5) == _spec(0.25)
    assert _spec(True) != _spec(False)


def test_second_launch_reuses_the_binary_with_arguments_in_order():
    kernel = FakeKernel()
    launch = _CachedLaunch(kernel)
    x = torch.zeros(64)
    grid = lambda meta: (meta["n"] // meta["BLOCK"], 2)
    launch[grid](x, 64, 0.5, BLOCK=16, num_warps=4)
    launch[grid](x, 128, 0.25, BLOCK=16, num_warps=4)  # same specialisation: cached binary
    launch[grid](x, 65, 0.25, BLOCK=16, num_warps=4)  # 65 is not a multiple of 16: Triton again
    kinds = [entry[0] for entry in kernel.log]
    assert kinds == ["triton", "direct", "triton"]
    assert kernel.log[1][1] == (8, 2, 1)
    assert kernel.log[1][2] == (x, 128, 0.25, 16)


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
