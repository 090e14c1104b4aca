"""Patches: each part's core nodes plus every node within ``halo`` hops, with the induced edges.

Exactness contract
------------------
Message passing sends along directed edges ``s -> r``; a node aggregates over its *incoming* edges. The hop of a
node ``u`` in patch ``p`` is the length of the shortest directed path from ``u`` into the core ``C_p`` (0 for
core nodes), so the patch holds every node whose messages can reach the core within ``halo = h`` layers, and
every edge among those nodes (the induced subgraph).

A node at hop ``d < h`` has all its in-neighbours at hop ``<= d + 1 <= h``, all inside the patch, with their edges.
By induction, after ``k`` message-passing layers run on the patch alone, the value at every node with
``hop <= h - k`` equals the whole-graph value (bit for bit, if aggregation order is the same: edges are kept
receiver-sorted). Nodes further out see a truncated neighbourhood and are wrong. Hence core outputs are exact
without communication iff ``h >= k``; for a model with ``L`` layers stepped by an ``s``-stage explicit
Runge–Kutta method, ``k = s * L`` per time step, so build parts with ``h >= s * L``.

Ordering: ``Part.nodes`` lists the core by ascending global id, then the halo by (hop, global id); local edges
are sorted by (local receiver, local sender). ``Part.owner_of`` names the owning part of each local node — the
halo-exchange map (ghost ``i`` of part ``p`` is a copy of the node ``nodes[i]`` owned by ``owner_of[i]``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .csr import check_edge_index, gather_rows, incoming_csr


@dataclass
class Part:
    """One patch of a partitioned graph.

    Attributes:
        part_id: p.
        nodes: ``(n,) int64`` global ids; ``nodes[:n_core]`` the owned core (ascending), then the halo by (hop, id).
        n_core: number of owned nodes.
        hop: ``(n,) int16`` hop distance to the core (0 for the core).
        edge_index: ``(2, E_p) int64`` local ``[senders; receivers]``, receiver-sorted: every graph edge whose
            two endpoints lie in the patch.
        owner_of: ``(n,) int32`` owning part of each local node (``== part_id`` on the core).
        halo: the halo depth h the part was built with (``hop <= h``).
    """

    part_id: int
    nodes: np.ndarray
    n_core: int
    hop: np.ndarray
    edge_index: np.ndarray
    owner_of: np.ndarray | None = None
    halo: int = 0

    @property
    def num_nodes(self) -> int:
        return int(self.nodes.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])

    @property
    def n_halo(self) -> int:
        return self.num_nodes - int(self.n_core)

    @property
    def core(self) -> np.ndarray:
        """``(n_core,)`` global ids of the owned nodes."""
        return self.nodes[: self.n_core]

    def exact_mask(self, layers: int) -> np.ndarray:
        """``(n,) bool``: nodes whose value after ``layers`` rounds of message passing on the patch is exact."""
        return self.hop <= self.halo - int(layers)

    def summary(self) -> "PartSummary":
        return PartSummary(self.part_id, int(self.n_core), self.num_nodes, self.num_edges, self.halo)


@dataclass(frozen=True)
class PartSummary:
    """Sizes of a part, enough for :func:`decomposition.partition_stats` without keeping the arrays."""

    part_id: int
    n_core: int
    num_nodes: int
    num_edges: int
    halo: int = 0

    @property
    def n_halo(self) -> int:
        return self.num_nodes - self.n_core


def build_parts(edge_index, num_nodes: int, owner, halo: int) -> list[Part]:
    """All patches of a partition: core + ``halo``-hop halo + induced edges (see the module docstring).

    Args:
        edge_index: ``(2, E)`` int ``[senders; receivers]`` (receiver-sorted avoids a sort).
        num_nodes: N.
        owner: ``(N,)`` int part of each node, values ``0..P-1`` (P = max + 1).
        halo: h >= 0.
    Returns:
        ``[Part]`` of length P, ordered by part id.
    """
    return list(iter_parts(edge_index, num_nodes, owner, halo))


def iter_parts(edge_index, num_nodes: int, owner, halo: int) -> Iterator[Part]:
    """Like :func:`build_parts` but yields one part at a time (bounded memory for huge graphs)."""
    num_nodes = int(num_nodes)
    ei = check_edge_index(edge_index, num_nodes)
    owner = np.asarray(owner)
    if owner.shape != (num_nodes,) or (owner.size and (not np.issubdtype(owner.dtype, np.integer) or owner.min() < 0)):
        raise ValueError(f"owner: expected ({num_nodes},) non-negative integers, got shape {owner.shape}")
    if isinstance(halo, bool) or int(halo) != halo or halo < 0 or halo > np.iinfo(np.int16).max:
        raise ValueError(f"halo: expected an integer in [0, 32767], got {halo!r}")
    owner = owner.astype(np.int32, copy=False)
    rowptr, senders = incoming_csr(ei, num_nodes)
    return _grow_parts(rowptr, senders, owner, int(halo))  # arguments checked now, parts built lazily


def _grow_parts(rowptr, senders, owner, halo) -> Iterator[Part]:
    num_nodes = owner.size
    nparts = int(owner.max()) + 1 if owner.size else 0
    counts = np.bincount(owner, minlength=nparts)
    members = np.argsort(owner, kind="stable")  # core lists, ascending global id within each part
    starts = np.concatenate([[0], np.cumsum(counts)])
    stamp = np.full(num_nodes, -1, dtype=np.int32)  # last part that visited the node
    local = np.full(num_nodes, -1, dtype=np.int64)  # global -> local id of the current part
    slot = np.zeros(num_nodes, dtype=np.int64)  # scratch for the BFS
    for p in range(nparts):
        core = members[starts[p]:starts[p + 1]]
        nodes, hop = _halo_bfs(rowptr, senders, core, halo, stamp, p, slot)
        local[nodes] = np.arange(nodes.size, dtype=np.int64)
        edge_index = _induced_edges(rowptr, senders, nodes, local)
        local[nodes] = -1
        yield Part(p, nodes, int(core.size), hop, edge_index, owner[nodes], halo)


def _halo_bfs(rowptr, senders, core, halo, stamp, p, slot):
    """Breadth-first search from ``core`` against the edge direction, ``halo`` levels deep.

    Each level gathers the incoming CSR rows of the whole frontier at once. ``stamp`` (N,) marks visited nodes
    with the part id ``p`` (never cleared between parts); ``slot`` (N,) is scratch for de-duplication.
    Returns ``(nodes (n,) int64, hop (n,) int16)`` ordered by (hop, global id).
    """
    stamp[core] = p
    levels, frontier = [core], core
    for _ in range(halo):
        nbrs, _ = gather_rows(rowptr, senders, frontier)
        nbrs = nbrs[stamp[nbrs] != p]
        if nbrs.size == 0:
            break
        # keep one occurrence per node: whichever write to slot[v] won identifies it (no sort of duplicates)
        at = np.arange(nbrs.size, dtype=np.int64)
        slot[nbrs] = at
        frontier = nbrs[slot[nbrs] == at]
        frontier.sort()
        stamp[frontier] = p
        levels.append(frontier)
    nodes = np.concatenate(levels).astype(np.int64, copy=False)
    hop = np.repeat(np.arange(len(levels), dtype=np.int16), [lv.size for lv in levels])
    return nodes, hop


def _induced_edges(rowptr, senders, nodes, local):
    """``(2, E_p)`` local edges among ``nodes`` (``local`` maps their global ids to local ids, -1 elsewhere)."""
    import scipy.sparse as sp

    n = nodes.size
    src, deg = gather_rows(rowptr, senders, nodes)  # rows in local receiver order
    src = local[src]
    keep = src >= 0
    row_of = np.repeat(np.arange(n, dtype=np.int64), deg)
    kept = np.bincount(row_of[keep], minlength=n)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(kept, out=indptr[1:])
    # order each (short) row by local sender: scipy sorts the rows of a CSR matrix in place, row by row
    csr = sp.csr_matrix((np.zeros(int(indptr[-1]), dtype=np.int8), src[keep], indptr), shape=(n, n))
    csr.has_sorted_indices = False
    csr.sort_indices()
    receivers = np.repeat(np.arange(n, dtype=np.int64), kept)
    return np.stack([csr.indices.astype(np.int64, copy=False), receivers])
