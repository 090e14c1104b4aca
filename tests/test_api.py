"""The Python API: ``import meshgnn`` is cheap (no torch), every export resolves lazily to the real object, and
the arrays rollout returns are the simulator's own steps."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys

import numpy as np
import pytest

import meshgnn


def _run_python(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_loads_no_torch_until_an_export_is_used():
    got = _run_python(
        "import json, sys, meshgnn\n"
        "before = {m: m in sys.modules for m in ('torch', 'h5py', 'meshgnn.io.dataset')}\n"
        "from meshgnn.memory import enable_huge_pages\n"
        "hp = enable_huge_pages()\n"   # the CLI's pre-torch set-up still has its chance
        "meshgnn.TrainConfig\n"
        "mid = 'torch' in sys.modules\n"
        "meshgnn.Dataset\n"
        "print(json.dumps(dict(before=before, mid=mid, after='meshgnn.io.dataset' in sys.modules,"
        " version=meshgnn.__version__)))")
    assert got["before"] == {"torch": False, "h5py": False, "meshgnn.io.dataset": False}
    assert got["mid"] is False          # the configs are plain dataclasses
    assert got["after"] is True and got["version"] == meshgnn.__version__


def test_every_export_is_the_object_of_its_module():
    assert {"Dataset", "DatasetWriter", "Simulator", "load_simulator", "TrainConfig", "run_training",
            "RolloutConfig", "run_rollout", "partition", "PartStore"} <= set(meshgnn.__all__)
    for name in meshgnn.__all__:
        assert name in dir(meshgnn) and getattr(meshgnn, name) is not None, name
    for name, (module, attr) in meshgnn._EXPORTS.items():
        assert getattr(meshgnn, name) is getattr(importlib.import_module(module), attr), name
    # the submodules keep their names: `from meshgnn import train` is still the module
    from meshgnn import train as train_module
    assert callable(train_module.train) and callable(meshgnn.run_training)
    with pytest.raises(AttributeError, match="no attribute 'no_such_thing'"):
        meshgnn.no_such_thing  # noqa: B018


def test_rollout_arrays_are_the_simulators_steps(box_dataset, tmp_path):
    pyg = pytest.importorskip("meshgnn.io.pyg")
    pytest.importorskip("torch_geometric")
    import torch

    cfg = meshgnn.TrainConfig(dataset=str(box_dataset), out=str(tmp_path / "run"), steps=3, latent=8, layers=2,
                              progress=False, checkpoint_every=3)
    summary = meshgnn.run_training(cfg)
    assert summary["steps"] == 3
    res = meshgnn.run_rollout(meshgnn.RolloutConfig(checkpoint=summary["checkpoint"], dataset=str(box_dataset),
                                                    out=str(tmp_path / "roll"), steps=3, render=False,
                                                    progress=False), return_fields=True)
    fields = res["fields"]
    with meshgnn.Dataset(box_dataset) as ds:
        traj = res["trajectory"]
        assert fields.shape == (4, ds.num_nodes, 2) and fields.dtype == np.float32
        assert np.array_equal(fields[0], ds.read_state(traj, 0))
        sim, _ = meshgnn.load_simulator(summary["checkpoint"])
        # step k from the rolled-out state k-1, with the data's boundary values at k: the same numbers
        for k in (1, 2, 3):
            data = pyg.to_data(ds, traj, k - 1)
            data.x = torch.from_numpy(fields[k - 1])
            with torch.no_grad():
                step = pyg.predict(sim, data).numpy()
            np.testing.assert_allclose(fields[k], step, rtol=0, atol=1e-5)
        assert not np.allclose(fields[3], fields[0], atol=1e-4)   # the model moved the state


def test_ops_backend_choices_are_the_ops_backends():
    import dataclasses

    from meshgnn import ops

    for cls in (meshgnn.TrainConfig, meshgnn.RolloutConfig):
        (f,) = [f for f in dataclasses.fields(cls) if f.name == "ops_backend"]
        assert tuple(f.metadata["choices"]) == ops.BACKENDS and f.default == "ours"


def test_run_training_applies_ops_backend_and_restores_it(box_dataset, tmp_path):
    from meshgnn import ops

    losses = {}
    for backend in ("ours", "index_add"):
        cfg = meshgnn.TrainConfig(dataset=str(box_dataset), out=str(tmp_path / backend), steps=2, latent=8,
                                  layers=2, progress=False, ops_backend=backend)
        losses[backend] = meshgnn.run_training(cfg)["loss"]
        assert ops.get_backend() == "ours"
    # index_add and the CSR kernels sum the same numbers in another order: the same loss up to rounding
    assert losses["index_add"] == pytest.approx(losses["ours"], rel=1e-4)


def test_cli_ops_backend_is_applied_and_stored(box_dataset, tmp_path):
    from meshgnn import ops
    from meshgnn.checkpoint import load as load_checkpoint
    from meshgnn.cli import main

    out = tmp_path / "run"
    try:
        rc = main(["train", str(box_dataset), "--steps", "2", "--latent", "8", "--layers", "1", "--out", str(out),
                   "--progress", "false", "--ops-backend", "index_add"])
        assert rc == 0 and ops.get_backend() == "index_add"
        state = load_checkpoint(out / "checkpoint.pt")
        assert state["trainer"]["config"]["ops_backend"] == "index_add"
        rc = main(["rollout", str(out / "checkpoint.pt"), str(box_dataset), "--out", str(tmp_path / "roll"),
                   "--steps", "1", "--render", "false", "--progress", "false", "--ops-backend", "ours"])
        assert rc == 0 and ops.get_backend() == "ours"
    finally:
        ops.set_backend("ours")

