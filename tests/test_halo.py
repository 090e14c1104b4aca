"""meshgnn.halo.StarForest: bcast/reduce against whole-graph references, autograd, 2-rank runs (mpirun)."""
import dataclasses
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "mpi_scripts"))
import halo_check  # noqa: E402
from launch import run_mpi  # noqa: E402

from meshgnn.decomposition import build_parts  # noqa: E402
from meshgnn.distributed import Dist  # noqa: E402
from meshgnn.errors import MeshgnnError  # noqa: E402
from meshgnn.halo import StarForest, block_assignment  # noqa: E402


@pytest.fixture(scope="module")
def graph():
    return halo_check.mesh_graph(side=6, nparts=4)


@pytest.fixture(scope="module")
def forest(graph):
    ei, n, owner = graph
    parts = build_parts(ei, n, owner, 2)
    return StarForest.from_parts(parts, np.zeros(4, np.int64), 0), parts


def test_single_rank_all_checks():
    """4 parts on one rank (pure local copies): bcast, reduce, depth, per-layer exactness, gradients."""
    rep = halo_check.check_all(Dist(), side=6, nparts=4)
    worst_ok, worst_stale = rep["per_layer"]
    assert worst_ok < 1e-12 and worst_stale > 1e-3  # negative control: no bcast -> wrong core values
    assert rep["remote_leaves_h1"] == 0


def test_gradcheck_bcast_reduce(forest):
    sf, _ = forest
    x = torch.randn(sf.num_rows, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(sf.bcast_flat, (x,), fast_mode=True)
    assert torch.autograd.gradcheck(sf.reduce_flat, (x,), fast_mode=True)
    assert torch.autograd.gradgradcheck(sf.bcast_flat, (x,), fast_mode=True)
    xs = tuple(torch.randn(int(k), 2, dtype=torch.float64, requires_grad=True) for k in sf.sizes)
    assert torch.autograd.gradcheck(lambda *a: tuple(sf.bcast(a)), xs, fast_mode=True)


def test_bcast_reduce_are_adjoint(forest):
    sf, _ = forest
    x = torch.randn(sf.num_rows, 4, dtype=torch.float64)
    y = torch.randn(sf.num_rows, 4, dtype=torch.float64)
    lhs = (sf.bcast_flat(x) * y).sum()
    rhs = (x * sf.reduce_flat(y)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-12)
    assert not torch.allclose(lhs, (x * y).sum())  # the maps are not the identity


def test_bcast_gradient_moves_ghost_grad_to_owner(forest):
    sf, parts = forest
    x = torch.zeros(sf.num_rows, 1, dtype=torch.float64, requires_grad=True)
    seed = torch.zeros(sf.num_rows, 1, dtype=torch.float64)
    leaf = int(sf.local_leaf[0])
    root = int(sf.local_root[0])
    seed[leaf] = 1.0
    (sf.bcast_flat(x) * seed).sum().backward()
    expect = torch.zeros_like(seed)
    expect[root] = 1.0
    assert torch.equal(x.grad, expect)


def test_split_outputs_can_be_modified_in_place(forest):
    sf, _ = forest
    xs = [torch.randn(int(k), 3, requires_grad=True) for k in sf.sizes]
    ys = sf.bcast(xs)
    ys[0].mul_(2.0)  # narrow views: in-place is allowed
    sum(y.sum() for y in ys).backward()
    assert all(x.grad is not None for x in xs)


def test_owner_array_instead_of_owner_of(graph):
    ei, n, owner = graph
    parts = build_parts(ei, n, owner, 1)
    bare = [dataclasses.replace(p, owner_of=None) for p in parts]
    a = StarForest.from_parts(parts, np.zeros(4, np.int64), 0)
    b = StarForest.from_parts(bare, np.zeros(4, np.int64), 0, owner=owner)
    assert torch.equal(a.local_leaf, b.local_leaf) and torch.equal(a.local_root, b.local_root)
    with pytest.raises(MeshgnnError, match="owner"):
        StarForest.from_parts(bare, np.zeros(4, np.int64), 0)
    c = StarForest.from_parts(parts, {p: 0 for p in range(4)}, 0)  # a {part: rank} mapping works too
    assert torch.equal(a.local_root, c.local_root)


def test_bad_inputs_are_refused(graph):
    ei, n, owner = graph
    parts = build_parts(ei, n, owner, 1)
    with pytest.raises(MeshgnnError, match="ranks must lie"):
        StarForest.from_parts(parts, block_assignment(4, 2), 0)  # rank 1 does not exist in a 1-rank job
    with pytest.raises(MeshgnnError, match="lists only 2 parts"):
        StarForest.from_parts(parts[:2], np.zeros(2, np.int64), 0)  # ghosts owned by parts 2, 3
    wrong = owner.copy()
    wrong[parts[0].nodes[parts[0].n_core]] = 3 - wrong[parts[0].nodes[parts[0].n_core]] % 4  # a ghost's owner lies
    bare = [dataclasses.replace(p, owner_of=None) for p in parts]
    with pytest.raises(MeshgnnError):
        StarForest.from_parts(bare, np.zeros(4, np.int64), 0, owner=wrong)
    with pytest.raises(ValueError, match="rows"):
        StarForest.from_parts(parts, np.zeros(4, np.int64), 0).bcast([torch.zeros(1, 1)] * 4)


def test_block_assignment():
    a = block_assignment(8, 3)
    assert a.tolist() == sorted(a.tolist()) and set(a.tolist()) == {0, 1, 2}
    assert np.bincount(a).max() - np.bincount(a).min() <= 1
    with pytest.raises(MeshgnnError):
        block_assignment(2, 3)


@pytest.mark.mpi
def test_two_ranks_four_parts_match_single_process():
    """mpirun -n 2, 4 parts (2 per rank): bcast/reduce/depth/per-layer/gradients equal the whole graph."""
    proc, _ = run_mpi("halo_check.py", n=2, timeout=180)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for r in (0, 1):
        line = next(ln for ln in out.splitlines() if ln.startswith(f"OK rank {r} size 2"))
        fields = line.split()
        assert float(fields[fields.index("per_layer_err") + 1]) < 1e-12
        assert float(fields[fields.index("no_bcast_err") + 1]) > 1e-3
        assert int(fields[fields.index("remote_leaves") + 1].split("/")[0]) > 0


def test_in_place_bcast_matches_out_of_place(forest):
    sf, _ = forest
    flat = torch.randn(sf.num_rows, 3)
    want = sf.bcast_flat(flat)
    views = sf.split(flat)
    assert sf.bcast_flat_(flat) is flat
    assert torch.equal(flat, want) and torch.equal(views[1], sf.split(want)[1])
    x = torch.randn(sf.num_rows, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: sf.bcast_flat_(t * 1.0), (x,), fast_mode=True)
    g = torch.randn(sf.num_rows, 2, dtype=torch.float64)
    (sf.bcast_flat_(x * 1.0) * g).sum().backward()
    assert torch.allclose(x.grad, sf.reduce_flat(g))
    with pytest.raises(RuntimeError, match="leaf Variable"):
        sf.bcast_flat_(x)
