"""Compressed adjacency of a directed edge list, and vectorised row gathers on it.

A graph here is a ``(2, E)`` int array ``[senders; receivers]``. Its *incoming* CSR ``(rowptr, senders)`` lists,
for each receiver ``v``, the senders of its edges in ``senders[rowptr[v]:rowptr[v+1]]``: exactly the nodes whose
messages ``v`` aggregates. Receiver-sorted edge lists (the meshgnn convention) already are this CSR.
"""
from __future__ import annotations

import numpy as np


def check_edge_index(edge_index, num_nodes: int) -> np.ndarray:
    """Validate and return ``edge_index`` as a ``(2, E)`` int64 array with ids in ``[0, num_nodes)``."""
    ei = np.asarray(edge_index)
    if ei.ndim != 2 or ei.shape[0] != 2:
        raise ValueError(f"edge_index: expected shape (2, E), got {ei.shape}")
    if ei.size and not np.issubdtype(ei.dtype, np.integer):
        raise ValueError(f"edge_index: expected integer node ids, got dtype {ei.dtype}")
    ei = ei.astype(np.int64, copy=False)
    if num_nodes < 0:
        raise ValueError(f"num_nodes: expected >= 0, got {num_nodes}")
    if ei.size and (ei.min() < 0 or ei.max() >= num_nodes):
        raise ValueError(f"edge_index: node ids must lie in [0, {num_nodes}), got [{ei.min()}, {ei.max()}]")
    return ei


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values of a 1-D int array: ``np.unique`` without its cost.

    numpy 2.4's ``np.unique`` on int64 runs a hash table first and is ~100x slower than a sort on 10^7 values
    (measured: 10 s vs 0.1 s CPU for 5M values); this sorts and drops repeats.
    """
    out = np.sort(values)
    if out.size < 2:
        return out
    keep = np.empty(out.size, dtype=bool)
    keep[0] = True
    np.not_equal(out[1:], out[:-1], out=keep[1:])
    return out[keep]


def is_receiver_sorted(edge_index: np.ndarray) -> bool:
    """True when edges are ordered by receiver, then sender."""
    s, r = edge_index
    if r.size < 2:
        return True
    dr = np.diff(r)
    return bool(np.all(dr >= 0) and np.all(np.diff(s)[dr == 0] > 0))


def incoming_csr(edge_index: np.ndarray, num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Incoming adjacency ``(rowptr (N+1,), senders (E,))`` of a directed graph.

    Uses ``edge_index`` as it is when receiver-sorted (no copy); otherwise sorts by (receiver, sender).
    """
    ei = edge_index
    if not is_receiver_sorted(ei):
        order = np.argsort(ei[1] * np.int64(max(num_nodes, 1)) + ei[0], kind="stable")
        ei = ei[:, order]
    counts = np.bincount(ei[1], minlength=num_nodes)
    rowptr = np.zeros(num_nodes + 1, dtype=np.int64)
    np.cumsum(counts, out=rowptr[1:])
    return rowptr, np.ascontiguousarray(ei[0])


def symmetric_csr(edge_index: np.ndarray, num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Undirected adjacency ``(xadj, adjncy)`` without self loops or duplicates (what METIS expects)."""
    s, r = edge_index
    n = np.int64(max(num_nodes, 1))
    if is_receiver_sorted(edge_index) and not np.any(s == r):
        # fast path (meshgnn graphs): already a strict incoming CSR; accept it when it is its own transpose
        rowptr, senders = incoming_csr(edge_index, num_nodes)
        if np.array_equal(np.sort(s * n + r), r * n + s):
            return rowptr, senders
    keep = s != r
    s, r = s[keep], r[keep]
    key = sorted_unique(np.concatenate([r * n + s, s * n + r]))
    rows, cols = np.divmod(key, n)
    counts = np.bincount(rows, minlength=num_nodes)
    xadj = np.zeros(num_nodes + 1, dtype=np.int64)
    np.cumsum(counts, out=xadj[1:])
    return xadj, cols


def gather_rows(rowptr: np.ndarray, col: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the CSR rows ``col[rowptr[r]:rowptr[r+1]]`` for ``r`` in ``rows`` without a Python loop.

    Returns:
        ``(values (K,), lengths (len(rows),))`` where ``values`` holds the rows one after another.
    """
    starts = rowptr[rows]
    lengths = rowptr[rows + 1] - starts
    total = int(lengths.sum())
    if total == 0:
        return col[:0], lengths
    # position k of the output belongs to row i: index = starts[i] + (k - offset[i])
    shift = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    shift += np.arange(total, dtype=np.int64)
    return col[shift], lengths
