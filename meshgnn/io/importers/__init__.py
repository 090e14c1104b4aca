"""Bring-your-own-data importers: solver output -> meshgnn dataset.

Readers turn one source (one trajectory) into a :class:`~.series.Series`; :func:`import_series` validates,
reports and writes any number of them (sharing one mesh) through :class:`~meshgnn.io.dataset.DatasetWriter`.

    from meshgnn.io.importers import build_options, import_series
    import_series(["run1.pvd", "run2.pvd"], "flow.h5", build_options(state="U,p", units="U=m/s"))
"""
from __future__ import annotations

from pathlib import Path

from ...errors import InputError
from .mapping import ImportOptions, NodeTypeRules, build_options
from .series import Frame, Series, import_series

FORMATS = ("auto", "vtu", "pvd", "vtm", "meshio", "openfoam", "csv")

__all__ = ["FORMATS", "Frame", "ImportOptions", "NodeTypeRules", "Series", "build_options", "detect_format",
           "import_series", "read_source"]


def detect_format(source: str) -> str:
    """Guess the format of ``source`` from its name and contents."""
    from .openfoam import is_case
    from .vtk_series import VTK_SUFFIXES, expand_files
    from .vtm_series import is_multiblock_source

    p = Path(source)
    if is_case(source):
        return "openfoam"
    suffix = p.suffix.lower()
    if suffix == ".pvd":
        return "pvd"
    if is_multiblock_source(source):
        return "vtm"
    if suffix == ".series":                    # run.vtu.series, run.vtp.series (ParaView JSON)
        return "vtu"
    if p.is_dir():
        kinds = {f.suffix.lower() for f in p.iterdir() if f.is_file()}
        if kinds & set(VTK_SUFFIXES):
            return "vtu"
        if ".csv" in kinds:
            return "csv"
        if kinds & {".xdmf", ".xmf", ".msh", ".med"}:
            return "meshio"
        raise InputError(source, None, "cannot tell the format of this folder (no .vtu/.csv/.xdmf files, "
                         "no system/controlDict); pass --format")
    if any(c in source for c in "*?["):
        files = expand_files(source, ())
        suffix = files[0].suffix.lower()
        if suffix == ".vtm":
            return "vtm"
    if suffix in VTK_SUFFIXES:
        return "vtu"
    if suffix in (".csv", ".txt", ".dat"):
        return "csv"
    if not p.exists() and not any(c in source for c in "*?["):
        raise InputError(source, None, "no such file or folder")
    return "meshio"


def read_source(source: str, options: ImportOptions) -> Series:
    """Read one source with the reader its format names."""
    from .csv_series import read_csv_series
    from .openfoam import read_openfoam
    from .vtk_series import read_meshio_series, read_vtk_series
    from .vtm_series import read_vtm_series

    fmt = options.fmt if options.fmt != "auto" else detect_format(source)
    if fmt not in FORMATS:
        raise InputError("--format", None, f"unknown format '{fmt}' (expected one of {', '.join(FORMATS)})")
    if options.cell_data and fmt != "openfoam":
        raise InputError(source, "--cell-data", "only OpenFOAM cases can be imported as cell data")
    if fmt == "openfoam":
        return read_openfoam(source, cell_data=options.cell_data)
    if fmt == "vtm":
        return read_vtm_series(source, options.tolerance)
    if fmt in ("vtu", "pvd"):
        return read_vtk_series(source, pvd=(fmt == "pvd") or None)
    if fmt == "csv":
        return read_csv_series(source, options.mesh, options.tolerance)
    return read_meshio_series(source)
