"""meshgnn.threads: per-rank threads from affinity and launcher environment, the busy-core sample, the CLI's
--threads and the OpenMP wait policy set before torch loads."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from meshgnn.cli import main
from meshgnn.errors import MeshgnnError
from meshgnn.threads import busy_cores, choose_threads, local_ranks, slurm_counts, usable_cores


def test_divides_cores_among_local_ranks():
    assert choose_threads(env={}, cores=8, busy=False).threads == 8
    assert choose_threads(env={"OMPI_COMM_WORLD_LOCAL_SIZE": "4"}, cores=8, busy=False).threads == 2
    assert choose_threads(env={"MPI_LOCALNRANKS": "3"}, cores=8, busy=False).threads == 2
    assert choose_threads(env={"LOCAL_WORLD_SIZE": "16"}, cores=8, busy=False).threads == 1    # never 0
    c = choose_threads(env={"OMPI_COMM_WORLD_LOCAL_SIZE": "2"}, cores=4, busy=False)
    assert (c.threads, c.local_ranks, c.source) == (2, 2, "cores / local ranks")


def test_explicit_settings_win():
    env = {"OMPI_COMM_WORLD_LOCAL_SIZE": "2", "OMP_NUM_THREADS": "3"}
    assert choose_threads(env=env, cores=8).threads == 3
    assert choose_threads(env=env, cores=8).source == "OMP_NUM_THREADS"
    assert choose_threads(5, env=env, cores=8).threads == 5
    assert choose_threads(env={"OMP_WAIT_POLICY": "ACTIVE"}, cores=2, busy=False).wait_policy == "ACTIVE"
    assert choose_threads(env={}, cores=2, busy=False).wait_policy == "PASSIVE"


def test_slurm():
    assert slurm_counts("2(x3),1") == [2, 2, 2, 1] and slurm_counts("4") == [4] and slurm_counts("x") == []
    env = {"SLURM_LOCALID": "0", "SLURM_NODEID": "3", "SLURM_STEP_TASKS_PER_NODE": "2(x3),1"}
    assert local_ranks(env) == 1
    assert local_ranks({**env, "SLURM_NODEID": "1"}) == 2
    assert local_ranks({"SLURM_NTASKS_PER_NODE": "4"}) == 1          # the batch script itself: not under srun
    assert usable_cores({"SLURM_LOCALID": "0", "SLURM_CPUS_PER_TASK": "1"}) == 1
    assert usable_cores({"SLURM_CPUS_PER_TASK": "1"}) == len(os.sched_getaffinity(0))


def test_busy_cores_leave_their_cores():
    assert choose_threads(env={}, cores=2, busy=2.0).threads == 1
    assert choose_threads(env={}, cores=2, busy=0.3).threads == 2
    assert choose_threads(env={}, cores=8, busy=3.0).threads == 5
    # The job's other ranks starting up are not "other work": 2 ranks on 8 cores, 1 busy core -> still 4 each.
    assert choose_threads(env={"OMPI_COMM_WORLD_LOCAL_SIZE": "2"}, cores=8, busy=1.0).threads == 4


def test_busy_cores_sees_a_busy_process():
    cpu = sorted(os.sched_getaffinity(0))[0]
    hog = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpu}}})\n"
                            "while True: pass"])
    try:
        time.sleep(0.3)
        busy = busy_cores(0.3, cpus=[cpu])
    finally:
        hog.kill()
        hog.wait()
    assert busy is not None and 0.8 <= busy <= 1.05


CHILD = ("import json, os, sys\nfrom meshgnn.threads import configure_threads\n"
         "c = configure_threads(int(sys.argv[1]) if len(sys.argv) > 1 else None)\nimport torch\n"
         "print(json.dumps([torch.get_num_threads(), os.environ.get('OMP_WAIT_POLICY'), c.source, c.applied]))")


def run_child(*args, **env):
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    p = subprocess.run([sys.executable, "-c", CHILD, *args], env={**base, **env}, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_applied_before_torch_loads():
    assert run_child("1") == [1, "PASSIVE", "--threads", True]
    assert run_child(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="ACTIVE") == [1, "ACTIVE", "OMP_NUM_THREADS", True]
    n, policy, source, _ = run_child()
    assert policy == "PASSIVE" and source.startswith("cores / local ranks") and 1 <= n <= len(os.sched_getaffinity(0))


def test_cli_threads_option(capsys, tmp_path):
    missing = str(tmp_path / "missing.h5")
    with pytest.raises(MeshgnnError):                       # --debug: the error is raised, not printed
        main(["--debug", "--threads", "1", "info", missing])
    err = capsys.readouterr().err
    assert "threads: 1 per process (--threads" in err
    with pytest.raises(SystemExit) as e:
        main(["info", missing, "--threads", "0"])
    assert e.value.code == 2
