"""Off-screen pictures of rollout fields: PNG size, not blank, frame choice, compare panels, GIF, CLI."""
from __future__ import annotations

import numpy as np
import pytest

from meshgnn.errors import MeshgnnError
from meshgnn.io.vtk import RolloutWriter
from meshgnn.meshes import box_tets

pytest.importorskip("pyvista")


def fields(pts, k):
    x, y, z = pts.T
    ref = np.exp(-((z - 0.2 * k) ** 2) * 8) * (1 + 0.3 * np.sin(4 * x))
    pred = ref + 0.05 * np.sin(7 * y + k)
    u = np.stack([np.sin(3 * z + k), 0 * x, 1 + x], 1)
    return {"co2": pred.astype(np.float32), "co2_ref": ref.astype(np.float32),
            "co2_err": (pred - ref).astype(np.float32), "u": u.astype(np.float32)}


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    out = tmp_path_factory.mktemp("render")
    pts, tets = box_tets(6, 6, 12, size=(1.0, 1.0, 3.0))      # a tall column along z
    with RolloutWriter(out, pts, {"tetra": tets}, formats=("pvd", "vtkhdf"), units={"co2": "mol/m^3"}) as w:
        for k in range(4):
            w.write_step(k, 0.5 * k, fields(pts, k))
    return out / "rollout.pvd", pts, tets


def image(path):
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def test_slice_png_has_the_asked_size_and_shows_the_field(series, tmp_path):
    from meshgnn.render import render_series

    pvd, _, _ = series
    a = render_series(pvd, "co2", tmp_path / "a.png", step=-1, window_size=(640, 480))["png"]
    b = render_series(pvd, "co2", tmp_path / "b.png", step=0, window_size=(640, 480))["png"]
    ia, ib = image(a), image(b)
    assert ia.shape == (480, 640, 3)
    assert ia.std() > 5                              # not blank
    assert np.abs(ia.astype(int) - ib).mean() > 1    # another step, another picture


def test_compare_clip_and_vector_magnitude(series, tmp_path):
    from meshgnn.render import render_series

    pvd, _, _ = series
    img = image(render_series(pvd, "co2", tmp_path / "c.png", compare=True, window_size=(900, 300))["png"])
    assert img.shape == (300, 900, 3)
    thirds = [img[:, i * 300:(i + 1) * 300] for i in range(3)]
    assert all(t.std() > 5 for t in thirds)          # predicted, reference and error panels all drawn
    clip = image(render_series(pvd, "u", tmp_path / "u.png", view="clip", axis="x", window_size=(400, 300))["png"])
    assert clip.shape == (300, 400, 3) and clip.std() > 5


def test_render_from_arrays(series, tmp_path):
    from meshgnn.render import render_arrays

    _, pts, tets = series
    png = render_arrays(pts, {"tetra": tets}, {"f": pts[:, 2]}, "f", tmp_path / "arr.png", axis="y",
                        window_size=(320, 240))
    img = image(png)
    assert img.shape == (240, 320, 3) and img.std() > 5


def test_frame_choice_and_series_colour_range(series):
    from meshgnn.render import _series_ranges, load_mesh, pick_frame, series_frames

    pvd, pts, _ = series
    frames = series_frames(pvd)
    assert [f.step for f in frames] == [0, 1, 2, 3]
    assert pick_frame(frames, -1) == 3 and pick_frame(frames, 1) == 1 and pick_frame(frames, time=0.9) == 2
    with pytest.raises(MeshgnnError, match="step 7"):
        pick_frame(frames, 7)
    value, _, err = _series_ranges(frames, "co2", True, None, None)
    allv = np.concatenate([np.r_[fields(pts, k)["co2"], fields(pts, k)["co2_ref"]] for k in range(4)])
    assert value == pytest.approx((allv.min(), allv.max()), rel=1e-6)
    emax = max(np.abs(fields(pts, k)["co2_err"]).max() for k in range(4))
    assert err == pytest.approx((-emax, emax), rel=1e-6)
    assert load_mesh(frames[0].file).n_points == len(pts)


def test_gif_has_one_frame_per_step(series, tmp_path):
    from PIL import Image

    from meshgnn.render import render_series

    pvd, _, _ = series
    res = render_series(pvd, "co2", None, animation=tmp_path / "a.gif", window_size=(200, 160))
    gif = Image.open(res["animation"])
    assert gif.n_frames == 4 and gif.size == (200, 160)


def test_cli_render_and_user_errors(series, tmp_path, capsys):
    from meshgnn.cli import main

    pvd, _, _ = series
    out = tmp_path / "cli.png"
    assert main(["render", str(pvd), "--field", "co2", "--slice", "x", "--size", "300", "200",
                 "--out", str(out)]) == 0
    assert image(out).shape == (200, 300, 3)
    assert main(["render", str(pvd), "--field", "nope", "--out", str(tmp_path / "n.png")]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["render", str(pvd), "--field", "u", "--compare", "--out", str(tmp_path / "n.png")]) == 2
    assert main(["render", str(tmp_path / "missing.pvd"), "--field", "co2"]) == 2
    assert not (tmp_path / "n.png").exists()


def test_vtkhdf_frames_render_like_the_vtu_frames(series, tmp_path):
    from meshgnn.render import frame_image, load_mesh, series_frames

    pvd, _, _ = series
    frames = series_frames(pvd.with_suffix(".vtkhdf"))
    assert [f.time for f in frames] == [0.0, 0.5, 1.0, 1.5]
    a = frame_image(load_mesh(frames[2].file, frames[2].index), "co2", window_size=(300, 240))
    b = frame_image(load_mesh(series_frames(pvd)[2].file), "co2", window_size=(300, 240))
    c = frame_image(load_mesh(series_frames(pvd)[3].file), "co2", window_size=(300, 240))
    assert a.std() > 5 and np.array_equal(a, b) and not np.array_equal(a, c)
