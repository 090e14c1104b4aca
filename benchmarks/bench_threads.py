"""Training-step time by thread setting, on an idle and on a loaded box (issue 19, meshgnn/threads.py).

For each model size (layers x latent) and each thread setting, a fresh process builds a Trainer on the demo-sized
packed column and times optimizer steps (median of --steps after one warm-up step):

- ``default``: what the ``meshgnn`` command now does (meshgnn.threads.configure_threads() before torch loads:
  cores / local ranks threads, OMP_WAIT_POLICY=PASSIVE);
- ``1``, ``2``: OMP_NUM_THREADS=1 / 2 with OpenMP's default wait policy (what users got before);
- ``2 passive``: OMP_NUM_THREADS=2 with OMP_WAIT_POLICY=PASSIVE (the wait policy alone).

"loaded" runs the same with one busy Python process per core beside it (started here, killed at the end, each
bounded by ``timeout``). Prints a Markdown table.

    .venv/bin/python benchmarks/bench_threads.py --dataset /tmp/x.h5   # generated if missing
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

CHILD = r"""
import json, os, sys, time
sys.argv = ["bench"]
if os.environ.get("BENCH_DEFAULT") == "1":
    from meshgnn.threads import configure_threads
    choice = configure_threads()
from meshgnn.memory import enable_huge_pages
enable_huge_pages()
import torch
from meshgnn.config import TrainConfig
from meshgnn.train import Trainer
cfg = TrainConfig(dataset=os.environ["BENCH_DATASET"], out=os.environ["BENCH_OUT"], steps=1000,
                  layers=int(os.environ["BENCH_LAYERS"]), latent=int(os.environ["BENCH_LATENT"]),
                  progress=False, checkpoint_every=10**9, log_every=10**9, device="cpu")
tr = Trainer(cfg)
tr.step()
times = []
for _ in range(int(os.environ["BENCH_STEPS"])):
    t0 = time.perf_counter(); tr.step(); times.append(time.perf_counter() - t0)
print(json.dumps({"times": times, "threads": torch.get_num_threads(),
                  "policy": os.environ.get("OMP_WAIT_POLICY", "")}))
"""

SETTINGS = {"default": {"BENCH_DEFAULT": "1"},
            "1": {"OMP_NUM_THREADS": "1"},
            "2": {"OMP_NUM_THREADS": "2"},
            "2 passive": {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run_setting(name, layers, latent, args) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")}
    env.update(SETTINGS[name])
    env.update(BENCH_DATASET=args.dataset, BENCH_OUT=args.work, BENCH_LAYERS=str(layers), BENCH_LATENT=str(latent),
               BENCH_STEPS=str(args.steps))
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                       timeout=args.child_timeout)
    if p.returncode != 0:
        raise SystemExit(f"{name} {layers}x{latent}: child failed:\n{p.stderr[-2000:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res["median"] = statistics.median(res["times"])
    res["wall"] = time.perf_counter() - t0
    return res


def start_load(n, seconds):
    """n busy processes, each killed by `timeout` after ``seconds`` at the latest."""
    return [subprocess.Popen(["timeout", str(int(seconds)), sys.executable, "-c", "while True: pass"])
            for _ in range(n)]


def stop_load(procs):
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="/tmp/bench_threads/x.h5")
    p.add_argument("--work", default="/tmp/bench_threads/train")
    p.add_argument("--models", default="4x32,8x64", help="comma-separated LAYERSxLATENT (default 4x32,8x64)")
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--steps", type=int, default=3, help="timed steps per run after one warm-up (default 3)")
    p.add_argument("--load", type=int, default=os.cpu_count(), help="busy processes when loaded (default: cores)")
    p.add_argument("--load-seconds", type=float, default=420, help="hard bound on the load processes' life")
    p.add_argument("--child-timeout", type=float, default=240)
    p.add_argument("--boxes", default="idle,loaded", help="which runs: idle, loaded or both (default both)")
    p.add_argument("--json", default=None, help="also write the raw results here")
    args = p.parse_args(argv)
    os.makedirs(os.path.dirname(os.path.abspath(args.dataset)), exist_ok=True)
    if not os.path.exists(args.dataset):
        subprocess.run([os.path.join(os.path.dirname(sys.executable), "meshgnn"), "generate", args.dataset,
                        "--nodes", "5000", "--trajectories", "2", "--steps", "10", "--quiet"], check=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    models = [tuple(int(x) for x in m.split("x")) for m in args.models.split(",")]
    settings = args.settings.split(",")
    results = {}
    t_start = time.perf_counter()
    boxes = args.boxes.split(",")
    for load in boxes:
        procs = start_load(args.load, args.load_seconds) if load == "loaded" else []
        try:
            if procs:
                time.sleep(2.0)
            for layers, latent in models:
                for name in settings:
                    r = run_setting(name, layers, latent, args)
                    results[(load, f"{layers}x{latent}", name)] = r
                    print(f"# {load:6s} {layers}x{latent} {name:10s} threads {r['threads']} policy "
                          f"{r['policy'] or '-':8s} median {r['median']:.3f} s/step  steps "
                          f"{', '.join(f'{t:.3f}' for t in r['times'])}", flush=True)
        finally:
            stop_load(procs)
    print(f"\nCPU: {cpu_model()}, {os.cpu_count()} cores; {args.steps} timed steps per cell (median), "
          f"load = {args.load} busy processes; total {time.perf_counter() - t_start:.0f} s\n")
    print("| box | model | " + " | ".join(f"{s} (s/step)" for s in settings) + " | default / best of 1, 2 |")
    print("|---|---|" + "---|" * (len(settings) + 1))
    for load in boxes:
        for layers, latent in models:
            m = f"{layers}x{latent}"
            cells = [results[(load, m, s)] for s in settings]
            row = [f"{c['median']:.3f} ({c['threads']}t)" for c in cells]
            ratio = ""
            if all(s in settings for s in ("default", "1", "2")):
                best = min(results[(load, m, "1")]["median"], results[(load, m, "2")]["median"])
                ratio = f"{results[(load, m, 'default')]['median'] / best:.2f}"
            print(f"| {load} | {layers} x {latent} | " + " | ".join(row) + f" | {ratio} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({" ".join(k): v for k, v in results.items()}, f, indent=1)


if __name__ == "__main__":
    main()
