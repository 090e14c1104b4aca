"""Property-based tests (hypothesis) of partitioning and importing: random small inputs, bounded examples.

Partitioning: random graphs with disconnected components, isolated nodes, self loops and duplicate edges, any
P (P > N included): either a clear ``ValueError`` naming ``nparts`` or a partition where every node is owned
once, every part is non-empty, patch membership and hops equal a reference BFS and patch edges are the induced
edges. Importing: random small tet meshes written with meshio (random fields, duplicate points, unreferenced
nodes, NaN/Inf): either a dataset that round-trips or exit 2 with one ``InputError`` line, nothing left behind.
"""
from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from meshgnn.decomposition import build_parts, partition
from meshgnn.cli import main

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                           HealthCheck.too_slow])


# ------------------------------------------------------------------------------------------------ partitioning
@st.composite
def graphs(draw):
    """``(N, edge_index (2,E), points (N,3))``: a few components (paths/cliques/random), isolated nodes, self loops
    and duplicated edges, each edge in both directions or one (directed graphs are allowed)."""
    n = draw(st.integers(1, 30))
    pairs = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=3 * n))
    # restrict edges to blocks of nodes -> several disconnected components, some nodes isolated
    cuts = sorted(set(draw(st.lists(st.integers(1, max(n - 1, 1)), max_size=3))))
    block = np.searchsorted(np.array(cuts, dtype=np.int64), np.arange(n), side="right")
    pairs = [(a, b) for a, b in pairs if block[a] == block[b]]
    symmetric = draw(st.booleans())
    if symmetric:
        pairs += [(b, a) for a, b in pairs]
    pairs += draw(st.lists(st.sampled_from(pairs), max_size=5)) if pairs else []    # duplicates
    ei = np.array(pairs, dtype=np.int64).reshape(-1, 2).T
    seed = draw(st.integers(0, 2**16))
    points = np.random.default_rng(seed).uniform(size=(n, 3))
    return n, ei, points


def hop_distance_to(core: np.ndarray, edge_index: np.ndarray, n: int) -> np.ndarray:
    """Reference: for every node u, the length of the shortest directed path u -> ... -> core (inf if none)."""
    into = [[] for _ in range(n)]          # into[v] = senders of v's incoming edges
    for s, r in edge_index.T:
        into[r].append(s)
    dist = np.full(n, np.inf)
    dist[core] = 0
    queue = deque(int(c) for c in core)
    while queue:
        v = queue.popleft()
        for s in into[v]:
            if dist[s] == np.inf:
                dist[s] = dist[v] + 1
                queue.append(s)
    return dist


@SETTINGS
@given(graph=graphs(), nparts=st.integers(1, 34), halo=st.integers(0, 3), method=st.sampled_from(["metis", "rcb"]))
def test_partition_properties(graph, nparts, halo, method):
    n, ei, points = graph
    event("P > N" if nparts > n else "P == N" if nparts == n else "P < N")
    if nparts > n:      # P > N: a clear error, nothing else
        with pytest.raises(ValueError, match="nparts"):
            partition(ei, n, nparts, method=method, points=points)
        return
    owner = partition(ei, n, nparts, method=method, points=points)
    assert owner.shape == (n,) and owner.min() >= 0 and owner.max() < nparts
    assert np.all(np.bincount(owner, minlength=nparts) > 0)            # every part non-empty (P == N: one each)
    parts = build_parts(ei, n, owner, halo)
    assert len(parts) == nparts
    cores = np.concatenate([p.core for p in parts])
    assert np.array_equal(np.sort(cores), np.arange(n))                # every node owned exactly once
    edges = set(map(tuple, ei.T.tolist()))
    for p in parts:
        assert np.array_equal(p.core, np.flatnonzero(owner == p.part_id))
        dist = hop_distance_to(p.core, ei, n)
        want = np.flatnonzero(dist <= halo)
        assert np.array_equal(np.sort(p.nodes), want)                  # patch = the h-hop ball of the core
        assert np.array_equal(p.hop, dist[p.nodes])                    # hops = BFS distances
        assert np.all(np.diff(p.hop.astype(int)) >= 0)                 # core first, then by hop
        local = p.nodes[p.edge_index]                                  # local -> global
        got = set(map(tuple, local.T.tolist()))
        inside = set(p.nodes.tolist())
        assert got == {e for e in edges if e[0] in inside and e[1] in inside}   # the induced edges
        r, s = p.edge_index[1], p.edge_index[0]
        assert np.all((np.diff(r) > 0) | ((np.diff(r) == 0) & (np.diff(s) >= 0)))   # receiver-sorted
        assert np.array_equal(p.owner_of, owner[p.nodes])


