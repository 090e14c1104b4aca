"""MeshGraphNet building blocks: the concat trick, activation checkpointing and bf16 change nothing they shouldn't."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from meshgnn.graph import Graph, edges_from_cells
from meshgnn.meshes import box_tets
from meshgnn.model import MeshGraphNet


def small_graph(n=5):
    pts, tets = box_tets(n)
    ei = edges_from_cells({"tetra": tets}, len(pts))
    return pts, Graph.from_edge_index(ei, len(pts))


def make(concat=True, ckpt=False, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return MeshGraphNet(6, 4, 2, latent=16, layers=3, hidden_layers=2, concat_trick=concat,
                        checkpoint_layers=ckpt).to(dtype)


def run(model, graph, x, e):
    out = model(x, graph, edge_features=e)
    loss = (out ** 2).sum()
    loss.backward()
    return out.detach(), torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def inputs(graph, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(graph.num_nodes, 6, generator=g, dtype=dtype),
            torch.randn(graph.num_edges, 4, generator=g, dtype=dtype))


def test_concat_trick_equals_concatenation():
    _, graph = small_graph()
    x, e = inputs(graph)
    a = make(concat=True)
    b = make(concat=False)
    b.load_state_dict(a.state_dict())
    oa, ga = run(a, graph, x, e)
    ob, gb = run(b, graph, x, e)
    torch.testing.assert_close(oa, ob, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-12)


def test_activation_checkpointing_same_gradients():
    _, graph = small_graph()
    x, e = inputs(graph)
    a = make(ckpt=False)
    b = make(ckpt=True)
    b.load_state_dict(a.state_dict())
    oa, ga = run(a, graph, x, e)
    ob, gb = run(b, graph, x, e)
    torch.testing.assert_close(oa, ob, rtol=0, atol=0)
    torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-14)


def test_bf16_autocast_close_to_fp32():
    _, graph = small_graph()
    x, e = inputs(graph, torch.float32)
    m = make(dtype=torch.float32)
    ref = m(x, graph, edge_features=e)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = m(x, graph, edge_features=e)
    assert m.node_encoder[0].weight.dtype == torch.float32     # master weights stay fp32
    err = float((low.float() - ref).detach().norm() / ref.detach().norm())
    assert err < 5e-2, err


def test_receptive_field_is_L_hops():
    """Changing one node's input changes outputs exactly within L hops (the halo-depth rule's premise)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import shortest_path

    _, graph = small_graph(6)
    x, e = inputs(graph)
    m = make()
    with torch.no_grad():
        base = m(x, graph, edge_features=e)
        x2 = x.clone()
        x2[0] += 1.0
        diff = (m(x2, graph, edge_features=e) - base).abs().sum(1).numpy()
    s, r = graph.senders.numpy(), graph.receivers.numpy()
    A = coo_matrix((np.ones(len(s)), (s, r)), shape=(graph.num_nodes,) * 2).tocsr()
    hops = shortest_path(A, unweighted=True, indices=0)
    L = m.num_layers
    assert np.all(diff[hops > L] == 0)
    assert np.all(diff[hops <= L] > 0)


def test_narrow_layer_norm_equals_torch_layer_norm():
    """The CUDA path of meshgnn's LayerNorm (var_mean + affine) is nn.LayerNorm: values, gradients, dtypes (run
    here on CPU tensors; on a GPU, tests/test_ops_cuda.py checks the module takes it)."""
    from meshgnn.model.mgn import LayerNorm, _narrow_layer_norm

    gen = torch.Generator().manual_seed(0)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        ln = LayerNorm(32).to(dtype)
        with torch.no_grad():
            ln.weight.normal_(generator=gen)
            ln.bias.normal_(generator=gen)
        x = (3 + 2 * torch.randn(500, 32, generator=gen, dtype=dtype)).requires_grad_()
        g = torch.randn(500, 32, generator=gen, dtype=dtype)
        ref = torch.nn.functional.layer_norm(x, (32,), ln.weight, ln.bias, ln.eps)
        got = _narrow_layer_norm(x, ln.weight, ln.bias, ln.eps)
        assert got.dtype == ref.dtype == dtype
        torch.testing.assert_close(got, ref, rtol=tol, atol=tol)
        for a, b in zip(torch.autograd.grad(got, [x, ln.weight, ln.bias], g),
                        torch.autograd.grad(ref, [x, ln.weight, ln.bias], g)):
            torch.testing.assert_close(a, b, rtol=tol * 10, atol=tol * 10)
    # under autocast the result is float32, as nn.LayerNorm's
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = _narrow_layer_norm(torch.randn(4, 16).bfloat16(), torch.ones(16), torch.zeros(16), 1e-5)
    assert y.dtype == torch.float32
    # same state dict as nn.LayerNorm (checkpoints keep loading)
    assert set(LayerNorm(8).state_dict()) == set(torch.nn.LayerNorm(8).state_dict())


@pytest.mark.parametrize("aggregate", ["update", "state"])
def test_aggregation_sums_what_it_says(aggregate):
    """One block by hand: u = edge MLP([x_s, x_r, e]); nodes sum u ("update", DeepMind) or e + u ("state",
    PhysicsNeMo) over their incoming edges; both return e + u as the new edge latents."""
    from meshgnn.model.mgn import GraphNetBlock

    _, graph = small_graph()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(graph.num_nodes, 16, generator=g, dtype=torch.float64)
    e = torch.randn(graph.num_edges, 16, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    block = GraphNetBlock(16, 2, concat_trick=True, aggregate=aggregate).double()
    with torch.no_grad():
        u = block.edge_mlp(torch.cat([x[graph.senders], x[graph.receivers], e], dim=1))
        summed = u if aggregate == "update" else e + u
        agg = torch.zeros_like(x).index_add_(0, graph.receivers, summed)
        want_x = x + block.node_mlp(torch.cat([x, agg], dim=1))
        got_x, got_e = block(x, e, graph)
    torch.testing.assert_close(got_e, e + u, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_x, want_x, rtol=1e-12, atol=1e-12)


def test_checkpoints_without_the_aggregate_key_mean_update():
    from meshgnn.simulator import FieldLayout, Simulator

    layout = FieldLayout(state_fields=["a"], state_components=[1], static_fields=[], static_components=[],
                         node_type_names=["interior", "wall"])
    config = Simulator(layout, latent=8, layers=2, aggregate="state").config()
    assert config["aggregate"] == "state"
    assert {b.aggregate for b in Simulator.from_config(config).model.processor} == {"state"}
    old = {k: v for k, v in config.items() if k != "aggregate"}
    assert {b.aggregate for b in Simulator.from_config(old).model.processor} == {"update"}
    with pytest.raises(ValueError, match="aggregate"):
        Simulator(layout, latent=8, layers=2, aggregate="mean")
