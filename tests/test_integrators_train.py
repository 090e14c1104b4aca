"""The configured integrator is the one training and rollout really use, end to end.

References are written out stage by stage here (not through ``integrators.rk_step``), from the simulator's own
rate ``f``, so a trainer or rollout that silently stepped with another method (the seed rolled patch runs out
with Euler whatever was configured) fails; each test has an Euler negative control showing the methods differ
by far more than the tolerance. Complements tests/test_train.py (the checkpoint *stores* the integrator) and
tests/test_rollout_mpi.py (partitioned == whole-graph rollout, which would also hold if both used Euler).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from meshgnn.checkpoint import load_simulator
from meshgnn.config import RolloutConfig
from meshgnn.io.dataset import Dataset
from meshgnn.domain import LocalDomain, PatchData
from meshgnn.distributed import Dist
from meshgnn.rollout import PatchedState, rollout
from meshgnn.train import Trainer, TrainConfig, train

from test_exactness import make_store

LAYERS = 2
SMALL = dict(layers=LAYERS, latent=16, hidden_layers=1, noise_std=[0.02], progress=False, batch=1)


def reference_step(sim, y, static, patch, method, y_next_fixed=None):
    """One step ``y -> y_next`` of ``method`` written out by hand from ``sim.rate``.

    Prescribed nodes keep ``y`` on every stage input and take ``y_next_fixed`` (if given) in the result.
    """
    fixed = sim.fixed_mask(patch.node_type)           # (n, C)
    edge_latent = sim.encode_edges(patch, y.dtype)

    def f(z):
        return sim.rate(torch.where(fixed, y, z), static, patch, edge_latent)

    k1 = f(y)
    if method == "euler":
        out = y + k1
    elif method == "heun":
        out = y + 0.5 * (k1 + f(y + k1))
    elif method == "heun3":
        k2 = f(y + k1 / 3)
        k3 = f(y + 2 * k2 / 3)
        out = y + 0.25 * k1 + 0.75 * k3
    else:
        raise ValueError(method)
    return out if y_next_fixed is None else torch.where(fixed, y_next_fixed, out)


def pvd_frames(folder) -> list[np.ndarray]:
    import pyvista as pv
    from meshgnn.io.vtk import read_pvd

    out = []
    for _, f in read_pvd(folder / "rollout.pvd"):
        m = pv.read(f)
        out.append(np.stack([m.point_data["co2"], m.point_data["loading"]], 1))
    return out


def reference_rollout(sim, ds_path, traj, steps, method) -> list[np.ndarray]:
    """Whole-graph rollout by :func:`reference_step`, prescribed nodes from the data; frames 0..steps."""

    ds = Dataset(ds_path)
    patch = PatchData.whole(ds, torch.device("cpu"), 2**26, torch.float32)
    y = patch.frame(traj, 0)
    static = patch.static(traj)
    frames = [y.numpy().copy()]
    with torch.no_grad():
        for k in range(1, steps + 1):
            y = reference_step(sim, y, static, patch.tensors, method, y_next_fixed=patch.frame(traj, k))
            frames.append(y.numpy().copy())
    return frames


# Roll out the *training* trajectory: in this 2-trajectory fixture the static velocity's z component is constant
# over the training data, so on the held-out trajectory the normalised feature is ~1e6 and saturates the MLPs
# (the rate no longer depends on the state and every method gives the same step).
TRAJ = "traj00"


@pytest.fixture(scope="module")
def heun3_run(box_dataset, tmp_path_factory):
    d = tmp_path_factory.mktemp("int_train")
    res = train(TrainConfig(dataset=str(box_dataset), out=str(d / "t"), steps=3, integrator="heun3", **SMALL))
    return d, res["checkpoint"]


@pytest.mark.parametrize("method", ["euler", "heun", "heun3"])
def test_training_loss_is_the_configured_methods_loss(box_dataset, method):
    """The trainer's loss at a step equals the loss of the hand-written step of its method, not another's."""
    tr = Trainer(TrainConfig(dataset=str(box_dataset), out="unused", steps=5, integrator=method, dtype="float64",
                             seed=1, **SMALL))
    for _ in range(2):                       # move the weights off their initial values
        tr.step()
    loss = tr.compute_gradients(tr.step_index)
    (smp,), _, n_loss = tr.last_sample
    patch = tr.patches[0]
    w = tr.prepare_sample(patch, smp, tr.step_index)
    std = tr.sim.target_normalizer.std().to(torch.float64)

    def loss_of(m):
        with torch.no_grad():
            pred = reference_step(tr.sim, w["y0n"], w["static"], patch.tensors, m, y_next_fixed=w["refs"][0])
        err = ((pred - w["y0n"]) - w["target"]) / std
        return float((err[w["loss_mask"]] ** 2).sum() / n_loss)

    assert loss == pytest.approx(loss_of(method), rel=1e-10)
    other = "heun3" if method == "euler" else "euler"
    assert abs(loss_of(other) - loss) > 1e-4 * loss        # negative control: the methods are distinguishable


def test_rollout_steps_with_the_checkpoints_integrator(box_dataset, heun3_run):
    d, ckpt = heun3_run
    res = rollout(RolloutConfig(checkpoint=ckpt, dataset=str(box_dataset), out=str(d / "whole"), steps=3, trajectory=TRAJ,
                                render=False, progress=False))
    sim, _ = load_simulator(ckpt)
    assert sim.integrator == "heun3"
    got = pvd_frames(d / "whole")
    want = reference_rollout(sim, box_dataset, res["trajectory"], 3, "heun3")
    euler = reference_rollout(sim, box_dataset, res["trajectory"], 3, "euler")
    assert len(got) == 4
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * np.abs(w).max())
    gap = np.abs(euler[1] - want[1]).max()
    assert gap > 100 * 1e-5 * np.abs(want[1]).max()          # negative control: Euler would have been caught


@pytest.mark.parametrize("mode,halo", [("lhop", LAYERS * 3), ("per-layer", 1)])
def test_patch_rollout_steps_with_the_checkpoints_integrator(box_dataset, heun3_run, mode, halo):
    """A partitioned rollout (4 patches, one process) with heun3 equals the hand-written heun3 whole-graph
    rollout; in lhop mode the halo is exactly layers x 3 stages deep."""
    d, ckpt = heun3_run
    store = make_store(box_dataset, d, halo=halo, nparts=4)
    out = d / f"parts_{mode}"
    res = rollout(RolloutConfig(checkpoint=ckpt, dataset=str(box_dataset), out=str(out), steps=3, parts=store, trajectory=TRAJ,
                                halo_mode=mode, render=False, progress=False))
    sim, _ = load_simulator(ckpt)
    want = reference_rollout(sim, box_dataset, res["trajectory"], 3, "heun3")
    got = pvd_frames(out)
    assert len(got) == 4
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * np.abs(w).max())


@pytest.mark.parametrize("mode,halo", [("whole", 0), ("lhop", LAYERS * 3), ("per-layer", 1)])
def test_rollout_step_leaves_the_callers_state_alone(box_dataset, heun3_run, mode, halo):
    """``PatchedState.advance`` returns new tensors; the input states (the domain's frame 0) are bit-for-bit
    unchanged after several heun3 steps, and so is the frame cache."""
    d, ckpt = heun3_run
    sim, _ = load_simulator(ckpt)
    parts = "" if mode == "whole" else make_store(box_dataset, d, halo=halo, nparts=4)
    cfg = RolloutConfig(checkpoint=ckpt, dataset=str(box_dataset), parts=parts,
                        halo_mode="lhop" if mode == "whole" else mode)
    ds = Dataset(box_dataset)
    traj = TRAJ
    domain = LocalDomain(ds, cfg.parts, Dist(), cfg.halo_mode, sim.receptive_hops)
    patches = domain.patches
    st = PatchedState(sim, domain, traj)
    ys = st.initial()
    before = [y.clone() for y in ys]
    versions = [y._version for y in ys]
    cur = ys
    for k in range(1, 4):
        nxt = st.advance(cur, st.reference(k))
        assert all(a is not b and a.data_ptr() != b.data_ptr() for a, b in zip(nxt, cur))
        cur = nxt
    for y, b, v in zip(ys, before, versions):
        assert y._version == v
        assert torch.equal(y, b)
    for p, y in zip(patches, st.initial()):               # the cache still holds the data's frame 0
        expect = ds.read_state(traj, 0, nodes=p.nodes)
        np.testing.assert_array_equal(y.numpy(), expect)
    assert not torch.equal(cur[0], ys[0])                  # the state did move
