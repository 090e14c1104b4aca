"""ParaView / OpenFOAM multi-block series: ``case.vtm.series``, one ``.vtm`` file, or a folder/glob of them.

OpenFOAM's ``foamToVTK`` writes, per time, ``VTK/case_<t>.vtm`` pointing at ``case_<t>/internal.vtu`` (the volume
mesh) and ``case_<t>/boundary/<patch>.vtp`` (one surface per patch), plus ``case.vtm.series`` (JSON) with the
times; ParaView's ``vtkXMLMultiBlockDataWriter`` writes the same structure with its own file names. Here:

- **times** come from the ``.series`` file (else the ``TimeValue`` field data of each internal mesh, else ``--dt``);
- the **internal mesh** (the data set named ``internal``/``internalMesh``, else the first volume data set outside a
  boundary block) gives the nodes, cells and point fields (state fields chosen as for any VTK series);
- each **boundary block** (the data sets inside a block named ``boundary``/``patch``/``patches``, else every other
  surface data set) becomes a node group named after its block name, so node types follow the patch names
  (``inlet*`` -> inlet, ``wall*`` -> wall, ..., or ``--node-types 'cyl*=obstacle'``). A boundary point is mapped
  to its internal node by ``vtkOriginalPointIds`` when the surface has them, else by coordinates (nearest internal
  node, within ``--tolerance``, default 1e-6 of the mesh's bounding-box diagonal).
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import InputError
from .series import Frame, Series
from .vtk_series import (expand_files, point_fields, read_series_json, read_vtk_grid, vtk_cell_regions, vtk_cells,
                         vtk_file_time, vtk_time)

INTERNAL_NAMES = ("internal", "internalmesh")
BOUNDARY_BLOCKS = ("boundary", "boundaries", "patch", "patches", "boundarymesh")
VOLUME_SUFFIXES = (".vtu", ".vtk")
DEFAULT_RTOL = 1e-6


@dataclass
class Block:
    """One data set of a ``.vtm`` file: its name, the names of the blocks it sits in, and its file."""

    name: str
    parents: tuple[str, ...]
    file: Path


def is_multiblock_source(source: str) -> bool:
    """True for ``*.vtm.series``, ``*.vtm`` files, and globs/folders of ``.vtm`` files."""
    name = str(source).lower()
    if name.endswith(".vtm.series") or name.endswith(".vtm"):
        return True
    p = Path(source)
    return p.is_dir() and any(f.suffix.lower() == ".vtm" for f in p.iterdir() if f.is_file())


def read_vtm_blocks(path: Path) -> list[Block]:
    """The data sets a ``.vtm`` file lists (nested blocks flattened; pieces of one data set kept apart)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, "multi-block file not found")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise InputError(path, None, f"not a valid .vtm (XML) file: {e}") from None
    top = root.find("vtkMultiBlockDataSet")
    if root.get("type") != "vtkMultiBlockDataSet" or top is None:
        raise InputError(path, "VTKFile", "expected type=\"vtkMultiBlockDataSet\"")
    out: list[Block] = []

    def walk(node, parents):
        for child in node:
            label = child.get("name") or child.get("index") or ""
            if child.tag == "Block":
                walk(child, parents + (label,))
            elif child.tag in ("DataSet", "Piece") and child.get("file"):
                out.append(Block(label or Path(child.get("file")).stem, parents, path.parent / child.get("file")))
            elif child.tag in ("DataSet", "Piece"):
                walk(child, parents + (label,))

    walk(top, ())
    if not out:
        raise InputError(path, None, "the multi-block file lists no data sets")
    return out


def split_blocks(blocks: list[Block], path) -> tuple[Block, dict[str, Block]]:
    """(the internal mesh, {patch name: boundary surface}) of a multi-block file (see the module docs)."""
    def in_boundary(b):
        return any(p.lower() in BOUNDARY_BLOCKS for p in b.parents)

    named = [b for b in blocks if b.name.lower() in INTERNAL_NAMES and not in_boundary(b)]
    volumes = [b for b in blocks if not in_boundary(b) and b.file.suffix.lower() in VOLUME_SUFFIXES]
    internal = (named or volumes or [None])[0]
    if internal is None:
        raise InputError(path, None, "no internal mesh (a data set named 'internal', or a .vtu outside the "
                         "boundary blocks)")
    boundary = [b for b in blocks if in_boundary(b)]
    if not boundary:
        boundary = [b for b in blocks if b is not internal and b.file.suffix.lower() == ".vtp"]
    patches: dict[str, Block] = {}
    for b in boundary:
        patches.setdefault(b.name, b)
    return internal, patches


