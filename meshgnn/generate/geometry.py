"""Packed-column geometry and tetrahedral mesh with gmsh (OpenCASCADE kernel, HXT 3D mesher).

The domain is a vertical cylinder (radius R, height H, axis z) minus spherical packing elements placed from a
seed. Boundary surfaces are classified by their gmsh entities (plane at z=0 / z=H, the cylinder face, the sphere
faces), turned into physical groups, and the mesh nodes on each group get the node type code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..io.dataset import NODE_TYPES

INTERIOR, INLET, OUTLET, WALL, OBSTACLE = (NODE_TYPES.index(n) for n in
                                           ("interior", "inlet", "outlet", "wall", "obstacle"))
# When a node lies on several boundaries (rims), the first type in this list wins: the inlet is prescribed.
TYPE_PRIORITY = (INLET, OUTLET, OBSTACLE, WALL)
# Nodes per unit volume ~ NODE_DENSITY / h^3 for gmsh tets of target size h (refined by one trial mesh).
NODE_DENSITY = 1.3
CALIBRATION_NODES = 40000


@dataclass
class ColumnGeometry:
    """A packed column: cylinder ``radius`` x ``height`` (m) minus spheres ``(centers (S,3), radii (S,))``."""

    radius: float = 0.05
    height: float = 0.3
    centers: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    radii: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def volume(self) -> float:
        """Fluid volume (m^3): the packing spheres lie fully inside and do not overlap."""
        return math.pi * self.radius ** 2 * self.height - float(np.sum(4.0 / 3.0 * math.pi * self.radii ** 3))

    @property
    def inlet_area(self) -> float:
        return math.pi * self.radius ** 2


def place_packing(seed: int, radius: float = 0.05, height: float = 0.3, count: int = 24,
                  rmin: float = 0.010, rmax: float = 0.016, gap: float = 0.004) -> ColumnGeometry:
    """Place up to ``count`` non-overlapping spheres (radius in [rmin, rmax]) inside the column.

    Deterministic for a given seed (random sequential addition). Spheres keep ``gap`` from each other, from the
    wall, and a larger margin from the inlet and outlet planes so those stay flat whole faces.
    """
    rng = np.random.default_rng(seed)
    centers, radii = [], []
    margin_z = 2 * rmax
    for _ in range(200 * count):
        if len(radii) == count:
            break
        r = rng.uniform(rmin, rmax)
        rho = (radius - r - gap) * math.sqrt(rng.uniform())
        phi = rng.uniform(0, 2 * math.pi)
        c = np.array([rho * math.cos(phi), rho * math.sin(phi), rng.uniform(margin_z + r, height - margin_z - r)])
        if all(np.linalg.norm(c - c2) >= r + r2 + gap for c2, r2 in zip(centers, radii)):
            centers.append(c)
            radii.append(r)
    return ColumnGeometry(radius, height, np.array(centers).reshape(-1, 3), np.array(radii))


@dataclass
class TetMesh:
    """A tetrahedral mesh with node types and the inlet's boundary triangles.

    points (N,3) f64, tets (M,4) i64, node_type (N,) i8, inlet_faces (F,3) i64, achieved mesh size ``h`` (m).
    """

    points: np.ndarray
    tets: np.ndarray
    node_type: np.ndarray
    inlet_faces: np.ndarray
    h: float
    seconds: float = 0.0


def size_for_nodes(geom: ColumnGeometry, nodes: int, density: float = NODE_DENSITY) -> float:
    """Characteristic length h (m) expected to give about ``nodes`` mesh nodes."""
    return (density * geom.volume / max(nodes, 1)) ** (1.0 / 3.0)


def _gmsh_session(threads: int):
    import gmsh

    gmsh.initialize(readConfigFiles=False, interruptible=False)
    gmsh.option.setNumber("General.Terminal", 0)
    gmsh.option.setNumber("General.Verbosity", 1)
    gmsh.option.setNumber("General.NumThreads", threads)
    return gmsh


def _build_cad(gmsh, geom: ColumnGeometry) -> dict[int, list[int]]:
    """Cylinder minus spheres in OCC; returns ``{node type code: [surface tags]}``."""
    occ = gmsh.model.occ
    cyl = occ.addCylinder(0, 0, 0, 0, 0, geom.height, geom.radius)
    tools = [(3, occ.addSphere(*c, r)) for c, r in zip(geom.centers, geom.radii)]
    if tools:
        occ.cut([(3, cyl)], tools, removeObject=True, removeTool=True)
    occ.synchronize()
    groups: dict[int, list[int]] = {INLET: [], OUTLET: [], WALL: [], OBSTACLE: []}
    for _, tag in gmsh.model.getEntities(2):
        kind = gmsh.model.getType(2, tag)
        if kind == "Plane":
            z = gmsh.model.occ.getCenterOfMass(2, tag)[2]
            groups[INLET if z < 0.5 * geom.height else OUTLET].append(tag)
        elif kind.startswith("Cylinder"):
            groups[WALL].append(tag)
        else:
            groups[OBSTACLE].append(tag)
    names = {INLET: "inlet", OUTLET: "outlet", WALL: "wall", OBSTACLE: "obstacle"}
    for code, tags in groups.items():
        if tags:
            gmsh.model.addPhysicalGroup(2, tags, tag=code, name=names[code])
    volumes = [t for _, t in gmsh.model.getEntities(3)]
    gmsh.model.addPhysicalGroup(3, volumes, tag=100, name="fluid")
    return groups


def _mesh(gmsh, h: float) -> None:
    gmsh.model.mesh.clear()
    gmsh.option.setNumber("Mesh.MeshSizeMin", h)
    gmsh.option.setNumber("Mesh.MeshSizeMax", h)
    gmsh.option.setNumber("Mesh.MeshSizeFromCurvature", 0)
    gmsh.option.setNumber("Mesh.MeshSizeExtendFromBoundary", 0)
    gmsh.option.setNumber("Mesh.MeshSizeFromPoints", 0)
    gmsh.option.setNumber("Mesh.Algorithm", 6)      # Frontal-Delaunay surfaces
    gmsh.option.setNumber("Mesh.Algorithm3D", 10)   # HXT: parallel Delaunay, fast for millions of tets
    gmsh.option.setNumber("Mesh.Optimize", 1)
    gmsh.model.mesh.generate(3)


def _extract(gmsh, groups: dict[int, list[int]], h: float) -> TetMesh:
    tags, coords, _ = gmsh.model.mesh.getNodes()
    tags = tags.astype(np.int64)
    index = np.full(int(tags.max()) + 1, -1, dtype=np.int64)
    index[tags] = np.arange(tags.size)
    points = coords.reshape(-1, 3)
    _, tet_nodes = gmsh.model.mesh.getElementsByType(4)
    tets = index[tet_nodes.astype(np.int64).reshape(-1, 4)]
    # keep only nodes that tets use, numbered in gmsh order
    used = np.zeros(points.shape[0], dtype=bool)
    used[tets.ravel()] = True
    remap = np.cumsum(used) - 1
    points, tets = points[used], remap[tets]
    node_type = np.full(points.shape[0], INTERIOR, dtype=np.int8)
    for code in reversed(TYPE_PRIORITY):   # lowest priority first, overwritten by higher
        if groups.get(code):
            node_tags, _ = gmsh.model.mesh.getNodesForPhysicalGroup(2, code)
            ids = index[node_tags.astype(np.int64)]
            ids = ids[used[ids]]
            node_type[remap[ids]] = code
    faces = []
    for tag in groups.get(INLET, []):
        _, _, enodes = gmsh.model.mesh.getElements(2, tag)
        faces.append(index[enodes[0].astype(np.int64)].reshape(-1, 3))
    inlet_faces = remap[np.concatenate(faces)] if faces else np.zeros((0, 3), dtype=np.int64)
    return TetMesh(np.ascontiguousarray(points), np.ascontiguousarray(tets), node_type, inlet_faces, h)


def mesh_column(geom: ColumnGeometry, nodes: int, threads: int = 2, calibrate: bool = True) -> TetMesh:
    """Tetrahedralise ``geom`` with about ``nodes`` nodes.

    With ``calibrate``, one trial mesh (at most ~40k nodes) measures the node density of this geometry, and the
    final size h is set from it; the achieved count is typically within ~10-20% of the target.
    """
    import time

    t0 = time.perf_counter()
    gmsh = _gmsh_session(threads)
    try:
        gmsh.model.add("column")
        groups = _build_cad(gmsh, geom)
        h = size_for_nodes(geom, min(nodes, CALIBRATION_NODES) if calibrate else nodes)
        _mesh(gmsh, h)
        if calibrate:
            got = gmsh.model.mesh.getNodes()[0].size
            if nodes > CALIBRATION_NODES or abs(got / nodes - 1.0) > 0.1:
                h = size_for_nodes(geom, nodes, density=got * h ** 3 / geom.volume)
                _mesh(gmsh, h)
        mesh = _extract(gmsh, groups, h)
        mesh.seconds = time.perf_counter() - t0
        return mesh
    finally:
        gmsh.finalize()
