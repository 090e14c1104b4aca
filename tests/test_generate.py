"""The packed-column generator: node types from gmsh entities, potential-flow conservation, transport bounds and
mass balance, parameter dependence, and ``meshgnn generate`` end to end."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from meshgnn.generate.geometry import INLET, INTERIOR, OBSTACLE, OUTLET, WALL, mesh_column, place_packing
from meshgnn.generate.solver import (P1Space, UptakeParameters, low_order_operator, simulate_uptake, solve_flow,
                                     substeps_for)
from meshgnn.graph import edges_from_cells
from meshgnn.io.dataset import NODE_TYPES, Dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def column():
    geom = place_packing(0)
    mesh = mesh_column(geom, 2000, threads=1)
    n = mesh.points.shape[0]
    space = P1Space(mesh.points, mesh.tets, edges_from_cells({"tetra": mesh.tets}, n))
    inlet, outlet = np.flatnonzero(mesh.node_type == INLET), np.flatnonzero(mesh.node_type == OUTLET)
    flow = solve_flow(space, mesh.inlet_faces, inlet, outlet)
    return geom, mesh, space, flow, inlet


def _run(space, flow, inlet, velocity, steps=25, dt=0.7, **kw):
    p = UptakeParameters(inlet_velocity=velocity, **kw)
    nsub = substeps_for(space, low_order_operator(space, flow, p), dt, 8.0, p.rate)
    frames = list(simulate_uptake(space, flow, p, inlet, steps, dt, nsub))
    return p, np.array([f[0] for f in frames]), np.array([f[1] for f in frames])


def test_node_types_match_the_geometry(column):
    """Entity-based classification agrees with where the nodes are; every type occurs."""
    geom, mesh, *_ = column
    x, t = mesh.points, mesh.node_type
    assert set(np.unique(t)) == {INTERIOR, INLET, OUTLET, WALL, OBSTACLE}
    tol = 1e-9 * geom.height
    np.testing.assert_allclose(x[t == INLET, 2], 0.0, atol=tol)
    np.testing.assert_allclose(x[t == OUTLET, 2], geom.height, atol=tol)
    np.testing.assert_allclose(np.hypot(x[t == WALL, 0], x[t == WALL, 1]), geom.radius, rtol=1e-6)
    d = np.linalg.norm(x[t == OBSTACLE][:, None, :] - geom.centers[None], axis=2) - geom.radii[None]
    np.testing.assert_allclose(np.min(np.abs(d), axis=1), 0.0, atol=1e-6)
    inside = t == INTERIOR
    assert np.all(x[inside, 2] > tol) and np.all(x[inside, 2] < geom.height - tol)
    assert np.all(np.hypot(x[inside, 0], x[inside, 1]) < geom.radius * (1 - 1e-6))


def test_node_count_calibration_within_30_percent():
    geom = place_packing(1, count=10)
    for target in (1500, 6000):
        got = mesh_column(geom, target, threads=1).points.shape[0]
        assert abs(got / target - 1) < 0.3, (target, got)


def test_streamed_assembly_equals_direct_coo_assembly(column):
    """The pattern lookup (upper positions + transpose + diagonal) puts every element entry in its place."""
    from meshgnn.generate.solver import tet_geometry

    _, mesh, space, _, _ = column
    vol, g = tet_geometry(mesh.points, mesh.tets)
    local = vol[:, None, None] * np.einsum("mak,mbk->mab", g, g) + np.arange(16.0).reshape(4, 4)  # non-symmetric
    rows = np.repeat(mesh.tets, 4, axis=1)
    cols = np.tile(mesh.tets, (1, 4))
    import scipy.sparse as sp

    ref = sp.coo_matrix((local.ravel(), (rows.ravel(), cols.ravel())), shape=(space.num_nodes,) * 2).toarray()
    small = P1Space(mesh.points, mesh.tets, edges_from_cells({"tetra": mesh.tets}, space.num_nodes), chunk=1000)
    got = small.matrix(small.assemble(lambda lo, hi, v, gr: local[lo:hi])).toarray()
    np.testing.assert_allclose(got, ref, atol=1e-12)


def test_potential_flow_is_divergence_free_and_balances_fluxes(column):
    geom, mesh, space, flow, _ = column
    assert flow.inlet_flux == pytest.approx(geom.inlet_area, rel=0.02)      # polygonal disc of radius R
    assert flow.outlet_flux == pytest.approx(flow.inlet_flux, rel=1e-8)
    assert np.max(np.abs(flow.divergence)) < 1e-8 * flow.inlet_flux
    # column sums of the convection matrix are the discrete divergence: zero at wall/obstacle/interior nodes
    colsum = np.bincount(space.indices, flow.convection, minlength=space.num_nodes)
    off = ~np.isin(mesh.node_type, [INLET, OUTLET])
    assert np.max(np.abs(colsum[off])) < 1e-8 * flow.inlet_flux
    # the flow goes up the column, faster than the superficial velocity between the packing
    assert flow.node_velocity[:, 2].mean() > 1.0
    # negative control: a field that is not a solution has a divergence
    noise = 0.01 * flow.potential.max() * np.random.default_rng(0).standard_normal(space.num_nodes)
    perturbed = space.matrix(space.stiffness()) @ (flow.potential + noise)
    assert np.max(np.abs(perturbed[off])) > 1e-4 * flow.inlet_flux


def test_uptake_bounds_monotone_loading_and_mass_balance(column):
    geom, mesh, space, flow, inlet = column
    dt = 0.7
    p, c, q = _run(space, flow, inlet, 0.1, dt=dt)
    assert c.min() >= 0 and c.max() <= p.inlet_co2 * (1 + 1e-9)
    assert q.min() >= 0 and q.max() <= p.capacity
    assert np.all(np.diff(q, axis=0) >= -1e-12)                    # loading never decreases
    np.testing.assert_array_equal(c[:, inlet], p.inlet_co2)
    assert 0.1 * p.capacity < q[-1].max() < p.capacity            # the column loads but does not saturate
    # accumulation in the column (inlet nodes are prescribed) = inflow - outflow, outflow by the trapezoid rule
    mask = np.ones(space.num_nodes, dtype=bool)
    mask[inlet] = False
    stored = ((c + q) * space.mass)[:, mask].sum(1)
    out = p.inlet_velocity * (c * flow.outflow).sum(1)
    cum_out = np.concatenate([[0.0], np.cumsum(0.5 * (out[1:] + out[:-1]) * dt)])
    inflow = p.inlet_co2 * p.inlet_velocity * flow.inlet_flux * dt * np.arange(len(c))
    np.testing.assert_allclose(stored[1:] - stored[0], (inflow - cum_out)[1:], rtol=0.01)


def test_every_frame_changes_and_front_moves_locally(column):
    """Learnability: the state changes every recorded step, by a bounded amount per step."""
    *_, space, flow, inlet = column
    _, c, q = _run(space, flow, inlet, 0.15)
    dq = np.abs(np.diff(q, axis=0)).max(axis=1)
    assert np.all(dq > 0.005 * 80.0)                # every frame visibly changes the loading somewhere
    assert np.all(dq < 0.5 * 80.0)                  # ... but no node jumps most of its range in one frame


def test_constant_state_is_preserved_without_uptake(column):
    *_, space, flow, inlet = column
    op = low_order_operator(space, flow, UptakeParameters(0.1))
    np.testing.assert_allclose(space.matrix(op) @ np.ones(space.num_nodes), 0.0, atol=1e-12)
    offdiag = op.copy()
    offdiag[space.diag] = 0.0
    assert offdiag.min() >= 0.0                     # discrete upwinding: an M-matrix operator (positivity)


def test_trajectories_differ_with_inlet_velocity(column):
    *_, space, flow, inlet = column
    loaded = []
    for u in (0.05, 0.1, 0.15):
        _, c, q = _run(space, flow, inlet, u, steps=12)
        loaded.append(float((q[-1] * space.mass).sum()))
    assert loaded[0] < loaded[1] < loaded[2]
    assert loaded[2] > 1.5 * loaded[0]


def _cli(*args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "meshgnn.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def test_generate_cli_end_to_end(tmp_path):
    out = tmp_path / "col.h5"
    r = _cli("generate", str(out), "--nodes", "1500", "--trajectories", "2", "--steps", "6", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "nodes" in r.stdout and "inlet=" in r.stdout and "s/step" in r.stdout
    with Dataset(out) as ds:
        assert ds.state_fields == ["co2", "loading"] and ds.static_fields == ["velocity"]
        assert ds.dirichlet_types == ["inlet"]
        assert all(ds.node_type_counts()[t] > 0 for t in NODE_TYPES)
        assert len(ds.trajectories) == 2 and ds.num_steps("0") == 6
        assert ds.provenance["solver_seconds_per_step"] > 0
        assert ds.provenance["nodes"] == ds.num_nodes
        np.testing.assert_array_equal(ds.edge_index(), edges_from_cells(ds.cells, ds.num_nodes))
        u = [ds.parameters(t)["inlet_velocity"] for t in ds.trajectories]
        assert sorted(u) == pytest.approx([0.05, 0.15])
        v0, v1 = ds.read_static("0"), ds.read_static("1")
        np.testing.assert_allclose(v0 * u[1], v1 * u[0], rtol=1e-5, atol=1e-7)   # one flow, scaled
        assert not np.allclose(ds.read_state("0", 5), ds.read_state("1", 5))


def test_generate_cli_errors_are_one_line(tmp_path, capsys):
    from meshgnn.cli import main

    assert main(["generate", str(tmp_path / "x.h5"), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "--steps" in err
    assert not (tmp_path / "x.h5").exists()
    with pytest.raises(SystemExit) as e:
        main(["generate", "--help"])
    assert e.value.code == 0 and "--velocity-range" in capsys.readouterr().out
