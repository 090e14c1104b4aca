"""The local domain (meshgnn/domain.py) and the rollout built on it (rollout_frames, rollout_metrics, --start).

Properties: owned rows cover every node exactly once; frames are the dataset's rows; a halo refresh restores
perturbed halo rows from their owners (and only the halo rows); a partitioned no-output rollout's per-field RMSE
equals the whole graph's (fp64, any halo mode) and equals an RMSE computed independently from the returned
fields; prescribed components never count; ``--start K`` starts at frame K.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from meshgnn.distributed import Dist
from meshgnn.domain import LocalDomain, assign_parts
from meshgnn.errors import MeshgnnError
from meshgnn.io.dataset import Dataset
from meshgnn.metrics import field_error_sums
from meshgnn.rollout import component_mask, rollout_frames, rollout_metrics
from meshgnn.simulator import FieldLayout, Simulator
from test_exactness import make_store

LAYERS = 2
TRAJ = "traj00"


@pytest.fixture(scope="module")
def sim64(box_dataset):
    """An untrained heun simulator in float64 (exactness holds for any parameters)."""
    torch.manual_seed(0)
    sim = Simulator(FieldLayout.from_dataset(Dataset(box_dataset)), latent=16, layers=LAYERS, hidden_layers=1,
                    integrator="heun").double().eval()
    for nz in sim.normalizers():
        nz.to(torch.float64)
    return sim


def domain(ds_path, parts="", mode="lhop", hops=LAYERS * 2, **kw):
    return LocalDomain(Dataset(ds_path), parts, Dist(), mode, hops, "cpu", torch.float64, **kw)


@pytest.mark.parametrize("mode,halo", [("lhop", 4), ("per-layer", 1)])
def test_owned_rows_cover_every_node_once_and_frames_are_the_data(box_dataset, tmp_path, mode, halo):
    d = domain(box_dataset, make_store(box_dataset, tmp_path, halo=halo), mode)
    ds = d.ds
    ys = d.frame(TRAJ, 3)
    ids, vals = d.owned_rows(ys)
    assert np.array_equal(np.sort(ids), np.arange(ds.num_nodes)) and d.total_owned() == ds.num_nodes
    np.testing.assert_array_equal(vals.numpy(), ds.read_state(TRAJ, 3)[ids])
    assert len(d.patches) == (1 if mode == "per-layer" else 4) and d.partitioned
    assert (d.layer_exchange is not None) == (mode == "per-layer")


@pytest.mark.parametrize("mode,halo", [("lhop", 4), ("per-layer", 1)])
def test_refresh_restores_halo_rows_from_owners(box_dataset, tmp_path, mode, halo):
    d = domain(box_dataset, make_store(box_dataset, tmp_path, halo=halo), mode)
    ys = d.frame(TRAJ, 2)
    want = [y.clone() for y in ys]
    halo_rows = [~m for m in d.core_masks()]
    bad = [torch.where(h[:, None], y + 7.0, y) for y, h in zip(ys, halo_rows)]
    assert any(not torch.equal(b, w) for b, w in zip(bad, want))          # the perturbation is visible ...
    got = torch.cat(d.refresh([b.clone() for b in bad]))
    leaves = d.sf.leaf_rows          # lhop: every halo row; per-layer: the first ring (here: the whole 1-hop halo)
    torch.testing.assert_close(got[leaves], torch.cat(want)[leaves], rtol=0, atol=0)   # refresh undoes it there
    rest = torch.ones(got.shape[0], dtype=torch.bool)
    rest[leaves] = False
    torch.testing.assert_close(got[rest], torch.cat(bad)[rest], rtol=0, atol=0)        # and touches nothing else
    assert torch.equal(~rest, torch.cat(halo_rows))


def test_whole_graph_domain_and_refusals(box_dataset, tmp_path):
    d = domain(box_dataset)
    assert not d.partitioned and d.sf is None and d.num_owned() == d.ds.num_nodes and d.bytes_exchanged == 0
    shallow = make_store(box_dataset, tmp_path, halo=3)
    with pytest.raises(MeshgnnError, match="too shallow"):
        domain(box_dataset, shallow, hops=4)
    assert domain(box_dataset, shallow, hops=4, allow_inexact=True).halo_depth == 3
    with pytest.raises(MeshgnnError, match="halo-mode"):
        domain(box_dataset, shallow, mode="bogus")


def test_assign_parts_is_contiguous_and_balanced():
    counts = [10, 10, 10, 10, 30, 30]
    blocks = assign_parts(counts, 3)
    assert sum(blocks, []) == list(range(6)) and all(blocks)
    assert assign_parts([5, 5], 3) == [[0], [1], []]


@pytest.mark.parametrize("mode,halo", [("lhop", 4), ("per-layer", 1)])
def test_partitioned_rollout_metrics_equal_whole_graph(box_dataset, tmp_path, sim64, mode, halo):
    whole = rollout_metrics(sim64, domain(box_dataset), TRAJ, start=1, steps=3)
    part = rollout_metrics(sim64, domain(box_dataset, make_store(box_dataset, tmp_path, halo=halo), mode), TRAJ,
                           start=1, steps=3)
    assert whole["steps"] == part["steps"] == 3 and whole["start"] == 1
    for key in ("rmse", "persistence"):
        for f, v in whole["per_step"][key].items():
            np.testing.assert_allclose(part["per_step"][key][f], v, rtol=1e-10)
            assert set(whole[key][f]) == {"1", "all"}
            assert whole[key][f]["all"] == pytest.approx(np.mean(v), rel=1e-12)
    assert whole["rmse"]["co2"]["1"] != whole["persistence"]["co2"]["1"]


def test_rollout_metrics_equal_an_independent_rmse(box_dataset, sim64):
    """RMSE from the generator's rows + the dataset, computed here with numpy, equals rollout_metrics'."""
    d = domain(box_dataset)
    ds = d.ds
    free = ~component_mask(sim64, torch.from_numpy(np.asarray(ds.node_type, np.int64))).numpy()
    frames = list(rollout_frames(sim64, d, TRAJ, start=0, steps=3))
    assert [f.frame for f in frames] == [0, 1, 2, 3]
    m = rollout_metrics(sim64, d, TRAJ, start=0, steps=3)
    y0 = ds.read_state(TRAJ, 0).astype(np.float64)
    for fr in frames[1:]:
        pred = np.empty_like(y0)
        pred[fr.ids] = fr.pred.numpy()
        ref = ds.read_state(TRAJ, fr.frame).astype(np.float64)
        for j, f in enumerate(["co2", "loading"]):
            keep = free[:, j]
            want = math.sqrt(np.mean((pred[keep, j] - ref[keep, j]) ** 2))
            assert m["per_step"]["rmse"][f][fr.step - 1] == pytest.approx(want, rel=1e-10)
            base = math.sqrt(np.mean((y0[keep, j] - ref[keep, j]) ** 2))
            assert m["per_step"]["persistence"][f][fr.step - 1] == pytest.approx(base, rel=1e-10)


def test_start_frame_and_its_bounds(box_dataset, sim64):
    d = domain(box_dataset)
    T = d.ds.num_steps(TRAJ)
    frames = list(rollout_frames(sim64, d, TRAJ, start=2))
    assert len(frames) == T - 2 and frames[0].frame == 2 and frames[-1].ref is not None
    np.testing.assert_array_equal(frames[0].pred.numpy(), d.ds.read_state(TRAJ, 2))
    assert frames[0].time == pytest.approx(float(d.ds.times(TRAJ)[2]))
    forecast = list(rollout_frames(sim64, d, TRAJ, start=T - 2, steps=3))
    assert [f.ref is None for f in forecast] == [False, False, True, True]
    assert rollout_metrics(sim64, d, TRAJ, start=T - 2, steps=3)["steps"] == 1     # metrics stop at the data
    with pytest.raises(MeshgnnError, match="--start"):
        next(rollout_frames(sim64, d, TRAJ, start=T))


def test_prescribed_components_never_count():
    """Per-field Dirichlet: an error placed only on prescribed entries adds nothing; on free entries it does."""
    torch.manual_seed(1)
    ref = torch.randn(50, 4, dtype=torch.float64)
    fixed = torch.zeros(50, 4, dtype=torch.bool)
    fixed[:10, 0] = True                 # field a (1 component) prescribed on 10 nodes
    fixed[5:25, 1:4] = True              # field b (3 components) prescribed on 20 nodes
    pred = torch.where(fixed, ref + 5.0, ref)
    s = field_error_sums(pred, ref, ~fixed, [1, 3])
    assert s[0].tolist() == [0.0, 0.0] and s[1].tolist() == [40.0, 90.0]
    s_all = field_error_sums(pred, ref, torch.ones(50, dtype=torch.bool), [1, 3])      # (n,) mask: whole rows
    assert s_all[0].tolist() == [250.0, 1500.0] and s_all[1].tolist() == [50.0, 150.0]


def test_component_mask_broadcasts_a_row_mask(box_dataset, sim64):
    nt = torch.from_numpy(np.asarray(Dataset(box_dataset).node_type, np.int64))
    m = component_mask(sim64, nt)
    assert m.shape == (nt.numel(), 2) and m.any() and not m.all()


def test_rollout_command_from_a_start_frame_returns_fields(box_dataset, tmp_path):
    """``rollout(cfg, return_fields=True)`` with ``start=2``: frames 2..4 written (plain .vtu, one process), the
    returned (steps+1, N, C) array starts with the data's frame 2, and the RMSE CSV counts steps from there."""
    from meshgnn.config import RolloutConfig, TrainConfig
    from meshgnn.io.vtk import read_pvd
    from meshgnn.metrics import read_rmse_csv
    from meshgnn.rollout import rollout
    from meshgnn.train import train
    from test_train import SMALL

    ckpt = train(TrainConfig(dataset=str(box_dataset), out=str(tmp_path / "t"), steps=1, **SMALL))["checkpoint"]
    out = tmp_path / "r"
    res = rollout(RolloutConfig(checkpoint=str(ckpt), dataset=str(box_dataset), out=str(out), trajectory=TRAJ,
                                start=2, steps=2, render=False, progress=False), return_fields=True)
    ds = Dataset(box_dataset)
    assert res["start"] == 2 and res["steps"] == 2 and res["fields"].shape == (3, ds.num_nodes, 2)
    np.testing.assert_array_equal(res["fields"][0], ds.read_state(TRAJ, 2))
    assert not np.allclose(res["fields"][2], ds.read_state(TRAJ, 4))            # the model's, not the data's
    entries = read_pvd(out / "rollout.pvd")
    assert [t for t, _ in entries] == pytest.approx(list(ds.times(TRAJ)[2:5]))
    assert all(f.suffix == ".vtu" for _, f in entries)
    _, steps, rmse = read_rmse_csv(out / "rmse.csv")
    assert steps.tolist() == [1, 2] and res["rmse"]["co2"]["1"] == pytest.approx(rmse["co2"][0])
