"""The widget on a z-stack (a 3-D layer whose stream axis the viewer names z): the axial edge rule as `track()`
applies it (the same labels), recorded in the saved result, and `napari-sam2 replay` of it identical; a layer
streamed along t gets no rule."""

import numpy as np
import pytest
from gui_helpers import WAIT_MS, wait_idle
from qtpy.QtCore import Qt
from scipy import ndimage


def _nuclei_zstack(seed=5):
    """A [12, 64, 64] synthetic nuclei z-stack, its labels and one click per nucleus on its widest slice z."""
    from napari_sam2 import PromptSet
    from napari_sam2.sample_data import synthetic_nuclei_4d

    s = synthetic_nuclei_4d(n_frames=1, n_slices=12, shape=(64, 64), n_nuclei=3, seed=seed)
    image, truth = s.image[0], s.labels[0]
    z = int(np.argmax((truth > 0).sum(axis=(1, 2))))
    prompts = PromptSet()
    for k, obj in enumerate(np.unique(truth[z])[1:]):
        depth = ndimage.distance_transform_edt(truth[z] == obj)
        y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
        prompts.add(z, k + 1, points=[[float(y), float(x)]])
    return image, z, prompts


def _type_z_edge(qtbot, widget, text):
    """Type `text` into the widget's z edge field and press Return, as a user does."""
    field = widget.z_edge_combo.lineEdit()
    field.selectAll()
    qtbot.keyClicks(field, text)
    qtbot.keyClick(field, Qt.Key.Key_Return)


def test_a_z_stack_in_the_widget_gets_the_axial_edge_rule_as_track_does(sam_viewer, qtbot, tmp_path):
    from napari_sam2 import PromptSet, track
    from napari_sam2.io.results import open_result
    from napari_sam2.replay import replay
    from napari_sam2.sample_data import synthetic_nuclei_4d
    from napari_sam2.session import TrackingSession
    from napari_sam2.volume import Z_EDGE

    s = synthetic_nuclei_4d(n_frames=1, n_slices=12, shape=(64, 64), n_nuclei=3, seed=5)
    image, truth = s.image[0], s.labels[0]
    z = int(np.argmax((truth > 0).sum(axis=(1, 2))))
    viewer, _layer, w = sam_viewer(image, load=False, axis_labels=("z", "y", "x"))
    assert w.geometry.z_stream and w.model_combo.currentText() == "nano-fluo"
    assert not w.z_edge_combo.isHidden() and w.z_edge_combo.currentText() == "auto"  # the control, at its default
    w.device_combo.setCurrentText("cpu")
    with qtbot.waitSignal(w.sessionReady, timeout=WAIT_MS):
        w.load_button.click()
    assert w.controller.session(()).z_edge == Z_EDGE
    viewer.dims.set_current_step(0, z)
    prompts = PromptSet()
    for k, obj in enumerate(np.unique(truth[z])[1:]):
        depth = ndimage.distance_transform_edt(truth[z] == obj)
        y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
        if k:
            w.new_object()
        with qtbot.waitSignal(w.prompted, timeout=WAIT_MS):
            w.prompt_layers.points.add([z, float(y), float(x)])
        wait_idle(qtbot, w)
        prompts.add(z, k + 1, points=[[float(y), float(x)]])
    with qtbot.waitSignal(w.propagationDone, timeout=5 * WAIT_MS):
        w.both_button.click()
    wait_idle(qtbot, w)
    labels = np.asarray(w.labels_layer.data).copy()

    expected = np.asarray(track(image, prompts, model="nano-fluo", axis="z", device="cpu", tables=False).labels)
    np.testing.assert_array_equal(labels, expected)  # the widget's z-stack labels are track()'s, rule included
    # the same clicks, the same z stream (its contrast, its masks mended: the click rule's through_z), without the rule
    with TrackingSession(w.controller.model, image, z_stream=True) as plain:
        prompts.apply(plain)
        untrimmed = np.zeros_like(labels)
        for r in plain.propagate("both"):
            untrimmed[r.frame] = r.labels
    assert ((untrimmed > 0) & (labels == 0)).any() and not ((labels > 0) & (untrimmed == 0)).any()

    path = tmp_path / "zstack.ome.zarr"
    with qtbot.waitSignal(w.saved, timeout=WAIT_MS):
        w.save(str(path))
    saved = open_result(path)
    assert saved.axes == "zyx" and saved.record.settings["z_edge"] == Z_EDGE and saved.record.settings["z_stream"]
    from napari_sam2.volume_time import Z_EDGE_BACKGROUND

    assert saved.record.edit_log[-1] == {"op": "edge", "z_edge": Z_EDGE, "background": Z_EDGE_BACKGROUND}
    replayed = replay(path, image=image)
    assert replayed.identical, (replayed.differing_frames, replayed.differing_pixels)


