"""Halo exchange through the star forest: bytes and time per bcast/reduce, 2 ranks, ~1M-node tet grid.

    OMP_NUM_THREADS=1 .venv/bin/mpirun --allow-run-as-root --oversubscribe -n 2 \\
        .venv/bin/python benchmarks/bench_halo.py [--side 100] [--parts 8] [--features 128] [--halo 1]

Mesh: a structured box of side^3 points cut into Kuhn tetrahedra (``meshgnn.meshes.box_tets``), METIS into
--parts parts, halo --halo, written once to a part store (reused by later runs: --store); each rank reads
only its own parts (block assignment: parts 0-3 on rank 0, 4-7 on rank 1). Each rank refreshes the halos of its local parts,
float32 features of width --features.

Baseline in the same run: the naive exchange without a star forest — every rank all-gathers the owned rows
of every rank (``all_gather``) and copies its halo rows out of the full array. Also timed: a clone of the
flat buffer (the memory-traffic floor of an out-of-place bcast). Ratios are medians over --repeats.
Appends the command and numbers to benchmarks/RESULTS.md under "## Halo exchange" (rank 0).
"""
from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from meshgnn.distributed import abort_on_exception, init_distributed  # noqa: E402
from meshgnn.halo import StarForest, block_assignment  # noqa: E402

SECTION = "## Halo exchange"


def build_store(path: Path, args) -> float:
    """Mesh, partition (METIS) and write the parts to a part store; returns the seconds it took."""
    from meshgnn.decomposition import iter_parts, partition, write_part_store
    from meshgnn.graph import edges_from_cells
    from meshgnn.meshes import box_tets

    t0 = time.perf_counter()
    points, tets = box_tets(args.side)
    n = points.shape[0]
    ei = edges_from_cells({"tetra": tets}, n)
    del tets
    owner = partition(ei, n, args.parts, method="metis", seed=0)
    write_part_store(path, iter_parts(ei, n, owner, args.halo), owner, edge_index=ei, method="metis")
    return time.perf_counter() - t0


def load_local_parts(dist, args):
    """Every rank reads only its own parts from the store (rank 0 writes it first if missing)."""
    from meshgnn.decomposition import PartStore

    path = Path(args.store or f"/tmp/bench_halo_side{args.side}_p{args.parts}_h{args.halo}.parts.h5")
    build_s = None
    if dist.is_root and not path.exists():
        build_s = build_store(path, args)
    dist.barrier()  # the other ranks wait in gloo (blocking) rather than in a spinning MPI call
    part_to_rank = block_assignment(args.parts, dist.size)
    with PartStore(path) as store:
        local = [store.read(p) for p in np.nonzero(part_to_rank == dist.rank)[0]]
        info = dict(nodes=store.num_nodes, edges=store.num_edges, build_s=build_s, store=str(path),
                    halo_rows=sum(store.summary(p).n_halo for p in range(store.num_parts)))
    return local, part_to_rank, info


def timed(fn, repeats, dist):
    """Median seconds of ``fn()`` over ``repeats`` runs (ranks aligned by a barrier before each)."""
    fn()
    fn()
    times = []
    for _ in range(repeats):
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    # a collective finishes when the slowest rank does: take the max over ranks of each median
    med = torch.tensor([statistics.median(times)], dtype=torch.float64)
    if dist.size > 1:
        import torch.distributed as td
        td.all_reduce(med, op=td.ReduceOp.MAX)
    return float(med)


def allgather_exchange(local, xs, dist):
    """Baseline: all-gather every rank's owned rows (padded to equal size), then copy halo rows out."""
    import torch.distributed as td
    own_ids = np.concatenate([p.core for p in local])
    own_vals = torch.cat([x[: p.n_core] for p, x in zip(local, xs)])
    counts = torch.tensor([own_ids.size])
    sizes = [torch.zeros_like(counts) for _ in range(dist.size)]
    td.all_gather(sizes, counts)
    width = int(max(s.item() for s in sizes))
    ids = torch.full((width,), -1, dtype=torch.int64)
    ids[: own_ids.size] = torch.as_tensor(own_ids)
    all_ids = [torch.empty_like(ids) for _ in range(dist.size)]
    td.all_gather(all_ids, ids)
    n = int(max(int(a.max()) for a in all_ids)) + 1
    where = torch.full((n,), -1, dtype=torch.int64)  # global id -> row of the gathered array
    for r, a in enumerate(all_ids):
        keep = a >= 0
        where[a[keep]] = r * width + torch.nonzero(keep).squeeze(1)
    halo_src = [where[torch.as_tensor(p.nodes[p.n_core:])] for p in local]

    def run():
        pad = own_vals.new_zeros((width,) + tuple(own_vals.shape[1:]))
        pad[: own_vals.shape[0]] = own_vals
        gathered = [torch.empty_like(pad) for _ in range(dist.size)]
        td.all_gather(gathered, pad)
        full = torch.cat(gathered)
        out = []
        for p, x, src in zip(local, xs, halo_src):
            y = x.clone()
            y[p.n_core:] = full[src]
            out.append(y)
        return out

    return run, width * own_vals.shape[1] * own_vals.element_size() * (dist.size - 1)


