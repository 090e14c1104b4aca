"""OpenFOAM data pipeline: gmsh tet mesh → gmshToFoam → icoFoam (+ scalar transport) → meshgnn dataset.

The case is a small 3D channel with a few spherical obstacles. Physical surface groups ``inlet``, ``outlet``,
``walls`` and ``obstacles`` become OpenFOAM patches (``walls``/``obstacles`` of type ``wall``); the flow is laminar
and transient (``icoFoam``) and a passive scalar ``s`` is carried by it through the ``scalarTransport`` function
object. Each trajectory uses another inlet velocity. Runs serially or in parallel (``decomposePar`` with method
``simple`` → ``mpirun -np N icoFoam -parallel`` → ``reconstructPar``). Cases are imported with
:mod:`meshgnn.io.importers.openfoam`, node types taken from the patches.

Case templates live in ``data/openfoam/channel`` with ``@@NAME@@`` markers.
"""
from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from importlib.resources import files
from pathlib import Path

from ..errors import MeshgnnError

# data/ installs as the package meshgnn.data (pyproject.toml): the same lookup in a checkout and in a wheel
TEMPLATE_DIR = Path(str(files("meshgnn.data"))) / "openfoam" / "channel"
FOAM_BASHRC_CANDIDATES = ("/usr/share/openfoam/etc/bashrc", "/usr/lib/openfoam/openfoam/etc/bashrc",
                          "/opt/openfoam/etc/bashrc")
PATCHES = ("inlet", "outlet", "walls", "obstacles")
WALL_PATCHES = ("walls", "obstacles")

# Channel geometry (m): length along x, square cross-section, spheres (centre, radius).
CHANNEL = (1.0, 0.4, 0.4)
SPHERES = (((0.32, 0.20, 0.20), 0.08), ((0.62, 0.12, 0.25), 0.06), ((0.62, 0.28, 0.15), 0.06))
# Empirical: a tet mesh with max element size h has about NODES_PER_VOLUME_H3 * V / h^3 nodes.
NODES_PER_VOLUME_H3 = 1.6


def foam_bashrc() -> str | None:
    """Path of the OpenFOAM ``etc/bashrc`` (env ``FOAM_BASHRC`` first), or ``None`` when OpenFOAM is missing."""
    for cand in (os.environ.get("FOAM_BASHRC"), *FOAM_BASHRC_CANDIDATES):
        if cand and Path(cand).is_file():
            return cand
    return None


def foam_missing_reason() -> str | None:
    """Why the OpenFOAM pipeline cannot run here (``None`` when it can)."""
    if foam_bashrc() is None:
        return ("OpenFOAM not found (no etc/bashrc; install with `apt-get install openfoam` "
                "or set FOAM_BASHRC)")
    probe = foam_run(Path(tempfile.gettempdir()),
                     ["sh", "-c", "command -v icoFoam gmshToFoam decomposePar reconstructPar"], check=False)
    if probe.returncode != 0:
        return "OpenFOAM environment found but icoFoam/gmshToFoam/decomposePar/reconstructPar are not on its PATH"
    return None


# Sources the bashrc given as $1 (with no positional arguments: OpenFOAM's bashrc reads them as settings), then
# runs the remaining arguments as one command. Paths travel as arguments, never inside the script text.
_FOAM_SCRIPT = 'rc="$1"; shift; cmd=("$@"); set --; source "$rc" >/dev/null 2>&1; exec "${cmd[@]}"'


def foam_command(bashrc: str, argv: list[str]) -> list[str]:
    """The ``bash`` argument list that runs ``argv`` with OpenFOAM's environment (no shell string of a path)."""
    return ["bash", "-c", _FOAM_SCRIPT, "meshgnn-foam", str(bashrc), *[str(a) for a in argv]]


