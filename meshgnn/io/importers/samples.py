"""Small synthetic solver outputs in every importable format, and a one-call imported dataset — for tests,
fixtures and examples (``small_imported_dataset(tmp_path)`` gives a ready ``.h5``).

The mesh is a box of Kuhn tets; the fields are a smooth travelling wave, so every value is known exactly:
``U = (1 + 0.5 sin(2π(x - t)), 0.2 cos(2π y) e^{-t}, 0.1 z)``, ``p = x y + t`` and static ``k = 1 + x``.
Node types: x = 0 inlet, x = 1 outlet, y = 0 or 1 wall (codes of ``NODE_TYPES``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

def box_tets(nx: int = 6, ny: int = 4, nz: int = 3, size=(1.0, 1.0, 0.5)):
    """Tet mesh of a box with ``nx * ny * nz`` hexes (Kuhn tets, positive VTK orientation):
    ``(points (N,3) float64, tets (M,4) int64)``."""
    from ...meshes import box_tets as structured_box

    return structured_box(nx + 1, ny + 1, nz + 1, size=size)


def sample_fields(points: np.ndarray, t: float) -> dict[str, np.ndarray]:
    """The exact fields at time ``t``: ``U`` (N,3), ``p`` (N,), ``k`` (N,)."""
    x, y, z = points.T
    u = np.stack([1 + 0.5 * np.sin(2 * np.pi * (x - t)), 0.2 * np.cos(2 * np.pi * y) * np.exp(-t), 0.1 * z], 1)
    return {"U": u, "p": x * y + t, "k": 1 + x}


def sample_node_type(points: np.ndarray) -> np.ndarray:
    """Codes into ``NODE_TYPES``: inlet at x=0, outlet at x=max, wall at y=0/max (walls win at edges)."""
    x, y = points[:, 0], points[:, 1]
    nt = np.zeros(len(points), dtype=np.int64)
    nt[np.isclose(x, x.max())] = 2
    nt[np.isclose(x, 0)] = 1
    nt[np.isclose(y, 0) | np.isclose(y, y.max())] = 3
    return nt


def write_vtu_series(folder, steps: int = 4, dt: float = 0.1, writer: str = "meshio", pvd: bool = True,
                     mesh=None) -> Path:
    """A ``.vtu`` per step (by ``meshio`` or ``pyvista``) plus a ``series.pvd``; returns the ``.pvd`` (or the
    folder when ``pvd`` is false, then each file carries its time as ``TimeValue`` field data)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    points, tets = mesh or box_tets()
    nt = sample_node_type(points)
    entries = []
    for k in range(steps):
        t = k * dt
        f = sample_fields(points, t)
        name = f"step_{k}.vtu"
        if writer == "meshio":
            import meshio
            meshio.write(folder / name, meshio.Mesh(points, [("tetra", tets)],
                                                    point_data={**f, "node_type": nt},
                                                    field_data={"TimeValue": np.array([t])}))
        else:
            import pyvista as pv
            grid = pv.UnstructuredGrid({pv.CellType.TETRA: tets}, points)
            for key, v in {**f, "node_type": nt}.items():
                grid.point_data[key] = v
            grid.field_data["TimeValue"] = np.array([t])
            grid.save(folder / name)
        entries.append((t, name))
    if not pvd:
        return folder
    lines = ['<?xml version="1.0"?>', '<VTKFile type="Collection" version="0.1">', "<Collection>"]
    lines += [f'<DataSet timestep="{t!r}" part="0" file="{n}"/>' for t, n in entries]
    lines += ["</Collection>", "</VTKFile>"]
    (folder / "series.pvd").write_text("\n".join(lines) + "\n")
    return folder / "series.pvd"


def write_xdmf_series(path, steps: int = 4, dt: float = 0.1, mesh=None) -> Path:
    """An XDMF time series written by ``meshio.xdmf.TimeSeriesWriter`` (its ``.h5`` beside it)."""
    import contextlib

    import meshio

    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    points, tets = mesh or box_tets()
    # meshio writes the heavy-data .h5 into the current folder, not beside the .xdmf.
    with contextlib.chdir(path.parent), meshio.xdmf.TimeSeriesWriter(path.name) as w:
        w.write_points_cells(points, [("tetra", tets)])
        for k in range(steps):
            f = sample_fields(points, k * dt)
            w.write_data(k * dt, point_data={**f, "node_type": sample_node_type(points).astype(np.float64)})
    return path


