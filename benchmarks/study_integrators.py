"""Integrator study (issue 6): forward Euler vs Heun2 vs Heun3 at an equal CPU-time training budget.

Every configuration trains the same-size MeshGraphNet (latent H, hidden layers, noise, LR schedule) on the
generator's 3D dataset for the same *CPU-time* budget (``time.process_time`` of the training steps only, one
torch thread per process), then rolls out the held-out trajectory; RMSE at step 1, 10 and mean over all steps
per field, next to the persistence baseline. Higher order costs s model calls per step, so it gets ~s times
fewer optimizer steps; the ``L=2`` rows ask whether higher order can replace message-passing layers
(receptive field s·L hops per time step).

CPU time, not wall-clock: the machine is shared, and wall-clock would reward whichever run the scheduler
favoured. The LR schedule spans the steps that fit the budget: a throw-away trainer of the same configuration
times a few steps (CPU) first; training then stops at the budget or at the planned step count, whichever first.

Run (writes <work>/<config>_s<seed>/result.json, the table to stdout and --plot):

    .venv/bin/python benchmarks/study_integrators.py --data /tmp/intstudy/data.h5 --work /tmp/intstudy/runs \
        --budget-cpu-s 120 --seeds 0 1 --jobs 12 --plot docs/img/integrator_study.png

``--report-only`` rebuilds the table and plot from an existing work folder.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> (integrator, message-passing layers)
CONFIGS = {
    "euler_L4": ("euler", 4),
    "heun_L4": ("heun", 4),
    "heun3_L4": ("heun3", 4),
    "euler_L6": ("euler", 6),
    "heun_L2": ("heun", 2),
    "heun3_L2": ("heun3", 2),
}
STAGES = {"euler": 1, "heun": 2, "heun3": 3}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="/tmp/intstudy/data.h5", help="dataset (generated when missing)")
    p.add_argument("--nodes", type=int, default=3000, help="generator nodes when --data is missing")
    p.add_argument("--trajectories", type=int, default=5, help="generator trajectories when --data is missing")
    p.add_argument("--steps", type=int, default=40, help="generator steps when --data is missing")
    p.add_argument("--work", default="/tmp/intstudy/runs", help="folder for runs (checkpoints, rollouts, results)")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), help="configurations")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="seeds (initialisation, sampling, noise)")
    p.add_argument("--budget-cpu-s", type=float, default=120.0, help="training CPU seconds per configuration")
    p.add_argument("--latent", type=int, default=32, help="latent size H (all configurations)")
    p.add_argument("--hidden-layers", type=int, default=2, help="hidden layers per MLP")
    p.add_argument("--noise", type=float, default=0.02, help="training noise std (relative to the field std)")
    p.add_argument("--lr", type=float, default=1e-3, help="initial learning rate")
    p.add_argument("--lr-final", type=float, default=1e-4, help="learning rate at the last planned step")
    p.add_argument("--jobs", type=int, default=12, help="runs in parallel (one torch thread each)")
    p.add_argument("--plot", default=str(ROOT / "docs/img/integrator_study.png"), help="RMSE-vs-step plot")
    p.add_argument("--report-only", action="store_true", help="only table + plot from existing results")
    p.add_argument("--one", choices=list(CONFIGS), help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------- one run
def train_config(args, integrator: str, layers: int, seed: int, out: Path, steps: int):
    from meshgnn.config import TrainConfig

    return TrainConfig(dataset=args.data, out=str(out), steps=steps, lr=args.lr, lr_final=args.lr_final,
                       latent=args.latent, layers=layers, hidden_layers=args.hidden_layers, integrator=integrator,
                       noise_std=[args.noise], seed=seed, progress=False, device="cpu")


def cpu_steps_for_budget(cfg, budget_s: float, probe: int = 3) -> tuple[int, float]:
    """(planned optimizer steps, CPU s per step): a throw-away trainer times ``probe`` steps after a warm-up."""
    import dataclasses

    from meshgnn.train import Trainer

    trainer = Trainer(dataclasses.replace(cfg, steps=10**6))
    trainer.step()
    c0 = time.process_time()
    for _ in range(probe):
        trainer.step()
    per_step = (time.process_time() - c0) / probe
    return max(20, int(budget_s / per_step)), per_step


def run_one(args) -> dict:
    """Train one (configuration, seed) to the CPU budget, roll out the held-out trajectory, write result.json."""
    import torch

    from meshgnn import checkpoint as ckpt
    from meshgnn.config import RolloutConfig
    from meshgnn.rollout import rollout
    from meshgnn.train import Trainer

    torch.set_num_threads(1)
    integrator, layers = CONFIGS[args.one]
    run = Path(args.work) / f"{args.one}_s{args.seed}"
    run.mkdir(parents=True, exist_ok=True)
    planned, probe_per_step = cpu_steps_for_budget(
        train_config(args, integrator, layers, args.seed, run / "probe", 10**6), args.budget_cpu_s)
    trainer = Trainer(train_config(args, integrator, layers, args.seed, run / "train", planned))
    cpu = 0.0
    losses = []
    w0 = time.perf_counter()
    while trainer.step_index < planned and cpu < args.budget_cpu_s:
        c0 = time.process_time()
        rec = trainer.step()
        cpu += time.process_time() - c0
        losses.append(rec["loss"])
    wall = time.perf_counter() - w0
    ck = run / "checkpoint.pt"
    ckpt.save(ck, trainer)
    c0 = time.process_time()
    res = rollout(RolloutConfig(checkpoint=str(ck), dataset=args.data, out=str(run / "rollout"), every=10**6,
                                render=False, progress=False))
    rollout_cpu = time.process_time() - c0
    import csv

    curve = {}
    for name in ("rmse", "rmse_persistence"):
        rows = list(csv.DictReader(open(run / "rollout" / f"{name}.csv")))
        curve[name] = {k: [float(r[k]) for r in rows] for k in rows[0] if k != "time"}
    n = max(1, len(losses) // 10)
    result = dict(config=args.one, integrator=integrator, layers=layers, stages=STAGES[integrator],
                  receptive_hops=trainer.sim.receptive_hops, seed=args.seed, latent=args.latent,
                  params=sum(p.numel() for p in trainer.sim.model.parameters()),
                  budget_cpu_s=args.budget_cpu_s, planned_steps=planned, probe_cpu_s_per_step=probe_per_step,
                  steps=trainer.step_index, train_cpu_s=cpu, train_wall_s=wall,
                  final_loss=sum(losses[-n:]) / n, rollout_cpu_s=rollout_cpu, trajectory=res["trajectory"],
                  rollout_steps=res["steps"], rmse=res["rmse"], rmse_persistence=res["rmse_persistence"],
                  curve=curve)
    (run / "result.json").write_text(json.dumps(result, indent=1))
    return result


# ------------------------------------------------------------------------------------------------ the study
def ensure_dataset(args) -> None:
    if Path(args.data).exists():
        return
    Path(args.data).parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "meshgnn.cli", "generate", args.data, "--nodes", str(args.nodes),
                    "--trajectories", str(args.trajectories), "--steps", str(args.steps), "--quiet"], check=True)


def launch_all(args) -> None:
    """Run every (configuration, seed) as a child process, ``--jobs`` at a time, one torch thread each."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    base = [sys.executable, __file__, "--data", args.data, "--work", args.work, "--budget-cpu-s",
            str(args.budget_cpu_s), "--latent", str(args.latent), "--hidden-layers", str(args.hidden_layers),
            "--noise", str(args.noise), "--lr", str(args.lr), "--lr-final", str(args.lr_final)]
    todo = [(c, s) for s in args.seeds for c in args.configs]
    running: list[tuple[subprocess.Popen, str]] = []
    Path(args.work).mkdir(parents=True, exist_ok=True)
    while todo or running:
        while todo and len(running) < args.jobs:
            c, s = todo.pop(0)
            log = open(Path(args.work) / f"{c}_s{s}.log", "w")
            running.append((subprocess.Popen(base + ["--one", c, "--seed", str(s)], env=env, stdout=log,
                                             stderr=subprocess.STDOUT), f"{c}_s{s}"))
        time.sleep(2)
        for proc, name in list(running):
            if proc.poll() is not None:
                running.remove((proc, name))
                print(f"{name}: exit {proc.returncode}", file=sys.stderr, flush=True)


