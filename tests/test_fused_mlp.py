"""The fused CPU MLP (meshgnn.model.fused): same values and gradients as module-by-module, the fused ReLU-backward
kernel against torch, thread-count independence, and which inputs take the fused path."""
from __future__ import annotations

import copy

import pytest
import torch

from meshgnn import ops
from meshgnn.graph import Graph
from meshgnn.model import fused
from meshgnn.model.fused import MLP
from meshgnn.model.mgn import MeshGraphNet, mlp
from meshgnn.ops import _cpu

needs_onednn = pytest.mark.skipif(fused._LINEAR is None, reason="this torch has no oneDNN fused linear")


@pytest.fixture
def plain():
    """Run the enclosed code with the fused path off, restoring it afterwards."""
    def run(fn):
        MLP.fused = False
        try:
            return fn()
        finally:
            MLP.fused = True
    return run


def _forward_backward(module, x, after_first: bool):
    module = copy.deepcopy(module)
    x = x.detach().clone().requires_grad_()
    y = module.after_first(x) if after_first else module(x)
    weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)
    (y * weights).sum().backward()
    return y.detach(), x.grad, {n: p.grad for n, p in module.named_parameters()}, y.grad_fn


def _close(a, b, scale):
    return (a - b).abs().max().item() <= 2e-5 * scale


def _error(a, ref) -> float:
    """Largest deviation of ``a`` from the float64 ``ref``, relative to ``ref``'s largest entry."""
    return (a.double() - ref).abs().max().item() / max(ref.abs().max().item(), 1e-300)


def _as_accurate(a, a_plain, ref) -> bool:
    """The fused result is as close to float64 as the module-by-module one (within 2x, + 1e-5 of the largest
    entry, ~100 float32 ulps: a 1000-row bias sum in fixed blocks measured 5.5e-6 against torch's 1.5e-6): the
    two fp32 paths run different GEMM kernels (oneDNN vs the default) with other summation orders, and a
    LayerNorm's backward amplifies that to ~1e-4 of the largest entry on some CPUs (AMD EPYC: both paths 1.2e-4
    from float64 on the input gradient), so a tolerance between the two alone would test the CPU, not the code."""
    return _error(a, ref) <= 2.0 * _error(a_plain, ref) + 1e-5


@needs_onednn
@pytest.mark.parametrize("hidden_layers,layer_norm,after_first",
                         [(2, True, False), (2, True, True), (2, False, False), (1, True, True), (3, False, True),
                          (0, False, False)])
def test_fused_equals_module_by_module(plain, hidden_layers, layer_norm, after_first):
    torch.manual_seed(0)
    m = mlp(24, 32, 8, hidden_layers, layer_norm)
    width = 32 if after_first else 24
    x = torch.randn(1000, width) * 2
    y, gx, gp, fn = _forward_backward(m, x, after_first)
    y0, gx0, gp0, fn0 = plain(lambda: _forward_backward(m, x, after_first))
    y64, gx64, gp64, _ = _forward_backward(copy.deepcopy(m).double(), x.double(), after_first)   # plain path
    assert "_LinearChain" not in type(fn0).__name__
    if not layer_norm:   # the chain's own output: the fused path was taken
        assert "_LinearChain" in type(fn).__name__
    assert _as_accurate(y, y0, y64)
    assert _as_accurate(gx, gx0, gx64)
    assert gp.keys() == gp0.keys()
    for name in gp0:
        if gp0[name] is None:       # the first Linear with after_first: not used, no gradient either way
            assert gp[name] is None
            continue
        assert _as_accurate(gp[name], gp0[name], gp64[name]), name
    # negative control: a perturbed last Linear gives different gradients, so the comparison can fail
    m1 = copy.deepcopy(m)
    with torch.no_grad():
        last = [lin for lin in m1 if isinstance(lin, torch.nn.Linear)][-1].weight
        last.add_(0.05 * torch.randn_like(last))
    _, gx1, _, _ = _forward_backward(m1, x, after_first)
    assert not _close(gx1, gx0, gx0.abs().max().item())


@needs_onednn
def test_inputs_without_grad_and_inference(plain):
    torch.manual_seed(1)
    m = mlp(6, 16, 4, 2, layer_norm=False)
    x = torch.randn(300, 6)                          # features: no gradient wanted, none computed
    y = m(x)
    y.sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    with torch.no_grad():
        assert torch.allclose(m(x), plain(lambda: m(x)), atol=1e-5)


def test_fp64_and_autocast_take_the_plain_path():
    m = mlp(6, 16, 4, 2, layer_norm=False).double()
    y = m(torch.randn(50, 6, dtype=torch.float64, requires_grad=True))
    assert "_LinearChain" not in type(y.grad_fn).__name__
    m = mlp(6, 16, 4, 2, layer_norm=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(torch.randn(50, 6, requires_grad=True))
    assert y.dtype == torch.bfloat16 and "_LinearChain" not in type(y.grad_fn).__name__


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1000, 128), (257, 37), (3, 1)])
def test_relu_backward_kernel_matches_torch(dtype, shape):
    gen = torch.Generator().manual_seed(0)
    result = torch.randn(shape, generator=gen).relu().to(dtype)       # about half the entries are 0
    result.view(-1)[::7] = float("nan")                                 # NaN keeps its gradient, as in threshold_backward
    grad = torch.randn(shape, generator=gen).to(dtype)
    expected = torch.ops.aten.threshold_backward(grad, result, 0)
    g = grad.clone()
    colsum = ops.relu_backward_(g, result)
    assert torch.equal(g, expected)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    assert torch.allclose(colsum.double(), expected.double().sum(0), atol=tol * shape[0] ** 0.5, rtol=tol)
    g2 = grad.clone()
    assert ops.relu_backward_(g2, result, colsum=False) is None and torch.equal(g2, expected)


def test_relu_backward_is_thread_count_independent():
    if _cpu.library() is None:
        pytest.skip("C++ kernels unavailable")
    gen = torch.Generator().manual_seed(3)
    result = torch.randn(40000, 128, generator=gen)
    grad = torch.randn(40000, 128, generator=gen)
    threads = torch.get_num_threads()
    sums = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            sums.append(ops.relu_backward_(grad.clone(), result))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(sums[0], sums[1]) and torch.equal(sums[0], sums[2])


@needs_onednn
def test_mgn_training_step_fused_equals_plain(plain):
    """A whole MeshGraphNet (concat trick, bias on the receiver projection) fused vs module by module, fp32."""
    torch.manual_seed(0)
    n = 200
    senders = torch.randint(0, n, (1500,))
    receivers = torch.randint(0, n, (1500,))
    graph = Graph.from_edge_index(torch.stack([senders, receivers]), n)
    model = MeshGraphNet(5, 4, 3, latent=32, layers=3)
    xn, xe = torch.randn(n, 5), torch.randn(graph.num_edges, 4)

    def grads():
        m = copy.deepcopy(model)
        m(xn, graph, edge_features=xe).square().mean().backward()
        return {k: p.grad for k, p in m.named_parameters()}

    g, g0 = grads(), plain(grads)
    for k in g0:
        assert torch.allclose(g[k], g0[k], rtol=1e-4, atol=1e-6 * g0[k].abs().max().item()), k
