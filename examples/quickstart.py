"""meshgnn from Python in one file: write a dataset from arrays, train, roll out, read the predicted arrays,
step the model on a PyTorch Geometric ``Data``. Runs in under a minute on two idle CPU cores (docs/api.md).

    python examples/quickstart.py --out /tmp/quickstart

Every value printed is computed here; nothing is read from a file this script did not write.
"""
from __future__ import annotations

import argparse
import importlib.util
import tempfile
from pathlib import Path

import numpy as np

import meshgnn
from meshgnn.meshes import box_tets


def write_dataset(path: Path, trajectories: int = 3, steps: int = 12) -> Path:
    """A unit box of tetrahedra with a concentration front ``c`` carried up by a static ``velocity``.

    The inlet (z = 0) is a Dirichlet boundary: its values come from the data at every step.
    """
    points, tets = box_tets(7)                                # (N, 3) float64, (M, 4) int64
    x, y, z = points.T
    node_type = np.where(z == 0, meshgnn.NODE_TYPES.index("inlet"), meshgnn.NODE_TYPES.index("interior"))
    fields = [meshgnn.FieldSpec("c", "state", 1, "mol/m^3"), meshgnn.FieldSpec("velocity", "static", 3, "m/s")]
    with meshgnn.DatasetWriter(path, points, {"tetra": tets}, node_type, dt=0.1, fields=fields,
                               dirichlet_types=["inlet"], provenance={"generator": "examples/quickstart.py"}) as w:
        for i in range(trajectories):
            speed = 0.6 + 0.3 * i
            velocity = np.stack([0 * x, 0 * y, speed * (1 + 0.2 * np.sin(3 * x))], axis=1)
            w.add_trajectory(f"run{i}", steps, parameters={"speed": speed}, static={"velocity": velocity})
            for k in range(steps):
                t = 0.1 * k
                front = np.tanh(6 * (speed * t * (1 + 0.2 * np.sin(3 * x)) - z + 0.2))
                w.write_step(f"run{i}", k, t, {"c": 0.5 * (1 + front)[:, None]})
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="output folder (default: a new temporary folder)")
    p.add_argument("--train-steps", type=int, default=80, help="optimizer steps (default: 80)")
    args = p.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="meshgnn-quickstart-"))
    out.mkdir(parents=True, exist_ok=True)

    # 1. a dataset from numpy arrays (meshgnn.generate_dataset makes the packed-column one instead)
    data = write_dataset(out / "box.h5")
    with meshgnn.Dataset(data) as ds:
        print(f"dataset: {ds.num_nodes} nodes, trajectories {ds.trajectories}, state {ds.state_fields}")

    # 2. train (the last trajectory is held out); TensorBoard files go to <out>/train/tensorboard
    cfg = meshgnn.TrainConfig(dataset=str(data), out=str(out / "train"), steps=args.train_steps, latent=32,
                              layers=2, lr=3e-3, lr_final=3e-4, noise_std=[0.01], progress=False,
                              checkpoint_every=args.train_steps)
    summary = meshgnn.run_training(cfg)
    print(f"trained {summary['steps']} steps, loss {summary['loss']:.3e}, checkpoint {summary['checkpoint']}")

    # 3. roll out the held-out trajectory and keep the predicted states as one array
    res = meshgnn.run_rollout(meshgnn.RolloutConfig(checkpoint=summary["checkpoint"], dataset=str(data),
                                                    out=str(out / "rollout"), render=False, progress=False),
                              return_fields=True)
    pred = res["fields"]                                       # (steps + 1, N, C) float32
    with meshgnn.Dataset(data) as ds:
        ref = np.stack([ds.read_state(res["trajectory"], k) for k in range(pred.shape[0])])
    rmse = float(np.sqrt(np.mean((pred[-1] - ref[-1]) ** 2)))
    persistence = float(np.sqrt(np.mean((ref[0] - ref[-1]) ** 2)))
    print(f"rollout {res['trajectory']}: {pred.shape[0] - 1} steps, predicted array {pred.shape}; "
          f"RMSE at the last step {rmse:.4f} vs persistence {persistence:.4f}; ParaView: {res['pvd']}")

    # 4. the same model on a PyTorch Geometric Data (pip install 'meshgnn[pyg]')
    if importlib.util.find_spec("torch_geometric") is None:
        print("skipping the PyG part: torch-geometric is not installed (pip install 'meshgnn[pyg]')")
        return 0
    import torch

    from meshgnn.io import pyg

    sim, _ = meshgnn.load_simulator(summary["checkpoint"])
    with meshgnn.Dataset(data) as ds:
        frame = pyg.to_data(ds, res["trajectory"], 0)          # edge_index, pos, node_type, x, y, static, ...
    with torch.no_grad():
        one = pyg.predict(sim, frame).numpy()
    print(f"PyG Data with {', '.join(sorted(frame.keys()))}; one step on it matches the rollout's first step: "
          f"{np.allclose(one, pred[1], atol=1e-5)}")
    back = pyg.write_dataset(out / "one_frame.h5", frame)      # Data -> a two-step dataset (x, then y)
    print(f"wrote {back} from the Data")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