def test_a_stack_streamed_along_t_gets_no_axial_edge_rule(sam_viewer, qtbot, tmp_path, stack):
    from napari_sam2.io.results import open_result

    _viewer, _layer, w = sam_viewer(stack)  # unnamed axes: a time-lapse
    assert not w.geometry.z_stream and w.controller.session(()).z_edge is None
    assert w.z_edge_combo.isHidden() and w.z_edge_label.isHidden()  # no axial edge control along t
    path = tmp_path / "movie.ome.zarr"
    with qtbot.waitSignal(w.saved, timeout=WAIT_MS):
        w.save(str(path))
    settings = open_result(path).record.settings
    assert settings["z_edge"] is None and settings["z_stream"] is False


def test_the_z_stack_sample_is_streamed_along_z(make_napari_viewer):
    from napari_sam2.widget import SAM2Widget

    viewer = make_napari_viewer()
    viewer.open_sample("napari-sam2", "nuclei_zstack")
    widget = SAM2Widget(viewer)
    try:
        widget.select_layer(viewer.layers["nuclei z-stack"])
        assert tuple(viewer.dims.axis_labels) == ("z", "y", "x")
        assert widget.geometry.z_stream and not widget.geometry.coupled
    finally:
        widget.shutdown()


@pytest.fixture
def notes(monkeypatch):
    """Every notification the widget shows, as (kind, message)."""
    seen = []
    monkeypatch.setattr("napari_sam2.widget._widget._notify", lambda kind, msg: seen.append((kind, msg)))
    return seen


def test_the_z_edge_control_gives_track_s_labels_off_and_with_a_fraction(sam_viewer, qtbot, tmp_path, notes):
    """ "off" typed before tracking gives track(z_edge="off")'s labels; 0.6 typed after the propagation propagates
    again and gives track(z_edge=0.6)'s, which the save records and replays identically; a bad value is refused with
    --z-edge's message and changes nothing."""
    from napari_sam2 import track
    from napari_sam2.io.results import open_result
    from napari_sam2.replay import replay

    image, z, prompts = _nuclei_zstack()
    viewer, _layer, w = sam_viewer(image, load=False, axis_labels=("z", "y", "x"))
    w.device_combo.setCurrentText("cpu")
    _type_z_edge(qtbot, w, "off")
    assert w.controller.z_edge is None
    with qtbot.waitSignal(w.sessionReady, timeout=WAIT_MS):
        w.load_button.click()
    assert w.controller.session(()).z_edge is None
    viewer.dims.set_current_step(0, z)
    for k, prompt in enumerate(prompts):
        if k:
            w.new_object()
        with qtbot.waitSignal(w.prompted, timeout=WAIT_MS):
            w.prompt_layers.points.add([z, *prompt.points[0]])
        wait_idle(qtbot, w)
    with qtbot.waitSignal(w.propagationDone, timeout=5 * WAIT_MS):
        w.both_button.click()
    wait_idle(qtbot, w)

    def tracked(z_edge):
        run = track(image, prompts, model="nano-fluo", axis="z", device="cpu", tables=False, z_edge=z_edge)
        return np.asarray(run.labels)

    off = tracked("off")
    np.testing.assert_array_equal(np.asarray(w.labels_layer.data), off)

    with qtbot.waitSignal(w.propagationDone, timeout=5 * WAIT_MS):  # the frames are propagated again with 0.6
        _type_z_edge(qtbot, w, "0.6")
    wait_idle(qtbot, w)
    assert w.controller.session(()).z_edge == 0.6
    assert ("info", "Axial edge rule now 0.6: propagating frames 0–11 again with it.") in notes
    labels = np.asarray(w.labels_layer.data).copy()
    np.testing.assert_array_equal(labels, tracked(0.6))
    assert not np.array_equal(labels, off)

    session = w.controller.session(())
    _type_z_edge(qtbot, w, "1.5")  # refused: the message of --z-edge, the field shows the rule in use again
    assert notes[-1] == ("warning", "z_edge is a fraction between 0 and 1 (or None: no axial edge rule); got 1.5")
    assert w.z_edge_combo.currentText() == "0.6" and w.controller.session(()) is session

    path = tmp_path / "zstack.ome.zarr"
    with qtbot.waitSignal(w.saved, timeout=WAIT_MS):
        w.save(str(path))
    record = open_result(path).record
    assert record.settings["z_edge"] == 0.6
    from napari_sam2.volume_time import Z_EDGE_BACKGROUND

    assert record.edit_log[-1] == {"op": "edge", "z_edge": 0.6, "background": Z_EDGE_BACKGROUND}
    replayed = replay(path, image=image)
    assert replayed.identical, (replayed.differing_frames, replayed.differing_pixels)

    with qtbot.waitSignal(w.propagationDone, timeout=5 * WAIT_MS):
        _type_z_edge(qtbot, w, "auto")
    wait_idle(qtbot, w)
    assert w.controller.session(()).z_edge == 0.5
    with qtbot.waitSignal(w.sessionReady, timeout=WAIT_MS), qtbot.waitSignal(w.opened, timeout=WAIT_MS):
        w.open(str(path))  # the result's rule comes back with it, and its continued session keeps it
    wait_idle(qtbot, w)
    assert w.z_edge_combo.currentText() == "0.6" and w.controller.session(()).z_edge == 0.6
    np.testing.assert_array_equal(np.asarray(w.labels_layer.data), labels)

    # changed on the opened result: it is no longer continued (its log applied 0.6); its frames are tracked again
    with qtbot.waitSignal(w.propagationDone, timeout=5 * WAIT_MS):
        _type_z_edge(qtbot, w, "off")
    wait_idle(qtbot, w)
    np.testing.assert_array_equal(np.asarray(w.labels_layer.data), off)
    again = tmp_path / "off.ome.zarr"
    with qtbot.waitSignal(w.saved, timeout=WAIT_MS):
        w.save(str(again))
    record = open_result(again).record
    assert record.settings["z_edge"] is None and "edge" not in [e["op"] for e in record.edit_log]
    replayed = replay(again, image=image)
    assert replayed.identical, (replayed.differing_frames, replayed.differing_pixels)


