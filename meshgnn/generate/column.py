"""The built-in packed-column CO2-uptake dataset: geometry -> tet mesh -> potential flow -> transient uptake.

Trajectories differ by the inlet gas velocity (``parameters["inlet_velocity"]``). The recorded interval ``dt``
is chosen so that, for the fastest trajectory, the saturation front would cross ~90 % of the column over the
recorded horizon: every frame changes the state, and per frame the front moves about a mesh edge or less on the
demo mesh.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from ..io.dataset import NODE_TYPES, DatasetWriter, FieldSpec

FIELDS = [
    FieldSpec("co2", "state", 1, "mol/m^3"),
    FieldSpec("loading", "state", 1, "mol/m^3"),
    FieldSpec("velocity", "static", 3, "m/s"),
]
AUTO_THREADS_NODES = 200_000
FRONT_TRAVEL = 0.9    # fraction of the column height the fastest front crosses over the recorded horizon


@dataclass
class GenerateConfig:
    """Everything that defines a generated dataset (stored in its provenance)."""

    nodes: int = 5000
    trajectories: int = 4
    steps: int = 50
    seed: int = 0
    velocity_range: tuple = (0.05, 0.15)
    radius: float = 0.05
    height: float = 0.3
    packing: int = 24
    inlet_co2: float = 4.0
    capacity: float = 80.0
    rate: float = 5.0
    dispersion: float = 1e-5
    courant: float = 8.0
    threads: int = 0     # gmsh threads; 0: 1 below AUTO_THREADS_NODES nodes (reproducible meshes), else 2


def trajectory_velocities(cfg: GenerateConfig) -> np.ndarray:
    """Inlet velocities: evenly spread over the range, in a seed-shuffled order (held-out ids interpolate)."""
    lo, hi = cfg.velocity_range
    values = np.linspace(lo, hi, cfg.trajectories) if cfg.trajectories > 1 else np.array([0.5 * (lo + hi)])
    return values[np.random.default_rng(cfg.seed + 1).permutation(values.size)]


def generate_dataset(out, cfg: GenerateConfig, progress: bool = True, extra_provenance=None) -> dict:
    """Build the mesh, solve, and write dataset ``out`` atomically. Returns a summary dict."""
    from ..progress import Progress

    from ..graph import edges_from_cells
    from .geometry import INLET, OUTLET, mesh_column, place_packing
    from .solver import (P1Space, UptakeParameters, front_speed, low_order_operator, simulate_uptake,
                         limit_blas_threads, solve_flow, substeps_for)

    t_start = time.perf_counter()
    limit_blas_threads(1)
    geom = place_packing(cfg.seed, cfg.radius, cfg.height, cfg.packing)
    threads = cfg.threads or (1 if cfg.nodes < AUTO_THREADS_NODES else 2)
    mesh = mesh_column(geom, cfg.nodes, threads=threads)
    n = mesh.points.shape[0]
    t0 = time.perf_counter()
    edges = edges_from_cells({"tetra": mesh.tets}, n)
    space = P1Space(mesh.points, mesh.tets, edges)
    inlet, outlet = np.flatnonzero(mesh.node_type == INLET), np.flatnonzero(mesh.node_type == OUTLET)
    flow = solve_flow(space, mesh.inlet_faces, inlet, outlet)
    flow_seconds = time.perf_counter() - t0

    velocities = trajectory_velocities(cfg)
    params = [UptakeParameters(float(u), cfg.inlet_co2, cfg.capacity, cfg.rate, cfg.dispersion) for u in velocities]
    fastest = max(params, key=lambda p: p.inlet_velocity)
    dt = FRONT_TRAVEL * cfg.height / (front_speed(geom.volume, cfg.height, geom.inlet_area, fastest)
                                      * max(cfg.steps - 1, 1))
    provenance = {
        "generator": "meshgnn generate (packed column, P1 FEM potential flow + CO2 uptake)",
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "nodes_target": cfg.nodes, "nodes": n, "tetra": int(mesh.tets.shape[0]), "mesh_size_m": mesh.h,
        "packing_spheres": int(geom.radii.size), "fluid_volume_m3": geom.volume,
        "mesh_seconds": mesh.seconds, "flow_seconds": flow_seconds, "flow_cg_iterations": flow.iterations,
        "inlet_flux_per_velocity_m2": flow.inlet_flux, "outlet_flux_per_velocity_m2": flow.outlet_flux,
        **(extra_provenance or {}),
    }
    frame_seconds, substeps = [], {}
    with DatasetWriter(out, mesh.points, {"tetra": mesh.tets}, mesh.node_type, NODE_TYPES, dt, FIELDS,
                       dirichlet_types=["inlet"], provenance=provenance, edges=edges) as w:
        bar = Progress(cfg.trajectories * max(cfg.steps - 1, 0), "solving", enabled=progress,
                       every_s=30.0 if progress else None)
        for traj, p in enumerate(params):
            nsub = substeps_for(space, low_order_operator(space, flow, p), dt, cfg.courant, p.rate)
            substeps[str(traj)] = nsub
            w.add_trajectory(traj, cfg.steps, parameters={**asdict(p), "substeps": nsub},
                             static={"velocity": p.inlet_velocity * flow.node_velocity})
            for step, (c, q, sec) in enumerate(simulate_uptake(space, flow, p, inlet, cfg.steps, dt, nsub)):
                w.write_step(traj, step, step * dt, {"co2": c[:, None], "loading": q[:, None]})
                if step:
                    frame_seconds.append(sec)
                    bar.update(1)
        bar.close()
        per_step = float(np.median(frame_seconds)) if frame_seconds else 0.0
        w.provenance["solver_seconds_per_step"] = per_step
        w.provenance["substeps_per_step"] = substeps
        w.provenance["total_seconds"] = time.perf_counter() - t_start
    counts = np.bincount(mesh.node_type, minlength=len(NODE_TYPES))
    return {"path": str(out), "nodes": n, "nodes_target": cfg.nodes, "edges": int(edges.shape[1]),
            "tetra": int(mesh.tets.shape[0]), "node_types": dict(zip(NODE_TYPES, counts.tolist())),
            "dt": dt, "velocities": velocities.tolist(), "mesh_seconds": mesh.seconds,
            "flow_seconds": flow_seconds, "solver_seconds_per_step": per_step,
            "total_seconds": time.perf_counter() - t_start}
