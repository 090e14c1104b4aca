"""meshgnn partition: cut a dataset's mesh graph into parts with halos and write ``<dataset>.parts.h5``.

The halo depth defaults to the receptive field of one time step, ``layers x stages`` of the integrator, so each
part's core outputs are exact without communication (docs/design.md, "Exactness").
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..errors import InputError, MeshgnnError

from ..config import TrainConfig

DEFAULT_LAYERS = TrainConfig.layers              # what `meshgnn train` uses when not told
DEFAULT_INTEGRATOR = TrainConfig.integrator


def _int_at_least(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1, "a positive integer")


def _halo(text: str):
    return "auto" if text == "auto" else _int_at_least(text, 0, "'auto' or a hop count >= 0")


def add_arguments(p):
    p.add_argument("dataset", metavar="DATASET.h5", help="a meshgnn dataset (its mesh graph is partitioned)")
    p.add_argument("--parts", "-P", type=_positive_int, required=True, help="number of parts P (1 <= P <= nodes)")
    p.add_argument("--method", choices=("metis", "rcb"), default="metis",
                   help="metis: minimal edge cut (pymetis); rcb: recursive coordinate bisection of the points "
                        "(default: metis)")
    p.add_argument("--halo", type=_halo, default="auto",
                   help="halo depth in hops, or 'auto' = layers x integrator stages (default: auto)")
    p.add_argument("--layers", type=_positive_int, default=None,
                   help=f"message-passing layers of the model, for --halo auto (default: {DEFAULT_LAYERS}, the "
                        "default model of `meshgnn train`; the assumption is reported)")
    p.add_argument("--integrator", default=None,
                   help="Runge-Kutta method the model is stepped with, for --halo auto: euler, heun, midpoint, "
                        f"heun3, ssprk3, rk4 or a JSON tableau (default: {DEFAULT_INTEGRATOR}, as `meshgnn train`)")
    p.add_argument("--out", "-o", default=None,
                   help="output part store (default: <dataset stem>.parts.h5 beside the dataset)")
    p.add_argument("--seed", type=lambda t: _int_at_least(t, 0, "a seed >= 0"), default=0,
                   help="METIS random seed (default: 0)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def default_store_path(dataset) -> Path:
    """``<dir>/<stem>.parts.h5`` for ``<dir>/<stem>.h5``."""
    d = Path(dataset)
    return d.with_name(d.stem + ".parts.h5")


def exact_halo(layers: int, integrator: str) -> tuple[int, int]:
    """``(halo, stages)``: the hops one step of ``layers`` layers under ``integrator`` reaches."""
    from meshgnn.integrators import get_method, receptive_field_hops

    try:
        return receptive_field_hops(layers, integrator), get_method(integrator).stages
    except (ValueError, OSError) as e:
        raise InputError("--integrator", None, str(e)) from None


def assumed_model(args) -> str | None:
    """Fill ``args.layers`` / ``args.integrator`` left out with the training defaults; say which were assumed."""
    assumed = []
    if args.layers is None:
        args.layers = DEFAULT_LAYERS
        assumed.append(f"--layers {DEFAULT_LAYERS}")
    if args.integrator is None:
        args.integrator = DEFAULT_INTEGRATOR
        assumed.append(f"--integrator {DEFAULT_INTEGRATOR}")
    return " ".join(assumed) or None


def run(args) -> int:
    from meshgnn.decomposition import format_stats, iter_parts, partition, partition_stats, write_part_store

    from ..io.check import check_quick
    from ..io.dataset import Dataset
    from ..progress import Progress
    from ..provenance import invocation

    assumed = assumed_model(args)
    needed, stages = exact_halo(args.layers, args.integrator)
    halo = needed if args.halo == "auto" else args.halo
    model = (f"layers x stages = {args.layers} x {stages} = {needed}"
             + (f" (assumed the training defaults {assumed}; pass the --layers and --integrator your model "
                "trains with)" if assumed else ""))
    out = Path(args.out) if args.out else default_store_path(args.dataset)
    if out.resolve() == Path(args.dataset).resolve():
        raise InputError(out, None, "refusing to overwrite the dataset with the part store; choose another --out")

    t0 = time.perf_counter()
    with Dataset(args.dataset) as ds:
        check_quick(ds)
        num_nodes = int(ds.num_nodes)
        if halo > num_nodes:
            raise InputError("--halo", None, f"expected 'auto' or a hop count <= {num_nodes} (the nodes of "
                                             f"{args.dataset}; deeper halos add nothing), got {halo}")
        edge_index = ds.edge_index()
        points = ds.points if args.method == "rcb" else None
    try:
        owner = partition(edge_index, num_nodes, args.parts, method=args.method, points=points, seed=args.seed)
    except ValueError as e:
        field, _, message = str(e).partition(": ")
        raise InputError(args.dataset, "--parts" if field == "nparts" else field, message) from None
    t_part = time.perf_counter() - t0

    meta = dict(dataset=str(Path(args.dataset).resolve()), layers=args.layers, integrator=args.integrator,
                stages=stages, seed=args.seed, exact=bool(halo >= needed), provenance=invocation())
    bar = Progress(args.parts, "halos", enabled=not args.quiet, every_s=None if args.quiet else 30,
                   stream=sys.stderr, unit="part")
    try:
        with bar:
            summaries = write_part_store(out, bar.track(iter_parts(edge_index, num_nodes, owner, halo)), owner, meta,
                                         edge_index=edge_index, method=args.method, halo=halo)
    except OSError as e:
        raise MeshgnnError(f"{out}: cannot write the part store ({e.strerror or str(e).splitlines()[0]})") from None
    if halo < needed:                                    # said once the part store is written
        print(f"meshgnn partition: warning: halo {halo} < {model}: core outputs will need halo refreshes "
              "between stages/layers to be exact", file=sys.stderr)
    elif assumed and args.halo == "auto":
        print(f"meshgnn partition: halo auto = {model}", file=sys.stderr)
    stats = partition_stats(summaries, edge_index, num_nodes, owner)
    print(format_stats(stats))
    print(f"{args.method} partition {t_part:.1f} s, total {time.perf_counter() - t0:.1f} s; "
          f"core outputs exact for {halo} hops ({'>=' if halo >= needed else '<'} {args.layers} layers x {stages} "
          f"stages); wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    from meshgnn.plan import partition_hint
    print(f"meshgnn partition: {partition_hint(num_nodes, int(edge_index.shape[1]), args.layers, stages, halo)}",
          file=sys.stderr)
    return 0
