"""meshgnn: MeshGraphNets surrogates for large 3D CFD meshes.

The user-facing pieces, importable from ``meshgnn`` (docs/api.md; each loads on first use, so ``import meshgnn``
stays cheap and loads no torch)::

    Dataset(path), DatasetWriter(...), FieldSpec          the dataset file (meshgnn.io.dataset); NODE_TYPES
    GenerateConfig, generate_dataset(out, cfg)            the packed-column generator (meshgnn.generate.column)
    TrainConfig, run_training(cfg) -> summary             training (meshgnn.train.train, cfg.ops_backend applied)
    RolloutConfig, run_rollout(cfg, return_fields=True)   rollout; ``result["fields"]`` (steps+1, N, C)
    Simulator, FieldLayout, load_simulator(checkpoint)    the model + integrator; ``(simulator, state)`` of a file
    partition, build_parts, write_part_store, PartStore   domain decomposition (meshgnn.decomposition)
    MeshgnnError, InputError                              the errors a user can fix

The functions are ``run_training`` / ``run_rollout`` because ``meshgnn.train`` and ``meshgnn.rollout`` are the
modules that hold them. PyTorch Geometric interop: :mod:`meshgnn.io.pyg` (extra ``[pyg]``).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> (module, attribute in it)
_EXPORTS = {
    "Dataset": ("meshgnn.io.dataset", "Dataset"),
    "DatasetWriter": ("meshgnn.io.dataset", "DatasetWriter"),
    "FieldSpec": ("meshgnn.io.dataset", "FieldSpec"),
    "NODE_TYPES": ("meshgnn.io.dataset", "NODE_TYPES"),
    "GenerateConfig": ("meshgnn.generate.column", "GenerateConfig"),
    "generate_dataset": ("meshgnn.generate.column", "generate_dataset"),
    "TrainConfig": ("meshgnn.config", "TrainConfig"),
    "RolloutConfig": ("meshgnn.config", "RolloutConfig"),
    "Simulator": ("meshgnn.simulator", "Simulator"),
    "FieldLayout": ("meshgnn.simulator", "FieldLayout"),
    "load_simulator": ("meshgnn.checkpoint", "load_simulator"),
    "partition": ("meshgnn.decomposition", "partition"),
    "build_parts": ("meshgnn.decomposition", "build_parts"),
    "write_part_store": ("meshgnn.decomposition", "write_part_store"),
    "PartStore": ("meshgnn.decomposition", "PartStore"),
    "MeshgnnError": ("meshgnn.errors", "MeshgnnError"),
    "InputError": ("meshgnn.errors", "InputError"),
}

__all__ = ["__version__", "run_training", "run_rollout", *_EXPORTS]


def run_training(cfg, comm=None) -> dict:
    """Train per ``cfg`` (a :class:`TrainConfig`) with the aggregation kernels ``cfg.ops_backend``.

    Returns the summary of :func:`meshgnn.train.train` (``steps``, ``loss``, ``checkpoint``, ``seconds``, ...);
    the previously selected ops backend is restored afterwards.
    """
    from .ops import use_backend
    from .train import train

    with use_backend(cfg.ops_backend):
        return train(cfg, comm)


def run_rollout(cfg, comm=None, return_fields: bool = False) -> dict:
    """Roll out per ``cfg`` (a :class:`RolloutConfig`) with the kernels ``cfg.ops_backend``.

    Returns the result of :func:`meshgnn.rollout.rollout`; with ``return_fields`` its ``"fields"`` holds the
    predicted states ``(steps + 1, N, C)`` float32 (one process only).
    """
    from .ops import use_backend
    from .rollout import rollout

    with use_backend(cfg.ops_backend):
        return rollout(cfg, comm, return_fields=return_fields)


def __getattr__(name: str):
    """PEP 562: load an exported name's module on first access (the CLI sets env vars before torch loads)."""
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'meshgnn' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
