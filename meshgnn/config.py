"""Run configuration as dataclasses: defaults in code, a TOML/JSON file for a study, flags for one-off changes.

``add_dataclass_arguments(parser, Cls)`` turns every field (with ``metadata={"help": ...}``) into ``--field-name``;
``resolve(Cls, args)`` merges defaults < ``--config`` file < explicit flags.

One option path: argparse only collects the flag strings; every value, from a flag or from the ``--config``
file, goes through :func:`convert_value` — the type from the field's annotation (``bool``, ``int``, ``float``,
``str``, ``list[...]``, ``Optional``), ``choices`` and bounds from its metadata — and an error names the flag or
the file and key. Bounds: ``metadata={"min": 1}`` / ``{"max": ...}`` / ``{"gt": 0.0}`` (strictly greater); a
numeric field without any bound is taken as ``min 0`` (a count, size, rate or time); ``{"min": None}`` opts out.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
import json
import math
import tomllib
import typing
from pathlib import Path

from .errors import InputError

_UNSET = object()
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


# ----------------------------------------------------------------------------------------------- conversion
def field_type(cls, f: dataclasses.Field):
    """``(base type, is_list, optional)`` of a dataclass field from its annotation."""
    typ = typing.get_type_hints(cls)[f.name]
    optional = False
    args = typing.get_args(typ)
    if type(None) in args:                                        # Optional[T] / T | None
        optional = True
        typ = next(a for a in args if a is not type(None))
    if typing.get_origin(typ) in (list, tuple):
        return (typing.get_args(typ) or (str,))[0], True, optional
    return typ, False, optional


def bounds(f: dataclasses.Field, base) -> dict:
    """``{"min": .., "max": .., "gt": ..}`` of a numeric field (default ``min 0``; none for other types)."""
    if base not in (int, float):
        return {}
    b = {k: f.metadata[k] for k in ("min", "max", "gt") if k in f.metadata}
    if not b:
        b = {"min": 0}
    return {k: v for k, v in b.items() if v is not None}


def _scalar(base, value, choices):
    """``value`` (a flag string or a file value) as ``base``; raises ``ValueError`` with what was expected."""
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(f"expected true or false, got {value!r}")
    if base is int:
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ValueError(f"expected an integer, got {value!r}")
    if base is float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        try:
            out = float(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {value!r}") from None
        if not math.isfinite(out):
            raise ValueError(f"expected a finite number, got {value!r}")
        return out
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    if choices and value not in choices:
        raise ValueError(f"expected one of {', '.join(map(str, choices))}, got {value!r}")
    return base(value) if base is not str else value


def _check_bounds(value, b: dict) -> None:
    if "min" in b and value < b["min"]:
        raise ValueError(f"expected a value >= {b['min']}, got {value!r}")
    if "max" in b and value > b["max"]:
        raise ValueError(f"expected a value <= {b['max']}, got {value!r}")
    if "gt" in b and value <= b["gt"]:
        raise ValueError(f"expected a value > {b['gt']}, got {value!r}")


def convert_value(cls, f: dataclasses.Field, value):
    """``value`` converted and checked for field ``f`` of ``cls`` — the same for flags and config files.

    Raises ``ValueError`` saying what was expected (the caller adds the flag or file and key)."""
    base, is_list, optional = field_type(cls, f)
    if value is None and optional:
        return None
    choices = f.metadata.get("choices")
    b = bounds(f, base)
    if is_list:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        out = [_scalar(base, v, choices) for v in items]
        for v in out:
            _check_bounds(v, b)
        return out
    if isinstance(value, (list, tuple, dict)):
        raise ValueError(f"expected a single value, got {value!r}")
    out = _scalar(base, value, choices)
    if b:
        _check_bounds(out, b)
    return out


def _help(f: dataclasses.Field, default, base) -> str:
    text = f.metadata.get("help", "")
    extra = []
    b = bounds(f, base)
    if b:
        extra.append(", ".join(f"{'>' if k == 'gt' else '>=' if k == 'min' else '<='} {v}" for k, v in b.items()))
    if "default" not in text:                                     # never "(default: x)" twice
        extra.append(f"default: {default}")
    return f"{text} ({'; '.join(extra)})".strip() if extra else text


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One ``--field-name`` per field of ``cls``; values stay strings until :func:`resolve` converts them."""
    parser.add_argument("--config", metavar="FILE", help="TOML or JSON file of options (flags override it)")
    for f in dataclasses.fields(cls):
        if f.name in skip or f.metadata.get("cli") is False:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        base, is_list, _ = field_type(cls, f)
        choices = f.metadata.get("choices")
        metavar = "{" + ",".join(map(str, choices)) + "}" if choices else base.__name__.upper()
        help_ = _help(f, default, base)
        if base is bool and not is_list:
            parser.add_argument(flag, nargs="?", const="true", default=_UNSET, metavar="BOOL", help=help_)
        elif is_list:
            parser.add_argument(flag, nargs="+", default=_UNSET, metavar=metavar, help=help_)
        else:
            parser.add_argument(flag, default=_UNSET, metavar=metavar, help=help_)


