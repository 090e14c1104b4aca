"""One MeshGraphNet training step (forward + backward + Adam) on a 22³ tet grid, ours against the baselines.

Configurations, all 15 processor blocks × 128, 2 hidden layers per MLP, LayerNorm, sum aggregation, the same
graph (``meshgnn.meshes.box_tets(22)``: 10,648 nodes, 137,718 directed edges), inputs and loss (MSE on random
targets; 8 node and 4 edge input features, 3 outputs):
  * ``ours fp32``            meshgnn MeshGraphNet, concat trick (fused gather_add) + CSR segment_sum
  * ``ours bf16``            the same under ``torch.autocast(dtype=bfloat16)``, fp32 master weights
  * ``ours fp32 ckpt``       the same with ``checkpoint_layers=True`` (activation checkpointing per block)
  * ``ours fp32 no-concat``  ``concat_trick=False`` (edge MLP on ``cat[x_s, x_r, e]``)
  * ``ours fp32 unfused``    the MLPs module by module (``MLP.fused = False``: addmm, ReLU, autograd), the
                             baseline of the fused CPU path (meshgnn.model.fused)
  * ``PyG``                  a plain torch_geometric ``MessagePassing`` MGN (benchmarks/pyg_mgn.py, same function:
                             tests/test_pyg_baseline.py)
  * ``... compiled``         the same forward under ``torch.compile`` (inductor fuses the element-wise work;
                             warm-up steps include the compilation)
  * ``PhysicsNeMo concat`` / ``PhysicsNeMo no-concat``  ``physicsnemo.models.meshgraphnet.MeshGraphNet`` in its own
    venv (``--physicsnemo-python`` or env ``MESHGNN_PHYSICSNEMO_PYTHON``), driven step by step over a pipe by
    benchmarks/bench_train_step_physicsnemo.py, so its steps interleave with ours in the same run.

Timing: ``--warmup`` untimed steps per configuration, then ``--repeats`` rounds; each round times one step of
every configuration in turn (and the GEMM reference), so load drift on a shared machine hits all alike; medians.

Useful FLOP/s: the MLP FLOPs of a configuration counted from shapes (a Linear on M rows: 2·M·in·out forward,
×3 for forward + backward), divided by the step time, as a fraction of the fp32 GEMM throughput this machine
reaches on exactly those shapes (``torch.mm`` for the forward, input-gradient and weight-gradient products of
every Linear, timed in the same rounds). ``fraction = (time of the step's GEMMs alone) / (step time)``.

Peak memory (``--memory``): each configuration runs again in a fresh process (glibc ``MALLOC_MMAP_THRESHOLD_``
= 64 KiB, so freed tensors go back to the OS and RSS tracks live memory): one warm-up step, then the peak RSS
during a second step (VmHWM after resetting it through /proc/self/clear_refs) minus the RSS before it.

    python benchmarks/bench_train_step.py --repeats 3 --memory \
        --physicsnemo-python /tmp/pnemo-venv/bin/python

On a GPU (``--device cuda``): every timed step and GEMM is bracketed by ``torch.cuda.synchronize()``, the GEMM
reference runs each product ``--gemm-reps`` times, peak memory is ``torch.cuda.max_memory_allocated`` during a
step minus the allocation before it (measured in-process), and one more configuration, ``ours tf32``, runs the fp32
model with TF32 tensor-core matmuls (``torch.set_float32_matmul_precision("high")``); the other fp32 rows keep
full-fp32 matmuls, as does the fp32 GEMM reference. The PhysicsNeMo worker runs on the same device (its model,
graph and inputs there, each step between synchronisations); its info line names the device and torch_scatter.

    python benchmarks/bench_train_step.py --device cuda --grid 22 40 --repeats 5
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from meshgnn import ops  # noqa: E402
from meshgnn.graph import Graph, edges_from_cells  # noqa: E402
from meshgnn.memory import ALLOCATORS, allocator_in_effect, reexec_with_allocator  # noqa: E402
from meshgnn.meshes import box_tets  # noqa: E402
from meshgnn.model.fused import MLP  # noqa: E402
from meshgnn.model.mgn import MeshGraphNet  # noqa: E402

NODE_IN, EDGE_IN, NODE_OUT = 8, 4, 3
PNEMO_SCRIPT = os.path.join(HERE, "bench_train_step_physicsnemo.py")
OURS = ("ours fp32", "ours bf16", "ours fp32 ckpt", "ours fp32 no-concat", "ours fp32 unfused", "PyG", "ours tf32", "PyG bf16",
        "ours fp32 compiled", "ours bf16 compiled", "PyG compiled", "PyG bf16 compiled")
DEVICE = torch.device("cpu")   # set by main (--device)
PNEMO = {"PhysicsNeMo concat": "concat", "PhysicsNeMo no-concat": "noconcat", "PhysicsNeMo concat bf16": "concat-bf16"}


# ----------------------------------------------------------------------------------------------- problem
def make_problem(n: int, seed: int = 0, device=None):
    """Graph of the ``n³`` tet grid and seeded inputs: node ``(N, 8)``, edge ``(E, 4)`` (relative position and
    its norm), target ``(N, 3)``; on ``device`` (default: the CPU)."""
    points, tets = box_tets(n)
    graph = Graph.from_edge_index(edges_from_cells({"tetra": tets}, len(points)), len(points))
    g = torch.Generator().manual_seed(seed)
    pos = torch.from_numpy(points).float()
    rel = pos[graph.senders] - pos[graph.receivers]
    edge_features = torch.cat([rel, rel.norm(dim=1, keepdim=True)], dim=1)
    node_features = torch.randn(graph.num_nodes, NODE_IN, generator=g)
    target = torch.randn(graph.num_nodes, NODE_OUT, generator=g)
    if device is not None and torch.device(device).type != "cpu":
        graph.sender_perm  # noqa: B018  (built once, moved with the graph)
        return graph.to(device), node_features.to(device), edge_features.to(device), target.to(device)
    return graph, node_features, edge_features, target


# ----------------------------------------------------------------------------------------------- FLOPs
def mlp_gemms(rows: int, n_in: int, latent: int, n_out: int, hidden_layers: int) -> list[tuple[int, int, int]]:
    """``(rows, in, out)`` of every Linear of an MGN MLP."""
    sizes = [n_in] + [latent] * hidden_layers + [n_out]
    return [(rows, a, b) for a, b in zip(sizes[:-1], sizes[1:])]


def model_gemms(N: int, E: int, latent=128, layers=15, hidden_layers=2, concat_trick=True) -> collections.Counter:
    """Counter ``(rows, in, out) -> number of Linears`` of one MGN forward pass.

    With the concat trick the first edge Linear ``(E, 3H) -> H`` becomes ``(E, H) -> H`` plus two ``(N, H) -> H``.
    """
    H = latent
    shapes = mlp_gemms(N, NODE_IN, H, H, hidden_layers) + mlp_gemms(E, EDGE_IN, H, H, hidden_layers)
    for _ in range(layers):
        edge = mlp_gemms(E, 3 * H, H, H, hidden_layers)
        if concat_trick:
            edge = [(E, H, H), (N, H, H), (N, H, H)] + edge[1:]
        shapes += edge + mlp_gemms(N, 2 * H, H, H, hidden_layers)
    shapes += mlp_gemms(N, H, H, NODE_OUT, hidden_layers)
    return collections.Counter(shapes)


def step_flops(gemms: collections.Counter) -> float:
    """Forward + backward MLP FLOPs: 3 × 2·rows·in·out per Linear."""
    return sum(3 * 2 * m * k * n * c for (m, k, n), c in gemms.items())


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def precision_of(name: str) -> str:
    """The matmul precision a configuration's GEMMs run in: ``fp32``, ``tf32`` or ``bf16``."""
    return "bf16" if "bf16" in name else ("tf32" if "tf32" in name else "fp32")


