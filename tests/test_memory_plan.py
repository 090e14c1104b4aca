"""The memory planner (meshgnn/plan.py): predictions ordered as the plans' memory, choices that follow the budget,
budget parsing, part suggestions, and the model/trainer using the chosen plan (same result as the exact plan)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from meshgnn import plan
from meshgnn.errors import InputError
from meshgnn.graph import Graph, edges_from_cells
from meshgnn.meshes import box_tets
from meshgnn.model import MeshGraphNet
from meshgnn.train import TrainConfig, train

N, E = 10_648, 137_718   # the 22^3 grid


def test_predictions_order_the_plans():
    none = plan.predict("none", N, E)
    layers = plan.predict("layers", N, E)
    per_layer = plan.predict("segments", N, E, segments=15)
    seg4 = plan.predict("segments", N, E, segments=4)
    seg4_16 = plan.predict("segments", N, E, segments=4, storage="bfloat16")
    assert none > layers > per_layer > seg4 > seg4_16 > 0
    assert plan.predict("segments", N, E, stages=2, segments=4) > seg4           # more stages, more saved
    assert plan.predict("segments", 2 * N, 2 * E, segments=4) == pytest.approx(
        2 * seg4 - plan.param_bytes(128, 15), rel=1e-12)                        # linear in the graph size
    assert plan.relative_time("segments", 15, 4) > plan.relative_time("segments", 15, 15) >= plan.relative_time("none")


def test_choose_follows_the_budget():
    big = plan.choose(N, E, 128, 15, 1, 1e12)
    assert big.mode == "none" and big.fits
    mid_budget = plan.predict("segments", N, E, segments=15) * 1.01
    mid = plan.choose(N, E, 128, 15, 1, mid_budget)
    assert (mid.mode, mid.segments, mid.storage) == ("segments", 15, "float32") and mid.fits
    small_budget = plan.predict("segments", N, E, segments=4, storage="bfloat16") * 1.01
    small = plan.choose(N, E, 128, 15, 1, small_budget)
    assert small.storage == "bfloat16" and small.fits and small.predicted_bytes <= small_budget
    tiny = plan.choose(N, E, 128, 15, 1, 1e6)
    assert not tiny.fits and tiny.predicted_bytes == min(
        plan.predict(m, N, E, segments=s, storage=st) for m, s, st in plan.candidates(15))
    assert "does NOT fit" in tiny.describe() and "fits" in big.describe()


def test_budget_parsing():
    assert plan.budget_bytes("", "cpu") == 0
    assert plan.budget_bytes("2.5", "cpu") == 2.5 * 2**30
    assert plan.budget_bytes("auto", "cpu") > 0
    for bad in ("-1", "0", "lots"):
        with pytest.raises(InputError, match="--memory-budget"):
            plan.budget_bytes(bad, "cpu")
    with pytest.raises(InputError, match="--memory-budget"):
        MeshGraphNet(6, 4, 2, memory_budget="lots")


def test_suggest_parts_grows_as_the_budget_shrinks():
    n, e = 3_048_625, 42_177_888
    parts = [plan.suggest_parts(n, e, gib * 2**30)[0] for gib in (200, 60, 20)]
    assert parts[0] <= parts[1] <= parts[2] and parts[0] < parts[2]
    P, p = plan.suggest_parts(n, e, 20 * 2**30)
    assert p.fits
    assert plan.patch_nodes(n, P, 15) < plan.patch_nodes(n, max(P - 1, 1), 15) or P == 1


def graph_of(n):
    pts, tets = box_tets(n)
    return Graph.from_edge_index(edges_from_cells({"tetra": tets}, len(pts)), len(pts))


@pytest.mark.parametrize("fraction, mode", [(1000.0, "none"), (1.01, "segments"), (0.8, "segments")])
def test_model_uses_the_plan_and_stays_exact(fraction, mode):
    """fraction x the prediction of the exact per-layer plan: none / exact per-layer / a compact plan."""
    graph = graph_of(5)
    gib = fraction * plan.predict("segments", graph.num_nodes, graph.num_edges, 16, 4, segments=4,
                                  hidden_layers=2) / 2**30
    g = torch.Generator().manual_seed(1)
    x = torch.randn(graph.num_nodes, 6, generator=g, dtype=torch.float64)
    e = torch.randn(graph.num_edges, 4, generator=g, dtype=torch.float64)

    def grads(**opts):
        torch.manual_seed(0)
        model = MeshGraphNet(6, 4, 2, latent=16, layers=4, **opts).double()
        (model(x, graph, edge_features=e) ** 2).mean().backward()
        return model, torch.cat([p.grad.reshape(-1) for p in model.parameters()])

    _, ref = grads()
    model, got = grads(memory_budget=str(gib))
    assert model.last_plan.mode == mode and model.last_plan.fits
    if model.last_plan.storage == "float32":
        assert float((got - ref).norm() / ref.norm()) < 1e-12
    else:
        assert float((got - ref).norm() / ref.norm()) < 1e-2


def test_train_says_which_plan(box_dataset, tmp_path):
    out = subprocess.run([sys.executable, "-m", "meshgnn.cli", "train", str(box_dataset), "--out", str(tmp_path / "t"),
                          "--steps", "1", "--layers", "2", "--latent", "16", "--hidden-layers", "1",
                          "--progress", "false", "--memory-budget", "0.0001"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if "memory plan:" in ln]
    assert len(lines) == 1 and "checkpoint segments" in lines[0]
    bad = subprocess.run([sys.executable, "-m", "meshgnn.cli", "train", str(box_dataset), "--out", str(tmp_path / "u"),
                          "--steps", "1", "--memory-budget", "lots"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--memory-budget" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_segment_training_equals_plain_training(box_dataset, tmp_path):
    cfg = dict(dataset=str(box_dataset), steps=3, dtype="float64", layers=3, latent=16, hidden_layers=1,
               noise_std=[0.02], progress=False, integrator="heun")
    a = train(TrainConfig(out=str(tmp_path / "a"), **cfg))
    b = train(TrainConfig(out=str(tmp_path / "b"), checkpoint_segments=2, **cfg))
    from meshgnn.checkpoint import load

    def params(path):
        state = load(path)["trainer"]["simulator"]
        return torch.cat([v.reshape(-1).double() for k, v in sorted(state.items()) if k.startswith("model.")])

    torch.testing.assert_close(params(b["checkpoint"]), params(a["checkpoint"]), rtol=1e-10, atol=1e-12)
