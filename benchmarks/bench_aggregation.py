"""Aggregation kernels: meshgnn.ops ("ours") against the scatter baselines, on a structured 3D tet mesh.

For each edge count (about 14 directed edges per node, from a Kuhn-split hexahedral grid through
``meshgnn.graph.edges_from_cells``) and dtype it times, as the median of ``--repeats`` interleaved runs:
  * aggregation forward and forward+backward (sum of incoming edge values, ``(E,F) -> (N,F)``):
    ours, torch_scatter.segment_csr (if installed), index_add_ on shuffled edges ("unsorted") and on
    receiver-sorted edges, torch_geometric.utils.scatter, torch.segment_reduce;
  * the fused gather_add ``a[s] + b[r] + c`` against the unfused torch expression.
Ratios are ``baseline time / ours time`` (> 1: ours is faster).

``--device cuda`` runs the same on a GPU (ours = the Triton kernels; each measurement is the CUDA-event time of 10
back-to-back calls, per call) and adds the effective memory bandwidth (bytes that must move at least once).

    python benchmarks/bench_aggregation.py --edges 1e6 3e6 --dtypes float32 bfloat16 \
        --results benchmarks/RESULTS.md
    python benchmarks/bench_aggregation.py --device cuda --edges 1e6 3e6 30e6 --repeats 20
"""
from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time

import numpy as np
import torch

from meshgnn import ops
from meshgnn.graph import Graph, edges_from_cells

SECTION = "## Aggregation kernels"


def tet_grid(n: int) -> tuple[dict[str, np.ndarray], int]:
    """``n^3`` vertices; every grid cube split into 6 tetrahedra around its main diagonal (Kuhn)."""
    i, j, k = np.meshgrid(*(np.arange(n - 1),) * 3, indexing="ij")
    base = (i + n * (j + n * k)).ravel()
    step = (1, n, n * n)
    tets = []
    for p in itertools.permutations(range(3)):
        v0 = base
        v1 = v0 + step[p[0]]
        v2 = v1 + step[p[1]]
        v3 = v2 + step[p[2]]
        tets.append(np.stack([v0, v1, v2, v3], axis=1))
    return {"tetra": np.concatenate(tets)}, n ** 3


def mesh_graph(target_edges: float) -> Graph:
    """Tet-grid graph with about ``target_edges`` directed edges (interior nodes have 14 neighbours)."""
    n = max(2, round((target_edges / 14) ** (1 / 3)))
    cells, num_nodes = tet_grid(n)
    return Graph.from_edge_index(edges_from_cells(cells, num_nodes), num_nodes)


def aggregation_methods(graph: Graph) -> dict:
    """name -> fn(values) -> (N,F), all summing incoming edge values (receiver-sorted ``values``)."""
    n, r, rowptr = graph.num_nodes, graph.receivers, graph.rowptr
    shuffle = torch.randperm(graph.num_edges, generator=torch.Generator().manual_seed(0)).to(r.device)
    r_shuffled = r[shuffle]

    def ours(v):
        with ops.use_backend("ours"):
            return ops.segment_sum(v, rowptr)

    def index_add_sorted(v):
        return v.new_zeros((n, v.shape[1])).index_add(0, r, v)

    def index_add_unsorted(v):  # the edge order of an unsorted edge list: shuffled edges (shuffle not timed)
        return v.new_zeros((n, v.shape[1])).index_add(0, r_shuffled, v)

    def segment_reduce(v):
        return torch.segment_reduce(v, "sum", offsets=rowptr, axis=0)

    methods = {"ours": ours, "index_add_unsorted": index_add_unsorted, "index_add_sorted": index_add_sorted,
               "segment_reduce": segment_reduce}
    try:   # optional baselines: extras [pyg] and [scatter]
        from torch_geometric.utils import scatter
        methods["pyg_scatter"] = lambda v: scatter(v, r, dim=0, dim_size=n, reduce="sum")
    except ImportError:
        print("bench_aggregation: pyg_scatter skipped (pip install 'meshgnn[pyg]')", file=sys.stderr)
    try:
        import torch_scatter
        methods["torch_scatter"] = lambda v: torch_scatter.segment_csr(v, rowptr, reduce="sum")
    except ImportError:
        pass
    return methods, shuffle


def gather_methods(graph: Graph) -> dict:
    def fused(a, b, c):
        with ops.use_backend("ours"):
            return ops.gather_add(a, b, c, graph)

    def unfused(a, b, c):
        return a[graph.senders] + b[graph.receivers] + c

    return {"ours_fused": fused, "torch_unfused": unfused}


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


BURST = 1   # calls per measurement; on a GPU (main sets 10) the calls run back to back, as in a training loop


def _timed(fn) -> tuple[float, float]:
    """(seconds, process CPU seconds of all threads) per call, device work included: on the CPU one call's wall
    time; on a GPU the CUDA-event time of ``BURST`` back-to-back calls over ``BURST`` (host dispatch overlaps the
    kernels, as it does in training)."""
    _sync()
    c0 = time.process_time()
    if BURST > 1:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(BURST):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / BURST, (time.process_time() - c0) / BURST
    t0 = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t0, time.process_time() - c0