@SETTINGS
@given(n=st.integers(1, 12), nparts=st.integers(-2, 0))
def test_partition_rejects_nonpositive_parts(n, nparts):
    with pytest.raises(ValueError, match="nparts"):
        partition(np.zeros((2, 0), np.int64), n, nparts)


# ------------------------------------------------------------------------------------------------ importing
@st.composite
def tet_series(draw):
    """A random small tet series: a perturbed structured box (random size), random state fields with 1 or 3
    components over 2-3 steps; optionally duplicate points, unreferenced extra points, a NaN/Inf value."""
    from meshgnn.io.importers.samples import box_tets

    dims = draw(st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 2)))
    points, tets = box_tets(*dims)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    points = points + rng.uniform(-0.02, 0.02, size=points.shape) * 0.1
    n = len(points)
    flaw = draw(st.sampled_from(["none", "none", "duplicate points", "unreferenced nodes", "nan", "inf"]))
    if flaw == "duplicate points":           # copies of existing points, used by no cell
        points = np.concatenate([points, points[: draw(st.integers(1, 3))]])
    elif flaw == "unreferenced nodes":
        points = np.concatenate([points, rng.uniform(size=(draw(st.integers(1, 3)), 3))])
    fields = {f"f{i}": draw(st.sampled_from([1, 3])) for i in range(draw(st.integers(1, 3)))}
    steps = []
    for _ in range(draw(st.integers(2, 3))):
        steps.append({name: rng.normal(size=(len(points), c)).squeeze() for name, c in fields.items()})
    if flaw in ("nan", "inf"):
        name = draw(st.sampled_from(sorted(fields)))
        k = draw(st.integers(0, len(steps) - 1))
        steps[k][name].reshape(len(points), -1)[draw(st.integers(0, n - 1)), 0] = np.nan if flaw == "nan" else np.inf
    return points, tets, steps, flaw


@SETTINGS
@given(series=tet_series(), drop=st.booleans())
def test_import_random_meshes_roundtrip_or_one_line_error(series, drop, tmp_path_factory, capsys):
    from meshgnn.io.dataset import Dataset
    from test_import_errors import DT, write_series

    points, tets, steps, flaw = series
    event(f"flaw: {flaw}, drop: {drop}")
    work = tmp_path_factory.mktemp("imp")
    pvd = write_series(work / "src", points, tets, steps)
    (work / "out").mkdir()
    out = work / "out" / "data.h5"
    rc = main(["import", str(pvd), str(out), "--no-progress", *(["--drop-unreferenced"] if drop else [])])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("meshgnn import: ")]   # (a field report precedes)
    if rc != 0:
        assert rc == 2 and len(lines) == 1 and "Traceback" not in err, (flaw, err)
        assert lines[0].startswith("meshgnn import: error: "), lines[0]
        assert list((work / "out").iterdir()) == []
        assert flaw in ("nan", "inf") or (flaw != "none" and not drop), (flaw, drop, lines[0])
        return
    assert flaw == "none" or (drop and flaw in ("duplicate points", "unreferenced nodes")), (flaw, drop)
    n_used = len(np.unique(tets))
    with Dataset(out) as ds:
        assert ds.num_nodes == n_used
        keep = np.arange(n_used)                     # the extra points were appended after the mesh's own
        np.testing.assert_allclose(ds.points, points[keep])
        (traj,) = ds.trajectories
        assert ds.num_steps(traj) == len(steps)
        np.testing.assert_allclose(ds.times(traj), DT * np.arange(len(steps)))
        for k, data in enumerate(steps):
            for name, values in data.items():
                got = ds.read(traj, name, k)
                np.testing.assert_allclose(got, values.reshape(len(points), -1)[keep].astype(np.float32))