def map_to_nodes(surface, points: np.ndarray, tol: float, where) -> np.ndarray:
    """Internal node ids of a surface's points: ``vtkOriginalPointIds`` if present, else the nearest node within
    ``tol`` (an error naming the file when a point has none)."""
    n = len(points)
    if "vtkOriginalPointIds" in surface.point_data:
        ids = np.asarray(surface.point_data["vtkOriginalPointIds"]).astype(np.int64).ravel()
        if len(ids) and (ids.min() < 0 or ids.max() >= n):
            raise InputError(where, "vtkOriginalPointIds", f"ids outside 0..{n - 1}")
        return np.unique(ids)
    from scipy.spatial import cKDTree

    sp = np.asarray(surface.points, dtype=np.float64)
    if not len(sp):
        return np.zeros(0, dtype=np.int64)
    dist, ids = cKDTree(points).query(sp, k=1)
    bad = np.flatnonzero(dist > tol)
    if len(bad):
        raise InputError(where, "points", f"{len(bad)} of {len(sp)} boundary points are farther than {tol:.3g} "
                         f"from every internal node (worst {dist.max():.3g}, point {sp[bad[0]].tolist()}); "
                         "is this the same mesh? (--tolerance widens the match)")
    return np.unique(ids.astype(np.int64))


def series_entries(source: str) -> list[tuple[float | None, Path]]:
    """``(time, .vtm file)`` per step: from a ``.vtm.series`` file, or a ``.vtm`` file / folder / glob."""
    if str(source).lower().endswith(".series"):
        if not Path(source).is_file():
            raise InputError(source, None, "no such file")
        return read_series_json(Path(source))
    return [(None, f) for f in expand_files(source, (".vtm",))]


def read_vtm_series(source: str, tolerance: float | None = None) -> Series:
    """A multi-block series as a :class:`Series` (internal mesh as nodes, boundary blocks as node groups)."""
    entries = series_entries(source)
    internal, patches = split_blocks(read_vtm_blocks(entries[0][1]), entries[0][1])
    grid = read_vtk_grid(internal.file)
    points = np.asarray(grid.points, dtype=np.float64)
    cells = vtk_cells(grid, internal.file)
    n = len(points)
    diag = float(np.linalg.norm(np.ptp(points, axis=0))) if n else 1.0
    tol = tolerance if tolerance is not None else DEFAULT_RTOL * (diag or 1.0)
    groups = {name: map_to_nodes(read_vtk_grid(b.file), points, tol, b.file) for name, b in patches.items()}
    notes = []
    if not groups:
        notes.append(f"{entries[0][1].name}: no boundary blocks; every node is interior unless --node-types says")
    if not len(grid.point_data.keys()) and len(grid.cell_data.keys()):
        notes.append(f"{internal.file.name} holds cell data only (foamToVTK -no-point-data?): write point data")

    def loader(vtm: Path, k: int):
        def load():
            if k == 0:
                return point_fields(grid)
            inner, _ = split_blocks(read_vtm_blocks(vtm), vtm)
            g = read_vtk_grid(inner.file)
            if g.n_points != n:
                raise InputError(inner.file, "points", f"{g.n_points} points, but step 0 ({internal.file.name}) "
                                 f"has {n}")
            return point_fields(g)
        return load

    frames = []
    for k, (t, vtm) in enumerate(entries):
        if t is None and k == 0:
            t = vtk_time(grid)
        elif t is None:
            t = vtk_file_time(split_blocks(read_vtm_blocks(vtm), vtm)[0].file)
        frames.append(Frame(t, str(vtm), loader(vtm, k)))
    return Series(source, "vtm", points, cells, frames, cell_regions=vtk_cell_regions(grid), node_groups=groups,
                  notes=notes)
