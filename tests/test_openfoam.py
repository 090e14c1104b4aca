"""OpenFOAM pipeline: gmsh channel -> gmshToFoam -> icoFoam + scalar transport -> import; checked against the
solver's own files and the boundary conditions. Skips (with the reason) where OpenFOAM is not installed."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from meshgnn.generate import openfoam as of

REASON = of.foam_missing_reason()
pytestmark = [pytest.mark.openfoam, pytest.mark.skipif(REASON is not None, reason=f"OpenFOAM missing: {REASON}")]

NODES, STEPS, VELOCITIES, OUT_DT = 700, 3, (0.6, 1.2), 0.05


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Two serial runs through run_openfoam_dataset, case folders kept."""
    root = tmp_path_factory.mktemp("of")
    out = of.run_openfoam_dataset(root / "of.h5", nodes=NODES, trajectories=2, steps=STEPS,
                                  velocities=list(VELOCITIES), parallel=1, workdir=root / "work", keep=True,
                                  output_dt=OUT_DT, progress=False)
    return out, root / "work"


def internal_field(path: Path) -> np.ndarray:
    """The ``internalField`` of an ASCII OpenFOAM field file: ``(cells,)`` or ``(cells, 3)``."""
    text = path.read_text()
    m = re.search(r"internalField\s+nonuniform\s+List<(\w+)>\s*(\d+)\s*\((.*?)\)\s*;", text, re.S)
    assert m, f"{path}: no nonuniform internalField"
    body = m.group(3).replace("(", " ").replace(")", " ")
    vals = np.array(body.split(), dtype=np.float64)
    return vals.reshape(int(m.group(2)), -1).squeeze()


def test_dataset_fields_times_node_types(generated):
    from meshgnn.io.dataset import Dataset

    out, _ = generated
    with Dataset(out) as ds:
        assert ds.state_fields == ["U", "p", "s"]
        assert [ds.fields[f].components for f in ds.state_fields] == [3, 1, 1]
        assert sorted(ds.trajectories) == ["0", "1"]
        assert ds.dt == pytest.approx(OUT_DT)
        for tid, u_in in zip(("0", "1"), VELOCITIES):
            np.testing.assert_allclose(ds.times(tid), OUT_DT * np.arange(STEPS + 1), atol=1e-9)
            assert ds.parameters(tid)["inlet_velocity"] == pytest.approx(u_in)
        pts, names = ds.points, np.asarray(ds.node_type_names)[ds.node_type]
        L, W, H = of.CHANNEL
        counts = ds.node_type_counts()
        assert all(counts[t] > 0 for t in ("interior", "inlet", "outlet", "wall", "obstacle"))
        assert np.allclose(pts[names == "inlet", 0], 0) and np.allclose(pts[names == "outlet", 0], L)
        # wall nodes lie on the box faces, obstacle nodes on some sphere's surface
        w = pts[names == "wall"]
        on_box = np.isclose(w[:, 1], 0) | np.isclose(w[:, 1], W) | np.isclose(w[:, 2], 0) | np.isclose(w[:, 2], H)
        assert on_box.all()
        ob = pts[names == "obstacle"]
        gap = np.min([np.abs(np.linalg.norm(ob - c, axis=1) - r) for c, r in of.SPHERES], axis=0)
        assert gap.max() < 1e-6 * L
        # interior nodes are on no boundary
        inner = pts[names == "interior"]
        assert (inner[:, 0] > 1e-9).all() and (inner[:, 0] < L - 1e-9).all()

        # Boundary conditions hold exactly at nodes of one patch only (face interiors of inlet / walls).
        yz_inside = lambda p: (p[:, 1] > 1e-9) & (p[:, 1] < W - 1e-9) & (p[:, 2] > 1e-9) & (p[:, 2] < H - 1e-9)
        inlet_only = (names == "inlet") & yz_inside(pts)
        wall_only = (names == "wall") & (pts[:, 0] > 1e-9) & (pts[:, 0] < L - 1e-9)
        for tid, u_in in zip(("0", "1"), VELOCITIES):
            for k in range(STEPS + 1):
                U, s = ds.read(tid, "U", k), ds.read(tid, "s", k)[:, 0]
                np.testing.assert_allclose(U[inlet_only], np.tile([u_in, 0, 0], (inlet_only.sum(), 1)), atol=1e-6)
                np.testing.assert_allclose(s[inlet_only], 1.0, atol=1e-6)
                if k:
                    assert np.abs(U[wall_only]).max() < 1e-6
                    assert s.min() > -0.05 and s.max() < 1.05
            # the scalar front advances, faster for the faster inlet
            means = [ds.read(tid, "s", k)[:, 0].mean() for k in range(STEPS + 1)]
            assert np.all(np.diff(means) > 0)
        assert ds.read("1", "s", STEPS).mean() > ds.read("0", "s", STEPS).mean()


