"""Comparison pictures frame the whole domain: a 4 m x 0.2 m x 0.2 m channel must be fully inside every panel,
checked from the cameras (dataset bounds projected to pixels) and from the image (coloured pixels from the inlet
to the outlet end, nothing cut at a panel edge); panel titles and the time label are drawn inside the picture."""
from __future__ import annotations

import numpy as np
import pytest

from meshgnn.io.vtk import RolloutWriter
from meshgnn.meshes import box_tets

pytest.importorskip("pyvista")

SIZE = (1800, 600)


@pytest.fixture(scope="module")
def channel(tmp_path_factory):
    out = tmp_path_factory.mktemp("channel")
    pts, tets = box_tets(40, 2, 2, size=(4.0, 0.2, 0.2))            # long and thin along x, inlet at x = 0
    x = pts[:, 0]
    ref = np.exp(-x).astype(np.float32)
    pred = (ref + 0.05 * np.sin(3 * x) + 0.06).astype(np.float32)
    with RolloutWriter(out, pts, {"tetra": tets}, units={"co2": "mol/m^3"}) as w:
        for k in range(2):
            w.write_step(k, 12.5 * k, {"co2": pred, "co2_ref": ref, "co2_err": pred - ref})
    return out / "rollout.pvd", pts


def projected(renderer, bounds):
    """(8, 2) display pixels (x from the left, y from the bottom) of the corners of ``bounds``."""
    import vtk

    c = vtk.vtkCoordinate()
    c.SetCoordinateSystemToWorld()
    b = np.asarray(bounds).reshape(3, 2)
    out = []
    for p in ([x, y, z] for x in b[0] for y in b[1] for z in b[2]):
        c.SetValue(*p)
        out.append(c.GetComputedDoubleDisplayValue(renderer))
    return np.array(out)


def panel_box(renderer, size=SIZE):
    """(x0, x1, y0, y1) pixels of a renderer's viewport (y from the bottom)."""
    vx0, vy0, vx1, vy1 = renderer.GetViewport()
    return vx0 * size[0], vx1 * size[0], vy0 * size[1], vy1 * size[1]


def inside_drawing_area(renderer, bounds) -> bool:
    """The projected box lies inside the panel, left of its colour bar (the right 22%)."""
    x0, x1, y0, y1 = panel_box(renderer)
    pts = projected(renderer, bounds)
    return bool(pts[:, 0].min() >= x0 and pts[:, 0].max() <= x0 + 0.78 * (x1 - x0)
                and pts[:, 1].min() >= y0 and pts[:, 1].max() <= y1)


def test_compare_panels_show_the_whole_channel(channel, tmp_path):
    from meshgnn.render import frame_plotter, load_mesh, series_frames

    pvd, pts = channel
    fr = series_frames(pvd)[-1]
    mesh = load_mesh(fr.file)
    bounds = mesh.bounds                                             # the dataset's, not the picture's
    p = frame_plotter(mesh, "co2", compare=True, window_size=SIZE, label="t = 12.5  (step 1)")
    img = np.asarray(p.screenshot(return_img=True))[..., :3]
    renderers = list(p.renderers)
    assert len(renderers) == 3
    H = SIZE[1]
    for i, ren in enumerate(renderers):
        assert inside_drawing_area(ren, bounds), f"panel {i}: domain leaves the panel"
        x0, x1, _, _ = panel_box(ren)
        proj = projected(ren, bounds)
        left, right = proj[:, 0].min(), proj[:, 0].max()
        assert right - left > 0.6 * (x1 - x0), "the domain should fill most of the panel's width"
        # From the pixels: the coloured band of the channel (middle rows, left of the colour bar).
        band = img[int(0.25 * H):int(0.75 * H), int(x0):int(x0 + 0.78 * (x1 - x0))].astype(int)
        coloured = np.flatnonzero((np.abs(band - 255) > 30).any(axis=2).any(axis=0))
        assert coloured.size, f"panel {i} is blank"
        lc, rc = coloured.min() + int(x0), coloured.max() + int(x0)
        assert lc > x0 + 2, f"panel {i}: the inlet end touches the panel edge (cropped)"
        assert abs(lc - left) <= 3 and abs(rc - right) <= 3, (i, lc, left, rc, right)
        row = int(H - 0.5 * (proj[:, 1].min() + proj[:, 1].max()))          # the channel's centre row
        inlet = img[row, int(left) + 2:int(left) + 8].astype(int)
        assert (np.abs(inlet - 255) > 30).any(axis=1).all(), f"panel {i}: background at the inlet end"
        top = img[:int(0.09 * H), int(x0):int(x1)]
        assert (top.max(axis=2) < 100).sum() > 20, f"panel {i}: no title"
    bottom = img[int(0.9 * H):, :int(0.5 * SIZE[0] / 3)]
    assert (bottom.max(axis=2) < 100).sum() > 20, "no time label"
    assert (img[:, :2].max(axis=2) < 100).sum() == 0, "text cut at the picture's left edge"

    # Negative control: the same checks catch a camera that crops the inlet end.
    ren = renderers[0]
    ren.GetActiveCamera().Zoom(1.6)
    assert not inside_drawing_area(ren, bounds)
    p.close()


def test_rendered_png_from_the_series_frames_the_domain(channel, tmp_path):
    """The PNG path (meshgnn render --compare; rollout's picture) gives the same framing."""
    from PIL import Image

    from meshgnn.render import render_series

    pvd, _ = channel
    png = render_series(pvd, "co2", tmp_path / "co2.png", compare=True, window_size=SIZE)["png"]
    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert img.shape == (SIZE[1], SIZE[0], 3)
    for i in range(3):
        x0 = i * SIZE[0] // 3
        band = img[150:450, x0:x0 + int(0.78 * SIZE[0] / 3)]
        coloured = np.flatnonzero((np.abs(band - 255) > 30).any(axis=2).any(axis=0))
        assert coloured.min() > 2 and coloured.max() - coloured.min() > 0.6 * SIZE[0] / 3
