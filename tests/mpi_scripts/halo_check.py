"""Star-forest checks against a single-process reference on a partitioned tet grid.

Run under ``mpirun -n 2`` (4 parts on 2 ranks: local copies and remote traffic) or call :func:`check_all`
in-process with a size-1 ``Dist``. Every rank builds the same graph and partition, so the whole-graph
reference is computed everywhere. Prints ``OK rank R ...`` when all checks pass.
"""
from __future__ import annotations

import numpy as np
import torch

from meshgnn.decomposition import build_parts, partition
from meshgnn.distributed import abort_on_exception, init_distributed
from meshgnn.graph import edges_from_cells
from meshgnn.halo import StarForest, block_assignment
from meshgnn.meshes import box_tets

F = 3


def mesh_graph(side=7, nparts=4):
    points, tets = box_tets(side)
    n = points.shape[0]
    ei = edges_from_cells({"tetra": tets}, n)
    owner = partition(ei, n, nparts, method="metis", seed=0)
    return ei, n, owner


def part_values(part, width=F, seed=0):
    """Deterministic random rows for a part (any rank can regenerate any part's values)."""
    g = torch.Generator().manual_seed(1000 * seed + part.part_id)
    return torch.randn(part.num_nodes, width, dtype=torch.float64, generator=g)


def aggregate(x, senders, receivers):
    """(A x)_v = Σ_{s->v} x_s."""
    return torch.zeros_like(x).index_add_(0, receivers, x.index_select(0, senders))


def rounds(x, senders, receivers, w, num_rounds, exchange=None):
    """num_rounds of x <- x + tanh(A x) W, with an optional halo exchange before each round."""
    for _ in range(num_rounds):
        if exchange is not None:
            x = exchange(x)
        x = x + torch.tanh(aggregate(x, senders, receivers)) @ w
    return x


def check_bcast_reduce(sf, parts, local, xg, n, dist):
    """bcast copies roots exactly into every leaf; reduce sums leaves into roots (reference: all parts)."""
    xs = []
    for p in local:  # core rows hold the global values, halo rows garbage
        x = part_values(p, seed=1)
        x[: p.n_core] = xg[torch.as_tensor(p.core)]
        xs.append(x)
    originals = [x.clone() for x in xs]
    before = sf.bytes_exchanged
    ys = sf.bcast(xs)
    for p, y, x, x0 in zip(local, ys, xs, originals):
        assert torch.equal(y, xg[torch.as_tensor(p.nodes)]), f"bcast wrong on part {p.part_id}"
        assert torch.equal(x, x0), "bcast modified its input"
    assert sf.bytes_exchanged - before == int(sf.send_rows.numel()) * F * 8
    flat = sf.cat(xs).clone()
    sf.bcast_flat_(flat)  # in place, no autograd
    assert all(torch.equal(a, b) for a, b in zip(sf.split(flat), ys)), "in-place bcast differs"

    # reduce: reference = for each node, Σ over every copy in every part (of all ranks) at its root row
    total = torch.zeros(n, F, dtype=torch.float64)
    for p in parts:
        total.index_add_(0, torch.as_tensor(p.nodes), part_values(p, seed=2))
    zs = sf.reduce([part_values(p, seed=2) for p in local])
    for p, z in zip(local, zs):
        assert torch.allclose(z[: p.n_core], total[torch.as_tensor(p.core)], rtol=1e-13, atol=1e-13)
        assert not z[p.n_core:].any(), "reduce must zero the leaves"


def check_depth(parts2, part_to_rank, local_ids, xg, dist):
    """depth=1 on 2-hop parts refreshes exactly the hop-1 rows."""
    sf = StarForest.from_parts(parts2, part_to_rank, dist=dist, depth=1)
    local = [parts2[i] for i in local_ids]
    xs = [torch.full((p.num_nodes, F), -7.0, dtype=torch.float64) for p in local]
    for p, x in zip(local, xs):
        x[: p.n_core] = xg[torch.as_tensor(p.core)]
    for p, y in zip(local, sf.bcast(xs)):
        hop = torch.as_tensor(p.hop)
        want = xg[torch.as_tensor(p.nodes)]
        assert torch.equal(y[hop <= 1], want[hop <= 1])
        assert (y[hop == 2] == -7.0).all() and (hop == 2).any()


