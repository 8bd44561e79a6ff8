"""The eager launch cache: the first call of a signature goes through Triton and is recorded; later calls replay
the same binaries with the new call's tensors swapped in, arguments in signature order."""

import importlib

import pytest
import torch

fa = importlib.import_module("kernels.flash_attention")  # the module (kernels re-exports a function of that name)


class FakeCompiled:
    def __init__(self, log):
        self.log = log

    def __getitem__(self, grid):
        return lambda *args: self.log.append(("replay", grid, args))


class FakeKernel:
    arg_names = ["X", "Y", "n", "scale", "BLOCK"]

    def __init__(self):
        self.log = []

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.log.append(("triton", grid, args, kwargs))
            return FakeCompiled(self.log)
        return run


@pytest.fixture
def kernel(monkeypatch):
    monkeypatch.setattr(fa, "_REPLAYS", {})
    monkeypatch.setattr(fa, "INTERPRET", False)  # the cache is for GPU launches; here its logic runs on fakes
    monkeypatch.setattr(fa, "_LAUNCH_CACHE", True)
    return FakeKernel()


def launcher(kernel, x, y, n=64):
    grid = lambda meta: (meta["n"] // meta["BLOCK"], 2)
    return lambda wrap: wrap(kernel)[grid](x, y, n, 0.5, BLOCK=16)


def call(launch, tensors, signed=(), meta=("k",)):
    fa._replayed(launch, tensors, signed, meta, masks=[])


def test_replay_swaps_in_the_new_tensors_in_signature_order(kernel):
    x, y = torch.zeros(64), torch.ones(64)
    call(launcher(kernel, x, y), (x, y))
    x2, y2 = torch.zeros(64), torch.ones(64)
    call(launcher(kernel, x2, y2), (x2, y2))
    call(launcher(kernel, y2, x2), (y2, x2))  # roles follow the call, not the objects
    assert [entry[0] for entry in kernel.log] == ["triton", "replay", "replay"]
    assert kernel.log[1][1] == (4, 2, 1)  # the grid resolved once, padded to 3-D
    assert kernel.log[1][2] == (x2, y2, 64, 0.5, 16)
    assert kernel.log[2][2] == (y2, x2, 64, 0.5, 16)
    (replays, _), = fa._REPLAYS.values()
    assert all(value is None for value in replays[0].values[:2])  # the plan holds no tensor


def test_another_signature_is_recorded_apart(kernel):
    x, y = torch.zeros(64), torch.ones(64)
    call(launcher(kernel, x, y), (x, y), meta=("n=64",))
    call(launcher(kernel, x, y, n=128), (x, y), meta=("n=128",))
    call(launcher(kernel, x, y, n=128), (x, y), meta=("n=128",))
    assert [entry[0] for entry in kernel.log] == ["triton", "triton", "replay"]
    assert kernel.log[2][1] == (8, 2, 1)


def test_aliased_roles_replay_under_the_same_aliasing(kernel):
    x, y = torch.zeros(64), torch.ones(64)
    for a, b in ((x, x), (x, y), (y, y), (y, x)):  # the signature records which arguments are one tensor
        call(launcher(kernel, a, b), (a, b), signed=(a, b))
    assert [entry[0] for entry in kernel.log] == ["triton", "triton", "replay", "replay"]
    assert kernel.log[2][2] == (y, y, 64, 0.5, 16)
    assert kernel.log[3][2] == (y, x, 64, 0.5, 16)


def test_repeated_plan_tensors_replay(kernel):
    """A block-mask list may hold one tensor twice (two passes with the same tiles share it)."""
    x, y, mask = torch.zeros(64), torch.ones(64), torch.ones(4)
    call(launcher(kernel, x, mask), (x, y, mask, mask))
    call(launcher(kernel, y, mask), (y, x, mask, mask))
    assert [entry[0] for entry in kernel.log] == ["triton", "replay"]
    assert kernel.log[1][2] == (y, mask, 64, 0.5, 16)


def test_a_tensor_outside_the_roles_keeps_tritons_launch(kernel):
    x, y, stray = torch.zeros(64), torch.ones(64), torch.ones(64)
    call(launcher(kernel, x, stray), (x, y))
    call(launcher(kernel, x, stray), (x, y))
    assert [entry[0] for entry in kernel.log] == ["triton", "triton"]


def test_cache_off_always_takes_tritons_launch(kernel, monkeypatch):
    monkeypatch.setattr(fa, "_LAUNCH_CACHE", False)
    x, y = torch.zeros(64), torch.ones(64)
    call(launcher(kernel, x, y), (x, y))
    call(launcher(kernel, x, y), (x, y))
    assert [entry[0] for entry in kernel.log] == ["triton", "triton"] and not fa._REPLAYS


def test_signature_tells_apart_what_triton_specialises_on():
    a = torch.zeros(2, 3, 8, 16, dtype=torch.float16)
    assert fa._signature(a) == fa._signature(torch.ones(2, 3, 8, 16, dtype=torch.float16))
    assert fa._signature(a) != fa._signature(a.float())  # dtype
    assert fa._signature(a) != fa._signature(a.transpose(1, 2).contiguous().transpose(1, 2))  # strides
    assert fa._signature(a) != fa._signature(torch.zeros(2, 3, 9, 16, dtype=torch.float16))  # shape
    assert fa._signature(a, a) != fa._signature(a, a.clone())  # one tensor in two roles
    flat = torch.zeros(2 * 3 * 8 * 16 + 1, dtype=torch.float16)
    assert fa._signature(flat[:-1].view(2, 3, 8, 16)) != fa._signature(flat[1:].view(2, 3, 8, 16))  # alignment


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
@pytest.mark.parametrize("sparse", [False, True])
def test_replayed_launch_equals_tritons_own_launch(monkeypatch, causal, dropout_p, sparse):
    from kernels import block_sparse_attention, flash_attention
    from kernels.sparsity_patterns import build_layout

    layout = build_layout("local", 777, 64, window=128).cuda()
    attend = (lambda q, k, v: block_sparse_attention(q, k, v, layout, causal=causal, dropout_p=dropout_p,
                                                     block_size=64)) if sparse else \
        (lambda q, k, v: flash_attention(q, k, v, causal=causal, dropout_p=dropout_p))

    def run(cache: bool):
        monkeypatch.setattr(fa, "_LAUNCH_CACHE", cache)
        torch.manual_seed(1)
        outs = []
        for i in range(4):  # the first call records, later ones replay; the last with q, k, v one tensor
            q, k, v = ((x.clone().requires_grad_() for x in qkv) if i < 3 else [qkv[0].clone().requires_grad_()] * 3)
            o = attend(q, k, v)
            outs.append((o, *torch.autograd.grad(o, (q, k, v), do)))
        return outs

    torch.manual_seed(0)
    qkv = [torch.randn(3, 5, 777, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
    do = torch.randn_like(qkv[0])
    for got_call, want_call in zip(run(True), run(False), strict=True):
        for got, want in zip(got_call, want_call, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)  # the same binaries: bitwise equal


def test_dense_calls_share_one_key_whatever_empty_list_they_pass(kernel):
    """The attention entry points key dense calls alike, though each passes its own fresh empty mask list."""
    q = torch.randn(1, 2, 8, 16)
    empties = [[] for _ in range(4)]  # all alive, so no two share an id
    for i in range(2):
        fa._eager_fwd(q, q, q, None, empties[2 * i], fa._NO_TILES, True, 0.0, 0.25)
        fa._eager_bwd(q, q, q, q, q, torch.zeros(1, 2, 8), None, empties[2 * i + 1], fa._NO_TILES, True, 0.0, 0.25)
    assert len(fa._REPLAYS) == 2  # one forward key, one backward key
    assert all(key[-1] is None for key in fa._REPLAYS)