def append_results(text: str) -> None:
    """Add ``text`` at the end of the "## Halo exchange" section of benchmarks/RESULTS.md."""
    from meshgnn.io.atomic import atomic_path
    path = ROOT / "benchmarks" / "RESULTS.md"
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    if SECTION in old:
        head, _, rest = old.partition(SECTION)
        nxt = rest.find("\n## ")
        body, tail = (rest, "") if nxt < 0 else (rest[: nxt + 1], rest[nxt + 1:])
        new = head + SECTION + body.rstrip("\n") + "\n\n" + text + "\n" + ("\n" + tail if tail else "")
    else:
        new = old.rstrip("\n") + "\n\n" + SECTION + "\n\n" + text + "\n"
    with atomic_path(path) as tmp:
        Path(tmp).write_text(new)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--side", type=int, default=100, help="points per box edge (side^3 nodes)")
    ap.add_argument("--parts", type=int, default=8, help="number of parts")
    ap.add_argument("--features", type=int, default=128, help="feature width F (float32)")
    ap.add_argument("--halo", type=int, default=1, help="halo depth of the parts")
    ap.add_argument("--repeats", type=int, default=10, help="timed repetitions (median)")
    ap.add_argument("--base-repeats", type=int, default=3, help="timed repetitions of the all-gather baseline")
    ap.add_argument("--store", default=None,
                    help="part store to reuse or create (default /tmp/bench_halo_side<S>_p<P>_h<H>.parts.h5)")
    ap.add_argument("--no-write", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)

    dist = init_distributed(timeout_s=900)
    with abort_on_exception(dist):
        local, part_to_rank, info = load_local_parts(dist, args)
        t0 = time.perf_counter()
        sf = StarForest.from_parts(local, part_to_rank, dist=dist)
        sf_setup = time.perf_counter() - t0
        g = torch.Generator().manual_seed(dist.rank)
        xs = [torch.randn(p.num_nodes, args.features, generator=g) for p in local]
        flat = sf.cat(xs)

        before = sf.bytes_exchanged
        sf.bcast_flat(flat)
        bytes_bcast = sf.bytes_exchanged - before
        t_bcast = timed(lambda: sf.bcast_flat(flat), args.repeats, dist)
        t_inplace = timed(lambda: sf.bcast_flat_(flat), args.repeats, dist)
        send = flat.index_select(0, sf.send_rows)
        t_a2a = timed(lambda: sf._all_to_all(send, sf.send_splits, sf.recv_splits), args.repeats, dist) \
            if sf.needs_comm else 0.0
        t_reduce = timed(lambda: sf.reduce_flat(flat), args.repeats, dist)
        t_clone = timed(lambda: flat.clone(), args.repeats, dist)
        if dist.size > 1:
            base_run, bytes_base = allgather_exchange(local, xs, dist)
            ref = base_run()
            assert all(torch.equal(a, b) for a, b in zip(ref, sf.bcast(xs))), "baseline and star forest disagree"
            t_base = timed(base_run, args.base_repeats, dist)
        else:
            t_base, bytes_base = float("nan"), 0

        row = dict(rank=dist.rank, rows=sf.num_rows, leaves=sf.num_leaves, remote=sf.num_remote_leaves,
                   local=int(sf.local_leaf.numel()), bytes_bcast=bytes_bcast, bytes_base=bytes_base)
        rows = dist.gather_object(row)
        if dist.is_root:
            cmd = ("OMP_NUM_THREADS=1 .venv/bin/mpirun --allow-run-as-root --oversubscribe -n "
                   f"{dist.size} .venv/bin/python benchmarks/bench_halo.py " + shlex.join(sys.argv[1:]))
            lines = [
                f"`{cmd.strip()}` ({time.strftime('%Y-%m-%d %H:%M')}, {dist.size} ranks x {dist.threads} thread, "
                f"backend {dist.backend})",
                "",
                f"- mesh: {info['nodes']:,} nodes, {info['edges']:,} directed edges, {args.parts} parts "
                f"(METIS), halo {args.halo} ({info['halo_rows']:,} halo rows); "
                + (f"mesh+partition+store {info['build_s']:.1f} s on rank 0; " if info["build_s"] else "")
                + f"forest setup {sf_setup:.2f} s",
            ]
            for r in rows:
                lines.append(
                    f"- rank {r['rank']}: {r['rows']:,} rows, {r['leaves']:,} leaves ({r['local']:,} local copies, "
                    f"{r['remote']:,} remote); bytes sent per bcast {r['bytes_bcast'] / 2**20:.2f} MiB "
                    f"(all-gather baseline {r['bytes_base'] / 2**20:.2f} MiB, "
                    f"x{r['bytes_base'] / max(r['bytes_bcast'], 1):.1f})")
            lines.append(
                f"- F={args.features} float32, medians (bcast/reduce of {args.repeats}, baseline of "
                f"{args.base_repeats}), max over ranks: bcast {t_bcast * 1e3:.1f} ms (out-of-place, autograd), "
                f"bcast_flat_ {t_inplace * 1e3:.1f} ms (in place), of which all_to_all alone {t_a2a * 1e3:.1f} ms; "
                f"reduce {t_reduce * 1e3:.1f} ms; all-gather baseline {t_base * 1e3:.1f} ms "
                f"(baseline/bcast = {t_base / t_bcast:.1f}x, baseline/in-place = {t_base / t_inplace:.1f}x); "
                f"clone of the flat buffer {t_clone * 1e3:.1f} ms (bcast/clone = {t_bcast / t_clone:.1f}x)")
            text = "\n".join(lines)
            print(text, flush=True)
            if not args.no_write:
                append_results(text)
    dist.finalize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
