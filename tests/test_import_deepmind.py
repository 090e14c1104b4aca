"""`meshgnn import --format deepmind`: DeepMind MeshGraphNets datasets (meta.json + <split>.tfrecord) written here in
DeepMind's schema with the `tfrecord` package's own writer (one tf.train.Example per trajectory, every field the raw
bytes of its array, shapes in meta.json), imported, checked value by value, trained and rolled out; damaged files
and records give one-line errors naming the file and the record."""
from __future__ import annotations

import json

import numpy as np
import pytest
import pyvista as pv

from meshgnn.cli import main
from meshgnn.errors import InputError
from meshgnn.io.dataset import Dataset
from meshgnn.io.importers import build_options
from meshgnn.io.importers.deepmind import NODE_TYPE_NAMES, import_deepmind
from meshgnn.io.importers.samples import train_and_roll_out
from meshgnn.meshes import box_tets, rect_triangles

NORMAL, OBSTACLE, AIRFOIL, HANDLE, INFLOW, OUTFLOW, WALL = range(7)   # DeepMind's NodeType


def write_split(folder, split, features: dict, trajectories: list[dict], dt=None, length=None):
    """A DeepMind dataset split: ``meta.json`` (``features`` = {name: (type, shape, dtype)}) and
    ``<split>.tfrecord`` with one record per trajectory ({name: array, or a list of per-step arrays for
    dynamic_varlen fields})."""
    from tfrecord.writer import TFRecordWriter

    folder.mkdir(parents=True, exist_ok=True)
    meta = {"simulator": "test", "field_names": list(features),
            "features": {k: {"type": t, "shape": list(s), "dtype": d} for k, (t, s, d) in features.items()}}
    if length is not None:
        meta["trajectory_length"] = length
    if dt is not None:
        meta["dt"] = dt
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))
    w = TFRecordWriter(str(folder / f"{split}.tfrecord"))
    for traj in trajectories:
        datum = {}
        for name, (kind, _, dtype) in features.items():
            v = traj[name]
            if kind == "dynamic_varlen":
                datum[f"length_{name}"] = (np.array([len(s) for s in v], "<i4").tobytes(), "byte")
                v = np.concatenate(v)
            datum[name] = (np.ascontiguousarray(v, dtype=np.dtype(dtype).newbyteorder("<")).tobytes(), "byte")
        w.write(datum)
    w.close()
    return folder


# -------------------------------------------------------------------------------------------- cylinder_flow-like 2-D
CYL_T, CYL_DT = 5, 0.01
CYL_FEATURES = {"cells": ("static", (1, -1, 3), "int32"), "mesh_pos": ("static", (1, -1, 2), "float32"),
                "node_type": ("static", (1, -1, 1), "int32"),
                "velocity": ("dynamic", (CYL_T, -1, 2), "float32"), "pressure": ("dynamic", (CYL_T, -1, 1), "float32")}


def cylinder_like(amplitude: float, mesh=None):
    pts, tri = mesh or rect_triangles(9, 6, size=(1.6, 0.4))
    x, y = pts.T
    nt = np.full(len(pts), NORMAL)
    nt[np.isclose(y, 0) | np.isclose(y, y.max())] = WALL
    nt[np.hypot(x - 0.4, y - 0.2) < 0.09] = WALL                    # the "cylinder": interior wall nodes
    nt[np.isclose(x, x.max())] = OUTFLOW
    nt[np.isclose(x, 0)] = INFLOW
    t = CYL_DT * np.arange(CYL_T)[:, None]
    u = amplitude * 4 * y * (0.4 - y) / 0.16 * (1 + 0.1 * np.sin(2 * np.pi * (x - t)))
    vel = np.stack([u, 0.05 * np.cos(np.pi * x + t) * np.ones_like(u)], axis=-1)
    p = (amplitude * (1.6 - x) + t)[..., None]
    return {"cells": tri[None], "mesh_pos": pts[None], "node_type": nt[None, :, None], "velocity": vel,
            "pressure": p}


@pytest.fixture
def cylinder(tmp_path):
    trajs = [cylinder_like(a) for a in (1.0, 1.5, 2.0)]
    return write_split(tmp_path / "cylinder_flow", "train", CYL_FEATURES, trajs, dt=CYL_DT, length=CYL_T), trajs


def _run(*argv):
    return main(["import", *map(str, argv), "--no-progress"])


