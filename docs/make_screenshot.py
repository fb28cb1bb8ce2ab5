"""Take the README's screenshots: the widget (docs/images/widget.png) and the automatic mode's lineage
(docs/images/lineage.png), with the built-in nano-fluo on the shipped sample.

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_screenshot.py [--out docs/images/widget.png]
    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_screenshot.py --lineage [--out docs/images/lineage.png]

The widget: it does what a user does: opens sample_data/nuclei_timelapse.ome.tif in napari, docks the SAM 2
widget, keeps the default model (nano-fluo, no download), clicks once inside every nucleus of frame 0 (the clicks
of sample_data/nuclei_prompts.csv, each a new object), propagates forward, shows frame 7 and saves a screenshot of
the whole window.

The lineage: `napari-sam2 track sample_data/nuclei_timelapse.ome.tif --auto --out …` (no prompts: segment
everything on frame 0, then discovery on every frame), the result opened in napari with napari-sam2's reader:
labels, and the Tracks layer whose graph joins the dividing mother to her two daughters, on the last frame with
the whole track history drawn.

Needs a display (Xvfb on a headless machine) and napari with a Qt binding.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _wait(app, condition, timeout: float = 600.0) -> None:
    """Run the Qt event loop until condition() is true (the widget works on background threads)."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("the widget did not finish in time")
        app.processEvents()
        time.sleep(0.02)


def _settle_and_save(app, viewer, out: Path) -> None:
    """Fit the view, let the canvas draw (a second of events), then save the whole window to `out`."""
    viewer.reset_view()
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out), canvas_only=False)


def main(out: Path, frame: int = 7, size: tuple[int, int] = (1500, 900), viewer=None) -> Path:
    """Make the screenshot at `out` (PNG); `viewer`: a shown napari viewer to use (default: a new one, closed
    at the end)."""
    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    from napari_sam2.io.readers import open_stack
    from napari_sam2.prompts import PromptSet
    from napari_sam2.widget import SAM2Widget

    movie = open_stack(ROOT / "sample_data" / "nuclei_timelapse.ome.tif")
    clicks = PromptSet.load(ROOT / "sample_data" / "nuclei_prompts.csv")
    own_viewer = viewer is None
    if own_viewer:
        viewer = napari.Viewer(title="napari-sam2")
    viewer.window._qt_window.resize(*size)
    app = QApplication.instance()
    image = viewer.add_image(
        np.asarray(movie.data),
        name="nuclei time-lapse",
        colormap="gray",
        scale=movie.scale,  # 30 s, 0.5 µm, 0.5 µm from the OME-TIFF
        units=tuple(movie.units[a] for a in movie.axes),
        axis_labels=tuple(movie.axes),
    )
    widget = SAM2Widget(viewer)
    viewer.window.add_dock_widget(widget, name="SAM 2 tracking")
    try:
        widget.select_layer(image)
        assert widget.model_combo.currentText() == "nano-fluo", "the default model should be the built-in one"
        widget.device_combo.setCurrentText("cpu")
        ready = []
        widget.sessionReady.connect(lambda: ready.append(True))
        widget.load_button.click()
        _wait(app, lambda: ready and widget.idle)
        viewer.dims.set_current_step(0, 0)
        for k, prompt in enumerate(clicks):
            if k:
                widget.new_object()
            (y, x) = prompt.points[0]
            widget.prompt_layers.points.add([prompt.frame, float(y), float(x)])
            _wait(app, lambda: widget.idle)
        done = []
        widget.propagationDone.connect(done.append)
        widget.forward_button.click()
        _wait(app, lambda: done and widget.idle)
        viewer.dims.set_current_step(0, frame)
        viewer.layers.selection.active = widget.labels_layer
        _settle_and_save(app, viewer, out)
    finally:
        widget.shutdown()
        _wait(app, lambda: not widget.workers_running)
        if own_viewer:
            viewer.close()
    return out


def lineage(out: Path, store: Path | None = None, size: tuple[int, int] = (1200, 800), viewer=None) -> Path:
    """Make the lineage figure at `out` (PNG): the `--auto` result `store` (default: made here from the shipped
    time-lapse by the command line, in a temporary folder) opened in napari, on its last frame with every track's
    whole history and the division drawn. `viewer`: a shown napari viewer to use (default: a new one, closed at
    the end)."""
    import tempfile

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_sam2 import cli

    with tempfile.TemporaryDirectory() as tmp:
        if store is None:
            store = Path(tmp) / "nuclei_timelapse.ome.zarr"
            movie = ROOT / "sample_data" / "nuclei_timelapse.ome.tif"
            code = cli.main(["track", str(movie), "--auto", "--out", str(store), "--device", "cpu", "--quiet"])
            if code != 0:
                raise RuntimeError(f"napari-sam2 track --auto failed (exit {code})")
        own_viewer = viewer is None
        if own_viewer:
            viewer = napari.Viewer(title="napari-sam2")
        viewer.window._qt_window.resize(*size)
        app = QApplication.instance()
        try:
            layers = viewer.open(str(store), plugin="napari-sam2")
            tracks = next(layer for layer in layers if type(layer).__name__ == "Tracks")
            labels = next(layer for layer in layers if type(layer).__name__ == "Labels")
            if not tracks.graph:
                raise RuntimeError(f"{store}: no division in the lineage graph; nothing to show")
            n_frames = int(labels.data.shape[0])
            labels.opacity = 0.45
            tracks.tail_length = n_frames  # the whole history up to the frame shown
            tracks.tail_width = 3
            tracks.color_by = "track_id"
            viewer.dims.set_current_step(0, n_frames - 1)
            viewer.layers.selection.active = tracks
            _settle_and_save(app, viewer, out)
        finally:
            if own_viewer:
                viewer.close()
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lineage", action="store_true", help="the automatic mode's lineage figure instead")
    parser.add_argument("--out", type=Path, default=None, help="the PNG (docs/images/widget.png or lineage.png)")
    parser.add_argument("--frame", type=int, default=7, help="the frame shown in the widget's screenshot (7)")
    parser.add_argument("--store", type=Path, default=None, help="--lineage: an existing --auto result to show")
    args = parser.parse_args()
    if args.lineage:
        print(lineage(args.out or ROOT / "docs" / "images" / "lineage.png", args.store))
    else:
        print(main(args.out or ROOT / "docs" / "images" / "widget.png", args.frame, (1500, 900)))
