"""Validation and data x domain parallelism under real ``mpirun`` ranks equal one whole-graph process (fp64)."""
from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import torch

from conftest import mpi_env, mpirun_cmd
from meshgnn.train import TrainConfig, train
from test_exactness import make_store
from test_train import CLI_SMALL, SMALL, params

pytestmark = pytest.mark.mpi
STEPS = 4


def run_ranks(n, dataset, out, *extra):
    cmd = mpirun_cmd(n) + [sys.executable, "-m", "meshgnn.cli", "train", str(dataset), "--out", str(out),
                           "--steps", str(STEPS), "--dtype", "float64", "--integrator", "heun", "--train-start", "0",
                           "--noise-std", str(SMALL["noise_std"][0]), *CLI_SMALL, *extra]   # as the in-process runs
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=mpi_env())
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def val_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_validation_under_two_ranks_equals_whole_graph(box_dataset, tmp_path):
    store = make_store(box_dataset, tmp_path, halo=2 * 2, nparts=4)
    run_ranks(2, box_dataset, tmp_path / "r2", "--parts", store, "--val-every", "2", "--val-rollout", "3")
    whole = train(TrainConfig(dataset=str(box_dataset), out=str(tmp_path / "w"), steps=STEPS, dtype="float64",
                              integrator="heun", train_start=0, val_every=2, val_rollout=3, **SMALL))
    a, b = val_rows(tmp_path / "r2" / "val_log.csv"), val_rows(whole["checkpoint"].rsplit("/", 1)[0] + "/val_log.csv")
    assert [r["step"] for r in a] == [r["step"] for r in b] == ["2", "4"]
    cols = [c for c in a[0] if c.startswith(("val_loss", "val_score", "rmse_", "persistence_"))]
    assert len(cols) >= 6
    for ra, rb in zip(a, b):
        for c in cols:
            assert float(ra[c]) == pytest.approx(float(rb[c]), rel=1e-9), c
    torch.testing.assert_close(params(tmp_path / "r2" / "best.pt"), params(tmp_path / "w" / "best.pt"),
                               rtol=1e-9, atol=1e-12)


def test_data_parallel_groups_equal_one_process_summing_the_samples(box_dataset, tmp_path):
    """4 ranks = 2 data-parallel groups x 2 domain ranks (2 parts): each group trains its slot of the batch;
    the result is the single process training the whole batch on the whole graph."""
    store = make_store(box_dataset, tmp_path, halo=2 * 2, nparts=2)
    run_ranks(4, box_dataset, tmp_path / "dp", "--parts", store, "--data-parallel", "2", "--batch", "2",
              "--val-every", "0")
    whole = train(TrainConfig(dataset=str(box_dataset), out=str(tmp_path / "w"), steps=STEPS, dtype="float64",
                              integrator="heun", train_start=0, batch=2, val_every=0, **SMALL))
    torch.testing.assert_close(params(tmp_path / "dp" / "checkpoint.pt"), params(whole["checkpoint"]),
                               rtol=1e-9, atol=1e-12)
    # negative control: one group alone (batch slot 0 only) is a different training
    alone = train(TrainConfig(dataset=str(box_dataset), out=str(tmp_path / "one"), steps=STEPS, dtype="float64",
                              integrator="heun", train_start=0, batch=1, val_every=0, **SMALL))
    assert (params(alone["checkpoint"]) - params(whole["checkpoint"])).abs().max() > 1e-6
