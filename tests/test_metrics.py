"""RMSE tracking against numpy, CSV streaming/atomicity, distributed sums, summary and the RMSE plot."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from meshgnn.errors import MeshgnnError
from meshgnn.metrics import RMSETracker, format_summary, plot_rmse, read_rmse_csv, squared_error_sums

FIELDS = {"co2": 1, "u": 3}


def sample(rng, N, k):
    ref = {"co2": rng.normal(size=N), "u": rng.normal(size=(N, 3))}
    pred = {"co2": ref["co2"] + 0.01 * k * rng.normal(size=N), "u": ref["u"] + 0.1 * rng.normal(size=(N, 3))}
    return pred, ref


def test_rmse_matches_numpy_with_and_without_mask(tmp_path):
    rng = np.random.default_rng(0)
    N = 200
    mask = rng.random(N) > 0.3
    tr = RMSETracker(FIELDS, tmp_path / "rmse.csv")
    expect = []
    for k in range(1, 6):
        pred, ref = sample(rng, N, k)
        got = tr.update(k, 0.5 * k, pred, ref, mask=mask if k % 2 else None)
        m = mask if k % 2 else np.ones(N, bool)
        want = {"co2": np.sqrt(np.mean((pred["co2"][m] - ref["co2"][m]) ** 2)),
                "u": np.sqrt(np.mean((pred["u"][m] - ref["u"][m]) ** 2))}
        assert got == pytest.approx(want, rel=1e-12)
        expect.append(want)
    # the mask matters (negative control): masked and unmasked RMSE of the same data differ
    pred, ref = sample(rng, N, 3)
    assert tr.update(6, 3.0, pred, ref, mask)["co2"] != pytest.approx(
        np.sqrt(np.mean((pred["co2"] - ref["co2"]) ** 2)), rel=1e-6)
    tr.close()
    fields, steps, rmse = read_rmse_csv(tmp_path / "rmse.csv")
    assert fields == ["co2", "u"] and list(steps) == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(rmse["co2"][:5], [e["co2"] for e in expect], rtol=1e-15)
    np.testing.assert_allclose(rmse["u"][:5], [e["u"] for e in expect], rtol=1e-15)
    with open(tmp_path / "rmse.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "time", "co2", "u"] and float(rows[2][1]) == 1.0


def test_column_vectors_and_flat_scalars_agree():
    rng = np.random.default_rng(1)
    p, r = rng.normal(size=50), rng.normal(size=50)
    assert squared_error_sums({"a": p}, {"a": r}) == squared_error_sums({"a": p[:, None]}, {"a": r[:, None]})
    with pytest.raises(MeshgnnError, match="u"):
        squared_error_sums({"u": np.zeros((5, 3))}, {"u": np.zeros((5, 2))})


def test_summed_partial_errors_equal_the_whole(tmp_path):
    """Distributed use: per-rank sums and counts, added, give the whole-mesh RMSE."""
    rng = np.random.default_rng(2)
    N = 301
    pred, ref = sample(rng, N, 4)
    mask = rng.random(N) > 0.2
    whole = RMSETracker(FIELDS).update(1, 0.1, pred, ref, mask)
    parts = np.array_split(np.arange(N), 3)
    sums, counts = {f: 0.0 for f in FIELDS}, {f: 0 for f in FIELDS}
    for ids in parts:
        s, c = squared_error_sums({f: pred[f][ids] for f in FIELDS}, {f: ref[f][ids] for f in FIELDS}, mask[ids])
        for f in FIELDS:
            sums[f] += s[f]
            counts[f] += c[f]
    assert RMSETracker(FIELDS).update_sums(1, 0.1, sums, counts) == pytest.approx(whole, rel=1e-12)


def test_summary_picks_steps_and_means_over_the_rollout(tmp_path, capsys):
    tr = RMSETracker({"co2": 1})
    ref = {"co2": np.zeros(4)}
    for k in range(0, 61):
        tr.update(k, float(k), {"co2": np.full(4, 0.01 * k)}, ref)
    s = tr.summary(steps=(1, 10, 50, 100), print_table=True)
    assert s["co2"]["1"] == pytest.approx(0.01) and s["co2"]["10"] == pytest.approx(0.1)
    assert s["co2"]["50"] == pytest.approx(0.5) and "100" not in s["co2"]
    assert s["co2"]["all"] == pytest.approx(np.mean(0.01 * np.arange(1, 61)))   # step 0 (the input) excluded
    out = capsys.readouterr().out
    assert "co2" in out and "step 10" in out and "0.305" in out
    assert format_summary(s, (1, 10, 50, 100)).count("-") > 0


def test_csv_appears_only_when_closed(tmp_path):
    path = tmp_path / "rmse.csv"
    tr = RMSETracker({"co2": 1}, path)
    tr.update(1, 0.1, {"co2": np.ones(3)}, {"co2": np.zeros(3)})
    assert not path.exists()
    tr.close()
    assert path.exists()
    with pytest.raises(RuntimeError):
        with RMSETracker({"co2": 1}, tmp_path / "b.csv") as t2:
            t2.update(1, 0.1, {"co2": np.ones(3)}, {"co2": np.zeros(3)})
            raise RuntimeError("interrupted")
    assert not (tmp_path / "b.csv").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rmse.csv"]


@pytest.mark.parametrize("size", [(1200, 450), (640, 300)])
def test_plot_is_a_png_of_the_requested_size(tmp_path, size):
    from PIL import Image

    rng = np.random.default_rng(3)
    with RMSETracker(FIELDS, tmp_path / "m.csv") as tm, RMSETracker(FIELDS, tmp_path / "b.csv") as tb:
        for k in range(1, 30):
            pred, ref = sample(rng, 40, k)
            tm.update(k, k * 0.1, pred, ref)
            tb.update(k, k * 0.1, {f: 2 * pred[f] - ref[f] for f in FIELDS}, ref)
    png = plot_rmse(tmp_path / "m.csv", tmp_path / "rmse.png", baseline_csv=tmp_path / "b.csv", size=size)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    img = Image.open(png)
    assert img.size == size
    assert np.asarray(img.convert("L")).std() > 0


def test_bad_csv_is_an_input_error(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(MeshgnnError, match="header"):
        plot_rmse(tmp_path / "x.csv", tmp_path / "x.png")
