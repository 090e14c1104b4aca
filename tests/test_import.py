"""Round trips: solver output written by meshio / pyvista / meshio-XDMF / CSV tables -> `meshgnn import` ->
Dataset holds exactly the values, times, mesh and node types that went in."""
from __future__ import annotations

import json

import numpy as np
import pytest

from meshgnn.cli import main
from meshgnn.io.dataset import NODE_TYPES, Dataset
from meshgnn.io.importers import samples
from meshgnn.io.importers.samples import box_tets, sample_fields, sample_node_type

STEPS, DT = 4, 0.1


def _check_roundtrip(path, state=("U", "p"), trajectories=1, static="k"):
    """Every stored value equals the analytic field at the stored node position and time."""
    with Dataset(path) as ds:
        pts, tets = box_tets()
        assert ds.num_nodes == len(pts)
        # Nodes may come back in any order only if the importer says so; ours keeps the mesh order.
        np.testing.assert_allclose(ds.points, pts, atol=1e-12)
        np.testing.assert_array_equal(ds.cells["tetra"], tets)
        np.testing.assert_array_equal(ds.node_type, sample_node_type(pts))
        assert ds.node_type_names[:len(NODE_TYPES)] == list(NODE_TYPES)
        assert ds.state_fields == list(state)
        assert len(ds.trajectories) == trajectories
        for tid in ds.trajectories:
            np.testing.assert_allclose(ds.times(tid), DT * np.arange(STEPS), atol=1e-12)
            assert ds.dt == pytest.approx(DT)
            for k in range(STEPS):
                exact = sample_fields(pts, k * DT)
                np.testing.assert_allclose(ds.read(tid, state[0], k), exact["U"], rtol=1e-6, atol=1e-6)
                np.testing.assert_allclose(ds.read(tid, state[1], k)[:, 0], exact["p"], rtol=1e-6, atol=1e-6)
            if static:
                np.testing.assert_allclose(ds.read(tid, static)[:, 0], 1 + pts[:, 0], rtol=1e-6)
        e = ds.edge_index()
        assert e.shape[1] > 0 and np.all(np.diff(e[1]) >= 0)


def _run(*argv):
    return main(["import", *map(str, argv), "--no-progress"])


def test_vtu_series_by_meshio_and_pvd(tmp_path):
    pvd = samples.write_vtu_series(tmp_path / "a", STEPS, DT, writer="meshio")
    out = tmp_path / "out.h5"
    assert _run(pvd, out, "--state", "U,p", "--static", "k", "--node-types", "node_type",
                "--units", "U=m/s,p=Pa") == 0
    _check_roundtrip(out)
    with Dataset(out) as ds:
        assert ds.fields["U"].units == "m/s" and ds.fields["U"].components == 3
        assert ds.fields["p"].units == "Pa" and ds.fields["p"].components == 1
        assert ds.provenance["format"] == "pvd"


def test_vtu_folder_by_pyvista_times_from_field_data(tmp_path):
    folder = samples.write_vtu_series(tmp_path / "b", STEPS, DT, writer="pyvista", pvd=False)
    out = tmp_path / "out.h5"
    assert _run(folder, out, "--state", "U,p", "--static", "k", "--node-types", "node_type") == 0
    _check_roundtrip(out)


def test_pvd_by_pyvista_two_trajectories(tmp_path):
    a = samples.write_vtu_series(tmp_path / "a", STEPS, DT, writer="pyvista")
    b = samples.write_vtu_series(tmp_path / "b", STEPS, DT, writer="pyvista")
    out = tmp_path / "out.h5"
    assert _run(a, b, out, "--state", "U,p", "--static", "k", "--node-types", "node_type",
                "--trajectory", "left,right") == 0
    _check_roundtrip(out, trajectories=2)
    with Dataset(out) as ds:
        assert sorted(ds.trajectories) == ["left", "right"]
        assert ds.parameters("left")["source"] == str(a)


