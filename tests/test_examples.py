"""The scripts in examples/ run green as a user would run them (a fresh process, from another folder)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from meshgnn.io.dataset import Dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_example(tmp_path):
    out = tmp_path / "qs"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py"), "--out", str(out),
                           "--train-steps", "40"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = proc.stdout
    assert "trained 40 steps" in text
    m = re.search(r"predicted array \((\d+), (\d+), (\d+)\)", text)
    assert m and int(m.group(2)) == 343 and int(m.group(3)) == 1
    with Dataset(out / "box.h5") as ds:
        assert int(m.group(1)) == ds.num_steps(ds.trajectories[-1])
    assert "matches the rollout's first step: True" in text
    assert list((out / "train" / "tensorboard").glob("events.out.tfevents.*")), "no TensorBoard event file"
    assert (out / "rollout" / "rollout.pvd").is_file()
    with Dataset(out / "one_frame.h5") as one:
        assert one.num_steps(one.trajectories[0]) == 2
