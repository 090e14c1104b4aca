"""meshgnn.ops and the model on a real CUDA device (Triton kernels compiled for the GPU, not interpreted).

Skipped where no GPU is present (CI has none); run on a lent GPU machine with
``python -m pytest -q tests/test_ops_cuda.py``. The CPU reference is the C++ CSR kernel, which walks every row's
edges in the same order with the same float32 accumulator as the Triton tiles, so the two agree *bitwise*.
"""
from __future__ import annotations

import pytest
import torch

from meshgnn import ops
from meshgnn.graph import Graph
from meshgnn.ops import _cpu, _library

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

CUDA = torch.device("cuda")


def random_graph(n: int, e: int, seed: int, isolated: int = 0) -> Graph:
    gen = torch.Generator().manual_seed(seed)
    if n == 0 or e == 0:
        return Graph.from_edge_index(torch.zeros(2, 0, dtype=torch.long), n)
    ei = torch.stack([torch.randint(0, n, (e,), generator=gen), torch.randint(0, max(n - isolated, 1), (e,),
                                                                             generator=gen)])
    return Graph.from_edge_index(ei, n)


def to_cuda(g: Graph) -> Graph:
    return g.to(CUDA)


CASES = [(50, 400, 16, 5), (31, 200, 1, 3), (40, 300, 200, 0), (1000, 14000, 128, 17), (10, 0, 8, 0),
         (1, 1, 3, 0), (3000, 3000 * 14, 130, 0)]


def test_triton_is_the_cuda_kernel():
    assert _library.kernels_for(torch.empty(1, device=CUDA)).__name__.endswith("_triton")
    assert ops.kernel_name("cuda") == "triton"


@pytest.mark.parametrize("n,e,f,isolated", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_kernels_bitwise_equal_cpu_kernels(n, e, f, isolated, dtype):
    if _cpu.library() is None:
        pytest.skip("C++ kernels unavailable")
    g = random_graph(n, e, seed=n + e + f, isolated=isolated)
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(e, f, generator=gen).to(dtype)
    a, b = (torch.randn(n, f, generator=gen).to(dtype) for _ in range(2))
    gc = to_cuda(g)
    vc, ac, bc = v.to(CUDA), a.to(CUDA), b.to(CUDA)
    pairs = [
        (_library.segment_sum(v, g.rowptr), _library.segment_sum(vc, gc.rowptr)),
        (_library.segment_sum_permuted(v, g.sender_perm, g.sender_rowptr),
         _library.segment_sum_permuted(vc, gc.sender_perm, gc.sender_rowptr)),
        (_library.segment_expand(a, g.rowptr, e), _library.segment_expand(ac, gc.rowptr, e)),
        (ops.gather_add(a, b, v, g), ops.gather_add(ac, bc, vc, gc)),
    ]
    for cpu, gpu in pairs:
        assert gpu.device.type == "cuda" and gpu.dtype == cpu.dtype and gpu.shape == cpu.shape
        assert torch.equal(gpu.cpu(), cpu)
    ref = torch.zeros(n, f, dtype=torch.float64).index_add_(0, g.receivers, v.double())
    tol = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 3e-2}[dtype]
    torch.testing.assert_close(pairs[0][1].cpu().double(), ref, rtol=tol, atol=tol * max(1.0, f ** 0.5))


def test_bitwise_deterministic_and_index_add_is_not_needed():
    g = to_cuda(random_graph(200_000, 3_000_000, seed=5))
    v = torch.randn(3_000_000, 128, device=CUDA)
    first = _library.segment_sum(v, g.rowptr)
    for _ in range(3):
        assert torch.equal(_library.segment_sum(v, g.rowptr), first)
    ref = torch.zeros(200_000, 128, device=CUDA, dtype=torch.float64).index_add_(0, g.receivers, v.double())
    torch.testing.assert_close(first.double(), ref, rtol=1e-5, atol=1e-4)


def test_result_independent_of_launch_tile():
    from meshgnn.ops import _triton

    g = to_cuda(random_graph(20_000, 280_000, seed=9, isolated=11))
    v = torch.randn(280_000, 96, device=CUDA)
    a = torch.randn(20_000, 96, device=CUDA)
    saved = dict(_triton.TILE)
    outs = []
    try:
        for tile in [(1, 128, 1), (2, 128, 2), (8, 128, 4), (16, 128, 8), (16, 32, 8), (8, 64, 4)]:
            _triton.set_tile(*tile)
            outs.append((_library.segment_sum(v, g.rowptr), ops.gather_add(a, a, v, g),
                         _library.segment_sum_permuted(v, g.sender_perm, g.sender_rowptr)))
    finally:
        _triton.set_tile(saved["rows"], saved["block_f"], saved["num_warps"])
    for other in outs[1:]:
        assert all(torch.equal(x, y) for x, y in zip(outs[0], other))


@pytest.mark.parametrize("backend", ["ours", "pyg", "index_add"])
def test_gradients_match_float64_reference(backend):
    g = random_graph(500, 6000, seed=2, isolated=7)
    gc = to_cuda(g)
    gen = torch.Generator().manual_seed(3)
    tensors = [torch.randn(500, 24, generator=gen), torch.randn(500, 24, generator=gen),
               torch.randn(6000, 24, generator=gen)]
    up = torch.randn(500, 24, generator=gen)

    def run(device, dtype, graph):
        leaves = [t.to(device, dtype).requires_grad_() for t in tensors]
        e = ops.gather_add(*leaves, graph)
        out = ops.segment_sum(torch.tanh(e), graph.rowptr)
        (out * up.to(device, dtype)).sum().backward()
        return [out] + [t.grad for t in leaves]

    ref = run("cpu", torch.float64, g)
    with ops.use_backend(backend):
        got = run(CUDA, torch.float32, gc)
    for r, x in zip(ref, got):
        torch.testing.assert_close(x.cpu().double(), r, rtol=1e-4, atol=1e-4)


