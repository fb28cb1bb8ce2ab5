"""The widget on a 4-D [T, Z, Y, X] layer: both sliders, prompts on several (t, z) slices, and Save → Open keeping
every time point's prompts (a 4-D result's prompts carry their t and z)."""

import numpy as np
from gui_helpers import WAIT_MS, wait_idle
from scipy import ndimage


def _tzyx():
    rng = np.random.default_rng(0)
    image = (rng.random((2, 4, 64, 64)) * 60).astype(np.uint8)
    image[:, :, 16:34, 14:32] += 150
    image[:, :, 40:56, 38:56] += 150
    return image


def _click(w, qtbot, viewer, t, z, yx):
    viewer.dims.set_current_step(0, t)
    viewer.dims.set_current_step(1, z)
    with qtbot.waitSignal(w.prompted, timeout=WAIT_MS):
        w.prompt_layers.points.add([t, z, *yx])
    wait_idle(qtbot, w)


def test_prompts_on_two_time_points_survive_save_and_open(sam_viewer, qtbot, tmp_path):
    from napari_sam2.io.results import open_result

    image = _tzyx()
    viewer, _layer, w = sam_viewer(image)
    w.axis_combo.setCurrentIndex(1)  # stream along z; one session per time point
    assert w.geometry.stream_axis == 1 and w.geometry.fixed_axes == (0,) and w.geometry.is_tzyx
    _click(w, qtbot, viewer, 0, 1, (25, 22))
    w.new_object()
    _click(w, qtbot, viewer, 1, 2, (47, 46))
    labels = np.asarray(w.labels_layer.data)
    assert labels[0, 1].any() and labels[1, 2].any()

    path = tmp_path / "embryo.ome.zarr"
    with qtbot.waitSignal(w.saved, timeout=WAIT_MS):
        w.save(str(path))
    saved = open_result(path)
    assert saved.axes == "tzyx" and saved.labels.shape == image.shape
    assert saved.prompts.is_4d and saved.prompts.slices == [(0, 1), (1, 2)]  # both time points, not just the shown one
    assert [p.obj_id for p in saved.prompts] == [1, 2]
    np.testing.assert_array_equal(np.asarray(saved.labels), labels)

    # a new viewer whose widget streams along t (one session per z): the prompts land on their (t, z) again
    viewer2, _layer2, w2 = sam_viewer(image)
    assert w2.geometry.coupled  # a 4-D layer's default: 3D+t; here the user streams t instead (one session per z)
    w2.axis_combo.setCurrentIndex(0)
    assert w2.geometry.stream_axis == 0 and w2.geometry.fixed_axes == (1,) and not w2.geometry.coupled
    with qtbot.waitSignal(w2.opened, timeout=WAIT_MS):
        w2.open(str(path))
    wait_idle(qtbot, w2)
    np.testing.assert_array_equal(np.asarray(w2.labels_layer.data), labels)
    assert len(w2.prompt_layers.points.data) == 2
    np.testing.assert_array_equal(np.sort(w2.prompt_layers.points.data[:, :2], axis=0), [[0, 1], [1, 2]])
    assert w2.all_prompts() == saved.prompts
    on_z2 = w2.prompt_set(key=(2,))  # the session of slice z = 2 holds object 2's click at t = 1
    assert [(p.obj_id, p.frame) for p in on_z2] == [(2, 1)]
    assert sorted(w2.objects) == [1, 2]

    # and a further prompt on the opened result is saved with the others
    viewer2.dims.set_current_step(0, 1)
    viewer2.dims.set_current_step(1, 1)
    w2.select_object(1)
    _click(w2, qtbot, viewer2, 1, 1, (26, 23))
    again = tmp_path / "again.ome.zarr"
    with qtbot.waitSignal(w2.saved, timeout=WAIT_MS):
        w2.save(str(again))
    assert open_result(again).prompts.slices == [(0, 1), (1, 1), (1, 2)]


def _deepest(labels_t, obj, z=None):
    """(z, y, x): the deepest pixel of object `obj` on slice z (default: its widest slice) of one time point."""
    if z is None:
        z = int(np.argmax((labels_t == obj).sum(axis=(1, 2))))
    depth = ndimage.distance_transform_edt(labels_t[z] == obj)
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return z, int(y), int(x)


