"""Run configuration as dataclasses: defaults in code, a TOML/JSON file for a study, flags for one-off changes.

``add_dataclass_arguments(parser, Cls)`` turns every field (with ``metadata={"help": ...}``) into ``--field-name``;
``resolve(Cls, args)`` merges defaults < ``--config`` file < explicit flags.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
import json
import tomllib
import typing
from pathlib import Path

from .errors import InputError

_UNSET = object()


def _parse_bool(text: str) -> bool:
    t = str(text).lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    hints = typing.get_type_hints(cls)
    parser.add_argument("--config", metavar="FILE", help="TOML or JSON file of options (flags override it)")
    for f in dataclasses.fields(cls):
        if f.name in skip or f.metadata.get("cli") is False:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_ = f.metadata.get("help", "")
        help_ = f"{help_} (default: {default})" if help_ else f"(default: {default})"
        typ = hints[f.name]
        origin = typing.get_origin(typ)
        if typ is bool:
            parser.add_argument(flag, type=_parse_bool, nargs="?", const=True, default=_UNSET, metavar="BOOL",
                                help=help_)
        elif origin in (list, tuple):
            (inner, *_) = typing.get_args(typ) or (str,)
            parser.add_argument(flag, type=inner, nargs="+", default=_UNSET, help=help_)
        else:
            args = [a for a in typing.get_args(typ) if a is not type(None)]
            conv = args[0] if args else typ
            choices = f.metadata.get("choices")
            parser.add_argument(flag, type=conv, default=_UNSET, choices=choices, help=help_)


def load_file(path) -> dict:
    path = Path(path)
    if not path.exists():
        raise InputError(path, None, "config file not found")
    try:
        if path.suffix == ".json":
            return json.loads(path.read_text())
        return tomllib.loads(path.read_text())
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise InputError(path, None, f"not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {e}") from None


def resolve(cls, args: argparse.Namespace, **extra):
    """Build ``cls`` from defaults, then ``args.config`` (if any), then flags the user gave, then ``extra``."""
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict = {}
    if getattr(args, "config", None):
        file_values = load_file(args.config)
        section = file_values.get(cls.__name__.lower().replace("config", ""), file_values)
        unknown = sorted(set(section) - names)
        if unknown:
            raise InputError(args.config, unknown[0], f"unknown option (known: {', '.join(sorted(names))})")
        values.update(section)
    for name in names:
        v = getattr(args, name, _UNSET)
        if v is not _UNSET:
            values[name] = v
    values.update(extra)
    return cls(**values)


# ----------------------------------------------------------------------------- the run configurations
@dataclass
class TrainConfig:
    dataset: str = field(default="", metadata={"cli": False})
    out: str = field(default="runs/train", metadata={"help": "output folder (checkpoints, logs)"})
    steps: int = field(default=2000, metadata={"help": "optimizer steps"})
    lr: float = field(default=1e-3, metadata={"help": "initial learning rate (Adam)"})
    lr_final: float = field(default=1e-5, metadata={"help": "learning rate reached at the last step (exponential decay)"})
    latent: int = field(default=128, metadata={"help": "latent size H"})
    layers: int = field(default=15, metadata={"help": "message-passing layers L"})
    hidden_layers: int = field(default=2, metadata={"help": "hidden layers per MLP"})
    integrator: str = field(default="euler", metadata={"help": "euler|heun|midpoint|heun3|ssprk3|rk4 or a tableau JSON"})
    noise_std: list[float] = field(default_factory=lambda: [0.0],
                                   metadata={"help": "training noise std per state component, in units of the "
                                                     "field's std over the data (one value: all)"})
    noise_gamma: float = field(default=1.0, metadata={"help": "noise target correction gamma (1 for CFD)"})
    seed: int = field(default=0, metadata={"help": "seed for initialisation, sampling and noise"})
    parts: str = field(default="", metadata={"help": "part store (from `meshgnn partition`); empty: whole graph"})
    sample_parts: int = field(default=0, metadata={"help": "train on this many random parts per step (0: all)"})
    allow_inexact: bool = field(default=False, metadata={"help": "accept a halo shallower than layers x stages"})
    halo_mode: str = field(default="lhop", metadata={"help": "lhop (communication-free) or per-layer (1-hop "
                                                             "halo refreshed before each layer)",
                                                     "choices": ["lhop", "per-layer"]})
    checkpoint_layers: bool = field(default=False, metadata={"help": "activation checkpointing per processor layer"})
    checkpoint_stages: bool = field(default=False, metadata={"help": "recompute integrator stages in backward"})
    checkpoint_segments: int = field(default=0, metadata={"help": "low-memory processor: save edge latents at the "
                                                                  "start of S segments of ceil(layers/S) layers, "
                                                                  "edge MLP backward in edge chunks (S = layers: "
                                                                  "per layer); 0: off"})
    checkpoint_storage: str = field(default="float32", metadata={"help": "dtype of the low-memory processor's saved "
                                                                         "activations: float32 (exact) or bfloat16 "
                                                                         "(half the bytes, gradients within bf16 "
                                                                         "rounding); bfloat16 alone implies "
                                                                         "--checkpoint-segments layers",
                                                                 "choices": ["float32", "bfloat16"]})
    memory_budget: str = field(default="", metadata={"help": "GiB one patch's training step may use, or 'auto' "
                                                             "(CUDA: 90% of the card, CPU: 80% of available RAM): "
                                                             "picks the checkpoint plan per patch (meshgnn/plan.py) "
                                                             "and says which; overrides the checkpoint flags; "
                                                             "empty: off"})
    bf16: bool = field(default=False, metadata={"help": "bf16 autocast (fp32 master weights)"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model (inductor fuses its element-wise "
                                                           "work; the first steps pay the compilation)"})
    ops_backend: str = field(default="ours", metadata={"help": "aggregation kernels: ours (deterministic CSR "
                                                               "kernels), or the baselines torch_scatter, pyg "
                                                               "(extras [scatter], [pyg]) and index_add",
                                                       "choices": ["ours", "torch_scatter", "pyg", "index_add"]})
    dtype: str = field(default="float32", metadata={"help": "parameter dtype", "choices": ["float32", "float64"]})
    freeze_normalizers_after: int = field(default=1000, metadata={"help": "normalizer accumulations before freezing"})
    val_trajectories: list[str] = field(default_factory=list,
                                        metadata={"help": "held-out trajectories (default: the last one)"})
    checkpoint_every: int = field(default=200, metadata={"help": "steps between checkpoints"})
    log_every: int = field(default=10, metadata={"help": "steps between log lines"})
    resume: bool = field(default=False, metadata={"help": "continue from <out>/checkpoint.pt"})
    stop_at: int = field(default=0, metadata={"help": "checkpoint and stop after this step as if preempted "
                                                      "(staged runs, tests); 0: never"})
    max_minutes: float = field(default=0.0, metadata={"help": "wall-clock cap: checkpoint and stop after this "
                                                              "many minutes (0: none)"})
    device: str = field(default="auto", metadata={"help": "auto|cpu|cuda"})
    progress: bool = field(default=True, metadata={"help": "progress bar on rank 0"})
    max_cache_mb: int = field(default=1024, metadata={"help": "frame cache per rank (MiB)"})


@dataclass
class RolloutConfig:
    checkpoint: str = field(default="", metadata={"cli": False})
    dataset: str = field(default="", metadata={"cli": False})
    out: str = field(default="rollout", metadata={"help": "output folder"})
    trajectory: str = field(default="", metadata={"help": "trajectory id (default: the first held-out one)"})
    steps: int = field(default=0, metadata={"help": "steps to roll out (0: the whole trajectory)"})
    start: int = field(default=0, metadata={"help": "frame of the trajectory to start from (metrics and frames "
                                                    "from there on)"})
    every: int = field(default=1, metadata={"help": "write every K-th step"})
    formats: list[str] = field(default_factory=lambda: ["pvd"],
                               metadata={"help": "output formats: pvd (.pvd + .vtu), pvtu (partitioned), vtkhdf"})
    parts: str = field(default="", metadata={"help": "part store for a partitioned rollout (under mpirun)"})
    halo_mode: str = field(default="lhop", metadata={"help": "lhop: halo of layers x stages, refreshed once per "
                                                             "step; per-layer: 1-hop halo refreshed before every "
                                                             "layer", "choices": ["lhop", "per-layer"]})
    render: bool = field(default=True, metadata={"help": "render a PNG of the first state field at the end"})
    device: str = field(default="cpu", metadata={"help": "cpu|cuda|auto"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model (the first step pays the "
                                                           "compilation)"})
    ops_backend: str = field(default="ours", metadata={"help": "aggregation kernels: ours (deterministic CSR "
                                                               "kernels), or the baselines torch_scatter, pyg "
                                                               "(extras [scatter], [pyg]) and index_add",
                                                       "choices": ["ours", "torch_scatter", "pyg", "index_add"]})
    malloc_cache: bool = field(default=False, metadata={"help": "CPU: keep freed memory for reuse (glibc): on top "
                                                                "of huge pages ~1.2x faster steps, ~1.3x the peak "
                                                                "RSS (without them ~2x / ~2x)"})
    progress: bool = field(default=True, metadata={"help": "progress bar"})
