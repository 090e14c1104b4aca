"""PyTorch Geometric bridge: a dataset frame as a ``torch_geometric.data.Data``, and back; the model on a ``Data``.

Needs the optional extra ``pip install 'meshgnn[pyg]'``. A frame ``(trajectory, step)`` of a dataset becomes::

    edge_index  (2, E) int64    directed edges [senders; receivers], receiver-sorted (the dataset's /mesh/edges)
    pos         (N, D) float64  node coordinates (the dataset's own precision; ``.float()`` for float32 models)
    node_type   (N,)   int64    codes into ``node_type_names``
    x           (N, C) float32  the state fields at ``step``, concatenated in ``state_fields`` order
    y           (N, C) float32  the state at ``step + 1`` (absent at a trajectory's last step, or target=False)
    static      (N, S) float32  the static fields of the trajectory, in ``static_fields`` order (S may be 0)
    edge_attr   (E, F) float32  meshgnn's raw edge features (relative position sender - receiver, its norm)
    face        (3, M) int64    triangles, PyG's convention; every other cell type as ``<type>_index`` (k, M),
                                e.g. ``tetra_index`` (4, M): batched with node offsets like ``edge_index``
    plus plain attributes: state_fields, state_components, static_fields, static_components, node_type_names,
    dirichlet_types, dirichlet_fields, units, dt, trajectory, step, time (and time_next with ``y``)

:func:`dataset_arguments` and :func:`frame_arrays` turn a ``Data`` back into the arrays of a
:class:`~meshgnn.io.dataset.DatasetWriter`; :func:`write_dataset` writes a list of frames (one or more
trajectories) as a dataset. :func:`patch_tensors` builds the model's whole-graph input from a ``Data`` (also a
``Batch``: a disjoint union of graphs) and :func:`predict` runs one simulator step on it.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError, MeshgnnError
from ..features import edge_features
from ..graph import Graph, sort_by_receiver
from .dataset import CELL_NODES, NODE_TYPES, DatasetWriter, FieldSpec

LAYOUT_KEYS = ("state_fields", "state_components", "static_fields", "static_components", "node_type_names",
               "dirichlet_types", "dirichlet_fields", "units")


def _pyg_data():
    try:
        from torch_geometric.data import Data
    except ImportError as exc:
        raise MeshgnnError("meshgnn.io.pyg needs torch-geometric (pip install 'meshgnn[pyg]')") from exc
    return Data


def cell_key(cell_type: str) -> str:
    """The ``Data`` attribute holding cells of ``cell_type``: ``face`` for triangles, else ``<type>_index``."""
    return "face" if cell_type == "triangle" else f"{cell_type}_index"


# ------------------------------------------------------------------------------------------- dataset -> Data
def to_data(ds, traj, step: int, target: bool = True):
    """Frame ``step`` of trajectory ``traj`` of an open :class:`~meshgnn.io.dataset.Dataset` as a PyG ``Data``.

    Args:
        ds: the dataset; traj: trajectory id; step: time index in ``[0, T)`` (negative counts from the end).
        target: add ``y``, the state at ``step + 1``, when the trajectory has it.
    Returns:
        ``torch_geometric.data.Data`` with the attributes listed in the module doc.
    """
    Data = _pyg_data()
    tid = str(traj)
    T = ds.num_steps(tid)
    if not -T <= int(step) < T:
        raise InputError(ds.path, f"/trajectories/{tid}", f"step {step}: expected a time index in [0, {T})")
    step = int(step) % T
    times = ds.times(tid)
    ei = ds.edge_index()
    data = Data(edge_index=torch.from_numpy(np.ascontiguousarray(ei)), pos=torch.from_numpy(ds.points.copy()),
                node_type=torch.from_numpy(np.asarray(ds.node_type, dtype=np.int64)),
                x=torch.from_numpy(ds.read_state(tid, step)), static=torch.from_numpy(ds.read_static(tid)),
                edge_attr=edge_features(ds.points, ei[0], ei[1]).to(torch.float32))
    for ctype, conn in ds.cells.items():
        data[cell_key(ctype)] = torch.from_numpy(np.ascontiguousarray(conn.T))
    if target and step + 1 < T:
        data.y = torch.from_numpy(ds.read_state(tid, step + 1))
        data.time_next = float(times[step + 1])
    data.state_fields = list(ds.state_fields)
    data.state_components = [ds.fields[f].components for f in ds.state_fields]
    data.static_fields = list(ds.static_fields)
    data.static_components = [ds.fields[f].components for f in ds.static_fields]
    data.node_type_names = list(ds.node_type_names)
    data.dirichlet_types = list(ds.dirichlet_types)
    data.dirichlet_fields = {f: list(t) for f, t in ds.dirichlet_fields.items()}
    data.units = {f: ds.fields[f].units for f in ds.fields}
    data.dt, data.trajectory, data.step, data.time = float(ds.dt), tid, step, float(times[step])
    return data


# ------------------------------------------------------------------------------------------- Data -> arrays
def _attr(data, name, default=None):
    return data[name] if name in data else default


def _numpy(t) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def _layout(data) -> dict:
    """Field names and sizes of ``data`` (its own attributes, else one state field ``x`` and static ``static``)."""
    if "x" not in data or data.x is None:
        raise MeshgnnError("Data: expected x (N, C), the state to write or step from")
    width = int(data.x.shape[1]) if data.x.dim() == 2 else 1
    static = _attr(data, "static")
    swidth = 0 if static is None else (int(static.shape[1]) if static.dim() == 2 else 1)
    lay = {k: _attr(data, k) for k in LAYOUT_KEYS}
    if lay["state_fields"] is None:
        lay["state_fields"], lay["state_components"] = ["x"], [width]
    if lay["static_fields"] is None:
        lay["static_fields"], lay["static_components"] = (["static"], [swidth]) if swidth else ([], [])
    if sum(lay["state_components"]) != width:
        raise MeshgnnError(f"Data.x: expected {sum(lay['state_components'])} columns "
                           f"({lay['state_fields']}), got {width}")
    if sum(lay["static_components"]) != swidth:
        raise MeshgnnError(f"Data.static: expected {sum(lay['static_components'])} columns "
                           f"({lay['static_fields']}), got {swidth}")
    if lay["node_type_names"] is None:
        lay["node_type_names"] = list(NODE_TYPES)
    lay["dirichlet_types"] = list(lay["dirichlet_types"] or [])
    lay["units"] = dict(lay["units"] or {})
    return lay


def _cells(data, n: int) -> dict[str, np.ndarray]:
    """``{cell type: (M, k)}`` from ``face`` / ``<type>_index``; a graph without cells becomes ``line`` cells."""
    cells = {}
    for ctype in CELL_NODES:
        v = _attr(data, cell_key(ctype))
        if v is not None:
            cells[ctype] = np.ascontiguousarray(_numpy(v).T.astype(np.int64))
    if not cells:
        ei = _numpy(data.edge_index).astype(np.int64)
        lo, hi = np.minimum(ei[0], ei[1]), np.maximum(ei[0], ei[1])
        keys = np.unique(lo[lo != hi] * n + hi[lo != hi])
        cells["line"] = np.stack([keys // n, keys % n], axis=1)
    return cells


def dataset_arguments(data) -> dict:
    """Keyword arguments of :class:`~meshgnn.io.dataset.DatasetWriter` (all but ``path``) for ``data``'s mesh.

    Returns:
        ``points`` (N, D), ``cells`` {type: (M, k)}, ``node_type`` (N,), ``node_type_names``, ``dt``, ``fields``
        (FieldSpec list), ``dirichlet_types``, ``dirichlet_fields`` (or None), ``edges`` (2, E) receiver-sorted.
    """
    lay = _layout(data)
    pos = _numpy(data.pos).astype(np.float64)
    n = pos.shape[0]
    nt = _attr(data, "node_type")
    edges = _numpy(data.edge_index).astype(np.int64)
    if edges.shape[1] and np.any(np.diff(edges[1] * np.int64(n) + edges[0]) < 0):
        edges = sort_by_receiver(edges, n)
    units = lay["units"]
    fields = [FieldSpec(name, "state", int(c), str(units.get(name, "")))
              for name, c in zip(lay["state_fields"], lay["state_components"])]
    fields += [FieldSpec(name, "static", int(c), str(units.get(name, "")))
               for name, c in zip(lay["static_fields"], lay["static_components"])]
    return dict(points=pos, cells=_cells(data, n),
                node_type=np.zeros(n, np.int8) if nt is None else _numpy(nt).astype(np.int8),
                node_type_names=list(lay["node_type_names"]), dt=float(_attr(data, "dt", 1.0)), fields=fields,
                dirichlet_types=lay["dirichlet_types"], dirichlet_fields=lay["dirichlet_fields"], edges=edges)


def _split(values: np.ndarray, names, comps) -> dict[str, np.ndarray]:
    values = values.reshape(values.shape[0], -1)
    out, o = {}, 0
    for name, c in zip(names, comps):
        out[name] = values[:, o:o + int(c)]
        o += int(c)
    return out


def frame_arrays(data) -> tuple[dict, dict, float]:
    """``(state, static, time)`` of one frame: ``{state field: (N, C)}``, ``{static field: (N, C)}``, its time."""
    lay = _layout(data)
    state = _split(_numpy(data.x).astype(np.float32), lay["state_fields"], lay["state_components"])
    static = _attr(data, "static")
    statics = {} if static is None or not lay["static_fields"] else \
        _split(_numpy(static).astype(np.float32), lay["static_fields"], lay["static_components"])
    step = int(_attr(data, "step", 0))
    return state, statics, float(_attr(data, "time", step * float(_attr(data, "dt", 1.0))))


def _same_mesh(ref: dict, data, where: str) -> None:
    other = dataset_arguments(data)
    for key in ("points", "node_type", "edges"):
        if ref[key].shape != other[key].shape or not np.array_equal(ref[key], other[key]):
            raise MeshgnnError(f"{where}: {key} differs from the first frame's (one dataset holds one mesh)")
    if ref["fields"] != other["fields"]:                   # FieldSpec: frozen dataclasses, compared by value
        raise MeshgnnError(f"{where}: fields differ from the first frame's")


def write_dataset(path, frames, provenance: dict | None = None) -> Path:
    """Write PyG frames (one mesh, any number of trajectories) as a meshgnn dataset at ``path``.

    Frames are grouped by their ``trajectory`` attribute (default ``"0"``) and ordered by ``step``; each frame's
    ``x`` is one recorded step, renumbered from 0. The last frame's ``y`` (with ``time_next``) adds the step after
    it, so one ``Data`` from :func:`to_data` becomes a two-step, trainable dataset.

    Args:
        path: output ``.h5`` (written atomically); frames: a ``Data``, a ``Batch`` or a sequence of them.
    Returns:
        ``Path(path)``.
    """
    frames = [frames] if hasattr(frames, "edge_index") else list(frames)
    frames = [g for d in frames for g in (d.to_data_list() if hasattr(d, "to_data_list") else [d])]  # Batches
    if not frames:
        raise MeshgnnError(f"{path}: no frames to write")
    args = dataset_arguments(frames[0])
    groups: dict[str, list] = defaultdict(list)
    for i, d in enumerate(frames):
        if i:
            _same_mesh(args, d, f"frame {i}")
        groups[str(_attr(d, "trajectory", "0"))].append(d)
    prov = dict(provenance or {}, source="meshgnn.io.pyg")
    with DatasetWriter(path, provenance=prov, **args) as w:
        for tid, group in groups.items():
            group.sort(key=lambda d: int(_attr(d, "step", 0)))
            steps = [frame_arrays(d) for d in group]
            last = group[-1]
            if _attr(last, "y") is not None:
                state, static, time = frame_arrays(last)
                lay = _layout(last)
                nxt = _split(_numpy(last.y).astype(np.float32), lay["state_fields"], lay["state_components"])
                steps.append((nxt, static, float(_attr(last, "time_next", time + args["dt"]))))
            w.add_trajectory(tid, len(steps), static=steps[0][1])
            for k, (state, _, time) in enumerate(steps):
                w.write_step(tid, k, time, state)
    return Path(path)


# ------------------------------------------------------------------------------------------- the model on Data
def patch_tensors(data, device=None, dtype=torch.float32):
    """The whole-graph :class:`~meshgnn.simulator.PatchTensors` of ``data`` (a ``Data`` or a ``Batch``).

    Edges are taken from ``data.edge_index`` (receiver-sorted here if they are not) and their features computed
    from ``data.pos`` in float64, exactly as meshgnn computes them from a dataset.
    """
    from ..simulator import PatchTensors

    pos = _numpy(data.pos).astype(np.float64)
    n = pos.shape[0]
    ei = _numpy(data.edge_index).astype(np.int64)
    if ei.ndim != 2 or ei.shape[0] != 2:
        raise MeshgnnError(f"Data.edge_index: expected shape (2, E), got {tuple(ei.shape)}")
    if ei.size and (ei.min() < 0 or ei.max() >= n):
        raise MeshgnnError(f"Data.edge_index: expected node indices in [0, {n}) (Data.pos has {n} rows)")
    if ei.shape[1] and np.any(np.diff(ei[1]) < 0):
        ei = sort_by_receiver(ei, n)
    nt = _attr(data, "node_type")
    node_type = torch.zeros(n, dtype=torch.int64) if nt is None else torch.as_tensor(nt).to(torch.int64).cpu()
    tens = PatchTensors(Graph.from_edge_index(ei, n), edge_features(pos, ei[0], ei[1]).to(dtype), node_type,
                        torch.arange(n, dtype=torch.int64), n)
    return tens.to(device) if device is not None else tens


def predict(sim, data):
    """One time step of simulator ``sim`` from ``data.x``: the predicted state ``(N, C)`` on ``sim``'s device.

    Prescribed (Dirichlet) components take ``data.y``'s values when ``data`` has ``y``, else keep ``x``'s.
    Gradients flow as in :meth:`~meshgnn.simulator.Simulator.step`; wrap in ``torch.no_grad()`` for inference.
    """
    param = next(sim.parameters())
    device, dtype = param.device, param.dtype
    lay = sim.layout
    names = _attr(data, "state_fields")
    batched = names if names and isinstance(names[0], (list, tuple)) else [names]   # a Batch: one list per graph
    for held in batched:
        if held is not None and list(held) != list(lay.state_fields):
            raise MeshgnnError(f"Data.state_fields: the simulator predicts {lay.state_fields}, the Data holds {held}")
    x = torch.as_tensor(data.x).to(device, dtype).reshape(data.x.shape[0], -1)
    if x.shape[1] != lay.state_size:
        raise MeshgnnError(f"Data.x: expected {lay.state_size} columns ({lay.state_fields}), got {x.shape[1]}")
    static = _attr(data, "static")
    static = x.new_zeros(x.shape[0], 0) if static is None else torch.as_tensor(static).to(device, dtype)
    if static.shape[-1] != lay.static_size:
        raise MeshgnnError(f"Data.static: expected {lay.static_size} columns ({lay.static_fields}), "
                           f"got {static.shape[-1]}")
    tens = patch_tensors(data, device, dtype)
    if tens.node_type.numel() and int(tens.node_type.max()) >= lay.num_node_types:
        raise MeshgnnError(f"Data.node_type: expected codes in [0, {lay.num_node_types}) ({lay.node_type_names})")
    y = _attr(data, "y")
    y_next = None if y is None else torch.as_tensor(y).to(device, dtype)
    history = None
    if sim.history:     # a model trained with --history H: Data.history (N, H·C), the last changes, newest first
        h = _attr(data, "history")
        if h is None or tuple(h.shape) != (x.shape[0], lay.state_size * sim.history):
            raise MeshgnnError(f"Data.history: this model reads the last {sim.history} state change(s): expected "
                               f"({x.shape[0]}, {lay.state_size * sim.history}), got "
                               f"{'none' if h is None else tuple(h.shape)}")
        history = torch.as_tensor(h).to(device, dtype)
    return sim.step(x, static, tens, y_next_fixed=y_next, history=history)
