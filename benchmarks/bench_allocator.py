"""CPU malloc vs training-step speed and peak memory: one 15 x 128 MGN step under each allocator, fresh processes.

Every allocator runs the same step (``bench_train_step.py``'s "ours fp32" on the n³ tet grid) in a fresh child
process: glibc as it comes (``system``, the baseline), glibc told to keep freed memory (``glibc-keep``: mmap and
trim thresholds at 2 GiB, as ``meshgnn rollout --malloc-cache``), and the caching mallocs ``meshgnn`` can preload
(``jemalloc`` with decay off, ``tcmalloc``; meshgnn/memory.py). Per allocator: wall, user and system CPU seconds
and minor page faults of the timed steps (after one warm-up step), and the process's peak RSS. Prints the ratios
to ``system``.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_allocator.py --grid 22 --threads 2 --steps 2
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from meshgnn.memory import allocator_env, allocator_in_effect, find_allocator  # noqa: E402

KEEP = {"MALLOC_MMAP_THRESHOLD_": str(2**31 - 1), "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}


def child(grid: int, threads: int, steps: int) -> dict:
    """One warm-up and ``steps`` timed steps in this process; the figures as a dict."""
    import torch
    sys.path.insert(0, str(HERE))
    import bench_train_step as bts

    torch.set_num_threads(threads)
    _, step = bts.build("ours fp32", bts.make_problem(grid))
    step()
    r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        step()
    r1, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - w0
    return dict(allocator=allocator_in_effect(), wall=wall / steps, user=(r1.ru_utime - r0.ru_utime) / steps,
                sys=(r1.ru_stime - r0.ru_stime) / steps, faults=(r1.ru_minflt - r0.ru_minflt) / steps,
                peak_gib=r1.ru_maxrss / 2**20)


def environments() -> dict:
    """name -> environment of the child (those whose library is installed)."""
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF", "MESHGNN_ALLOCATOR_ACTIVE",
                                                             *KEEP)}
    out = {"system": base, "glibc-keep": dict(base, **KEEP)}
    for name in ("jemalloc", "tcmalloc"):
        if find_allocator(name):
            out[name] = allocator_env(name, base)[1]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", type=int, default=22, help="points per box side (22: 10,648 nodes)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of each child")
    p.add_argument("--steps", type=int, default=2, help="timed steps per allocator (after one warm-up)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.grid, args.threads, args.steps)))
        return 0
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"{args.grid}^3 tet grid, 15 x 128 fp32 training step, {args.threads} threads, {args.steps} timed steps "
          f"after one warm-up; CPU {cpu}")
    rows = {}
    for name, env in environments().items():
        cmd = [sys.executable, __file__, "--child", "--grid", str(args.grid), "--threads", str(args.threads),
               "--steps", str(args.steps)]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if res.returncode != 0:
            print(f"{name}: failed: {res.stderr.strip()[-300:]}")
            continue
        rows[name] = json.loads(res.stdout.strip().splitlines()[-1])
        r = rows[name]
        print(f"{name:11s} step {r['wall']:6.2f} s  user {r['user']:6.2f} s  sys {r['sys']:6.2f} s  "
              f"faults {r['faults']:>10,.0f}  peak RSS {r['peak_gib']:5.2f} GiB  (process: {r['allocator']})",
              flush=True)
    base = rows.get("system")
    if base:
        print("ratios to system (step time system/X, peak RSS X/system):")
        for name, r in rows.items():
            if name != "system":
                print(f"  {name:11s} {base['wall'] / r['wall']:.2f}x faster, {r['peak_gib'] / base['peak_gib']:.2f}x "
                      f"the peak RSS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
