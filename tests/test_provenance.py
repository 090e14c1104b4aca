"""Provenance: every file-writing command stores its full command line and resolved options; the stored command
parses back to the same options and re-running it rebuilds the same dataset."""
from __future__ import annotations

import json
import shlex

import h5py
import numpy as np

from meshgnn import provenance
from meshgnn.cli import build_parser, main
from meshgnn.io.dataset import Dataset
from meshgnn.io.importers.samples import write_vtu_series


def dataset_contents(path):
    with Dataset(path) as ds:
        (tid,) = ds.trajectories
        return (tid, {n: s.units for n, s in ds.fields.items()},
                {f: [ds.read(tid, f, k) for k in range(ds.num_steps(tid))] for f in ds.state_fields})


def test_import_round_trips_trajectory_and_units(tmp_path):
    pvd = write_vtu_series(tmp_path / "my runs")          # a space in the path: the command must be quoted
    out = tmp_path / "flow.h5"
    argv = ["import", str(pvd), str(out), "--trajectory", "run_a", "--units", "U=m/s,p=Pa", "--state", "U,p",
            "--no-progress"]
    assert main(argv) == 0
    with Dataset(out) as ds:
        prov = dict(ds.provenance)
    cmd = prov["command"]
    assert "--trajectory run_a" in cmd and "--units U=m/s,p=Pa" in cmd
    assert prov["options"]["trajectory"] == "run_a" and prov["options"]["units"] == "U=m/s,p=Pa"
    assert prov["argv"] == argv and prov["meshgnn_version"] and prov["started_utc"]
    # The command parses back to the very options stored (the quoted path survives).
    words = shlex.split(cmd)
    assert words[0] == "meshgnn" and words[1:] == argv
    assert provenance.json_options(build_parser().parse_args(words[1:])) == prov["options"]
    # Running it again rebuilds the same dataset.
    first = dataset_contents(out)
    assert first[0] == "run_a" and first[1]["U"] == "m/s" and first[1]["p"] == "Pa"
    out.unlink()
    assert main(words[1:]) == 0
    again = dataset_contents(out)
    assert again[:2] == first[:2]
    for f in first[2]:
        for a, b in zip(first[2][f], again[2][f]):
            np.testing.assert_array_equal(a, b)


def test_partition_store_and_generate_keep_the_command(tmp_path):
    pvd = write_vtu_series(tmp_path / "runs")
    data = tmp_path / "d.h5"
    assert main(["import", str(pvd), str(data), "--no-progress"]) == 0
    store = tmp_path / "d.parts.h5"
    assert main(["--threads", "1", "partition", str(data), "--parts", "2", "--layers", "2", "--quiet"]) == 0
    with h5py.File(store, "r") as f:
        meta = json.loads(f.attrs["meta"])
    assert meta["provenance"]["argv"] == ["--threads", "1", "partition", str(data), "--parts", "2", "--layers", "2",
                                          "--quiet"]
    assert meta["provenance"]["options"]["layers"] == 2 and meta["provenance"]["threads"] == 1


def test_run_json_has_resolved_settings_and_history(tmp_path):
    import dataclasses

    from meshgnn.config import TrainConfig, resolve

    out = tmp_path / "run"
    cfg = tmp_path / "c.toml"
    cfg.write_text("latent = 48\n")
    argv = ["train", "d.h5", "--out", str(out), "--layers", "3", "--config", str(cfg)]
    args = build_parser().parse_args(argv)
    provenance.record(argv, args)
    settings = dataclasses.asdict(resolve(TrainConfig, args, dataset="d.h5"))
    assert settings["layers"] == 3 and settings["latent"] == 48                       # flag and file resolved
    provenance.write_run_json(out, settings)
    provenance.write_run_json(out, {**settings, "resume": True})
    run = provenance.read_run_json(out)
    assert run["settings"]["resume"] is True and run["settings"]["latent"] == 48
    assert len(run["history"]) == 1 and run["history"][0]["settings"]["resume"] is False
    assert "--layers 3" in run["command"] and run["argv"] == argv
    assert provenance.is_root_process({"OMPI_COMM_WORLD_RANK": "0"})
    assert not provenance.is_root_process({"SLURM_PROCID": "3"})
    assert provenance.is_root_process({})
