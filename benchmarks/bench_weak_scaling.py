"""Weak scaling on this machine: 1, 2, 4, 8 ranks under mpirun, the mesh growing with the ranks.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_weak_scaling.py [--ranks 1 2 4 8] [--nx 16] [--nz 24]
        [--layers 4] [--latent 32] [--steps 4] [--no-append]

Mesh: ``meshgnn.meshes.box_tets(nx, nx, nz * R)`` for R ranks — a box that grows along z, so every rank owns
about ``nx * nx * nz`` nodes (a METIS slab with two neighbours, the interior ranks' case of a large mesh). Two
trajectories of smooth synthetic fields through ``DatasetWriter``; R METIS parts (one per rank) with halo
``layers`` (L-hop mode, forward Euler) or 1 (per-layer mode).

Per R, one ``mpirun -n R`` job (oversubscribed, 1 thread per rank, gloo) runs, for L-hop then per-layer mode,
* training: ``meshgnn.train.Trainer`` steps (median of ``--steps`` after one warm-up), then rank 0 saves the
  checkpoint the rollout uses;
* then, in a fresh peak-RSS window (``/proc/self/clear_refs``), the rollout: ``meshgnn.rollout.rollout`` (the
  command's own path: per-rank ``.vtu`` pieces, ``.pvtu``/``.pvd`` on rank 0, RMSE from reduced partial sums),
  ``--steps`` steps.
Each reports per rank: peak RSS (``VmHWM`` of its window, which starts at the RSS the process already holds:
imports, MPI/gloo, and for per-layer mode what the allocator kept from the L-hop phase), bytes sent to other ranks per step (training: star-forest halo
traffic + all-reduces; rollout: halo refresh + piece boundaries + metric reductions) and the step time.
Appends the command and tables to benchmarks/RESULTS.md under "## Weak scaling".
"""
from __future__ import annotations

import argparse
import json
import os
import resource
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
SECTION = "## Weak scaling"


def make_case(folder: Path, nx: int, nz: int, layers: int) -> dict:
    """Dataset ``box.h5`` of box_tets(nx, nx, nz) and its two part stores (L-hop, per-layer); returns sizes."""
    from meshgnn.decomposition import iter_parts, partition, write_part_store
    from meshgnn.io.dataset import NODE_TYPES, Dataset, DatasetWriter, FieldSpec
    from meshgnn.meshes import box_tets

    ranks = int(folder.name.split("_")[-1])
    pts, tets = box_tets(nx, nx, nz, size=(1.0, 1.0, nz / nx))
    x, y, z = pts.T
    types = np.where((x == 0) | (x == 1) | (y == 0) | (y == 1), NODE_TYPES.index("wall"), 0).astype(np.int8)
    types[z == 0] = NODE_TYPES.index("inlet")
    spec = [FieldSpec("c", "state", 1, "1"), FieldSpec("q", "state", 1, "1"), FieldSpec("velocity", "static", 3, "m/s")]
    path = folder / "box.h5"
    with DatasetWriter(path, pts, {"tetra": tets}, types, list(NODE_TYPES), 0.1, fields=spec,
                       dirichlet_types=["inlet"], provenance={"generator": "bench_weak_scaling"}) as w:
        for k, speed in enumerate((0.5, 1.0)):
            vel = np.zeros_like(pts)
            vel[:, 2] = speed
            w.add_trajectory(f"t{k}", 6, parameters={"u": speed}, static={"velocity": vel})
            for s in range(6):
                front = speed * 0.3 * s - z
                w.write_step(f"t{k}", s, 0.3 * s, {"c": np.tanh(4 * front)[:, None],
                                                    "q": (0.5 + 0.5 * np.cos(2 * x - 0.3 * s) * y)[:, None]})
    with Dataset(path) as ds:
        ei = ds.edge_index()
    owner = partition(ei, len(pts), ranks, method="metis", seed=0) if ranks > 1 else np.zeros(len(pts), np.int64)
    for mode, halo in (("lhop", layers), ("per-layer", 1)):
        write_part_store(folder / f"{mode}.parts.h5", iter_parts(ei, len(pts), owner, halo), owner, edge_index=ei,
                         method="metis", halo=halo)
    return dict(nodes=len(pts), edges=int(ei.shape[1]))


