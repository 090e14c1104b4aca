"""meshgnn render: PNG pictures / animations of a field from rollout output (off-screen, pyvista).

Examples:
  meshgnn render out/rollout.pvd --field co2 --out co2.png
  meshgnn render out/rollout.pvd --field co2 --compare --slice x --gif co2.gif
"""
from __future__ import annotations


def add_arguments(p):
    p.add_argument("source", help="a rollout .pvd or .vtkhdf series, or one .vtu / .pvtu file")
    p.add_argument("--field", required=True, help="point field to show (vector fields: magnitude)")
    p.add_argument("--out", default=None, help="PNG to write (default: <source folder>/<field>.png)")
    p.add_argument("--step", type=int, default=-1,
                   help="rollout step to show (>= 0: the step number in the file names; < 0: from the end, "
                        "-1 = last; default -1)")
    p.add_argument("--time", type=float, default=None, help="show the frame nearest this time (overrides --step)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--slice", default=None, choices=["auto", "x", "y", "z"],
                       help="slice normal through the mesh centre (default view: auto = plane through the long "
                            "axis, normal along the shortest extent)")
    where.add_argument("--clip", default=None, choices=["auto", "x", "y", "z"],
                       help="instead of a slice, clip the mesh by the plane with this normal and show it in 3D")
    where.add_argument("--surface", action="store_true", help="show the whole outer surface")
    p.add_argument("--compare", action="store_true",
                   help="predicted | reference | error side by side (needs <field>_ref; error from <field>_err)")
    p.add_argument("--component", type=int, default=None, help="component of a vector field (default: magnitude)")
    p.add_argument("--clim", type=float, nargs=2, metavar=("LO", "HI"), default=None,
                   help="colour range of the values (default: the frame's; animations: the whole series')")
    p.add_argument("--cmap", default="viridis", help="matplotlib colour map name (default viridis)")
    p.add_argument("--size", type=int, nargs=2, metavar=("W", "H"), default=None,
                   help="image size in pixels (default 1024 768, or 1800 600 with --compare)")
    p.add_argument("--gif", default=None,
                   help="also write an animation of every frame (.gif; .mp4 if ffmpeg is installed)")
    p.add_argument("--fps", type=float, default=5.0, help="animation frames per second (default 5)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run(args) -> int:
    from pathlib import Path

    from ..render import render_series

    view, axis = "slice", args.slice or "auto"
    if args.clip:
        view, axis = "clip", args.clip
    elif args.surface:
        view = "surface"
    out_png = Path(args.out) if args.out else Path(args.source).parent / f"{args.field}.png"
    res = render_series(args.source, args.field, out_png, step=args.step, time=args.time, animation=args.gif,
                        view=view, axis=axis, compare=args.compare, component=args.component, clim=args.clim,
                        window_size=tuple(args.size) if args.size else None, cmap=args.cmap, fps=args.fps,
                        progress=args.progress)
    for k, v in res.items():
        print(f"{k}: {v}")
    return 0
