"""The accuracy benchmark's harness (benchmarks/bench_accuracy.py), without PhysicsNeMo:

* the arrays streamed to PhysicsNeMo give exactly meshgnn's training loss (same samples, noise, normalizers,
  masks) when a model is evaluated on them;
* the proxy that rolls PhysicsNeMo out inside a ``Simulator`` reproduces the simulator step of the model it
  forwards to, and the pipe protocol round-trips arrays bit for bit;
* the excursion metric; an end-to-end run of the harness on a tiny dataset (slow).
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_accuracy as ba  # noqa: E402
from bench_accuracy_physicsnemo import read_message, write_message  # noqa: E402

FLAGS = ["--latent", "8", "--layers", "2", "--hidden-layers", "1", "--batch", "2", "--device", "cpu",
         "--progress", "false"]


def _trainer(box_dataset, tmp_path, **extra):
    from meshgnn.train import Trainer

    cfg = ba.train_config(str(box_dataset), FLAGS, out=str(tmp_path / "t"), **extra)
    return Trainer(dataclasses.replace(cfg, steps=100))


def _masked_mse(model, graph, arrays, meta) -> float:
    e = torch.from_numpy(arrays[0])
    total, count = 0.0, 0
    for b in range(meta["batch"]):
        x, t, m = (torch.from_numpy(a) for a in arrays[1 + 3 * b: 4 + 3 * b])
        out = model(x, graph, edge_features=e)
        total += float(((out - t)[m] ** 2).sum())
        count += int(m.sum())
    return total / count


@pytest.mark.parametrize("step", [0, 3])
def test_streamed_arrays_give_meshgnns_training_loss(box_dataset, tmp_path, step):
    torch.manual_seed(0)
    ours = _trainer(box_dataset, tmp_path / "a")
    pipe = _trainer(box_dataset, tmp_path / "b")          # same seed: same initial weights
    for s in range(step):                                  # same normalizer history
        ours.compute_gradients(s)
        ba.prepare_physicsnemo_step(pipe, s)
    loss = ours.compute_gradients(step)
    arrays, meta = ba.prepare_physicsnemo_step(pipe, step)
    for a, b in zip(ours.sim.normalizers(), pipe.sim.normalizers()):
        assert torch.equal(a.sum, b.sum) and torch.equal(a.sumsq, b.sumsq) and torch.equal(a.count, b.count)
    with torch.no_grad():
        streamed = _masked_mse(pipe.sim.model, pipe.patches[0].tensors.graph, arrays, meta)
    assert meta["batch"] == 2
    assert streamed == pytest.approx(loss, rel=1e-5)
    # negative control: the same pipeline without training noise streams other targets and another loss
    clean = _trainer(box_dataset, tmp_path / "c")
    for s in range(step):
        ba.prepare_physicsnemo_step(clean, s)
    clean.noise_std = torch.zeros_like(clean.noise_std)
    arrays0, _ = ba.prepare_physicsnemo_step(clean, step)
    with torch.no_grad():
        clean_loss = _masked_mse(pipe.sim.model, pipe.patches[0].tensors.graph, arrays0, meta)
    assert not np.array_equal(arrays0[2], arrays[2])                   # other targets ...
    assert abs(clean_loss - loss) > 10 * abs(streamed - loss)          # ... and a loss the check tells apart


class _MeshgnnBackedWorker:
    """Stands in for the PhysicsNeMo process: answers ``forward`` with a meshgnn MeshGraphNet over the pipe's
    own message encoding (so the proxy's plumbing, not a model, is what the test checks)."""

    def __init__(self, model, graph):
        self.model, self.graph = model, graph

    def forward(self, x, e):
        r, w = os.pipe()
        with os.fdopen(w, "wb") as fw:
            threading.Thread(target=write_message, args=(fw, {"cmd": "forward"}, [x, e])).start()
            with os.fdopen(r, "rb") as fr:
                _, (x2, e2) = read_message(fr)
        with torch.no_grad():
            return self.model(torch.from_numpy(x2), self.graph, edge_features=torch.from_numpy(e2)).numpy()


def test_proxy_rolls_out_like_the_model_it_forwards_to(box_dataset, tmp_path):
    import copy

    tr = _trainer(box_dataset, tmp_path, integrator="heun")   # two model calls per step, Dirichlet nodes
    for s in range(3):
        tr.step()
    sim = tr.sim.eval()
    patch = tr.patches[0]
    y0, y1, static = patch.frames(tr.train_trajectories[0], 0)
    with torch.no_grad():
        want = sim.step(y0, static, patch.tensors, y_next_fixed=y1)
        proxied = copy.deepcopy(sim)
        proxied.model = ba.make_proxy(_MeshgnnBackedWorker(sim.model, patch.tensors.graph), sim.model.num_layers)
        got = proxied.step(y0, static, patch.tensors, y_next_fixed=y1)
    assert proxied.receptive_hops == sim.receptive_hops
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.equal(want, y0)


def test_message_round_trip_is_exact():
    arrays = [np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32), np.array([True, False]),
              np.arange(7, dtype=np.int64)]
    r, w = os.pipe()
    with os.fdopen(w, "wb") as fw, os.fdopen(r, "rb") as fr:
        threading.Thread(target=write_message, args=(fw, {"cmd": "x", "lr": 0.5}, arrays)).start()
        head, back = read_message(fr)
    assert head["lr"] == 0.5 and len(back) == 3
    for a, b in zip(arrays, back):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_excursion_percent():
    lo, hi = np.array([0.0, -1.0]), np.array([4.0, 1.0])
    inside = np.array([[0.0, -1.0], [4.0, 1.0], [2.0, 0.0]])
    assert ba.excursion_percent(inside, lo, hi) == 0.0
    assert ba.excursion_percent(np.array([[4.4, 0.0]]), lo, hi) == pytest.approx(10.0)
    assert ba.excursion_percent(np.array([[1.0, -1.5]]), lo, hi) == pytest.approx(25.0)
    assert ba.excursion_percent(np.array([[np.nan, 0.0]]), lo, hi) == float("inf")


