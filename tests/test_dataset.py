"""Dataset HDF5 format: writer/reader round trip, lazy partial reads, atomic writes, validation errors."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from meshgnn.errors import InputError, MeshgnnError
from meshgnn.graph import edges_from_cells
from meshgnn.io.dataset import NODE_TYPES, SCHEMA_VERSION, Dataset, DatasetWriter, FieldSpec

FIELDS = [FieldSpec("co2", "state", 1, "mol/m^3"), FieldSpec("vel", "static", 3, "m/s"),
          FieldSpec("uv", "state", 2, "m/s")]


def _mesh(n=300, m=900, seed=0):
    rng = np.random.default_rng(seed)
    points = rng.random((n, 3))
    tets = np.stack([rng.choice(n, 4, replace=False) for _ in range(m)])
    node_type = rng.integers(0, len(NODE_TYPES), n).astype(np.int8)
    return points, {"tetra": tets}, node_type


def _write(path, n=300, steps=4, trajs=("a", "b"), chunk_nodes=None, seed=0):
    points, cells, nt = _mesh(n, seed=seed)
    rng = np.random.default_rng(seed + 1)
    data = {}
    with DatasetWriter(path, points, cells, nt, NODE_TYPES, 0.25, FIELDS, dirichlet_types=["inlet"],
                       provenance={"solver_seconds_per_step": 1.5}) as w:
        for t in trajs:
            vel = rng.random((n, 3))
            w.add_trajectory(t, steps, parameters={"inlet_velocity": 0.1, "tag": t}, static={"vel": vel})
            co2, uv = rng.random((steps, n, 1)), rng.random((steps, n, 2))
            for s in range(steps):
                w.write_step(t, s, 0.25 * s, {"co2": co2[s], "uv": uv[s]})
            data[t] = (co2.astype(np.float32), uv.astype(np.float32), vel.astype(np.float32))
    return points, cells, nt, data


def test_round_trip(tmp_path):
    path = tmp_path / "d.h5"
    points, cells, nt, data = _write(path)
    with Dataset(path) as ds:
        assert ds.num_nodes == 300
        np.testing.assert_array_equal(ds.points, points)
        np.testing.assert_array_equal(ds.cells["tetra"], cells["tetra"])
        np.testing.assert_array_equal(ds.node_type, nt)
        assert ds.node_type_names == list(NODE_TYPES)
        assert ds.dt == 0.25 and ds.dirichlet_types == ["inlet"]
        assert ds.state_fields == ["co2", "uv"] and ds.static_fields == ["vel"]
        assert ds.fields["uv"] == FIELDS[2]
        assert ds.trajectories == ["a", "b"]
        assert ds.num_steps("a") == 4
        np.testing.assert_allclose(ds.times("b"), 0.25 * np.arange(4))
        assert ds.parameters("b") == {"inlet_velocity": 0.1, "tag": "b"}
        assert ds.provenance == {"solver_seconds_per_step": 1.5}
        for t, (co2, uv, vel) in data.items():
            for s in range(4):
                np.testing.assert_array_equal(ds.read(t, "co2", s), co2[s])
                np.testing.assert_array_equal(ds.read_state(t, s), np.concatenate([co2[s], uv[s]], 1))
            np.testing.assert_array_equal(ds.read(t, "vel"), vel)
            np.testing.assert_array_equal(ds.read_static(t), vel)
        assert ds.read_state("a", 0).dtype == np.float32
        np.testing.assert_array_equal(ds.edge_index(), edges_from_cells(cells, 300))


def test_partial_reads_equal_subset_of_full(tmp_path, monkeypatch):
    import meshgnn.io.dataset as dsmod

    monkeypatch.setattr(dsmod, "CHUNK_NODES", 64)          # several node chunks on a small mesh
    path = tmp_path / "d.h5"
    _write(path, n=300)
    rng = np.random.default_rng(3)
    with Dataset(path) as ds:
        assert ds._f["/trajectories/a/fields/co2"].chunks == (1, 64, 1)
        full = ds.read_state("a", 2)
        for nodes in (np.arange(10, 200, 7), rng.permutation(300)[:50], np.array([299, 0, 5, 5, 64, 63]),
                      np.array([17])):
            np.testing.assert_array_equal(ds.read_state("a", 2, nodes=nodes), full[nodes])
            np.testing.assert_array_equal(ds.read_static("b", nodes=nodes), ds.read_static("b")[nodes])
        assert ds.read("a", "uv", 1, nodes=np.array([], dtype=np.int64)).shape == (0, 2)
        with pytest.raises(IndexError):
            ds.read("a", "co2", 1, nodes=[300])
        with pytest.raises(IndexError):
            ds.read("a", "co2", 4)


def test_one_step_read_touches_only_its_chunks(tmp_path, monkeypatch):
    """A one-step, few-node read decompresses only the chunks holding those nodes of that step."""
    import meshgnn.io.dataset as dsmod

    monkeypatch.setattr(dsmod, "CHUNK_NODES", 50)
    path = tmp_path / "d.h5"
    _write(path, n=300, steps=6)
    with Dataset(path) as ds:
        dset = ds._f["/trajectories/a/fields/co2"]
        reads = []
        orig = type(dset).__getitem__

        def spy(self, key):
            reads.append(key)
            return orig(self, key)

        monkeypatch.setattr(type(dset), "__getitem__", spy)
        ds.read("a", "co2", 3, nodes=[5, 7, 120])
        spans = [(k[0], k[1].start, k[1].stop) for k in reads]
        assert spans == [(3, 5, 8), (3, 120, 121)]


def test_atomic_write_leaves_nothing_on_exception(tmp_path):
    path = tmp_path / "d.h5"
    points, cells, nt = _mesh(50, 100)
    with pytest.raises(RuntimeError):
        with DatasetWriter(path, points, cells, nt, NODE_TYPES, 1.0, FIELDS) as w:
            w.add_trajectory(0, 2, static={"vel": np.zeros((50, 3))})
            w.write_step(0, 0, 0.0, {"co2": np.zeros((50, 1)), "uv": np.zeros((50, 2))})
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []
    # an existing file is kept as it was
    _write(path, n=40, trajs=("x",))
    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        with DatasetWriter(path, points, cells, nt, NODE_TYPES, 1.0, FIELDS) as w:
            raise RuntimeError("crash")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["d.h5"]


def test_incomplete_trajectory_is_not_committed(tmp_path):
    path = tmp_path / "d.h5"
    points, cells, nt = _mesh(50, 100)
    with pytest.raises(MeshgnnError, match="never written"):
        with DatasetWriter(path, points, cells, nt, NODE_TYPES, 1.0, FIELDS) as w:
            w.add_trajectory(0, 3, static={"vel": np.zeros((50, 3))})
            w.write_step(0, 0, 0.0, {"co2": np.zeros((50, 1)), "uv": np.zeros((50, 2))})
    assert list(tmp_path.iterdir()) == []


def test_nan_on_write_names_traj_field_step_and_count(tmp_path):
    path = tmp_path / "d.h5"
    points, cells, nt = _mesh(50, 100)
    bad = np.zeros((50, 2))
    bad[[3, 9, 11], 1] = [np.nan, np.inf, -np.inf]
    with pytest.raises(InputError) as e:
        with DatasetWriter(path, points, cells, nt, NODE_TYPES, 1.0, FIELDS) as w:
            w.add_trajectory("t7", 2, static={"vel": np.zeros((50, 3))})
            w.write_step("t7", 1, 1.0, {"co2": np.zeros((50, 1)), "uv": bad})
    msg = str(e.value)
    assert "/trajectories/t7/fields/uv" in msg and "step 1" in msg and "3 non-finite" in msg
    assert not path.exists()


# ------------------------------------------------------------------ validation of crafted bad files
def _corrupt(path, edit):
    with h5py.File(path, "r+") as f:
        edit(f)


def _replace(f, where, data):
    del f[where]
    f.create_dataset(where, data=data)


CASES = {
    "schema": (lambda f: f.attrs.__setitem__("schema_version", 99), "/@schema_version", "expected 1"),
    "no_points": (lambda f: f.__delitem__("/mesh/points"), "/mesh/points", "missing dataset"),
    "no_mesh": (lambda f: f.__delitem__("/mesh"), "/mesh", "missing group"),
    "points_shape": (lambda f: _replace(f, "/mesh/points", np.zeros((300, 4))), "/mesh/points",
                     "expected shape (N, 3), or (N, 2) for a 2-D mesh, got (300, 4)"),
    "flat_tets": (lambda f: (_replace(f, "/mesh/points", np.zeros((300, 2))), f["/mesh"].attrs.__setitem__("dim", 2)),
                  "/mesh/cells/tetra", "volume cells need 3-D points"),
    "dim_attr": (lambda f: f["/mesh"].attrs.__setitem__("dim", 2), "/mesh@dim", "expected 3 like /mesh/points"),
    "node_type_len": (lambda f: (_replace(f, "/mesh/node_type", np.zeros(299, np.int8)),
                                 f["/mesh/node_type"].attrs.__setitem__("names", json.dumps(list(NODE_TYPES)))),
                      "/mesh/node_type", "expected shape (300,)"),
    "bad_cells": (lambda f: _replace(f, "/mesh/cells/tetra", np.array([[0, 1, 2, 300], [0, 1, 2, -1]])),
                  "/mesh/cells/tetra", "found 2 outside"),
    "cell_width": (lambda f: _replace(f, "/mesh/cells/tetra", np.zeros((3, 3), np.int64)),
                   "/mesh/cells/tetra", "expected shape (M, 4)"),
    "field_shape": (lambda f: _replace(f, "/trajectories/b/fields/uv", np.zeros((4, 300, 3), np.float32)),
                    "/trajectories/b/fields/uv", "expected shape (T, N, C) = (4, 300, 2)"),
    "field_nodes": (lambda f: _replace(f, "/trajectories/a/fields/vel", np.zeros((301, 3), np.float32)),
                    "/trajectories/a/fields/vel", "expected shape (N, C) = (300, 3)"),
    "time_len": (lambda f: _replace(f, "/trajectories/a/time", np.zeros(5)),
                 "/trajectories/a/fields/co2", "(5, 300, 1)"),
    "no_field": (lambda f: f.__delitem__("/trajectories/a/fields/co2"), "/trajectories/a/fields/co2",
                 "missing dataset"),
    "no_time": (lambda f: f.__delitem__("/trajectories/b/time"), "/trajectories/b/time", "missing dataset"),
    "no_trajectories": (lambda f: f.__delitem__("/trajectories"), "/trajectories", "missing group"),
    "fields_json": (lambda f: f.attrs.__setitem__("fields", "not json"), "/@fields", "expected a JSON"),
    "dirichlet": (lambda f: f.attrs.__setitem__("dirichlet_types", '["nozzle"]'), "/@dirichlet_types",
                  "expected names from"),
    "no_dt": (lambda f: f.attrs.__delitem__("dt"), "/@dt", "missing attribute"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_validation_errors(tmp_path, case):
    edit, where, expected = CASES[case]
    path = tmp_path / "d.h5"
    _write(path)
    _corrupt(path, edit)
    with pytest.raises(InputError) as e:
        Dataset(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: {where}: "), msg
    assert expected in msg and "\n" not in msg


def test_missing_and_non_hdf5_files(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        Dataset(tmp_path / "nope.h5")
    txt = tmp_path / "x.h5"
    txt.write_text("hello")
    with pytest.raises(InputError, match="not an HDF5 file"):
        Dataset(txt)


def test_schema_version_constant_is_written(tmp_path):
    path = tmp_path / "d.h5"
    _write(path, trajs=("0",))
    with h5py.File(path) as f:
        assert int(f.attrs["schema_version"]) == SCHEMA_VERSION
        assert f["/trajectories/0/fields/co2"].dtype == np.float32
        assert f["/mesh/edges"].shape[0] == 2


def test_info_command_prints_summary(tmp_path, capsys):
    from meshgnn.cli import main

    path = tmp_path / "d.h5"
    _write(path)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "300 nodes" in out and "co2" in out and "solver_seconds_per_step = 1.5" in out
    assert main(["info", str(tmp_path / "missing.h5")]) == 2
