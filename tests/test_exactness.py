"""Patch training is *mathematically equivalent* to whole-graph training (docs/design.md, "Exactness").

With halo depth h >= L x stages, the core outputs of every patch equal the whole graph's outputs and the sum
of the patches' parameter gradients equals the whole-graph gradient — with noise on, for forward Euler and a
3-stage method. A halo one hop too shallow must break it (negative control).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from meshgnn.decomposition import build_parts, partition, write_part_store
from meshgnn.io.dataset import Dataset
from meshgnn.train import TrainConfig, Trainer

LAYERS = 2


def make_store(ds_path, tmp_path, halo, nparts=4, method="metis"):
    ds = Dataset(ds_path)
    ei = ds.edge_index()
    owner = partition(ei, ds.num_nodes, nparts, method=method, points=ds.points)
    parts = build_parts(ei, ds.num_nodes, owner, halo)
    path = tmp_path / f"parts_h{halo}_{method}.h5"
    write_part_store(path, parts, owner, meta={}, edge_index=ei, method=method, halo=halo)
    return str(path)


def trainer(ds_path, dtype="float64", integrator="euler", parts="", allow_inexact=False, layers=LAYERS, **kw):
    cfg = TrainConfig(dataset=str(ds_path), dtype=dtype, integrator=integrator, layers=layers, latent=16,
                      hidden_layers=1, noise_std=[0.05, 0.02], seed=3, parts=parts, allow_inexact=allow_inexact,
                      progress=False, **kw)
    return Trainer(cfg)


def grads(tr, step=0):
    loss = tr.compute_gradients(step)
    return loss, torch.cat([p.grad.reshape(-1) for p in tr.sim.model.parameters()])


def rel(a, b):
    return float((a - b).norm() / b.norm())


def assert_same_training(whole, patched, steps=(0, 1), tol=1e-10):
    """Patched training gives the whole graph's loss and gradients at ``steps`` (same parameters first)."""
    patched.sim.load_state_dict(whole.sim.state_dict())
    for step in steps:
        lw, gw = grads(whole, step)
        lp, gp = grads(patched, step)
        assert abs(lp - lw) <= tol * abs(lw)
        assert rel(gp, gw) <= tol


@pytest.mark.parametrize("integrator", ["euler", "heun3"])
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-10), ("float32", 1e-5)])
def test_patch_gradients_equal_whole_graph(box_dataset, tmp_path, integrator, dtype, tol):
    whole = trainer(box_dataset, dtype, integrator)
    stages = whole.sim.stages
    store = make_store(box_dataset, tmp_path, halo=LAYERS * stages)
    patched = trainer(box_dataset, dtype, integrator, parts=store)
    assert len(patched.patches) == 4
    for step in (0, 1):        # step 1: normalizers have accumulated twice, noise redrawn
        lw, gw = grads(whole, step)
        lp, gp = grads(patched, step)
        assert abs(lp - lw) <= tol * abs(lw)
        assert rel(gp, gw) <= tol, f"{integrator} {dtype}: gradient mismatch {rel(gp, gw):.2e}"


