"""ParaView output: .pvd/.vtu series read back by meshio and pyvista, stride, atomicity, .pvtu pieces, VTKHDF."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest

from meshgnn.errors import MeshgnnError
from meshgnn.io.vtk import PartitionedRolloutWriter, RolloutWriter, cell_piece, read_pvd
from meshgnn.meshes import box_tets

UNITS = {"co2": "mol/m^3", "u": "m/s"}


@pytest.fixture(scope="module")
def mesh():
    pts, tets = box_tets(4, 3, 5)
    return pts, tets


def frame(pts, step):
    """Distinct per-step fields: scalar co2 (N,), vector u (N, 3) float32."""
    x, y, z = pts.T
    co2 = (np.sin(3 * x + step) + z * step).astype(np.float32)
    u = np.stack([x * step, y - step, z + 0.5 * step], 1).astype(np.float32)
    return {"co2": co2, "u": u}


def times(k):
    return 0.25 * k + 0.1


def write_series(out, pts, tets, steps, **kw):
    N = len(pts)
    with RolloutWriter(out, pts, {"tetra": tets}, units=UNITS,
                       static_point_data={"node_type": (np.arange(N) % 5).astype(np.int32)}, **kw) as w:
        written = [k for k in range(steps) if w.write_step(k, times(k), frame(pts, k))]
    return w, written


def pvd_steps(path):
    return [int(f.stem.rsplit("_", 1)[1]) for _, f in read_pvd(path)]


def test_series_reads_back_with_meshio_and_pyvista(tmp_path, mesh):
    import meshio
    import pyvista as pv
    import vtk

    pts, tets = mesh
    N = len(pts)
    write_series(tmp_path, pts, tets, 4)
    pvd = tmp_path / "rollout.pvd"
    root = ET.parse(pvd).getroot()
    assert root.get("type") == "Collection"
    np.testing.assert_allclose([float(d.get("timestep")) for d in root.iter("DataSet")], [times(k) for k in range(4)])
    reader = pv.get_reader(str(pvd))
    np.testing.assert_allclose(reader.time_values, [times(k) for k in range(4)])
    for k in range(4):
        ref = frame(pts, k)
        m = meshio.read(tmp_path / f"rollout_{k:05d}.vtu")
        assert m.points.shape == (N, 3)
        np.testing.assert_array_equal(m.points, pts)
        np.testing.assert_array_equal(m.cells_dict["tetra"], tets)
        assert set(m.point_data) == {"node_type", "co2", "u"}
        assert m.point_data["co2"].shape == (N,) and m.point_data["u"].shape == (N, 3)
        np.testing.assert_array_equal(m.point_data["co2"], ref["co2"])
        np.testing.assert_array_equal(m.point_data["u"], ref["u"])
        np.testing.assert_array_equal(m.point_data["node_type"], np.arange(N) % 5)

        reader.set_active_time_value(times(k))
        g = reader.read()[0]
        assert g.n_points == N and g.n_cells == len(tets)
        np.testing.assert_array_equal(g.point_data["co2"], ref["co2"])
        np.testing.assert_array_equal(g.point_data["u"], ref["u"])
        np.testing.assert_array_equal(g.cells_dict[10], tets)
        for name, unit in UNITS.items():
            info = g.GetPointData().GetArray(name).GetInformation()
            assert info.Get(vtk.vtkDataArray.UNITS_LABEL()) == unit


def test_mixed_cell_types_round_trip(tmp_path):
    import meshio

    pts = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1],
                    [0.5, 0.5, 2.0]], float)
    cells = {"hexahedron": np.arange(8)[None], "pyramid": np.array([[4, 5, 6, 7, 8]]),
             "triangle": np.array([[0, 1, 2], [0, 2, 3]]), "tetra": np.array([[0, 1, 3, 4]])}
    with RolloutWriter(tmp_path, pts, cells) as w:
        w.write_step(0, 0.0, {"f": np.arange(9.0)})
    m = meshio.read(tmp_path / "rollout_00000.vtu")
    got = {c.type: c.data for c in m.cells}
    assert set(got) == set(cells)
    for t, c in cells.items():
        np.testing.assert_array_equal(got[t], c)


@pytest.mark.parametrize("kw, expected", [
    (dict(every=3), [0, 3, 6, 7]),                         # last skipped step kept and flushed by close()
    (dict(every=3, keep_last=False), [0, 3, 6]),
    (dict(every=3, final_step=7, keep_last=False), [0, 3, 6, 7]),
    (dict(every=4), [0, 4, 7]),
    (dict(every=1), list(range(8))),
])
def test_every_stride(tmp_path, mesh, kw, expected):
    import meshio

    pts, tets = mesh
    write_series(tmp_path, pts, tets, 8, **kw)
    assert pvd_steps(tmp_path / "rollout.pvd") == expected
    assert sorted(int(p.stem.split("_")[1]) for p in tmp_path.glob("rollout_*.vtu")) == expected
    # the flushed last frame holds that step's values, not the previous written one's
    m = meshio.read(tmp_path / f"rollout_{expected[-1]:05d}.vtu")
    np.testing.assert_array_equal(m.point_data["co2"], frame(pts, expected[-1])["co2"])


def test_last_flag_writes_a_skipped_step(tmp_path, mesh):
    pts, tets = mesh
    with RolloutWriter(tmp_path, pts, {"tetra": tets}, every=10, keep_last=False) as w:
        for k in range(6):
            w.write_step(k, times(k), frame(pts, k), last=(k == 5))
    assert pvd_steps(tmp_path / "rollout.pvd") == [0, 5]


def test_interrupted_series_lists_only_complete_steps(tmp_path, mesh):
    import pyvista as pv

    pts, tets = mesh
    with pytest.raises(RuntimeError):
        with RolloutWriter(tmp_path, pts, {"tetra": tets}, every=2) as w:
            for k in range(10):
                if k == 5:
                    raise RuntimeError("model blew up")
                w.write_step(k, times(k), frame(pts, k))
    assert pvd_steps(tmp_path / "rollout.pvd") == [0, 2, 4]      # skipped step 3 is not flushed on error
    assert pv.get_reader(str(tmp_path / "rollout.pvd")).number_time_points == 3
    assert not list(tmp_path.glob(".*"))                          # no temp files left behind


def test_failure_inside_a_frame_leaves_no_partial_file(tmp_path, mesh):
    pts, tets = mesh
    w = RolloutWriter(tmp_path, pts, {"tetra": tets})
    w.write_step(0, 0.0, frame(pts, 0))
    with pytest.raises(MeshgnnError, match="co2"):
        w.write_step(1, 1.0, {"co2": np.zeros(len(pts) + 1, np.float32)})
    assert pvd_steps(tmp_path / "rollout.pvd") == [0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rollout.pvd", "rollout_00000.vtu"]


def test_bad_arguments_are_user_errors(tmp_path, mesh):
    pts, tets = mesh
    with pytest.raises(MeshgnnError, match="formats"):
        RolloutWriter(tmp_path, pts, {"tetra": tets}, formats=("xdmf",))
    with pytest.raises(MeshgnnError, match="node ids"):
        RolloutWriter(tmp_path, pts, {"tetra": tets + len(pts)})
    with pytest.raises(MeshgnnError, match="every"):
        RolloutWriter(tmp_path, pts, {"tetra": tets}, every=0)


def test_partitioned_pieces_equal_the_serial_output(tmp_path, mesh):
    import pyvista as pv

    pts, tets = mesh
    N, size = len(pts), 3
    owner = np.digitize(pts[:, 2], [0.3, 0.7]).astype(np.int32)     # three slabs along z
    serial = tmp_path / "serial"
    write_series(serial, pts, tets, 3)
    par = tmp_path / "par"
    for rank in reversed(range(size)):                               # rank 0 last: it waits for every piece
        ids, local, _ = cell_piece({"tetra": tets}, owner, rank)
        with PartitionedRolloutWriter(par, rank, size, pts[ids], local, global_ids=ids, units=UNITS,
                                      wait_timeout=5) as w:
            for k in range(3):
                w.write_step(k, times(k), {n: v[ids] for n, v in frame(pts, k).items()})
    np.testing.assert_allclose([t for t, _ in read_pvd(par / "rollout.pvd")], [times(k) for k in range(3)])
    assert [f.suffix for _, f in read_pvd(par / "rollout.pvd")] == [".pvtu"] * 3
    reader = pv.get_reader(str(par / "rollout.pvd"))
    for k in range(3):
        g = pv.read(par / f"rollout_{k:05d}.pvtu")
        assert g.n_cells == len(tets)                                 # every cell in exactly one piece
        assert sorted(np.unique(g.cell_data["part"])) == [0, 1, 2]
        gid = np.asarray(g.point_data["global_id"])
        assert set(gid) == set(range(N)) and g.n_points > N          # boundary points repeat across pieces
        np.testing.assert_array_equal(g.points, pts[gid])
        ref = pv.read(serial / f"rollout_{k:05d}.vtu")
        for name in ("co2", "u"):
            merged = np.zeros_like(np.asarray(ref.point_data[name]))
            merged[gid] = g.point_data[name]
            np.testing.assert_array_equal(merged, ref.point_data[name])
        got_cells = np.sort(gid[g.cells_dict[10]], axis=1)
        np.testing.assert_array_equal(np.unique(got_cells, axis=0), np.unique(np.sort(tets, axis=1), axis=0))
        reader.set_active_time_value(times(k))
        np.testing.assert_array_equal(reader.read()[0].point_data["co2"], g.point_data["co2"])


def test_partition_waits_for_missing_pieces(tmp_path, mesh):
    pts, tets = mesh
    owner = np.zeros(len(pts), np.int32)
    owner[len(pts) // 2:] = 1
    ids, local, _ = cell_piece({"tetra": tets}, owner, 0)
    w = PartitionedRolloutWriter(tmp_path, 0, 2, pts[ids], local, wait_timeout=0.2)
    with pytest.raises(MeshgnnError, match="p0001"):
        w.write_step(0, 0.0, {"co2": np.zeros(len(ids))})
    assert not (tmp_path / "rollout.pvd").exists()


def _vtkhdf_frames(path):
    import vtk
    from vtkmodules.util.numpy_support import vtk_to_numpy

    r = vtk.vtkHDFReader()
    r.SetFileName(str(path))
    r.UpdateInformation()
    info = r.GetOutputInformation(0)
    tkey = vtk.vtkStreamingDemandDrivenPipeline.TIME_STEPS()
    tvals = [info.Get(tkey, i) for i in range(info.Length(tkey))] if info.Has(tkey) else []
    frames = []
    for i in range(r.GetNumberOfSteps()):
        r.SetStep(i)
        r.Update()
        o = r.GetOutput()
        pd = o.GetPointData()
        frames.append(dict(n_points=o.GetNumberOfPoints(), n_cells=o.GetNumberOfCells(),
                           points=vtk_to_numpy(o.GetPoints().GetData()),
                           **{pd.GetArrayName(j): vtk_to_numpy(pd.GetArray(j)) for j in range(pd.GetNumberOfArrays())}))
    return r.GetNumberOfSteps(), tvals, frames


def test_vtkhdf_transient_series_reads_back_with_vtk(tmp_path, mesh):
    import h5py

    pts, tets = mesh
    N = len(pts)
    write_series(tmp_path, pts, tets, 7, formats=("pvd", "vtkhdf"), every=2)
    path = tmp_path / "rollout.vtkhdf"
    nsteps, tvals, frames = _vtkhdf_frames(path)
    steps = [0, 2, 4, 6]
    assert nsteps == len(steps) == len(frames)
    np.testing.assert_allclose(tvals, [times(k) for k in steps])
    for k, f in zip(steps, frames):
        assert f["n_points"] == N and f["n_cells"] == len(tets)
        np.testing.assert_array_equal(f["points"], pts)
        np.testing.assert_array_equal(f["co2"], frame(pts, k)["co2"])
        np.testing.assert_array_equal(f["u"], frame(pts, k)["u"])
        np.testing.assert_array_equal(f["node_type"], np.arange(N) % 5)
    with h5py.File(path) as h:                                     # the mesh is stored once
        assert h["VTKHDF/Points"].shape == (N, 3)
        assert h["VTKHDF/PointData/co2"].shape == (len(steps) * N,)
        assert h["VTKHDF/PointData/co2"].attrs["Units"] == "mol/m^3"


def test_vtkhdf_keeps_complete_steps_after_an_error(tmp_path, mesh):
    pts, tets = mesh
    with pytest.raises(RuntimeError):
        with RolloutWriter(tmp_path, pts, {"tetra": tets}, formats=("vtkhdf",)) as w:
            for k in range(5):
                if k == 3:
                    raise RuntimeError("stop")
                w.write_step(k, times(k), frame(pts, k))
    nsteps, tvals, frames = _vtkhdf_frames(tmp_path / "rollout.vtkhdf")
    assert nsteps == 3
    np.testing.assert_array_equal(frames[2]["co2"], frame(pts, 2)["co2"])
    assert not (tmp_path / "rollout.pvd").exists()                # pvd not asked for


def test_serial_writer_can_cut_frames_into_pvtu_pieces(tmp_path, mesh):
    import pyvista as pv

    pts, tets = mesh
    N = len(pts)
    part = np.digitize(pts[:, 0], [0.5]).astype(np.int32)
    cell_tag = np.arange(len(tets), dtype=np.int32)
    with RolloutWriter(tmp_path, pts, {"tetra": tets}, formats=("pvd", "pvtu"), static_point_data={"part": part},
                       static_cell_data={"tag": cell_tag}, every=2) as w:
        for k in range(4):
            w.write_step(k, times(k), frame(pts, k))
    assert pvd_steps(tmp_path / "rollout.pvd") == [0, 2, 3]
    entries = read_pvd(tmp_path / "rollout_pieces.pvd")
    assert [f.name for _, f in entries] == ["rollout_00000.pvtu", "rollout_00002.pvtu", "rollout_00003.pvtu"]
    g = pv.read(entries[-1][1])
    gid = np.asarray(g.point_data["global_id"])
    merged = np.zeros(N, np.float32)
    merged[gid] = g.point_data["co2"]
    np.testing.assert_array_equal(merged, frame(pts, 3)["co2"])
    assert sorted(g.cell_data["tag"]) == list(range(len(tets)))          # each cell once, its own data
    np.testing.assert_array_equal(np.sort(gid[g.cells_dict[10]], axis=1), np.sort(tets[g.cell_data["tag"]], axis=1))
    np.testing.assert_array_equal(g.cell_data["part"], part[tets[g.cell_data["tag"], 0]])
    with pytest.raises(MeshgnnError, match="part"):
        RolloutWriter(tmp_path / "x", pts, {"tetra": tets}, formats=("pvtu",))


MPI_WRITER = r'''
import sys
import numpy as np
from mpi4py import MPI
from meshgnn.io.vtk import PartitionedRolloutWriter, cell_piece
from meshgnn.meshes import box_tets
sys.path.insert(0, sys.argv[2])
from test_vtk import frame, times
comm = MPI.COMM_WORLD
pts, tets = box_tets(4, 3, 5)
owner = np.digitize(pts[:, 2], [0.3, 0.7]).astype(np.int32)
ids, local, _ = cell_piece({"tetra": tets}, owner, comm.rank)
with PartitionedRolloutWriter(sys.argv[1], comm.rank, comm.size, pts[ids], local, global_ids=ids,
                              barrier=comm.Barrier, every=2, wait_timeout=0) as w:
    for k in range(5):
        w.write_step(k, times(k), {n: v[ids] for n, v in frame(pts, k).items()})
print("OK", comm.rank)
'''


@pytest.mark.mpi
def test_partitioned_writer_under_mpirun(tmp_path, mesh):
    import os
    import subprocess
    import sys
    from pathlib import Path

    import pyvista as pv

    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here / "mpi_scripts"))
    from launch import REPO, require_mpirun

    script = tmp_path / "writer.py"
    script.write_text(MPI_WRITER)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    p = subprocess.run([require_mpirun(), "--allow-run-as-root", "--oversubscribe", "-n", "3", sys.executable,
                        str(script), str(tmp_path / "out"), str(here)], capture_output=True, text=True, env=env,
                       timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    entries = read_pvd(tmp_path / "out" / "rollout.pvd")
    assert [f.name for _, f in entries] == [f"rollout_{k:05d}.pvtu" for k in (0, 2, 4)]
    pts, tets = mesh
    g = pv.read(entries[-1][1])
    assert g.n_cells == len(tets) and sorted(np.unique(g.cell_data["part"])) == [0, 1, 2]
    merged = np.zeros(len(pts), np.float32)
    merged[g.point_data["global_id"]] = g.point_data["co2"]
    np.testing.assert_array_equal(merged, frame(pts, 4)["co2"])


def test_a_rerun_replaces_the_previous_series_only(tmp_path, mesh):
    pts, tets = mesh
    write_series(tmp_path, pts, tets, 6, formats=("pvd", "vtkhdf"))
    (tmp_path / "notes.txt").write_text("keep")
    (tmp_path / "rollout_final.vtu").write_text("not a frame name")
    (tmp_path / "other_00009.vtu").write_text("another series")
    write_series(tmp_path, pts, tets, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "notes.txt", "other_00009.vtu", "rollout.pvd", "rollout_00000.vtu", "rollout_00001.vtu", "rollout_final.vtu"]
