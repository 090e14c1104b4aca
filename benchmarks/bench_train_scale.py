"""Training step at scale (issue 4 "Scale"): MGN 15 x 128 over all patches of a >= 3M-node mesh, on this machine.

A full step (all 64 patches) is far beyond the session on 2 loaded cores, so this benchmark
  1. MEASURES a real forward + backward + Adam step of MeshGraphNet(15 x 128, activation checkpointing per layer,
     optional bf16 autocast) on one patch (or a BFS ball cut from it, ``--ball-nodes``) of a METIS part store of the
     ``box_tets(145)`` mesh (3,048,625 nodes, 42.2M directed edges; store from ``bench_partition.py``), with the
     per-layer halo mode's 1-hop halo, in a fresh process: seconds per phase and peak RSS;
  2. COUNTS the FLOPs of the measured graph, of every 1-hop patch (per-layer mode) and every 15-hop patch (L-hop
     mode) from the store (nodes/edges per patch), and EXTRAPOLATES the full step time by the FLOP ratio, and the
     activation memory by the saved-tensor bytes (checkpointing saves each block's inputs x (N,H), e (E,H)).

FLOPs (multiply-add = 2) of one MGN forward per graph with N nodes, E edges, latent H, 2 hidden layers:
  encoders ~ N (2 in H + 4 H^2) + E (2 in_e H + 4 H^2); per processor block: edge MLP with the concat trick
  (node projections 2 x 2 H^2 per node, edge 3 x 2 H^2 per edge), node MLP (2 (2H) H + 4 H^2 per node);
  decoder 4 H^2 + 2 H out per node. Training with checkpointed blocks = forward + recompute + backward (2x) = 4x.

    .venv/bin/python benchmarks/bench_train_scale.py --store /tmp/dec/bench/box145.P64.parts.h5 --part 0
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NODE_IN, EDGE_IN, NODE_OUT = 10, 4, 2      # column dataset: 2 state + 3 velocity + 5 node-type one-hot; rel. pos + |d|


def mgn_forward_flops(n: int, e: int, H: int = 128, L: int = 15) -> float:
    """Forward FLOPs of MeshGraphNet(L x H, 2 hidden layers, concat trick) on n nodes, e edges."""
    enc = n * (2 * NODE_IN * H + 4 * H * H) + e * (2 * EDGE_IN * H + 4 * H * H)
    block = n * (4 * H * H + 4 * H * H + 4 * H * H) + e * (6 * H * H)   # node proj., node MLP, edge MLP
    dec = n * (4 * H * H + 2 * H * NODE_OUT)
    return float(enc + L * block + dec)


def sub_patch(part, hops: int):
    """Nodes with hop <= ``hops`` (a prefix: the part is ordered core first, then by hop) and their induced edges."""
    n = int(np.searchsorted(part.hop, hops, side="right")) if np.all(np.diff(part.hop) >= 0) else None
    if n is None:
        raise SystemExit("part nodes are not ordered by hop")
    ei = part.edge_index
    keep = (ei[0] < n) & (ei[1] < n)
    return n, ei[:, keep]


def bfs_ball(n: int, ei: np.ndarray, target: int, seed_node: int = 0):
    """A BFS ball of >= ``target`` nodes around ``seed_node`` in the graph (n, ei); returns (n_ball, ei_ball)."""
    import scipy.sparse as sp

    A = sp.csr_matrix((np.ones(ei.shape[1], np.int8), (ei[1], ei[0])), shape=(n, n))
    inside = np.zeros(n, bool)
    inside[seed_node] = True
    frontier = np.array([seed_node])
    while inside.sum() < target and frontier.size:
        nb = np.unique(A[frontier].indices)
        frontier = nb[~inside[nb]]
        inside[frontier] = True
    ids = np.flatnonzero(inside)
    new = -np.ones(n, np.int64)
    new[ids] = np.arange(ids.size)
    keep = inside[ei[0]] & inside[ei[1]]
    sub = new[ei[:, keep]]
    order = np.lexsort((sub[0], sub[1]))
    return ids.size, sub[:, order]


def measure_step(n: int, ei: np.ndarray, n_loss: int, bf16: bool, repeats: int, H: int = 128, L: int = 15) -> dict:
    """Forward + backward + Adam on graph (n, ei) with checkpointed blocks; median seconds per phase."""
    import torch

    from meshgnn.graph import Graph
    from meshgnn.model.mgn import MeshGraphNet

    torch.manual_seed(0)
    g = Graph.from_edge_index(ei, n)
    model = MeshGraphNet(NODE_IN, EDGE_IN, NODE_OUT, latent=H, layers=L, checkpoint_layers=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(n, NODE_IN)
    ef = torch.randn(ei.shape[1], EDGE_IN)
    target = torch.randn(n_loss, NODE_OUT)
    phases = {"forward_s": [], "backward_s": [], "optimizer_s": [], "step_s": []}
    for _ in range(repeats):
        opt.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x, g, edge_features=ef)
        loss = ((out[:n_loss].float() - target) ** 2).sum() / n_loss
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        for k, v in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
            phases[k].append(v)
    res = {k: float(np.median(v)) for k, v in phases.items()}
    res["all_step_s"] = phases["step_s"]
    res["params"] = sum(p.numel() for p in model.parameters())
    return res


def store_patch_sizes(store) -> dict:
    """Nodes and edges of every patch with a 1-hop halo and with the store's full (L-hop) halo."""
    n1, e1, nh, eh, core = [], [], [], [], []
    for p in range(store.num_parts):
        part = store.read(p)
        n, ei = sub_patch(part, 1)
        n1.append(n)
        e1.append(ei.shape[1])
        nh.append(part.nodes.size)
        eh.append(part.edge_index.shape[1])
        core.append(part.n_core)
    return dict(core=core, n1=n1, e1=e1, nh=nh, eh=eh)


