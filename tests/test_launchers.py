"""One launcher detector: mpirun (Open MPI, MPICH/Hydra, PMIx), srun and torchrun give one job; an environment
of several processes it cannot join is refused in one line; `torchrun --nproc_per_node 2 meshgnn train` equals
one-process training (the tolerance of tests/test_train_mpi.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from meshgnn.distributed import Launch, choose_device, detect_launcher, first_host, init_distributed
from meshgnn.errors import MeshgnnError

OPEN_MPI = {"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
            "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}
HYDRA = {"PMI_SIZE": "8", "PMI_RANK": "5", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "4"}
SRUN_PMIX = {"PMIX_RANK": "2", "SLURM_STEP_NUM_TASKS": "6", "SLURM_PROCID": "2", "SLURM_LOCALID": "2"}
TORCHRUN = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": "29511", "TORCHELASTIC_RUN_ID": "x"}
SRUN = {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
        "SLURM_STEP_TASKS_PER_NODE": "4(x2)", "SLURM_STEP_NODELIST": "gpu[007-008]", "SLURM_STEP_NUM_NODES": "2"}
SBATCH_SCRIPT = {"SLURM_JOB_ID": "77", "SLURM_NTASKS": "8", "SLURM_PROCID": "0", "SLURM_NODELIST": "gpu[007-008]"}


@pytest.mark.parametrize("env,want", [
    ({}, Launch()),
    (OPEN_MPI, Launch("mpi", 3, 4, 1, 2)),
    (HYDRA, Launch("mpi", 5, 8, 1, 4)),
    (SRUN_PMIX, Launch("mpi", 2, 6, 0, 0)),
    (TORCHRUN, Launch("torchrun", 1, 2, 1, 2)),
    (SRUN, Launch("slurm", 5, 8, 1, 4)),
    (SBATCH_SCRIPT, Launch()),                     # the batch script itself is one process, not a job step
    ({"OMPI_COMM_WORLD_SIZE": "1", "OMPI_COMM_WORLD_RANK": "0"}, Launch("mpi", 0, 1, 0, 0)),
    ({"WORLD_SIZE": "1", "RANK": "0"}, Launch()),
])
def test_detects_each_launcher(env, want):
    assert detect_launcher(env) == want


@pytest.mark.parametrize("env,names", [
    ({"WORLD_SIZE": "4"}, "RANK, MASTER_ADDR, MASTER_PORT"),
    ({"WORLD_SIZE": "4", "RANK": "1", "MASTER_PORT": "1"}, "MASTER_ADDR"),
    ({"JSM_NAMESPACE_SIZE": "4", "JSM_NAMESPACE_RANK": "0"}, "JSM_NAMESPACE_SIZE=4"),
    ({"PALS_RANKID": "3"}, "PALS_RANKID=3"),
    ({"LOCAL_RANK": "1"}, "LOCAL_RANK=1"),
])
def test_unknown_multi_process_environment_is_refused_in_one_line(env, names):
    with pytest.raises(MeshgnnError) as info:
        detect_launcher(env)
    msg = str(info.value)
    assert names in msg and "\n" not in msg


def test_a_single_jsrun_process_is_not_refused():
    assert detect_launcher({"JSM_NAMESPACE_SIZE": "1", "PALS_RANKID": "0"}) == Launch()


def test_first_host_of_a_slurm_hostlist():
    assert first_host("gpu[003-005,9],cpu1") == "gpu003"
    assert first_host("nid001234") == "nid001234"
    assert first_host("a1,b2") == "a1"
    assert first_host("rack[2-3]-n[01-04]") == "rack2-n01"


def test_init_distributed_refuses_before_touching_mpi():
    with pytest.raises(MeshgnnError, match="WORLD_SIZE=3"):
        init_distributed(env={"WORLD_SIZE": "3"})
    d = init_distributed(env={})
    assert (d.size, d.rank, d.backend) == (1, 0, "none")


def test_one_device_choice():
    assert choose_device("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        assert choose_device("auto", 3).type == "cuda"
        assert choose_device("cuda", 0) == torch.device("cuda", 0)
    else:
        assert choose_device("auto", 3) == torch.device("cpu")
        with pytest.raises(MeshgnnError, match="no CUDA device"):
            choose_device("cuda")
    with pytest.raises(MeshgnnError, match="--device"):
        choose_device("tpu")


# ------------------------------------------------------------------------------------------------ real torchrun
@pytest.mark.mpi
@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process(box_dataset, tmp_path):
    """`torchrun --nproc_per_node 2 meshgnn train` is ONE job of 2 ranks (not two single-rank trainings):
    float64 parameters equal one-process training on the same parts (1e-9 relative)."""
    from test_exactness import make_store
    from test_train import CLI_SMALL, SMALL, params
    from test_train_mpi import STEPS

    from meshgnn.train import TrainConfig, train

    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun not installed next to the interpreter")
    store = make_store(box_dataset, tmp_path, halo=2 * 2, nparts=4)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMI", "PMIX", "SLURM_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "meshgnn.cli", "train",
           str(box_dataset), "--parts", store, "--out", str(tmp_path / "tr"), "--steps", str(STEPS), "--dtype",
           "float64", "--integrator", "heun", "--noise-std", "0.02", *CLI_SMALL]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    one = train(TrainConfig(dataset=str(box_dataset), out=str(tmp_path / "r1"), steps=STEPS, dtype="float64",
                            integrator="heun", parts=store, **SMALL))
    torch.testing.assert_close(params(tmp_path / "tr" / "checkpoint.pt"), params(one["checkpoint"]),
                               rtol=1e-9, atol=1e-12)
    assert r.stdout.count('"bytes_allreduced"') == 1        # one job: only rank 0 reports