def load_results(work) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(work).glob("*/result.json"))]


def _mean_spread(values):
    m = sum(values) / len(values)
    return m, (max(values) - min(values)) / 2


def table(results: list[dict], fields: list[str]) -> str:
    """Markdown table: per configuration, mean over seeds (± half the min–max spread when >1 seed)."""
    def cell(vals, fmt="{:.3g}"):
        m, h = _mean_spread(vals)
        return fmt.format(m) + (f" ± {fmt.format(h)}" if len(vals) > 1 else "")

    by = {}
    for r in results:
        by.setdefault(r["config"], []).append(r)
    head = ["config", "s·L", "params", "seeds", "opt. steps", "train CPU s"]
    for f in fields:
        head += [f"{f} @1", f"{f} @10", f"{f} all"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in [c for c in CONFIGS if c in by]:
        rs = by[name]
        row = [name.replace("_", " "), str(rs[0]["receptive_hops"]), str(rs[0]["params"]), str(len(rs)),
               cell([r["steps"] for r in rs], "{:.0f}"), cell([r["train_cpu_s"] for r in rs], "{:.0f}")]
        for f in fields:
            row += [cell([r["rmse"][f][k] for r in rs]) for k in ("1", "10", "all")]
        lines.append("| " + " | ".join(row) + " |")
    p = results[0]["rmse_persistence"]
    row = ["persistence", "–", "–", "–", "–", "–"]
    for f in fields:
        row += [f"{p[f][k]:.3g}" for k in ("1", "10", "all")]
    lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot(results: list[dict], fields: list[str], path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(fields), figsize=(6 * len(fields), 4.2), squeeze=False)
    by = {}
    for r in results:
        by.setdefault(r["config"], []).append(r)
    styles = {"euler": "-", "heun": "--", "heun3": ":"}
    colors = {4: "C0", 2: "C1", 6: "C2"}
    for ax, f in zip(axes[0], fields):
        for name in [c for c in CONFIGS if c in by]:
            rs = by[name]
            steps = np.array(rs[0]["curve"]["rmse"]["step"])
            ys = np.array([r["curve"]["rmse"][f] for r in rs])
            integ, L = CONFIGS[name]
            line, = ax.semilogy(steps, ys.mean(0), styles[integ], color=colors[L], lw=1.8,
                                label=f"{integ} L={L} (s·L={L * STAGES[integ]})")
            if len(rs) > 1:
                ax.fill_between(steps, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.15)
        pers = results[0]["curve"]["rmse_persistence"]
        ax.semilogy(pers["step"], pers[f], "k-", lw=1, alpha=0.6, label="persistence")
        ax.set_xlabel("rollout step")
        ax.set_ylabel(f"RMSE {f}")
        ax.set_title(f"{f}: held-out trajectory {results[0]['trajectory']}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"equal training budget {results[0]['budget_cpu_s']:.0f} CPU s per run, latent "
                 f"{results[0]['latent']}; mean over seeds, band = min..max", fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.one:
        r = run_one(args)
        print(json.dumps({k: r[k] for k in ("config", "seed", "steps", "train_cpu_s", "rmse")}))
        return 0
    t0 = time.perf_counter()
    if not args.report_only:
        ensure_dataset(args)
        launch_all(args)
    results = load_results(args.work)
    if not results:
        print("no results", file=sys.stderr)
        return 1
    fields = list(results[0]["rmse"])
    print(table(results, fields))
    plot(results, fields, args.plot)
    import resource
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"\nwall {time.perf_counter() - t0:.0f} s; children CPU {ch.ru_utime + ch.ru_stime:.0f} s; "
          f"plot {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