def test_3d_t_propagation_through_z_and_time_with_cancel_correction_and_save(make_napari_viewer, qtbot, tmp_path):
    """A 4-D layer's default is 3D+t: prompts on two time points, propagation carries each object through z and
    time (the VolumeTimeSession, as track()), cancel keeps finished time points, a correction on another (t, z)
    recomputes only the time points it changes, Save → Open keeps labels and every prompt, and `replay` of the
    saved result reruns its edit log to the same labels."""
    from napari_sam2.io.results import open_result
    from napari_sam2.replay import replay
    from napari_sam2.sample_data import synthetic_nuclei_4d
    from napari_sam2.widget import SAM2Widget

    movie = synthetic_nuclei_4d(n_frames=3, n_slices=6, shape=(64, 64), n_nuclei=2, seed=3)
    viewer = make_napari_viewer()
    layer = viewer.add_image(movie.image, name="embryo")
    widgets = []
    try:
        w = SAM2Widget(viewer)
        widgets.append(w)
        viewer.window.add_dock_widget(w, name="SAM 2")
        w.select_layer(layer)
        g = w.geometry
        assert g.coupled and g.stream_axis == 1 and g.fixed_axes == (0,)  # sessions per t stream z (the previews)
        w.device_combo.setCurrentText("cpu")  # the default model, nano-fluo
        with qtbot.waitSignal(w.sessionReady, timeout=WAIT_MS):
            w.load_button.click()
        clicks = {1: (0, *_deepest(movie.labels[0], 1)), 2: (2, *_deepest(movie.labels[2], 2))}
        _click(w, qtbot, viewer, clicks[1][0], clicks[1][1], clicks[1][2:])
        w.new_object()
        _click(w, qtbot, viewer, clicks[2][0], clicks[2][1], clicks[2][2:])
        assert w.both_button.isEnabled()

        # cancel after the first finished time point: what was finished stays
        w.progress.valueChanged.connect(lambda v: v >= 1 and w.cancel())
        with qtbot.waitSignal(w.propagationDone, timeout=5 * WAIT_MS) as done:
            w.both_button.click()
        w.progress.valueChanged.disconnect()
        wait_idle(qtbot, w)
        assert 1 <= done.args[0] < 6 and w.progress.maximum() == 6  # 3 time points forward + 3 backward
        assert (np.asarray(w.labels_layer.data)[0] == 1).any()

        # the whole run: each object at every (t, z) it spans (slices of ≥ 15 px), with per-slice confidences
        with qtbot.waitSignal(w.propagationDone, timeout=5 * WAIT_MS):
            w.both_button.click()
        wait_idle(qtbot, w)
        labels = np.asarray(w.labels_layer.data).copy()
        for obj in (1, 2):
            for t in range(3):
                spans = [z for z in range(6) if (movie.labels[t, z] == obj).sum() >= 15]
                assert spans and all((labels[t, z] == obj).any() for z in spans), (obj, t)
                assert set(w.controller.confidence[(t,)][obj]) == set(range(6))
        assert w.controller.volume.finished() == [0, 1, 2]

        # a correction on another (t, z): only that time point and those carried from it are recomputed
        zc, yc, xc = _deepest(movie.labels[1], 1, z=clicks[1][1] + 1)
        w.select_object(1)
        _click(w, qtbot, viewer, 1, zc, (yc, xc))
        with qtbot.waitSignal(w.propagationDone, timeout=5 * WAIT_MS) as done:
            w.forward_button.click()
        wait_idle(qtbot, w)
        assert done.args[0] == 2  # t = 1 and 2
        labels = np.asarray(w.labels_layer.data).copy()
        assert labels[1, zc, yc, xc] == 1
        assert (1, zc, 1) in {(t, z, p.obj_id) for t, z, p in w.controller.volume.prompts()}

        path = tmp_path / "embryo.ome.zarr"
        with qtbot.waitSignal(w.saved, timeout=WAIT_MS):
            w.save(str(path))
        saved = open_result(path)
        assert saved.axes == "tzyx"
        np.testing.assert_array_equal(np.asarray(saved.labels), labels)
        assert saved.prompts.slices == sorted([clicks[1][:2], (1, zc), clicks[2][:2]])
        assert saved.record.settings["engine"] == "volume_time" and saved.record.edit_log  # in sync: log recorded
        assert open_result(path).record.settings["z_edge"] == 0.5  # the axial edge rule, recorded for replay
        replayed = replay(path, image=movie.image)  # the recorded model (nano-fluo) and thread count
        assert replayed.identical, (replayed.differing_frames, replayed.differing_pixels)

        # Open in a fresh widget: labels and every time point's prompts come back on a 3D+t geometry
        w2 = SAM2Widget(viewer)
        widgets.append(w2)
        w2.select_layer(layer)
        with qtbot.waitSignal(w2.opened, timeout=WAIT_MS):
            w2.open(str(path))
        assert w2.geometry.coupled
        np.testing.assert_array_equal(np.asarray(w2.labels_layer.data), labels)
        assert w2.all_prompts() == saved.prompts and sorted(w2.objects) == [1, 2]
    finally:
        for widget in widgets:
            widget.shutdown()
            qtbot.waitUntil(lambda widget=widget: not widget.workers_running, timeout=WAIT_MS)