def check_per_layer(sf, local, ei, xg, w, num_rounds=3):
    """L rounds with a 1-hop halo + bcast before each round equal the whole graph on core rows;
    without the bcast they differ (negative control). Returns the core-row outputs (for the gradient check)."""
    s, r = torch.as_tensor(ei[0]), torch.as_tensor(ei[1])
    whole = rounds(xg, s, r, w, num_rounds)
    flat_x = sf.cat([xg[torch.as_tensor(p.nodes)] for p in local])
    flat_s = torch.cat([torch.as_tensor(p.edge_index[0]) + int(o) for p, o in zip(local, sf.offsets)])
    flat_r = torch.cat([torch.as_tensor(p.edge_index[1]) + int(o) for p, o in zip(local, sf.offsets)])
    with_x = sf.split(rounds(flat_x, flat_s, flat_r, w, num_rounds, exchange=sf.bcast_flat))
    stale = sf.split(rounds(flat_x, flat_s, flat_r, w, num_rounds))
    worst_ok, worst_stale = 0.0, 0.0
    for p, a, b in zip(local, with_x, stale):
        ref = whole[torch.as_tensor(p.core)]
        worst_ok = max(worst_ok, float((a[: p.n_core] - ref).abs().max()))
        worst_stale = max(worst_stale, float((b[: p.n_core] - ref).abs().max()))
    assert worst_ok < 1e-12, worst_ok
    return worst_ok, worst_stale


def check_gradients(sf, local, ei, n, xg, w0, dist, num_rounds=3, exchange=None):
    """d(loss)/dW summed over ranks and d(loss)/dx on owned rows equal the whole-graph gradients;
    ghost rows of the input get zero gradient (bcast's backward moves it to the owner).
    ``exchange``: ``sf.bcast_flat`` (default) or the in-place ``sf.bcast_flat_``."""
    exchange = exchange or sf.bcast_flat
    s, r = torch.as_tensor(ei[0]), torch.as_tensor(ei[1])
    target = torch.sin(torch.arange(n * F, dtype=torch.float64)).reshape(n, F)
    w_ref = w0.clone().requires_grad_(True)
    x_ref = xg.clone().requires_grad_(True)
    ((rounds(x_ref, s, r, w_ref, num_rounds) - target) ** 2).sum().div(n).backward()

    w = torch.nn.Parameter(w0.clone())
    xs = [xg[torch.as_tensor(p.nodes)].clone().requires_grad_(True) for p in local]
    flat_s = torch.cat([torch.as_tensor(p.edge_index[0]) + int(o) for p, o in zip(local, sf.offsets)])
    flat_r = torch.cat([torch.as_tensor(p.edge_index[1]) + int(o) for p, o in zip(local, sf.offsets)])
    out = sf.split(rounds(sf.cat(xs), flat_s, flat_r, w, num_rounds, exchange=exchange))
    loss = sum(((o[: p.n_core] - target[torch.as_tensor(p.core)]) ** 2).sum() for p, o in zip(local, out)) / n
    loss.backward()
    dist.allreduce_grads([w])
    assert torch.allclose(w.grad, w_ref.grad, rtol=1e-10, atol=1e-12), (w.grad - w_ref.grad).abs().max()
    for p, x in zip(local, xs):
        assert torch.allclose(x.grad[: p.n_core], x_ref.grad[torch.as_tensor(p.core)], rtol=1e-10, atol=1e-12)
        assert not x.grad[p.n_core:].any(), "ghost input rows must get zero gradient"


def check_all(dist, side=7, nparts=4):
    ei, n, owner = mesh_graph(side, nparts)
    part_to_rank = block_assignment(nparts, dist.size)
    xg = torch.randn(n, F, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    w0 = 0.3 * torch.randn(F, F, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    report = {}
    for halo in (1, 2):
        parts = build_parts(ei, n, owner, halo)
        local_ids = [i for i, p in enumerate(parts) if part_to_rank[p.part_id] == dist.rank]
        local = [parts[i] for i in local_ids]
        # only this rank's parts are needed to build the forest
        sf = StarForest.from_parts(local, part_to_rank, dist=dist)
        assert sf.part_ids == [p.part_id for p in local]
        assert sf.num_leaves == sum(p.n_halo for p in local)
        assert sf.local_leaf.numel() > 0, "several parts per rank must give local copies"
        if dist.size > 1:
            assert sf.num_remote_leaves > 0
        check_bcast_reduce(sf, parts, local, xg, n, dist)
        if halo == 2:
            check_depth(parts, part_to_rank, local_ids, xg, dist)
        if halo == 1:
            report["per_layer"] = check_per_layer(sf, local, ei, xg, w0)
            check_gradients(sf, local, ei, n, xg, w0, dist)
            check_gradients(sf, local, ei, n, xg, w0, dist, exchange=sf.bcast_flat_)
        report[f"remote_leaves_h{halo}"] = sf.num_remote_leaves
    return report


if __name__ == "__main__":
    dist = init_distributed(timeout_s=60)
    with abort_on_exception(dist):
        rep = check_all(dist)
        print(f"OK rank {dist.rank} size {dist.size} per_layer_err {rep['per_layer'][0]:.2e} "
              f"no_bcast_err {rep['per_layer'][1]:.2e} remote_leaves {rep['remote_leaves_h1']}/"
              f"{rep['remote_leaves_h2']}", flush=True)
    dist.finalize()