def load_file(path) -> dict:
    path = Path(path)
    if not path.exists():
        raise InputError(path, None, "config file not found")
    try:
        data = json.loads(path.read_text()) if path.suffix == ".json" else tomllib.loads(path.read_text())
    except (ValueError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputError(path, None, f"not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {e}") from None
    except OSError as e:
        raise InputError(path, None, f"cannot read the config file ({e.strerror})") from None
    if not isinstance(data, dict):
        raise InputError(path, None, "expected a table/object of options at the top level")
    return data


def resolve(cls, args: argparse.Namespace, **extra):
    """Build ``cls`` from defaults, then ``args.config`` (if any), then flags the user gave, then ``extra``.

    File values and flag strings go through :func:`convert_value` alike; errors name ``FILE: key`` or ``--flag``.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict = {}
    if getattr(args, "config", None):
        file_values = load_file(args.config)
        section = file_values.get(cls.__name__.lower().replace("config", ""), file_values)
        if not isinstance(section, dict):
            raise InputError(args.config, cls.__name__.lower().replace("config", ""), "expected a table of options")
        for key, raw in section.items():
            if key not in fields:
                raise InputError(args.config, key, f"unknown option (known: {', '.join(sorted(fields))})")
            try:
                values[key] = convert_value(cls, fields[key], raw)
            except ValueError as e:
                raise InputError(args.config, key, str(e)) from None
    for name, f in fields.items():
        raw = getattr(args, name, _UNSET)
        if raw is _UNSET or f.metadata.get("cli") is False:
            continue
        try:
            values[name] = convert_value(cls, f, raw)
        except ValueError as e:
            raise InputError("--" + name.replace("_", "-"), None, str(e)) from None
    values.update(extra)
    return cls(**values)


# ----------------------------------------------------------------------------- the run configurations
@dataclass
class TrainConfig:
    dataset: str = field(default="", metadata={"cli": False})
    out: str = field(default="runs/train", metadata={"help": "output folder (checkpoints, logs)"})
    steps: int = field(default=2000, metadata={"help": "optimizer steps", "min": 1})
    lr: float = field(default=1e-3, metadata={"help": "initial learning rate (Adam)", "gt": 0.0})
    lr_final: float = field(default=1e-5, metadata={"help": "learning rate reached at the last step", "min": 0.0})
    lr_schedule: str = field(default="cosine", metadata={"help": "decay after the warm-up: cosine or exp (both to "
                                                                 "--lr-final at the last step) or constant",
                                                         "choices": ["cosine", "exp", "constant"]})
    warmup_steps: int = field(default=50, metadata={"help": "linear learning-rate warm-up steps", "min": 0})
    batch: int = field(default=2, metadata={"help": "samples (trajectory, frame) per optimizer step; their "
                                                    "gradients add up exactly as patches do", "min": 1})
    data_parallel: int = field(default=1, metadata={"help": "split the ranks into this many groups, each training "
                                                            "its own share of the batch on a full copy of the "
                                                            "domain (ranks must divide evenly)", "min": 1})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the global gradient norm to this (0: off)",
                                                    "min": 0.0})
    unroll: int = field(default=1, metadata={"help": "steps unrolled per sample: the loss compares every predicted "
                                                     "state of a K-step rollout with the data (needs a halo of "
                                                     "K x layers x stages, or per-layer mode)", "min": 1})
    pushforward: bool = field(default=False, metadata={"help": "with --unroll K: only the last step carries "
                                                               "gradient (the pushforward trick)"})
    train_start: int = field(default=-1, metadata={"help": "first input frame trained on; -1: past an impulsive "
                                                           "start (detected and reported; else frame 0)",
                                                           "min": -1})
    val_every: int = field(default=100, metadata={"help": "steps between validations on the held-out "
                                                          "trajectories (0: only at the end)", "min": 0})
    val_rollout: int = field(default=20, metadata={"help": "steps of the validation rollout (0: the whole "
                                                           "held-out trajectory)", "min": 0})
    val_start: int = field(default=-1, metadata={"help": "frame the validation rollout starts from; -1: past "
                                                         "an impulsive start (detected and reported)", "min": -1})
    val_samples: int = field(default=8, metadata={"help": "held-out frames in the one-step validation loss",
                                                  "min": 1})
    latent: int = field(default=128, metadata={"help": "latent size H", "min": 1})
    layers: int = field(default=15, metadata={"help": "message-passing layers L", "min": 1})
    hidden_layers: int = field(default=2, metadata={"help": "hidden layers per MLP", "min": 1})
    aggregate: str = field(default="state", metadata={
        "help": "what a node sums over its incoming edges: state (the updated edge latents, as PhysicsNeMo's "
                "MeshGraphNet; measured better, docs/training.md) or update (the edge MLP outputs, as the "
                "MeshGraphNets paper)", "choices": ("state", "update")})
    integrator: str = field(default="euler", metadata={"help": "euler|heun|midpoint|heun3|ssprk3|rk4 or a tableau JSON"})
    history: int = field(default=0, metadata={"help": "previous state changes the model reads besides the state "
                                                  "(0: the state only, as MeshGraphNets); training and rollouts "
                                                  "then start H frames later", "min": 0})
    noise_std: list[float] = field(default_factory=lambda: [0.05],
                                   metadata={"help": "training noise std per state component, in units of "
                                                     "--noise-scale (one value: all)"})
    noise_scale: str = field(default="field", metadata={"help": "unit of --noise-std per component: field (the "
                                                                "field's std over the data) or step (the std of its "
                                                                "one-step change)", "choices": ["field", "step"]})
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
                                                             "(CUDA: 0.9 x the card, CPU: 0.8 x available RAM): "
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
    checkpoint_every: int = field(default=200, metadata={"help": "steps between checkpoints", "min": 1})
    log_every: int = field(default=1, metadata={"help": "steps between rows of train_log.csv and TensorBoard "
                                                        "points (the last step is always written)", "min": 1})
    resume: bool = field(default=False, metadata={"help": "continue from <out>/checkpoint.pt"})
    overwrite: bool = field(default=False, metadata={"help": "start afresh in an --out folder that holds another "
                                                             "run (its checkpoint and log are deleted first)"})
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
    clamp: bool = field(default=False, metadata={"help": "clamp predicted (non-prescribed) values to the range the "
                                                         "model saw in training (a limiter against drift)"})
    start: int = field(default=0, metadata={"help": "frame of the trajectory to start from (metrics and frames "
                                                    "from there on)"})
    every: int = field(default=1, metadata={"help": "write every K-th step", "min": 1})
    formats: list[str] = field(default_factory=lambda: ["pvd"],
                               metadata={"help": "output formats: pvd (.pvd + .vtu), pvtu (partitioned), vtkhdf",
                                         "choices": ["pvd", "pvtu", "vtkhdf"]})
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
