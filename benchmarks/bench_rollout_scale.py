"""Rollout at scale (issue 7 "Scale"): a trained surrogate rolled out on a >= 3M-node tet mesh on this machine.

Phases (each its own subcommand, so each gets a fresh process and its own peak RSS):

``dataset``  a column-layout dataset (fields co2, loading: state; velocity: static; node types of the packed column)
             on ``meshgnn.meshes.box_tets(side)`` (side 145 = 3,048,625 nodes, 42.2M directed edges). The built-in
             generator's gmsh + FEM path at 3M nodes takes > 1 h on the loaded 2-core box (its 1M run took 25 min,
             RESULTS "Generator"); the surrogate's cost depends only on node/edge counts, not on the values, so the
             surrogate timing uses this mesh. Inlet z=0 (prescribed), outlet z=1, walls on the sides; uniform plug
             flow (the exact potential flow of a box), co2 decaying along z, loading 0.
``rollout``  runs ``meshgnn rollout`` in a child under ``/usr/bin/time -v`` and prints seconds per step (model),
             wall time, output write time (wall - model - setup, from the child's own timings) and peak RSS.

The solver time per recorded frame is taken from the generator's provenance (``solver_seconds_per_step``) of a
dataset generated on this machine: measured for the sizes that fit in the session, extrapolated to 3M (labelled).

    .venv/bin/python benchmarks/bench_rollout_scale.py dataset /tmp/scale/box3m.h5 --side 145
    .venv/bin/python benchmarks/bench_rollout_scale.py rollout CKPT DATASET --steps 20 --every 10 [--parts P.h5]
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_dataset(out: Path, side: int, steps: int = 2, velocity: float = 0.1) -> dict:
    """Write a column-layout dataset on ``box_tets(side)``; returns sizes and seconds."""
    from meshgnn.generate.column import FIELDS
    from meshgnn.graph import edges_from_cells
    from meshgnn.io.dataset import NODE_TYPES, DatasetWriter
    from meshgnn.meshes import box_tets

    t0 = time.perf_counter()
    points, tets = box_tets(side)
    n = points.shape[0]
    t_mesh = time.perf_counter() - t0
    edges = edges_from_cells({"tetra": tets}, n)
    t_edges = time.perf_counter() - t0 - t_mesh
    x, y, z = points.T
    code = {name: i for i, name in enumerate(NODE_TYPES)}
    node_type = np.full(n, code["interior"], np.int8)
    side_wall = (x <= 0) | (x >= 1) | (y <= 0) | (y >= 1)
    node_type[side_wall] = code["wall"]
    node_type[z >= 1] = code["outlet"]
    node_type[z <= 0] = code["inlet"]
    vel = np.zeros((n, 3), np.float32)
    vel[:, 2] = velocity
    with DatasetWriter(out, points, {"tetra": tets}, node_type, NODE_TYPES, 1.0, FIELDS, dirichlet_types=["inlet"],
                       provenance={"generator": f"benchmarks/bench_rollout_scale.py box_tets({side})"},
                       edges=edges) as w:
        w.add_trajectory(0, steps, parameters={"inlet_velocity": velocity}, static={"velocity": vel})
        for k in range(steps):
            front = 0.1 + 0.05 * k
            co2 = (4.0 * np.exp(-np.maximum(z - front, 0.0) * 20.0)).astype(np.float32)
            w.write_step(0, k, float(k), {"co2": co2[:, None], "loading": np.zeros((n, 1), np.float32)})
    return dict(nodes=n, tetra=int(tets.shape[0]), edges=int(edges.shape[1]), mesh_s=t_mesh, edges_s=t_edges,
                total_s=time.perf_counter() - t0)


def _child_rollout(args) -> None:
    """Runs inside the timed child: one rollout, its result as JSON on the last line."""
    from meshgnn.config import RolloutConfig
    from meshgnn.rollout import rollout

    t0 = time.perf_counter()
    cfg = RolloutConfig(checkpoint=args.checkpoint, dataset=args.dataset, steps=args.steps, every=args.every,
                        out=args.out, parts=args.parts or "", halo_mode=args.halo_mode, progress=True,
                        formats=args.formats, trajectory=args.trajectory, render=False)
    res = rollout(cfg)
    res["wall_s"] = time.perf_counter() - t0
    print("RESULT " + json.dumps({k: v for k, v in res.items() if k in ("steps", "seconds_per_step", "wall_s")}))


def run_rollout(args) -> dict:
    cmd = ["/usr/bin/time", "-v", sys.executable, __file__, "_child", args.checkpoint, args.dataset,
           "--steps", str(args.steps), "--every", str(args.every), "--out", args.out, "--halo-mode", args.halo_mode,
           "--trajectory", args.trajectory,
           "--formats", *args.formats]
    if args.parts:
        cmd += ["--parts", args.parts]
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    sys.stderr.write(proc.stderr[-3000:])
    if proc.returncode:
        sys.stdout.write(proc.stdout[-3000:])
        raise SystemExit(f"rollout failed (exit {proc.returncode})")
    res = json.loads(re.findall(r"^RESULT (.*)$", proc.stdout, re.M)[-1])
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    res.update(peak_rss_gib=rss_kb / 2**20, process_wall_s=wall,
               model_s=res["seconds_per_step"] * res["steps"])
    res["other_s"] = res["wall_s"] - res["model_s"]     # setup + reading + gathering + writing
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dataset")
    d.add_argument("out")
    d.add_argument("--side", type=int, default=145)
    d.add_argument("--steps", type=int, default=2)
    for name in ("rollout", "_child"):
        r = sub.add_parser(name)
        r.add_argument("checkpoint")
        r.add_argument("dataset")
        r.add_argument("--steps", type=int, default=100)
        r.add_argument("--every", type=int, default=10)
        r.add_argument("--out", default="/tmp/scale/rollout")
        r.add_argument("--parts", default="")
        r.add_argument("--halo-mode", default="lhop")
        r.add_argument("--formats", nargs="+", default=["pvd"])
        r.add_argument("--trajectory", default="0")
    args = ap.parse_args(argv)
    if args.cmd == "dataset":
        print(json.dumps(build_dataset(Path(args.out), args.side, args.steps)), flush=True)
    elif args.cmd == "_child":
        _child_rollout(args)
    else:
        res = run_rollout(args)
        print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
