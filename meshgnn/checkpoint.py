"""Checkpoints: one file with model, normalizers, optimizer, scheduler, RNG states, step and configuration.

Written by rank 0 to a temporary file in the same folder, fsynced, then renamed over the old one: a crash or
kill at any moment leaves the previous checkpoint loadable.
"""
from __future__ import annotations

import io
from pathlib import Path

import torch

from .errors import InputError
from .io.atomic import atomic_path

FORMAT = "meshgnn-checkpoint"
VERSION = 1


def save(path, trainer, comm=None) -> Path:
    from .train import dataset_signature

    state = dict(format=FORMAT, version=VERSION, trainer=trainer.state_dict(), sim_config=trainer.sim.config(),
                 dataset=dataset_signature(trainer.ds), world_size=getattr(comm, "size", 1))
    buf = io.BytesIO()
    torch.save(state, buf)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())
    return Path(path)


def load(path) -> dict:
    path = Path(path)
    if not path.exists():
        raise InputError(path, None, "checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise InputError(path, None, f"not a readable checkpoint ({type(e).__name__}: {str(e)[:80]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(path, "format", f"expected a {FORMAT} file")
    if state.get("version") != VERSION:
        raise InputError(path, "version", f"expected version {VERSION}, found {state.get('version')}")
    return state


def check_dataset(state: dict, ds, path="checkpoint") -> None:
    """Raise a one-line error when the checkpoint's model cannot run on ``ds``."""
    from .train import dataset_signature

    want = state["dataset"]
    have = dataset_signature(ds)
    for key in ("state_fields", "static_fields", "node_type_names"):
        if want[key] != have[key]:
            raise InputError(path, key, f"checkpoint expects {want[key]}, dataset {ds.path if hasattr(ds, 'path') else ''} "
                                        f"has {have[key]}")
    lay = state["sim_config"]["layout"]
    for name, comps in zip(lay["state_fields"] + lay["static_fields"], lay["state_components"] + lay["static_components"]):
        if ds.fields[name].components != comps:
            raise InputError(path, name, f"checkpoint expects {comps} components, dataset has {ds.fields[name].components}")


def check_compatible(state: dict, trainer, path="checkpoint") -> None:
    """Resuming needs the same model/integrator configuration and dataset layout."""
    check_dataset(state, trainer.ds, path)
    have = trainer.sim.config()
    for key in ("latent", "layers", "hidden_layers", "integrator"):
        if state["sim_config"].get(key) != have.get(key):
            raise InputError(path, key, f"checkpoint has {state['sim_config'].get(key)}, run asks for "
                                                f"{have.get(key)}")


def load_simulator(path, device="cpu", dtype=torch.float32):
    """The trained :class:`Simulator` of a checkpoint, in eval mode."""
    from .simulator import Simulator

    state = load(path)
    sim = Simulator.from_config(state["sim_config"])
    sim.load_state_dict(state["trainer"]["simulator"])
    sim.to(device, dtype)
    for nz in sim.normalizers():
        nz.to(torch.float64)
    sim.eval()
    return sim, state
