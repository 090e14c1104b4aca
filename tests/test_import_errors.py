"""Every validation error of `meshgnn import` on a bad file made here: exit code != 0, one line naming the file
and the field (and the cell / node / time), no traceback, and nothing left in the output folder."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from meshgnn.cli import main
from meshgnn.io.importers import samples
from meshgnn.io.importers.samples import box_tets, sample_fields

DT = 0.1


def write_series(folder, points, cells, steps, times=None, pvd=True):
    """meshio VTU files from ``steps`` = list of point-data dicts (``points`` may be a list per step);
    a ``series.pvd`` with ``times`` (None entries omit the timestep attribute)."""
    import meshio

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for k, data in enumerate(steps):
        p = points[k] if isinstance(points, list) else points
        meshio.write(folder / f"s_{k}.vtu", meshio.Mesh(p, [("tetra", cells)], point_data=data))
        names.append(f"s_{k}.vtu")
    if not pvd:
        return folder
    times = times if times is not None else [DT * k for k in range(len(steps))]
    rows = "".join("<DataSet " + ("" if t is None else f'timestep="{t}" ') + f'file="{n}"/>\n'
                   for t, n in zip(times, names))
    (folder / "series.pvd").write_text(f'<VTKFile type="Collection"><Collection>\n{rows}</Collection></VTKFile>\n')
    return folder / "series.pvd"


def good_steps(points, n=3):
    return [{"U": sample_fields(points, k * DT)["U"], "p": sample_fields(points, k * DT)["p"]} for k in range(n)]


def expect_error(capsys, tmp_path, sources, *options, contains=()):
    """Import ``sources`` (one path or a list) into tmp_path/out/; assert exit 2, one line containing
    ``contains``, no traceback, no leftovers."""
    outdir = tmp_path / "out"
    outdir.mkdir(exist_ok=True)
    sources = sources if isinstance(sources, list) else [sources]
    rc = main(["import", *map(str, sources), str(outdir / "data.h5"), *map(str, options), "--no-progress"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("meshgnn import: ")]
    assert rc == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for c in contains:
        assert c in lines[0], lines[0]
    assert list(outdir.iterdir()) == [], "a failed import left files behind"
    return lines[0]


@pytest.fixture
def mesh():
    return box_tets()


def test_degenerate_cell(tmp_path, capsys, mesh):
    pts, tets = mesh
    bad = np.vstack([tets, [[0, 1, 2, 2]]])             # repeated node: zero volume
    src = write_series(tmp_path / "s", pts, bad, good_steps(pts))
    line = expect_error(capsys, tmp_path, src, contains=("series.pvd", "cells/tetra",
                                                           f"cell {len(tets)}", "degenerate"))
    assert "zero volume" in line


def test_inverted_cell(tmp_path, capsys, mesh):
    pts, tets = mesh
    bad = tets.copy()
    bad[7] = bad[7][[1, 0, 2, 3]]
    src = write_series(tmp_path / "s", pts, bad, good_steps(pts))
    expect_error(capsys, tmp_path, src, contains=("series.pvd", "cells/tetra", "cell 7 ", "inverted"))


def test_unreferenced_nodes_error_then_flag(tmp_path, capsys, mesh):
    pts, tets = mesh
    extra = np.vstack([pts, [[9.0, 9.0, 9.0]]])
    src = write_series(tmp_path / "s", extra, tets, good_steps(extra))
    expect_error(capsys, tmp_path, src, contains=("series.pvd", "cells", "1 nodes are used by no cell",
                                                  f"node {len(pts)}", "--drop-unreferenced"))
    assert main(["import", str(src), str(tmp_path / "ok.h5"), "--drop-unreferenced", "--no-progress"]) == 0


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_inf(tmp_path, capsys, mesh, bad):
    pts, tets = mesh
    steps = good_steps(pts)
    steps[2]["U"] = steps[2]["U"].copy()
    steps[2]["U"][[11, 40]] = bad
    src = write_series(tmp_path / "s", pts, tets, steps)
    expect_error(capsys, tmp_path, src, contains=("s_2.vtu", ": U: ", "2 nodes", "time 0.2", "step 2",
                                                  "first: node 11"))


def test_mismatched_sizes_between_steps(tmp_path, capsys, mesh):
    pts, tets = mesh
    more = np.vstack([pts, [[0.5, 0.5, 9.0]]])
    steps = good_steps(pts)
    steps[1] = {k: np.concatenate([v, v[:1]]) for k, v in steps[1].items()}
    src = write_series(tmp_path / "s", [pts, more, pts], tets, steps)
    expect_error(capsys, tmp_path, src, contains=("s_1.vtu", "points", f"{len(pts) + 1} points",
                                                  f"has {len(pts)}"))


def test_missing_field_in_some_step(tmp_path, capsys, mesh):
    pts, tets = mesh
    steps = good_steps(pts)
    del steps[2]["p"]
    src = write_series(tmp_path / "s", pts, tets, steps)
    expect_error(capsys, tmp_path, src, contains=("s_2.vtu", ": p: ", "missing", "step 2"))


def test_non_increasing_times(tmp_path, capsys, mesh):
    pts, tets = mesh
    src = write_series(tmp_path / "s", pts, tets, good_steps(pts, 4), times=[0.0, 0.1, 0.1, 0.3])
    expect_error(capsys, tmp_path, src, contains=("series.pvd", "time", "do not increase", "step 2", "t=0.1"))


def test_irregular_times_named_and_dt_override(tmp_path, capsys, mesh):
    pts, tets = mesh
    src = write_series(tmp_path / "s", pts, tets, good_steps(pts, 4), times=[0.0, 0.1, 0.25, 0.3])
    expect_error(capsys, tmp_path, src, contains=("series.pvd", "time", "irregular", "0.1->0.25", "--dt"))
    out = tmp_path / "ok.h5"
    assert main(["import", str(src), str(out), "--dt", "0.1", "--no-progress"]) == 0
    from meshgnn.io.dataset import Dataset
    with Dataset(out) as ds:
        np.testing.assert_allclose(ds.times("0"), [0, 0.1, 0.2, 0.3])


def test_missing_times_need_dt(tmp_path, capsys, mesh):
    pts, tets = mesh
    folder = write_series(tmp_path / "s", pts, tets, good_steps(pts), pvd=False)
    expect_error(capsys, tmp_path, folder, contains=(str(folder), "time", "no time value", "--dt"))


def test_csv_points_not_within_tolerance(tmp_path, capsys):
    folder = samples.write_csv_series(tmp_path / "csv", 2, DT, jitter=0.02, shuffle=True)
    mesh = samples.write_mesh_file(tmp_path / "mesh.vtu")
    line = expect_error(capsys, tmp_path, folder, "--mesh", mesh, "--tolerance", "0.001",
                        contains=("table_0.csv", "X,Y,Z", "mesh nodes have no CSV point within tolerance 0.001",
                                  "worst: node"))
    count = int(line.split("X,Y,Z: ")[1].split(" of ")[0])
    assert count > 0
    worst = float(line.split("at distance ")[1].split(")")[0])
    assert 0.001 < worst <= 0.02 + 1e-9


def test_csv_without_mesh(tmp_path, capsys):
    folder = samples.write_csv_series(tmp_path / "csv", 1, DT)
    expect_error(capsys, tmp_path, folder, contains=("csv", "--mesh"))


def test_csv_bad_number(tmp_path, capsys):
    folder = samples.write_csv_series(tmp_path / "csv", 1, DT, shuffle=False)
    f = folder / "table_0.csv"
    lines = f.read_text().splitlines()
    cols = lines[5].split(",")
    cols[6] = "oops"
    lines[5] = ",".join(cols)
    f.write_text("\n".join(lines) + "\n")
    mesh = samples.write_mesh_file(tmp_path / "mesh.vtu")
    expect_error(capsys, tmp_path, folder, "--mesh", mesh, contains=("table_0.csv", "Pressure", "row 6", "oops"))


def test_unknown_state_field(tmp_path, capsys, mesh):
    pts, tets = mesh
    src = write_series(tmp_path / "s", pts, tets, good_steps(pts))
    expect_error(capsys, tmp_path, src, "--state", "U,T", contains=("s_0.vtu", ": T: ", "not found",
                                                                   "available: U, p"))


def test_unknown_node_type_field(tmp_path, capsys, mesh):
    pts, tets = mesh
    src = write_series(tmp_path / "s", pts, tets, good_steps(pts))
    expect_error(capsys, tmp_path, src, "--node-types", "zone", contains=("series.pvd", "zone", "not found"))


def test_bad_mapping_file(tmp_path, capsys, mesh):
    pts, tets = mesh
    src = write_series(tmp_path / "s", pts, tets, good_steps(pts))
    (tmp_path / "m.json").write_text("{ not json")
    expect_error(capsys, tmp_path, src, "--mapping", tmp_path / "m.json", contains=("m.json", "not valid JSON"))
    (tmp_path / "m2.json").write_text(json.dumps({"stat": ["U"]}))
    expect_error(capsys, tmp_path, src, "--mapping", tmp_path / "m2.json", contains=("m2.json", "stat",
                                                                                    "unknown key"))


def test_sources_with_different_meshes(tmp_path, capsys, mesh):
    pts, tets = mesh
    a = write_series(tmp_path / "a", pts, tets, good_steps(pts))
    moved = pts.copy()
    moved[5] += 0.01
    b = write_series(tmp_path / "b", moved, tets, good_steps(moved))
    expect_error(capsys, tmp_path, [a, b], contains=(str(b), "points", "differ", "share one mesh"))


def test_missing_source(tmp_path, capsys):
    expect_error(capsys, tmp_path, tmp_path / "nope.pvd", contains=("nope.pvd", "no such file"))


def test_console_script_prints_no_traceback(tmp_path, mesh):
    """The real `meshgnn` process: exit 2, a single stderr line, no Python traceback."""
    pts, tets = mesh
    steps = good_steps(pts)
    steps[1]["p"] = steps[1]["p"].copy()
    steps[1]["p"][3] = np.nan
    src = write_series(tmp_path / "s", pts, tets, steps)
    out = tmp_path / "o" / "x.h5"
    proc = subprocess.run([sys.executable, "-m", "meshgnn.cli", "import", str(src), str(out), "--no-progress"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert len(errors) == 1 and "s_1.vtu: p:" in errors[0] and "first: node 3" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not out.exists() and (not out.parent.exists() or list(out.parent.iterdir()) == [])


def test_static_field_missing_in_second_source(tmp_path, capsys, mesh):
    pts, tets = mesh
    with_k = [dict(s, k=1 + pts[:, 0]) for s in good_steps(pts)]
    a = write_series(tmp_path / "a", pts, tets, with_k)
    b = write_series(tmp_path / "b", pts, tets, good_steps(pts))
    expect_error(capsys, tmp_path, [a, b], "--static", "k", contains=("b/s_0.vtu", ": k: ", "missing"))