def foam_run(case: Path, argv: list[str], log: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run the command ``argv`` (a list; no shell) with OpenFOAM's bashrc sourced, in folder ``case``.

    On failure (``check``) raises :class:`MeshgnnError` naming the command, the log and its last line.
    """
    bashrc = foam_bashrc()
    if bashrc is None:
        raise MeshgnnError(foam_missing_reason())
    command = shlex.join(str(a) for a in argv)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "VIRTUAL_ENV"))}
    env["OMPI_ALLOW_RUN_AS_ROOT"] = env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    # System tools first: a Python venv's own mpirun must not launch OpenFOAM's system-MPI binaries.
    env["PATH"] = "/usr/bin:/bin:" + env.get("PATH", "")
    proc = subprocess.run(foam_command(bashrc, argv), capture_output=True, text=True, env=env, cwd=case)
    if log is not None:
        with open(log, "a") as f:
            f.write(f"$ {command}\n{proc.stdout}{proc.stderr}\n")
    if check and proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
        fatal = [ln for ln in lines if "FATAL" in ln or "Error" in ln or "error" in ln]
        last = (fatal or lines or ["(no output)"])[-1]
        raise MeshgnnError(f"{case}: `{argv[0]}` failed (exit {proc.returncode}): {last}"
                           + (f" — see {log}" if log else ""))
    return proc


def mesh_size_for(nodes: int) -> float:
    """Max tet edge length giving about ``nodes`` mesh nodes in the channel."""
    L, W, H = CHANNEL
    volume = L * W * H - sum(4.0 / 3.0 * math.pi * r ** 3 for _, r in SPHERES)
    return (NODES_PER_VOLUME_H3 * volume / max(int(nodes), 50)) ** (1.0 / 3.0)


def channel_mesh(msh_path: Path, nodes: int = 3000) -> int:
    """Mesh the channel with gmsh (tets, MSH 2.2 ASCII, physical groups per patch); return the node count."""
    import gmsh

    L, W, H = CHANNEL
    h = mesh_size_for(nodes)
    gmsh.initialize(["-noenv"])
    try:
        gmsh.option.setNumber("General.Terminal", 0)
        gmsh.option.setNumber("General.NumThreads", 1)
        gmsh.model.add("channel")
        occ = gmsh.model.occ
        box = occ.addBox(0, 0, 0, L, W, H)
        balls = [occ.addSphere(*c, r) for c, r in SPHERES]
        fluid, _ = occ.cut([(3, box)], [(3, b) for b in balls])
        occ.synchronize()
        groups: dict[str, list[int]] = {p: [] for p in PATCHES}
        eps = 1e-6
        for dim, tag in gmsh.model.getBoundary(fluid, oriented=False):
            x0, y0, z0, x1, y1, z1 = gmsh.model.getBoundingBox(dim, tag)
            if x1 < eps:
                groups["inlet"].append(tag)
            elif x0 > L - eps:
                groups["outlet"].append(tag)
            elif min(x1 - x0, y1 - y0, z1 - z0) < eps:
                groups["walls"].append(tag)
            else:
                groups["obstacles"].append(tag)
        for name, tags in groups.items():
            gmsh.model.addPhysicalGroup(2, tags, name=name)
        gmsh.model.addPhysicalGroup(3, [t for _, t in fluid], name="fluid")
        gmsh.option.setNumber("Mesh.MeshSizeMax", h)
        gmsh.option.setNumber("Mesh.MeshSizeMin", h / 2)
        gmsh.option.setNumber("Mesh.MeshSizeFromCurvature", 0)
        gmsh.option.setNumber("Mesh.Algorithm3D", 1)
        gmsh.option.setNumber("Mesh.RandomSeed", 1)
        gmsh.model.mesh.generate(3)
        gmsh.model.mesh.optimize("Netgen")
        gmsh.option.setNumber("Mesh.MshFileVersion", 2.2)
        gmsh.option.setNumber("Mesh.Binary", 0)
        gmsh.option.setNumber("Mesh.SaveAll", 0)
        gmsh.write(str(msh_path))
        return len(gmsh.model.mesh.getNodes()[0])
    finally:
        gmsh.finalize()


def set_wall_patches(boundary_path: Path, wall_patches=WALL_PATCHES) -> None:
    """Make ``wall_patches`` of type ``wall`` in ``constant/polyMesh/boundary`` (gmshToFoam writes ``patch``)."""
    text = Path(boundary_path).read_text()
    for name in wall_patches:
        block = re.compile(rf"(\n\s*{re.escape(name)}\s*\{{)(.*?)(\}})", re.S)
        m = block.search(text)
        if m is None:
            raise MeshgnnError(f"{boundary_path}: patch '{name}' not found (gmsh physical groups missing?)")
        body = re.sub(r"\btype\s+\w+;", "type wall;", m.group(2))
        body = re.sub(r"\n\s*(inGroups|physicalType)\s+[^;]*;", "", body)
        text = text[:m.start(2)] + body + text[m.end(2):]
    Path(boundary_path).write_text(text)


def write_case(case: Path, u_in: float, end_time: float, delta_t: float, write_every: int, nprocs: int = 1,
               nu: float = 1e-3, diffusivity: float = 1e-3) -> None:
    """Copy the template into ``case`` with its ``@@NAME@@`` markers filled in."""
    if not TEMPLATE_DIR.is_dir():
        raise MeshgnnError(f"{TEMPLATE_DIR}: OpenFOAM case template not found (an incomplete installation: "
                           "reinstall meshgnn)")
    values = {"U_IN": f"{u_in:.8g}", "END_TIME": f"{end_time:.8g}", "DELTA_T": f"{delta_t:.8g}",
              "WRITE_EVERY": str(int(write_every)), "NPROCS": str(int(nprocs)), "NU": f"{nu:.8g}",
              "DIFFUSIVITY": f"{diffusivity:.8g}"}
    for src in TEMPLATE_DIR.rglob("*"):
        if src.is_file():
            dst = case / src.relative_to(TEMPLATE_DIR)
            dst.parent.mkdir(parents=True, exist_ok=True)
            text = src.read_text()
            for key, val in values.items():
                text = text.replace(f"@@{key}@@", val)
            dst.write_text(text)


def run_case(case: Path, msh_path: Path, parallel: int = 1) -> None:
    """Convert the gmsh mesh, make the wall patches walls and solve (decomposed when ``parallel`` > 1)."""
    log = case / "log.meshgnn"
    foam_run(case, ["gmshToFoam", str(msh_path)], log)
    set_wall_patches(case / "constant" / "polyMesh" / "boundary")
    solve(case, parallel)


def solve(case: Path, parallel: int = 1) -> None:
    """Run icoFoam in ``case``; with ``parallel`` > 1: decomposePar (method simple, slabs along x), mpirun
    ``-np parallel icoFoam -parallel``, reconstructPar."""
    log = case / "log.meshgnn"
    if parallel > 1:
        set_nprocs(case, parallel)
        foam_run(case, ["decomposePar", "-force"], log)
        mpirun = "/usr/bin/mpirun" if Path("/usr/bin/mpirun").exists() else "mpirun"
        foam_run(case, [mpirun, "--allow-run-as-root", "--oversubscribe", "-np", str(int(parallel)), "icoFoam",
                        "-parallel"], log)
        foam_run(case, ["reconstructPar", "-newTimes"], log)
    else:
        foam_run(case, ["icoFoam"], log)


def set_nprocs(case: Path, nprocs: int) -> None:
    """Write ``system/decomposeParDict`` for ``nprocs`` slabs along the channel (method simple)."""
    text = (TEMPLATE_DIR / "system" / "decomposeParDict").read_text().replace("@@NPROCS@@", str(int(nprocs)))
    (case / "system" / "decomposeParDict").write_text(text)


def time_stepping(h: float, u_max: float, steps: int, output_dt: float | None, courant: float = 0.15):
    """Solver Δt, output interval and sub-steps per output so that the Courant number stays below ``courant``.

    Returns ``(delta_t, write_every, end_time, output_dt)``.
    """
    stable = courant * h / max(u_max, 1e-12)
    if output_dt is None:
        output_dt = 0.4 * CHANNEL[0] / max(u_max, 1e-12) / max(steps, 1) * 2.0
    write_every = max(1, math.ceil(output_dt / stable))
    delta_t = output_dt / write_every
    return delta_t, write_every, delta_t * write_every * steps, output_dt


def run_openfoam_dataset(out, nodes: int = 3000, trajectories: int = 2, steps: int = 10, velocities=None,
                         parallel: int = 1, workdir=None, keep: bool = False, output_dt: float | None = None,
                         state=("U", "p", "s"), progress: bool = True) -> Path:
    """Mesh, solve and import ``trajectories`` OpenFOAM runs of the channel into the dataset ``out``.

    Args:
        out: dataset path (HDF5), written atomically.
        nodes: approximate number of mesh nodes.
        trajectories: number of runs; each has another inlet velocity.
        steps: written time steps after the initial one (each trajectory has ``steps + 1`` states).
        velocities: inlet speeds (m/s), one per trajectory; default evenly spaced in [0.5, 1.5].
        parallel: MPI ranks per run (``decomposePar`` method simple); 1 runs serially.
        workdir: where the case folders go (default: a temporary folder).
        keep: keep the case folders (otherwise removed after the import).
        output_dt: time between written steps (default: the flow crosses about 80 % of the channel in total).
        state: state fields of the dataset (``U`` velocity, ``p`` kinematic pressure, ``s`` scalar).
    Returns:
        the dataset path.
    """
    from ..io.importers import ImportOptions, import_series

    reason = foam_missing_reason()
    if reason:
        raise MeshgnnError(reason)
    if velocities is None:
        velocities = [0.5 + (1.0 * i / max(trajectories - 1, 1) if trajectories > 1 else 0.5)
                      for i in range(trajectories)]
    velocities = [float(v) for v in velocities]
    if len(velocities) != trajectories:
        raise MeshgnnError(f"--velocities: expected {trajectories} values, got {len(velocities)}")
    if parallel < 1:
        raise MeshgnnError(f"--parallel: expected a positive number of ranks, got {parallel}")
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="meshgnn-openfoam-"))
    if re.search(r"[\s'\";]", str(root.resolve())):   # OpenFOAM's fileName rejects these (not a shell issue)
        raise MeshgnnError(f"{root}: OpenFOAM cannot work in a folder whose path holds spaces, quotes or ';'; "
                           "choose another --workdir")
    root.mkdir(parents=True, exist_ok=True)
    try:
        msh = root / "channel.msh"
        channel_mesh(msh, nodes)
        h = mesh_size_for(nodes)
        u_max = 2.0 * max(velocities)  # flow speeds up between the obstacles
        delta_t, write_every, end_time, out_dt = time_stepping(h, u_max, steps, output_dt)
        cases = []
        for i, u in enumerate(velocities):
            case = root / f"case_{i:03d}"
            if case.exists():
                shutil.rmtree(case)
            write_case(case, u, end_time, delta_t, write_every, parallel)
            _progress(progress, f"OpenFOAM run {i + 1}/{trajectories}: U_in={u:g} m/s, {steps} steps of "
                                f"{out_dt:.4g} s ({write_every} solver steps each), {parallel} rank(s)")
            run_case(case, msh, parallel)
            cases.append(case)
        # boundary conditions per field come from the case (0/U, 0/p, 0/s: fixedValue/noSlip -> prescribed)
        options = ImportOptions(fmt="openfoam", state=list(state), units={"U": "m/s", "p": "m^2/s^2", "s": "1"})
        params = [{"inlet_velocity": u, "solver": "icoFoam", "parallel": parallel} for u in velocities]
        import_series([str(c) for c in cases], out, options, parameters=params,
                      trajectory_ids=[str(i) for i in range(trajectories)],
                      provenance={"generator": "meshgnn.generate.openfoam", "solver": "icoFoam+scalarTransport",
                                  "mesh": "gmsh tet channel with spheres", "nodes_target": nodes},
                      report=(lambda s: _progress(progress, s)))
        return Path(out)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def _progress(enabled: bool, msg: str) -> None:
    if enabled:
        import sys
        print(msg, file=sys.stderr)