def run_case(graph: Graph, F: int, dtype: torch.dtype, repeats: int,
             device: str = "cpu") -> list[tuple[str, str, float, float]]:
    """Median (wall, CPU) seconds of every (kind, method) for one graph/dtype, methods interleaved per repeat."""
    gen = torch.Generator(device).manual_seed(1)
    E, n = graph.num_edges, graph.num_nodes
    values = torch.randn(E, F, generator=gen, device=device).to(dtype)
    node_a, node_b = (torch.randn(n, F, generator=gen, device=device).to(dtype) for _ in range(2))
    grad_nodes = torch.randn(n, F, generator=gen, device=device).to(dtype)
    grad_edges = torch.randn(E, F, generator=gen, device=device).to(dtype)
    agg, shuffle = aggregation_methods(graph)
    shuffle = shuffle.to(device)
    values_shuffled = values[shuffle]
    graph.sender_perm  # noqa: B018  (cached once per graph, as in training)

    def agg_input(name):
        return values_shuffled if name == "index_add_unsorted" else values

    def fwd(name):
        return lambda: agg[name](agg_input(name))

    def fwd_bwd(name):
        def go():
            v = agg_input(name).detach().requires_grad_()
            agg[name](v).backward(grad_nodes)
        return go

    gat = gather_methods(graph)

    def g_fwd(name):
        return lambda: gat[name](node_a, node_b, values)

    def g_fwd_bwd(name):
        def go():
            a, b, c = (t.detach().requires_grad_() for t in (node_a, node_b, values))
            gat[name](a, b, c).backward(grad_edges)
        return go

    jobs = [("aggregate fwd", m, fwd(m)) for m in agg] + [("aggregate fwd+bwd", m, fwd_bwd(m)) for m in agg]
    jobs += [("gather_add fwd", m, g_fwd(m)) for m in gat] + [("gather_add fwd+bwd", m, g_fwd_bwd(m)) for m in gat]
    for _, _, job in jobs:  # warm-up (kernel build, allocator)
        job()
    times: dict[tuple[str, str], list[tuple[float, float]]] = {(k, m): [] for k, m, _ in jobs}
    for _ in range(repeats):
        for kind, name, job in jobs:
            times[(kind, name)].append(_timed(job))
    return [(k, m, statistics.median(w for w, _ in ts), statistics.median(c for _, c in ts))
            for (k, m), ts in times.items()]


def min_bytes(kind: str, E: int, n: int, F: int, itemsize: int) -> int:
    """Bytes a kernel must move at least once: the edge and node arrays it reads and writes, int64 indices."""
    if kind == "aggregate fwd":          # read (E,F) + rowptr, write (N,F)
        return (E + n) * F * itemsize + 8 * (n + 1)
    if kind == "gather_add fwd":         # read a[s] (N,F at least), b (N,F), c (E,F), senders, write (E,F)
        return (2 * E + 2 * n) * F * itemsize + 8 * (E + n + 1)
    return 0


def tile_sweep(graph: Graph, F: int, dtypes: list[str], tiles: list[str], repeats: int) -> list[str]:
    """Median ms of ours' forward kernels (segment_sum, gather_add) for each Triton launch tile."""
    from meshgnn.ops import _triton

    saved = dict(_triton.TILE)
    E, n = graph.num_edges, graph.num_nodes
    lines = [f"\n**Triton launch tiles, E = {E:,}, F = {F}** (rows per program, feature block, warps)\n",
             "| dtype | tile | segment_sum ms | GB/s | gather_add ms | GB/s |", "|---|---|---:|---:|---:|---:|"]
    try:
        for dname in dtypes:
            dtype = getattr(torch, dname)
            itemsize = torch.empty(0, dtype=dtype).element_size()
            v = torch.randn(E, F, device=graph.rowptr.device).to(dtype)
            a = torch.randn(n, F, device=graph.rowptr.device).to(dtype)
            for tile in tiles:
                _triton.set_tile(*(int(x) for x in tile.split(",")))
                seg = lambda: ops.segment_sum(v, graph.rowptr)  # noqa: E731
                gat = lambda: ops.gather_add(a, a, v, graph)  # noqa: E731
                seg(), gat()
                t_seg = statistics.median(_timed(seg)[0] for _ in range(repeats))
                t_gat = statistics.median(_timed(gat)[0] for _ in range(repeats))
                lines.append(f"| {dname} | {tile} | {t_seg * 1e3:.3f} | "
                             f"{min_bytes('aggregate fwd', E, n, F, itemsize) / t_seg / 1e9:.0f} | "
                             f"{t_gat * 1e3:.3f} | {min_bytes('gather_add fwd', E, n, F, itemsize) / t_gat / 1e9:.0f} |")
    finally:
        _triton.set_tile(saved["rows"], saved["block_f"], saved["num_warps"])
    return lines