def test_the_z_edge_control_sets_the_rule_of_3d_t(sam_viewer, qtbot, tmp_path, tiny_model):
    """3D+t (a 4-D layer's default) streams z too: the field is shown, "off" makes the VolumeTimeSession without the
    rule, 0.3 typed after the propagation propagates the time points again with it (the labels of a
    VolumeTimeSession(z_edge=0.3) on the same click), and the save records 0.3 and replays identically."""
    from napari_sam2.io.results import open_result
    from napari_sam2.prompts import make_prompt
    from napari_sam2.replay import replay
    from napari_sam2.volume_time import VolumeTimeSession

    rng = np.random.default_rng(0)
    image = (rng.random((2, 4, 64, 64)) * 60).astype(np.uint8)
    image[:, 1:3, 16:34, 14:32] += 150
    viewer, _layer, w = sam_viewer(image)
    assert w.geometry.coupled and not w.z_edge_combo.isHidden()
    _type_z_edge(qtbot, w, "off")
    assert w.controller.z_edge is None and w.provenance().settings["z_edge"] is None
    viewer.dims.set_current_step(0, 0)
    viewer.dims.set_current_step(1, 1)
    with qtbot.waitSignal(w.prompted, timeout=WAIT_MS):
        w.prompt_layers.points.add([0, 1, 25, 22])
    wait_idle(qtbot, w)
    with qtbot.waitSignal(w.propagationDone, timeout=5 * WAIT_MS):
        w.forward_button.click()
    wait_idle(qtbot, w)
    assert w.controller.volume.z_edge is None
    off = np.asarray(w.labels_layer.data).copy()

    with qtbot.waitSignal(w.propagationDone, timeout=5 * WAIT_MS):
        _type_z_edge(qtbot, w, "0.3")
    wait_idle(qtbot, w)
    assert w.controller.volume.z_edge == 0.3
    with VolumeTimeSession(tiny_model, image, z_edge=0.3) as direct:
        direct.set_prompt(0, 1, 1, make_prompt(1, 1, [[25.0, 22.0]], [1]))
        expected = np.zeros(image.shape, np.int32)
        for t, labels in direct.propagate_pass(0, 1, reverse=False):
            expected[t] = labels
    np.testing.assert_array_equal(np.asarray(w.labels_layer.data), expected)
    assert expected.any() and ((off > 0) & (expected == 0)).any()  # the rule took voxels away

    path = tmp_path / "embryo.ome.zarr"
    with qtbot.waitSignal(w.saved, timeout=WAIT_MS):
        w.save(str(path))
    assert open_result(path).record.settings["z_edge"] == 0.3
    replayed = replay(path, image=image)
    assert replayed.identical, (replayed.differing_frames, replayed.differing_pixels)
