"""meshgnn.io.pyg: dataset frame <-> torch_geometric Data round trips; the model on a Data equals meshgnn's path."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("torch_geometric", reason="torch-geometric not installed (pip install 'meshgnn[pyg]')")
from torch_geometric.data import Batch  # noqa: E402

from meshgnn.io import pyg  # noqa: E402
from meshgnn.io.dataset import Dataset  # noqa: E402


def _trained_like_simulator(ds, seed=0):
    """A small simulator with non-trivial normalizer statistics (so normalisation is exercised)."""
    from meshgnn.simulator import FieldLayout, Simulator
    from meshgnn.domain import PatchData

    torch.manual_seed(seed)
    sim = Simulator(FieldLayout.from_dataset(ds), latent=16, layers=2, integrator="heun").eval()
    for nz in sim.normalizers():
        nz.to(torch.float64)
    patch = PatchData.whole(ds, "cpu", 2**26, torch.float32)
    y0, y1, static = patch.frames(ds.trajectories[0], 1)
    sim.node_normalizer.accumulate_stats(sim.node_normalizer.stats(torch.cat([y0, static], 1)))
    sim.edge_normalizer.accumulate_stats(sim.edge_normalizer.stats(patch.tensors.edge_features))
    sim.target_normalizer.accumulate_stats(sim.target_normalizer.stats(y1 - y0))
    return sim, patch


def test_frame_to_data_carries_the_dataset(box_dataset):
    with Dataset(box_dataset) as ds:
        tid = ds.trajectories[1]
        d = pyg.to_data(ds, tid, 2)
        assert d.num_nodes == ds.num_nodes
        assert torch.equal(d.edge_index, torch.from_numpy(ds.edge_index()))
        assert torch.equal(d.pos, torch.from_numpy(ds.points))
        assert torch.equal(d.node_type, torch.from_numpy(ds.node_type.astype(np.int64)))
        assert torch.equal(d.x, torch.from_numpy(ds.read_state(tid, 2)))
        assert torch.equal(d.y, torch.from_numpy(ds.read_state(tid, 3)))
        assert torch.equal(d.static, torch.from_numpy(ds.read_static(tid)))
        assert torch.equal(d.tetra_index.T, torch.from_numpy(ds.cells["tetra"]))
        assert d.edge_attr.shape[0] == d.edge_index.shape[1]
        # edge_attr: sender minus receiver position, then its norm
        s, r = d.edge_index
        assert torch.allclose(d.edge_attr[:, :3].double(), d.pos[s] - d.pos[r], atol=1e-6)
        assert d.state_fields == ["co2", "loading"] and d.static_fields == ["velocity"]
        assert (d.trajectory, d.step, d.time) == (tid, 2, float(ds.times(tid)[2]))
        last = pyg.to_data(ds, tid, -1)
        assert "y" not in last and last.step == ds.num_steps(tid) - 1


def test_round_trip_dataset_data_dataset(box_dataset, tmp_path):
    with Dataset(box_dataset) as ds:
        frames = [pyg.to_data(ds, t, k, target=False) for t in ds.trajectories for k in range(ds.num_steps(t))]
        frames = frames[::-1]                      # order must come from (trajectory, step), not the list
        out = pyg.write_dataset(tmp_path / "again.h5", frames)
        with Dataset(out) as back:
            assert back.trajectories == sorted(ds.trajectories, reverse=True)
            assert np.array_equal(back.points, ds.points) and np.array_equal(back.node_type, ds.node_type)
            assert np.array_equal(back.edge_index(), ds.edge_index())
            assert back.cells.keys() == ds.cells.keys() and np.array_equal(back.cells["tetra"], ds.cells["tetra"])
            assert back.fields == ds.fields and back.dt == ds.dt
            assert back.dirichlet_fields == ds.dirichlet_fields and back.node_type_names == ds.node_type_names
            for t in ds.trajectories:
                assert np.array_equal(back.times(t), ds.times(t))
                assert np.array_equal(back.read_static(t), ds.read_static(t))
                for k in range(ds.num_steps(t)):
                    assert np.array_equal(back.read_state(t, k), ds.read_state(t, k))
            # and Data -> dataset -> Data gives the same Data back
            again = pyg.to_data(back, ds.trajectories[0], 3)
            first = pyg.to_data(ds, ds.trajectories[0], 3)
            assert set(again.keys()) == set(first.keys())
            for key in first.keys():
                a, b = first[key], again[key]
                assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, key


def test_one_frame_with_target_is_a_trainable_two_step_dataset(box_dataset, tmp_path):
    with Dataset(box_dataset) as ds:
        tid = ds.trajectories[0]
        d = pyg.to_data(ds, tid, 1)
        out = pyg.write_dataset(tmp_path / "one.h5", d)
        with Dataset(out) as one:
            assert one.trajectories == [tid] and one.num_steps(tid) == 2
            assert np.array_equal(one.read_state(tid, 0), ds.read_state(tid, 1))
            assert np.array_equal(one.read_state(tid, 1), ds.read_state(tid, 2))
            assert np.array_equal(one.times(tid), ds.times(tid)[1:3])
        # a Batch is taken apart into its frames (cells lose the batch's node offsets again)
        batch = Batch.from_data_list([pyg.to_data(ds, tid, k, target=False) for k in (0, 1, 2)])
        with Dataset(pyg.write_dataset(tmp_path / "batch.h5", batch)) as b:
            assert b.num_steps(tid) == 3 and np.array_equal(b.cells["tetra"], ds.cells["tetra"])
            assert np.array_equal(b.read_state(tid, 2), ds.read_state(tid, 2))


def test_plain_pyg_graph_becomes_a_line_mesh_dataset(tmp_path):
    from torch_geometric.data import Data

    pos = torch.rand(5, 3, dtype=torch.float64)
    ei = torch.tensor([[0, 1, 1, 2, 3, 4, 2, 3], [1, 0, 2, 1, 4, 3, 3, 2]])
    out = pyg.write_dataset(tmp_path / "g.h5", Data(pos=pos, edge_index=ei, x=torch.rand(5, 2)))
    with Dataset(out) as ds:
        assert ds.state_fields == ["x"] and ds.fields["x"].components == 2
        assert sorted(map(tuple, ds.cells["line"].tolist())) == [(0, 1), (1, 2), (2, 3), (3, 4)]
        stored = ds.edge_index()
        assert np.all(np.diff(stored[1]) >= 0)                                 # receiver-sorted on disk
        assert sorted(zip(*stored.tolist())) == sorted(zip(*ei.tolist()))      # the same edges


def test_mismatched_frames_are_refused(box_dataset, tmp_path):
    with Dataset(box_dataset) as ds:
        a, b = pyg.to_data(ds, ds.trajectories[0], 0), pyg.to_data(ds, ds.trajectories[0], 1)
        b.pos = b.pos + 1.0
        with pytest.raises(Exception, match="frame 1: points differs"):
            pyg.write_dataset(tmp_path / "bad.h5", [a, b])
        assert not (tmp_path / "bad.h5").exists()


def test_model_on_data_equals_meshgnn_path(box_dataset):
    with Dataset(box_dataset) as ds:
        sim, patch = _trained_like_simulator(ds)
        tid = ds.trajectories[1]
        y0, y1, static = patch.frames(tid, 2)
        with torch.no_grad():
            ours = sim.step(y0, static, patch.tensors, y_next_fixed=y1)
            d = pyg.to_data(ds, tid, 2)
            got = pyg.predict(sim, d)
            assert torch.equal(got, ours)
            # PyG users' edge order is arbitrary: a shuffled edge_index gives the same output
            perm = torch.randperm(d.edge_index.shape[1], generator=torch.Generator().manual_seed(1))
            shuffled = d.clone()
            shuffled.edge_index = d.edge_index[:, perm]
            assert torch.equal(pyg.predict(sim, shuffled), ours)
            # a Batch (disjoint union) of two frames gives both frames' outputs
            d3 = pyg.to_data(ds, tid, 3)
            y0b, y1b, _ = patch.frames(tid, 3)
            batch = Batch.from_data_list([d, d3])
            both = pyg.predict(sim, batch)
            assert torch.allclose(both, torch.cat([ours, sim.step(y0b, static, patch.tensors, y_next_fixed=y1b)]),
                                  atol=1e-6, rtol=0)
            # negative controls: moved nodes or a dropped edge change the output
            moved = d.clone()
            moved.pos = d.pos * 1.1
            assert not torch.allclose(pyg.predict(sim, moved), ours, atol=1e-6)
            cut = d.clone()
            cut.edge_index = d.edge_index[:, 1:]
            assert not torch.equal(pyg.predict(sim, cut), ours)


def test_predict_checks_the_layout(box_dataset):
    with Dataset(box_dataset) as ds:
        sim, _ = _trained_like_simulator(ds)
        d = pyg.to_data(ds, ds.trajectories[0], 0)
        d.x = d.x[:, :1]
        d.state_fields = ["co2"]
        with pytest.raises(Exception, match=r"Data.state_fields: the simulator predicts \['co2', 'loading'\]"):
            pyg.predict(sim, d)


def _write_triangle_dataset(path):
    """A 2-D unit square of triangles, (N, 2) points, one state field with an inflow edge."""
    from meshgnn.io.dataset import NODE_TYPES, DatasetWriter, FieldSpec
    from meshgnn.meshes import rect_triangles

    pts, tris = rect_triangles(9)
    nt = np.where(pts[:, 0] == 0, NODE_TYPES.index("inlet"), NODE_TYPES.index("interior"))
    with DatasetWriter(path, pts, {"triangle": tris}, nt, dt=0.1, fields=[FieldSpec("u", "state", 2)],
                       dirichlet_types=["inlet"]) as w:
        w.add_trajectory("a", 4)
        for k in range(4):
            w.write_step("a", k, 0.1 * k, {"u": np.stack([np.sin(3 * pts[:, 0] - k), pts[:, 1] * k], 1)})
    return path


def test_2d_triangles_round_trip_and_model(tmp_path):
    from meshgnn.domain import PatchData
    from meshgnn.simulator import FieldLayout, Simulator

    with Dataset(_write_triangle_dataset(tmp_path / "tri.h5")) as ds:
        d = pyg.to_data(ds, "a", 1)
        assert d.pos.shape == (ds.num_nodes, 2) and d.edge_attr.shape == (d.edge_index.shape[1], 3)
        assert torch.equal(d.face.T, torch.from_numpy(ds.cells["triangle"]))      # PyG's own triangle attribute
        with Dataset(pyg.write_dataset(tmp_path / "back.h5", d)) as back:
            assert np.array_equal(back.points, ds.points) and np.array_equal(back.cells["triangle"],
                                                                            ds.cells["triangle"])
            assert np.array_equal(back.read_state("a", 1), ds.read_state("a", 2))
        torch.manual_seed(0)
        sim = Simulator(FieldLayout.from_dataset(ds), latent=8, layers=2).eval()
        patch = PatchData.whole(ds, "cpu", 2**26, torch.float32)
        y0, y1, static = patch.frames("a", 1)
        with torch.no_grad():
            assert torch.equal(pyg.predict(sim, d), sim.step(y0, static, patch.tensors, y_next_fixed=y1))