def report(rows, E: int, n: int, F: int, dtype: torch.dtype, device: str = "cpu") -> list[str]:
    """Markdown table: median wall and CPU ms, baseline/ours ratios; the best baseline (by wall) is marked."""
    if device != "cpu":
        itemsize = torch.empty(0, dtype=dtype).element_size()
        lines = [f"\n**E = {E:,} edges, N = {n:,} nodes, F = {F}, {str(dtype).replace('torch.', '')}, {device}**\n",
                 "| kind | method | ms | time / ours | GB/s (minimum bytes) |", "|---|---|---:|---:|---:|"]
        for kind in dict.fromkeys(r[0] for r in rows):
            sub = [(m, w) for k, m, w, _ in rows if k == kind]
            ours_w = next(w for m, w in sub if m.startswith("ours"))
            best = min((r for r in sub if not r[0].startswith("ours")), key=lambda r: r[1])
            nbytes = min_bytes(kind, E, n, F, itemsize)
            for m, w in sub:
                tag = " (best baseline)" if m == best[0] else ""
                bw = f"{nbytes / w / 1e9:.0f}" if nbytes else ""
                lines.append(f"| {kind} | {m}{tag} | {w * 1e3:.3f} | {w / ours_w:.2f} | {bw} |")
            lines.append(f"| {kind} | **best baseline / ours** | | **{best[1] / ours_w:.2f}** | |")
        return lines
    lines = [f"\n**E = {E:,} edges, N = {n:,} nodes, F = {F}, {str(dtype).replace('torch.', '')}**\n",
             "| kind | method | wall ms | wall / ours | CPU ms | CPU / ours |", "|---|---|---:|---:|---:|---:|"]
    for kind in dict.fromkeys(r[0] for r in rows):
        sub = [(m, w, c) for k, m, w, c in rows if k == kind]
        _, ours_w, ours_c = next(r for r in sub if r[0].startswith("ours"))
        best = min((r for r in sub if not r[0].startswith("ours")), key=lambda r: r[1])
        for m, w, c in sub:
            tag = " (best baseline)" if m == best[0] else ""
            lines.append(f"| {kind} | {m}{tag} | {w * 1e3:.1f} | {w / ours_w:.2f} | {c * 1e3:.1f} | {c / ours_c:.2f} |")
        lines.append(f"| {kind} | **best baseline / ours** | | **{best[1] / ours_w:.2f}** | | "
                     f"**{best[2] / ours_c:.2f}** |")
    return lines


def append_results(path: str, lines: list[str]) -> None:
    """Append ``lines`` at the end of the ``## Aggregation kernels`` section of ``path`` (created if missing)."""
    text = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
    block = "\n".join(lines) + "\n"
    start = text.find(SECTION)
    if start < 0:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n" + block
    else:
        nxt = text.find("\n## ", start + len(SECTION))
        end = len(text) if nxt < 0 else nxt + 1
        text = text[:end].rstrip("\n") + "\n" + block + ("\n" + text[end:] if nxt >= 0 else "")
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edges", type=float, nargs="+", default=[1e6, 3e6], help="approximate edge counts")
    ap.add_argument("--features", type=int, default=128, help="feature width F")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], help="torch dtypes to time")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per method (median reported)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    ap.add_argument("--results", default=None, help="append the tables to this markdown file")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--tiles", nargs="*", default=[], metavar="R,B,W",
                    help="CUDA: also time ours' forward kernels for each launch tile rows,block_f,warps")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    global BURST
    BURST = 1 if args.device == "cpu" else 10
    if args.device == "cpu":
        where = (f"{args.threads} threads, CPU kernel: {ops.kernel_name('cpu')}, "
                 f"load average at start {os.getloadavg()[0]:.1f} (machine shared with other jobs)")
    else:
        from meshgnn.ops import _triton
        where = (f"{torch.cuda.get_device_name(args.device)}, kernel: {ops.kernel_name(args.device)} "
                 f"(tile {_triton.TILE}), CUDA-event time per call over bursts of {BURST}")
    header = [f"\nCommand: `python {' '.join(sys.argv)}`  ",
              f"torch {torch.__version__}, {where}, "
              f"median of {args.repeats} interleaved repeats; {time.strftime('%Y-%m-%d %H:%M')}"]
    print("\n".join(header), flush=True)
    lines = list(header)
    for target in args.edges:
        graph = mesh_graph(target)
        graph.sender_perm  # noqa: B018  (built on the host, then moved with the graph)
        graph = graph.to(args.device)
        for dname in args.dtypes:
            dtype = getattr(torch, dname)
            rows = run_case(graph, args.features, dtype, args.repeats, args.device)
            table = report(rows, graph.num_edges, graph.num_nodes, args.features, dtype, args.device)
            print("\n".join(table), flush=True)
            lines += table
        if args.tiles:
            table = tile_sweep(graph, args.features, args.dtypes, args.tiles, args.repeats)
            print("\n".join(table), flush=True)
            lines += table
    if args.results:
        append_results(args.results, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
