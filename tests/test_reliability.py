"""Reliability: bad input gives one line and a non-zero exit, a lost rank ends the job fast, crashes keep the last
good checkpoint, NaN/Inf stop training with a diagnostic. Every case goes through the CLI (``meshgnn.cli.main``
in-process, or real subprocesses / ``mpirun`` where processes die). docs/reliability.md tabulates the outcomes;
``RELIABILITY_LOG=file.jsonl pytest tests/test_reliability.py`` records them (case, exit code, message, seconds).

Faults are injected by tests/mpi_scripts/rel_fault.py (a wrapper around ``meshgnn.cli.main`` that SIGKILLs a rank
at a given step, or a checkpoint save half-way) or by SIGKILL sent from here.
"""
from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import ROOT, mpi_env, mpirun_cmd, write_box_dataset
from meshgnn.checkpoint import load
from meshgnn.cli import main
from test_exactness import make_store
from test_train import CLI_SMALL

FAULT = ROOT / "tests" / "mpi_scripts" / "rel_fault.py"
KILL_TO_EXIT_LIMIT_S = 60


# ------------------------------------------------------------------------------------------------ helpers
def record(case: str, argv, rc, message: str, seconds: float | None = None) -> None:
    """Append one observed outcome to $RELIABILITY_LOG (JSON lines) for docs/reliability.md."""
    path = os.environ.get("RELIABILITY_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(dict(case=case, argv=[str(a) for a in argv], rc=rc, message=message,
                                    seconds=seconds)) + "\n")


def expect_error(capsys, case: str, argv, *named, rc: int = 2) -> str:
    """Run ``meshgnn argv`` in-process: exit ``rc``, exactly one stderr line containing every ``named``, no traceback."""
    argv = [str(a) for a in argv]
    t0 = time.perf_counter()
    code = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    record(case, argv, code, lines[0] if lines else "", time.perf_counter() - t0)
    assert code == rc, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"meshgnn {argv[0]}: "), lines[0]
    for n in named:
        assert str(n) in lines[0], (n, lines[0])
    return lines[0]


def mutated(src: Path, dst: Path, edit) -> Path:
    """A copy of dataset ``src`` changed in place by ``edit(h5py.File)`` (bypassing the writer's checks)."""
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        edit(f)
    return dst


def replace_dataset(f, where: str, data) -> None:
    del f[where]
    f[where] = data


def set_fields_attr(f, change) -> None:
    fields = json.loads(f.attrs["fields"])
    change(fields)
    f.attrs["fields"] = json.dumps(fields)


def rename_state_field(f) -> None:
    set_fields_attr(f, lambda fl: fl[0].update(name="h2o"))
    for t in f["trajectories"]:
        f.move(f"trajectories/{t}/fields/co2", f"trajectories/{t}/fields/h2o")


def add_node_type(f) -> None:
    names = json.loads(f["mesh/node_type"].attrs["names"])
    f["mesh/node_type"].attrs["names"] = json.dumps(names + ["symmetry"])


def two_component_velocity(f) -> None:
    set_fields_attr(f, lambda fl: [d.update(components=2) for d in fl if d["name"] == "velocity"])
    for t in f["trajectories"]:
        where = f"trajectories/{t}/fields/velocity"
        replace_dataset(f, where, f[where][:, :2])