@pytest.mark.parametrize("integrator", ["euler", "heun3"])
def test_patch_core_outputs_equal_whole_graph(box_dataset, tmp_path, integrator):
    whole = trainer(box_dataset, "float64", integrator)
    stages = whole.sim.stages
    store = make_store(box_dataset, tmp_path, halo=LAYERS * stages, method="rcb")
    patched = trainer(box_dataset, "float64", integrator, parts=store)
    patched.sim.load_state_dict(whole.sim.state_dict())
    whole.compute_gradients(0)          # accumulate normalizer statistics once
    patched.compute_gradients(0)
    smp = whole.sample(5)[0][0]
    (wp,) = whole.patches
    w = whole.prepare_sample(wp, smp, 5)
    with torch.no_grad():
        full = whole.sim.step(w["y0n"], w["static"], wp.tensors, y_next_fixed=w["refs"][0], fixed=w["fixed"])
        for p in patched.patches:
            q = patched.prepare_sample(p, smp, 5)
            out = patched.sim.step(q["y0n"], q["static"], p.tensors, y_next_fixed=q["refs"][0], fixed=q["fixed"])
            core = p.nodes[: p.tensors.n_core]
            ref = full[torch.from_numpy(core)]
            assert rel(out[: p.tensors.n_core], ref) <= 1e-10
            # the noise a halo copy sees is its owner's (up to the fp64 sum order of the noise scale)
            torch.testing.assert_close(q["y0n"], w["y0n"][torch.from_numpy(p.nodes)], rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("integrator", ["euler", "heun", "heun3"])
def test_too_shallow_halo_breaks_exactness(box_dataset, tmp_path, integrator):
    """Negative control: h = L x stages - 1 gives a measurably different gradient, and is refused by default.

    The error a one-hop-short halo causes travels the longest paths of the receptive field only, so it shrinks
    like a product of L x stages per-hop sensitivities; with one layer it stays far above the fp64 tolerance
    (measured: euler 5e-2, heun 1e-3, heun3 1e-6 relative), which is what this control must show.
    """
    whole = trainer(box_dataset, "float64", integrator, layers=1)
    need = whole.sim.stages
    store = make_store(box_dataset, tmp_path, halo=need - 1)
    with pytest.raises(Exception, match="too shallow"):
        trainer(box_dataset, "float64", integrator, parts=store, layers=1)
    shallow = trainer(box_dataset, "float64", integrator, parts=store, allow_inexact=True, layers=1)
    _, gw = grads(whole)
    _, gs = grads(shallow)
    assert rel(gs, gw) > 1e-8      # >= 100x the exactness tolerance of the tests above


def test_random_patch_sampling_is_consistent(box_dataset, tmp_path):
    """With --sample-parts k, every step trains on k parts, normalised by those parts' owned-node count."""
    store = make_store(box_dataset, tmp_path, halo=LAYERS)
    tr = trainer(box_dataset, "float64", parts=store, sample_parts=2)
    seen = set()
    for step in range(6):
        _, active = tr.sample(step)
        assert len(active) == 2
        seen.update(active)
        loss = tr.compute_gradients(step)
        assert np.isfinite(loss)
    assert len(seen) > 2


@pytest.mark.parametrize("integrator", ["euler", "heun3"])
def test_per_layer_halo_exchange_equals_whole_graph(box_dataset, tmp_path, integrator):
    """1-hop halos refreshed before every layer (star-forest bcast; backward: reduce) are exact too."""
    whole = trainer(box_dataset, "float64", integrator)
    store = make_store(box_dataset, tmp_path, halo=1)
    per_layer = trainer(box_dataset, "float64", integrator, parts=store, halo_mode="per-layer")
    assert per_layer.halo_exchange is not None
    for step in (0, 1):
        lw, gw = grads(whole, step)
        lp, gp = grads(per_layer, step)
        assert abs(lp - lw) <= 1e-10 * abs(lw)
        assert rel(gp, gw) <= 1e-10
    # negative control: the same 1-hop patches without the exchange are not exact
    lhop = trainer(box_dataset, "float64", integrator, parts=store, allow_inexact=True)
    _, gl = grads(lhop, 0)
    _, gw = grads(trainer(box_dataset, "float64", integrator), 0)
    assert rel(gl, gw) > 1e-6


def test_step_scaled_noise_is_the_change_std_and_equal_under_patches(box_dataset, tmp_path):
    """``--noise-scale step``: the noise std is ``rel x`` the std of the one-step change over the sampled
    transitions (checked against numpy on the file), the same on patches as on the whole graph, and the
    training then matches; the field scale gives another value (so the check can fail)."""
    whole = trainer(box_dataset, noise_scale="step")
    store = make_store(box_dataset, tmp_path, halo=LAYERS)
    patched = trainer(box_dataset, noise_scale="step", parts=store)
    assert torch.allclose(patched.noise_std, whole.noise_std, rtol=1e-12)
    ds = Dataset(box_dataset)
    changes = []
    for traj in whole.train_trajectories[:4]:
        lo, hi = whole.frame_ranges[traj]
        for k in sorted({lo, (lo + hi) // 2, hi - 1}):
            changes.append(ds.read_state(traj, k + 1).astype(np.float64) - ds.read_state(traj, k))
    expected = np.array([0.05, 0.02]) * np.concatenate(changes).std(0)
    assert np.allclose(whole.noise_std.numpy(), expected, rtol=1e-9)
    assert not torch.allclose(trainer(box_dataset).noise_std, whole.noise_std, rtol=1e-3)
    assert_same_training(whole, patched)


@pytest.mark.parametrize("halo_mode", ["lhop", "per-layer"])
def test_state_aggregation_is_exact_under_patches(box_dataset, tmp_path, halo_mode):
    """``--aggregate state`` (nodes sum the updated edge latents, as PhysicsNeMo) keeps patches exact, L-hop and
    per-layer; the same weights under the default aggregation give another loss (the option changes the model)."""
    whole = trainer(box_dataset, aggregate="state")
    store = make_store(box_dataset, tmp_path, halo=LAYERS if halo_mode == "lhop" else 1)
    assert_same_training(whole, trainer(box_dataset, parts=store, aggregate="state", halo_mode=halo_mode))
    update = trainer(box_dataset, aggregate="update")
    update.sim.load_state_dict(whole.sim.state_dict())
    assert abs(grads(update)[0] - grads(whole)[0]) > 1e-6 * abs(grads(whole)[0])
