"""PNG pictures and animations of a field of a rollout, off-screen with pyvista.

A frame is a ``.vtu``/``.pvtu`` file, one time of a ``.pvd`` or transient ``.vtkhdf`` series (chosen by step or time; default the last)
or arrays. The field is shown on a **slice** (a plane through the mesh centre, given by its normal axis: ``x`` or
``y`` cut lengthwise through a z-aligned column, ``z`` across it; ``auto`` takes the normal along the shortest
extent, i.e. the plane through the column axis) or on a **clip** (the half-mesh on the negative side of that
plane, seen in 3D). Multi-component fields are shown as their magnitude unless a component is chosen.

``compare=True`` shows prediction ``<f>``, reference ``<f>_ref`` (same colour range) and error ``<f>_err``
(``<f>_error`` also accepted; computed as ``<f> - <f>_ref`` when absent) side by side. An animation
(``.gif`` with Pillow; ``.mp4`` only when ``ffmpeg`` is on PATH) uses one colour range for the whole series.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .errors import InputError, MeshgnnError
from .io.atomic import atomic_path

AXES = {"x": (1.0, 0.0, 0.0), "y": (0.0, 1.0, 0.0), "z": (0.0, 0.0, 1.0)}
VIEW_UP = {"x": (0, 0, 1), "y": (0, 0, 1), "z": (0, 1, 0)}
ERROR_SUFFIXES = ("_err", "_error")
DRAW_REGION = (0.03, 0.76, 0.1, 0.88)     # (left, right, bottom, top) panel fractions the domain is fitted into


def _pyvista():
    if not os.environ.get("DISPLAY"):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")   # no X: skip the X11 attempt
    import pyvista as pv

    pv.OFF_SCREEN = True
    return pv


# ----------------------------------------------------------------------------------------------------------------
# frames
# ----------------------------------------------------------------------------------------------------------------
class Frame(NamedTuple):
    """One time of a series: its time, file, rollout step (from the file name; None if unknown) and, for a
    VTKHDF file, the step index inside it."""
    time: float
    file: Path
    step: int | None
    index: int | None = None


def series_frames(path) -> list[Frame]:
    """The frames of a ``.pvd`` or transient ``.vtkhdf`` series, or of one ``.vtu``/``.pvtu`` file."""
    from .io.vtk import read_pvd, step_of

    path = Path(path)
    if not path.exists():
        raise InputError(path, None, "no such file")
    if path.suffix == ".pvd":
        frames = [Frame(t, f, step_of(f)) for t, f in read_pvd(path)]
        if not frames:
            raise InputError(path, "Collection", "lists no data sets")
        return frames
    if path.suffix in (".vtkhdf", ".hdf"):
        return [Frame(t, path, None, i) for i, t in enumerate(_vtkhdf_times(path))]
    if path.suffix in (".vtu", ".pvtu", ".vtk"):
        return [Frame(0.0, path, step_of(path))]
    raise InputError(path, None, "expected a .pvd, .vtkhdf, .vtu or .pvtu file")


def _vtkhdf_reader(path):
    import vtk

    r = vtk.vtkHDFReader()
    if not r.CanReadFile(str(path)):
        raise InputError(path, None, "not a VTKHDF file")
    r.SetFileName(str(path))
    r.UpdateInformation()
    return r


def _vtkhdf_units(path, mesh):
    """Copy the ``Units`` attributes of /VTKHDF/PointData/* onto the arrays' UNITS_LABEL keys."""
    import h5py
    import vtk

    with h5py.File(path, "r") as f:
        for name, d in f["VTKHDF"].get("PointData", {}).items():
            arr = mesh.GetPointData().GetArray(name)
            if arr is not None and "Units" in d.attrs:
                units = d.attrs["Units"]
                arr.GetInformation().Set(vtk.vtkDataArray.UNITS_LABEL(),
                                         units.decode() if isinstance(units, bytes) else str(units))


def _vtkhdf_times(path) -> list[float]:
    import vtk

    r = _vtkhdf_reader(path)
    info, key = r.GetOutputInformation(0), vtk.vtkStreamingDemandDrivenPipeline.TIME_STEPS()
    if not info.Has(key):
        return [0.0]
    return [info.Get(key, i) for i in range(info.Length(key))]


def pick_frame(frames, step: int | None = -1, time: float | None = None) -> int:
    """Index of the frame wanted: nearest ``time`` if given, else rollout ``step`` >= 0 (exact) or a negative
    index from the end (-1 = last)."""
    if time is not None:
        return int(np.argmin([abs(f.time - time) for f in frames]))
    step = -1 if step is None else int(step)
    if step < 0:
        if -step > len(frames):
            raise MeshgnnError(f"step {step}: the series has {len(frames)} frames")
        return len(frames) + step
    steps = [f.step for f in frames]
    if step in steps:
        return steps.index(step)
    if all(s is None for s in steps) and step < len(frames):
        return step
    have = [s for s in steps if s is not None]
    raise MeshgnnError(f"step {step} is not in the series (written steps: {_short(have)})")


def _short(v):
    return ", ".join(map(str, v)) if len(v) <= 12 else ", ".join(map(str, v[:5])) + ", ..., " + ", ".join(
        map(str, v[-5:]))


def load_mesh(path, index: int | None = None):
    """A frame as a pyvista mesh (pieces of a .pvtu merged; ``index``: step inside a .vtkhdf file)."""
    pv = _pyvista()
    try:
        if index is not None:
            r = _vtkhdf_reader(path)
            r.SetStep(index)
            r.Update()
            mesh = pv.wrap(r.GetOutput())
            _vtkhdf_units(path, mesh)
        else:
            from .io.vtk import check_vtk_header

            check_vtk_header(path)
            mesh = pv.read(str(path))
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad input file
        raise InputError(path, None, f"cannot read ({e})") from None
    if isinstance(mesh, pv.MultiBlock):
        mesh = mesh.combine()
    return mesh


def mesh_from_arrays(points, cells: dict, point_data: dict | None = None):
    """A pyvista UnstructuredGrid from (N,3) points, {type: (M,k)} cells and {name: (N,)|(N,C)} point data."""
    from .io.vtk import VtuMesh

    pv = _pyvista()
    m = VtuMesh(points, cells)
    starts = np.concatenate([[0], m.offsets[:-1]]).astype(np.int64)
    sizes = np.diff(np.concatenate([[0], m.offsets])).astype(np.int64)
    flat = np.empty(m.num_cells + m.connectivity.size, dtype=np.int64)
    pos = starts + np.arange(m.num_cells)
    flat[pos] = sizes
    mask = np.ones(flat.size, dtype=bool)
    mask[pos] = False
    flat[mask] = m.connectivity
    grid = pv.UnstructuredGrid(flat, m.types, m.points)
    for k, v in (point_data or {}).items():
        grid.point_data[k] = np.asarray(v)
    return grid


def units_of(mesh, name: str) -> str:
    """The UNITS_LABEL of a point array ('' when none)."""
    import vtk

    arr = mesh.GetPointData().GetArray(name)
    if arr is None or not arr.GetInformation().Has(vtk.vtkDataArray.UNITS_LABEL()):
        return ""
    return arr.GetInformation().Get(vtk.vtkDataArray.UNITS_LABEL()) or ""


def scalar_values(mesh, name: str, component: int | None = None) -> np.ndarray:
    """(N,) values of a point field: itself, one component, or the magnitude of a vector field."""
    if name not in mesh.point_data:
        have = ", ".join(k for k in mesh.point_data.keys() if not k.startswith("vtk")) or "none"
        raise MeshgnnError(f"field {name!r} not in the data (point fields: {have})")
    a = np.asarray(mesh.point_data[name], dtype=np.float64)
    if a.ndim == 1:
        return a
    if component is not None:
        if not 0 <= component < a.shape[1]:
            raise MeshgnnError(f"field {name!r} has {a.shape[1]} components; component {component} is outside")
        return a[:, component]
    return np.linalg.norm(a, axis=1)


def panels_for(mesh, field: str, compare: bool, component=None) -> list[tuple[str, np.ndarray, str]]:
    """[(label, (N,) values, kind)] with kind 'value' or 'error': the field alone or pred / ref / error."""
    pred = scalar_values(mesh, field, component)
    if not compare:
        return [(field, pred, "value")]
    ref_name = f"{field}_ref"
    if ref_name not in mesh.point_data:
        raise MeshgnnError(f"--compare needs the reference field {ref_name!r} beside {field!r}")
    ref = scalar_values(mesh, ref_name, component)
    err_name = next((f"{field}{s}" for s in ERROR_SUFFIXES if f"{field}{s}" in mesh.point_data), None)
    raw = np.asarray(mesh.point_data[field], np.float64) - np.asarray(mesh.point_data[ref_name], np.float64)
    if err_name is not None:
        raw = np.asarray(mesh.point_data[err_name], np.float64)
    if raw.ndim == 2:
        err = raw[:, component] if component is not None else np.linalg.norm(raw, axis=1)
    else:
        err = raw
    what = err_name or f"{field} - {ref_name}"
    return [(f"predicted {field}", pred, "value"), (f"reference {field}", ref, "value"),
            (f"error {what}", err, "error")]


def colour_ranges(panels, clim=None) -> list[tuple[float, float]]:
    """One range for the value panels (shared), a symmetric one for a signed error, [0, max] for |error|."""
    vals = [v for _, v, k in panels if k == "value"]
    if clim is not None:
        lo, hi = map(float, clim)
    else:
        lo, hi = min(float(np.nanmin(v)) for v in vals), max(float(np.nanmax(v)) for v in vals)
    out = []
    for _, v, kind in panels:
        if kind == "value":
            out.append(_nonempty(lo, hi))
        else:
            m = float(np.nanmax(np.abs(v))) if v.size else 0.0
            out.append(_nonempty(-m, m) if np.nanmin(v) < 0 else _nonempty(0.0, m))
    return out


def _nonempty(lo, hi):
    if not np.isfinite(lo) or not np.isfinite(hi):
        return (0.0, 1.0)
    if hi <= lo:
        pad = abs(lo) * 1e-6 or 1e-12
        return (lo - pad, hi + pad)
    return (lo, hi)


# ----------------------------------------------------------------------------------------------------------------
# drawing
# ----------------------------------------------------------------------------------------------------------------
def _axis(mesh, slice_axis: str) -> str:
    if slice_axis != "auto":
        if slice_axis not in AXES:
            raise MeshgnnError(f"slice axis {slice_axis!r}: choose x, y, z or auto")
        return slice_axis
    b = np.asarray(mesh.bounds).reshape(3, 2)
    return "xyz"[int(np.argmin(b[:, 1] - b[:, 0]))]


def is_planar(mesh) -> bool:
    """True for a mesh lying in a plane z = const (a 2-D mesh written with z = 0)."""
    b = np.asarray(mesh.bounds, dtype=np.float64).reshape(3, 2)
    ext = b[:, 1] - b[:, 0]
    return bool(ext[2] <= 1e-12 * max(float(ext.max()), 1e-300))


def _cut(mesh, view: str, axis: str):
    if view == "slice":
        out = mesh.slice(normal=AXES[axis], origin=mesh.center)
    elif view == "clip":
        out = mesh.clip(normal=AXES[axis], origin=mesh.center, invert=True)
    elif view == "surface":
        out = mesh
    else:
        raise MeshgnnError(f"view {view!r}: choose slice, clip or surface")
    if out.n_points == 0:
        raise MeshgnnError(f"the {view} normal to {axis} through the mesh centre is empty")
    return out


def frame_plotter(mesh, field: str, view: str = "slice", axis: str = "auto", compare: bool = False,
                  component: int | None = None, clim=None, window_size=None, cmap: str = "viridis",
                  label: str | None = None, ranges=None):
    """The off-screen pyvista Plotter of one frame, not yet drawn (the caller screenshots and closes it).

    One panel per entry of :func:`panels_for`, side by side; each has its title (field, role, units) on top, its
    colour bar on the right, the time ``label`` bottom left (first panel), and a camera fitted to the union of the
    panels' bounds (:func:`fit_camera`), so the whole cut is in view whatever the domain's aspect ratio.
    """
    pv = _pyvista()
    window_size = window_size or ((1800, 600) if compare else (1024, 768))
    if is_planar(mesh):        # a 2-D mesh (z = 0): the whole mesh seen from +z, whatever slice/clip asks
        view, axis = "surface", "z"
    axis = _axis(mesh, axis)
    panels = panels_for(mesh, field, compare, component)
    ranges = ranges or colour_ranges(panels, clim)
    units = units_of(mesh, field)
    work = mesh.copy(deep=False)
    work.clear_data()
    for i, (_, v, _) in enumerate(panels):
        work.point_data[f"panel{i}"] = v
    cut = _cut(work, view, axis)
    window_size = tuple(int(x) for x in window_size)
    p = pv.Plotter(off_screen=True, shape=(1, len(panels)), window_size=window_size, border=False)
    aspect = (window_size[0] / len(panels)) / window_size[1]
    direction, up = view_direction(view, axis)
    for i, ((title, _, kind), rng) in enumerate(zip(panels, ranges)):
        p.subplot(0, i)
        p.add_mesh(cut, scalars=f"panel{i}", clim=rng, cmap=cmap if kind == "value" else
                   ("coolwarm" if rng[0] < 0 else "magma"), show_edges=False, lighting=view == "clip",
                   ambient=0.35 if view == "clip" else 0.0,
                   scalar_bar_args=dict(title=" " * (i + 1), vertical=True,   # units: in the title
                                        n_labels=5, fmt="%.3g", title_font_size=12, label_font_size=12,
                                        position_x=DRAW_REGION[1] + 0.03, position_y=DRAW_REGION[2],
                                        width=0.07, height=DRAW_REGION[3] - DRAW_REGION[2], color="black"))
        p.add_text(f"{title} [{units}]" if units else title, position="upper_edge", font_size=12, color="black")
        if label and i == 0:
            p.add_text(label, position="lower_left", font_size=10, color="black")
    p.set_background("white")
    bounds = union_bounds([cut] * len(panels))
    for i in range(len(panels)):
        p.subplot(0, i)
        fit_camera(p.renderer.camera, bounds, direction, up, aspect)
        p.renderer.camera_set = True            # else pyvista resets the camera at the first render
        p.renderer.ResetCameraClippingRange()
    return p


def frame_image(mesh, field: str, view: str = "slice", axis: str = "auto", compare: bool = False,
                component: int | None = None, clim=None, window_size=None, cmap: str = "viridis",
                label: str | None = None, ranges=None) -> np.ndarray:
    """Render one frame to an (H, W, 3) uint8 image (window_size = (W, H) of the whole picture; default
    1024x768, 1800x600 with ``compare``); see :func:`frame_plotter`."""
    p = frame_plotter(mesh, field, view, axis, compare, component, clim, window_size, cmap, label, ranges)
    img = p.screenshot(return_img=True)
    p.close()
    return np.asarray(img)[..., :3]


def view_direction(view: str, axis: str) -> tuple[np.ndarray, np.ndarray]:
    """(camera viewing direction (3,), view-up (3,)) of a slice/surface normal to ``axis`` or of the 3-D clip
    view (isometric, z up)."""
    if view == "clip":
        return -np.ones(3) / np.sqrt(3.0), np.array([0.0, 0.0, 1.0])
    normal = np.asarray(AXES[axis])
    return (-normal if axis == "z" else normal), np.asarray(VIEW_UP[axis], dtype=np.float64)


def union_bounds(meshes) -> np.ndarray:
    """(3, 2) [min, max] per axis over all ``meshes`` (pyvista bounds)."""
    b = np.array([np.asarray(m.bounds, dtype=np.float64).reshape(3, 2) for m in meshes])
    return np.stack([b[:, :, 0].min(axis=0), b[:, :, 1].max(axis=0)], axis=1)


def fit_camera(camera, bounds, direction, up, aspect: float, region=None, margin: float = 1.03) -> None:
    """Parallel-projection camera that shows the whole box ``bounds`` ((3, 2)) inside ``region``.

    ``region`` = (left, right, bottom, top) as fractions of the panel (default :data:`DRAW_REGION`: the colour
    bar keeps the right quarter, the title the top strip, the time label the bottom strip); ``aspect`` is the
    panel's width / height in pixels. The box's 8 corners projected on the view plane decide the scale.
    """
    left, right, bottom, top = region or DRAW_REGION
    d = np.asarray(direction, dtype=np.float64)
    d /= np.linalg.norm(d)
    r = np.cross(d, up)
    r /= np.linalg.norm(r)
    u = np.cross(r, d)
    b = np.asarray(bounds, dtype=np.float64).reshape(3, 2)
    corners = np.array([[x, y, z] for x in b[0] for y in b[1] for z in b[2]])
    centre = b.mean(axis=1)
    xr, yu = (corners - centre) @ r, (corners - centre) @ u
    diag = float(np.linalg.norm(b[:, 1] - b[:, 0])) or 1.0
    half_w, half_h = max(np.abs(xr).max(), 1e-9 * diag), max(np.abs(yu).max(), 1e-9 * diag)
    scale = margin * max(half_w / (aspect * (right - left)), half_h / (top - bottom))   # half the view height
    # The view centre sits where the region's centre must be moved to put the box's centre in the region.
    focal = (centre + r * (1.0 - left - right) * scale * aspect + u * (1.0 - bottom - top) * scale)
    camera.SetParallelProjection(True)
    camera.SetFocalPoint(*focal)
    camera.SetPosition(*(focal - d * 4.0 * diag))
    camera.SetViewUp(*u)
    camera.SetParallelScale(scale)


def save_png(img: np.ndarray, path) -> Path:
    from PIL import Image

    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(img).save(tmp, format="PNG")
    return path


def render_field(source, field: str, out_png, step: int | None = -1, time: float | None = None,
                 view: str = "slice", axis: str = "auto", compare: bool = False, component: int | None = None,
                 clim=None, window_size=None, cmap: str = "viridis") -> Path:
    """PNG of ``field`` from a pyvista mesh or a .pvd/.vtu/.pvtu path (one frame: ``step``/``time``)."""
    if isinstance(source, (str, os.PathLike)):
        frames = series_frames(source)
        fr = frames[pick_frame(frames, step, time)]
        mesh, label = load_mesh(fr.file, fr.index), _label(fr)
    else:
        mesh, label = source, None
    img = frame_image(mesh, field, view, axis, compare, component, clim, window_size, cmap, label)
    return save_png(img, out_png)


def render_arrays(points, cells: dict, point_data: dict, field: str, out_png, **kw) -> Path:
    """PNG of ``field`` from arrays: points (N,3), cells {type: (M,k)}, point_data {name: (N,)|(N,C)}."""
    return render_field(mesh_from_arrays(points, cells, point_data), field, out_png, **kw)


def _label(fr: Frame) -> str:
    return f"t = {fr.time:.4g}" + (f"  (step {fr.step})" if fr.step is not None else "")


def render_series(source, field: str, out_png=None, step: int | None = -1, time: float | None = None,
                  animation=None, view: str = "slice", axis: str = "auto", compare: bool = False,
                  component: int | None = None, clim=None, window_size=None, cmap: str = "viridis",
                  fps: float = 5.0, progress: bool = False) -> dict:
    """PNG of one frame of a series and/or an animation (.gif, or .mp4 with ffmpeg) of all frames.

    The animation's colour ranges cover the whole series (value panels: min/max over every frame; error: the
    largest |error|), so colours mean the same in every frame. Returns {"png": path, "animation": path}.
    """
    frames = series_frames(source)
    out = {}
    if out_png is not None:
        out["png"] = render_field(source, field, out_png, step, time, view, axis, compare, component, clim,
                                  window_size, cmap)
    if animation is None:
        return out
    animation = Path(animation)
    if animation.suffix not in (".gif", ".mp4"):
        raise MeshgnnError(f"{animation}: animations are .gif or .mp4")
    if animation.suffix == ".mp4" and shutil.which("ffmpeg") is None:
        raise MeshgnnError(f"{animation}: .mp4 needs ffmpeg on PATH (not found); write a .gif instead")
    ranges = _series_ranges(frames, field, compare, component, clim)
    from .progress import Progress

    with Progress(len(frames), "render", enabled=progress, every_s=30 if progress else None, stream=sys.stderr,
                  unit="frame") as bar:
        images = [frame_image(load_mesh(fr.file, fr.index), field, view, axis, compare, component, None,
                              window_size, cmap, _label(fr), ranges) for fr in bar.track(frames)]
    out["animation"] = (_save_gif if animation.suffix == ".gif" else _save_mp4)(images, animation, fps)
    return out


def _series_ranges(frames, field, compare, component, clim):
    lo, hi, emax, signed = np.inf, -np.inf, 0.0, False
    for fr in frames:
        panels = panels_for(load_mesh(fr.file, fr.index), field, compare, component)
        for _, v, kind in panels:
            if kind == "value":
                lo, hi = min(lo, float(np.nanmin(v))), max(hi, float(np.nanmax(v)))
            else:
                emax, signed = max(emax, float(np.nanmax(np.abs(v)))), signed or bool(np.nanmin(v) < 0)
    if clim is not None:
        lo, hi = map(float, clim)
    value = _nonempty(lo, hi)
    err = _nonempty(-emax, emax) if signed else _nonempty(0.0, emax)
    return [value, value, err] if compare else [value]


def _save_gif(images, path, fps):
    from PIL import Image

    pil = [Image.fromarray(i) for i in images]
    with atomic_path(path, suffix=".gif") as tmp:
        pil[0].save(tmp, format="GIF", save_all=True, append_images=pil[1:], duration=int(1000 / fps), loop=0)
    return Path(path)


def _save_mp4(images, path, fps):
    with tempfile.TemporaryDirectory() as d:
        for i, img in enumerate(images):
            save_png(img, Path(d) / f"f{i:05d}.png")
        with atomic_path(path, suffix=".mp4") as tmp:
            subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-framerate", str(fps), "-i",
                            str(Path(d) / "f%05d.png"), "-pix_fmt", "yuv420p", "-vf",
                            "pad=ceil(iw/2)*2:ceil(ih/2)*2", str(tmp)], check=True)
    return Path(path)