def test_cylinder_flow_like_2d_imports_exactly(cylinder, tmp_path):
    folder, trajs = cylinder
    out = tmp_path / "cyl.h5"
    assert _run(folder, out, "--limit", "2") == 0             # auto-detected by meta.json
    with Dataset(out) as ds:
        assert ds.dim == 2 and ds.points.shape == (54, 2) and ds.trajectories == ["0", "1"]
        np.testing.assert_array_equal(ds.points, trajs[0]["mesh_pos"][0].astype(np.float32))
        np.testing.assert_array_equal(ds.cells["triangle"], trajs[0]["cells"][0])
        assert ds.node_type_names == list(NODE_TYPE_NAMES)
        want = np.array(["interior", "obstacle", "airfoil", "handle", "inlet", "outlet", "wall"])
        assert list(np.asarray(ds.node_type_names)[ds.node_type]) == list(want[trajs[0]["node_type"][0, :, 0]])
        assert ds.state_fields == ["velocity", "pressure"] and ds.dt == pytest.approx(CYL_DT)
        assert set(ds.dirichlet_types) == {"inlet", "wall", "obstacle", "airfoil", "handle"}
        for i, tid in enumerate(ds.trajectories):
            np.testing.assert_allclose(ds.times(tid), CYL_DT * np.arange(CYL_T), atol=1e-12)
            assert ds.parameters(tid)["record"] == i
            for k in range(CYL_T):
                np.testing.assert_array_equal(ds.read(tid, "velocity", k), trajs[i]["velocity"][k].astype(np.float32))
                np.testing.assert_array_equal(ds.read(tid, "pressure", k), trajs[i]["pressure"][k].astype(np.float32))
        assert ds.provenance["format"] == "deepmind"


def test_cylinder_flow_like_trains_and_rolls_out_to_vtu(cylinder, tmp_path):
    folder, trajs = cylinder
    out = tmp_path / "cyl.h5"
    import_deepmind(folder, out, build_options(state="velocity,pressure"), report=lambda s: None)
    ro = train_and_roll_out(out, tmp_path, steps=3)
    assert np.isfinite(ro["rmse"]["velocity"]["all"])
    last = pv.read(sorted((tmp_path / "rollout").glob("rollout_*.vtu"))[-1])        # VTK's reader, as ParaView
    assert last.points.shape == (54, 3) and np.all(last.points[:, 2] == 0)        # 2-D mesh, z = 0 in VTK
    np.testing.assert_allclose(last.points[:, :2], trajs[0]["mesh_pos"][0], rtol=1e-6)
    assert last.point_data["velocity"].shape == (54, 2)


def test_skip_limit_state_and_ids(cylinder, tmp_path):
    folder, trajs = cylinder
    out = tmp_path / "one.h5"
    assert _run(folder / "train.tfrecord", out, "--format", "deepmind", "--skip", "2", "--limit", "5",
                "--state", "pressure", "--static", "velocity", "--trajectory", "c") == 0
    with Dataset(out) as ds:
        assert ds.trajectories == ["c"] and ds.state_fields == ["pressure"] and ds.static_fields == ["velocity"]
        np.testing.assert_array_equal(ds.read("c", "velocity"), trajs[2]["velocity"][0].astype(np.float32))
        np.testing.assert_array_equal(ds.read("c", "pressure", 4), trajs[2]["pressure"][4].astype(np.float32))
    with pytest.raises(InputError, match=r"train\.tfrecord: record 3: no such record \(the file holds fewer than 4\)"):
        import_deepmind(folder, tmp_path / "none.h5", build_options(), skip=3, report=lambda s: None)


def test_records_with_different_meshes_are_refused_then_imported_one_by_one(tmp_path):
    other = rect_triangles(9, 6, size=(1.6, 0.5))
    folder = write_split(tmp_path / "d", "valid", CYL_FEATURES, [cylinder_like(1.0), cylinder_like(1.0, other)],
                         dt=CYL_DT)
    with pytest.raises(InputError, match=r"valid\.tfrecord: record 1/mesh_pos: differs from record 0.*--skip 1"):
        import_deepmind(folder, tmp_path / "x.h5", build_options(), split="valid", report=lambda s: None)
    assert not (tmp_path / "x.h5").exists()
    import_deepmind(folder, tmp_path / "x.h5", build_options(), split="valid", skip=1, limit=1,
                    report=lambda s: None)
    with Dataset(tmp_path / "x.h5") as ds:
        np.testing.assert_allclose(ds.points, other[0], rtol=1e-6)


