"""Prompts through the viewer: canvas clicks (positive, Shift = negative), boxes, objects, undo, layouts."""

import numpy as np
import pytest
from gui_helpers import WAIT_MS, canvas_click, wait_idle


@pytest.fixture
def notes(monkeypatch):
    """Every notification the widget shows, as (kind, message)."""
    seen = []
    monkeypatch.setattr("napari_sam2.widget._widget._notify", lambda kind, msg: seen.append((kind, msg)))
    return seen


def _activate_points(viewer, widget):
    points = widget.prompt_layers.points
    viewer.layers.selection.active = points
    points.mode = "add"
    return points


def test_canvas_clicks_and_box_give_the_sessions_masks(sam_viewer, stack, qtbot, reference):
    viewer, _layer, w = sam_viewer(stack)
    assert w.axis_combo.currentData() == 0  # the first non-displayed axis
    viewer.dims.set_current_step(0, 2)
    points = _activate_points(viewer, w)
    with qtbot.waitSignal(w.prompted, timeout=WAIT_MS):
        canvas_click(viewer, (30, 36))  # inside the first disk on frame 2
    with qtbot.waitSignal(w.prompted, timeout=WAIT_MS):
        canvas_click(viewer, (30, 60), modifiers=("Shift",))  # background point
    wait_idle(qtbot, w)
    assert points.features["positive"].tolist() == [1, 0]
    assert points.features["obj_id"].tolist() == [1, 1]
    assert np.allclose(points.data[:, 0], 2)
    # a second object with a box drawn in the Shapes layer
    w.new_object()
    assert w.current_obj == 2
    with qtbot.waitSignal(w.prompted, timeout=WAIT_MS):
        w.prompt_layers.boxes.add_rectangles(np.array([[2, 52, 82], [2, 52, 108], [2, 78, 108], [2, 78, 82]]))
    wait_idle(qtbot, w)

    ref = reference(stack)
    ref.add_prompt(2, 1, points=points.data[:1, 1:], labels=[1])
    ref.add_prompt(2, 1, points=points.data[1:, 1:], labels=[0])
    expected = ref.add_prompt(2, 2, box=[52, 82, 78, 108]).labels
    labels = np.asarray(w.labels_layer.data)
    np.testing.assert_array_equal(labels[2], expected)
    assert w.session().obj_ids == [1, 2] and labels[2].any()
    assert not labels[[0, 1, 3, 4, 5]].any()  # nothing written on other frames
    # the object table lists both, with their prompted frame
    assert [w.table.item(r, 0).text() for r in range(w.table.rowCount())] == ["1", "2"]
    assert w.table.item(0, 1).text() == "2"
    assert w.forward_button.isEnabled() and not w.cancel_button.isEnabled()


def test_undo_and_delete(sam_viewer, stack, qtbot, reference):
    viewer, _layer, w = sam_viewer(stack)
    viewer.dims.set_current_step(0, 1)
    points = _activate_points(viewer, w)
    with qtbot.waitSignal(w.prompted, timeout=WAIT_MS):
        points.add([1, 30, 33])
    with qtbot.waitSignal(w.prompted, timeout=WAIT_MS):
        points.add([1, 40, 20])
    wait_idle(qtbot, w)
    two_clicks = np.asarray(w.labels_layer.data[1]).copy()
    with qtbot.waitSignal(w.prompted, timeout=WAIT_MS):
        w.undo_button.click()
    wait_idle(qtbot, w)
    assert len(points.data) == 1
    one_click = reference(stack).add_prompt(1, 1, points=[[30, 33]], labels=[1]).labels
    np.testing.assert_array_equal(w.labels_layer.data[1], one_click)
    assert not np.array_equal(two_clicks, one_click)
    with qtbot.waitSignal(w.prompted, timeout=WAIT_MS):
        w.undo()
    wait_idle(qtbot, w)
    assert len(points.data) == 0 and not np.asarray(w.labels_layer.data).any()
    assert 1 not in w.session().objects
    # delete: prompts, tracking and labels of the object go
    with qtbot.waitSignal(w.prompted, timeout=WAIT_MS):
        points.add([1, 30, 33])
    wait_idle(qtbot, w)
    assert np.asarray(w.labels_layer.data).any()
    w.delete_object(1)
    wait_idle(qtbot, w)
    assert not np.asarray(w.labels_layer.data).any() and len(points.data) == 0
    assert w.objects == [2] and 1 not in w.session().objects


