"""Per-rank output pieces: each rank writes the cells whose first node it owns, rank 0 only the small index.

A partitioned rollout never assembles the mesh's state anywhere (docs/design.md, "Output and metrics"). Rank r's
piece is the cells whose first node r owns (every cell in exactly one piece) and the nodes they use. Those nodes
are r's own plus a thin layer owned by neighbours ("output ghosts"); their predicted values arrive through a
star forest of one pseudo-part per rank (roots: owned nodes, leaves: output ghosts), so a step moves only the
piece boundaries. Reference values are read from the dataset for the piece's nodes directly.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from .domain import mesh_rows
from .halo import StarForest
from .io.vtk import PartitionedRolloutWriter

CELL_CHUNK = 1 << 20


def cells_of_owned(ds, owned_sorted: np.ndarray) -> dict[str, np.ndarray]:
    """``{type: (m, k) int64}`` global-id cells whose first node is in ``owned_sorted`` (sorted ``(n,)``), read
    in chunks of the dataset's ``/mesh/cells/<type>`` so no rank holds the whole mesh's cells at once."""
    out = {}
    path = getattr(ds, "path", None)
    if path is None:                      # an in-memory dataset: its cells are in memory already
        blocks = {t: [np.asarray(c)] for t, c in ds.cells.items()}
    else:
        import h5py

        blocks = {}
        with h5py.File(path, "r") as f:
            for t, d in f["/mesh/cells"].items():
                blocks[t] = (d[a:a + CELL_CHUNK] for a in range(0, d.shape[0], CELL_CHUNK))
                out[t] = _select(blocks[t], owned_sorted)
        return {t: c for t, c in out.items() if len(c)}
    return {t: c for t, c in ((t, _select(b, owned_sorted)) for t, b in blocks.items()) if len(c)}


def _select(chunks, owned_sorted) -> np.ndarray:
    keep = []
    for c in chunks:
        c = np.asarray(c, dtype=np.int64)
        first = c[:, 0]
        pos = np.searchsorted(owned_sorted, first).clip(max=max(owned_sorted.size - 1, 0))
        mine = owned_sorted[pos] == first if owned_sorted.size else np.zeros(first.size, bool)
        keep.append(c[mine])
    return np.concatenate(keep) if keep else np.zeros((0, 0), np.int64)


class RankPieces:
    """This rank's piece of the output mesh, the exchange filling its boundary nodes, and its writer.

    ``RankPieces(ds, domain, out_dir, units, every=1, final_step=None, name="rollout")``;
    :meth:`piece_values` turns this rank's owned rows into the piece's rows; :meth:`write_step` writes a frame.
    Collective: construct it and call :meth:`write_step` on every rank.
    Attributes: ``nodes`` ``(n_piece,) int64`` global ids (owned, sorted, then output ghosts); ``n_owned``.
    """

    def __init__(self, ds, domain, out_dir, units: dict, every: int = 1, final_step: int | None = None,
                 name: str = "rollout"):
        comm = domain.comm
        ids, _ = domain.owned_rows([torch.zeros(p.num_nodes, 0) for p in domain.patches])
        self.order = np.argsort(ids, kind="stable")      # owned rows (domain order) -> sorted by global id
        owned = ids[self.order]
        cells = cells_of_owned(ds, owned)
        used = np.unique(np.concatenate([c.ravel() for c in cells.values()])) if cells else owned[:0]
        ghosts = np.setdiff1d(used, owned, assume_unique=True)
        self.nodes = np.concatenate([owned, ghosts])
        self.n_owned = owned.size
        rank_of = np.full(self.nodes.size, comm.rank, dtype=np.int64)
        if ghosts.size:
            rank_of[owned.size:] = domain.part_to_rank()[np.asarray(domain.owner)[ghosts]]
        pseudo = SimpleNamespace(part_id=comm.rank, nodes=self.nodes, n_core=owned.size, owner_of=rank_of)
        self.sf = StarForest.from_parts([pseudo], np.arange(comm.size), comm.rank,
                                        dist=comm if comm.size > 1 else None)
        sort = np.argsort(self.nodes, kind="stable")
        local = {t: sort[np.searchsorted(self.nodes[sort], c)] for t, c in cells.items()}
        static = {"node_type": mesh_rows(ds, "node_type", self.nodes).astype(np.int32),
                  "part": np.asarray(domain.owner)[self.nodes].astype(np.int32)}
        self.writer = PartitionedRolloutWriter(
            out_dir, comm.rank, comm.size, mesh_rows(ds, "points", self.nodes), local, global_ids=self.nodes,
            units=units, static_point_data=static, name=name, every=every, final_step=final_step, keep_last=False,
            barrier=comm.barrier if comm.size > 1 else None)

    def piece_values(self, owned_vals: torch.Tensor) -> np.ndarray:
        """``(n_piece, C)`` float32 from ``(n_owned, C)`` rows in :meth:`LocalDomain.owned_rows` order; collective."""
        buf = torch.zeros((self.nodes.size, owned_vals.shape[1]), dtype=torch.float32)
        buf[: self.n_owned] = owned_vals.detach().to("cpu", torch.float32)[torch.from_numpy(self.order)]
        self.sf.bcast_flat_(buf)
        return buf.numpy()

    @property
    def bytes_exchanged(self) -> int:
        return int(self.sf.bytes_exchanged)

    def write_step(self, step: int, time: float, point_data: dict) -> bool:
        """Write this rank's piece (and, on rank 0, the ``.pvtu`` and ``.pvd``) of a frame; collective."""
        return self.writer.write_step(step, time, point_data)

    def close(self) -> None:
        self.writer.close()
