"""A star forest (PETSc's ``PetscSF``) that carries all halo traffic between patches.

Roots are owned rows (the core rows of the part that owns a node); leaves are ghost copies (halo rows of the
other patches holding that node). Two operations, each the other's adjoint:

* ``bcast``  (root -> leaf): every leaf row takes its root's value; roots unchanged.
* ``reduce`` (leaf -> root, sum): every root row adds the values of all its leaves; leaf rows become zero.

With ``y = bcast(x)``: ``y_root = x_root``, ``y_leaf = x_root`` so ``dL/dx_root = g_root + Σ_leaves g_leaf`` and
``dL/dx_leaf = 0`` — that is ``reduce(g)``. Zeroing the leaves in ``reduce`` makes the pair exactly adjoint
(``<bcast x, y> = <x, reduce y>``), so ``reduce``'s backward is ``bcast`` and both are differentiable to any
order. Both are out-of-place; ``bcast_flat_`` is the in-place (still differentiable) bcast. On CPU the
sums are deterministic; CUDA ``index_add_`` may reorder them.

A rank holds several patches (its local parts). Their rows are laid end to end in one *flat* buffer
(part order ``sf.part_ids``, row offsets ``sf.offsets``); the list API concatenates and splits around the flat
API, which a caller that already keeps local patches as one disjoint-union graph can use directly. A leaf
whose root lives on the same rank is a local row copy; the rest travel in one ``all_to_all_single`` per
operation, with per-peer send/receive row lists fixed at setup (gloo supports uneven splits).

Setup (:meth:`StarForest.from_parts`) needs only this rank's parts: each rank asks each root rank, in one
all-to-all, for the (root part, global id) pairs its leaves need; the root rank resolves them to its flat rows
and keeps that list as its send list. Message order = the requester's order, so nothing is sent back.

Halo depth: parts built with ``halo = h`` have leaves at hops ``1..h``. ``depth=None`` covers them all (rollout
refreshes an ``s·L``-hop halo once per stage or step); ``depth=1`` only the first ring (per-layer exchange
before every message-passing layer with 1-hop parts, docs/design.md, "Halo modes").

Usage::

    sf = StarForest.from_parts(my_parts, part_to_rank, dist=dist)    # depth=1 for per-layer exchange
    ys = sf.bcast(xs)                    # xs[i]: (sf.sizes[i], F) rows of part sf.part_ids[i]
    y = sf.bcast_flat(x)                 # x: (sf.num_rows, F), parts end to end (sf.offsets)
    sf.bcast_flat_(x)                    # in place, still differentiable: the cheap one for big buffers
    g = sf.reduce(xs)                    # leaf -> root sums, leaves zeroed

Collectives: for size > 1 every rank must call ``bcast``/``reduce`` the same number of times in the same order,
and backpropagate through every call (in a chain — each call's input depending on the previous call's
output — the autograd engine runs the backward exchanges in the same order on every rank).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from .errors import MeshgnnError


def block_assignment(num_parts: int, size: int) -> np.ndarray:
    """``(num_parts,) int64`` rank of each part: contiguous blocks, sizes differing by at most one."""
    if size < 1 or num_parts < size:
        raise MeshgnnError(f"cannot spread {num_parts} parts over {size} ranks (need parts >= ranks >= 1)")
    return (np.arange(num_parts, dtype=np.int64) * size) // num_parts


class _RootTable:
    """Maps (part id, global node id) to the flat row of that node in a local part's core."""

    def __init__(self, parts, offsets, max_id: int):
        self.stride = np.int64(max_id + 1)
        keys, rows = [], []
        for part, off in zip(parts, offsets):
            core = np.asarray(part.nodes[: part.n_core], dtype=np.int64)
            keys.append(np.int64(part.part_id) * self.stride + core)
            rows.append(off + np.arange(core.size, dtype=np.int64))
        keys = np.concatenate(keys) if keys else np.zeros(0, np.int64)
        rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        order = np.argsort(keys, kind="stable")
        self.keys, self.rows = keys[order], rows[order]

    def lookup(self, part_ids: np.ndarray, nodes: np.ndarray) -> np.ndarray:
        """``(k,) int64`` flat rows of the roots of ``nodes`` in ``part_ids`` (both ``(k,)``)."""
        key = part_ids.astype(np.int64) * self.stride + nodes.astype(np.int64)
        if key.size == 0:
            return np.zeros(0, np.int64)
        pos = np.searchsorted(self.keys, key).clip(max=max(self.keys.size - 1, 0))
        bad = np.ones(key.size, bool) if self.keys.size == 0 else self.keys[pos] != key
        if np.any(bad):
            i = int(np.nonzero(bad)[0][0])
            raise MeshgnnError(f"halo: node {int(nodes[i])} is a ghost owned by part {int(part_ids[i])}, "
                               f"but that part's core lacks it (parts and owner disagree)")
        return self.rows[pos]


