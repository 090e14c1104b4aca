"""The PyG MessagePassing baseline of benchmarks/bench_train_step.py computes the same function as meshgnn's
MeshGraphNet given the same weights (outputs and parameter gradients), so the step-time comparison is honest."""
import os
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("torch_geometric", reason="torch_geometric not installed")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))

from pyg_mgn import PygMeshGraphNet  # noqa: E402

from meshgnn.graph import Graph, edges_from_cells  # noqa: E402
from meshgnn.meshes import box_tets  # noqa: E402
from meshgnn.model.mgn import MeshGraphNet  # noqa: E402

NODE_IN, EDGE_IN, NODE_OUT = 5, 4, 3


def _problem(n=4, seed=0):
    points, tets = box_tets(n)
    graph = Graph.from_edge_index(edges_from_cells({"tetra": tets}, len(points)), len(points))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(graph.num_nodes, NODE_IN, generator=g, dtype=torch.float64)
    e = torch.randn(graph.num_edges, EDGE_IN, generator=g, dtype=torch.float64)
    target = torch.randn(graph.num_nodes, NODE_OUT, generator=g, dtype=torch.float64)
    return graph, x, e, target


def _models(concat_trick):
    torch.manual_seed(1)
    ours = MeshGraphNet(NODE_IN, EDGE_IN, NODE_OUT, latent=16, layers=3, concat_trick=concat_trick).double()
    pyg = PygMeshGraphNet(NODE_IN, EDGE_IN, NODE_OUT, latent=16, layers=3).double()
    pyg.load_state_dict(ours.state_dict())  # strict: same parameter names and shapes
    return ours, pyg


def _loss_and_grads(model, call, target):
    model.zero_grad()
    out = call(model)
    loss = torch.nn.functional.mse_loss(out, target)
    loss.backward()
    return out.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("concat_trick", [True, False])
def test_pyg_baseline_matches_ours(concat_trick):
    graph, x, e, target = _problem()
    ours, pyg = _models(concat_trick)
    out_o, grads_o = _loss_and_grads(ours, lambda m: m(x, graph, edge_features=e), target)
    out_p, grads_p = _loss_and_grads(pyg, lambda m: m(x, graph.edge_index, e), target)
    assert out_o.abs().max() > 1e-3  # a non-trivial output
    torch.testing.assert_close(out_p, out_o, rtol=1e-10, atol=1e-10)
    assert grads_o.keys() == grads_p.keys()
    for name in grads_o:
        torch.testing.assert_close(grads_p[name], grads_o[name], rtol=1e-9, atol=1e-10, msg=name)


def test_pyg_baseline_sees_edge_direction():
    """Negative control: swapping senders and receivers of a non-symmetric edge set changes the output, so the
    comparison above would catch a baseline that mixed up x_j / x_i."""
    graph, x, e, _ = _problem()
    _, pyg = _models(True)
    keep = torch.from_numpy(np.random.default_rng(0).random(graph.num_edges) < 0.5)  # break the symmetry
    ei = graph.edge_index[:, keep]
    with torch.no_grad():
        out = pyg(x, ei, e[keep])
        flipped = pyg(x, ei.flip(0), e[keep])
    assert (out - flipped).abs().max() > 1e-3
