"""Take the README's screenshot (docs/images/widget.png): the widget with the built-in nano-fluo on the shipped sample.

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_screenshot.py [--out docs/images/widget.png]

It does what a user does: opens sample_data/nuclei_timelapse.ome.tif in napari, docks the SAM 2 widget, keeps the
default model (nano-fluo, no download), clicks once inside every nucleus of frame 0 (the clicks of
sample_data/nuclei_prompts.csv, each a new object), propagates forward, shows frame 7 and saves
a screenshot of the whole window. Needs a display (Xvfb on a headless machine) and napari with a Qt binding.
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
        viewer.reset_view()
        for _ in range(20):
            app.processEvents()
            time.sleep(0.05)
        out.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(out), canvas_only=False)
    finally:
        widget.shutdown()
        _wait(app, lambda: not widget.workers_running)
        if own_viewer:
            viewer.close()
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "widget.png")
    parser.add_argument("--frame", type=int, default=7, help="the frame shown (7)")
    args = parser.parse_args()
    print(main(args.out, args.frame, (1500, 900)))
