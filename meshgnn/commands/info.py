"""meshgnn info: print a readable summary of a dataset (mesh, node types, fields, trajectories, provenance)."""
from __future__ import annotations


def add_arguments(p):
    p.add_argument("path", metavar="FILE.h5", help="a meshgnn dataset (.h5)")


def run(args) -> int:
    from ..io.dataset import Dataset, describe

    with Dataset(args.path) as ds:
        print(describe(ds))
    return 0