def test_shortcuts_are_bound_and_listed(sam_viewer, stack, qtbot):
    viewer, _layer, w = sam_viewer(stack, load=False)
    tip = w.toolTip()
    for key, _ in __import__("napari_sam2.widget", fromlist=["SHORTCUTS"]).SHORTCUTS:
        assert key in tip
    before = w.current_obj
    from app_model.types import KeyBinding

    viewer.keymap[KeyBinding.from_str("N")](viewer)
    assert w.current_obj == before + 1
    assert w.prompt_layers.points.feature_defaults["obj_id"][0] == before + 1


def test_layouts_tzyx_rgb_multichannel(sam_viewer, qtbot, notes):
    rng = np.random.default_rng(0)
    # 4-D TZYX: the default is 3D+t (per-t sessions stream z); the user picks z alone; a click at t=1 labels that
    # volume only
    tzyx = (rng.random((2, 4, 64, 64)) * 200).astype(np.uint8)
    tzyx[:, :, 20:40, 20:40] += 50
    viewer, _layer, w = sam_viewer(tzyx)
    assert w.geometry.coupled and w.geometry.stream_axis == 1 and w.geometry.fixed_axes == (0,)
    w.axis_combo.setCurrentIndex(1)
    assert w.geometry.stream_axis == 1 and w.geometry.fixed_axes == (0,) and not w.geometry.coupled
    viewer.dims.set_current_step(0, 1)
    viewer.dims.set_current_step(1, 2)
    qtbot.waitUntil(lambda: w.session((1,)) is not None, timeout=WAIT_MS)
    with qtbot.waitSignal(w.prompted, timeout=WAIT_MS):
        w.prompt_layers.points.add([1, 2, 30, 30])
    wait_idle(qtbot, w)
    labels = np.asarray(w.labels_layer.data)
    assert labels.shape == tzyx.shape and labels[1, 2].any()
    assert not labels[0].any() and not labels[1, [0, 1, 3]].any()

    # RGB time-lapse: the colour axis is the channel axis; the labels have no colour axis
    rgb = (rng.random((3, 48, 48, 3)) * 255).astype(np.uint8)
    _viewer2, _layer2, w2 = sam_viewer(rgb, rgb=True, load=False)
    assert w2.geometry.rgb and w2.geometry.num_frames == 3 and w2.labels_layer.data.shape == (3, 48, 48)
    assert w2.channel_spin.currentData() is None  # all three colours by default

    # (Z, C, Y, X) multichannel layer: the user picks the channel axis and a channel
    zcyx = (rng.random((4, 2, 48, 48)) * 255).astype(np.uint8)
    _viewer3, _layer3, w3 = sam_viewer(zcyx, load=False)
    w3.axis_combo.setCurrentIndex(0)
    w3.channel_axis_combo.setCurrentIndex(w3.channel_axis_combo.findData(1))
    w3.channel_spin.setCurrentIndex(w3.channel_spin.findData(1))
    g = w3.geometry
    assert (g.stream_axis, g.channel_axis, g.channel, g.fixed_axes) == (0, 1, 1, ())
    assert w3.labels_layer.data.shape == zcyx.shape  # same axes as the image: the layers line up
    stack, axis, channel_axis = g.stack_for(())
    assert (stack.shape, axis, channel_axis) == ((4, 2, 48, 48), 0, 1)

    # a 2-D image is one frame: prompts work, propagation is off
    img = (rng.random((64, 64)) * 255).astype(np.uint8)
    _viewer4, _layer4, w4 = sam_viewer(img)
    with qtbot.waitSignal(w4.prompted, timeout=WAIT_MS):
        w4.prompt_layers.points.add([30, 30])
    wait_idle(qtbot, w4)
    assert np.asarray(w4.labels_layer.data).any() and not w4.forward_button.isEnabled()
    assert not notes


def test_dask_layer_is_read_frame_by_frame(sam_viewer, stack, qtbot, reference):
    da = pytest.importorskip("dask.array")
    reads = []

    def frame(block, block_info=None):
        reads.append(block_info[0]["array-location"][0])
        return block

    lazy = da.from_array(stack, chunks=(1, *stack.shape[1:])).map_blocks(frame, dtype=stack.dtype)
    _viewer, layer, w = sam_viewer(lazy)
    with qtbot.waitSignal(w.prompted, timeout=WAIT_MS):
        w.prompt_layers.points.add([3, 30, 39])
    wait_idle(qtbot, w)
    assert isinstance(layer.data, da.Array)
    assert w.session().frames.stack.base is layer.data  # the session reads the layer's own lazy array
    assert all(stop - start == 1 for start, stop in reads)  # never more than one frame per read
    np.testing.assert_array_equal(
        w.labels_layer.data[3], reference(stack).add_prompt(3, 1, points=[[30, 39]], labels=[1]).labels
    )
