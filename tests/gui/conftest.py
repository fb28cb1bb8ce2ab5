"""GUI fixtures: a napari viewer (under Xvfb via pytest-xvfb) with the SAM 2 widget docked and the tiny model."""

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from gui_helpers import WAIT_MS


@pytest.fixture
def stack(blob_stack):
    """6 frames of 96×128 px: two bright disks moving in opposite directions."""
    return blob_stack(n_frames=6)


@pytest.fixture
def sam_viewer(make_napari_viewer, qtbot, tiny_checkpoint):
    """make(image, **add_image_kwargs) -> (viewer, image layer, widget with the tiny model loaded)."""
    from napari_sam2.widget import SAM2Widget

    made = []

    def make(image, load=True, **kwargs):
        viewer = make_napari_viewer()
        layer = viewer.add_image(image, name="blobs", **kwargs)
        widget = SAM2Widget(viewer)
        viewer.window.add_dock_widget(widget, name="SAM 2")
        made.append(widget)
        widget.select_layer(layer)
        if load:
            widget.set_model_source(str(tiny_checkpoint))
            widget.device_combo.setCurrentText("cpu")
            with qtbot.waitSignal(widget.sessionReady, timeout=WAIT_MS):
                widget.load_button.click()
        return viewer, layer, widget

    yield make
    for widget in made:
        widget.shutdown()
        qtbot.waitUntil(lambda w=widget: not w.workers_running, timeout=WAIT_MS)


@pytest.fixture
def reference(tiny_model):
    """reference(stack) -> a TrackingSession on the same data, to compare the widget's labels with."""
    from napari_sam2.session import TrackingSession

    def make(stack, **kwargs):
        return TrackingSession(tiny_model, np.asarray(stack), **kwargs)

    return make
