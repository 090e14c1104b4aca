"""Graph-generic domain decomposition: partition a graph, grow halo patches, store them.

>>> owner = partition(edge_index, N, nparts=8, method="metis")
>>> parts = build_parts(edge_index, N, owner, halo=L * stages)
>>> print(format_stats(partition_stats(parts, edge_index, N, owner)))
>>> write_part_store("mesh.parts.h5", parts, owner, meta={})

Knows nothing of MeshGraphNets: a graph is a ``(2, E)`` directed edge list; see :mod:`decomposition.halo` for
the exactness contract (core outputs exact after k layers iff halo >= k).
"""
from .halo import Part, PartSummary, build_parts, iter_parts
from .partition import METHODS, partition, rcb
from .stats import format_stats, partition_stats
from .store import SCHEMA_VERSION, PartStore, StoreError, graph_fingerprint, write_part_store

__all__ = [
    "METHODS", "Part", "PartStore", "PartSummary", "SCHEMA_VERSION", "build_parts", "format_stats",
    "StoreError", "graph_fingerprint", "iter_parts", "partition", "partition_stats", "rcb", "write_part_store",
]
