"""Quality figures of a decomposition: balance, edge cut, halo sizes and redundant compute."""
from __future__ import annotations

import numpy as np

from .csr import check_edge_index, sorted_unique


def edge_cut(edge_index, owner) -> int:
    """Number of undirected edges ``{u, v}`` (u != v) whose endpoints have different owners."""
    s, r = np.asarray(edge_index, dtype=np.int64)
    owner = np.asarray(owner)
    cut = owner[s] != owner[r]
    s, r = s[cut], r[cut]
    n = np.int64(owner.size)
    return int(sorted_unique(np.minimum(s, r) * n + np.maximum(s, r)).size)


def partition_stats(parts, edge_index, num_nodes: int, owner, num_edges: int | None = None) -> dict:
    """Sizes and quality of a decomposition.

    Args:
        parts: sequence of :class:`~decomposition.Part` (or ``PartSummary``: anything with ``part_id``,
            ``n_core``, ``num_nodes``, ``num_edges``).
        edge_index: ``(2, E)`` the whole graph, or None (then ``edge_cut`` is None and E is ``num_edges``).
        num_nodes: N.
        owner: ``(N,)`` owner part of each node (unused without ``edge_index``).
        num_edges: E when ``edge_index`` is None.
    Returns:
        dict with ``num_parts, num_nodes, num_edges, halo, per_part`` (list of ``{part, core, halo, total, edges,
        halo_core}``), ``balance`` (max core / mean core), ``edge_cut`` (undirected edges between parts),
        ``halo_core`` (Σ halo / Σ core), ``node_factor`` (Σ patch nodes / N), ``edge_factor`` (Σ patch edges / E).
    """
    ei = None if edge_index is None else check_edge_index(edge_index, int(num_nodes))
    rows = []
    for p in parts:
        core, total = int(p.n_core), int(p.num_nodes)
        rows.append(dict(part=int(p.part_id), core=core, halo=total - core, total=total, edges=int(p.num_edges),
                         halo_core=(total - core) / core if core else float("inf")))
    cores = np.array([r["core"] for r in rows], dtype=np.float64)
    n, e = int(num_nodes), int(ei.shape[1] if ei is not None else num_edges)
    return dict(
        num_parts=len(rows), num_nodes=n, num_edges=e,
        halo=int(parts[0].halo) if rows and hasattr(parts[0], "halo") else None,
        per_part=rows,
        balance=float(cores.max() / cores.mean()) if len(rows) else float("nan"),
        edge_cut=None if ei is None else edge_cut(ei, owner),
        halo_core=float(sum(r["halo"] for r in rows) / max(cores.sum(), 1)),
        node_factor=float(sum(r["total"] for r in rows) / max(n, 1)),
        edge_factor=float(sum(r["edges"] for r in rows) / max(e, 1)),
    )


def format_stats(stats: dict, max_rows: int = 32) -> str:
    """A plain-text table of :func:`partition_stats` (per part when at most ``max_rows`` parts, else min/mean/max)."""
    cols = ("core", "halo", "total", "edges", "halo_core")
    head = f"{'part':>6} {'core':>10} {'halo':>10} {'total':>10} {'edges':>12} {'halo/core':>9}"

    def line(label, r):
        return (f"{label:>6} {r['core']:>10.0f} {r['halo']:>10.0f} {r['total']:>10.0f} {r['edges']:>12.0f} "
                f"{r['halo_core']:>9.2f}")

    rows = stats["per_part"]
    out = [head, "-" * len(head)]
    if len(rows) <= max_rows:
        out += [line(str(r["part"]), r) for r in rows]
    else:
        table = {c: np.array([r[c] for r in rows], dtype=np.float64) for c in cols}
        for name, fn in (("min", np.min), ("mean", np.mean), ("max", np.max)):
            out.append(line(name, {c: fn(v) for c, v in table.items()}))
    out.append("-" * len(head))
    tot = {c: sum(r[c] for r in rows) for c in ("core", "halo", "total", "edges")}
    tot["halo_core"] = stats["halo_core"]
    out.append(line("sum", tot))
    halo = f", halo {stats['halo']} hops" if stats.get("halo") is not None else ""
    out += [
        f"{stats['num_parts']} parts of {stats['num_nodes']} nodes / {stats['num_edges']} directed edges{halo}",
        f"balance (max core / mean core): {stats['balance']:.3f}   edge cut: "
        + ("n/a" if stats["edge_cut"] is None else f"{stats['edge_cut']} undirected edges"),
        f"redundant compute: nodes x{stats['node_factor']:.2f}, edges x{stats['edge_factor']:.2f}   "
        f"halo/core: {stats['halo_core']:.2f}",
    ]
    return "\n".join(out)