def truncate(src: Path, dst: Path, fraction=0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def random_bytes(dst: Path, n=4096) -> Path:
    dst.write_bytes(np.random.default_rng(1).bytes(n))
    return dst


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def work(tmp_path_factory, box_dataset):
    """A trained checkpoint (2 layers, euler), part stores (matching h=2, shallow h=1, other mesh) and broken files."""
    d = tmp_path_factory.mktemp("rel")
    rc = main(["train", str(box_dataset), "--out", str(d / "run"), "--steps", "2", *CLI_SMALL])
    assert rc == 0
    (d / "h1").mkdir()
    (d / "other").mkdir()
    other = write_box_dataset(d / "other" / "other.h5", n=6)
    return dict(
        d=d, ds=box_dataset, ckpt=d / "run" / "checkpoint.pt",
        store=make_store(box_dataset, d, halo=2, nparts=2),
        shallow=make_store(box_dataset, d / "h1", halo=1, nparts=2),
        foreign=make_store(other, d / "other", halo=2, nparts=2),
    )


def broken_datasets(work) -> dict:
    d, ds = work["d"] / "broken", work["ds"]
    d.mkdir(exist_ok=True)
    n = h5py.File(ds, "r")["mesh/points"].shape[0]
    bad_cells = lambda f: replace_dataset(f, "mesh/cells/tetra",  # noqa: E731
                                          np.where(np.arange(4) == 2, n + 7, f["mesh/cells/tetra"][...]))
    return {
        "missing file": (d / "missing.h5", "missing.h5"),
        "truncated HDF5 (half the bytes)": (truncate(ds, d / "truncated.h5"), "truncated.h5"),
        "random bytes": (random_bytes(d / "random.h5"), "not an HDF5 file"),
        "empty file": (truncate(ds, d / "empty.h5", 0.0), "not an HDF5 file"),
        "wrong schema version": (mutated(ds, d / "schema.h5", lambda f: f.attrs.modify("schema_version", 99)),
                                 "/@schema_version"),
        "field shape mismatch (N-1 nodes)": (mutated(ds, d / "shape.h5", lambda f: replace_dataset(
            f, "trajectories/traj00/fields/co2", f["trajectories/traj00/fields/co2"][:, :-1])),
            "/trajectories/traj00/fields/co2"),
        "node_type shape mismatch": (mutated(ds, d / "ntshape.h5", lambda f: replace_dataset(
            f, "mesh/node_type", f["mesh/node_type"][:-1])), "/mesh/node_type"),
        "missing /@fields attribute": (mutated(ds, d / "noattr.h5", lambda f: f.attrs.__delitem__("fields")),
                                       "/@fields"),
        "cell index out of range": (mutated(ds, d / "cells.h5", bad_cells), "/mesh/cells/tetra"),
        "field declared but dataset missing": (mutated(ds, d / "nofield.h5", lambda f: f.__delitem__(
            "trajectories/traj01/fields/loading")), "/trajectories/traj01/fields/loading"),
    }


# ------------------------------------------------------------------------------------------------ bad input
def test_broken_datasets_every_command(work, capsys):
    """Each broken dataset through info, partition, train and rollout: one line naming the file and the HDF5 path."""
    for case, (path, named) in broken_datasets(work).items():
        commands = {
            "info": ["info", path],
            "partition": ["partition", path, "--parts", "2", "--out", work["d"] / "p.h5", "--quiet"],
            "train": ["train", path, "--steps", "1", "--out", work["d"] / "x", *CLI_SMALL],
            "rollout": ["rollout", work["ckpt"], path, "--out", work["d"] / "r", "--progress", "false"],
        }
        for cmd, argv in commands.items():
            expect_error(capsys, f"{case} ({cmd})", argv, path.name, named)
    assert not (work["d"] / "p.h5").exists() and not (work["d"] / "r").exists()


def test_damaged_chunk_is_named(work, capsys):
    """Bytes overwritten inside the compressed chunks of one field (bit rot): the read names field and step."""
    path = work["d"] / "rot.h5"
    shutil.copy(work["ds"], path)
    with h5py.File(path, "r") as f:
        dset = f["trajectories/traj00/fields/co2"]
        offsets = [dset.id.get_chunk_info(i).byte_offset for i in range(dset.id.get_num_chunks())]
    with open(path, "r+b") as f:
        for off in offsets:
            f.seek(off)
            f.write(np.random.default_rng(2).bytes(32))
    expect_error(capsys, "damaged compressed chunk (train)", ["train", path, "--steps", "1", "--out",
                 work["d"] / "x", *CLI_SMALL], "rot.h5", "/trajectories/traj00/fields/co2", "damaged")
    expect_error(capsys, "damaged compressed chunk (rollout)", ["rollout", work["ckpt"], path, "--trajectory",
                 "traj00", "--out", work["d"] / "r", "--progress", "false"], "/trajectories/traj00/fields/co2")


def test_unknown_names(work, capsys):
    ds = work["ds"]
    expect_error(capsys, "unknown --val-trajectories", ["train", ds, "--val-trajectories", "nope", "--steps", "1",
                 "--out", work["d"] / "x", *CLI_SMALL], "--val-trajectories", "'nope'", ds.name)
    expect_error(capsys, "unknown rollout --trajectory", ["rollout", work["ckpt"], ds, "--trajectory", "nope",
                 "--out", work["d"] / "r"], "'nope'", ds.name)
    expect_error(capsys, "--noise-std with wrong count", ["train", ds, "--noise-std", "1", "2", "3", "--steps", "1",
                 "--out", work["d"] / "x", *CLI_SMALL], "--noise-std")
    expect_error(capsys, "P > N", ["partition", ds, "--parts", "100000", "--out", work["d"] / "p.h5"],
                 "--parts", "100000")
    expect_error(capsys, "unknown --integrator", ["partition", ds, "--parts", "2", "--integrator", "rk99",
                 "--out", work["d"] / "p.h5"], "--integrator")
    expect_error(capsys, "--resume without a checkpoint", ["train", ds, "--resume", "--steps", "1", "--out",
                 work["d"] / "empty_run", *CLI_SMALL], "--resume")
    expect_error(capsys, "--dtype float16 (not a choice)", ["train", ds, "--dtype", "float16", "--out",
                 work["d"] / "x"], "--dtype", "float16", "float32, float64")


def test_bad_checkpoints(work, capsys):
    d, ds = work["d"], work["ds"]
    cases = {
        "checkpoint missing": (d / "none.pt", "not found"),
        "checkpoint truncated": (truncate(work["ckpt"], d / "half.pt"), "not a readable checkpoint"),
        "checkpoint random bytes": (random_bytes(d / "noise.pt"), "not a readable checkpoint"),
        "dataset passed as checkpoint": (ds, "not a readable checkpoint"),
    }
    for case, (path, named) in cases.items():
        expect_error(capsys, case, ["rollout", path, ds, "--out", d / "r"], path.name, named)
        if path.suffix == ".pt" and path.exists():
            expect_error(capsys, f"{case} (info)", ["info", path], path.name)


@pytest.mark.parametrize("case,edit,named", [
    ("different state fields", rename_state_field, "state_fields"),
    ("extra node type", add_node_type, "node_type_names"),
    ("different component count", two_component_velocity, "velocity"),
])
def test_checkpoint_incompatible_with_dataset(work, capsys, case, edit, named):
    """A checkpoint trained on box.h5 against a dataset with other fields / node types / components:
    rollout and --resume both refuse, naming the checkpoint and what differs."""
    other = mutated(work["ds"], work["d"] / f"{edit.__name__}.h5", edit)
    expect_error(capsys, f"checkpoint vs dataset: {case} (rollout)", ["rollout", work["ckpt"], other, "--out",
                 work["d"] / "r"], "checkpoint.pt", named)
    run = work["d"] / f"resume_{edit.__name__}"
    run.mkdir(exist_ok=True)
    shutil.copy(work["ckpt"], run / "checkpoint.pt")
    expect_error(capsys, f"checkpoint vs dataset: {case} (train --resume)", ["train", other, "--resume",
                 "--steps", "4", "--out", run, *CLI_SMALL], "checkpoint.pt", named)


@pytest.mark.parametrize("flag,value", [("--layers", "3"), ("--integrator", "heun"), ("--latent", "32"),
                                        ("--aggregate", "update")])
def test_resume_with_other_model(work, capsys, flag, value):
    run = work["d"] / f"resume{flag}"
    run.mkdir(exist_ok=True)
    shutil.copy(work["ckpt"], run / "checkpoint.pt")
    argv = ["train", work["ds"], "--resume", "--steps", "4", "--out", run, *CLI_SMALL, flag, value]
    expect_error(capsys, f"--resume with {flag} {value}", argv, "checkpoint.pt", flag.strip("-"))


def test_part_store_mismatch_and_shallow_halo(work, capsys):
    d, ds, ck = work["d"], work["ds"], work["ckpt"]
    train = ["train", ds, "--steps", "1", "--out", d / "x", *CLI_SMALL, "--parts"]
    roll = ["rollout", ck, ds, "--out", d / "r", "--progress", "false", "--parts"]
    for tag, argv in (("train", train), ("rollout", roll)):
        expect_error(capsys, f"part store of another mesh ({tag})", argv + [work["foreign"]], "parts_h2",
                     "does not match the dataset")
        expect_error(capsys, f"halo 1 < layers x stages = 2 ({tag})", argv + [work["shallow"]], "parts_h1",
                     "halo depth 1", "too shallow")
        expect_error(capsys, f"part store: random bytes ({tag})", argv + [random_bytes(d / "junk.parts.h5")],
                     "junk.parts.h5")
        expect_error(capsys, f"part store: the dataset file ({tag})", argv + [ds], "not a meshgnn part store")
        expect_error(capsys, f"part store: missing ({tag})", argv + [d / "absent.parts.h5"], "absent.parts.h5")
    expect_error(capsys, "part store: random bytes (info)", ["info", d / "junk.parts.h5"], "junk.parts.h5")
    expect_error(capsys, "part store: truncated (info)", ["info", truncate(Path(work["store"]),
                 d / "half.parts.h5")], "half.parts.h5")


def test_nonfinite_inputs_to_rollout(work, capsys):
    d = work["d"]

    def nan_initial(f):
        dset = f["trajectories/traj01/fields/co2"]
        frame = dset[0]
        frame[[3, 4]] = np.nan
        dset[0] = frame

    def inf_static(f):
        dset = f["trajectories/traj00/fields/velocity"]
        v = dset[...]
        v[7, 1] = np.inf
        dset[...] = v

    nan = mutated(work["ds"], d / "nan_initial.h5", nan_initial)
    inf = mutated(work["ds"], d / "inf_static.h5", inf_static)
    expect_error(capsys, "NaN in the initial frame (rollout)", ["rollout", work["ckpt"], nan, "--out", d / "r"],
                 "/trajectories/traj01/fields/co2", "2 nodes", "NaN")
    expect_error(capsys, "Inf in a static field (rollout)", ["rollout", work["ckpt"], inf, "--trajectory", "traj00",
                 "--out", d / "r"], "/trajectories/traj00/fields/velocity", "1 nodes")


def test_render_import_generate_inputs(work, capsys):
    """The commands around the model: damaged/missing VTK files, an unknown field, out-of-range sizes."""
    import meshio

    d = work["d"] / "vtk"
    d.mkdir(exist_ok=True)
    one = d / "one.vtu"
    pts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1.0]])
    meshio.write(one, meshio.Mesh(pts, [("tetra", np.array([[0, 1, 2, 3]]))], point_data={"co2": np.arange(4.0)}))
    junk_vtu, junk_pvd = random_bytes(d / "junk.vtu"), random_bytes(d / "junk.pvd")
    expect_error(capsys, "render: missing series", ["render", d / "none.pvd", "--field", "co2"], "none.pvd")
    expect_error(capsys, "render: random-bytes .pvd", ["render", junk_pvd, "--field", "co2"], "junk.pvd")
    expect_error(capsys, "render: random-bytes .vtu", ["render", junk_vtu, "--field", "co2"], "junk.vtu",
                 "not a VTK XML file")
    expect_error(capsys, "render: unknown --field", ["render", one, "--field", "nope", "--out", d / "x.png"],
                 "'nope'", "co2")
    expect_error(capsys, "import: random-bytes .vtu", ["import", junk_vtu, d / "o.h5", "--dt", "0.1",
                 "--no-progress"], "junk.vtu", "not a VTK XML file")
    expect_error(capsys, "import: missing source", ["import", d / "nothing.vtu", d / "o.h5", "--no-progress"],
                 "nothing.vtu")
    expect_error(capsys, "generate: --nodes 0", ["generate", d / "g.h5", "--nodes", "0"], "--nodes")
    assert sorted(p.name for p in d.iterdir()) == ["junk.pvd", "junk.vtu", "one.vtu"]     # nothing written


