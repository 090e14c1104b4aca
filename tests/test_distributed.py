"""meshgnn.distributed: launch from MPI, collectives, and a dying rank ending the job (real mpirun processes)."""
import os
import re
import sys
import time

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "mpi_scripts"))
from launch import run_mpi  # noqa: E402

from meshgnn.distributed import Dist, abort_on_exception, init_distributed  # noqa: E402

pytestmark = pytest.mark.mpi


def test_two_ranks_allreduce_and_grad_bucket():
    proc, _ = run_mpi("dist_basic.py", n=2)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "OK rank 0 size 2 backend gloo" in out and "OK rank 1 size 2 backend gloo" in out, out


def seconds_after_failure(out: str) -> float:
    """Seconds from rank 1's failure (its FAIL_AT stamp) to now (the job's end)."""
    m = re.search(r"FAIL_AT (\d+\.\d+)", out)
    assert m, out
    return time.time() - float(m.group(1))


@pytest.mark.parametrize("mode", ["exit0", "raise"])
def test_dead_rank_ends_job_and_names_rank(mode):
    """rank 1 dies (silent os._exit(0) / exception) before a collective: non-zero exit within 60 s."""
    proc, _ = run_mpi("dist_rank_death.py", mode, "60", n=2, timeout=150)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert seconds_after_failure(out) < 60, out
    assert "UNREACHABLE" not in out
    # the survivor reports its failed collective; a raising rank reports its own error
    assert "rank 0: RuntimeError" in out or "rank 1: RuntimeError: boom on purpose" in out, out
    if mode == "raise":
        assert "rank 1: RuntimeError: boom on purpose" in out, out


@pytest.mark.slow
def test_rank_exiting_nonzero_is_named_by_mpirun():
    """rank 1 calls os._exit(3): the launcher tears the job down and names the process (rank 1)."""
    proc, _ = run_mpi("dist_rank_death.py", "exit3", "60", n=2, timeout=150)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and seconds_after_failure(out) < 60, out
    assert "UNREACHABLE" not in out
    # Open MPI 5 (prterun) names it "[prterun-<host>-<pid>@1,1]" (job 1, rank 1); survivors may also report
    assert ",1]" in out or "rank 1" in out, out


@pytest.mark.slow
def test_stuck_rank_times_out():
    """rank 1 never reaches the collective: the process-group timeout (5 s) fires and aborts the job."""
    proc, _ = run_mpi("dist_rank_death.py", "hang", "5", n=2, timeout=150)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert seconds_after_failure(out) < 60, out
    assert "rank 0: RuntimeError" in out and "Timed out" in out, out


def test_single_process_without_launcher(monkeypatch):
    for var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK", "MPI_LOCALNRANKS", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    d = init_distributed(backend="gloo")
    assert (d.rank, d.size, d.local_rank, d.is_root, d.backend) == (0, 1, 0, True, "none")
    x = torch.arange(3.0)
    assert torch.equal(d.allreduce_(x.clone()), x)
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.full((2,), 3.0)
    d.allreduce_grads([p])
    assert torch.equal(p.grad, torch.full((2,), 3.0)) and d.bytes_allreduced == 0
    assert d.broadcast_object("a") == "a" and d.gather_object(5) == [5]
    d.barrier()
    d.finalize()


def test_threads_split_between_local_ranks(monkeypatch):
    from meshgnn import distributed as md
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(md, "_usable_cores", lambda: 8)
    before = torch.get_num_threads()
    try:
        assert md._set_threads(3) == 2
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert md._set_threads(16) == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "5")
        assert md._set_threads(2) == 5
    finally:
        torch.set_num_threads(before)


def test_abort_on_exception_single_process_reraises(capsys):
    with pytest.raises(ValueError):
        with abort_on_exception(Dist()):
            raise ValueError("bad thing")
    assert "rank 0: ValueError: bad thing" in capsys.readouterr().err
