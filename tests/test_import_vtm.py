"""`meshgnn import` of multi-block series: a ParaView/VTK `.vtm.series` written with vtkXMLMultiBlockDataWriter
(pyvista.MultiBlock.save) and OpenFOAM foamToVTK's layout (internal.vtu + boundary/<patch>.vtp): times from the
series file, the internal mesh as nodes, boundary blocks as node types by their names."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from meshgnn.cli import main
from meshgnn.io.dataset import Dataset
from meshgnn.io.importers import detect_format
from meshgnn.io.importers.samples import box_tets, sample_fields

pv = pytest.importorskip("pyvista")
pytestmark = pytest.mark.filterwarnings("ignore:The default value of `algorithm`")

TIMES = [0.0, 0.25, 0.5, 0.75]
SIZE = (2.0, 0.5, 0.5)


def internal_grid(t):
    from meshgnn.render import mesh_from_arrays

    pts, tets = box_tets(8, 3, 3, size=SIZE)
    f = sample_fields(pts, t)
    return mesh_from_arrays(pts, {"tetra": tets}, {"U": f["U"], "p": f["p"]})


def patches(grid, keep_ids=False):
    """Boundary surfaces split by position: inlet x = 0, outlet x = max, walls the rest (with point data, as
    foamToVTK writes them)."""
    surf = grid.extract_surface()
    centres = surf.cell_centers().points
    out = {}
    for name, mask in (("inlet", centres[:, 0] < 1e-9), ("outlet", centres[:, 0] > SIZE[0] - 1e-9)):
        out[name] = surf.extract_cells(np.flatnonzero(mask)).extract_surface()
    other = ~((centres[:, 0] < 1e-9) | (centres[:, 0] > SIZE[0] - 1e-9))
    out["walls"] = surf.extract_cells(np.flatnonzero(other)).extract_surface()
    if not keep_ids:
        for p in out.values():
            for k in ("vtkOriginalPointIds", "vtkOriginalCellIds"):
                if k in p.point_data:
                    del p.point_data[k]
                if k in p.cell_data:
                    del p.cell_data[k]
    return out


def with_original_ids(grid, shift):
    """Patches carrying vtkOriginalPointIds into the internal mesh, moved by ``shift`` so that only the ids can
    match them."""
    surf = grid.extract_surface()
    centres = surf.cell_centers().points
    out = {}
    for name, mask in (("inlet", centres[:, 0] < 1e-9), ("outlet", centres[:, 0] > SIZE[0] - 1e-9)):
        sub = surf.extract_cells(np.flatnonzero(mask)).extract_surface()
        index = {tuple(np.round(q, 9)): i for i, q in enumerate(np.asarray(grid.points))}
        sub.point_data["vtkOriginalPointIds"] = np.array([index[tuple(np.round(q, 9))] for q in sub.points])
        out[name] = sub.translate((shift, 0, 0))
    return out


def write_paraview_series(folder, shift_outlet=0.0):
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k, t in enumerate(TIMES):
        grid = internal_grid(t)
        boundary = pv.MultiBlock()
        for name, p in patches(grid).items():
            if name == "outlet" and shift_outlet:
                p = p.translate((shift_outlet, 0, 0))
            boundary[name] = p
        mb = pv.MultiBlock()
        mb["internal"] = grid
        mb["boundary"] = boundary
        mb.save(folder / f"case_{k}.vtm")                 # vtkXMLMultiBlockDataWriter
        files.append({"name": f"case_{k}.vtm", "time": t})
    series = folder / "case.vtm.series"
    series.write_text(json.dumps({"file-series-version": "1.0", "files": files}))
    return series


def expected_types(pts, names):
    """inlet > outlet > wall on shared nodes (the default priority), interior inside."""
    x, y, z = pts.T
    code = np.full(len(pts), names.index("interior"))
    on_wall = (np.isclose(y, 0) | np.isclose(y, SIZE[1]) | np.isclose(z, 0) | np.isclose(z, SIZE[2]))
    code[on_wall] = names.index("wall")
    code[np.isclose(x, SIZE[0])] = names.index("outlet")
    code[np.isclose(x, 0)] = names.index("inlet")
    return code


def check_dataset(path, times):
    pts, _ = box_tets(8, 3, 3, size=SIZE)
    with Dataset(path) as ds:
        assert ds.num_nodes == len(pts)
        np.testing.assert_allclose(ds.points, pts, atol=1e-12)
        assert ds.state_fields == ["U", "p"]
        np.testing.assert_array_equal(ds.node_type, expected_types(pts, ds.node_type_names))
        (tid,) = ds.trajectories
        np.testing.assert_allclose(ds.times(tid), times, atol=1e-12)
        for k, t in enumerate(times):
            exact = sample_fields(pts, t)
            np.testing.assert_allclose(ds.read(tid, "U", k), exact["U"], rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(ds.read(tid, "p", k)[:, 0], exact["p"], rtol=1e-6, atol=1e-6)
        return dict(ds.provenance)


def test_vtm_series_import(tmp_path):
    series = write_paraview_series(tmp_path / "VTK")
    assert detect_format(str(series)) == "vtm"
    out = tmp_path / "flow.h5"
    assert main(["import", str(series), str(out), "--no-progress"]) == 0     # no --dt: times from the series
    prov = check_dataset(out, TIMES)
    assert prov["format"] == "vtm"
    # One .vtm file alone (one step) and a glob of them are detected by suffix too.
    assert detect_format(str(tmp_path / "VTK" / "case_0.vtm")) == "vtm"
    assert detect_format(str(tmp_path / "VTK" / "case_*.vtm")) == "vtm"
    out2 = tmp_path / "glob.h5"
    assert main(["import", str(tmp_path / "VTK" / "case_*.vtm"), str(out2), "--dt", "0.25", "--no-progress"]) == 0
    check_dataset(out2, TIMES)


def test_original_point_ids_map_boundary_points(tmp_path):
    folder = tmp_path / "ids"
    folder.mkdir()
    grid = internal_grid(0.0)
    mb = pv.MultiBlock()
    mb["internal"] = grid
    boundary = pv.MultiBlock()
    for name, p in with_original_ids(grid, shift=0.3).items():
        boundary[name] = p
    mb["boundary"] = boundary
    mb.save(folder / "one.vtm")
    out = tmp_path / "ids.h5"
    assert main(["import", str(folder / "one.vtm"), str(out), "--dt", "1", "--no-progress"]) == 0
    pts = np.asarray(grid.points)
    with Dataset(out) as ds:
        names = ds.node_type_names
        want = np.full(len(pts), names.index("interior"))
        want[np.isclose(pts[:, 0], SIZE[0])] = names.index("outlet")
        want[np.isclose(pts[:, 0], 0)] = names.index("inlet")
        np.testing.assert_array_equal(ds.node_type, want)


def test_boundary_not_on_the_mesh_is_an_error(tmp_path, capsys):
    series = write_paraview_series(tmp_path / "VTK", shift_outlet=0.1)
    assert main(["import", str(series), str(tmp_path / "x.h5"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ".vtp" in err[0] and "boundary points" in err[0]
    assert not (tmp_path / "x.h5").exists()


def test_foamtovtk_layout(tmp_path):
    """case_<t>.vtm -> case_<t>/internal.vtu + case_<t>/boundary/<patch>.vtp, as OpenFOAM's foamToVTK writes."""
    vtk_dir = tmp_path / "case" / "VTK"
    files = []
    for k, t in enumerate(TIMES):
        stem = f"case_{k * 25}"
        (vtk_dir / stem / "boundary").mkdir(parents=True)
        grid = internal_grid(t)
        grid.field_data["TimeValue"] = np.array([t])
        grid.save(vtk_dir / stem / "internal.vtu")
        entries = []
        for i, (name, p) in enumerate(patches(grid).items()):
            p.save(vtk_dir / stem / "boundary" / f"{name}.vtp")
            entries.append(f'      <DataSet index="{i}" name="{name}" file="{stem}/boundary/{name}.vtp"/>')
        (vtk_dir / f"{stem}.vtm").write_text(
            '<?xml version="1.0"?>\n<VTKFile type="vtkMultiBlockDataSet" version="1.0" byte_order="LittleEndian">\n'
            '  <vtkMultiBlockDataSet>\n'
            f'    <DataSet index="0" name="internal" file="{stem}/internal.vtu"/>\n'
            '    <Block index="1" name="boundary">\n' + "\n".join(entries) + "\n    </Block>\n"
            "  </vtkMultiBlockDataSet>\n</VTKFile>\n")
        files.append({"name": f"{stem}.vtm", "time": t})
    (vtk_dir / "case.vtm.series").write_text(json.dumps({"file-series-version": "1.0", "files": files}))
    out = tmp_path / "foam.h5"
    assert main(["import", str(vtk_dir / "case.vtm.series"), str(out), "--no-progress"]) == 0
    check_dataset(out, TIMES)
    # Without the .series file the times come from each internal mesh's TimeValue.
    (vtk_dir / "case.vtm.series").unlink()
    out2 = tmp_path / "foam2.h5"
    assert main(["import", str(vtk_dir), str(out2), "--no-progress"]) == 0
    check_dataset(out2, TIMES)
    # A patch file missing is one line naming it.
    shutil.rmtree(vtk_dir / "case_0" / "boundary")
    assert main(["import", str(vtk_dir), str(tmp_path / "bad.h5"), "--no-progress"]) == 2
