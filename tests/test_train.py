"""Training runs end to end: CLI, resume equivalence, SIGTERM (preemption), clear errors."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from meshgnn.checkpoint import load
from meshgnn.train import TrainConfig, train

SMALL = dict(layers=2, latent=16, hidden_layers=1, noise_std=[0.02], progress=False)
CLI_SMALL = ["--layers", "2", "--latent", "16", "--hidden-layers", "1", "--progress", "false"]


def params(ckpt_path):
    state = load(ckpt_path)["trainer"]["simulator"]
    return torch.cat([v.reshape(-1).double() for k, v in sorted(state.items()) if k.startswith("model.")])


def meshgnn_cli(*args, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "meshgnn.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kw)


def test_resume_equals_uninterrupted(box_dataset, tmp_path):
    full = train(TrainConfig(dataset=str(box_dataset), out=str(tmp_path / "a"), steps=6, dtype="float64",
                             integrator="heun", **SMALL))
    cfg = dict(dataset=str(box_dataset), out=str(tmp_path / "b"), steps=6, dtype="float64", integrator="heun", **SMALL)
    first = train(TrainConfig(stop_at=3, **cfg))
    assert first["stopped"] and first["steps"] == 3
    second = train(TrainConfig(resume=True, **cfg))
    assert second["steps"] == 6
    torch.testing.assert_close(params(second["checkpoint"]), params(full["checkpoint"]), rtol=1e-12, atol=1e-14)
    # the CSV log continues instead of restarting
    rows = list(csv.DictReader(open(tmp_path / "b" / "train_log.csv")))
    assert [int(r["step"]) for r in rows] == list(range(6))


def test_sigterm_checkpoints_and_exits_cleanly(box_dataset, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "meshgnn.cli", "train", str(box_dataset), "--out", str(out),
                             "--steps", "100000", *CLI_SMALL], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    log = out / "train_log.csv"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.2)
    assert log.exists(), proc.communicate(timeout=10)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "stopped early" in stdout
    state = load(out / "checkpoint.pt")
    assert 2 <= state["trainer"]["step"] < 100000


def test_cli_train_and_rollout(box_dataset, tmp_path):
    import pyvista as pv

    r = meshgnn_cli("train", box_dataset, "--out", tmp_path / "t", "--steps", "3", "--integrator", "heun3",
                    *CLI_SMALL)
    assert r.returncode == 0, r.stderr
    r = meshgnn_cli("rollout", tmp_path / "t" / "checkpoint.pt", box_dataset, "--out", tmp_path / "r",
                    "--progress", "false", "--render", "false")
    assert r.returncode == 0, r.stderr
    assert "persistence" in r.stdout
    reader = pv.get_reader(str(tmp_path / "r" / "rollout.pvd"))
    assert len(reader.time_values) == 5            # steps 0..4 of a 5-frame trajectory
    reader.set_active_time_value(reader.time_values[-1])
    mesh = reader.read()[0]
    for name in ("co2", "co2_ref", "co2_err", "loading", "node_type"):
        assert name in mesh.point_data
    rows = list(csv.DictReader(open(tmp_path / "r" / "rmse.csv")))
    assert [int(x["step"]) for x in rows] == [1, 2, 3, 4]
    # the integrator travels in the checkpoint: rollout used heun3
    assert load(tmp_path / "t" / "checkpoint.pt")["sim_config"]["integrator"] == "heun3"


def test_bad_inputs_give_one_line_errors(box_dataset, tmp_path):
    r = meshgnn_cli("train", tmp_path / "missing.h5", "--steps", "1")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "missing.h5" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = meshgnn_cli("train", box_dataset, "--steps", "1", "--out", tmp_path / "x", "--noise-std", "1", "2", "3",
                    *CLI_SMALL)
    assert r.returncode == 2 and "--noise-std" in r.stderr and "Traceback" not in r.stderr
    r = meshgnn_cli("rollout", tmp_path / "nope.pt", box_dataset)
    assert r.returncode == 2 and "nope.pt" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    r = meshgnn_cli("rollout", bad, box_dataset)
    assert r.returncode == 2 and "bad.pt" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_rollout_forecasts_beyond_the_data(box_dataset, tmp_path):
    """--steps past the trajectory's last frame: prescribed nodes hold their values, no reference there."""
    import pyvista as pv

    r = meshgnn_cli("train", box_dataset, "--out", tmp_path / "t", "--steps", "2", *CLI_SMALL)
    assert r.returncode == 0, r.stderr
    r = meshgnn_cli("rollout", tmp_path / "t" / "checkpoint.pt", box_dataset, "--out", tmp_path / "r",
                    "--steps", "7", "--progress", "false")
    assert r.returncode == 0, r.stderr
    reader = pv.get_reader(str(tmp_path / "r" / "rollout.pvd"))
    times = list(reader.time_values)
    assert len(times) == 8 and np.allclose(np.diff(times), np.diff(times)[0])
    reader.set_active_time_value(times[-1])
    last = reader.read()[0]
    assert "co2" in last.point_data and "co2_ref" not in last.point_data
    assert np.isfinite(last.point_data["co2"]).all()
    rows = list(csv.DictReader(open(tmp_path / "r" / "rmse.csv")))
    assert [int(x["step"]) for x in rows] == [1, 2, 3, 4]
    assert (tmp_path / "r" / "co2.png").exists()


@pytest.mark.slow
def test_compiled_model_trains_like_eager(box_dataset, tmp_path):
    """--compile (torch.compile, inductor) gives the eager run's parameters to fp32 round-off, and its checkpoint is
    an ordinary one (rollout loads it without compiling)."""
    cfg = dict(dataset=str(box_dataset), steps=3, integrator="heun", **SMALL)
    eager = train(TrainConfig(out=str(tmp_path / "eager"), **cfg))
    compiled = train(TrainConfig(out=str(tmp_path / "compiled"), compile=True, **cfg))
    a, b = params(eager["checkpoint"]), params(compiled["checkpoint"])
    assert not torch.equal(a, params_init(tmp_path, box_dataset))  # training moved the parameters
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    assert set(load(compiled["checkpoint"])["trainer"]["simulator"]) == set(load(eager["checkpoint"])["trainer"]["simulator"])


def params_init(tmp_path, box_dataset):
    """Parameters after 0 steps (the same seed's initialisation)."""
    res = train(TrainConfig(dataset=str(box_dataset), out=str(tmp_path / "init"), steps=1, stop_at=1, lr=0.0,
                            lr_final=0.0, **SMALL))
    return params(res["checkpoint"])
