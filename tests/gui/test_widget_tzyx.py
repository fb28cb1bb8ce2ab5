"""The widget on a 4-D [T, Z, Y, X] layer: both sliders, prompts on several (t, z) slices, and Save → Open keeping
every time point's prompts (a 4-D result's prompts carry their t and z)."""

import numpy as np
from conftest import WAIT_MS, wait_idle


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
    assert w2.geometry.stream_axis == 0 and w2.geometry.fixed_axes == (1,)
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