class StarForest:
    """Roots = owned core rows, leaves = halo rows, over the flat buffer of this rank's parts.

    Attributes:
        part_ids: local parts, in the order ``bcast``/``reduce`` expect their tensors.
        sizes: ``(P_loc,)`` rows of each local part; ``offsets`` ``(P_loc+1,)`` their flat starts.
        n_cores: ``(P_loc,)`` owned rows of each local part (rows ``0..n_core-1``).
        local_leaf, local_root: ``(L,)`` flat rows: leaf ``local_leaf[i]`` copies ``local_root[i]`` (same rank).
        recv_rows, recv_splits: flat leaf rows filled from other ranks, grouped by source rank; counts per rank.
        send_rows, send_splits: flat root rows sent to other ranks, grouped by destination; counts per rank.
        bytes_exchanged: bytes this rank has sent to other ranks (bcast and reduce, forward and backward).
    """

    def __init__(self, part_ids, sizes, n_cores, local_leaf, local_root, recv_rows, recv_splits,
                 send_rows, send_splits, rank=0, size=1, device="cpu", needs_comm=False, depth=None, group=None):
        self.group = group            # torch.distributed process group of the job (None: the world)
        self.part_ids = [int(p) for p in part_ids]
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.n_cores = np.asarray(n_cores, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.num_rows = int(self.offsets[-1])
        self.rank, self.size, self.depth = int(rank), int(size), depth
        self.device = torch.device(device)
        self.recv_splits = [int(c) for c in recv_splits]
        self.send_splits = [int(c) for c in send_splits]
        self.needs_comm = bool(needs_comm)
        self.bytes_exchanged = 0
        as_index = lambda a: torch.as_tensor(np.asarray(a, dtype=np.int64), device=self.device)  # noqa: E731
        self.local_leaf, self.local_root = as_index(local_leaf), as_index(local_root)
        self.recv_rows, self.send_rows = as_index(recv_rows), as_index(send_rows)
        self.leaf_rows = torch.cat([self.local_leaf, self.recv_rows])

    # ------------------------------------------------------------------ setup
    @classmethod
    def from_parts(cls, parts, part_to_rank, rank: int | None = None, *, dist=None, owner=None,
                   depth: int | None = None) -> "StarForest":
        """Build the forest of this rank's parts.

        Args:
            parts: decomposition ``Part``s — all of them or just this rank's (others are ignored). Each needs
                ``part_id``, ``nodes`` (global ids, core first), ``n_core``, ``hop`` (if ``depth``) and
                ``owner_of`` (owning part of every local row), or pass ``owner``.
            part_to_rank: ``(num_parts,)`` rank holding each part (e.g. :func:`block_assignment`), or a
                ``{part: rank}`` mapping covering every part.
            rank: this rank; default ``dist.rank`` (or the ``torch.distributed`` rank, or 0).
            dist: a :class:`meshgnn.distributed.Dist` (size, comm device); default: the initialised
                ``torch.distributed`` group if any, else a single process.
            owner: ``(N,)`` owning part of every global node, used when a part has no ``owner_of``.
            depth: only halo rows with ``hop <= depth`` become leaves; ``None``: all halo rows.
        Collective: every rank calls it (it exchanges the leaf requests once).
        """
        size, device = _world(dist)
        group = getattr(dist, "group", None)
        if rank is None:
            rank = dist.rank if dist is not None else _td_rank()
        part_to_rank = _as_rank_array(part_to_rank)
        if part_to_rank.size and (part_to_rank.min() < 0 or part_to_rank.max() >= size):
            raise MeshgnnError(f"part_to_rank: ranks must lie in [0, {size}) for a job of {size} rank(s), "
                               f"got [{part_to_rank.min()}, {part_to_rank.max()}]")
        local = [p for p in parts if part_to_rank[_checked_id(p, part_to_rank)] == rank]
        sizes = [int(np.asarray(p.nodes).shape[0]) for p in local]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        leaf, root_part, node = _leaves(local, offsets, owner, depth)
        if root_part.size and root_part.max() >= part_to_rank.size:
            raise MeshgnnError(f"halo: a ghost is owned by part {int(root_part.max())}, but part_to_rank lists "
                               f"only {part_to_rank.size} parts")
        root_rank = part_to_rank[root_part]
        is_local = root_rank == rank
        # remote requests grouped by root rank, then (root part, node) for locality on the root side
        order = np.lexsort((node, root_part, root_rank))
        order = order[~is_local[order]]
        recv_splits = np.bincount(root_rank[order], minlength=size)
        requests = np.stack([root_part[order], node[order]], axis=1)
        incoming, send_splits, total_remote = _exchange_requests(requests, recv_splits, size, device, group)
        max_id = max([int(np.max(p.nodes, initial=-1)) for p in local] + [int(np.max(incoming[:, 1], initial=-1))])
        table = _RootTable(local, offsets[:-1], max_id)
        local_root = table.lookup(root_part[is_local], node[is_local])
        send_rows = table.lookup(incoming[:, 0], incoming[:, 1])
        return cls([p.part_id for p in local], sizes, [int(p.n_core) for p in local], leaf[is_local], local_root,
                   leaf[order], recv_splits, send_rows, send_splits, rank=rank, size=size, device=device,
                   needs_comm=total_remote > 0, depth=depth, group=group)

    # ------------------------------------------------------------------ layout
    @property
    def num_leaves(self) -> int:
        return int(self.leaf_rows.numel())

    @property
    def num_remote_leaves(self) -> int:
        return int(self.recv_rows.numel())

    def cat(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        """``(num_rows, *F)`` flat buffer of per-part tensors ``xs[i]`` of ``(sizes[i], *F)``."""
        if len(xs) != len(self.part_ids):
            raise ValueError(f"expected {len(self.part_ids)} tensors (parts {self.part_ids}), got {len(xs)}")
        for i, x in enumerate(xs):
            if x.shape[0] != self.sizes[i]:
                raise ValueError(f"part {self.part_ids[i]}: expected {self.sizes[i]} rows, got {x.shape[0]}")
        return xs[0] if len(xs) == 1 else torch.cat(list(xs))

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Per-part views (``narrow``, so each may be modified in place) of a flat buffer."""
        return [flat.narrow(0, int(o), int(n)) for o, n in zip(self.offsets[:-1], self.sizes)]

    # ------------------------------------------------------------------ operations
    def bcast(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Root -> leaf copy on per-part tensors ``(n_p, *F)``; out-of-place, differentiable (backward: reduce)."""
        return self.split(self.bcast_flat(self.cat(xs)))

    def reduce(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Leaf -> root sum, leaves zeroed; out-of-place, differentiable (backward: bcast)."""
        return self.split(self.reduce_flat(self.cat(xs)))

    def bcast_flat(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`bcast` on the flat ``(num_rows, *F)`` buffer."""
        self._check_flat(x)
        return _Bcast.apply(x, self)

    def reduce_flat(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`reduce` on the flat ``(num_rows, *F)`` buffer."""
        self._check_flat(x)
        return _Reduce.apply(x, self)

    def _check_flat(self, x: torch.Tensor) -> None:
        if x.shape[0] != self.num_rows:
            raise ValueError(f"expected a flat buffer of {self.num_rows} rows, got {tuple(x.shape)}")

    def _idx(self, t: torch.Tensor, device) -> torch.Tensor:
        return t if t.device == device else t.to(device)

    def bcast_flat_(self, x: torch.Tensor) -> torch.Tensor:
        """In-place :meth:`bcast_flat`: overwrites the leaf rows of ``x`` and returns ``x``; no copy of the
        whole buffer (which costs more than the exchange itself on large buffers, see benchmarks/RESULTS.md).

        Differentiable like :meth:`bcast_flat` (backward: reduce) through autograd's in-place rules: ``x`` must
        not be a leaf that requires grad, nor a tensor some op saved for its backward (autograd then raises).
        Per-part views from ``sf.split(x)`` see the refreshed halos.
        """
        self._check_flat(x)
        return _BcastInPlace.apply(x, self)

    def _bcast_raw(self, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        self._bcast_into(x, y)
        return y

    def _bcast_into(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """``y[leaves] = x[roots]`` (``y`` may be ``x``: roots are never leaves)."""
        dev = x.device
        if self.needs_comm:
            recv = self._all_to_all(x.index_select(0, self._idx(self.send_rows, dev)), self.send_splits,
                                    self.recv_splits)
            y.index_copy_(0, self._idx(self.recv_rows, dev), recv)
        if self.local_leaf.numel():
            y.index_copy_(0, self._idx(self.local_leaf, dev), x.index_select(0, self._idx(self.local_root, dev)))

    def _reduce_raw(self, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dev = x.device
        if self.leaf_rows.numel():
            y.index_fill_(0, self._idx(self.leaf_rows, dev), 0)
        if self.local_leaf.numel():
            y.index_add_(0, self._idx(self.local_root, dev), x.index_select(0, self._idx(self.local_leaf, dev)))
        if self.needs_comm:
            back = self._all_to_all(x.index_select(0, self._idx(self.recv_rows, dev)), self.recv_splits,
                                    self.send_splits)
            y.index_add_(0, self._idx(self.send_rows, dev), back)
        return y

    def _all_to_all(self, send: torch.Tensor, send_splits, recv_splits) -> torch.Tensor:
        import torch.distributed as td
        buf = send.contiguous().to(self.device)
        out = buf.new_empty((sum(recv_splits),) + tuple(send.shape[1:]))
        td.all_to_all_single(out, buf, output_split_sizes=list(recv_splits), input_split_sizes=list(send_splits),
                             group=self.group)
        self.bytes_exchanged += buf.numel() * buf.element_size()
        return out.to(send.device)


class _Bcast(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, sf):
        ctx.sf = sf
        return sf._bcast_raw(x)

    @staticmethod
    def backward(ctx, grad):
        return _Reduce.apply(grad, ctx.sf), None


class _BcastInPlace(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, sf):
        ctx.sf = sf
        sf._bcast_into(x, x)
        ctx.mark_dirty(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        return _Reduce.apply(grad, ctx.sf), None


class _Reduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, sf):
        ctx.sf = sf
        return sf._reduce_raw(x)

    @staticmethod
    def backward(ctx, grad):
        return _Bcast.apply(grad, ctx.sf), None


# ---------------------------------------------------------------------- setup helpers
def _world(dist) -> tuple[int, torch.device]:
    """(size, device for communication buffers) from a Dist, the torch.distributed group, or nothing."""
    if dist is not None:
        return int(dist.size), torch.device(dist.device) if dist.size > 1 else torch.device("cpu")
    import torch.distributed as td
    if td.is_available() and td.is_initialized():
        dev = torch.device("cuda", torch.cuda.current_device()) if td.get_backend() == "nccl" else torch.device("cpu")
        return td.get_world_size(), dev
    return 1, torch.device("cpu")


def _td_rank() -> int:
    import torch.distributed as td
    return td.get_rank() if td.is_available() and td.is_initialized() else 0


def _as_rank_array(part_to_rank) -> np.ndarray:
    """``(num_parts,) int64`` from a sequence/array or a ``{part: rank}`` mapping (-1 for unlisted parts)."""
    if isinstance(part_to_rank, Mapping):
        out = np.full(max(map(int, part_to_rank), default=-1) + 1, -1, dtype=np.int64)
        for p, r in part_to_rank.items():
            out[int(p)] = int(r)
        if np.any(out < 0):
            raise MeshgnnError(f"part_to_rank: parts {np.nonzero(out < 0)[0].tolist()[:5]} have no rank")
        return out
    return np.asarray(part_to_rank, dtype=np.int64).reshape(-1)


def _checked_id(part, part_to_rank) -> int:
    pid = int(part.part_id)
    if not 0 <= pid < part_to_rank.size:
        raise MeshgnnError(f"part {pid}: not in part_to_rank (it lists {part_to_rank.size} parts)")
    return pid


def _leaves(local, offsets, owner, depth):
    """Flat leaf rows, their root part and global node id (all ``(K,) int64``) over the local parts."""
    leaf, root_part, node = [], [], []
    for part, off in zip(local, offsets):
        nodes = np.asarray(part.nodes, dtype=np.int64)
        owner_of = getattr(part, "owner_of", None)
        if owner_of is None:
            if owner is None:
                raise MeshgnnError(f"part {part.part_id}: no owner_of; pass owner=(N,) owning part of every node")
            owner_of = np.asarray(owner)[nodes]
        owner_of = np.asarray(owner_of, dtype=np.int64)
        if np.any(owner_of[: part.n_core] != part.part_id) or np.any(owner_of[part.n_core:] == part.part_id):
            raise MeshgnnError(f"part {part.part_id}: owner_of must name the part itself exactly on its core rows")
        rows = np.arange(int(part.n_core), nodes.size, dtype=np.int64)
        if depth is not None:
            rows = rows[np.asarray(part.hop)[rows] <= depth]
        leaf.append(off + rows)
        root_part.append(owner_of[rows])
        node.append(nodes[rows])
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64)  # noqa: E731
    return cat(leaf), cat(root_part), cat(node)


def _exchange_requests(requests: np.ndarray, counts: np.ndarray, size: int, device, group=None):
    """Send each root rank the ``(k, 2)`` (root part, node) requests addressed to it.

    Returns ``(incoming (S, 2) int64, per-source counts (size,), total remote leaves in the job)``.
    """
    if size == 1:
        if requests.shape[0]:
            raise MeshgnnError("halo: leaves owned by parts on other ranks, but the job has one rank")
        return np.zeros((0, 2), np.int64), np.zeros(1, np.int64), 0
    import torch.distributed as td
    out_counts = torch.as_tensor(counts, dtype=torch.int64, device=device)
    in_counts = torch.empty_like(out_counts)
    td.all_to_all_single(in_counts, out_counts, group=group)
    in_counts_np = in_counts.cpu().numpy()
    incoming = torch.empty((int(in_counts_np.sum()), 2), dtype=torch.int64, device=device)
    td.all_to_all_single(incoming, torch.as_tensor(requests, dtype=torch.int64, device=device).contiguous(),
                         output_split_sizes=in_counts_np.tolist(), input_split_sizes=np.asarray(counts).tolist(),
                         group=group)
    total = torch.tensor([requests.shape[0]], dtype=torch.int64, device=device)
    td.all_reduce(total, group=group)
    return incoming.cpu().numpy(), in_counts_np, int(total.item())