def time_gemms(shapes, dtype=torch.float32, reps: int = 1, tf32: bool = False) -> dict:
    """Seconds of the three products of one Linear (forward ``x Wᵀ``, ``dX = g W``, ``dW = gᵀ x``) per shape
    (mean of ``reps`` back-to-back runs)."""
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    out = {}
    for m, k, n in shapes:
        x, w, g = (torch.randn(*s, dtype=dtype, device=DEVICE) for s in ((m, k), (n, k), (m, n)))
        sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(x, w.t())
            torch.mm(g, w)
            torch.mm(g.t(), x)
        sync()
        out[(m, k, n)] = (time.perf_counter() - t0) / reps
    torch.set_float32_matmul_precision("highest")
    return out


# ----------------------------------------------------------------------------------------------- steps
def build(name: str, problem):
    """``(model, step_fn)``: ``step_fn()`` runs one training step of configuration ``name``."""
    from pyg_mgn import PygMeshGraphNet

    graph, xn, xe, target = problem
    torch.manual_seed(0)
    if name.startswith("PyG"):
        model = PygMeshGraphNet(NODE_IN, EDGE_IN, NODE_OUT)
        edge_index = graph.edge_index
        fn = lambda a, b: model(a, edge_index, b)  # noqa: E731
    else:
        model = MeshGraphNet(NODE_IN, EDGE_IN, NODE_OUT, concat_trick="no-concat" not in name,
                             checkpoint_layers="ckpt" in name)
        fn = lambda a, b: model(a, graph, edge_features=b)  # noqa: E731
    if "compiled" in name:   # torch.compile (inductor) of the forward; the custom ops trace as opaque ops
        fn = torch.compile(fn)
    forward = lambda: fn(xn, xe)  # noqa: E731
    model.to(DEVICE)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    bf16 = "bf16" in name
    precision = "high" if "tf32" in name else "highest"

    fused = "unfused" not in name

    def step():
        MLP.fused = fused
        optimizer.zero_grad(set_to_none=True)
        torch.set_float32_matmul_precision(precision)
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=bf16):
            out = forward()
        loss = torch.nn.functional.mse_loss(out.float(), target)
        loss.backward()
        optimizer.step()
        torch.set_float32_matmul_precision("highest")
        MLP.fused = True
        return float(loss.detach())

    return model, step


