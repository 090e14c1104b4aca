"""`mpirun -n 2 meshgnn train` equals `-n 1` on the same parts and equals whole-domain training.

Real processes through the pip-installed Open MPI, gloo process group, one gradient all-reduce per step.
Tolerances: float64 runs agree to 1e-9 relative in parameters after K Adam steps (round-off only); float32
runs to 2e-4 absolute (Adam's first steps are ~lr·sign(g), so fp32 round-off in near-zero gradients can move a
parameter by a fraction of lr = 1e-3).
"""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import mpi_env, mpirun_cmd
from meshgnn.train import TrainConfig, train
from test_exactness import make_store
from test_train import CLI_SMALL, SMALL, params

pytestmark = pytest.mark.mpi
STEPS = 3


def run_ranks(n, box_dataset, store, out, dtype, extra=()):
    cmd = mpirun_cmd(n) + [sys.executable, "-m", "meshgnn.cli", "train", str(box_dataset), "--parts", store,
                           "--out", str(out), "--steps", str(STEPS), "--dtype", dtype, "--integrator", "heun",
                           "--noise-std", "0.02", *CLI_SMALL, *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=mpi_env())
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


@pytest.mark.parametrize("dtype,rtol,atol", [("float64", 1e-9, 1e-12), ("float32", 0, 2e-4)])
def test_two_ranks_equal_one_rank_equal_whole_graph(box_dataset, tmp_path, dtype, rtol, atol):
    store = make_store(box_dataset, tmp_path, halo=2 * 2, nparts=4)       # L=2 layers x 2 heun stages
    whole = train(TrainConfig(dataset=str(box_dataset), out=str(tmp_path / "whole"), steps=STEPS, dtype=dtype,
                              integrator="heun", **SMALL))
    r2 = run_ranks(2, box_dataset, store, tmp_path / "r2", dtype)
    one = train(TrainConfig(dataset=str(box_dataset), out=str(tmp_path / "r1"), steps=STEPS, dtype=dtype,
                            integrator="heun", parts=store, **SMALL))
    pw, p1, p2 = params(whole["checkpoint"]), params(one["checkpoint"]), params(tmp_path / "r2" / "checkpoint.pt")
    torch.testing.assert_close(p2, p1, rtol=rtol, atol=atol)
    torch.testing.assert_close(p2, pw, rtol=rtol, atol=atol)
    assert '"bytes_allreduced"' in r2.stdout


def test_per_layer_halo_mode_two_ranks_equal_whole_graph(box_dataset, tmp_path):
    """1-hop halos refreshed before every layer across ranks (2 parts per rank): same parameters as whole."""
    store = make_store(box_dataset, tmp_path, halo=1, nparts=4)
    whole = train(TrainConfig(dataset=str(box_dataset), out=str(tmp_path / "whole"), steps=STEPS, dtype="float64",
                              integrator="heun", **SMALL))
    r2 = run_ranks(2, box_dataset, store, tmp_path / "r2", "float64", extra=("--halo-mode", "per-layer"))
    torch.testing.assert_close(params(tmp_path / "r2" / "checkpoint.pt"), params(whole["checkpoint"]),
                               rtol=1e-9, atol=1e-12)
    # negative control: the same 1-hop parts without the exchange are not exact
    r3 = run_ranks(2, box_dataset, store, tmp_path / "r3", "float64", extra=("--allow-inexact",))
    diff = (params(tmp_path / "r3" / "checkpoint.pt") - params(whole["checkpoint"])).abs().max()
    assert diff > 1e-6


def test_rank_count_larger_than_parts_is_a_clear_error(box_dataset, tmp_path):
    store = make_store(box_dataset, tmp_path, halo=4, nparts=1)
    cmd = mpirun_cmd(2) + [sys.executable, "-m", "meshgnn.cli", "train", str(box_dataset), "--parts", store,
                           "--out", str(tmp_path / "x"), "--steps", "1", *CLI_SMALL]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=mpi_env())
    assert r.returncode != 0
    assert "partition into at least 2 parts" in r.stderr
    assert "Traceback" not in r.stderr
