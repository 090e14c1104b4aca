"""The training recipe: batches, multi-step (unrolled / pushforward) losses exact under patches, with negative
controls; the learning-rate schedules; impulsive-start detection; validation, best.pt and resume."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from meshgnn.recipe import draw_samples, field_change_rms, impulsive_frames, lr_lambda
from meshgnn.train import TrainConfig, Trainer, train
from test_exactness import assert_same_training, grads, make_store, rel, trainer
from test_train import SMALL, params


@pytest.mark.parametrize("unroll,pushforward,integrator", [(2, False, "euler"), (2, True, "heun"),
                                                           (3, False, "euler")])
def test_unrolled_batch_loss_under_patches_equals_whole_graph(box_dataset, tmp_path, unroll, pushforward,
                                                              integrator):
    kw = dict(batch=2, unroll=unroll, pushforward=pushforward, train_start=0)
    whole = trainer(box_dataset, "float64", integrator, **kw)
    need = whole.hops_needed
    assert need == 2 * whole.sim.stages * unroll
    patched = trainer(box_dataset, "float64", integrator, parts=make_store(box_dataset, tmp_path, halo=need), **kw)
    assert_same_training(whole, patched)


def test_unroll_needs_a_deeper_halo(box_dataset, tmp_path):
    """Negative control: a halo deep enough for one step (L x s) but not for K steps is refused, and when
    forced gives a different gradient."""
    store = make_store(box_dataset, tmp_path, halo=2)          # 2 layers x 1 euler stage
    with pytest.raises(Exception, match="too shallow"):
        trainer(box_dataset, "float64", "euler", parts=store, unroll=2, train_start=0)
    whole = trainer(box_dataset, "float64", "euler", unroll=2, train_start=0)
    shallow = trainer(box_dataset, "float64", "euler", parts=store, unroll=2, train_start=0, allow_inexact=True)
    shallow.sim.load_state_dict(whole.sim.state_dict())
    assert rel(grads(shallow)[1], grads(whole)[1]) > 1e-6


def test_per_layer_unroll_equals_whole_graph(box_dataset, tmp_path):
    """Per-layer halo mode refreshes the state's halo rows between unrolled steps: 1-hop parts stay exact."""
    kw = dict(unroll=2, train_start=0, halo_mode="per-layer")
    whole = trainer(box_dataset, "float64", "heun", unroll=2, train_start=0)
    patched = trainer(box_dataset, "float64", "heun", parts=make_store(box_dataset, tmp_path, halo=1), **kw)
    patched.sim.load_state_dict(whole.sim.state_dict())
    assert rel(grads(patched)[1], grads(whole)[1]) <= 1e-10


def test_batch_gradient_is_the_mean_of_its_samples(box_dataset):
    """Batch 2 = the two samples' single-sample gradients averaged (equal entry counts), noise keyed per slot."""
    tr = trainer(box_dataset, "float64", "euler", batch=2, train_start=0)
    _, g2 = grads(tr, 4)                     # (normalizer statistics accumulate before the loss, once)
    samples, _ = tr.sample(4)
    assert len(samples) == 2
    single = []
    for smp in samples:
        tr.optimizer.zero_grad(set_to_none=False)
        w = tr.prepare_sample(tr.patches[0], smp, 4)
        tr.patch_loss(tr.patches[0], w, float(w["loss_mask"].sum())).backward()
        single.append(torch.cat([p.grad.reshape(-1).clone() for p in tr.sim.model.parameters()]))
    assert rel(g2, (single[0] + single[1]) / 2) <= 1e-12
    assert rel(single[0], single[1]) > 1e-3             # the two samples really differ


def test_draw_samples_is_deterministic_and_respects_ranges():
    a = draw_samples(3, 7, ["x", "y"], {"x": (2, 5), "y": (0, 3)}, batch=16)
    assert a == draw_samples(3, 7, ["x", "y"], {"x": (2, 5), "y": (0, 3)}, batch=16)
    assert a != draw_samples(3, 8, ["x", "y"], {"x": (2, 5), "y": (0, 3)}, batch=16)
    assert all(2 <= s.time < 5 if s.trajectory == "x" else 0 <= s.time < 3 for s in a)
    assert [s.index for s in a] == list(range(16))