def _sizes(store, path: str) -> dict:
    """Patch sizes of every part, cached in the JSON file ``path`` (if given)."""
    if path and Path(path).exists():
        return json.loads(Path(path).read_text())
    sizes = store_patch_sizes(store)
    if path:
        Path(path).write_text(json.dumps(sizes))
    return sizes


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="/tmp/dec/bench/box145.P64.parts.h5")
    ap.add_argument("--part", type=int, default=0)
    ap.add_argument("--ball-nodes", type=int, default=0, help="measure on a BFS ball of this many nodes cut from "
                    "the 1-hop patch (0: the whole patch)")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--sizes", default="", help="JSON file to cache/reuse all patch sizes (reads every part)")
    ap.add_argument("--lhop", action="store_true",
                    help="measure the part's patch with the store's full halo (the L-hop mode, where patches run "
                         "one after the other and a full step's peak memory is its largest patch's) instead of "
                         "the per-layer mode's 1-hop patch")
    ap.add_argument("--largest", action="store_true", help="measure the part with the most patch edges (needs the "
                    "sizes of all parts; overrides --part)")
    args = ap.parse_args(argv)

    import torch

    from meshgnn.decomposition import PartStore

    store = PartStore(args.store)
    sizes = None
    if args.largest:
        sizes = _sizes(store, args.sizes)
        key = "eh" if args.lhop else "e1"
        args.part = int(np.argmax(sizes[key]))
    part = store.read(args.part)
    n1, ei1 = sub_patch(part, 1)
    res = dict(store=args.store, parts=store.num_parts, store_halo=store.halo, N=store.num_nodes, E=store.num_edges,
               part=args.part, patch_core=int(part.n_core), patch1_nodes=n1, patch1_edges=int(ei1.shape[1]),
               torch_threads=torch.get_num_threads(), bf16=args.bf16)
    res["mode"] = "lhop" if args.lhop else "per-layer 1-hop"
    if args.lhop:       # core nodes come first in a part's local order; the loss is over them
        n, ei, n_loss = int(part.nodes.size), np.asarray(part.edge_index), int(part.n_core)
    elif args.ball_nodes:
        n, ei = bfs_ball(n1, ei1, args.ball_nodes)
        n_loss = n
    else:
        n, ei, n_loss = n1, ei1, int(part.n_core)
    del part
    res.update(measured_nodes=n, measured_edges=int(ei.shape[1]))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    res.update(measure_step(n, ei, n_loss, args.bf16, args.repeats))
    res["rss_before_model_gib"] = rss0
    res["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    f_meas = 4 * mgn_forward_flops(n, ei.shape[1])
    res["measured_flops"] = f_meas
    res["measured_gflops_per_s"] = f_meas / res["step_s"] / 1e9
    sizes = sizes or _sizes(store, args.sizes)
    f_whole = 4 * mgn_forward_flops(store.num_nodes, store.num_edges)
    f_pl = sum(4 * mgn_forward_flops(a, b) for a, b in zip(sizes["n1"], sizes["e1"]))
    f_lh = sum(4 * mgn_forward_flops(a, b) for a, b in zip(sizes["nh"], sizes["eh"]))
    f_patch1 = 4 * mgn_forward_flops(n1, res["patch1_edges"])
    sec_per_flop = res["step_s"] / f_meas
    res.update(
        whole_graph_tflops=f_whole / 1e12, per_layer_all_patches_tflops=f_pl / 1e12, lhop_all_patches_tflops=f_lh / 1e12,
        per_layer_redundancy=f_pl / f_whole, lhop_redundancy=f_lh / f_whole,
        sum_patch1_edges_over_E=sum(sizes["e1"]) / store.num_edges, sum_patchH_edges_over_E=sum(sizes["eh"]) / store.num_edges,
        max_patch1_nodes=max(sizes["n1"]), max_patch1_edges=max(sizes["e1"]),
        extrap_patch1_step_s=f_patch1 * sec_per_flop,
        extrap_full_step_per_layer_s=f_pl * sec_per_flop, extrap_full_step_lhop_s=f_lh * sec_per_flop,
        # activation memory of a checkpointed step: saved block inputs (x: N H, e: E H, fp32) for L blocks plus
        # one block's live forward/backward working set (~8 E H floats), for the largest 1-hop patch
        extrap_patch1_saved_gib=(15 * (max(sizes["n1"]) + max(sizes["e1"])) * 128 * 4) / 2**30,
        extrap_patch1_working_gib=(8 * max(sizes["e1"]) * 128 * 4) / 2**30,
        max_patchH_nodes=max(sizes["nh"]), max_patchH_edges=max(sizes["eh"]),
    )
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
