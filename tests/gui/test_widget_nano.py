"""Out of the box: napari's sample data + the widget's default model (the built-in nano-fluo, no download).

A user opens File > Open Sample > Nuclei time-lapse, docks the widget, keeps the default model, clicks a nucleus
and propagates: the Labels layer must hold that nucleus on every frame (real weights, real viewer, real clicks).
"""

import numpy as np
from gui_helpers import WAIT_MS, canvas_click, wait_idle
from scipy import ndimage


def _iou(a, b):
    union = np.logical_or(a, b).sum()
    return np.logical_and(a, b).sum() / union if union else 1.0


def test_sample_data_click_and_propagate_with_the_default_model(make_napari_viewer, qtbot):
    from napari_sam2.widget import SAM2Widget

    viewer = make_napari_viewer()
    viewer.open_sample("napari-sam2", "nuclei_timelapse")
    image, truth_layer = viewer.layers["nuclei time-lapse"], viewer.layers["nuclei time-lapse ground truth"]
    truth = np.asarray(truth_layer.data)
    widget = SAM2Widget(viewer)
    viewer.window.add_dock_widget(widget, name="SAM 2")
    try:
        widget.select_layer(image)
        assert widget.model_combo.currentText() == "nano-fluo"  # the default needs no download
        widget.device_combo.setCurrentText("cpu")
        with qtbot.waitSignal(widget.sessionReady, timeout=WAIT_MS):
            widget.load_button.click()
        # a wandering nucleus (id 6), clicked at its deepest point on frame 0
        obj = 6
        depth = ndimage.distance_transform_edt(truth[0] == obj)
        y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
        viewer.dims.set_current_step(0, 0)
        points = widget.prompt_layers.points
        viewer.layers.selection.active = points
        points.mode = "add"
        with qtbot.waitSignal(widget.prompted, timeout=WAIT_MS):
            canvas_click(viewer, (float(y), float(x)))
        wait_idle(qtbot, widget)
        labels = np.asarray(widget.labels_layer.data)
        assert _iou(labels[0] == 1, truth[0] == obj) >= GUI_CLICK_BAR
        with qtbot.waitSignal(widget.propagationDone, timeout=5 * WAIT_MS):
            widget.forward_button.click()
        wait_idle(qtbot, widget)
        labels = np.asarray(widget.labels_layer.data)
        ious = [_iou(labels[t] == 1, truth[t] == obj) for t in range(1, len(truth)) if (truth[t] == obj).any()]
        assert np.mean(ious) >= GUI_TRACK_BAR, ious
    finally:
        widget.shutdown()
        qtbot.waitUntil(lambda: not widget.workers_running, timeout=WAIT_MS)


GUI_CLICK_BAR = 0.85  # measured 0.956
GUI_TRACK_BAR = 0.8  # measured 0.937
