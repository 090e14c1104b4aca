"""meshgnn import SOURCE [SOURCE ...] OUT.h5 — solver output to a dataset (one trajectory per SOURCE).

Examples:
    meshgnn import run.pvd flow.h5 --state U,p --units U=m/s,p=Pa
    meshgnn import cases/case_0 cases/case_1 flow.h5 --format openfoam --static nut
    meshgnn import 'tables/step_*.csv' flow.h5 --mesh mesh.msh --dt 0.01 --tolerance 1e-6
    meshgnn import cylinder_flow/ cyl.h5 --split valid --limit 1 --state velocity,pressure
See docs/importing.md for formats, node types and the mapping file.
"""
from __future__ import annotations

from ..errors import MeshgnnError

FORMATS = ("auto", "vtu", "pvd", "vtm", "meshio", "openfoam", "csv", "deepmind")


def add_arguments(p):
    p.add_argument("paths", nargs="+", metavar="SOURCE... OUT.h5",
                   help="one or more sources (a .pvd, .xdmf, .vtm.series / .vtm multi-block series, OpenFOAM "
                        "case folder, folder or quoted glob of .vtu/.vtm/.csv files), each one trajectory on the same mesh, then the output dataset")
    p.add_argument("--format", default="auto", choices=FORMATS,
                   help="source format (default: detect from names: .pvd, .vtu/.vtk, .vtm/.vtm.series, .csv, "
                        "system/controlDict, "
                        "meta.json (deepmind: a MeshGraphNets tfrecord dataset folder), else meshio)")
    p.add_argument("--split", default="train", help="deepmind: the split to read, <split>.tfrecord (default: train)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="deepmind: import N trajectories (records; default: all)")
    p.add_argument("--skip", type=int, default=0, metavar="K", help="deepmind: start at record K (default: 0)")
    p.add_argument("--mesh", default=None, help="for csv: the mesh the table points belong to (any "
                                                "meshio-readable file)")
    p.add_argument("--state", default=None, help="comma-separated state fields, in order (default: every float "
                                                 "point field not listed as --static)")
    p.add_argument("--static", default=None, help="comma-separated static fields (taken from the first step)")
    p.add_argument("--units", default=None, help="units per field, e.g. U=m/s,p=Pa (default: from CSV headers, "
                                                 "else empty)")
    p.add_argument("--node-types", default=None, metavar="FIELD_OR_MAPPING",
                   help="a point-data column / cell-data region field holding node types, or NAME=TYPE pairs "
                        "(patch or group globs, or label values), e.g. 'in*=inlet,cyl=obstacle' "
                        "(default: OpenFOAM patches / gmsh physical names by name patterns, else all interior)")
    p.add_argument("--mapping", default=None, metavar="MAP.json|MAP.toml",
                   help="mapping file with state/static/units/dt/dirichlet/node_types (flags override it)")
    p.add_argument("--dirichlet", default=None, help="comma-separated node types whose state values the data "
                                                     "prescribes (default: inlet)")
    p.add_argument("--dt", type=float, default=None, help="time step; required when the files carry no times, "
                                                          "replaces the file times otherwise")
    p.add_argument("--trajectory", default=None, metavar="ID[,ID...]",
                   help="trajectory ids, one per source (default: 0, 1, ...)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="for csv: max distance between a mesh node and its table point (default: 1e-6 of the "
                        "mesh's bounding-box diagonal)")
    p.add_argument("--drop-unreferenced", action="store_true",
                   help="drop nodes used by no cell (default: such nodes are an error)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--point-data", dest="cell_data", action="store_false", default=False,
                   help="OpenFOAM: nodes are mesh points, cell values interpolated to them (default)")
    g.add_argument("--cell-data", dest="cell_data", action="store_true",
                   help="OpenFOAM: nodes are cell centres holding the cell values, edges join face neighbours")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from ..io.importers import build_options, import_series
    from ..io.importers.deepmind import import_deepmind, is_deepmind

    if len(args.paths) < 2:
        raise MeshgnnError("import: expected at least one SOURCE and the output OUT.h5")
    *sources, out = args.paths
    ids = [s.strip() for s in args.trajectory.split(",")] if args.trajectory else None
    deepmind = args.format == "deepmind" or (args.format == "auto" and len(sources) == 1 and is_deepmind(sources[0]))
    options = build_options(fmt=args.format, mapping=args.mapping, state=args.state, static=args.static,
                            units=args.units, node_types=args.node_types, dt=args.dt, dirichlet=args.dirichlet,
                            mesh=args.mesh, tolerance=args.tolerance, drop_unreferenced=args.drop_unreferenced,
                            cell_data=args.cell_data)
    from ..provenance import invocation

    provenance = invocation()        # the full command line and every option (meshgnn/provenance.py)
    if deepmind:
        if len(sources) != 1:
            raise MeshgnnError("import --format deepmind: expected one dataset folder (with meta.json) and OUT.h5")
        import_deepmind(sources[0], out, options, split=args.split, limit=args.limit, skip=args.skip,
                        trajectory_ids=ids, progress=not args.no_progress, provenance=provenance)
        return 0
    import_series(sources, out, options, trajectory_ids=ids, progress=not args.no_progress, provenance=provenance)
    return 0