# ------------------------------------------------------------------------------------------ deforming_plate-like 3-D
PLATE_T = 4
PLATE_FEATURES = {"cells": ("static", (1, -1, 4), "int32"), "mesh_pos": ("static", (1, -1, 3), "float32"),
                  "node_type": ("static", (1, -1, 1), "int32"),
                  "world_pos": ("dynamic", (PLATE_T, -1, 3), "float32"),
                  "stress": ("dynamic", (PLATE_T, -1, 1), "float32"),
                  "contact": ("dynamic_varlen", (-1, 2), "int32")}


def plate_like(seed: int):
    pts, tets = box_tets(5, 3, 3, size=(1.0, 0.3, 0.1))
    tets = tets.copy()
    tets[::3] = tets[::3][:, [1, 0, 2, 3]]                 # a third of the tets in the other orientation
    x = pts[:, 0]
    nt = np.full(len(pts), NORMAL)
    nt[np.isclose(x, 0)] = HANDLE
    nt[np.isclose(x, 1) & np.isclose(pts[:, 2], 0.1)] = OBSTACLE
    t = np.arange(PLATE_T)[:, None, None]
    world = pts[None] + 0.01 * (seed + 1) * t * np.stack([np.zeros_like(x), np.zeros_like(x), x ** 2], -1)
    stress = (1e3 * (seed + 1) * t[..., 0] * (1 - x))[..., None]
    contact = [np.arange(2 * (k + 1), dtype=np.int32).reshape(-1, 2) for k in range(PLATE_T)]   # varying rows
    return {"cells": tets[None], "mesh_pos": pts[None], "node_type": nt[None, :, None], "world_pos": world,
            "stress": stress, "contact": contact}


def test_deforming_plate_like_3d_imports_trains_and_rolls_out(tmp_path):
    trajs = [plate_like(s) for s in range(3)]
    folder = write_split(tmp_path / "deforming_plate", "test", PLATE_FEATURES, trajs, length=PLATE_T)
    out = tmp_path / "plate.h5"
    with pytest.raises(InputError, match=r"meta\.json: dt: meta.json has no dt; give the time step with --dt"):
        import_deepmind(folder, out, build_options(), split="test", report=lambda s: None)
    lines = []
    import_deepmind(folder, out, build_options(dt=0.5, units="stress=Pa"), split="test", report=lines.append)
    assert any("tetrahedra reordered" in s for s in lines)
    assert any("not imported: contact (varying rows, not per node)" in s for s in lines)
    with Dataset(out) as ds:
        assert ds.dim == 3 and ds.state_fields == ["world_pos", "stress"] and ds.fields["stress"].units == "Pa"
        assert ds.dt == 0.5 and len(ds.trajectories) == 3
        tets = ds.cells["tetra"]
        p = ds.points
        vol = np.einsum("ij,ij->i", np.cross(p[tets[:, 1]] - p[tets[:, 0]], p[tets[:, 2]] - p[tets[:, 0]]),
                        p[tets[:, 3]] - p[tets[:, 0]])
        assert np.all(vol > 0)                                      # VTK orientation after the import
        np.testing.assert_array_equal(np.sort(tets, axis=1), np.sort(trajs[0]["cells"][0], axis=1))
        counts = ds.node_type_counts()
        assert counts["handle"] == int((trajs[0]["node_type"] == HANDLE).sum()) > 0
        assert counts["obstacle"] == int((trajs[0]["node_type"] == OBSTACLE).sum()) > 0
        np.testing.assert_array_equal(ds.read("2", "world_pos", 3), trajs[2]["world_pos"][3].astype(np.float32))
    ro = train_and_roll_out(out, tmp_path, steps=2)
    assert np.isfinite(ro["rmse"]["world_pos"]["all"])
    with pytest.raises(InputError, match=r"contact: not a per-node float field"):
        import_deepmind(folder, tmp_path / "y.h5", build_options(dt=1.0, state="contact"), split="test",
                        report=lambda s: None)


def test_dynamic_varlen_field_with_fixed_rows_is_a_state_field(tmp_path):
    pts, tri = rect_triangles(4, 3)
    feats = {"cells": ("static", (1, -1, 3), "int32"), "mesh_pos": ("static", (1, -1, 2), "float32"),
             "h": ("dynamic_varlen", (-1, 1), "float32")}
    h = [np.full((len(pts), 1), k, np.float32) for k in range(3)]
    folder = write_split(tmp_path / "v", "train", feats, [{"cells": tri[None], "mesh_pos": pts[None], "h": h}],
                         dt=1.0)
    import_deepmind(folder, tmp_path / "v.h5", build_options(), report=lambda s: None)
    with Dataset(tmp_path / "v.h5") as ds:
        assert ds.state_fields == ["h"] and ds.node_type_counts()["interior"] == len(pts)
        assert [float(ds.read("0", "h", k)[0, 0]) for k in range(3)] == [0.0, 1.0, 2.0]


