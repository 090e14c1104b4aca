"""Generator cost by mesh size: gmsh meshing, potential flow, transport seconds per recorded step, peak RSS.

Each size runs in its own subprocess (so peak RSS is per size). Baseline, same run: the potential-flow solve by
a sparse direct factorisation (SuperLU, ``scipy.sparse.linalg.spsolve``) on sizes up to ``--direct-max``, against
the Jacobi-preconditioned CG the generator uses; the ratio is printed.

    python benchmarks/bench_generate.py --nodes 5000 100000 1000000 [--steps 3] [--markdown]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one_size(nodes: int, steps: int, direct_max: int) -> dict:
    import numpy as np
    import scipy.sparse.linalg as spla

    from meshgnn.generate.column import FRONT_TRAVEL, GenerateConfig, trajectory_velocities
    from meshgnn.generate.geometry import INLET, OUTLET, mesh_column, place_packing
    from meshgnn.generate.solver import (P1Space, UptakeParameters, front_speed, low_order_operator,
                                         limit_blas_threads, simulate_uptake, solve_flow,
                                         substeps_for)
    from meshgnn.graph import edges_from_cells

    limit_blas_threads(1)
    cfg = GenerateConfig(nodes=nodes)
    geom = place_packing(cfg.seed, cfg.radius, cfg.height, cfg.packing)
    mesh = mesh_column(geom, nodes, threads=1 if nodes < 200_000 else 2)
    n = mesh.points.shape[0]
    t0 = time.perf_counter()
    edges = edges_from_cells({"tetra": mesh.tets}, n)
    space = P1Space(mesh.points, mesh.tets, edges)
    t_graph = time.perf_counter() - t0
    inlet, outlet = np.flatnonzero(mesh.node_type == INLET), np.flatnonzero(mesh.node_type == OUTLET)
    flow = solve_flow(space, mesh.inlet_faces, inlet, outlet)
    res = {"nodes_target": nodes, "nodes": n, "tetra": int(mesh.tets.shape[0]), "edges": int(edges.shape[1]),
           "mesh_s": mesh.seconds, "graph_assembly_s": t_graph, "flow_s": flow.seconds,
           "flow_cg_iterations": flow.iterations}
    if n <= direct_max:
        free = np.ones(n, dtype=bool)
        free[outlet] = False
        k = space.matrix(space.stiffness())[free][:, free].tocsc()
        t0 = time.perf_counter()
        spla.spsolve(k, np.ones(int(free.sum())))
        res["flow_direct_solve_s"] = time.perf_counter() - t0
    u = float(max(trajectory_velocities(cfg)))
    p = UptakeParameters(u, cfg.inlet_co2, cfg.capacity, cfg.rate, cfg.dispersion)
    dt = FRONT_TRAVEL * cfg.height / (front_speed(geom.volume, cfg.height, geom.inlet_area, p) * (cfg.steps - 1))
    nsub = substeps_for(space, low_order_operator(space, flow, p), dt, cfg.courant, p.rate)
    secs = [s for _, _, s in simulate_uptake(space, flow, p, inlet, steps + 1, dt, nsub)][1:]
    res.update(substeps=nsub, seconds_per_step=float(np.median(secs)),
               peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[5000, 100000, 1000000])
    ap.add_argument("--steps", type=int, default=3, help="recorded steps timed per size (median reported)")
    ap.add_argument("--direct-max", type=int, default=20000, help="largest size for the direct-solve baseline")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_size(args.one, args.steps, args.direct_max)))
        return 0
    rows = []
    for nodes in args.nodes:
        out = subprocess.run([sys.executable, __file__, "--one", str(nodes), "--steps", str(args.steps),
                              "--direct-max", str(args.direct_max)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print("| target | nodes | tetra | edges | mesh s | graph+assembly s | flow s (CG its) | direct flow s "
          "(CG speed-up) | substeps | s / step | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        direct = (f"{r['flow_direct_solve_s']:.2f} ({r['flow_direct_solve_s'] / r['flow_s']:.1f}x)"
                  if "flow_direct_solve_s" in r else "-")
        print(f"| {r['nodes_target']} | {r['nodes']} | {r['tetra']} | {r['edges']} | {r['mesh_s']:.1f} | "
              f"{r['graph_assembly_s']:.1f} | {r['flow_s']:.1f} ({r['flow_cg_iterations']}) | {direct} | "
              f"{r['substeps']} | {r['seconds_per_step']:.2f} | {r['peak_rss_gib']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
