"""MeshGraphNet building blocks: the concat trick, activation checkpointing and bf16 change nothing they shouldn't."""
from __future__ import annotations

import copy

import numpy as np
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
