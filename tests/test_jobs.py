"""jobs/: the launch scripts parse, pass shellcheck (when installed) and run end to end on a tiny dataset.

* ``jobs/train_mpirun.sh`` with RANKS=2: partitions (the store is missing), trains under the real pip-installed
  ``mpirun``, rolls out -> a loadable checkpoint at the requested step and a ``rollout.pvd`` with every frame.
* ``jobs/train_slurm.sbatch`` under stand-in ``srun``/``scontrol`` (``srun`` -> ``mpirun -n $SLURM_NTASKS``):
  a run stopped early (``--stop-at``, the path SIGTERM takes) requeues itself, and the requeued run resumes
  from the checkpoint to the last step and rolls out.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, VENV_BIN, mpi_env, mpirun_cmd, write_box_dataset

JOBS = ROOT / "jobs"
SCRIPTS = sorted(p for p in JOBS.iterdir() if p.suffix in (".sh", ".sbatch"))
SMALL = "--latent 16 --hidden-layers 1 --progress false"


def test_scripts_exist():
    names = {p.name for p in SCRIPTS}
    assert {"train_mpirun.sh", "rollout_mpirun.sh", "train_slurm.sbatch"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script):
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    r = subprocess.run([exe, "-s", "bash", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_slurm_script_has_no_hard_coded_site_settings():
    text = (JOBS / "train_slurm.sbatch").read_text()
    active = [ln for ln in text.splitlines() if ln.startswith("#SBATCH")]
    assert not any("--account" in ln or "--partition" in ln for ln in active)
    assert any("--signal=TERM@" in ln for ln in active) and any("--requeue" in ln for ln in active)
    assert "srun --mpi=pmix" in text and "--resume" in text
    assert "/home/" not in text and "/scratch/" not in text.split("set -euo")[1]


def job_env(**kw) -> dict:
    env = mpi_env()
    env.pop("OMP_NUM_THREADS", None)             # the script derives it (cores / ranks)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env['PATH']}"
    env.update({k: str(v) for k, v in kw.items()})
    return env


def steps_in(checkpoint: Path) -> int:
    from meshgnn.checkpoint import load
    return int(load(checkpoint)["trainer"]["step"])


def pvd_frames(pvd: Path) -> list:
    from meshgnn.io.vtk import read_pvd
    return list(read_pvd(pvd))


@pytest.mark.mpi
def test_train_mpirun_end_to_end(tmp_path):
    mpirun_cmd(2)                                  # skips when mpirun is missing
    ds = write_box_dataset(tmp_path / "box.h5", n=6, trajectories=2, steps=4)
    env = job_env(DATASET=ds, RANKS=2, STEPS=3, LAYERS=2, INTEGRATOR="heun", OUT=tmp_path / "run",
                  EXTRA=SMALL, ROLLOUT_EXTRA="--render false --progress false")
    r = subprocess.run(["bash", str(JOBS / "train_mpirun.sh")], capture_output=True, text=True, env=env,
                       timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert (tmp_path / "box.parts.h5").exists()                       # partitioned: the store was missing
    assert "halo 4" in r.stdout or "exact for 4 hops" in r.stdout     # 2 layers x 2 heun stages
    assert f"2 ranks x {max(1, len(os.sched_getaffinity(0)) // 2)} threads" in r.stdout   # cores / ranks
    assert steps_in(tmp_path / "run" / "checkpoint.pt") == 3
    frames = pvd_frames(tmp_path / "run" / "rollout" / "rollout.pvd")
    assert len(frames) == 4 and all(Path(f).exists() for _, f in frames)   # initial frame + 3 steps


def test_train_mpirun_reports_a_missing_dataset(tmp_path):
    r = subprocess.run(["bash", str(JOBS / "train_mpirun.sh")], capture_output=True, text=True, timeout=60,
                       env=job_env(DATASET=tmp_path / "nope.h5"), cwd=tmp_path)
    assert r.returncode == 2 and "nope.h5: no such file" in r.stderr


def stub(path: Path, body: str) -> None:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.mark.mpi
@pytest.mark.slow
def test_slurm_script_requeues_and_resumes(tmp_path):
    """Stand-in srun/scontrol; the first run stops early (as under SIGTERM) and requeues, the second resumes."""
    launcher = " ".join(mpirun_cmd(2)[:-2])
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    stub(bin_ / "srun", 'while [[ "$1" == --* ]]; do shift; done\n'
                        f'exec {launcher} -n "$SLURM_NTASKS" "$@"\n')
    stub(bin_ / "scontrol", 'if [[ "$1" == requeue ]]; then echo "$2" >> "$REQUEUE_LOG"; exit 0; fi\n'
                            'if [[ "$1 $2" == "show hostnames" ]]; then echo localhost; exit 0; fi\nexit 1\n')
    ds = write_box_dataset(tmp_path / "box.h5", n=6, trajectories=2, steps=4)
    requeues = tmp_path / "requeued"
    base = dict(DATASET=ds, STEPS=3, LAYERS=2, INTEGRATOR="heun", OUT=tmp_path / "run", SLURM_JOB_ID=42,
                SLURM_NTASKS=2, SLURM_JOB_NUM_NODES=1, SLURM_JOB_NODELIST="localhost", SLURM_CPUS_PER_TASK=1,
                REQUEUE_LOG=requeues)
    env = job_env(**base, EXTRA=SMALL + " --stop-at 2", SLURM_RESTART_COUNT=0, ROLLOUT="none")
    env["PATH"] = f"{bin_}{os.pathsep}{env['PATH']}"
    cmd = ["bash", str(JOBS / "train_slurm.sbatch")]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert requeues.read_text().split() == ["42"]
    assert steps_in(tmp_path / "run" / "checkpoint.pt") == 2

    env.update(EXTRA=SMALL, SLURM_RESTART_COUNT="1", ROLLOUT="parts")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "--resume" in r.stdout and requeues.read_text().split() == ["42"]   # resumed, not requeued again
    assert steps_in(tmp_path / "run" / "checkpoint.pt") == 3
    assert len(pvd_frames(tmp_path / "run" / "rollout" / "rollout.pvd")) == 4