def test_boundary_conditions_come_from_the_case(generated):
    """0/U: fixedValue inlet, noSlip walls/obstacles; 0/p: fixedValue outlet; 0/s: fixedValue inlet -> per-field
    prescribed node types; and the data holds them (U = 0 on walls at every step)."""
    from meshgnn.io.dataset import Dataset

    out, _ = generated
    with Dataset(out) as ds:
        assert ds.dirichlet_fields == {"U": ["inlet", "obstacle", "wall"], "p": ["outlet"], "s": ["inlet"]}
        names = np.asarray(ds.node_type_names)[ds.node_type]
        u = ds.read("1", "U", STEPS)
        assert np.abs(u[names == "wall"]).max() < 1e-9 and np.abs(u[names == "interior"]).max() > 0.1


def test_cell_data_import_equals_solver_files(generated, tmp_path):
    """--cell-data: the node values are exactly the solver's internalField lists, every time folder."""
    from meshgnn.cli import main
    from meshgnn.io.dataset import Dataset

    _, work = generated
    case = work / "case_001"
    out = tmp_path / "cells.h5"
    assert main(["import", str(case), str(out), "--cell-data", "--no-progress"]) == 0
    times = sorted((d for d in case.iterdir() if re.fullmatch(r"[0-9.e+-]+", d.name) and d.name != "0"),
                   key=lambda d: float(d.name))
    with Dataset(out) as ds:
        owner = (case / "constant" / "polyMesh" / "owner").read_text()
        n_cells = int(re.search(r"nCells:\s*(\d+)", owner).group(1))
        assert ds.num_nodes == n_cells and list(ds.cells) == ["line"]
        n_internal = int(re.search(r"nInternalFaces:\s*(\d+)", owner).group(1))
        assert len(ds.cells["line"]) == n_internal          # one edge per internal face
        for d in times:
            k = int(np.argmin(np.abs(ds.times("0") - float(d.name))))
            np.testing.assert_allclose(ds.read("0", "s", k)[:, 0], internal_field(d / "s"), rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(ds.read("0", "U", k), internal_field(d / "U"), rtol=1e-6, atol=1e-7)
        counts = ds.node_type_counts()
        assert counts["inlet"] > 0 and counts["obstacle"] > 0


def test_openfoam_dataset_trains_and_rolls_out(generated, tmp_path):
    from meshgnn.io.dataset import Dataset
    from meshgnn.io.importers.samples import train_and_roll_out

    out, _ = generated
    ro = train_and_roll_out(out, tmp_path)
    with Dataset(out) as ds:
        assert ro["steps"] == ds.num_steps(ro["trajectory"]) - 1
        assert all(np.isfinite(ro["rmse"][n]["all"]) for n in ds.state_fields)


@pytest.mark.slow
def test_parallel_run_matches_serial(generated, tmp_path):
    """decomposePar (simple) + mpirun -np 2 icoFoam -parallel + reconstructPar gives the serial solution up to
    the linear-solver tolerance; a run with another inlet velocity does not (negative control)."""
    from meshgnn.io.importers import build_options, import_series
    from meshgnn.io.dataset import Dataset

    _, work = generated
    serial = work / "case_001"
    par = tmp_path / "par"
    shutil.copytree(serial / "system", par / "system")
    shutil.copytree(serial / "constant", par / "constant")
    shutil.copytree(serial / "0", par / "0")
    of.solve(par, parallel=2)
    assert (par / "processor1").is_dir()
    out = tmp_path / "two.h5"
    import_series([str(serial), str(par), str(work / "case_000")], out, build_options(), report=lambda s: None)
    with Dataset(out) as ds:
        for f in ("U", "s"):
            a, b, c = (ds.read(t, f, STEPS) for t in ("0", "1", "2"))
            scale = np.abs(a).max()
            assert np.abs(a - b).max() < 1e-2 * scale
            assert np.abs(a - c).max() > 10 * np.abs(a - b).max()

    # The decomposed case alone (no reconstructPar): processor copies of points are merged, so the mesh, its
    # edges and node types equal the reconstructed ones; values agree exactly away from processor boundaries.
    dec = tmp_path / "dec"
    for d in ("system", "constant", "0", "processor0", "processor1"):
        shutil.copytree(par / d, dec / d)
    out_dec, out_rec = tmp_path / "dec.h5", tmp_path / "rec.h5"
    import_series([str(dec)], out_dec, build_options(), report=lambda s: None)
    import_series([str(par)], out_rec, build_options(), report=lambda s: None)
    from scipy.spatial import cKDTree
    with Dataset(out_dec) as a, Dataset(out_rec) as b:
        assert a.provenance["format"] == "openfoam" and a.num_nodes == b.num_nodes
        dist, idx = cKDTree(b.points).query(a.points)
        assert dist.max() == 0 and len(np.unique(idx)) == b.num_nodes
        np.testing.assert_array_equal(a.node_type, b.node_type[idx])
        ea, eb = a.edge_index(), b.edge_index()
        assert ea.shape == eb.shape
        assert set(map(tuple, idx[ea].T.tolist())) == set(map(tuple, eb.T.tolist()))
        err = np.abs(a.read("0", "U", STEPS) - b.read("0", "U", STEPS)[idx]).max(1)
        assert (err < 1e-6).mean() > 0.8
