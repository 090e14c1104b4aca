"""Partitioned rollout under `mpirun -n 2` (several parts per rank, halo refreshed through the star forest every
step, or before every layer in per-layer mode) equals the whole-graph rollout over 21 steps (fp32 tolerance)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import mpi_env, mpirun_cmd, write_box_dataset
from test_exactness import make_store
from test_train import CLI_SMALL, meshgnn_cli

pytestmark = pytest.mark.mpi


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("roll")
    ds = write_box_dataset(d / "long.h5", n=7, trajectories=2, steps=22)
    r = meshgnn_cli("train", ds, "--out", d / "t", "--steps", "3", "--integrator", "heun", *CLI_SMALL)
    assert r.returncode == 0, r.stderr
    r = meshgnn_cli("rollout", d / "t" / "checkpoint.pt", ds, "--out", d / "whole", "--render", "false",
                    "--progress", "false")
    assert r.returncode == 0, r.stderr
    return d, ds


def frames(folder):
    import pyvista as pv
    from meshgnn.io.vtk import read_pvd

    out = []
    for t, f in read_pvd(folder / "rollout.pvd"):
        m = pv.read(f)
        y = np.stack([m.point_data["co2"], m.point_data["loading"]], 1)
        if "global_id" in m.point_data:          # pieces: boundary nodes repeat, with equal values
            ids = np.asarray(m.point_data["global_id"])
            full = np.full((ids.max() + 1, 2), np.nan)
            full[ids] = y
            for a in range(2):   # every copy of a node carries the owner's value
                np.testing.assert_array_equal(np.bincount(ids, weights=y[:, a]) / np.bincount(ids), full[:, a])
            y = full
        out.append((t, y))
    return out


@pytest.mark.parametrize("mode,halo", [("lhop", 2 * 2), ("per-layer", 1)])
def test_two_rank_partitioned_rollout_equals_whole(trained, mode, halo):
    d, ds = trained
    store = make_store(ds, d, halo=halo, nparts=4)
    out = d / f"mpi_{mode}"
    cmd = mpirun_cmd(2) + [sys.executable, "-m", "meshgnn.cli", "rollout", str(d / "t" / "checkpoint.pt"), str(ds),
                           "--parts", store, "--halo-mode", mode, "--out", str(out), "--render", "false",
                           "--progress", "false"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=mpi_env())
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    whole, part = frames(d / "whole"), frames(out)
    assert len(whole) == len(part) == 22
    # each rank wrote its own piece of every frame; rank 0 only the index files
    assert len(list(out.glob("rollout_*_p0000.vtu"))) == len(list(out.glob("rollout_*_p0001.vtu"))) == 22
    assert len(list(out.glob("rollout_*.pvtu"))) == 22 and not list(out.glob("rollout_?????.vtu"))
    for (tw, yw), (tp, yp) in zip(whole, part):
        assert tw == tp
        np.testing.assert_allclose(yp, yw, rtol=1e-5, atol=1e-5 * np.abs(yw).max())
    # RMSE per field from the ranks' reduced partial sums = the whole graph's (model and persistence)
    from meshgnn.metrics import read_rmse_csv
    for name in ("rmse.csv", "rmse_persistence.csv"):
        fw, sw, rw = read_rmse_csv(d / "whole" / name)
        fp, sp, rp = read_rmse_csv(out / name)
        assert fw == fp and np.array_equal(sw, sp) and len(sw) == 21
        for f in fw:
            np.testing.assert_allclose(rp[f], rw[f], rtol=1e-4)


def test_rollout_refuses_too_shallow_halo(trained):
    d, ds = trained
    store = make_store(ds, d, halo=3, nparts=4)         # heun x 2 layers needs 4
    r = meshgnn_cli("rollout", d / "t" / "checkpoint.pt", ds, "--parts", store, "--out", d / "x")
    assert r.returncode == 2 and "too shallow" in r.stderr and "Traceback" not in r.stderr