# ------------------------------------------------------------------------------------------------ workers
def peak_rss_mib() -> float:
    """This process's peak RSS since the last :func:`reset_peak` (``VmHWM``; ``ru_maxrss`` where unreadable)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) / 1024.0
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak() -> None:
    """Start a new peak-RSS window (Linux: writing 5 to /proc/self/clear_refs resets VmHWM to the current RSS)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def train_worker(args, comm) -> dict:
    from meshgnn import checkpoint
    from meshgnn.config import TrainConfig
    from meshgnn.train import Trainer

    cfg = TrainConfig(dataset=args.dataset, out=args.out, steps=args.steps + 1, latent=args.latent, layers=args.layers,
                      hidden_layers=1, parts=args.parts, halo_mode=args.mode, progress=False)
    tr = Trainer(cfg, comm)
    tr.step()                                                     # warm-up
    sent0 = tr.domain.bytes_exchanged + comm.bytes_allreduced
    secs = [tr.step()["seconds"] for _ in range(args.steps)]
    sent = (tr.domain.bytes_exchanged + comm.bytes_allreduced - sent0) / args.steps
    if comm.is_root:
        checkpoint.save(Path(args.out) / "checkpoint.pt", tr, comm)
    comm.barrier()
    return dict(seconds=statistics.median(secs), sent=sent, owned=tr.domain.num_owned(),
                rows=sum(p.num_nodes for p in tr.patches))


def rollout_worker(args, comm) -> dict:
    from meshgnn.config import RolloutConfig
    from meshgnn.rollout import rollout

    t0 = time.perf_counter()
    before = comm.bytes_allreduced
    res = rollout(RolloutConfig(checkpoint=str(Path(args.out) / "checkpoint.pt"), dataset=args.dataset,
                                parts=args.parts, halo_mode=args.mode, out=str(Path(args.out) / "rollout"),
                                steps=args.steps, trajectory="t1", render=False, progress=False), comm)
    wall = time.perf_counter() - t0
    return dict(seconds=res["seconds_per_step"], wall_per_step=wall / args.steps,
                sent=(res["bytes_sent"] - before) / args.steps)


def worker(args) -> int:
    """Per halo mode: training, then the rollout of the checkpoint it saved, each in its own peak-RSS window;
    rank 0 prints ``{mode: [(train, rollout) per rank]}``."""
    import gc

    from meshgnn.distributed import init_distributed

    comm = init_distributed(backend="gloo")
    out = {}
    for mode in ("lhop", "per-layer"):
        args.mode, args.parts = mode, str(Path(args.folder) / f"{mode}.parts.h5")
        args.out = str(Path(args.folder) / mode)
        gc.collect()
        reset_peak()
        train = train_worker(args, comm)
        train["peak_rss_mib"] = peak_rss_mib()
        gc.collect()
        reset_peak()
        roll = rollout_worker(args, comm)
        roll.update(peak_rss_mib=peak_rss_mib(), owned=train["owned"])
        out[mode] = comm.gather_object((train, roll))
    if comm.is_root:
        print("RESULT " + json.dumps(out), flush=True)
    comm.finalize()
    return 0


# ------------------------------------------------------------------------------------------------ driver
def run(ranks, folder, args) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", PYTHONUNBUFFERED="1")
    mpirun = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or "mpirun"
    cmd = [mpirun, "--allow-run-as-root", "--oversubscribe", "-n", str(ranks), sys.executable, __file__, "--worker",
           "--dataset", str(folder / "box.h5"), "--folder", str(folder), "--latent", str(args.latent), "--layers", str(args.layers),
           "--steps", str(args.steps)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if r.returncode != 0:
        raise SystemExit(f"{ranks} ranks failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")][-1][len("RESULT "):])


