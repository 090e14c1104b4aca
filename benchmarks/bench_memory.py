"""Peak memory growth of one MGN 15 x 128 training step per node and per edge, per memory configuration.

Every configuration runs in a FRESH process (one subprocess each; on the CPU glibc ``MALLOC_MMAP_THRESHOLD_`` =
64 KiB so freed tensors return to the OS and RSS tracks live memory), on the ``box_tets(n)`` grid and inputs of
benchmarks/bench_train_step.py: ``--warmup`` untimed steps, then one timed step whose peak memory growth is
measured (CPU: VmHWM after resetting it through /proc/self/clear_refs, minus the RSS before the step; CUDA:
``torch.cuda.max_memory_allocated`` minus the allocation before it). Step = forward + MSE loss + backward + Adam.

Configurations (names as printed):
  fp32                 no checkpointing
  bf16                 bf16 autocast, no checkpointing
  ckpt                 torch activation checkpointing per block (``checkpoint_layers=True``): today's figure,
                       the reference of the ratios
  ckpt bf16            the same under bf16 autocast
  seg S                meshgnn.model.lowmem with S segments (S = 15: per layer), fp32 storage (exact)
  seg S c16            the same with bf16 storage of the saved activations (fp32 compute)
  seg S c16 bf16       the same under bf16 autocast

    OMP_NUM_THREADS=2 python benchmarks/bench_memory.py --grid 22 --threads 2
    python benchmarks/bench_memory.py --device cuda --grid 40 80 --warmup 1
    python benchmarks/bench_memory.py --gradients --grid 12        # gradient error against fp32
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_train_step import NODE_IN, EDGE_IN, NODE_OUT, make_problem, peak_step_mib  # noqa: E402
import bench_train_step  # noqa: E402

from meshgnn.model.mgn import MeshGraphNet  # noqa: E402

DEFAULT_CONFIGS = ["fp32", "ckpt", "seg 15", "seg 4", "seg 15 c16", "seg 4 c16", "seg 3 c16", "bf16", "ckpt bf16",
                   "seg 4 c16 bf16"]


def model_options(name: str) -> dict:
    """MeshGraphNet keyword arguments of configuration ``name``."""
    words = name.split()
    opts: dict = {}
    if words[0] == "ckpt":
        opts["checkpoint_layers"] = True
    elif words[0] == "seg":
        opts["checkpoint_segments"] = int(words[1])
        if "c16" in words:
            opts["checkpoint_storage"] = "bfloat16"
    elif words[0] not in ("fp32", "bf16"):
        raise SystemExit(f"unknown configuration {name!r}")
    return opts


def build(name: str, problem, device):
    graph, xn, xe, target = problem
    torch.manual_seed(0)
    model = MeshGraphNet(NODE_IN, EDGE_IN, NODE_OUT, **model_options(name)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    bf16 = name.split()[-1] == "bf16"

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(xn, graph, edge_features=xe)
        loss = torch.nn.functional.mse_loss(out.float(), target)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def probe(args) -> dict:
    """In this (fresh) process: warm-up steps, then one measured step of ``args.probe``."""
    device = torch.device(args.device)
    bench_train_step.DEVICE = device
    torch.set_num_threads(args.threads)
    problem = make_problem(args.grid[0], device=device)
    step = build(args.probe, problem, device)
    for _ in range(args.warmup):
        step()
    t0, c0 = time.perf_counter(), time.process_time()
    peak = peak_step_mib(step)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return dict(peak_mib=peak, step_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0,
                nodes=problem[0].num_nodes,
                edges=problem[0].num_edges)


def gradient_errors(args) -> None:
    """Relative error ``|g - g_ref| / |g_ref|`` of the summed gradient (all parameters, one vector) of each
    configuration against fp32 without checkpointing, same weights, inputs and loss, on ``--grid``."""
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    problem = make_problem(args.grid[0], device=device)
    graph, xn, xe, target = problem

    def grad(name):
        torch.manual_seed(0)
        model = MeshGraphNet(NODE_IN, EDGE_IN, NODE_OUT, **model_options(name)).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=name.split()[-1] == "bf16"):
            out = model(xn, graph, edge_features=xe)
        torch.nn.functional.mse_loss(out.float(), target).backward()
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double()

    ref = grad("fp32")
    print(f"# {args.grid[0]}^3 grid, MGN 15 x 128: relative error of the summed gradient against fp32 "
          f"(|ref| = {float(ref.norm()):.4g})")
    for name in args.configs or ["ckpt", "seg 15", "seg 4", "seg 15 c16", "seg 4 c16", "seg 3 c16", "bf16"]:
        print(f"{name:18s} {float((grad(name) - ref).norm() / ref.norm()):.3e}", flush=True)


def run_probe(name: str, grid: int, args) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, os.path.abspath(__file__), "--grid", str(grid), "--threads", str(args.threads),
           "--warmup", str(args.warmup), "--device", args.device, "--probe", name]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        print(f"  probe {name} @ {grid}^3 failed: {res.stderr.strip()[-800:]}", file=sys.stderr)
        return dict(peak_mib=float("nan"), step_s=float("nan"), cpu_s=float("nan"), nodes=0, edges=0)
    return json.loads(res.stdout.strip().splitlines()[-1])


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "")
        flags = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
        extras = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
        return f"{name or platform.processor()} ({', '.join(extras) or 'no AVX2'})"
    except OSError:
        return platform.processor()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--grid", type=int, nargs="+", default=[22], help="points per box side, one or more grids")
    p.add_argument("--configs", nargs="+", default=None,
                   help=f"configurations (default: {', '.join(DEFAULT_CONFIGS)}); per grid as "
                        "GRID:NAME to restrict a configuration to one grid")
    p.add_argument("--threads", type=int, default=2, help="torch threads per probe")
    p.add_argument("--warmup", type=int, default=0, help="untimed steps before the measured one")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--gradients", action="store_true",
                   help="instead: relative gradient error of each configuration against fp32 (in this process)")
    p.add_argument("--probe", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.gradients:
        gradient_errors(args)
        return 0
    if args.probe:
        print(json.dumps(probe(args)))
        return 0
    configs = args.configs or DEFAULT_CONFIGS
    where = (cpu_model() + f", {args.threads} threads" if args.device == "cpu"
             else torch.cuda.get_device_name(0))
    print(f"# {where}; torch {torch.__version__}; MGN 15 x 128; warm-up {args.warmup}; fresh process per row")
    for grid in args.grid:
        names = [c.split(":", 1)[1] if ":" in c else c for c in configs
                 if ":" not in c or c.split(":", 1)[0] == str(grid)]
        rows = {}
        for name in names:
            rows[name] = run_probe(name, grid, args)
            r = rows[name]
            print(f"  {grid}^3 {name}: {r['peak_mib']:.0f} MiB, {r['step_s']:.1f} s, cpu {r['cpu_s']:.1f} s, "
                  f"load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
        some = next((r for r in rows.values() if r["nodes"]), None)
        if some is None:
            continue
        N, E = some["nodes"], some["edges"]
        ref = rows.get("ckpt")
        print(f"\n{grid}^3 grid: {N:,} nodes, {E:,} edges")
        print(f"{'configuration':18s} {'peak MiB':>9s} {'KB/node':>8s} {'B/edge':>7s} {'step s':>7s} "
              f"{'cpu s':>7s} {'mem/ckpt':>9s} {'time/ckpt':>9s} {'cpu/ckpt':>9s}")
        for name, r in rows.items():
            per_node = r["peak_mib"] * 2**20 / N / 1e3
            per_edge = r["peak_mib"] * 2**20 / E
            mr = r["peak_mib"] / ref["peak_mib"] if ref else float("nan")
            tr = r["step_s"] / ref["step_s"] if ref else float("nan")
            cr = r["cpu_s"] / ref["cpu_s"] if ref else float("nan")
            print(f"{name:18s} {r['peak_mib']:9.0f} {per_node:8.1f} {per_edge:7.0f} {r['step_s']:7.2f} "
                  f"{r['cpu_s']:7.2f} {mr:9.2f} {tr:9.2f} {cr:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
