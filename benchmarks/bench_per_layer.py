"""Per-layer (1-hop) vs L-hop halos vs the whole graph, MeshGraphNet 15 x 128 on a ~1M-node tet mesh.

    .venv/bin/python benchmarks/bench_per_layer.py [--side 100] [--parts 8 64] [--layers 15] [--latent 128]
        [--probe-sides 9 12] [--ranks 2] [--no-append]

What is measured, what is modelled (the labels are printed with every figure):

* Mesh: ``meshgnn.meshes.box_tets(side)`` (side 100: 1,000,000 nodes, ~13.8M directed edges), METIS into each
  ``--parts`` count. For each: the patches with a 1-hop halo (per-layer mode) and with an ``L·s``-hop halo
  (L-hop mode, s = integrator stages), built by ``decomposition.iter_parts``: **nodes and edges processed per
  step** (Σ over patches) are counted exactly.
* **Bytes exchanged per step** (per-layer mode): every forward layer of every stage broadcasts the node latents
  (H float32) of each ghost row whose owner lives on another rank, and backward reduces the same rows; this is
  what the star forest's ``bytes_exchanged`` counter adds up (``meshgnn.halo``). Counted from the parts for
  R = ``--ranks`` (parts balanced over ranks as the trainer does, ``assign_parts``) and for one part per rank
  (R = P); checked against the counter measured by benchmarks/bench_halo.py on the same mesh (see RESULTS.md).
  L-hop mode exchanges nothing inside a step.
* **Compute**: a full 15 x 128 forward+backward over 1M nodes takes hours on this shared 2-core box, so the
  step is measured for real (forward + backward of ``MeshGraphNet``, median of ``--repeats``) on small whole
  boxes (``--probe-sides``), which fixes this machine's FLOP rate; every configuration's step time is then its
  exact FLOP count (from the model's layer shapes and the counted nodes/edges) divided by that rate —
  **extrapolated**. The two probe sizes check that the FLOP model predicts the measured time ratio.
* **Memory**: activations saved for backward, measured on the probe with ``saved_tensors_hooks`` and split into
  bytes per edge and per node (tensors with E rows vs N rows), then extrapolated to each configuration —
  an **analytic estimate**, not a measured RSS. Per-layer mode holds all of a rank's patches at once (one
  union graph); L-hop mode runs its patches one after another (peak = largest patch).

Target (issue 10): patch-training compute overhead <= 1.3x the whole graph's with per-layer exchange.
Appends the command and the tables to benchmarks/RESULTS.md under "## Per-layer vs L-hop halos".
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SECTION = "## Per-layer vs L-hop halos"
NODE_IN, EDGE_IN, NODE_OUT = 10, 4, 2          # 2 state + 3 static + 5 node types; (dx, dy, dz, |d|); 2 rates


# ------------------------------------------------------------------------------------------------ FLOP model
def mlp_macs(n_in: int, latent: int, n_out: int, hidden: int) -> int:
    """Multiply-adds per row of ``meshgnn.model.mgn.mlp``: hidden Linear(width latent) layers, then to n_out."""
    return n_in * latent + (hidden - 1) * latent * latent + latent * n_out


def step_flops(n: int, e: int, latent: int, layers: int, hidden: int, stages: int = 1) -> float:
    """Forward + backward FLOPs of one training step of MeshGraphNet on a graph of n nodes, e directed edges.

    Per stage: node encoder (n rows), L processor blocks, decoder; edge encoder once per step. A block, with
    the concat trick of ``GraphNetBlock``: node projections W_s x, W_r x (2 H^2 per node), the edge part of the
    first edge-MLP layer (H^2 per edge), the rest of the edge MLP (hidden H^2 per edge), the node MLP
    ((hidden + 2) H^2 per node: input [x, Σ e]). Elementwise ops (gather-add, ReLU, LayerNorm, segment sum)
    are O((n + e) H) and left out. Backward = 2 x forward (grad wrt inputs and weights).
    """
    H = latent
    block = n * (2 * H * H + (hidden + 2) * H * H) + e * (H * H + hidden * H * H)
    per_stage = n * mlp_macs(NODE_IN, H, H, hidden) + layers * block + n * mlp_macs(H, H, NODE_OUT, hidden)
    macs = stages * per_stage + e * mlp_macs(EDGE_IN, H, H, hidden)
    return 3 * 2 * float(macs)


# ------------------------------------------------------------------------------------------------ the probe
def probe(side: int, args) -> dict:
    """Real forward+backward of MeshGraphNet on box_tets(side): median seconds, saved bytes per edge/node."""
    from meshgnn.graph import Graph, edges_from_cells
    from meshgnn.meshes import box_tets
    from meshgnn.model.mgn import MeshGraphNet

    pts, tets = box_tets(side)
    n = len(pts)
    ei = edges_from_cells({"tetra": tets}, n)
    e = ei.shape[1]
    g = Graph.from_edge_index(ei, n)
    torch.manual_seed(0)
    model = MeshGraphNet(NODE_IN, EDGE_IN, NODE_OUT, latent=args.latent, layers=args.layers,
                         hidden_layers=args.hidden_layers)
    x, ef = torch.randn(n, NODE_IN), torch.randn(e, EDGE_IN)
    params = {p.data_ptr() for p in model.parameters()}
    seen, by_rows = set(), {"edge": 0, "node": 0, "other": 0}

    def pack(t):
        key = (t.data_ptr(), t.numel())
        if t.data_ptr() not in params and key not in seen and t.numel():
            seen.add(key)
            kind = "edge" if t.shape and t.shape[0] == e else ("node" if t.shape and t.shape[0] == n else "other")
            by_rows[kind] += t.numel() * t.element_size()
        return t

    times = []
    for r in range(args.repeats + 1):
        model.zero_grad()
        t0 = time.perf_counter()
        if r == 0:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = model(x, g, edge_features=ef)
        else:
            out = model(x, g, edge_features=ef)
        out.square().sum().backward()
        if r:                                        # the first call is the warm-up (and the memory count)
            times.append(time.perf_counter() - t0)
    flops = step_flops(n, e, args.latent, args.layers, args.hidden_layers)
    sec = statistics.median(times)
    return dict(side=side, n=n, e=e, seconds=sec, flops=flops, gflops_s=flops / sec / 1e9,
                bytes_edge=by_rows["edge"] / e, bytes_node=by_rows["node"] / n, other=by_rows["other"])


# ------------------------------------------------------------------------------------------------ the mesh
def decompose(ei, n, owner, halo, ranks_of_part):
    """Σ nodes/edges over patches, the largest patch, ghost rows (hop 1) and the remote ones per assignment."""
    from meshgnn.decomposition import iter_parts

    tot_n = tot_e = max_n = max_e = 0
    ghosts = 0
    remote = {k: 0 for k in ranks_of_part}
    for part in iter_parts(ei, n, owner, halo):
        tot_n += part.num_nodes
        tot_e += part.num_edges
        max_n, max_e = max(max_n, part.num_nodes), max(max_e, part.num_edges)
        g_owner = np.asarray(part.owner_of)[part.n_core:][np.asarray(part.hop)[part.n_core:] == 1]
        ghosts += g_owner.size
        for k, rop in ranks_of_part.items():
            remote[k] += int(np.sum(rop[g_owner] != rop[part.part_id]))
    return dict(nodes=tot_n, edges=tot_e, max_nodes=max_n, max_edges=max_e, ghosts=ghosts, remote=remote)


def assignment(owner, nparts, ranks) -> np.ndarray:
    """Rank of each part as the trainer assigns them (owned-node balance)."""
    from meshgnn.train import assign_parts

    counts = np.bincount(owner, minlength=nparts).tolist()
    rop = np.zeros(nparts, np.int64)
    for r, ps in enumerate(assign_parts(counts, ranks)):
        rop[ps] = r
    return rop


def fmt_bytes(b: float) -> str:
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.1f} MiB"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--side", type=int, default=100, help="box_tets points per side (100 -> 1M nodes)")
    ap.add_argument("--parts", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--layers", type=int, default=15)
    ap.add_argument("--latent", type=int, default=128)
    ap.add_argument("--hidden-layers", type=int, default=2)
    ap.add_argument("--integrator", default="euler")
    ap.add_argument("--ranks", type=int, default=2, help="ranks for the bytes-per-step count (besides R = P)")
    ap.add_argument("--probe-sides", type=int, nargs="+", default=[9, 12])
    ap.add_argument("--repeats", type=int, default=2, help="timed probe steps (after one warm-up)")
    ap.add_argument("--no-append", action="store_true", help="print only; do not append to RESULTS.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    from meshgnn.integrators import get_method
    from meshgnn.decomposition import partition
    from meshgnn.graph import edges_from_cells
    from meshgnn.meshes import box_tets

    stages = get_method(args.integrator).stages
    lhop = args.layers * stages
    H, L = args.latent, args.layers
    lines = []

    def out(s=""):
        print(s, flush=True)
        lines.append(s)

    # ---- real compute on the probes
    probes = [probe(s, args) for s in args.probe_sides]
    rate = probes[-1]["gflops_s"] * 1e9                     # the larger probe sets the rate
    b_edge, b_node = probes[-1]["bytes_edge"] * stages, probes[-1]["bytes_node"] * stages
    out(f"Probe (measured): MeshGraphNet {L} x {H} (hidden {args.hidden_layers}), forward + backward, "
        f"median of {args.repeats} after a warm-up, {torch.get_num_threads()} thread(s):")
    out("")
    out("| probe | nodes | edges | step (s) | model GFLOP | GFLOP/s | saved B/edge | saved B/node |")
    out("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for p in probes:
        out(f"| box_tets({p['side']}) | {p['n']:,} | {p['e']:,} | {p['seconds']:.2f} | {p['flops'] / 1e9:.1f} | "
            f"{p['gflops_s']:.2f} | {p['bytes_edge']:.0f} | {p['bytes_node']:.0f} |")
    if len(probes) > 1:
        a, b = probes[0], probes[-1]
        out("")
        out(f"FLOP-model check: measured time ratio {b['seconds'] / a['seconds']:.2f} vs FLOP ratio "
            f"{b['flops'] / a['flops']:.2f} between the probes.")

    # ---- the big mesh: exact counts
    t0 = time.perf_counter()
    pts, tets = box_tets(args.side)
    n = len(pts)
    ei = edges_from_cells({"tetra": tets}, n)
    del tets, pts
    E = int(ei.shape[1])
    whole_flops = step_flops(n, E, H, L, args.hidden_layers, stages)
    out("")
    out(f"Mesh: box_tets({args.side}) = {n:,} nodes, {E:,} directed edges (built in "
        f"{time.perf_counter() - t0:.0f} s); model {L} x {H}, integrator {args.integrator} ({stages} stage(s)): "
        f"L-hop halo = {lhop}, per-layer halo = 1.")
    rows = [("whole graph", 1, n, E, n, E, 0, 0, 0)]
    for P in args.parts:
        t1 = time.perf_counter()
        owner = partition(ei, n, P, method="metis", seed=0).astype(np.int64)
        assign = {"R": assignment(owner, P, args.ranks), "P": np.arange(P)}
        one = decompose(ei, n, owner, 1, assign)
        deep = decompose(ei, n, owner, lhop, assign)
        out(f"- P = {P}: METIS + halos {time.perf_counter() - t1:.0f} s; ghost rows (1 hop) {one['ghosts']:,}, "
            f"remote with R = {args.ranks}: {one['remote']['R']:,}, with R = P: {one['remote']['P']:,}")
        rows.append((f"per-layer, P = {P}", P, one["nodes"], one["edges"], one["max_nodes"], one["max_edges"],
                     one["remote"]["R"], one["remote"]["P"], 1))
        rows.append((f"L-hop ({lhop}), P = {P}", P, deep["nodes"], deep["edges"], deep["max_nodes"],
                     deep["max_edges"], 0, 0, 0))

    exch = 2 * stages * L * H * 4                          # bytes per remote ghost row per step (fwd + bwd)
    out("")
    out(f"| mode | Σ patch nodes / step | Σ patch edges | compute vs whole (FLOPs) | step time, 1 process "
        f"(extrapolated) | largest patch step (R = P, extrapolated) | activations (estimate) | "
        f"bytes exchanged / step, R = {args.ranks} | R = P |")
    out("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    results = {}
    for name, P, sn, se, mn, me, rem_r, rem_p, per_layer in rows:
        f_all = step_flops(sn, se, H, L, args.hidden_layers, stages)
        f_max = step_flops(mn, me, H, L, args.hidden_layers, stages)
        act_all = b_edge * se + b_node * sn
        act_max = b_edge * me + b_node * mn
        act = act_all if (per_layer or P == 1) else act_max   # per-layer: all patches at once; L-hop: one by one
        results[name] = f_all / whole_flops
        out(f"| {name} | {sn:,} ({sn / n:.2f} N) | {se:,} ({se / E:.2f} E) | **{f_all / whole_flops:.2f}x** | "
            f"{f_all / rate / 60:.0f} min | {f_max / rate:.0f} s | {fmt_bytes(act)}"
            f"{'' if (per_layer or P == 1) else ' (per patch)'} | "
            f"{fmt_bytes(rem_r * exch) if per_layer else '0'} | {fmt_bytes(rem_p * exch) if per_layer else '0'} |")
    out("")
    out(f"Rate used for the extrapolation: {rate / 1e9:.2f} GFLOP/s (box_tets({probes[-1]['side']}) probe on this "
        f"loaded box); activations {b_edge:.0f} B/edge + {b_node:.0f} B/node per step (saved tensors, probe).")
    for P in args.parts:
        r = results[f"per-layer, P = {P}"]
        out(f"- P = {P}: per-layer compute overhead {r:.2f}x the whole graph "
            f"({'meets' if r <= 1.3 else 'misses'} the <= 1.3x target); L-hop {results[f'L-hop ({lhop}), P = {P}']:.2f}x.")

    if not args.no_append:
        append_results(args, argv, lines)
    return 0


def append_results(args, argv, lines) -> None:
    path = ROOT / "benchmarks" / "RESULTS.md"
    cmd = ".venv/bin/python benchmarks/bench_per_layer.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    block = [f"`{cmd.strip()}` ({datetime.now():%Y-%m-%d %H:%M}; `uptime`: {load})", ""] + lines + [""]
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if SECTION not in text:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n"
        path.write_text(text + "\n".join(block) + "\n")
        return
    # insert at the end of our section (before the next "## " heading)
    head, rest = text.split(SECTION, 1)
    nxt = rest.find("\n## ")
    body, tail = (rest, "") if nxt < 0 else (rest[:nxt], rest[nxt:])
    path.write_text(head + SECTION + body.rstrip("\n") + "\n\n" + "\n".join(block) + tail)


if __name__ == "__main__":
    raise SystemExit(main())
