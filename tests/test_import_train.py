"""Every importable format trains and rolls out: import -> train a few steps -> roll out -> the rollout's .pvd
imports back, and its reference fields equal the dataset's values (the loop closes through ParaView files)."""
from __future__ import annotations

import numpy as np
import pytest

from meshgnn.io.dataset import Dataset
from meshgnn.io.importers import build_options, import_series
from meshgnn.io.importers.samples import small_imported_dataset, train_and_roll_out


@pytest.mark.parametrize("fmt", ["vtu", "pvd-pyvista", "xdmf", "csv"])
def test_import_train_rollout_reimport(tmp_path, fmt):
    path = small_imported_dataset(tmp_path, fmt, steps=4, trajectories=2)
    ro = train_and_roll_out(path, tmp_path)
    with Dataset(path) as ds:
        traj, names = ro["trajectory"], ds.state_fields
        back = tmp_path / "back.h5"
        import_series([ro["pvd"]], back, build_options(state=",".join(n + "_ref" for n in names)),
                      report=lambda s: None)
        with Dataset(back) as rb:
            np.testing.assert_allclose(rb.points, ds.points, atol=1e-12)
            np.testing.assert_allclose(rb.times("0"), ds.times(traj), atol=1e-9)
            for k in range(ds.num_steps(traj)):
                for n in names:
                    np.testing.assert_allclose(rb.read("0", n + "_ref", k), ds.read(traj, n, k), rtol=1e-6)
        for n in names:
            assert np.isfinite(ro["rmse"][n]["all"])
