"""Part store round trip, graph-mismatch detection, atomic writes, and `meshgnn partition` in a subprocess."""
from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest

from meshgnn.decomposition import PartStore, build_parts, graph_fingerprint, partition, write_part_store
from meshgnn.decomposition import StoreError
from meshgnn.graph import edges_from_cells
from meshgnn.meshes import box_tets


@pytest.fixture(scope="module")
def mesh():
    pts, tets = box_tets(6)
    ei = edges_from_cells({"tetra": tets}, len(pts))
    return ei, len(pts), pts


def test_round_trip(mesh, tmp_path):
    ei, n, pts = mesh
    owner = partition(ei, n, 5, method="rcb", points=pts)
    parts = build_parts(ei, n, owner, 3)
    path = tmp_path / "m.parts.h5"
    summaries = write_part_store(path, iter(parts), owner, {"layers": 3, "note": "x"}, edge_index=ei, method="rcb")
    assert summaries == [p.summary() for p in parts]
    with PartStore(path) as store:
        assert (store.num_parts, store.halo, store.method, store.num_nodes, store.num_edges) == (5, 3, "rcb", n,
                                                                                                 ei.shape[1])
        assert store.meta == {"layers": 3, "note": "x"} and store.fingerprint == graph_fingerprint(ei)
        assert np.array_equal(store.owner, owner) and store.owner.dtype == np.int32
        for p in (4, 0, 2):  # any order
            got, want = store.read(p), parts[p]
            assert (got.part_id, got.n_core, got.halo) == (want.part_id, want.n_core, want.halo)
            for field in ("nodes", "hop", "edge_index", "owner_of"):
                a, b = getattr(got, field), getattr(want, field)
                assert a.dtype == b.dtype and np.array_equal(a, b), field
            assert store.summary(p) == want.summary()
        assert [q.part_id for q in store] == list(range(5))
        with pytest.raises(StoreError, match="out of range"):
            store.read(5)
        store.check_graph(ei, n)  # the graph it was cut from
        text = store.describe()
        assert "5 parts, halo 3 hops" in text and "layers=3" in text and "edge cut: n/a" in text


def test_mismatch_detection(mesh, tmp_path):
    ei, n, _ = mesh
    owner = partition(ei, n, 2)
    path = tmp_path / "m.parts.h5"
    write_part_store(path, build_parts(ei, n, owner, 1), owner, {}, edge_index=ei, method="metis")
    store = PartStore(path)
    other = ei.copy()
    other[0, 0] = (other[0, 0] + 1) % n  # same size, one sender changed
    assert graph_fingerprint(other) != graph_fingerprint(ei) == graph_fingerprint(ei.copy())
    assert graph_fingerprint(ei[:, :-1]) != graph_fingerprint(ei)
    for bad, kw, match in [(other, {}, "fingerprint"), (ei[:, :-2], {}, "edges"), (ei, {"num_nodes": n + 1}, "nodes")]:
        with pytest.raises(StoreError, match=match) as info:
            store.check_graph(bad, **kw)
        assert "\n" not in str(info.value) and str(path) in str(info.value)
    store.close()


def test_failed_write_leaves_nothing(mesh, tmp_path):
    ei, n, _ = mesh
    owner = partition(ei, n, 3)
    parts = build_parts(ei, n, owner, 1)
    path = tmp_path / "m.parts.h5"

    def broken():
        yield parts[0]
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_part_store(path, broken(), owner, {}, edge_index=ei)
    assert list(tmp_path.iterdir()) == []


def test_bad_store_files(tmp_path):
    with pytest.raises(StoreError, match="not found"):
        PartStore(tmp_path / "missing.parts.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(StoreError, match="HDF5"):
        PartStore(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(StoreError, match="not a meshgnn part store"):
        PartStore(tmp_path / "other.h5")


# ---------------------------------------------------------------- CLI
def meshgnn(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "meshgnn.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_cli_partition(box_dataset, tmp_path):
    from meshgnn.io.dataset import Dataset

    with Dataset(box_dataset) as ds:
        ei, n = ds.edge_index(), ds.num_nodes
    out = tmp_path / "p.parts.h5"
    res = meshgnn("partition", box_dataset, "--parts", 3, "--layers", 2, "--integrator", "heun3", "--out", out, "-q")
    assert res.returncode == 0, res.stderr
    assert "edge cut" in res.stdout and "redundant compute" in res.stdout
    with PartStore(out) as store:
        assert (store.num_parts, store.halo, store.method) == (3, 6, "metis")  # auto halo = 2 layers x 3 stages
        assert store.meta["integrator"] == "heun3" and store.meta["exact"] is True
        store.check_graph(ei, n)
        parts = build_parts(ei, n, store.owner, 6)
        for p in parts:
            assert np.array_equal(store.read(p.part_id).edge_index, p.edge_index)


def test_cli_default_out_rcb_and_explicit_halo(box_dataset, tmp_path):
    ds = tmp_path / "copy.h5"
    ds.write_bytes(box_dataset.read_bytes())
    res = meshgnn("partition", ds, "-P", 4, "--method", "rcb", "--halo", 1, "--seed", 1)
    assert res.returncode == 0, res.stderr
    assert "warning: halo 1 < layers x stages" in res.stderr  # default 15 layers x euler
    with PartStore(tmp_path / "copy.parts.h5") as store:
        assert (store.num_parts, store.halo, store.method) == (4, 1, "rcb") and store.meta["exact"] is False


@pytest.mark.parametrize("args,needle", [
    (["--parts", 100000], "--parts"),
    (["--parts", 2, "--integrator", "nope"], "unknown integrator"),
    (["--parts", 0], "positive integer"),
    (["--parts", 2, "--halo", "deep"], "auto"),
])
def test_cli_bad_input_one_line(box_dataset, tmp_path, capsys, args, needle):
    """In-process (the subprocess path is covered below): exit code 2, one line naming the problem."""
    from meshgnn.cli import main

    try:
        rc = main(["partition", str(box_dataset), *map(str, args), "--out", str(tmp_path / "x.parts.h5")])
    except SystemExit as e:  # argparse rejects the value itself
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and "Traceback" not in err
    assert not (tmp_path / "x.parts.h5").exists()


def test_cli_missing_dataset(tmp_path):
    res = meshgnn("partition", tmp_path / "none.h5", "--parts", 2)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


def test_decomposition_imports_nothing_of_meshgnn():
    """decomposition/ and integrators/ are graph- and model-generic: no module imports meshgnn."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for pkg in ("decomposition", "integrators"):
        for f in sorted((root / pkg).glob("*.py")):
            for node in ast.walk(ast.parse(f.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                assert not any(n.split(".")[0] == "meshgnn" for n in names), f"{f.name} imports {names}"


def test_cli_reports_a_store_error_in_one_line(box_dataset, tmp_path, capsys):
    """A store the CLI cannot use is one line on stderr and exit status 2, though StoreError is no MeshgnnError."""
    from meshgnn.cli import main

    missing = tmp_path / "missing.parts.h5"
    rc = main(["train", str(box_dataset), "--parts", str(missing), "--steps", "1", "--out", str(tmp_path / "t"),
               "--progress", "false"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "part store not found" in err and str(missing) in err, err
    assert "\n" not in err and "Traceback" not in err, err
