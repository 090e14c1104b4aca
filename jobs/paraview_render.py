"""Render a field of a meshgnn rollout with ParaView: slice through the mesh centre at the last time -> PNG.

Run with ParaView's Python (needs an X server or off-screen ParaView):
    xvfb-run -a -s "-screen 0 1280x1024x24" pvpython jobs/paraview_render.py OUT/rollout.pvd co2 co2.png [--normal x|y|z]
        [--time T] [--size 1200 800] [--component N]
Prints one JSON line: the file written, the time shown, the colour range and the field's units.
"""
import argparse
import json
import sys

from paraview import simple as pvs


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pvd", help="rollout .pvd (or .vtu/.pvtu)")
    p.add_argument("field", help="point field to colour by (vectors: magnitude)")
    p.add_argument("png", help="PNG to write")
    p.add_argument("--normal", default="x", choices=["x", "y", "z"], help="slice normal (default x)")
    p.add_argument("--time", type=float, default=None, help="time to show (default: the last)")
    p.add_argument("--size", type=int, nargs=2, default=[1200, 800], help="image width height")
    p.add_argument("--component", type=int, default=None, help="vector component (default: magnitude)")
    return p.parse_args(argv)


def units_of(source, field):
    """The UNITS_LABEL the writer stored on the array (fetched from the data; '' when none)."""
    try:
        from paraview import servermanager
        from vtkmodules.vtkCommonCore import vtkDataArray

        data = servermanager.Fetch(source)
        if data.IsA("vtkMultiBlockDataSet") or data.IsA("vtkPartitionedDataSetCollection"):
            it = data.NewIterator()
            it.InitTraversal()
            data = it.GetCurrentDataObject()
        arr = data.GetPointData().GetArray(field)
        info = arr.GetInformation() if arr is not None else None
        if info is not None and info.Has(vtkDataArray.UNITS_LABEL()):
            return info.Get(vtkDataArray.UNITS_LABEL())
    except Exception:  # noqa: BLE001 - units are decoration only
        pass
    return ""


def main(argv):
    a = parse(argv)
    reader = pvs.OpenDataFile(a.pvd)
    if reader is None:
        sys.exit(f"{a.pvd}: ParaView cannot open this file")
    names = list(reader.PointData.keys())
    if a.field not in names:
        sys.exit(f"{a.pvd}: no point field {a.field!r} (have {', '.join(names)})")
    times = list(reader.TimestepValues) if hasattr(reader, "TimestepValues") else []
    if not isinstance(times, list):
        times = [times]
    t = a.time if a.time is not None else (times[-1] if times else 0.0)
    scene = pvs.GetAnimationScene()
    scene.UpdateAnimationUsingDataTimeSteps()
    scene.AnimationTime = t

    bounds = reader.GetDataInformation().GetBounds()
    centre = [(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2]
    normal = {"x": [1, 0, 0], "y": [0, 1, 0], "z": [0, 0, 1]}[a.normal]
    cut = pvs.Slice(Input=reader)
    cut.SliceType = "Plane"
    cut.SliceType.Origin = centre
    cut.SliceType.Normal = normal

    view = pvs.CreateView("RenderView") if pvs.GetActiveView() is None else pvs.GetActiveView()
    view.ViewSize = a.size
    view.OrientationAxesVisibility = 0
    display = pvs.Show(cut, view)
    mode = "Magnitude" if a.component is None else "Component"
    pvs.ColorBy(display, ("POINTS", a.field, mode))
    lut = pvs.GetColorTransferFunction(a.field)
    if a.component is not None:
        lut.VectorMode, lut.VectorComponent = "Component", a.component
    display.RescaleTransferFunctionToDataRange(False, True)
    units = units_of(reader, a.field)
    bar = pvs.GetScalarBar(lut, view)
    bar.Title = f"{a.field} [{units}]" if units else a.field
    bar.ComponentTitle = ""
    display.SetScalarBarVisibility(view, True)
    up = [0, 0, 1] if a.normal != "z" else [0, 1, 0]
    view.CameraPosition = [c + n for c, n in zip(centre, normal)]
    view.CameraFocalPoint = centre
    view.CameraViewUp = up
    view.CameraParallelProjection = 1
    view.ResetCamera()
    pvs.Render(view)
    pvs.SaveScreenshot(a.png, view, ImageResolution=a.size)
    rng = list(lut.RGBPoints[0::4][:1]) + list(lut.RGBPoints[0::4][-1:])
    print(json.dumps({"png": a.png, "time": t, "times": len(times), "field": a.field, "units": units,
                      "range": rng}))


if __name__ == "__main__":
    main(sys.argv[1:])