# ------------------------------------------------------------------------------------------------ damaged inputs
def _cli_error(capsys, *argv) -> str:
    assert _run(*argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()      # the report of record 0 may come first
    assert lines[-1].startswith("meshgnn import: error: ") and "Traceback" not in "".join(lines), lines
    return lines[-1]


def test_corrupt_record_names_file_and_record(cylinder, tmp_path, capsys):
    folder, _ = cylinder
    f = folder / "train.tfrecord"
    data = bytearray(f.read_bytes())
    first = int.from_bytes(data[:8], "little") + 16                 # the second record starts here
    data[first + 12 + 40] ^= 0xFF                                   # one payload byte of record 1
    f.write_bytes(bytes(data))
    out = tmp_path / "bad.h5"
    err = _cli_error(capsys, folder, out)
    assert "train.tfrecord: record 1: corrupt: payload checksum mismatch" in err
    assert not out.exists()                                         # nothing half-written is left
    assert _run(folder, out, "--limit", "1") == 0                   # record 0 is intact


def test_truncated_file_and_bad_meta_and_wrong_sizes(cylinder, tmp_path, capsys):
    folder, trajs = cylinder
    f = folder / "train.tfrecord"
    whole = f.read_bytes()
    f.write_bytes(whole[:-100])
    assert "train.tfrecord: record 2: truncated" in _cli_error(capsys, folder, tmp_path / "a.h5")
    f.write_bytes(whole)
    meta = json.loads((folder / "meta.json").read_text())
    meta["features"]["velocity"]["dtype"] = "complex64"
    (folder / "meta.json").write_text(json.dumps(meta))
    assert "meta.json: features/velocity/dtype: expected one of" in _cli_error(capsys, folder, tmp_path / "b.h5")
    meta["features"]["velocity"]["dtype"] = "float32"
    meta["features"]["velocity"]["shape"] = [CYL_T, -1, 7]           # 540 values: no whole rows
    (folder / "meta.json").write_text(json.dumps(meta))
    err = _cli_error(capsys, folder, tmp_path / "c.h5")
    assert "train.tfrecord: record 0/velocity: 540 float32 values do not fit shape [5, -1, 7]" in err
    assert "valid.tfrecord: no such split file (splits here: train)" in _cli_error(
        capsys, folder, tmp_path / "d.h5", "--split", "valid")


def test_unknown_node_type_code_and_override(tmp_path, capsys):
    traj = cylinder_like(1.0)
    traj["node_type"] = traj["node_type"].copy()
    traj["node_type"][0, 7, 0] = 9
    folder = write_split(tmp_path / "n", "train", CYL_FEATURES, [traj], dt=CYL_DT)
    err = _cli_error(capsys, folder, tmp_path / "n.h5")
    assert "record 0/node_type: node 7 has code 9, not a DeepMind NodeType" in err
    assert _run(folder, tmp_path / "n.h5", "--node-types", "9=obstacle") == 0
    with Dataset(tmp_path / "n.h5") as ds:
        assert ds.node_type_names[ds.node_type[7]] == "obstacle"


def test_nan_in_a_step_is_named(tmp_path):
    traj = cylinder_like(1.0)
    traj["pressure"] = traj["pressure"].copy()
    traj["pressure"][3, [5, 9]] = np.nan
    folder = write_split(tmp_path / "nan", "train", CYL_FEATURES, [traj], dt=CYL_DT)
    with pytest.raises(InputError, match=r"record 0: pressure: 2 nodes hold NaN/Inf values at time 0\.03 \(step 3\); "
                                         r"first: node 5"):
        import_deepmind(folder, tmp_path / "nan.h5", build_options(), report=lambda s: None)
    assert not (tmp_path / "nan.h5").exists()


def test_missing_tfrecord_package_is_a_one_line_error(cylinder, tmp_path, capsys, monkeypatch):
    folder, _ = cylinder
    for name in ("tfrecord", "tfrecord.writer", "tfrecord.example_pb2"):
        monkeypatch.setitem(__import__("sys").modules, name, None)      # as if not installed
    assert "needs the 'tfrecord' package" in _cli_error(capsys, folder, tmp_path / "m.h5")
