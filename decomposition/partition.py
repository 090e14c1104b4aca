"""Node partitioners: METIS (via pymetis) on the graph, or recursive coordinate bisection (RCB) on the points.

Both return ``owner`` ``(N,) int32``: the part that owns each node. Every node is owned by exactly one part and,
whenever ``nparts <= N``, every part owns at least one node (METIS may leave parts empty on tiny or
disconnected graphs; those are filled by moving single nodes out of the largest parts).
"""
from __future__ import annotations

import heapq

import numpy as np

from .csr import check_edge_index, symmetric_csr

METHODS = ("metis", "rcb")


def partition(edge_index, num_nodes: int, nparts: int, method: str = "metis", points=None, seed: int = 0,
              weights=None) -> np.ndarray:
    """Split the nodes of a graph into ``nparts`` non-empty parts.

    Args:
        edge_index: ``(2, E)`` int ``[senders; receivers]`` (any order; treated as undirected for METIS).
        num_nodes: N (nodes without edges are allowed).
        nparts: P, ``1 <= P <= N``.
        method: ``"metis"`` (k-way / recursive METIS, minimises the edge cut) or ``"rcb"`` (recursive coordinate
            bisection of ``points``; needs no graph library, ignores ``edge_index``).
        points: ``(N, d)`` float coordinates, required for ``"rcb"``.
        seed: METIS random seed (RCB is deterministic).
        weights: optional ``(N,)`` non-negative node weights to balance instead of node counts
            (integers for METIS).
    Returns:
        ``owner`` ``(N,) int32`` in ``[0, P)``, every part non-empty.
    Raises:
        ValueError: bad ``nparts`` (``< 1`` or ``> N``), unknown method, missing/mis-shaped points.
    """
    num_nodes = int(num_nodes)
    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    if isinstance(nparts, bool) or int(nparts) != nparts or nparts < 1:
        raise ValueError(f"nparts: expected an integer >= 1, got {nparts!r}")
    nparts = int(nparts)
    if num_nodes < 1:
        raise ValueError("num_nodes: cannot partition a graph with no nodes")
    if nparts > num_nodes:
        raise ValueError(f"nparts: cannot split {num_nodes} nodes into {nparts} non-empty parts "
                         f"(need nparts <= {num_nodes})")
    if weights is not None:
        weights = np.asarray(weights)
        if weights.shape != (num_nodes,) or np.any(weights < 0):
            raise ValueError(f"weights: expected ({num_nodes},) non-negative, got shape {weights.shape}")
    if method == "rcb":
        if points is None:
            raise ValueError("points: method 'rcb' needs node coordinates (N, d)")
        owner = rcb(points, nparts, weights=weights)
    else:
        owner = metis(check_edge_index(edge_index, num_nodes), num_nodes, nparts, seed=seed, weights=weights)
    return fill_empty_parts(owner, nparts)


def metis(edge_index: np.ndarray, num_nodes: int, nparts: int, seed: int = 0, weights=None) -> np.ndarray:
    """METIS partition of the undirected graph of ``edge_index`` (may leave parts empty on tiny graphs)."""
    if nparts == 1:
        return np.zeros(num_nodes, dtype=np.int32)
    if nparts == num_nodes:
        return np.arange(num_nodes, dtype=np.int32)
    import pymetis

    xadj, adjncy = symmetric_csr(edge_index, num_nodes)
    opts = pymetis.Options(seed=int(seed))
    vw = None if weights is None else np.asarray(weights, dtype=np.int64)
    res = pymetis.part_graph(nparts, adjacency=pymetis.CSRAdjacency(xadj, adjncy), vweights=vw, options=opts)
    return np.asarray(res.vertex_part, dtype=np.int32)


def rcb(points, nparts: int, weights=None) -> np.ndarray:
    """Recursive coordinate bisection into any number of parts.

    A set that must become ``k`` parts is cut across its longest bounding-box extent at the weighted quantile
    ``floor(k/2) / k``; the two sides recursively become ``floor(k/2)`` and ``k - floor(k/2)`` parts. Each side
    keeps at least as many nodes as it needs parts, so all parts are non-empty when ``nparts <= N``.

    Args:
        points: ``(N, d)`` coordinates.
        nparts: P <= N.
        weights: optional ``(N,)`` node weights (default: 1 per node).
    Returns:
        ``(N,) int32`` owner.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim == 1:
        pts = pts[:, None]
    if pts.ndim != 2 or not np.all(np.isfinite(pts)):
        raise ValueError(f"points: expected finite (N, d) coordinates, got shape {pts.shape}")
    n = pts.shape[0]
    if nparts > n:
        raise ValueError(f"nparts: cannot split {n} points into {nparts} non-empty parts")
    owner = np.empty(n, dtype=np.int32)
    stack = [(np.arange(n, dtype=np.int64), 0, int(nparts))]
    while stack:  # one iteration per part-tree node (2P - 1 in all)
        idx, first, k = stack.pop()
        if k == 1:
            owner[idx] = first
            continue
        k_left = k // 2
        left, right = _bisect(pts[idx], None if weights is None else weights[idx], k_left, k)
        stack.append((idx[right], first + k_left, k - k_left))
        stack.append((idx[left], first, k_left))
    return owner


def _bisect(pts: np.ndarray, w, k_left: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Local indices of the two sides of a cut of ``pts`` along its longest extent at fraction ``k_left / k``."""
    n = pts.shape[0]
    axis = int(np.argmax(pts.max(axis=0) - pts.min(axis=0)))
    x = pts[:, axis]
    if w is None:
        m = int(round(n * k_left / k))
        m = min(max(m, k_left), n - (k - k_left))
        order = np.argpartition(x, m - 1)
    else:
        order = np.argsort(x, kind="stable")
        cw = np.cumsum(np.asarray(w, dtype=np.float64)[order])
        m = int(np.searchsorted(cw, cw[-1] * k_left / k, side="left")) + 1 if cw[-1] > 0 else n * k_left // k
        m = min(max(m, k_left), n - (k - k_left))
    return order[:m], order[m:]


def fill_empty_parts(owner: np.ndarray, nparts: int) -> np.ndarray:
    """Give every empty part one node taken from the currently largest part (in place; returns ``owner``).

    Needs ``nparts <= owner.size``; the moved node is the highest-id node of the donor part.
    """
    owner = np.asarray(owner, dtype=np.int32)
    counts = np.bincount(owner, minlength=nparts)
    empty = np.flatnonzero(counts == 0)
    if empty.size == 0:
        return owner
    members = np.argsort(owner, kind="stable")
    ends = np.cumsum(counts)
    heap = [(-int(c), int(q)) for q, c in enumerate(counts) if c > 1]
    heapq.heapify(heap)
    taken = np.zeros(nparts, dtype=np.int64)
    for e in empty:  # one iteration per empty part
        c, q = heapq.heappop(heap)
        node = members[ends[q] - 1 - taken[q]]
        taken[q] += 1
        owner[node] = e
        if -c - 1 > 1:
            heapq.heappush(heap, (c + 1, q))
    return owner
