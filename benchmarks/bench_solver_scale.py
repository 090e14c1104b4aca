"""The built-in generator's transport solver, timed on the rollout-at-scale box mesh (issue 7).

The surrogate rollout at scale runs on ``meshgnn.meshes.box_tets(side)`` (side 145: 3,048,625 nodes) with the
packed column's node types: inlet z=0 (prescribed), outlet z=1, walls, interior. This runs the generator's own
solver code (``meshgnn.generate.solver``, called as ``generate_dataset`` calls it) on that mesh:

1. mesh (``box_tets``), mesh edges (``edges_from_cells``), ``P1Space``, potential flow ``solve_flow`` (inlet
   faces: the boundary triangles at z=0; outlet: the nodes at z=1);
2. sub-steps per recorded frame by the generator's rule (``substeps_for`` with the default ``courant`` on
   ``low_order_operator`` of the fastest default trajectory) for the frame intervals the generator's ``dt`` rule
   gives: the default column at ``--steps 50`` and ``--steps 3`` (the intervals of "Rollout at scale"), and the
   same rule applied to the box's own geometry (height 1 m, no packing);
3. ``simulate_uptake`` with the generator's sub-step size ``h`` (that of the default column interval):
   the initial gas-profile pseudo-time phase, then ``--frames`` frames of ``--substeps`` implicit sub-steps each
   (default: the generator's full count for the default interval, so one recorded frame is timed whole).
   BiCGStab calls are timed one by one through a wrapper around the module's ``spla`` (no solver change).

Solver seconds per recorded frame = sub-steps (the generator's rule) x measured seconds per sub-step; the
output says which numbers are measured and which are products.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/bench_solver_scale.py --side 145
"""
from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import time

import numpy as np


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def box_boundary(points: np.ndarray, tets: np.ndarray):
    """Inlet faces (F, 3) (boundary triangles at z=0), inlet nodes (z=0) and outlet nodes (z=1) of a unit box."""
    z = points[:, 2]
    on_inlet = z[tets] <= 0.0                                   # (M, 4)
    face_tets = np.flatnonzero(on_inlet.sum(axis=1) == 3)       # a boundary face belongs to exactly one tet
    faces = tets[face_tets][on_inlet[face_tets]].reshape(-1, 3)
    return faces, np.flatnonzero(z <= 0.0), np.flatnonzero(z >= 1.0)


def frame_interval(volume: float, height: float, inlet_area: float, p, steps: int) -> float:
    """The generator's recorded interval ``dt`` (``generate_dataset``) for ``steps`` frames, fastest trajectory ``p``."""
    from meshgnn.generate.column import FRONT_TRAVEL
    from meshgnn.generate.solver import front_speed

    return FRONT_TRAVEL * height / (front_speed(volume, height, inlet_area, p) * max(steps - 1, 1))


class TimedSpla:
    """Stand-in for ``scipy.sparse.linalg`` that times each ``bicgstab`` call and counts its iterations."""

    def __init__(self, real):
        self._real = real
        self.calls: list[tuple[float, int]] = []      # (seconds, iterations) per call, in call order

    def __getattr__(self, name):
        return getattr(self._real, name)

    def bicgstab(self, *args, **kwargs):
        iters = [0]
        kwargs["callback"] = lambda _: iters.__setitem__(0, iters[0] + 1)
        t0 = time.perf_counter()
        out = self._real.bicgstab(*args, **kwargs)
        self.calls.append((time.perf_counter() - t0, iters[0]))
        return out


@contextlib.contextmanager
def timed_bicgstab():
    """Route ``meshgnn.generate.solver``'s BiCGStab calls through a ``TimedSpla`` for the duration."""
    from meshgnn.generate import solver

    real = solver.spla
    solver.spla = timed = TimedSpla(real)
    try:
        yield timed
    finally:
        solver.spla = real


def fastest_trajectory(trajectories: int):
    """``UptakeParameters`` of the fastest of the generator's ``trajectories`` (default config otherwise)."""
    from meshgnn.generate.column import GenerateConfig, trajectory_velocities
    from meshgnn.generate.solver import UptakeParameters

    cfg = GenerateConfig(trajectories=trajectories)
    u = float(max(trajectory_velocities(cfg)))
    return UptakeParameters(u, cfg.inlet_co2, cfg.capacity, cfg.rate, cfg.dispersion)