def test_lr_schedules():
    f = lr_lambda("cosine", steps=100, warmup=10, decay_to=0.01)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    assert f(100) == pytest.approx(0.01) and f(55) == pytest.approx(0.505)
    g = lr_lambda("exp", steps=100, warmup=0, decay_to=0.01)
    assert g(0) == 1.0 and g(50) == pytest.approx(0.1) and g(100) == pytest.approx(0.01)
    assert lr_lambda("constant", 100, 0, 0.01)(77) == 1.0


def test_impulsive_start_detection():
    assert impulsive_frames([50.0, 1.0, 1.1, 0.9, 1.0]) == 1
    assert impulsive_frames([50.0, 40.0, 1.0, 1.1, 0.9, 1.0]) == 2
    assert impulsive_frames([2.0, 1.5, 1.2, 1.0, 0.9]) == 0          # a decaying transient is learnable: kept
    assert impulsive_frames([1.0, 1.0]) == 0
    # per field: the OpenFOAM channel's fastest case, whose oscillating pressure hid the velocity's jump in the
    # whole-state RMS (its first transitions: U 0.59, then 0.011; p 5.0, 9.6, then 0.09-0.6)
    u = [0.591, 0.0109, 0.0089, 0.0074, 0.0062, 0.0055]
    p = [5.03, 9.60, 0.085, 0.522, 0.610, 0.571]
    whole = [float(np.sqrt((3 * a * a + b * b) / 4)) for a, b in zip(u, p)]
    assert impulsive_frames(whole) == 0            # the old whole-state rule misses it
    assert impulsive_frames(np.stack([u, p], axis=1)) == 2
    frames = [np.zeros((4, 2)), np.ones((4, 2)) * [5.0, 1.0]] + [np.ones((4, 2)) * [5.0 + 0.1 * k, 1.0 + 0.01 * k]
                                                                 for k in range(1, 5)]
    assert field_change_rms(frames, [1, 1]).shape == (5, 2)
    assert impulsive_frames(field_change_rms(frames, [1, 1])) == 1


def _val_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_best_checkpoint_is_the_argmin_and_survives_resume(box_dataset, tmp_path):
    cfg = dict(dataset=str(box_dataset), steps=8, dtype="float64", val_every=1, val_rollout=3, lr=2e-2,
               warmup_steps=0, lr_schedule="constant", checkpoint_every=1, **SMALL)
    full = train(TrainConfig(out=str(tmp_path / "a"), **cfg))
    rows = _val_rows(tmp_path / "a" / "val_log.csv")
    scores = [float(r["val_score"]) for r in rows]
    assert len(rows) == 8 and all(math.isfinite(s) for s in scores)
    best = int(np.argmin(scores))
    assert full["best_step"] == int(rows[best]["step"]) and full["best_score"] == pytest.approx(scores[best])
    assert [r["best"] for r in rows].count("1") >= 1 and rows[best]["best"] == "1"
    from meshgnn.checkpoint import load
    assert load(tmp_path / "a" / "best.pt")["trainer"]["step"] == full["best_step"]
    if full["best_step"] != 8:
        assert not torch.equal(params(tmp_path / "a" / "best.pt"), params(tmp_path / "a" / "checkpoint.pt"))
    # stop early, resume: the same best step and score, and the same best.pt parameters
    first = train(TrainConfig(out=str(tmp_path / "b"), stop_at=4, **cfg))
    assert first["stopped"]
    second = train(TrainConfig(out=str(tmp_path / "b"), resume=True, **cfg))
    assert second["best_step"] == full["best_step"] and second["best_score"] == pytest.approx(full["best_score"],
                                                                                              rel=1e-9)
    torch.testing.assert_close(params(tmp_path / "b" / "best.pt"), params(tmp_path / "a" / "best.pt"), rtol=1e-9,
                               atol=1e-12)
    assert [r["step"] for r in _val_rows(tmp_path / "b" / "val_log.csv")] == [r["step"] for r in rows]
    assert (tmp_path / "a" / "curves.png").stat().st_size > 10_000


