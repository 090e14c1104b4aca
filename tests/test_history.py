"""History inputs (``--history H``): the model reads the last H state changes besides the state.

Properties: training gradients and rollout metrics under patches equal the whole graph's (fp64, both halo
modes); the history the trainer builds is the data's changes (plus the input noise on the newest); the
prediction depends on the history (and a history-free model refuses none); rollouts and validation refuse a
start frame with too few earlier frames; the CLI trains, describes and rolls out such a model.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from meshgnn.errors import MeshgnnError
from meshgnn.io.dataset import Dataset
from meshgnn.recipe import Sample
from meshgnn.rollout import rollout_frames, rollout_metrics
from meshgnn.simulator import FieldLayout, PatchTensors, Simulator, history_features
from test_domain import TRAJ, domain
from test_exactness import assert_same_training, grads, make_store, rel, trainer
from test_train import CLI_SMALL


@pytest.mark.parametrize("history,unroll,integrator", [(1, 2, "euler"), (2, 1, "heun")])
def test_history_training_under_patches_equals_whole_graph(box_dataset, tmp_path, history, unroll, integrator):
    kw = dict(batch=2, unroll=unroll, train_start=0, history=history)
    whole = trainer(box_dataset, "float64", integrator, **kw)
    patched = trainer(box_dataset, "float64", integrator, parts=make_store(box_dataset, tmp_path,
                                                                           halo=whole.hops_needed), **kw)
    assert_same_training(whole, patched)
    assert whole.sim.history_normalizer.count > 0          # its statistics accumulate like the others


def test_per_layer_history_unroll_equals_whole_graph(box_dataset, tmp_path):
    kw = dict(unroll=2, train_start=0, history=1)
    whole = trainer(box_dataset, "float64", "euler", **kw)
    patched = trainer(box_dataset, "float64", "euler", parts=make_store(box_dataset, tmp_path, halo=1),
                      halo_mode="per-layer", **kw)
    patched.sim.load_state_dict(whole.sim.state_dict())
    assert rel(grads(patched)[1], grads(whole)[1]) <= 1e-10


def test_the_trainer_builds_the_history_from_the_data(box_dataset):
    tr = trainer(box_dataset, "float64", "euler", train_start=0, history=2)
    assert all(lo == 2 for lo, _ in tr.frame_ranges.values())       # no sample reads a frame before 0
    patch = tr.patches[0]
    smp = Sample(TRAJ, 3, 0)
    clean = tr.prepare_sample(patch, smp, 0, noise=False)
    f = [patch.frame(TRAJ, k) for k in (3, 2, 1)]
    torch.testing.assert_close(clean["history"], torch.cat([f[0] - f[1], f[1] - f[2]], 1), rtol=0, atol=0)
    noisy = tr.prepare_sample(patch, smp, 0)
    C = f[0].shape[1]
    assert noisy["eps"].abs().sum() > 0
    torch.testing.assert_close(noisy["history"][:, :C], clean["history"][:, :C] + noisy["eps"], rtol=0, atol=1e-12)
    torch.testing.assert_close(noisy["history"][:, C:], clean["history"][:, C:], rtol=0, atol=0)


def _sim(ds_path, history, integrator="heun"):
    torch.manual_seed(0)
    sim = Simulator(FieldLayout.from_dataset(Dataset(ds_path)), latent=16, layers=2, hidden_layers=1,
                    integrator=integrator, history=history).double().eval()
    for nz in sim.normalizers():
        nz.to(torch.float64)
    return sim


@pytest.mark.parametrize("mode,halo", [("lhop", 4), ("per-layer", 1)])
def test_history_rollout_under_patches_equals_whole_graph(box_dataset, tmp_path, mode, halo):
    sim = _sim(box_dataset, history=1)
    whole = rollout_metrics(sim, domain(box_dataset), TRAJ, start=1, steps=3)
    part = rollout_metrics(sim, domain(box_dataset, make_store(box_dataset, tmp_path, halo=halo), mode), TRAJ,
                           start=1, steps=3)
    for key in ("rmse", "persistence"):
        for f, v in whole["per_step"][key].items():
            np.testing.assert_allclose(part["per_step"][key][f], v, rtol=1e-10)
    # negative control: the same network without its history input rolls out differently
    other = rollout_metrics(_sim(box_dataset, history=0), domain(box_dataset), TRAJ, start=1, steps=3)
    assert other["per_step"]["rmse"]["co2"] != whole["per_step"]["rmse"]["co2"]


def test_the_step_reads_the_history_and_checks_its_shape(box_dataset):
    ds = Dataset(box_dataset)
    sim = _sim(box_dataset, history=1, integrator="euler")
    d = domain(box_dataset)
    tens = d.patches[0].tensors
    y, static = d.frame(TRAJ, 2)[0], d.static(TRAJ)[0]
    h = history_features([y, d.frame(TRAJ, 1)[0]])
    with torch.no_grad():
        a = sim.step(y, static, tens, history=h)
        b = sim.step(y, static, tens, history=2 * h + 0.1)
        assert not torch.equal(a, b)                                  # the history changes the prediction
        with pytest.raises(ValueError, match="history must be"):
            sim.step(y, static, tens)
        with pytest.raises(ValueError, match="history must be"):
            sim.step(y, static, tens, history=torch.cat([h, h], 1))
        # the history moves on by the step's change, newest first
        sim2 = _sim(box_dataset, history=2, integrator="euler")
        h2 = torch.cat([h, 3 * h], 1)
        nxt = sim2.next_history(h2, y, a)
        C = y.shape[1]
        torch.testing.assert_close(nxt, torch.cat([a - y, h], 1), rtol=0, atol=0)
        assert nxt.shape == (ds.num_nodes, 2 * C) and isinstance(tens, PatchTensors)


def test_rollout_and_validation_refuse_a_start_without_history(box_dataset):
    sim = _sim(box_dataset, history=2)
    with pytest.raises(MeshgnnError, match="--start 1: the model reads the last 2"):
        list(rollout_frames(sim, domain(box_dataset), TRAJ, start=1, steps=1))
    assert len(list(rollout_frames(sim, domain(box_dataset), TRAJ, start=2, steps=1))) == 2
    with pytest.raises(MeshgnnError, match="--val-start 0"):
        from meshgnn.validation import Validation
        Validation(trainer(box_dataset, "float64", "euler", train_start=0, history=1, val_start=0))


def test_cli_trains_describes_and_rolls_out_a_history_model(box_dataset, tmp_path):
    cli = [sys.executable, "-m", "meshgnn.cli"]
    run = tmp_path / "run"
    subprocess.run([*cli, "train", str(box_dataset), "--out", str(run), "--steps", "3", "--history", "1",
                    "--val-every", "0", *CLI_SMALL], check=True, capture_output=True)
    info = subprocess.run([*cli, "info", str(run / "checkpoint.pt")], check=True, capture_output=True, text=True)
    assert "history        1 previous state change" in info.stdout
    bad = subprocess.run([*cli, "rollout", str(run / "checkpoint.pt"), str(box_dataset), "--out",
                          str(tmp_path / "r0"), "--steps", "2", "--render", "false"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--start 0: the model reads the last 1" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "r0").exists()
    ok = subprocess.run([*cli, "rollout", str(run / "checkpoint.pt"), str(box_dataset), "--out",
                         str(tmp_path / "r1"), "--steps", "2", "--start", "1", "--render", "false"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    resume = subprocess.run([*cli, "train", str(box_dataset), "--out", str(run), "--steps", "4", "--resume",
                             "--history", "0", "--val-every", "0", *CLI_SMALL], capture_output=True, text=True)
    assert resume.returncode == 2 and "history" in resume.stderr


def test_pyg_predict_takes_the_history_and_refuses_without(box_dataset):
    pyg = pytest.importorskip("meshgnn.io.pyg")
    pytest.importorskip("torch_geometric")
    ds = Dataset(box_dataset)
    sim = _sim(box_dataset, history=1, integrator="euler").float()
    data = pyg.to_data(ds, TRAJ, 2)
    with pytest.raises(MeshgnnError, match="Data.history: this model reads the last 1"):
        pyg.predict(sim, data)
    data.history = torch.as_tensor(ds.read_state(TRAJ, 2) - ds.read_state(TRAJ, 1))
    with torch.no_grad():
        got = pyg.predict(sim, data)
        data.history = 2 * data.history + 0.1
        other = pyg.predict(sim, data)
    assert got.shape == (ds.num_nodes, sim.layout.state_size) and torch.isfinite(got).all()
    assert not torch.equal(got, other)                        # the history reaches the model