@pytest.mark.slow
def test_harness_end_to_end_on_a_tiny_dataset(tmp_path):
    data = tmp_path / "tiny.h5"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "meshgnn.cli", "generate", str(data), "--nodes", "1000",
                    "--trajectories", "3", "--steps", "6", "--quiet"], check=True, env=env, capture_output=True)
    work = tmp_path / "work"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_accuracy.py"), "--work", str(work),
                          "--datasets", "column", "--data", f"column={data}", "--configs", "default",
                          "--budget-cpu-s", "10", "--jobs", "1", "--physicsnemo-python", "",
                          "--plot-prefix", str(tmp_path / "acc_")], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    (r,) = json.loads((work / "results.json").read_text())["results"]
    assert r["config"] == "default" and r["trajectory"] == "2" and r["steps"] > 0
    assert r["train_cpu_s"] < 10 * 1.5                      # the CPU stop (or the planned steps) held
    assert r["rollout_steps"] == 2 * 5                      # twice the trajectory's 5 steps
    for f in ("co2", "loading"):
        assert np.isfinite(r["rmse"][f]["all"]) and r["rmse_persistence"][f]["all"] > 0
        assert r["excursion_percent"][f]["beyond_data"] is not None
        # --clamp holds the training range, inside the data's: no excursion, and the error stays finite
        assert r["clamped_excursion_percent"][f] == dict(within_data=0.0, beyond_data=0.0)
        assert np.isfinite(r["rmse_clamped"][f]["all"])
    md = (work / "results.md").read_text()
    assert "| default |" in md and "| persistence |" in md
    assert (tmp_path / "acc_column.png").stat().st_size > 1000
