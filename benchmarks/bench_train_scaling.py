"""Distributed training: step time, throughput and communication for 1 and 2 ranks, L-hop and per-layer halos.

    .venv/bin/python benchmarks/bench_train_scaling.py [--side 12] [--latent 64] [--layers 4] [--steps 4]
        [--warmup 1] [--no-append]

Self-contained: writes a structured-tet box dataset (``meshgnn.meshes.box_tets(side)``, two trajectories of
smooth synthetic fields, through ``DatasetWriter``), cuts it into 2 METIS parts twice — halo ``layers x stages``
(L-hop mode) and halo 1 (per-layer mode) — then trains with ``meshgnn.train.Trainer`` in each configuration,
all in the same run: {lhop, per-layer} x {1 rank (one process, both parts), 2 ranks (mpirun -n 2, gloo)}.

Per configuration: median step time after ``--warmup`` steps, throughput (owned nodes / s, the trainer's own
figure), bytes all-reduced per step (``Dist.bytes_allreduced / steps``: the gradient bucket plus the few scalars
of the loss normalisation and stop flag) and halo bytes per step (star forest ``bytes_exchanged / steps``,
per-layer mode only). The 2-rank runs also time an all-reduce of the gradient bucket of the paper-size model
(MGN 15 x 128, hidden 2) over gloo on this machine (median of 5).
Appends the command and table to benchmarks/RESULTS.md under "## Distributed training".
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SECTION = "## Distributed training"


def write_dataset(path: Path, side: int, steps: int = 6) -> int:
    """A box of side^3 points, 2 trajectories of 2 state fields + static velocity; returns N."""
    from meshgnn.io.dataset import NODE_TYPES, DatasetWriter, FieldSpec
    from meshgnn.meshes import box_tets

    pts, tets = box_tets(side)
    x, y, z = pts.T
    node_type = np.zeros(len(pts), np.int8)
    node_type[(x == 0) | (x == 1) | (y == 0) | (y == 1)] = NODE_TYPES.index("wall")
    node_type[z == 0] = NODE_TYPES.index("inlet")
    node_type[z == 1] = NODE_TYPES.index("outlet")
    fields = [FieldSpec("c", "state", 1, "1"), FieldSpec("q", "state", 1, "1"), FieldSpec("velocity", "static", 3, "m/s")]
    with DatasetWriter(path, pts, {"tetra": tets}, node_type, list(NODE_TYPES), 0.1, fields=fields,
                       dirichlet_types=["inlet"], provenance={"generator": "bench_train_scaling"}) as w:
        for ti in range(2):
            u = 0.5 + 0.5 * ti
            w.add_trajectory(f"t{ti}", steps, parameters={"u": u},
                             static={"velocity": np.stack([0 * x, 0 * y, u + 0 * z], 1)})
            for s in range(steps):
                t = 0.3 * s
                w.write_step(f"t{ti}", s, t, {"c": np.tanh(4 * (u * t - z))[:, None],
                                              "q": (0.5 + 0.5 * np.sin(3 * x + t) * y)[:, None]})
    return len(pts)


def write_store(dataset: Path, out: Path, halo: int) -> None:
    from meshgnn.decomposition import iter_parts, partition, write_part_store
    from meshgnn.io.dataset import Dataset

    with Dataset(dataset) as ds:
        ei, n = ds.edge_index(), ds.num_nodes
    owner = partition(ei, n, 2, method="metis", seed=0)
    write_part_store(out, iter_parts(ei, n, owner, halo), owner, edge_index=ei, method="metis", halo=halo)


# ------------------------------------------------------------------------------------------------ worker
def worker(args) -> int:
    """One configuration (run directly for 1 rank, under mpirun for 2); rank 0 prints a JSON line."""
    import torch

    from meshgnn.commands._common import make_comm
    from meshgnn.config import TrainConfig
    from meshgnn.train import Trainer

    comm = make_comm("gloo")
    cfg = TrainConfig(dataset=args.dataset, out=args.out, steps=args.warmup + args.steps, latent=args.latent,
                      layers=args.layers, parts=args.parts, halo_mode=args.mode, progress=False)
    tr = Trainer(cfg, comm)
    recs = [tr.step() for _ in range(args.warmup + args.steps)]
    timed = recs[args.warmup:]
    # bytes of one step: the counters' difference over one more step (set-up traffic excluded)
    ar0 = getattr(comm, "bytes_allreduced", 0)
    sf = getattr(tr, "sf", None)
    sf0 = sf.bytes_exchanged if sf is not None else 0
    last = tr.step()
    ar = getattr(comm, "bytes_allreduced", 0) - ar0
    halo = (sf.bytes_exchanged - sf0) if sf is not None else 0
    nparams = sum(p.numel() for p in tr.sim.model.parameters())
    probe = None
    if comm.size > 1:
        from meshgnn.model.mgn import MeshGraphNet
        big = sum(p.numel() for p in MeshGraphNet(10, 4, 2, latent=128, layers=15, hidden_layers=2).parameters())
        buf = torch.zeros(big)
        ts = []
        for _ in range(6):
            comm.barrier()
            t0 = time.perf_counter()
            comm.allreduce_(buf)
            ts.append(time.perf_counter() - t0)
        probe = dict(params=big, bytes=big * 4, seconds=statistics.median(ts[1:]))
    halos = comm.gather_object(halo)
    res = dict(mode=args.mode, ranks=comm.size, seconds=statistics.median(r["seconds"] for r in timed),
               nodes_per_s=statistics.median(r["nodes_per_s"] for r in timed), allreduce_bytes=ar,
               halo_bytes=sum(halos) if halos else 0, params=nparams, probe=probe, loss=last["loss"],
               patch_nodes=sum(len(p.nodes) for p in tr.patches))
    pn = comm.gather_object(res["patch_nodes"])
    if comm.is_root:
        res["patch_nodes"] = sum(pn)
        print("RESULT " + json.dumps(res), flush=True)
    if hasattr(comm, "finalize"):
        comm.finalize()
    return 0


# ------------------------------------------------------------------------------------------------ driver
def run_config(mode, ranks, dataset, parts, args, tmp) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, __file__, "--worker", "--dataset", str(dataset), "--parts", str(parts), "--mode", mode,
           "--out", str(tmp / f"{mode}-{ranks}"), "--latent", str(args.latent), "--layers", str(args.layers),
           "--steps", str(args.steps), "--warmup", str(args.warmup)]
    if ranks > 1:
        mpirun = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or "mpirun"
        cmd = [mpirun, "--allow-run-as-root", "--oversubscribe", "-n", str(ranks)] + cmd
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if r.returncode != 0:
        raise SystemExit(f"{mode} x {ranks} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--side", type=int, default=12, help="box_tets points per side")
    ap.add_argument("--latent", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4, help="timed steps (median)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dataset", help=argparse.SUPPRESS)
    ap.add_argument("--parts", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)

    import tempfile
    with tempfile.TemporaryDirectory(prefix="bench_scaling_") as d:
        tmp = Path(d)
        ds = tmp / "box.h5"
        n = write_dataset(ds, args.side)
        stores = {"lhop": tmp / "lhop.parts.h5", "per-layer": tmp / "pl.parts.h5"}
        write_store(ds, stores["lhop"], args.layers)           # euler: halo = layers x 1
        write_store(ds, stores["per-layer"], 1)
        res = [run_config(m, r, ds, stores[m], args, tmp) for m in ("lhop", "per-layer") for r in (1, 2)]
    lines = [f"Dataset: box_tets({args.side}) = {n:,} nodes, 2 METIS parts; model {args.layers} x {args.latent} "
             f"(hidden 2, {res[0]['params']:,} parameters = {res[0]['params'] * 4 / 2**20:.2f} MiB fp32), euler, "
             f"median of {args.steps} steps after {args.warmup} warm-up, 1 thread per rank, gloo.", "",
             "| halo mode | ranks | Σ patch nodes | step (s) | owned nodes/s | speed-up vs 1 rank | all-reduced B/step "
             "(per rank) | halo B/step (all ranks) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    base = {r["mode"]: r["seconds"] for r in res if r["ranks"] == 1}
    for r in res:
        lines.append(f"| {r['mode']} | {r['ranks']} | {r['patch_nodes']:,} | {r['seconds']:.2f} | "
                     f"{r['nodes_per_s']:,.0f} | {base[r['mode']] / r['seconds']:.2f}x | {r['allreduce_bytes']:,} | "
                     f"{r['halo_bytes']:,} |")
    pr = next(r["probe"] for r in res if r["probe"])
    lines += ["", f"All-reduce of the MGN 15 x 128 gradient bucket ({pr['params']:,} parameters, "
                  f"{pr['bytes'] / 2**20:.1f} MiB fp32), 2 ranks, gloo over loopback on this box: "
                  f"{pr['seconds'] * 1e3:.1f} ms (median of 5)."]
    print("\n".join(lines))
    if not args.no_append:
        path = ROOT / "benchmarks" / "RESULTS.md"
        cmd = ".venv/bin/python benchmarks/bench_train_scaling.py " + " ".join(map(shlex.quote, argv or sys.argv[1:]))
        load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        block = [f"`{cmd.strip()}` ({datetime.now():%Y-%m-%d %H:%M}; `uptime`: {load})", ""] + lines + [""]
        text = path.read_text()
        if SECTION not in text:
            path.write_text(text.rstrip("\n") + f"\n\n{SECTION}\n\n" + "\n".join(block) + "\n")
        else:
            head, rest = text.split(SECTION, 1)
            nxt = rest.find("\n## ")
            body, tail = (rest, "") if nxt < 0 else (rest[:nxt], rest[nxt:])
            path.write_text(head + SECTION + body.rstrip("\n") + "\n\n" + "\n".join(block) + tail)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