def test_mgn_training_step_cuda_matches_cpu_and_compiles():
    from meshgnn.model.mgn import MeshGraphNet

    g = random_graph(2000, 26000, seed=4)
    gen = torch.Generator().manual_seed(0)
    x, e, y = torch.randn(2000, 8, generator=gen), torch.randn(26000, 4, generator=gen), torch.randn(2000, 3,
                                                                                                   generator=gen)

    def grads(device, graph, compile_=False):
        torch.manual_seed(0)
        model = MeshGraphNet(8, 4, 3, latent=64, layers=4, hidden_layers=2).to(device)
        def fwd(xx, ee):
            return model(xx, graph, ee)

        fn = torch.compile(fwd, fullgraph=True) if compile_ else fwd
        loss = ((fn(x.to(device), e.to(device)) - y.to(device)) ** 2).mean()
        loss.backward()
        return loss.detach().cpu(), torch.cat([p.grad.reshape(-1).cpu() for p in model.parameters()])

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    l_cpu, g_cpu = grads("cpu", g)
    l_gpu, g_gpu = grads(CUDA, to_cuda(g))
    torch.testing.assert_close(l_gpu, l_cpu, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g_gpu, g_cpu, rtol=1e-3, atol=1e-4)
    l_c, g_c = grads(CUDA, to_cuda(g), compile_=True)
    torch.testing.assert_close(l_c, l_gpu, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g_c, g_gpu, rtol=1e-3, atol=1e-4)


def test_train_on_cuda_matches_cpu(box_dataset, tmp_path):
    from meshgnn.checkpoint import load
    from meshgnn.train import TrainConfig, train

    def params(path):
        state = load(path)["trainer"]["simulator"]
        return torch.cat([v.reshape(-1).double().cpu() for k, v in sorted(state.items()) if k.startswith("model.")])

    common = dict(dataset=str(box_dataset), steps=4, layers=2, latent=16, hidden_layers=1, noise_std=[0.02],
                  progress=False, integrator="heun", dtype="float64")
    cpu = train(TrainConfig(out=str(tmp_path / "cpu"), device="cpu", **common))
    gpu = train(TrainConfig(out=str(tmp_path / "gpu"), device="cuda", **common))
    torch.testing.assert_close(params(gpu["checkpoint"]), params(cpu["checkpoint"]), rtol=1e-9, atol=1e-11)


def test_layer_norm_narrow_path_on_cuda():
    from meshgnn.model.mgn import LayerNorm

    for F in (16, 32, 64, 128):
        ln = LayerNorm(F).cuda()
        with torch.no_grad():
            ln.weight.normal_()
            ln.bias.normal_()
        x = torch.randn(10_000, F, device=CUDA, requires_grad=True)
        g = torch.randn(10_000, F, device=CUDA)
        ref = torch.nn.functional.layer_norm(x, (F,), ln.weight, ln.bias, ln.eps)
        got = ln(x)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        for a, b in zip(torch.autograd.grad(got, [x, ln.weight, ln.bias], g),
                        torch.autograd.grad(ref, [x, ln.weight, ln.bias], g)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            assert ln(x.bfloat16()).dtype == torch.float32
        with torch.no_grad():   # the decomposed path (inference only)
            torch.testing.assert_close(ln(x), ref, rtol=1e-5, atol=1e-5)


def test_low_memory_processor_on_cuda():
    """Segment checkpointing + compact storage (meshgnn/model/lowmem.py) on the GPU: fp64 segments give the plain
    model's gradients (to 1e-12), bf16 storage and the bf16-autocast path stay close (on this random graph bf16
    storage measures 1.1e-2 on the CPU, autocast 2.7e-2), and the comparison can fail (a perturbed weight is caught)."""
    from meshgnn.model.mgn import MeshGraphNet

    g = to_cuda(random_graph(3000, 40000, seed=5))
    gen = torch.Generator().manual_seed(0)
    x, e, y = (torch.randn(3000, 6, generator=gen), torch.randn(40000, 4, generator=gen),
               torch.randn(3000, 2, generator=gen))

    def grads(dtype, autocast=False, perturb=False, **opts):
        torch.manual_seed(0)
        model = MeshGraphNet(6, 4, 2, latent=32, layers=6, **opts).to(CUDA, dtype)
        if perturb:
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] += 1e-3
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            out = model(x.to(CUDA, dtype), g, e.to(CUDA, dtype))
        loss = ((out.to(dtype) - y.to(CUDA, dtype)) ** 2).mean()
        loss.backward()
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double()

    def rel(a, b):
        return float((a - b).norm() / b.norm())

    ref64 = grads(torch.float64)
    assert rel(grads(torch.float64, checkpoint_segments=2), ref64) < 1e-12
    assert rel(grads(torch.float64, perturb=True, checkpoint_segments=2), ref64) > 1e-8      # negative control
    ref32 = grads(torch.float32)
    assert rel(grads(torch.float32, checkpoint_segments=3, checkpoint_storage="bfloat16"), ref32) < 3e-2
    assert rel(grads(torch.float32, autocast=True, checkpoint_segments=3, checkpoint_storage="bfloat16"),
               ref32) < 1e-1
