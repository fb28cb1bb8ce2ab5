"""The widget on a z-stack (a 3-D layer whose stream axis the viewer names z): the axial edge rule as `track()`
applies it (the same labels), recorded in the saved result, and `napari-sam2 replay` of it identical; a layer
streamed along t gets no rule."""

import numpy as np
from gui_helpers import WAIT_MS, wait_idle
from scipy import ndimage


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
    with TrackingSession(w.controller.model, image) as plain:  # the same clicks without the rule
        prompts.apply(plain)
        untrimmed = np.zeros_like(labels)
        for r in plain.propagate("both"):
            untrimmed[r.frame] = r.labels
    assert ((untrimmed > 0) & (labels == 0)).any() and not ((labels > 0) & (untrimmed == 0)).any()

    path = tmp_path / "zstack.ome.zarr"
    with qtbot.waitSignal(w.saved, timeout=WAIT_MS):
        w.save(str(path))
    saved = open_result(path)
    assert saved.axes == "zyx" and saved.record.settings["z_edge"] == Z_EDGE
    assert saved.record.edit_log[-1] == {"op": "edge", "z_edge": Z_EDGE}
    replayed = replay(path, image=image)
    assert replayed.identical, (replayed.differing_frames, replayed.differing_pixels)


def test_a_stack_streamed_along_t_gets_no_axial_edge_rule(sam_viewer, qtbot, tmp_path, stack):
    from napari_sam2.io.results import open_result

    _viewer, _layer, w = sam_viewer(stack)  # unnamed axes: a time-lapse
    assert not w.geometry.z_stream and w.controller.session(()).z_edge is None
    path = tmp_path / "movie.ome.zarr"
    with qtbot.waitSignal(w.saved, timeout=WAIT_MS):
        w.save(str(path))
    assert open_result(path).record.settings["z_edge"] is None


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
