"""Checkpoints that cannot run code: tensors in a safetensors file, everything else as JSON in its header.

A checkpoint holds any nested structure of dicts, lists, tuples, numbers, strings, ``None``, torch tensors and
numpy arrays (model, normalizers, optimizer, scheduler, RNG states, step, configuration — whatever
``Trainer.state_dict()`` returns). :func:`encode` splits it into a JSON tree and a flat ``{key: tensor}`` map;
the tree goes into the safetensors metadata (``"meshgnn"``), the tensors into the file. Loading parses JSON and
raw tensor bytes only: no pickle, nothing in the file is executed.

Version 1 checkpoints were pickles (``torch.save``); they are refused with the migration command
``meshgnn migrate-checkpoint OLD NEW --trust`` (docs/reliability.md §4), the one place that unpickles, and only
when the user vouches for the file.

Written by rank 0 to a temporary file in the same folder, fsynced, then renamed over the old one: a crash or
kill at any moment leaves the previous checkpoint loadable.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from .errors import InputError, MeshgnnError
from .io.atomic import atomic_path

FORMAT = "meshgnn-checkpoint"
VERSION = 2
META_KEY = "meshgnn"
MIGRATE_HINT = "meshgnn migrate-checkpoint {old} NEW.pt --trust"
_MARKERS = ("__tensor__", "__ndarray__", "__tuple__", "__dict__", "__float__", "__dtype__")
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80")        # torch.save zip archive / a bare pickle stream


# ------------------------------------------------------------------------------------------------ plain data
def encode(obj, tensors: dict, where: str = "state"):
    """``obj`` as JSON-able data; tensors and arrays move to ``tensors`` (``{"t<i>": tensor}``) by reference.

    Raises ``TypeError`` naming ``where`` (the key path) for anything else (functions, arbitrary objects).
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().to("cpu").clone().contiguous()     # own storage: safetensors refuses shared
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise TypeError(f"{where}: numpy array of objects cannot be stored in a checkpoint")
        key = f"t{len(tensors)}"
        raw = np.ascontiguousarray(obj)
        tensors[key] = torch.from_numpy(raw.view(np.uint8).reshape(-1).copy())
        return {"__ndarray__": key, "dtype": raw.dtype.str, "shape": list(raw.shape)}
    if isinstance(obj, np.generic):
        return encode(obj.item(), tensors, where)
    if isinstance(obj, torch.dtype):
        return {"__dtype__": str(obj).removeprefix("torch.")}
    if isinstance(obj, (tuple, torch.Size)):
        return {"__tuple__": [encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and k not in _MARKERS for k in obj):
            return {k: encode(v, tensors, f"{where}.{k}") for k, v in obj.items()}
        return {"__dict__": [[encode(k, tensors, where), encode(v, tensors, f"{where}[{k!r}]")]
                             for k, v in obj.items()]}
    raise TypeError(f"{where}: a {type(obj).__name__} cannot be stored in a checkpoint (tensors, arrays, "
                    "numbers, strings, lists, tuples and dicts only)")


def decode(data, tensors: dict):
    """Inverse of :func:`encode`."""
    if isinstance(data, list):
        return [decode(v, tensors) for v in data]
    if not isinstance(data, dict):
        return data
    if "__tensor__" in data:
        return tensors[data["__tensor__"]]
    if "__ndarray__" in data:
        raw = tensors[data["__ndarray__"]].numpy()
        return raw.view(np.dtype(data["dtype"])).reshape(data["shape"]).copy()
    if "__tuple__" in data:
        return tuple(decode(v, tensors) for v in data["__tuple__"])
    if "__float__" in data:
        return float(data["__float__"])
    if "__dtype__" in data:
        return getattr(torch, data["__dtype__"])
    if "__dict__" in data:
        return {_hashable(decode(k, tensors)): decode(v, tensors) for k, v in data["__dict__"]}
    return {k: decode(v, tensors) for k, v in data.items()}


def _hashable(key):
    return tuple(key) if isinstance(key, list) else key


def dataset_signature(ds) -> dict:
    """What a checkpoint's model needs of a dataset: node count, field names, node type names."""
    return dict(num_nodes=int(ds.num_nodes), state_fields=list(ds.state_fields), static_fields=list(ds.static_fields),
                node_type_names=list(ds.node_type_names))


# ------------------------------------------------------------------------------------------------ files
def save(path, trainer, comm=None) -> Path:
    """Write ``trainer``'s state (``trainer.state_dict()``, any nested plain data/tensors) to ``path``."""
    state = dict(trainer=trainer.state_dict(), sim_config=trainer.sim.config(),
                 dataset=dataset_signature(trainer.ds), world_size=getattr(comm, "size", 1))
    return save_state(path, state)


def save_state(path, state: dict) -> Path:
    """Atomically write ``state`` (a dict of plain data and tensors) as a version-2 checkpoint."""
    from safetensors.torch import save as st_save

    tensors: dict = {}
    tree = encode({**state, "format": FORMAT, "version": VERSION}, tensors)
    data = st_save(tensors, metadata={META_KEY: json.dumps(tree, allow_nan=False)})
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(data)
    except OSError as e:                  # full disk, read-only folder: the temp file is gone, the old one kept
        raise MeshgnnError(f"{path}: cannot write the checkpoint ({e.strerror or e}); the previous one, if any, "
                           "is kept") from None
    return Path(path)


def _is_safetensors(head: bytes, size: int) -> bool:
    """A safetensors file: an 8-byte little-endian header length n, then n bytes of JSON starting with ``{``."""
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 8 + n <= size and head[8:9] == b"{"


def _refuse_pickle(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(9)
    # the safetensors test comes first: its length prefix can begin with any byte, 0x80 (pickle's PROTO) included
    if not _is_safetensors(head, path.stat().st_size) and head.startswith(_PICKLE_MAGIC):
        raise InputError(path, None, "a pickle-based checkpoint (meshgnn format 1 or plain torch.save), which can "
                                     "run code when loaded: refused; if you trust where it came from, convert it "
                                     f"with `{MIGRATE_HINT.format(old=path)}`")


def load_metadata(path) -> tuple[dict, object]:
    """``(tree, handle)``: the checkpoint's JSON tree (tensors not read) and an open safetensors handle."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise InputError(path, None, "checkpoint not found")
    if not path.is_file():
        raise InputError(path, None, "not a readable checkpoint (not a file)")
    _refuse_pickle(path)
    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
        meta = handle.metadata() or {}
        tree = json.loads(meta[META_KEY])
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        msg = "no meshgnn metadata" if isinstance(e, KeyError) else f"{type(e).__name__}: {str(e)[:80]}"
        raise InputError(path, None, f"not a readable checkpoint ({msg})") from None
    if not isinstance(tree, dict) or tree.get("format") != FORMAT:
        raise InputError(path, "format", f"expected a {FORMAT} file")
    if tree.get("version") != VERSION:
        raise InputError(path, "version", f"expected version {VERSION}, found {tree.get('version')}")
    return tree, handle


def load(path) -> dict:
    """The state :func:`save` wrote (tensors on the CPU). Raises :class:`InputError` for anything else."""
    tree, handle = load_metadata(path)
    try:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as e:  # noqa: BLE001
        raise InputError(path, None, f"not a readable checkpoint ({type(e).__name__}: {str(e)[:80]})") from None
    try:
        return decode(tree, tensors)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise InputError(path, None, f"not a readable checkpoint (inconsistent contents: {e})") from None


def _V1_ALLOWED() -> list:
    """What a version-1 checkpoint holds beyond tensors and plain data: ``numpy.random.get_state()``'s array."""
    import importlib

    import numpy as np

    allowed = [np.ndarray, np.dtype, type(np.dtype("uint32"))]
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):     # numpy 2 and numpy 1 pickles
        try:
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                allowed.append(importlib.import_module(mod)._reconstruct)
        except (ImportError, AttributeError):
            pass
    return allowed


def migrate(old, new) -> Path:
    """Convert a version-1 (pickle) checkpoint to the current format. Unpickles ``old``: trusted files only."""
    old = Path(old)
    if not old.is_file():
        raise InputError(old, None, "checkpoint not found")
    try:
        with torch.serialization.safe_globals(_V1_ALLOWED()):   # tensors, plain data, numpy's RNG state only
            state = torch.load(old, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise InputError(old, None, f"not a readable pickle checkpoint ({type(e).__name__}: {str(e)[:80]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(old, "format", f"expected a {FORMAT} file")
    if state.get("version") != 1:
        raise InputError(old, "version", f"expected version 1 (pickle), found {state.get('version')}")
    try:
        return save_state(new, {k: v for k, v in state.items() if k not in ("format", "version")})
    except TypeError as e:
        raise InputError(old, None, f"cannot convert: {e}") from None


# ------------------------------------------------------------------------------------------------ checks
def check_dataset(state: dict, ds, path="checkpoint") -> None:
    """Raise a one-line error when the checkpoint's model cannot run on ``ds``."""
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
    dim, have_dim = int(lay.get("dim", 3)), int(getattr(ds, "dim", 3))
    if dim != have_dim:
        raise InputError(path, "layout.dim", f"checkpoint was trained on a {dim}-D mesh, dataset "
                                             f"{getattr(ds, 'path', '')} is {have_dim}-D")


def check_compatible(state: dict, trainer, path="checkpoint") -> None:
    """Resuming needs the same model/integrator configuration and dataset layout."""
    from .simulator import complete_config

    check_dataset(state, trainer.ds, path)
    have, got = trainer.sim.config(), complete_config(state["sim_config"])
    for key in ("latent", "layers", "hidden_layers", "integrator", "history", "aggregate"):
        if got.get(key) != have.get(key):
            raise InputError(path, key, f"checkpoint has {got.get(key)}, run asks for {have.get(key)}")


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