def run(side: int, frames: int, substeps: int, trajectories: int) -> dict:
    from meshgnn.generate.column import GenerateConfig
    from meshgnn.generate.geometry import place_packing
    from meshgnn.generate.solver import (P1Space, limit_blas_threads, low_order_operator,
                                         simulate_uptake, solve_flow, substeps_for)
    from meshgnn.graph import edges_from_cells
    from meshgnn.meshes import box_tets

    limit_blas_threads(1)
    cfg = GenerateConfig()
    p = fastest_trajectory(trajectories)
    u = p.inlet_velocity
    res: dict = {"side": side, "trajectories": trajectories, "inlet_velocity": u, "courant": cfg.courant,
                 "rate": cfg.rate}
    rss = {}

    t0 = time.perf_counter()
    points, tets = box_tets(side)
    n = points.shape[0]
    res["mesh_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    edges = edges_from_cells({"tetra": tets}, n)
    res["edges_s"] = time.perf_counter() - t0
    rss["edges"] = peak_rss_gib()
    res.update(nodes=n, tetra=int(tets.shape[0]), edges=int(edges.shape[1]))
    t0 = time.perf_counter()
    space = P1Space(points, tets, edges)
    res["p1space_s"] = time.perf_counter() - t0
    del edges
    rss["p1space"] = peak_rss_gib()
    faces, inlet, outlet = box_boundary(points, tets)
    res.update(inlet_faces=int(faces.shape[0]), inlet_nodes=int(inlet.size), outlet_nodes=int(outlet.size))
    flow = solve_flow(space, faces, inlet, outlet)
    res.update(flow_s=flow.seconds, flow_cg_iterations=flow.iterations,
               flow_inlet_flux=flow.inlet_flux, flow_outlet_flux=flow.outlet_flux)
    rss["flow"] = peak_rss_gib()

    # sub-steps per recorded frame by the generator's rule, for its frame intervals
    t0 = time.perf_counter()
    geom = place_packing(cfg.seed, cfg.radius, cfg.height, cfg.packing)
    column, box = (geom.volume, cfg.height, geom.inlet_area), (1.0, 1.0, 1.0)
    cases = [("column", trajectories, column, p), ("box", trajectories, box, p)]
    if trajectories != cfg.trajectories:               # also the generator's default trajectory count
        cases.insert(1, ("column", cfg.trajectories, column, fastest_trajectory(cfg.trajectories)))
    ops = {}
    intervals = []
    for where, traj, (volume, height, area), q in cases:
        if q.inlet_velocity not in ops:
            ops[q.inlet_velocity] = low_order_operator(space, flow, q)
        op = ops[q.inlet_velocity]
        for steps in (cfg.steps, 3):
            dt = frame_interval(volume, height, area, q, steps)
            intervals.append({"geometry": where, "trajectories": traj, "inlet_velocity": q.inlet_velocity,
                              "steps": steps, "dt_s": dt, "substeps": substeps_for(space, op, dt, cfg.courant, q.rate),
                              "substeps_courant_only": substeps_for(space, op, dt, cfg.courant, 0.0)})
    del ops, op
    res["substeps_rule_s"] = time.perf_counter() - t0
    ref = intervals[0]                                 # column, --steps 50, the timed velocity
    h = ref["dt_s"] / ref["substeps"]                  # the generator's sub-step at the default interval
    k = substeps or ref["substeps"]
    res.update(substep_h_s=h, timed_substeps_per_frame=k, timed_frames=frames)

    # the generator's transport loop: initial gas profile, then `frames` frames of k sub-steps of size h
    with timed_bicgstab() as timed:
        t0 = time.perf_counter()
        gen = simulate_uptake(space, flow, p, inlet, frames + 1, k * h, k)
        next(gen)
        res["initial_profile_s"] = time.perf_counter() - t0
        n_pseudo = len(timed.calls)
        frame_s = [sec for _, _, sec in gen]
    rss["transport"] = peak_rss_gib()
    sub = timed.calls[n_pseudo:]
    res.update(initial_profile_pseudo_steps=n_pseudo, initial_profile_cap=50 * k,
               initial_profile_bicgstab_its_median=float(np.median([i for _, i in timed.calls[:n_pseudo]])),
               frame_s=frame_s, substep_s=float(np.median(frame_s)) / k,
               substep_bicgstab_s_median=float(np.median([s for s, _ in sub])),
               substep_bicgstab_its_median=float(np.median([i for _, i in sub])),
               substep_bicgstab_s_each=[s for s, _ in sub])
    for iv in intervals:
        iv["solver_s_per_frame"] = iv["substeps"] * res["substep_s"]
        iv["measured_whole"] = (iv["substeps"] == k and iv["inlet_velocity"] == u
                                and abs(iv["dt_s"] / iv["substeps"] - h) < 1e-12 * h)
    res["intervals"] = intervals
    res["peak_rss_gib"] = rss
    return res


def table(res: dict) -> str:
    """A short markdown table of ``run``'s result."""
    rss = res["peak_rss_gib"]
    k = res["timed_substeps_per_frame"]
    rows = [
        ("mesh: nodes / tets / directed edges", f"{res['nodes']:,} / {res['tetra']:,} / {res['edges']:,}", "-"),
        ("box_tets + edges_from_cells s", f"{res['mesh_s']:.1f} + {res['edges_s']:.1f}", "measured"),
        ("P1Space (CSR pattern, tet positions, lumped mass) s", f"{res['p1space_s']:.1f}", "measured"),
        ("(a) potential flow `solve_flow` s (CG iterations)",
         f"{res['flow_s']:.1f} ({res['flow_cg_iterations']})", "measured"),
        ("(b) initial gas profile s (pseudo-time steps / cap; BiCGStab its median)",
         f"{res['initial_profile_s']:.1f} ({res['initial_profile_pseudo_steps']} / "
         f"{res['initial_profile_cap']}; {res['initial_profile_bicgstab_its_median']:.0f})", "measured"),
        (f"(c) implicit sub-step s (h = {res['substep_h_s']:.4f} s; frame s / {k}, median over "
         f"{res['timed_frames']} frame(s))", f"{res['substep_s']:.3f}", "measured"),
        ("    of which BiCGStab s, median (its median)",
         f"{res['substep_bicgstab_s_median']:.3f} ({res['substep_bicgstab_its_median']:.0f})", "measured"),
    ]
    rows.append(("peak RSS GiB after edges / P1Space / flow / transport",
                 " / ".join(f"{rss[key]:.2f}" for key in ("edges", "p1space", "flow", "transport")), "measured"))
    lines = [f"{res['nodes']:,}-node box_tets({res['side']}); timed inlet velocity {res['inlet_velocity']:g} m/s",
             "", "| quantity | value | kind |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines += ["", "| (d) frame interval (generator's dt rule) | dt s | sub-steps per frame (Courant-only) "
              "| solver s per recorded frame | kind |", "| --- | --- | --- | --- | --- |"]
    for iv in res["intervals"]:
        kind = ("measured (one whole frame)" if iv["measured_whole"]
                else "product: sub-steps (generator's rule) x (c)")
        lines.append(f"| {iv['geometry']} geometry, {iv['trajectories']} traj (u {iv['inlet_velocity']:g} m/s), "
                     f"--steps {iv['steps']} | {iv['dt_s']:.3g} | {iv['substeps']} ({iv['substeps_courant_only']}) "
                     f"| {iv['solver_s_per_frame']:.1f} | {kind} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=145, help="box_tets points per side (145: 3,048,625 nodes)")
    ap.add_argument("--frames", type=int, default=1, help="recorded frames timed after the initial state")
    ap.add_argument("--substeps", type=int, default=0,
                    help="implicit sub-steps per timed frame, each of the generator's size h; 0: the generator's "
                         "count for the default 50-frame interval (the frame is then timed whole)")
    ap.add_argument("--trajectories", type=int, default=1,
                    help="the generator's --trajectories: its fastest inlet velocity sets dt and is the one timed "
                         "(1: 0.10 m/s, as in RESULTS' same-mesh 100k runs and the box dataset; generator default 4: "
                         "0.15 m/s, whose intervals are listed too)")
    args = ap.parse_args(argv)
    res = run(args.side, args.frames, args.substeps, args.trajectories)
    print(json.dumps(res), flush=True)
    print(table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