def test_validation_reports_persistence_and_start_frame(box_dataset, tmp_path):
    out = train(TrainConfig(dataset=str(box_dataset), out=str(tmp_path / "v"), steps=2, val_rollout=2,
                            val_start=1, **SMALL))
    v = out["validation"]
    assert v["val_start"] == 1 and v["val_steps"] == 2 and v["val_trajectory"] == "traj01"
    assert set(v["rmse"]) == set(v["persistence"]) == {"co2", "loading"}
    assert all(x > 0 for x in v["persistence"].values())


def test_training_records_the_state_range_and_clamp_holds_it(box_dataset):
    from meshgnn.io.dataset import Dataset

    tr = trainer(box_dataset, "float64", "euler", train_start=0)
    tr.step()
    lo, hi = tr.sim.state_lo.clone(), tr.sim.state_hi.clone()
    with Dataset(box_dataset) as ds:
        y = np.concatenate([ds.read_state(s.trajectory, t) for s in tr.last_sample[0]
                            for t in (s.time, s.time + 1)])
    np.testing.assert_allclose(lo.numpy(), y.min(0), rtol=1e-6)
    np.testing.assert_allclose(hi.numpy(), y.max(0), rtol=1e-6)
    patch = tr.patches[0]
    fixed = tr.sim.fixed_mask(patch.tensors.node_type)
    wild = torch.full((patch.num_nodes, 2), 1e3, dtype=torch.float64)
    held = tr.sim.clamp_to_range(wild, fixed)
    assert torch.all(held[~fixed] <= hi.max()) and torch.equal(held[fixed], wild[fixed])   # prescribed untouched


def test_validation_with_unroll_reads_no_frame_past_the_end(box_dataset, tmp_path):
    """The one-step validation loss uses one reference frame whatever --unroll is (frames up to T - 2)."""
    out = train(TrainConfig(dataset=str(box_dataset), out=str(tmp_path / "u"), steps=2, unroll=3, train_start=0,
                            val_samples=8, val_rollout=2, **SMALL))
    assert math.isfinite(out["validation"]["val_loss"])


def test_rollout_reports_range_excursions_and_clamp_removes_them(box_dataset, tmp_path):
    """A checkpoint whose recorded range is narrowed far below the data's: the rollout reports a large
    excursion; with --clamp the prediction stays inside it (0 %)."""
    from meshgnn import checkpoint as ckpt
    from meshgnn.config import RolloutConfig
    from meshgnn.rollout import rollout

    tr = trainer(box_dataset, "float64", "euler", train_start=0)
    tr.step()
    mid = 0.5 * (tr.sim.state_lo + tr.sim.state_hi)
    tr.sim.state_lo.copy_(mid - 1e-3)
    tr.sim.state_hi.copy_(mid + 1e-3)
    path = ckpt.save(tmp_path / "narrow.pt", tr)
    free = [rollout(RolloutConfig(checkpoint=str(path), dataset=str(box_dataset), out=str(tmp_path / f"r{c}"),
                                  clamp=c, render=False, progress=False))["excursion_pct"] for c in (False, True)]
    assert min(free[0].values()) > 100.0          # far outside a 2e-3-wide range
    assert max(free[1].values()) == pytest.approx(0.0, abs=1e-9)


def test_rollout_runs_a_given_network_in_the_simulator(box_dataset, tmp_path):
    """rollout(cfg, model=m) steps with m in place of the checkpoint's network: a copy gives the same RMSE, a
    perturbed copy a different one (the hook the PhysicsNeMo comparison uses)."""
    import copy

    from meshgnn.checkpoint import load_simulator
    from meshgnn.config import RolloutConfig
    from meshgnn.rollout import rollout

    run = train(TrainConfig(dataset=str(box_dataset), out=str(tmp_path / "t"), steps=2, val_every=0, **SMALL))
    sim, _ = load_simulator(run["checkpoint"])

    def rmse(model, name):
        cfg = RolloutConfig(checkpoint=run["checkpoint"], dataset=str(box_dataset), out=str(tmp_path / name),
                            render=False, progress=False)
        return rollout(cfg, model=model)["rmse"]["co2"]["all"]

    base = rmse(None, "a")
    assert rmse(copy.deepcopy(sim.model), "b") == pytest.approx(base, rel=1e-12)
    other = copy.deepcopy(sim.model)
    with torch.no_grad():
        next(other.parameters()).mul_(1.5)
    assert abs(rmse(other, "c") - base) > 1e-6 * base
