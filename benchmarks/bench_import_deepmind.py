"""DeepMind-format import speed: records of a cylinder_flow-sized trajectory (600 steps x ~1.9k nodes, velocity and
pressure) written by the `tfrecord` package (the writer of tests/test_import_deepmind.py), then imported in-process.

    python benchmarks/bench_import_deepmind.py [--records 4] [--steps 600] [--nx 65 --ny 29]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> None:
    from test_import_deepmind import write_split

    from meshgnn.io.importers import build_options
    from meshgnn.io.importers.deepmind import import_deepmind
    from meshgnn.meshes import rect_triangles

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=4)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--nx", type=int, default=65)
    ap.add_argument("--ny", type=int, default=29)
    a = ap.parse_args()
    pts, tri = rect_triangles(a.nx, a.ny, size=(1.6, 0.41))
    feats = {"cells": ("static", (1, -1, 3), "int32"), "mesh_pos": ("static", (1, -1, 2), "float32"),
             "node_type": ("static", (1, -1, 1), "int32"), "velocity": ("dynamic", (a.steps, -1, 2), "float32"),
             "pressure": ("dynamic", (a.steps, -1, 1), "float32")}
    rng = np.random.default_rng(0)
    trajs = [{"cells": tri[None], "mesh_pos": pts[None], "node_type": np.zeros((1, len(pts), 1)),
              "velocity": rng.standard_normal((a.steps, len(pts), 2)),
              "pressure": rng.standard_normal((a.steps, len(pts), 1))} for _ in range(a.records)]
    with tempfile.TemporaryDirectory() as d:
        folder = write_split(Path(d) / "cf", "train", feats, trajs, dt=0.01, length=a.steps)
        size = (folder / "train.tfrecord").stat().st_size / 2**20
        t0 = time.perf_counter()
        import_deepmind(folder, Path(d) / "cf.h5", build_options(), report=lambda s: None)
        dt = time.perf_counter() - t0
    print(f"{len(pts)} nodes, {a.steps} steps, {a.records} records, {size:.1f} MiB: import {dt:.2f} s "
          f"({dt / a.records:.2f} s per record, {size / dt:.0f} MiB/s)")


if __name__ == "__main__":
    main()
