"""Small structured meshes for tests and benchmarks (the generator makes the real ones)."""
from __future__ import annotations

import numpy as np

# Six tetrahedra per hexahedron sharing the main diagonal 0-6 (Kuhn subdivision; conforming across cubes).
_KUHN = np.array([[0, 1, 2, 6], [0, 2, 3, 6], [0, 3, 7, 6], [0, 7, 4, 6], [0, 4, 5, 6], [0, 5, 1, 6]])


def box_tets(nx: int, ny: int | None = None, nz: int | None = None, size=(1.0, 1.0, 1.0)):
    """A structured tetrahedral grid of ``nx × ny × nz`` points on a box.

    Returns ``points (N, 3) float64`` and ``tets (6 (nx-1)(ny-1)(nz-1), 4) int64``.
    A 22³ grid has 10,648 nodes and 137,718 directed edges, like the PhysicsNeMo reference measurement.
    """
    ny = ny or nx
    nz = nz or nx
    xs, ys, zs = (np.linspace(0.0, s, n) for s, n in zip(size, (nx, ny, nz)))
    X, Y, Z = np.meshgrid(xs, ys, zs, indexing="ij")
    points = np.stack([X.ravel(), Y.ravel(), Z.ravel()], axis=1)
    idx = np.arange(nx * ny * nz).reshape(nx, ny, nz)
    i, j, k = np.meshgrid(np.arange(nx - 1), np.arange(ny - 1), np.arange(nz - 1), indexing="ij")
    i, j, k = i.ravel(), j.ravel(), k.ravel()
    corners = np.stack([idx[i, j, k], idx[i + 1, j, k], idx[i + 1, j + 1, k], idx[i, j + 1, k],
                        idx[i, j, k + 1], idx[i + 1, j, k + 1], idx[i + 1, j + 1, k + 1], idx[i, j + 1, k + 1]],
                       axis=1)
    tets = corners[:, _KUHN].reshape(-1, 4)
    return points, tets.astype(np.int64)


def rect_quads(nx: int, ny: int | None = None, size=(1.0, 1.0)):
    """A structured quad grid of ``nx × ny`` points on a rectangle (2-D points).

    Returns ``points (nx ny, 2) float64`` and ``quads ((nx-1)(ny-1), 4) int64``, counter-clockwise (VTK order).
    """
    ny = ny or nx
    xs, ys = np.linspace(0.0, size[0], nx), np.linspace(0.0, size[1], ny)
    X, Y = np.meshgrid(xs, ys, indexing="ij")
    points = np.stack([X.ravel(), Y.ravel()], axis=1)
    idx = np.arange(nx * ny).reshape(nx, ny)
    i, j = (a.ravel() for a in np.meshgrid(np.arange(nx - 1), np.arange(ny - 1), indexing="ij"))
    quads = np.stack([idx[i, j], idx[i + 1, j], idx[i + 1, j + 1], idx[i, j + 1]], axis=1)
    return points, quads.astype(np.int64)


def rect_triangles(nx: int, ny: int | None = None, size=(1.0, 1.0)):
    """:func:`rect_quads` with every quad cut along its 0-2 diagonal: ``points (N, 2)``, ``triangles (2M, 3)``
    counter-clockwise."""
    points, quads = rect_quads(nx, ny, size)
    return points, quads[:, [0, 1, 2, 0, 2, 3]].reshape(-1, 3)