def write_mesh_file(path, mesh=None) -> Path:
    """The sample mesh alone (any meshio format by suffix)."""
    import meshio

    points, tets = mesh or box_tets()
    meshio.write(path, meshio.Mesh(points, [("tetra", tets)]))
    return Path(path)


def write_csv_series(folder, steps: int = 4, dt: float = 0.1, jitter: float = 0.0, shuffle: bool = True,
                     seed: int = 0, mesh=None) -> Path:
    """STAR-CCM+-style tables ``table_<k>.csv``: ``"X (m)","Y (m)","Z (m)"``, ``Velocity[i/j/k] (m/s)``,
    ``Pressure (Pa)``, ``Time (s)``, a text ``Region`` column; rows shuffled, coordinates jittered by up to
    ``jitter``. Returns the folder."""
    from ..dataset import NODE_TYPES

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    points, _ = mesh or box_tets()
    rng = np.random.default_rng(seed)
    region = np.asarray(NODE_TYPES)[sample_node_type(points)]
    for k in range(steps):
        t = k * dt
        f = sample_fields(points, t)
        order = rng.permutation(len(points)) if shuffle else np.arange(len(points))
        xyz = points + rng.uniform(-jitter, jitter, points.shape) / np.sqrt(3)
        with open(folder / f"table_{k}.csv", "w") as fh:
            fh.write('"X (m)","Y (m)","Z (m)","Velocity[i] (m/s)","Velocity[j] (m/s)","Velocity[k] (m/s)",'
                     '"Pressure (Pa)","Time (s)","Region"\n')
            for r in order:
                u = f["U"][r]
                nums = (*xyz[r], *u, f["p"][r], t)
                fh.write(",".join(f"{float(v):.17g}" for v in nums) + f",{region[r]}\n")
    return folder


def small_imported_dataset(folder, fmt: str = "vtu", steps: int = 4, trajectories: int = 1, **import_kwargs
                           ) -> Path:
    """Write a sample series in ``fmt`` (vtu, pvd-pyvista, xdmf or csv) and import it; returns the ``.h5``.

    Fixture-friendly: ``small_imported_dataset(tmp_path)`` -> a dataset with state ``U, p``, static ``k``,
    node types inlet/outlet/wall/interior, ``steps`` steps of dt 0.1 per trajectory.
    """
    from . import build_options, import_series

    folder = Path(folder)
    sources = []
    for i in range(trajectories):
        sub = folder / f"src_{fmt}_{i}"
        if fmt == "vtu":
            sources.append(write_vtu_series(sub, steps))
        elif fmt == "pvd-pyvista":
            sources.append(write_vtu_series(sub, steps, writer="pyvista"))
        elif fmt == "xdmf":
            sources.append(write_xdmf_series(sub / "series.xdmf", steps))
        elif fmt == "csv":
            sources.append(write_csv_series(sub, steps))
        else:
            raise ValueError(f"unknown sample format {fmt!r}")
    opts = dict(state="U,p", static="k" if fmt != "csv" else None, units="U=m/s,p=Pa",
                node_types="node_type" if fmt != "csv" else "Region")
    if fmt == "csv":
        mesh = write_mesh_file(folder / "mesh.vtu")
        opts["mesh"] = str(mesh)
        opts["state"] = "Velocity,Pressure"
    opts.update(import_kwargs)
    out = folder / f"imported_{fmt}.h5"
    import_series([str(s) for s in sources], out, build_options(**opts), report=lambda s: None)
    return out


def train_and_roll_out(dataset, out, steps: int = 3) -> dict:
    """Train a tiny model (2 layers, latent 16) for ``steps`` steps on ``dataset`` and roll out its held-out
    trajectory into ``out/rollout`` (no picture); returns :func:`meshgnn.rollout.rollout`'s result dict."""
    from ...config import RolloutConfig
    from ...rollout import rollout
    from ...train import TrainConfig, train

    out = Path(out)
    res = train(TrainConfig(dataset=str(dataset), out=str(out / "run"), steps=steps, layers=2, latent=16,
                            hidden_layers=1, progress=False))
    if not np.isfinite(res["loss"]):
        raise AssertionError(f"training on {dataset} gave a non-finite loss")
    return rollout(RolloutConfig(checkpoint=res["checkpoint"], dataset=str(dataset), out=str(out / "rollout"),
                                 render=False, progress=False))
