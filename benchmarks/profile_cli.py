"""Run one ``meshgnn`` command under ``torch.profiler`` and print where the time goes (operators and kernels).

    python benchmarks/profile_cli.py [--top 25] [--sort self_cuda_time_total] -- rollout CKPT DATA --device cuda ...

Everything after ``--`` is the ``meshgnn`` command line. On a GPU the table is sorted by device time (the kernels
the step launches); on a CPU by CPU time. Setup (reading files, building graphs) is in the profile too: look at the
kernel rows, or profile a command with enough steps that the steps dominate.
"""
from __future__ import annotations

import argparse
import sys

import torch


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        print("usage: profile_cli.py [--top N] [--sort KEY] -- MESHGNN ARGS...", file=sys.stderr)
        return 2
    cut = argv.index("--")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--top", type=int, default=25, help="rows to print")
    ap.add_argument("--sort", default="", help="key_averages sort key (default: device time on a GPU, else CPU)")
    args = ap.parse_args(argv[:cut])
    from meshgnn.cli import main as meshgnn_main

    acts = [torch.profiler.ProfilerActivity.CPU]
    cuda = torch.cuda.is_available()
    if cuda:
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        rc = meshgnn_main(argv[cut + 1:])
        if cuda:
            torch.cuda.synchronize()
    key = args.sort or ("self_cuda_time_total" if cuda else "self_cpu_time_total")
    print(prof.key_averages().table(sort_by=key, row_limit=args.top, max_name_column_width=60))
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
