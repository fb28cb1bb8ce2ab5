"""The widget's automatic features with the built-in nano-fluo on small synthetic movies: "Find all objects on this
frame", "discover new objects while propagating" and divisions in the object list (real viewer, real clicks)."""

import numpy as np
import pytest
from gui_helpers import WAIT_MS, canvas_click, wait_idle
from scipy import ndimage

from napari_sam2.sample_data import nuclei_timelapse

ID, PROMPTED, STATUS, LINEAGE = range(4)  # the object list's columns


@pytest.fixture
def nano_widget(make_napari_viewer, qtbot):
    """nano_widget(image) -> (viewer, widget) with nano-fluo loaded on the image."""
    from napari_sam2.widget import SAM2Widget

    made = []

    def make(image):
        viewer = make_napari_viewer()
        layer = viewer.add_image(image, name="movie")
        widget = SAM2Widget(viewer)
        viewer.window.add_dock_widget(widget, name="SAM 2")
        made.append(widget)
        widget.select_layer(layer)
        assert widget.model_combo.currentText() == "nano-fluo"
        widget.device_combo.setCurrentText("cpu")
        with qtbot.waitSignal(widget.sessionReady, timeout=WAIT_MS):
            widget.load_button.click()
        return viewer, widget

    yield make
    for widget in made:
        widget.shutdown()
        qtbot.waitUntil(lambda w=widget: not w.workers_running, timeout=WAIT_MS)


def _click_deepest(viewer, widget, qtbot, mask):
    depth = ndimage.distance_transform_edt(mask)
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    viewer.layers.selection.active = widget.prompt_layers.points
    widget.prompt_layers.points.mode = "add"
    with qtbot.waitSignal(widget.prompted, timeout=WAIT_MS):
        canvas_click(viewer, (float(y), float(x)))
    wait_idle(qtbot, widget)


def _column(widget, column):
    return {
        int(widget.table.item(r, ID).text()): widget.table.item(r, column).text()
        for r in range(widget.table.rowCount())
    }


def test_find_all_objects_adds_reviewable_objects(nano_widget, qtbot):
    movie = nuclei_timelapse(n_frames=3, shape=(128, 128), n_nuclei=4, seed=21)
    truth = movie.labels[0]
    viewer, w = nano_widget(movie.image)
    viewer.dims.set_current_step(0, 0)
    _click_deepest(viewer, w, qtbot, truth == 1)
    assert w.objects == [1]
    with qtbot.waitSignal(w.prompted, timeout=WAIT_MS):
        w.find_button.click()
    wait_idle(qtbot, w)
    new = [o for o in w.objects if o != 1]
    assert len(new) >= 2
    labels = np.asarray(w.labels_layer.data)
    for obj in new:  # each new object is a true nucleus other than the clicked one
        assert np.bincount(truth[labels[0] == obj], minlength=5).argmax() not in (0, 1)
    prompted = _column(w, PROMPTED)
    assert all(prompted[o] == "0" for o in new)  # prompted by its mask on frame 0
    # review: select a found object in the list and delete it
    w.table.selectRow(w.objects.index(new[0]))
    assert w.current_obj == new[0]
    w.delete_button.click()
    wait_idle(qtbot, w)
    assert new[0] not in w.objects and new[0] not in _column(w, ID)
    assert not (np.asarray(w.labels_layer.data) == new[0]).any()
    assert [p.obj_id for p in w.prompt_set() if p.mask is not None] == new[1:]  # saved with the result


def test_discovery_while_propagating_shows_the_division(nano_widget, qtbot):
    from napari_sam2.discovery import DiscoveryOptions

    movie = nuclei_timelapse(n_frames=6, shape=(128, 128), n_nuclei=3, seed=11)
    div = movie.events["division"]
    mother, t_div = div["parent"], div["frame"]

    def oracle(session, frame):  # a perfect detector: this test is about the widget, not about segmentation
        truth = movie.labels[frame]
        return [truth == o for o in np.unique(truth)[1:]]

    viewer, w = nano_widget(movie.image)
    viewer.dims.set_current_step(0, 0)
    for obj in np.unique(movie.labels[0])[1:]:
        if obj != 1:
            w.new_object()
        _click_deepest(viewer, w, qtbot, movie.labels[0] == obj)
    assert w.objects == [1, 2, 3]
    w.discovery_options = DiscoveryOptions(detector=oracle, arrivals=False, division_gap=0)
    w.discover_check.setChecked(True)
    with qtbot.waitSignal(w.propagationDone, timeout=5 * WAIT_MS):
        w.forward_button.click()
    wait_idle(qtbot, w)
    daughters = sorted(d for d, m in w.controller.lineage(()).items() if m == mother)
    assert len(daughters) == 2 and set(daughters) <= set(w.objects)
    lineage = _column(w, LINEAGE)
    assert lineage[mother] == "→ " + ", ".join(map(str, daughters))
    assert all(lineage[d] == f"mother {mother}" for d in daughters)
    labels = np.asarray(w.labels_layer.data)
    assert not (labels[t_div:] == mother).any() and all((labels[t_div] == d).any() for d in daughters)
    assert w.provenance().parents == dict.fromkeys(daughters, mother)
    # switched off, a pass finds nothing new
    w.discover_check.setChecked(False)
    assert w.controller.discovery is None
