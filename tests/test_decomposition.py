"""decomposition: partitions own every node once, halos match independent BFS, induced edges match brute force,
and k rounds of message passing on patches equal the whole graph exactly where the contract says (and only there).
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.csgraph import shortest_path

from meshgnn.decomposition import Part, build_parts, format_stats, iter_parts, partition, partition_stats
from meshgnn.graph import edges_from_cells, sort_by_receiver
from meshgnn.meshes import box_tets


# ---------------------------------------------------------------- graphs
def grid_graph(m: int):
    """Undirected m x m grid: ``(edge_index (2, E) receiver-sorted, N, points (N, 2))``."""
    idx = np.arange(m * m).reshape(m, m)
    pairs = np.concatenate([np.c_[idx[:, :-1].ravel(), idx[:, 1:].ravel()],
                            np.c_[idx[:-1].ravel(), idx[1:].ravel()]])
    ei = np.concatenate([pairs.T, pairs.T[::-1]], axis=1)
    pts = np.stack(np.divmod(np.arange(m * m), m), axis=1).astype(float)
    return sort_by_receiver(ei, m * m), m * m, pts


def tet_graph(side: int):
    pts, tets = box_tets(side)
    return edges_from_cells({"tetra": tets}, len(pts)), len(pts), pts


def components_graph():
    """Two grids, a 3-node path, and 4 isolated nodes (9 + 16 + 3 + 4 = 32 nodes), ids interleaved."""
    blocks, pts, off = [], [], 0
    for m in (3, 4):
        ei, n, p = grid_graph(m)
        blocks.append(ei + off)
        pts.append(p + [10.0 * off, 0])
        off += n
    blocks.append(np.array([[off, off + 1, off + 1, off + 2], [off + 1, off, off + 2, off + 1]]))
    pts.append(np.c_[np.arange(3.0) + 100, np.zeros(3)])
    off += 3
    pts.append(np.c_[np.arange(4.0) + 200, np.ones(4)])
    n = off + 4
    perm = np.random.default_rng(1).permutation(n)  # ids not grouped by component
    ei = perm[np.concatenate(blocks, axis=1)]
    points = np.empty((n, 2))
    points[perm] = np.concatenate(pts)
    return sort_by_receiver(ei, n), n, points


def random_digraph(n=120, e=300, seed=0):
    """A random *directed* graph (not symmetric) with some isolated nodes."""
    rng = np.random.default_rng(seed)
    s, r = rng.integers(0, n - 5, e), rng.integers(0, n - 5, e)
    ei = np.unique(np.stack([s, r])[:, s != r], axis=1)
    return sort_by_receiver(ei, n), n, rng.normal(size=(n, 2))


def check_owner(owner, n, nparts):
    assert owner.shape == (n,) and owner.dtype == np.int32
    assert owner.min() >= 0 and owner.max() < nparts
    assert np.all(np.bincount(owner, minlength=nparts) >= 1), "an empty part"


# ---------------------------------------------------------------- partition
@pytest.mark.parametrize("method", ["metis", "rcb"])
@pytest.mark.parametrize("graph,nparts", [
    ("grid", 1), ("grid", 5), ("grid", 16), ("tet", 7), ("components", 6), ("components", 20),
    ("components", 32), ("digraph", 9),
])
def test_every_node_owned_once_and_parts_non_empty(method, graph, nparts):
    ei, n, pts = {"grid": lambda: grid_graph(8), "tet": lambda: tet_graph(5), "components": components_graph,
                  "digraph": random_digraph}[graph]()
    owner = partition(ei, n, nparts, method=method, points=pts)
    check_owner(owner, n, nparts)


@pytest.mark.parametrize("method", ["metis", "rcb"])
def test_single_tet_every_part_count(method):
    pts, tets = box_tets(2)
    pts, tets = pts[:4], np.array([[0, 1, 2, 3]])
    ei = edges_from_cells({"tetra": tets}, 4)
    for nparts in range(1, 5):
        check_owner(partition(ei, 4, nparts, method=method, points=pts), 4, nparts)
    with pytest.raises(ValueError, match="cannot split 4 nodes into 5"):
        partition(ei, 4, 5, method=method, points=pts)


def test_graph_without_edges_and_bad_arguments():
    empty = np.zeros((2, 0), np.int64)
    check_owner(partition(empty, 5, 3), 5, 3)
    check_owner(partition(empty, 5, 5), 5, 5)
    ei, n, pts = grid_graph(3)
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="nparts"):
            partition(ei, n, bad)
    with pytest.raises(ValueError, match="points"):
        partition(ei, n, 2, method="rcb")
    with pytest.raises(ValueError, match="method"):
        partition(ei, n, 2, method="spectral")
    with pytest.raises(ValueError, match="node ids"):
        partition(ei, n - 1, 2)


def test_balance_and_rcb_geometry():
    ei, n, pts = grid_graph(20)
    owner = partition(ei, n, 7, method="metis")
    counts = np.bincount(owner)
    assert counts.max() / counts.mean() < 1.1
    owner = partition(ei, n, 7, method="rcb", points=pts)
    counts = np.bincount(owner)
    assert counts.max() - counts.min() <= 2
    # on a line of points RCB parts are intervals, in order
    x = np.random.default_rng(0).permutation(50).astype(float)
    owner = partition(np.zeros((2, 0), np.int64), 50, 6, method="rcb", points=x[:, None])
    assert np.all(np.diff(owner[np.argsort(x)]) >= 0) and np.bincount(owner).min() >= 8
    # weights: a heavy half gets more parts
    w = np.where(x < 25, 3.0, 1.0)
    owner = partition(np.zeros((2, 0), np.int64), 50, 4, method="rcb", points=x[:, None], weights=w)
    assert np.ptp([w[owner == p].sum() for p in range(4)]) <= 3.0


def test_metis_seed_is_reproducible():
    ei, n, _ = tet_graph(6)
    a, b = partition(ei, n, 5, seed=3), partition(ei, n, 5, seed=3)
    assert np.array_equal(a, b)


# ---------------------------------------------------------------- halos
def bfs_hops(ei, n, nodes, into=True):
    """Shortest directed path lengths between every node and the set ``nodes`` (inf if none), via scipy.

    ``into=True``: from each node into ``nodes`` (paths follow the edges); ``into=False``: from ``nodes`` to each.
    """
    s, r = ei
    # distances from ``nodes`` in the reversed graph are distances into ``nodes`` in the original
    a, b = (r, s) if into else (s, r)
    g = sp.csr_matrix((np.ones(s.size), (a, b)), shape=(n, n))
    return shortest_path(g, unweighted=True, directed=True, indices=np.asarray(nodes)).min(axis=0)


GRAPHS = {"grid": lambda: grid_graph(9), "tet": lambda: tet_graph(5), "components": components_graph,
          "digraph": random_digraph}


@pytest.mark.parametrize("graph", list(GRAPHS))
@pytest.mark.parametrize("halo", [0, 1, 3])
def test_halo_nodes_hops_and_order_match_bfs(graph, halo):
    ei, n, pts = GRAPHS[graph]()
    owner = partition(ei, n, 6, method="rcb", points=pts)
    parts = build_parts(ei, n, owner, halo)
    assert [p.part_id for p in parts] == list(range(6))
    for p in parts:
        core = np.flatnonzero(owner == p.part_id)
        assert p.n_core == core.size and np.array_equal(p.nodes[: p.n_core], core)  # ascending
        dist = bfs_hops(ei, n, core)
        want = np.flatnonzero(dist <= halo)
        assert np.array_equal(np.sort(p.nodes), want)
        assert p.hop.dtype == np.int16 and np.array_equal(p.hop, dist[p.nodes].astype(np.int16))
        key = p.hop.astype(np.int64) * n + p.nodes  # halo by (hop, global id)
        assert np.all(np.diff(key) > 0)
        assert np.array_equal(p.owner_of, owner[p.nodes]) and p.owner_of.dtype == np.int32
        assert np.all(p.owner_of[p.n_core:] != p.part_id)
        assert p.halo == halo


@pytest.mark.parametrize("graph", list(GRAPHS))
def test_induced_edges_equal_brute_force_and_receiver_sorted(graph):
    ei, n, pts = GRAPHS[graph]()
    owner = partition(ei, n, 5, method="metis")
    for p in build_parts(ei, n, owner, 2):
        local = {int(g): i for i, g in enumerate(p.nodes)}
        brute = sorted((local[r], local[s]) for s, r in ei.T.tolist() if s in local and r in local)
        got = list(zip(p.edge_index[1].tolist(), p.edge_index[0].tolist()))
        assert got == brute  # same set, ordered by (local receiver, local sender)
        assert p.edge_index.dtype == np.int64 and p.edge_index.shape[0] == 2


def test_halo_covers_whole_component_and_stops():
    ei, n, pts = components_graph()
    owner = partition(ei, n, 3, method="metis")
    big = build_parts(ei, n, owner, 1000)  # BFS stops at the component boundary
    for p in big:
        dist = bfs_hops(ei, n, np.flatnonzero(owner == p.part_id))
        assert np.array_equal(np.sort(p.nodes), np.flatnonzero(np.isfinite(dist)))


def test_bad_build_parts_arguments():
    ei, n, _ = grid_graph(3)
    with pytest.raises(ValueError, match="halo"):
        build_parts(ei, n, np.zeros(n, int), -1)
    with pytest.raises(ValueError, match="owner"):
        build_parts(ei, n, np.zeros(n - 1, int), 1)
    with pytest.raises(ValueError, match="halo"):
        iter_parts(ei, n, np.zeros(n, int), 2.5)  # checked on the call, not on the first part


# ---------------------------------------------------------------- exactness contract
def weighted_adjacency(senders, receivers, n, weight_of):
    """Sparse ``A`` with ``A[r, s] = weight_of(s, r)`` so that ``(A x)[r] = Σ_{s->r} w x[s]``."""
    return sp.csr_matrix((weight_of(senders, receivers), (receivers, senders)), shape=(n, n))


def edge_weight(s, r):
    return 0.5 + ((7 * s + 13 * r) % 11) / 10.0  # positive, depends on the global edge, not on numbering


def message_passing(a, x, rounds):
    for _ in range(rounds):
        x = x + a @ x
    return x


@pytest.mark.parametrize("graph,method", [("tet", "metis"), ("grid", "rcb"), ("digraph", "metis")])
@pytest.mark.parametrize("halo", [2, 4])
def test_patch_message_passing_exact_exactly_where_contract_says(graph, method, halo):
    """x <- x + A x, k rounds, on each patch vs the whole graph (positive weights and values, so no cancellation).

    Patch node v is exact iff no walk of length <= k reaches it from outside the patch; the contract guarantees
    that for hop <= h - k. We check both directions: exact where promised (rel. 1e-12), and wrong wherever an
    outside node is within k steps -- including core nodes when h = k - 1 (the negative control).
    """
    ei, n, pts = GRAPHS[graph]()
    owner = partition(ei, n, 4, method=method, points=pts)
    x0 = np.random.default_rng(0).uniform(1.0, 2.0, n)
    a = weighted_adjacency(ei[0], ei[1], n, edge_weight)
    parts = build_parts(ei, n, owner, halo)
    saw_inexact_core = False
    for k in range(1, halo + 2):
        whole = message_passing(a, x0, k)
        for p in parts:
            g = p.nodes
            a_p = weighted_adjacency(p.edge_index[0], p.edge_index[1], p.num_nodes,
                                     lambda s, r: edge_weight(g[s], g[r]))
            patch = message_passing(a_p, x0[g], k)
            err = np.abs(patch - whole[g]) / np.abs(whole[g])
            exact = p.exact_mask(k)
            assert np.array_equal(exact, p.hop <= halo - k)
            assert err[exact].max(initial=0) < 1e-12
            outside = np.setdiff1d(np.arange(n), g)
            reach = bfs_hops(ei, n, outside, into=False)[g] if outside.size else np.full(g.size, np.inf)
            assert np.array_equal(err > 1e-12, reach <= k)
            if k == halo + 1:  # negative control: h = k - 1
                saw_inexact_core |= bool(np.any(err[: p.n_core] > 1e-6))
    assert saw_inexact_core, "with h = k - 1 some core value must differ"


# ---------------------------------------------------------------- statistics
def test_partition_stats_against_brute_force():
    ei, n, pts = tet_graph(6)
    owner = partition(ei, n, 4)
    parts = build_parts(ei, n, owner, 2)
    st = partition_stats(parts, ei, n, owner)
    cut = {(min(s, r), max(s, r)) for s, r in ei.T.tolist() if owner[s] != owner[r]}
    assert st["edge_cut"] == len(cut)
    assert sum(r["core"] for r in st["per_part"]) == n
    assert st["node_factor"] == pytest.approx(sum(p.num_nodes for p in parts) / n)
    assert st["edge_factor"] == pytest.approx(sum(p.num_edges for p in parts) / ei.shape[1])
    assert st["balance"] == pytest.approx(np.bincount(owner).max() / (n / 4))
    assert st["halo_core"] == pytest.approx(sum(p.n_halo for p in parts) / n)
    for row, p in zip(st["per_part"], parts):
        assert (row["core"], row["halo"], row["total"], row["edges"]) == (p.n_core, p.n_halo, p.num_nodes,
                                                                          p.num_edges)
    # summaries give the same figures as parts
    assert partition_stats([p.summary() for p in parts], ei, n, owner) == st
    text = format_stats(st)
    assert f"edge cut: {len(cut)}" in text and len(text.splitlines()) == 2 + 4 + 2 + 3  # head, rows, sum, summary
    assert "mean" in format_stats(st, max_rows=2)


def test_part_dataclass_views():
    p = Part(3, np.array([5, 7, 1]), 2, np.array([0, 0, 1], np.int16), np.zeros((2, 0), np.int64),
             np.array([3, 3, 0], np.int32), halo=1)
    assert p.num_nodes == 3 and p.n_halo == 1 and list(p.core) == [5, 7] and p.num_edges == 0
    assert list(p.exact_mask(1)) == [True, True, False]


def test_sorted_unique_matches_numpy():
    from meshgnn.decomposition.csr import sorted_unique

    rng = np.random.default_rng(3)
    for size in (0, 1, 2, 1000):
        x = rng.integers(-5, 50, size)
        assert np.array_equal(sorted_unique(x), np.unique(x))
