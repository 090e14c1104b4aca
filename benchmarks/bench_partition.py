"""Partition a >= 3M-node 3D tet mesh into 64 parts with 15-hop halos: time per phase and peak memory.

    .venv/bin/python benchmarks/bench_partition.py [--side 145] [--parts 64 8] [--halo 15] [--out DIR]

Mesh: ``meshgnn.meshes.box_tets`` (side^3 points, 6 Kuhn tetrahedra per cube) fed through
``meshgnn.graph.edges_from_cells``. Phases, each timed alone (wall and CPU seconds, since the machine is
shared): edges, METIS, halos (vectorised frontier BFS + induced edges), store write (HDF5). Parts are streamed
into the store, so one part's arrays live at a time. RCB is timed beside METIS (time and edge cut).
Baseline in the same run: the same halos grown by sparse matrix x boolean vector products (``A @ mask``, one
O(E) product per hop) for the first parts, as a per-part ratio. The first --parts count is written to a store;
the others only report sizes (halo/core ratio, redundant-compute factors).
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meshgnn.decomposition import format_stats, iter_parts, partition, partition_stats, write_part_store  # noqa: E402
from meshgnn.decomposition.csr import incoming_csr  # noqa: E402
from meshgnn.decomposition.stats import edge_cut  # noqa: E402


def peak_rss_gib() -> float:
    """Peak resident memory of this process since start (or since the last :func:`reset_peak`), GiB."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 2**20
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def reset_peak() -> bool:
    """Restart the peak-RSS count (Linux ``clear_refs`` 5); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Clock:
    """Accumulates wall and CPU seconds over ``with clock:`` blocks."""

    def __init__(self):
        self.wall = self.cpu = 0.0

    def __enter__(self):
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall += time.perf_counter() - self._w
        self.cpu += time.process_time() - self._c

    def __str__(self):
        return f"{self.wall:.1f} s (cpu {self.cpu:.1f} s)"


def timed(gen, clock: Clock):
    """Yield from ``gen`` counting only the time spent inside it on ``clock``."""
    while True:
        with clock:
            item = next(gen, None)
        if item is None:
            return
        yield item


def matvec_halo_seconds(edge_index, num_nodes, owner, halo, parts) -> float:
    """Baseline: mean seconds per part to find the halo by ``halo`` sparse products ``A @ visited``."""
    import scipy.sparse as sp

    rowptr, senders = incoming_csr(edge_index, num_nodes)
    a = sp.csr_matrix((np.ones(senders.size, dtype=np.int8), senders, rowptr), shape=(num_nodes, num_nodes))
    clock = Clock()
    for p in parts:
        with clock:
            visited = (owner == p).astype(np.int8)
            for _ in range(halo):
                visited = np.minimum(visited + (a @ visited).astype(np.int8, copy=False), 1)
    return clock.wall / len(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=145, help="points per box edge (N = side^3; 145 -> 3.05M)")
    ap.add_argument("--parts", type=int, nargs="+", default=[64, 8], help="part counts (first one is stored)")
    ap.add_argument("--halo", type=int, default=15, help="halo depth in hops")
    ap.add_argument("--baseline-parts", type=int, default=2, help="parts timed with the matvec baseline (0: skip)")
    ap.add_argument("--out", default=None, help="folder for the part store (default: a temp folder)")
    args = ap.parse_args(argv)

    from meshgnn.graph import edges_from_cells
    from meshgnn.meshes import box_tets

    mesh, edges = Clock(), Clock()
    with mesh:
        points, tets = box_tets(args.side)
    n = points.shape[0]
    print(f"mesh: {n} nodes, {tets.shape[0]} tets  {mesh}", flush=True)
    with edges:
        edge_index = edges_from_cells({"tetra": tets}, n)
    del tets
    peak_edges = peak_rss_gib()
    print(f"edges: {edge_index.shape[1]} directed  {edges}  peak RSS {peak_edges:.2f} GiB", flush=True)
    reset = reset_peak()  # from here on: the decomposition's own peak (graph + points resident)

    out_dir = Path(args.out or tempfile.mkdtemp(prefix="bench_partition_"))
    results = []
    for i, nparts in enumerate(args.parts):
        metis, rcb, halos, total = Clock(), Clock(), Clock(), Clock()
        with metis:
            owner = partition(edge_index, n, nparts, method="metis")
        with rcb:
            owner_rcb = partition(edge_index, n, nparts, method="rcb", points=points)
        rcb_cut = edge_cut(edge_index, owner_rcb)
        del owner_rcb
        print(f"[P={nparts}] metis {metis}, rcb {rcb}  peak RSS {peak_rss_gib():.2f} GiB", flush=True)
        gen = timed(iter_parts(edge_index, n, owner, args.halo), halos)
        size_gib = float("nan")
        with total:
            if i == 0:
                store = out_dir / f"box{args.side}.P{nparts}.parts.h5"
                summaries = write_part_store(store, gen, owner, {"bench": "box"}, edge_index=edge_index,
                                             method="metis")
                size_gib = store.stat().st_size / 2**30
            else:
                summaries = [p.summary() for p in gen]
        write = Clock()
        write.wall, write.cpu = (total.wall - halos.wall, total.cpu - halos.cpu) if i == 0 else (0.0, 0.0)
        stats = partition_stats(summaries, edge_index, n, owner)
        print(format_stats(stats))
        print(f"[P={nparts}] halos {halos} ({halos.wall / nparts:.2f} s/part), store write {write} "
              f"({size_gib:.2f} GiB)  peak RSS {peak_rss_gib():.2f} GiB", flush=True)
        base = None
        if args.baseline_parts and i == 0:
            base = matvec_halo_seconds(edge_index, n, owner, args.halo, range(args.baseline_parts))
            print(f"[P={nparts}] baseline A@mask halo search alone: {base:.2f} s/part vs frontier BFS + induced "
                  f"edges {halos.wall / nparts:.2f} s/part -> x{base / (halos.wall / nparts):.1f}", flush=True)
        results.append(dict(nparts=nparts, metis=metis, rcb=rcb, halos=halos, write=write, stats=stats,
                            base=base, rcb_cut=rcb_cut, size=size_gib))

    print("\nsummary")
    print(f"N={n} E={edge_index.shape[1]} halo={args.halo}  mesh {mesh}  edges {edges}  "
          f"peak RSS: mesh+edges {peak_edges:.2f} GiB, "
          f"{'partition+halos+write' if reset else 'whole run'} {peak_rss_gib():.2f} GiB")
    for r in results:
        s = r["stats"]
        wall = edges.wall + r["metis"].wall + r["halos"].wall + r["write"].wall
        cpu = edges.cpu + r["metis"].cpu + r["halos"].cpu + r["write"].cpu
        ratio = r["base"] / (r["halos"].wall / r["nparts"]) if r["base"] else None
        base = f" | per-part halo time, A@mask baseline / ours: x{ratio:.1f}" if ratio else ""
        print(f"P={r['nparts']}: metis {r['metis']} | halos {r['halos']} | write {r['write']} | "
              f"edges+metis+halos+write {wall:.1f} s (cpu {cpu:.1f} s){base}\n"
              f"      rcb {r['rcb']} | balance {s['balance']:.3f} | cut metis {s['edge_cut']} rcb {r['rcb_cut']} | "
              f"halo/core {s['halo_core']:.2f} (worst part {max(x['halo_core'] for x in s['per_part']):.2f}) | "
              f"nodes x{s['node_factor']:.2f} edges x{s['edge_factor']:.2f} | store {r['size']:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
