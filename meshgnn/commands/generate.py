"""meshgnn generate: the built-in 3D packed-column CO2-uptake dataset (gmsh tet mesh + P1 FEM solver)."""
from __future__ import annotations

import sys

from ..errors import MeshgnnError


def add_arguments(p):
    p.add_argument("out", metavar="OUT.h5", help="dataset file to write (replaced atomically)")
    p.add_argument("--nodes", type=int, default=5000,
                   help="target mesh node count, 1000 .. 5000000; the achieved count is reported (default 5000)")
    p.add_argument("--trajectories", type=int, default=4,
                   help="trajectories, one inlet velocity each (default 4)")
    p.add_argument("--steps", type=int, default=50, help="recorded time steps per trajectory (default 50)")
    p.add_argument("--seed", type=int, default=0, help="seed of the packing placement and velocity order (default 0)")
    p.add_argument("--velocity-range", type=float, nargs=2, default=(0.05, 0.15), metavar=("MIN", "MAX"),
                   help="inlet gas velocity range in m/s, spread evenly over the trajectories (default 0.05 0.15)")
    p.add_argument("--packing", type=int, default=24, help="number of spherical packing elements (default 24)")
    p.add_argument("--inlet-co2", type=float, default=4.0, help="inlet CO2 concentration, mol/m^3 (default 4)")
    p.add_argument("--capacity", type=float, default=80.0,
                   help="packing capacity q_max, mol/m^3 of column (default 80)")
    p.add_argument("--rate", type=float, default=5.0, help="uptake rate constant k, 1/s (default 5)")
    p.add_argument("--courant", type=float, default=8.0,
                   help="implicit sub-step Courant number (90th percentile of nodes); smaller = more sub-steps, "
                        "more accurate (default 8)")
    p.add_argument("--mesh-threads", dest="mesh_threads", type=int, default=0,
                   help="gmsh meshing threads; 0 = 1 below 200000 nodes (bit-reproducible meshes), else 2 (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--solver", choices=("builtin", "openfoam"), default="builtin",
                   help="builtin: packed column, P1 FEM (default); openfoam: channel with spheres solved by icoFoam + "
                        "scalar transport, imported from the cases (needs OpenFOAM; uses --nodes, --trajectories, "
                        "--steps, --velocity-range)")
    p.add_argument("--parallel", type=int, default=1,
                   help="openfoam: MPI ranks per run (decomposePar method simple, mpirun, reconstructPar) (default 1)")
    p.add_argument("--workdir", default=None, help="openfoam: folder for the case folders (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="openfoam: keep the case folders after the import")


def _check(args) -> None:
    lo, hi = args.velocity_range
    checks = [(1000 <= args.nodes <= 50_000_000, "--nodes must lie in [1000, 50000000]"),
              (args.trajectories >= 1, "--trajectories must be >= 1"),
              (args.steps >= 2, "--steps must be >= 2"),
              (0 < lo <= hi, "--velocity-range needs 0 < MIN <= MAX"),
              (args.packing >= 0, "--packing must be >= 0"),
              (args.inlet_co2 > 0 and args.capacity > 0 and args.rate >= 0, "--inlet-co2, --capacity > 0, --rate >= 0"),
              (args.courant > 0, "--courant must be > 0"), (args.mesh_threads >= 0, "--mesh-threads must be >= 0")]
    for ok, message in checks:
        if not ok:
            raise MeshgnnError(message)


def run(args) -> int:
    from ..generate.column import GenerateConfig, generate_dataset
    from ..provenance import invocation

    _check(args)
    if args.solver == "openfoam":
        return _run_openfoam(args)
    cfg = GenerateConfig(nodes=args.nodes, trajectories=args.trajectories, steps=args.steps, seed=args.seed,
                         velocity_range=tuple(args.velocity_range), packing=args.packing, inlet_co2=args.inlet_co2,
                         capacity=args.capacity, rate=args.rate, courant=args.courant, threads=args.mesh_threads)
    print(f"meshgnn generate: packed column, target {cfg.nodes} nodes, {cfg.trajectories} trajectories x "
          f"{cfg.steps} steps", file=sys.stderr)
    s = generate_dataset(args.out, cfg, progress=not args.quiet,
                         extra_provenance=invocation())
    off = 100.0 * (s["nodes"] / s["nodes_target"] - 1.0)
    types = ", ".join(f"{k}={v}" for k, v in s["node_types"].items())
    print(f"wrote {s['path']}\n"
          f"  nodes     {s['nodes']} (target {s['nodes_target']}, {off:+.0f}%), {s['tetra']} tetra, "
          f"{s['edges']} directed edges\n"
          f"  types     {types}\n"
          f"  dt        {s['dt']:.4g} s; inlet velocities {', '.join(f'{u:.4g}' for u in s['velocities'])} m/s\n"
          f"  time      mesh {s['mesh_seconds']:.1f} s, flow {s['flow_seconds']:.1f} s, "
          f"solver {s['solver_seconds_per_step']:.3f} s/step, total {s['total_seconds']:.1f} s")
    return 0


def _run_openfoam(args) -> int:
    """``--solver openfoam``: see :func:`meshgnn.generate.openfoam.run_openfoam_dataset`."""
    from ..generate.openfoam import run_openfoam_dataset

    lo, hi = args.velocity_range
    n = args.trajectories
    velocities = [lo + (hi - lo) * i / (n - 1) for i in range(n)] if n > 1 else [0.5 * (lo + hi)]
    out = run_openfoam_dataset(args.out, nodes=args.nodes, trajectories=n, steps=args.steps, velocities=velocities,
                               parallel=args.parallel, workdir=args.workdir, keep=args.keep, progress=not args.quiet)
    print(f"wrote {out}", file=sys.stderr)
    return 0