def table(rows: list[dict], phase: str) -> list[str]:
    out = [f"**{phase}**", "",
           "| halo mode | ranks | nodes | owned / rank | rank-0 peak RSS (MiB) | max peak RSS (MiB) | rank-0 RSS vs "
           "1 rank | sent / rank / step (KiB, mean; max) | step (s, median; slowest rank) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    base = {r["mode"]: r["per_rank"][0]["peak_rss_mib"] for r in rows if r["ranks"] == 1}
    for r in rows:
        pr = r["per_rank"]
        sent = [p["sent"] / 1024 for p in pr]
        secs = [p["seconds"] for p in pr]
        owned = f"{int(np.mean([p['owned'] for p in pr])):,}" if "owned" in pr[0] else "-"
        out.append(f"| {r['mode']} | {r['ranks']} | {r['nodes']:,} | {owned} | {pr[0]['peak_rss_mib']:.0f} | "
                   f"{max(p['peak_rss_mib'] for p in pr):.0f} | {pr[0]['peak_rss_mib'] / base[r['mode']]:.2f}x | "
                   f"{np.mean(sent):,.1f}; {max(sent):,.1f} | {max(secs):.3f} |")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--nx", type=int, default=16, help="points across the box (x and y)")
    ap.add_argument("--nz", type=int, default=24, help="points along z per rank")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--latent", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4, help="timed steps")
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--dataset", "--folder"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)

    import tempfile
    t_all = time.perf_counter()
    results = {"training step": [], "rollout step": []}
    with tempfile.TemporaryDirectory(prefix="bench_weak_") as d:
        for ranks in args.ranks:
            folder = Path(d) / f"case_{ranks}"
            folder.mkdir()
            size = make_case(folder, args.nx, args.nz * ranks, args.layers)
            by_mode = run(ranks, folder, args)
            for mode, recs in by_mode.items():
                for key, j in (("training step", 0), ("rollout step", 1)):
                    per_rank = [r[j] for r in recs]
                    results[key].append(dict(mode=mode, ranks=ranks, nodes=size["nodes"], per_rank=per_rank))
                    print(f"{key} {mode} x {ranks}: {json.dumps(per_rank[0])}", flush=True)
    lines = [f"Mesh: box_tets({args.nx}, {args.nx}, {args.nz} x R), METIS into R parts (one per rank); model "
             f"{args.layers} x {args.latent} (hidden 1), euler; L-hop halo {args.layers}, per-layer halo 1; median of "
             f"{args.steps} steps; mpirun oversubscribed, 1 thread per rank, gloo; whole run "
             f"{time.perf_counter() - t_all:.0f} s.", ""]
    for key in ("training step", "rollout step"):
        lines += table(sorted(results[key], key=lambda r: (r["mode"], r["ranks"])), key) + [""]
    lines.append(json.dumps({k: [dict(mode=r["mode"], ranks=r["ranks"], per_rank=r["per_rank"]) for r in v]
                             for k, v in results.items()}))
    print("\n".join(lines))
    if not args.no_append:
        append(argv, lines)
    return 0


def append(argv, lines) -> None:
    path = ROOT / "benchmarks" / "RESULTS.md"
    cmd = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_weak_scaling.py " + " ".join(
        map(shlex.quote, argv or sys.argv[1:]))
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if ln.startswith("Model name")), "?")
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    block = [f"`{cmd.strip()}` ({datetime.now():%Y-%m-%d %H:%M}; CPU {model}; `uptime`: {load})", ""] + lines[:-1] + [
        "<details><summary>raw per-rank records</summary>", "", "```", lines[-1], "```", "</details>", ""]
    text = path.read_text()
    path.write_text(text.rstrip("\n") + f"\n\n{SECTION}\n\n" + "\n".join(block) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
