"""Frame write speed of meshgnn.io.vtk (numpy raw-appended .vtu, VTKHDF append) against meshio and pyvista.

    .venv/bin/python benchmarks/bench_vtk_write.py --n 100      # ~1M nodes, ~5.8M tets
Writes one rollout frame (3 state fields x pred/ref/err as float32 + node_type) per writer into a temp folder,
three repeats, prints the median seconds, MB written and the ratio to meshgnn's writer.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="points per box edge (N = n^3)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats per writer (median reported)")
    ap.add_argument("--dir", default=None, help="folder to write into (default: a temp folder)")
    a = ap.parse_args()

    from meshgnn.io.vtk import RolloutWriter, VtuMesh, write_vtu
    from meshgnn.meshes import box_tets

    pts, tets = box_tets(a.n)
    N = len(pts)
    rng = np.random.default_rng(0)
    data = {f"{f}{s}": rng.random(N, dtype=np.float32) for f in ("co2", "loading", "temp") for s in ("", "_ref", "_err")}
    node_type = np.zeros(N, np.int32)
    print(f"N = {N:,} nodes, {len(tets):,} tets, {len(data)} float32 fields + node_type")
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        d = Path(d)
        mesh = VtuMesh(pts, {"tetra": tets})

        def ours():
            write_vtu(d / "ours.vtu", mesh, {"node_type": node_type, **data})

        hdf = RolloutWriter(d / "h", pts, {"tetra": tets}, formats=("vtkhdf",), static_point_data={"node_type": node_type})
        step = iter(range(10**6))

        def vtkhdf():
            hdf.write_step(next(step), 0.0, data)

        def meshio_():
            import meshio
            meshio.write(d / "meshio.vtu", meshio.Mesh(pts, [("tetra", tets)], point_data={"node_type": node_type, **data}),
                         binary=True, compression=None)

        def pyvista_():
            import pyvista as pv
            g = pv.UnstructuredGrid({pv.CellType.TETRA: tets}, pts)
            g.point_data["node_type"] = node_type
            for k, v in data.items():
                g.point_data[k] = v
            g.save(d / "pyvista.vtu", binary=True, compression=None)

        results = {}
        for name, fn, path in (("meshgnn .vtu", ours, d / "ours.vtu"), ("meshgnn vtkhdf (per frame)", vtkhdf, None),
                               ("meshio .vtu (binary, no zlib)", meshio_, d / "meshio.vtu"),
                               ("pyvista .vtu (binary, no zlib)", pyvista_, d / "pyvista.vtu")):
            ts = []
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            size = path.stat().st_size / 2**20 if path else float("nan")
            results[name] = (statistics.median(ts), size)
        hdf.close()
        base = results["meshgnn .vtu"][0]
        for name, (t, size) in results.items():
            print(f"{name:34s} {t:7.2f} s  {size:8.0f} MB  x{t / base:5.2f} of meshgnn .vtu")


if __name__ == "__main__":
    main()