def timed(step) -> tuple[float, float]:
    """Wall and process-CPU seconds of one call."""
    sync()
    w0, c0 = time.perf_counter(), time.process_time()
    step()
    sync()
    return time.perf_counter() - w0, time.process_time() - c0


# ----------------------------------------------------------------------------------------------- memory
def rss_kib(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def peak_step_mib(step) -> float:
    """Peak RSS growth (MiB) during one call of ``step`` (VmHWM reset via /proc/self/clear_refs); on a GPU the
    peak of ``torch.cuda.max_memory_allocated`` over the allocation before the step."""
    if DEVICE.type == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        sync()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = rss_kib()
    step()
    return (rss_kib("VmHWM") - before) / 1024


def probe_memory(name: str, args) -> float:
    """Fresh-process peak RSS of a step of ``name`` (ours/PyG: this script; PhysicsNeMo: its worker), on glibc
    with every block >= 64 KiB mapped afresh: the step's live peak (a caching malloc would keep the warm-up's
    pages and show ~0 growth, so the probe runs without the preloaded one)."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    env.update(MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(args.threads))
    if name in PNEMO:
        cmd = [args.physicsnemo_python, PNEMO_SCRIPT, "--inputs", args._inputs_path, "--threads",
               str(args.threads), "--memory", PNEMO[name], "--device", DEVICE.type]
    else:
        cmd = [sys.executable, os.path.abspath(__file__), "--grid", str(args.grid), "--threads", str(args.threads),
               "--probe", name]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        print(f"  memory probe {name} failed: {res.stderr.strip()[-500:]}", file=sys.stderr)
        return float("nan")
    return json.loads(res.stdout.strip().splitlines()[-1])["peak_mib"]


# ----------------------------------------------------------------------------------------------- PhysicsNeMo
class PhysicsNemoWorker:
    """The PhysicsNeMo step driver in its own venv; ``step(variant)`` -> (wall s, cpu s) of one step."""

    def __init__(self, python: str, inputs_path: str, threads: int, variants: list[str], warmup: int):
        cmd = [python, PNEMO_SCRIPT, "--inputs", inputs_path, "--threads", str(threads), "--variants", *variants,
               "--warmup", str(max(warmup, 1)), "--device", DEVICE.type]  # >= 1: its first call runs torch.compile
        self.proc = subprocess.Popen(cmd,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"PhysicsNeMo worker exited (code {self.proc.wait()})")
        return json.loads(line)

    def step(self, variant: str) -> tuple[float, float]:
        self.proc.stdin.write(f"step {variant}\n")
        reply = self._read()
        return reply["wall_s"], reply["cpu_s"]

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


def save_inputs(problem, path: str) -> None:
    """The graph and inputs as .npz for the PhysicsNeMo worker (which cannot import meshgnn)."""
    graph, xn, xe, target = problem
    np.savez(path, **{k: t.cpu().numpy() for k, t in dict(
        senders=graph.senders, receivers=graph.receivers, node_features=xn, edge_features=xe, target=target).items()})


# ----------------------------------------------------------------------------------------------- report
def fmt_ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if a == a and b == b and b > 0 else "n/a"


def report(names, times, cpu, gemm_times, flops, gemm_of, memory, args, problem, loads, pnemo_info):
    graph = problem[0]
    where = (f"{args.threads} threads" if DEVICE.type == "cpu" else
             f"{torch.cuda.get_device_name(DEVICE)}, meshgnn kernels: {ops.kernel_name(DEVICE)}")
    print(f"\ngraph: {args.grid}^3 tet grid, {graph.num_nodes:,} nodes, {graph.num_edges:,} directed edges; "
          f"15 x 128, torch {torch.__version__}, {where}; warm-up {args.warmup}, "
          f"median of {args.repeats}; load average {loads[0]:.1f} (start) / {loads[1]:.1f} (end); "
          f"allocator {allocator_in_effect()}")
    if pnemo_info:
        print(f"PhysicsNeMo {pnemo_info.get('physicsnemo')} (torch {pnemo_info.get('torch')}, "
              f"graph: {pnemo_info.get('graph')}, device: {pnemo_info.get('device', 'cpu')}, "
              f"torch_scatter: {pnemo_info.get('torch_scatter', '?')})")
    med = {n: statistics.median(times[n]) for n in names}
    med_cpu = {n: statistics.median(cpu[n]) for n in names}
    gemm_med = {s: statistics.median(v) for s, v in gemm_times.items()}
    print(f"{'configuration':24s} {'step s':>8s} {'cpu s':>8s} {'MLP GFLOP':>10s} {'GFLOP/s':>8s} "
          f"{'GEMM GFLOP/s':>12s} {'of GEMM':>8s} {'peak MiB':>9s}")
    rows = {}
    for n in names:
        gemms = gemm_of(n)
        t_gemm = sum(gemm_med[(precision_of(n), s)] * c for s, c in gemms.items())
        f = flops(n)
        rows[n] = (med[n], f / med[n] / 1e9, f / t_gemm / 1e9, t_gemm / med[n])
        print(f"{n:24s} {med[n]:8.2f} {med_cpu[n]:8.2f} {f / 1e9:10.1f} {rows[n][1]:8.1f} {rows[n][2]:12.1f} "
              f"{100 * rows[n][3]:7.1f}% {memory.get(n, float('nan')):9.0f}")
    print("\nratios (baseline step time / ours):")
    for ours in ("ours fp32", "ours bf16", "ours tf32", "ours fp32 ckpt", "ours fp32 no-concat", "ours fp32 compiled",
                 "ours bf16 compiled"):
        if ours not in med:
            continue
        parts = [f"vs {b}: {fmt_ratio(med.get(b, float('nan')), med[ours])}"
                 for b in ("PyG", "PyG bf16", "PyG compiled", "PyG bf16 compiled", "PhysicsNeMo concat",
                           "PhysicsNeMo no-concat", "PhysicsNeMo concat bf16", "ours fp32 unfused")
                 if b in med and b != ours]
        parts += [f"cpu-time vs {b}: {fmt_ratio(med_cpu.get(b, float('nan')), med_cpu[ours])}"
                  for b in ("PyG", "PhysicsNeMo concat") if b in med_cpu]
        print(f"  {ours:22s} " + ", ".join(parts))
    best32 = min((n for n in ("ours fp32", "ours fp32 compiled") if n in med), key=med.get, default=None)
    best16 = min((n for n in ("ours bf16", "ours bf16 compiled") if n in med), key=med.get, default=None)
    if best32 is None:
        print("targets: no fp32 configuration of ours was run")
    else:   # the targets are judged on the fastest configuration of ours that ran (eager or compiled)
        gemm_note = f">= 80% of GEMM: {100 * rows[best32][3]:.0f}% {'MET' if rows[best32][3] >= 0.80 else 'NOT met'}"
        if "PhysicsNeMo concat" in med:
            r32 = med["PhysicsNeMo concat"] / med[best32]
            rbf = med["PhysicsNeMo concat"] / med[best16] if best16 else float("nan")
            print(f"targets ({best32}{', ' + best16 if best16 else ''}): fp32 >= 1.3x PhysicsNeMo: {r32:.2f}x "
                  f"{'MET' if r32 >= 1.3 else 'NOT met'}; bf16 >= 2x: {rbf:.2f}x {'MET' if rbf >= 2 else 'NOT met'}; "
                  f"{gemm_note}")
            if best16 and "PhysicsNeMo concat bf16" in med:
                r16 = med["PhysicsNeMo concat bf16"] / med[best16]
                print(f"  both under bf16 autocast ({best16} vs PhysicsNeMo concat bf16): {r16:.2f}x "
                      f"{'MET' if r16 >= 1.3 else 'NOT met'} (>= 1.3x)")
        else:
            print(f"target ({best32}) {gemm_note} (PhysicsNeMo not run)")
    big = max((s for p, s in gemm_med if p == "fp32"), key=lambda s: s[0] * s[1] * s[2])
    big_flops = 3 * 2 * big[0] * big[1] * big[2]
    fp32 = gemm_med[("fp32", big)]
    bf16 = gemm_med.get(("bf16", big)) or time_gemms([big], torch.bfloat16, args.gemm_reps)[big]
    print(f"reference GEMM {big} (fwd+dX+dW): fp32 {big_flops / fp32 / 1e9:.1f} GFLOP/s, "
          f"bf16 {big_flops / bf16 / 1e9:.1f} GFLOP/s (bf16/fp32 time {bf16 / fp32:.2f}x)"
          + (f", tf32 {big_flops / gemm_med[('tf32', big)] / 1e9:.1f} GFLOP/s" if ("tf32", big) in gemm_med else ""))


# ----------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--grid", type=int, default=22, help="points per box side (22: 10,648 nodes)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per configuration")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (one step of each configuration)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads, both venvs (1: robust on an oversubscribed machine)")
    p.add_argument("--configs", nargs="*", default=None,
                   help="configurations to run (default: CPU: ours fp32/bf16/ckpt/no-concat, PyG, PhysicsNeMo; "
                        "CUDA: all of ours and PyG, fp32/tf32/bf16)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--gemm-reps", type=int, default=None, help="runs per reference GEMM (default 1 CPU, 20 GPU)")
    p.add_argument("--memory", action="store_true", help="also measure peak RSS per configuration")
    p.add_argument("--physicsnemo-python", default=os.environ.get("MESHGNN_PHYSICSNEMO_PYTHON", ""),
                   help="python of a venv with nvidia-physicsnemo (env MESHGNN_PHYSICSNEMO_PYTHON); empty: skip")
    p.add_argument("--allocator", default="auto", choices=ALLOCATORS,
                   help="CPU malloc for both sides (meshgnn/memory.py; the PhysicsNeMo worker inherits it)")
    p.add_argument("--probe", default="", help=argparse.SUPPRESS)  # internal: fresh-process memory probe
    return p.parse_args(argv)


def main(argv=None) -> int:
    global DEVICE
    args = parse_args(argv)
    if argv is None and not args.probe:
        reexec_with_allocator(args.allocator, [os.path.abspath(__file__), *sys.argv[1:]])
    DEVICE = torch.device(args.device)
    if args.configs is None:
        args.configs = list(OURS[:5]) + list(PNEMO) if DEVICE.type == "cpu" else list(OURS)
    if args.gemm_reps is None:
        args.gemm_reps = 1 if DEVICE.type == "cpu" else 20
    torch.set_num_threads(args.threads)
    problem = make_problem(args.grid, device=DEVICE)
    if args.probe:
        _, step = build(args.probe, problem)
        step()
        print(json.dumps({"peak_mib": peak_step_mib(step)}))
        return 0

    loads = [os.getloadavg()[0]]
    names = [n for n in args.configs if n in OURS or n in PNEMO]
    pnemo_names = [n for n in names if n in PNEMO]
    if pnemo_names and not (args.physicsnemo_python and os.path.exists(args.physicsnemo_python)):
        print(f"SKIPPING PhysicsNeMo: no venv python (--physicsnemo-python / MESHGNN_PHYSICSNEMO_PYTHON = "
              f"{args.physicsnemo_python!r})", file=sys.stderr)
        names = [n for n in names if n not in PNEMO]
        pnemo_names = []
    graph = problem[0]
    N, E = graph.num_nodes, graph.num_edges

    def gemm_of(n):
        return model_gemms(N, E, concat_trick=not ("no-concat" in n or n.startswith("PyG")))

    def flops(n):
        return step_flops(gemm_of(n))

    tmp = tempfile.TemporaryDirectory()
    args._inputs_path = os.path.join(tmp.name, "inputs.npz")
    worker = None
    try:
        steps = {n: build(n, problem)[1] for n in names if n in OURS}
        for n in [n for n in names if n in OURS]:
            for _ in range(args.warmup):
                steps[n]()
            print(f"warm-up {n} done", file=sys.stderr, flush=True)
        if pnemo_names:
            save_inputs(problem, args._inputs_path)

        def pnemo_step(variant):
            """Starts the worker on first use (after our steps of round 1: its venv may still be installing)."""
            nonlocal worker
            if worker is None:
                worker = PhysicsNemoWorker(args.physicsnemo_python, args._inputs_path, args.threads,
                                           [PNEMO[n] for n in pnemo_names], args.warmup)
            return worker.step(variant)

        for n in pnemo_names:
            steps[n] = (lambda v: lambda: pnemo_step(v))(PNEMO[n])
        shapes = sorted(set().union(*(gemm_of(n) for n in names)))
        times, cpu = collections.defaultdict(list), collections.defaultdict(list)
        gemm_times = collections.defaultdict(list)
        for r in range(args.repeats):
            for prec in sorted({precision_of(n) for n in names} | {"fp32"}):
                dtype = torch.bfloat16 if prec == "bf16" else torch.float32
                for s, t in time_gemms(shapes, dtype, args.gemm_reps, tf32=prec == "tf32").items():
                    gemm_times[(prec, s)].append(t)
            for n in list(names):
                if n in PNEMO:
                    try:
                        w, c = steps[n]()
                    except (RuntimeError, OSError, ValueError) as exc:
                        print(f"SKIPPING {n}: PhysicsNeMo worker failed ({exc})", file=sys.stderr)
                        names.remove(n)
                        continue
                else:
                    w, c = timed(steps[n])
                times[n].append(w)
                cpu[n].append(c)
                print(f"round {r + 1}/{args.repeats} {n}: {w:.2f} s", file=sys.stderr, flush=True)
        pnemo_info = worker.info if worker else None
        if worker:
            worker.close()
            worker = None
        memory = {}
        if DEVICE.type == "cuda":
            for n in names:
                memory[n] = peak_step_mib(steps[n])
        steps.clear()
        if args.memory and DEVICE.type == "cpu":
            for n in names:
                memory[n] = probe_memory(n, args)
                print(f"memory {n}: {memory[n]:.0f} MiB", file=sys.stderr, flush=True)
        loads.append(os.getloadavg()[0])
        report(names, times, cpu, gemm_times, flops, gemm_of, memory, args, problem, loads, pnemo_info)
    finally:
        if worker:
            worker.close()
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