def test_debug_shows_the_traceback(work, capsys):
    with pytest.raises(Exception) as e:
        main(["--debug", "info", str(work["d"] / "missing.h5")])
    assert "missing.h5" in str(e.value)


def test_subprocess_exit_code_and_single_line(work):
    """The real process: exit status 2, one stderr line, nothing on stdout."""
    bad = random_bytes(work["d"] / "sub.h5")
    r = subprocess.run([sys.executable, "-m", "meshgnn.cli", "train", str(bad), "--steps", "1"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [f"meshgnn train: error: {bad}: not an HDF5 file (expected a meshgnn "
                                             f"dataset .h5)"]


# ------------------------------------------------------------------------------------------------ NaN in training
def test_nan_in_training_data_stops_with_diagnostic_and_keeps_checkpoint(work, capsys, tmp_path):
    """NaN written into one frame after creation: training runs until the first step that reads it, stops with
    step, part, field and node count, exit 2; the checkpoint of the step before stays loadable."""
    from meshgnn.config import TrainConfig
    from meshgnn.train import Trainer
    from meshgnn.decomposition import PartStore

    cfg = TrainConfig(dataset=str(work["ds"]), parts=work["store"], progress=False, layers=2, latent=16,
                      hidden_layers=1)
    tr = Trainer(cfg)
    first_use: dict[int, int] = {}
    for step in range(40):
        samples, _ = tr.sample(step)
        for smp in samples:
            assert smp.trajectory == "traj00"   # traj01 is held out for validation
            for frame in (smp.time, smp.time + 1):
                first_use.setdefault(frame, step)
    frame, step = max(first_use.items(), key=lambda kv: kv[1])
    assert step >= 1, first_use

    store = PartStore(work["store"])
    owned = np.flatnonzero((store.owner == 1) & (np.asarray(tr.ds.node_type) == 0))[:3]   # interior nodes of part 1
    per_part = {p: int(np.isin(store.read(p).nodes, owned).sum()) for p in range(store.num_parts)}

    def poison(f):
        dset = f["trajectories/traj00/fields/loading"]
        values = dset[frame]
        values[owned] = np.nan
        dset[frame] = values

    data = mutated(work["ds"], tmp_path / "nan_frame.h5", poison)
    out = tmp_path / "run"
    line = expect_error(capsys, f"NaN in frame {frame} (train, first read at step {step})",
                        ["train", data, "--parts", work["store"], "--out", out, "--steps", str(step + 5),
                         "--checkpoint-every", "1", "--noise-std", "0", *CLI_SMALL], f"at step {step}",
                        "field loading",
                        f"part 1: field loading: {per_part[1]} non-finite", "last good checkpoint is kept")
    for p, n in per_part.items():
        assert (f"part {p}: field loading: {n} non-finite" in line) == (n > 0), line
    state = load(out / "checkpoint.pt")
    assert state["trainer"]["step"] == step
    assert all(np.isfinite(v.numpy()).all() for v in state["trainer"]["simulator"].values() if hasattr(v, "numpy"))


def test_diverging_training_stops_with_diagnostic(work, capsys, tmp_path):
    """Clean data, absurd learning rate: the weights blow up, the loss turns NaN; training stops naming the step
    and the parameters, no data field is blamed, and the checkpoint of the step before loads."""
    out = tmp_path / "run"
    line = expect_error(capsys, "diverging training (--lr 1e30): non-finite loss/gradients",
                        ["train", work["ds"], "--out", out, "--steps", "20", "--checkpoint-every", "1", "--lr", "1e30",
                         "--lr-final", "1e30", *CLI_SMALL], "non-finite loss/gradients at step",
                        "parameters with non-finite gradients", "last good checkpoint is kept")
    assert "non-finite node values in the data" not in line
    failed_at = int(line.split("at step ")[1].split()[0])
    assert load(out / "checkpoint.pt")["trainer"]["step"] == failed_at


# ------------------------------------------------------------------------------------------------ rank loss
def _rank_pid(tag: str, rank: int) -> int | None:
    """pid of the MPI rank ``rank`` of the job whose environment carries RELTEST_TAG=tag."""
    want = (f"RELTEST_TAG={tag}".encode(), f"OMPI_COMM_WORLD_RANK={rank}".encode())
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if all(w in env for w in want):
            return int(d.name)
    return None


def _wait_for(predicate, timeout, proc, poll=0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(poll)
    return False


@pytest.mark.mpi
def test_killed_train_rank_ends_job_then_resume_finishes(work, tmp_path):
    """SIGKILL rank 1 of `mpirun -n 2 meshgnn train --parts` mid-run: the job ends non-zero within 60 s, naming
    rank 1; `--resume` in one process continues from the last checkpoint to the last step."""
    tag = uuid.uuid4().hex
    env = dict(mpi_env(), RELTEST_TAG=tag)
    out = tmp_path / "run"
    argv = ["train", str(work["ds"]), "--parts", work["store"], "--out", str(out), "--checkpoint-every", "2",
            *CLI_SMALL]
    proc = subprocess.Popen(mpirun_cmd(2) + [sys.executable, "-m", "meshgnn.cli", *argv, "--steps", "100000"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        log = out / "train_log.csv"
        started = _wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= 4
                            and (out / "checkpoint.pt").exists(), 240, proc)
        assert started, proc.communicate(timeout=30)[0][-3000:]
        pid = _rank_pid(tag, 1)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        t_kill = time.perf_counter()
        output, _ = proc.communicate(timeout=KILL_TO_EXIT_LIMIT_S + 30)
        elapsed = time.perf_counter() - t_kill
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    record("train rank 1 SIGKILLed mid-run (mpirun -n 2)", argv, proc.returncode,
           next((ln for ln in output.splitlines() if "rank 1" in ln), ""), elapsed)
    assert proc.returncode != 0
    assert elapsed < KILL_TO_EXIT_LIMIT_S, elapsed
    assert "rank 1" in output, output[-3000:]

    saved = load(out / "checkpoint.pt")["trainer"]["step"]
    assert saved >= 2 and saved % 2 == 0
    final = saved + 3
    t0 = time.perf_counter()
    rc = main([*argv, "--steps", str(final), "--resume"])
    record("--resume after the rank loss (1 process)", argv + ["--resume"], rc, f"resumed at step {saved}, "
           f"finished {final}", time.perf_counter() - t0)
    assert rc == 0
    assert load(out / "checkpoint.pt")["trainer"]["step"] == final
    # the log lost nothing and repeats nothing: rows the crashed run wrote after its last checkpoint are replaced
    rows = list(csv.DictReader(open(out / "train_log.csv")))
    assert [int(r["step"]) for r in rows] == list(range(final))


@pytest.mark.mpi
def test_killed_rollout_rank_ends_job(work, tmp_path):
    """Rank 1 of `mpirun -n 2 meshgnn rollout --parts` SIGKILLs itself at time step 2 (rel_fault.py): the job ends
    non-zero within 60 s naming rank 1; the same command without the fault completes (control)."""
    argv = ["rollout", str(work["ckpt"]), str(work["ds"]), "--parts", work["store"], "--render", "false",
            "--progress", "false", "--trajectory", "traj00"]
    control = subprocess.run(mpirun_cmd(2) + [sys.executable, str(FAULT), "none", *argv, "--out",
                             str(tmp_path / "ok")], capture_output=True, text=True, env=mpi_env(), timeout=300)
    assert control.returncode == 0, control.stdout[-2000:] + control.stderr[-2000:]
    log = tmp_path / "dead.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(mpirun_cmd(2) + [sys.executable, str(FAULT), "die-rollout:2:1", *argv, "--out",
                                str(tmp_path / "dead")], stdout=sink, stderr=subprocess.STDOUT, env=mpi_env())
        try:   # the FAULT line is printed just before the SIGKILL
            assert _wait_for(lambda: "FAULT:" in log.read_text(), 240, proc) or "FAULT:" in log.read_text()
            t_kill = time.perf_counter()
            proc.wait(timeout=KILL_TO_EXIT_LIMIT_S + 30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    lines = log.read_text().splitlines()
    output = "\n".join(lines)
    elapsed = time.perf_counter() - t_kill
    record("rollout rank 1 SIGKILLed at step 2 (mpirun -n 2)", argv, proc.returncode,
           next((ln.strip() for ln in lines if "rank 1" in ln and "FAULT" not in ln), ""), elapsed)
    assert proc.returncode != 0
    assert elapsed < KILL_TO_EXIT_LIMIT_S
    assert any("rank 1" in ln and "FAULT" not in ln for ln in lines), output[-3000:]


# ------------------------------------------------------------------------------------------------ crash-safe checkpoints
def _checkpoint_litter(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name != "checkpoint.pt" and "checkpoint" in p.name)


@pytest.mark.parametrize("fault", ["ckpt-mid-write:3", "ckpt-before-rename:3"])
def test_kill_during_checkpoint_write_keeps_previous(work, tmp_path, capsys, fault):
    """SIGKILL while the 3rd checkpoint is written (half its bytes on disk / complete but not renamed): the 2nd
    still loads, the temp file is never taken for a checkpoint, and --resume continues from step 2."""
    out = tmp_path / "run"
    argv = ["train", str(work["ds"]), "--out", str(out), "--checkpoint-every", "1", "--steps", "6", *CLI_SMALL]
    r = subprocess.run([sys.executable, str(FAULT), fault, *argv], capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert "FAULT" in r.stderr
    assert load(out / "checkpoint.pt")["trainer"]["step"] == 2
    litter = _checkpoint_litter(out)
    assert len(litter) == 1 and litter[0].name.startswith(".checkpoint.pt.") and litter[0].suffix == ".tmp", litter
    if fault.startswith("ckpt-mid-write"):     # half a file: refused even when given by name
        expect_error(capsys, "the half-written temp file given as checkpoint", ["rollout", litter[0], work["ds"],
                     "--out", tmp_path / "r"], litter[0].name, "not a readable checkpoint")
    t0 = time.perf_counter()
    rc = main([*argv, "--resume"])
    record(f"--resume after {fault.split(':')[0]} kill", argv + ["--resume"], rc, "resumed at step 2, finished 6",
           time.perf_counter() - t0)
    assert rc == 0
    assert load(out / "checkpoint.pt")["trainer"]["step"] == 6


def test_sigkill_at_random_moments_of_checkpoint_writes(work, tmp_path):
    """A model with a ~20 MB checkpoint saved every step, SIGKILLed three times a random 0-5 ms after a checkpoint's
    temp file appears (each run resuming the last): after every kill checkpoint.pt loads and its step never goes
    backwards; at least one kill lands before the rename (the temp file is still there afterwards)."""
    out = tmp_path / "big"
    argv = [sys.executable, "-m", "meshgnn.cli", "train", str(work["ds"]), "--out", str(out), "--steps", "100000",
            "--checkpoint-every", "1", "--layers", "6", "--latent", "192", "--hidden-layers", "2",
            "--progress", "false"]
    rng = random.Random(7)
    last_step, mid_write = 0, 0
    for attempt in range(3):
        proc = subprocess.Popen(argv + (["--resume"] if attempt else []), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        old = set(_checkpoint_litter(out)) if out.exists() else set()
        in_flight = []

        def temp_file_appeared():   # once a previous checkpoint exists, a new save starts
            in_flight[:] = [p for p in out.glob(".checkpoint.pt.*.tmp") if p not in old]
            if not (out / "checkpoint.pt").exists():
                old.update(in_flight)
                return False
            return bool(in_flight)

        assert _wait_for(temp_file_appeared, 240, proc, poll=0.001), proc.communicate(timeout=30)[1][-2000:]
        time.sleep(rng.uniform(0.0, 0.005))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        mid_write += in_flight[0].exists()
        step = load(out / "checkpoint.pt")["trainer"]["step"]
        assert step >= max(last_step, 1)
        last_step = step
    record("SIGKILL x3 a random 0-5 ms into a checkpoint save (20 MB, every step)", argv[3:], -9,
           f"checkpoint.pt loadable after every kill (last step {last_step}); {mid_write}/3 kills before the rename",
           None)
    assert mid_write >= 1
