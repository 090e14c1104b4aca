"""LayerNorm of MGN latents: ``torch.nn.LayerNorm`` against ``meshgnn.model.mgn.LayerNorm`` (same function; on CUDA
rows of <= 64 features take a ``var_mean`` + fused-affine path, see its docstring).

For each width F it times, as CUDA-event medians (or wall on CPU) of ``--repeats`` runs, the forward (under
``torch.no_grad()``, where meshgnn's narrow path applies) and forward+backward (autograd: meshgnn's LayerNorm then
runs torch's kernels) on an ``(--rows, F)`` fp32 tensor, and prints the ratio ``torch / ours`` and the effective
bandwidth of the forward (read x, write y).

    python benchmarks/bench_layernorm.py --device cuda --rows 14000000 --widths 32 64 128
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from meshgnn.model.mgn import LayerNorm


def timed(fn, device: str) -> float:
    if device == "cpu":
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}, rows {args.rows:,}, median of {args.repeats}")
    print(f"{'F':>4s} {'pass':>8s} {'torch ms':>9s} {'ours ms':>9s} {'torch/ours':>10s} {'ours GB/s':>9s}")
    for F in args.widths:
        x = torch.randn(args.rows, F, device=dev, requires_grad=True)
        g = torch.randn(args.rows, F, device=dev)
        ref, ours = torch.nn.LayerNorm(F).to(dev), LayerNorm(F).to(dev)
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
        for pas in ("fwd", "fwd+bwd"):
            def run(m):
                if pas == "fwd":
                    with torch.no_grad():
                        m(x)
                else:
                    m(x).backward(g)
            t = {}
            for label, m in (("torch", ref), ("ours", ours)):
                run(m)
                t[label] = statistics.median(timed(lambda: run(m), args.device) for _ in range(args.repeats))
            bw = 2 * x.numel() * 4 / t["ours"] / 1e9 if pas == "fwd" else float("nan")
            print(f"{F:4d} {pas:>8s} {t['torch'] * 1e3:9.3f} {t['ours'] * 1e3:9.3f} {t['torch'] / t['ours']:10.2f} "
                  f"{bw:9.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