def test_xdmf_time_series_by_meshio(tmp_path):
    xdmf = samples.write_xdmf_series(tmp_path / "x" / "flow.xdmf", STEPS, DT)
    out = tmp_path / "out.h5"
    # Node types as float codes in a point field (XDMF has no int point data from meshio's writer here).
    assert _run(xdmf, out, "--state", "U,p", "--static", "k", "--node-types", "node_type") == 0
    _check_roundtrip(out)
    with Dataset(out) as ds:
        assert ds.provenance["format"] == "xdmf"


@pytest.mark.parametrize("jitter_frac", [0.0, 0.3])
def test_csv_tables_shuffled_and_jittered_map_onto_mesh(tmp_path, jitter_frac):
    pts, _ = box_tets()
    spacing = 0.125  # smallest grid spacing of the sample box (0.5 / 4)
    tol = 0.4 * spacing
    folder = samples.write_csv_series(tmp_path / "csv", STEPS, DT, jitter=jitter_frac * spacing, shuffle=True)
    mesh = samples.write_mesh_file(tmp_path / "mesh.vtu")
    out = tmp_path / "out.h5"
    assert _run(folder, out, "--mesh", mesh, "--tolerance", tol, "--node-types", "Region") == 0
    with Dataset(out) as ds:
        assert ds.state_fields == ["Velocity", "Pressure"]          # default: every numeric column
        assert ds.fields["Velocity"].units == "m/s"                  # units from the header
        assert ds.fields["Pressure"].units == "Pa"
        np.testing.assert_array_equal(ds.node_type, sample_node_type(pts))
        for k in range(STEPS):
            exact = sample_fields(pts, k * DT)
            np.testing.assert_allclose(ds.read("0", "Velocity", k), exact["U"], rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(ds.read("0", "Pressure", k)[:, 0], exact["p"], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(ds.times("0"), DT * np.arange(STEPS))


def test_csv_negative_control_rows_not_reordered_would_differ(tmp_path):
    """The shuffled tables really are shuffled: reading rows in file order gives other values."""
    from meshgnn.io.importers.csv_series import read_table

    folder = samples.write_csv_series(tmp_path / "csv", 1, DT, shuffle=True)
    _, rows = read_table(folder / "table_0.csv")
    pts, _ = box_tets()
    # text column present -> rows come back as strings
    first_x = np.array([float(r[0]) for r in rows])
    assert not np.allclose(first_x, pts[:, 0])


def test_mapping_file_json_and_toml(tmp_path):
    pvd = samples.write_vtu_series(tmp_path / "a", STEPS, DT)
    mapping = {"state": ["p", "U"], "static": ["k"], "units": {"U": "m/s"}, "dirichlet": ["inlet", "wall"],
               "node_types": {"field": "node_type"}}
    (tmp_path / "map.json").write_text(json.dumps(mapping))
    (tmp_path / "map.toml").write_text('state = ["p", "U"]\nstatic = ["k"]\ndirichlet = ["inlet", "wall"]\n'
                                       '[units]\nU = "m/s"\n[node_types]\nfield = "node_type"\n')
    for name in ("map.json", "map.toml"):
        out = tmp_path / f"{name}.h5"
        assert _run(pvd, out, "--mapping", tmp_path / name, "--units", "p=Pa") == 0
        with Dataset(out) as ds:
            assert ds.state_fields == ["p", "U"] and ds.static_fields == ["k"]
            assert ds.fields["U"].units == "m/s" and ds.fields["p"].units == "Pa"   # flag adds to the file
            assert ds.dirichlet_types == ["inlet", "wall"]
            np.testing.assert_array_equal(ds.node_type, sample_node_type(box_tets()[0]))


def test_node_types_from_named_codes_and_custom_type(tmp_path):
    """Integer labels mapped by value; an unknown type name is appended to the names."""
    pvd = samples.write_vtu_series(tmp_path / "a", 2, DT)
    out = tmp_path / "out.h5"
    assert _run(pvd, out, "--node-types", "node_type", "--state", "U",
                "--mapping", _write(tmp_path / "m.json", {"node_types": {"values": {"3": "symmetry",
                                                                                     "1": "inlet"}}})) == 0
    with Dataset(out) as ds:
        nt = sample_node_type(box_tets()[0])
        names = ds.node_type_names
        assert "symmetry" in names
        assert np.all(np.asarray(names)[ds.node_type][nt == 3] == "symmetry")
        assert np.all(np.asarray(names)[ds.node_type][nt == 1] == "inlet")


def test_node_types_from_cell_region_field(tmp_path):
    """Boundary triangles carrying region ids (cell data) -> node types by value; triangles do not become
    dataset cells; the volume region (9, no rule) stays interior and the inlet wins over walls on shared nodes."""
    import meshio

    pts, tets = box_tets()
    tris_in = _boundary_tris(pts, tets, lambda p: np.isclose(p[:, 0], 0))
    tris_wall = _boundary_tris(pts, tets, lambda p: np.isclose(p[:, 1], 0))
    f = sample_fields(pts, 0.0)
    mesh = meshio.Mesh(pts, [("tetra", tets), ("triangle", np.concatenate([tris_in, tris_wall]))],
                       point_data={"U": f["U"]},
                       cell_data={"gmsh:physical": [np.full(len(tets), 9),
                                                    np.r_[np.full(len(tris_in), 1), np.full(len(tris_wall), 2)]]},
                       field_data={"inlet_plane": np.array([1, 2]), "wall_bottom": np.array([2, 2]),
                                   "fluid": np.array([9, 3])})
    meshio.write(tmp_path / "m.vtu", mesh)
    out = tmp_path / "out.h5"
    assert _run(tmp_path / "m.vtu", out, "--dt", "0.5", "--node-types", "gmsh:physical",
                "--mapping", _write(tmp_path / "m.json", {"node_types": {"values": {"1": "inlet", "2": "wall"}}})
                ) == 0
    with Dataset(out) as ds:
        assert list(ds.cells) == ["tetra"]
        names = np.asarray(ds.node_type_names)[ds.node_type]
        on_inlet = np.isclose(pts[:, 0], 0)
        on_wall = np.isclose(pts[:, 1], 0) & ~on_inlet
        assert np.all(names[on_wall] == "wall") and np.all(names[on_inlet] == "inlet")
        assert np.all(names[~on_wall & ~on_inlet] == "interior")


def test_drop_unreferenced_renumbers(tmp_path):
    import meshio

    pts, tets = box_tets()
    extra = np.vstack([pts[:3] + 5.0, pts])            # three stray nodes first: every id shifts by 3
    f = sample_fields(extra, 0.0)
    meshio.write(tmp_path / "m.vtu", meshio.Mesh(extra, [("tetra", tets + 3)], point_data={"U": f["U"]}))
    out = tmp_path / "out.h5"
    assert _run(tmp_path / "m.vtu", out, "--dt", "1", "--drop-unreferenced") == 0
    with Dataset(out) as ds:
        np.testing.assert_allclose(ds.points, pts)
        np.testing.assert_array_equal(ds.cells["tetra"], tets)
        np.testing.assert_allclose(ds.read("0", "U", 0), sample_fields(pts, 0.0)["U"], rtol=1e-6)


def test_dt_supplies_missing_times(tmp_path):
    import meshio

    pts, tets = box_tets()
    for k in range(3):
        meshio.write(tmp_path / f"s_{k}.vtu", meshio.Mesh(pts, [("tetra", tets)],
                                                          point_data={"U": sample_fields(pts, k)["U"]}))
    out = tmp_path / "o" / "out.h5"
    assert _run(str(tmp_path / "s_*.vtu"), out, "--dt", "0.25") == 0
    with Dataset(out) as ds:
        np.testing.assert_allclose(ds.times("0"), [0, 0.25, 0.5])
        np.testing.assert_allclose(ds.read("0", "U", 2), sample_fields(pts, 2)["U"], rtol=1e-6)


def test_report_lists_nodes_cells_fields_steps_types(tmp_path, capsys):
    pvd = samples.write_vtu_series(tmp_path / "a", STEPS, DT)
    assert _run(pvd, tmp_path / "o.h5", "--state", "U,p", "--node-types", "node_type") == 0
    err = capsys.readouterr().err
    pts, tets = box_tets()
    assert f"{len(pts)} nodes" in err and f"{len(tets)} tetra" in err
    assert "U: 3 component(s)" in err and "p: 1 component(s)" in err
    assert f"time steps: {STEPS}" in err
    counts = np.bincount(sample_node_type(pts), minlength=5)
    assert f"inlet {counts[1]}" in err and f"wall {counts[3]}" in err


def test_small_imported_dataset_helper(tmp_path):
    for fmt in ("vtu", "pvd-pyvista", "xdmf", "csv"):
        path = samples.small_imported_dataset(tmp_path / fmt, fmt, steps=3, trajectories=2)
        with Dataset(path) as ds:
            assert len(ds.trajectories) == 2 and ds.num_steps("1") == 3
            assert ds.read_state("1", 2).shape == (ds.num_nodes, 4)
            assert set(ds.node_type_counts()) >= {"inlet", "outlet", "wall", "interior"}


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def _boundary_tris(pts, tets, on):
    """Tet faces whose three nodes satisfy ``on(points)``."""
    faces = np.concatenate([tets[:, [0, 1, 2]], tets[:, [0, 1, 3]], tets[:, [1, 2, 3]], tets[:, [0, 2, 3]]])
    mask = on(pts)
    return faces[mask[faces].all(1)]


def test_cell_measures_match_vtk_for_every_type():
    """Our signed volumes equal VTK's cell sizes for each supported 3D type (a rotated, scaled copy too)."""
    import pyvista as pv
    from pyvista.examples import cells as C

    from meshgnn.io.importers.validate import cell_measures

    rot = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    rot *= np.sign(np.linalg.det(rot))                    # a proper rotation keeps orientation
    for name, make, vtk_id in (("tetra", C.Tetrahedron, 10), ("hexahedron", C.Hexahedron, 12),
                               ("wedge", C.Wedge, 13), ("pyramid", C.Pyramid, 14)):
        grid = make()
        for pts in (np.asarray(grid.points), 2.5 * np.asarray(grid.points) @ rot.T):
            g = pv.UnstructuredGrid({vtk_id: grid.cells_dict[vtk_id]}, pts)
            ours = cell_measures(pts, grid.cells_dict[vtk_id], name)
            np.testing.assert_allclose(ours, g.compute_cell_sizes()["Volume"], rtol=1e-12)
            assert (ours > 0).all()


def test_voxel_grid_becomes_hexahedra(tmp_path):
    """pyvista ImageData (VTK voxels) imports as hexahedra with positive volumes and the grid's edges."""
    import pyvista as pv

    g = pv.ImageData(dimensions=(5, 4, 3), spacing=(0.25, 0.3, 0.5)).cast_to_unstructured_grid()
    g.point_data["T"] = g.points[:, 0] ** 2
    g.save(tmp_path / "vox.vtu")
    out = tmp_path / "vox.h5"
    assert _run(tmp_path / "vox.vtu", out, "--dt", "1") == 0
    from meshgnn.io.importers.validate import cell_measures
    with Dataset(out) as ds:
        np.testing.assert_allclose(cell_measures(ds.points, ds.cells["hexahedron"], "hexahedron"), 0.0375)
        undirected = 4 * 4 * 3 + 5 * 3 * 3 + 5 * 4 * 2
        assert ds.edge_index().shape[1] == 2 * undirected
        np.testing.assert_allclose(ds.read("0", "T", 0)[:, 0], ds.points[:, 0] ** 2, rtol=1e-6)
