"""The widget's contrast and click rule pickers: what SAM 2 sees and how a click is read, recorded on save and
taken back on open."""

import numpy as np
from gui_helpers import WAIT_MS, wait_idle


def _click_and_track_as(w, qtbot, ref):
    """A click at (30, 30) on frame 0 and a forward propagation in the widget: its labels [6, Y, X], checked to be
    those of the TrackingSession `ref` given the same click."""
    with qtbot.waitSignal(w.prompted, timeout=WAIT_MS):
        w.prompt_layers.points.add([0, 30, 30])
    wait_idle(qtbot, w)
    with qtbot.waitSignal(w.propagationDone, timeout=WAIT_MS):
        w.forward_button.click()
    wait_idle(qtbot, w)
    ref.add_prompt(0, 1, points=[[30, 30]], labels=[1])
    expected = {r.frame: r.labels for r in ref.propagate("forward", start=0)}
    labels = np.asarray(w.labels_layer.data)
    for f in range(6):
        np.testing.assert_array_equal(labels[f], expected[f], err_msg=f"frame {f}")
    return labels


def test_contrast_picker_restarts_sessions_records_and_reopens(sam_viewer, stack, qtbot, reference, tmp_path, capsys):
    from napari_sam2 import cli
    from napari_sam2.io.results import open_result
    from napari_sam2.preprocess import GlobalContrast, LocalContrast

    _viewer, _layer, w = sam_viewer(stack)
    combo = w.contrast_combo
    assert combo.currentData() is None and combo.itemText(0) == "model default (global)"
    assert w.session().frames.contrast == GlobalContrast()  # the tiny checkpoint is not in the registry: global
    with qtbot.waitSignal(w.sessionReady, timeout=WAIT_MS):
        combo.setCurrentIndex(combo.findData("local"))  # what a user's pick does
    wait_idle(qtbot, w)
    assert w.controller.contrast == "local"
    fitted = w.session().frames.contrast  # its window fitted to the stack's objects
    assert isinstance(fitted, LocalContrast) and fitted.window is not None

    labels = _click_and_track_as(w, qtbot, reference(stack, contrast="local"))

    path = tmp_path / "local.ome.zarr"
    with qtbot.waitSignal(w.saved, timeout=WAIT_MS):
        w.save(str(path))
    assert open_result(path).record.settings["contrast"] == "local"
    assert open_result(path).record.settings["local_contrast"]["window"] == fitted.window
    np.save(tmp_path / "stack.npy", stack)
    capsys.readouterr()
    assert cli.main(["replay", str(path), "--image", str(tmp_path / "stack.npy"), "--device", "cpu"]) == 0
    assert "identical labels on all 6 frames" in capsys.readouterr().out

    # a new viewer (model default picked): opening the result continues with the contrast it was made with
    _viewer2, _layer2, w2 = sam_viewer(stack)
    assert w2.contrast_combo.currentData() is None
    with qtbot.waitSignal(w2.opened, timeout=WAIT_MS):
        w2.open(str(path))
    wait_idle(qtbot, w2)
    assert w2.contrast_combo.currentData() == "local" and w2.session().frames.contrast == fitted
    np.testing.assert_array_equal(np.asarray(w2.labels_layer.data), labels)


def test_click_rule_picker_restarts_sessions_records_and_reopens(sam_viewer, stack, qtbot, reference, tmp_path):
    """The click rule picker: its names are the rules', a pick restarts the sessions with that rule (the labels are
    a TrackingSession's with it), the save records it, and an opened result shows the rule it was made with — one
    that is none of the named rules as "as recorded"."""
    from dataclasses import replace

    from napari_sam2.click_rule import CLICK_RULE_FLUORESCENCE, CLICK_RULE_OFF, CLICK_RULES
    from napari_sam2.io.ome_zarr import LabelStore
    from napari_sam2.io.results import open_result
    from napari_sam2.widget._widget import RECORDED_CLICK_RULE

    _viewer, _layer, w = sam_viewer(stack)
    combo = w.click_rule_combo
    assert [combo.itemData(i) for i in range(combo.count())] == [None, *CLICK_RULES]
    assert combo.itemText(0) == "model default (off)"  # the tiny checkpoint is not in the registry
    assert w.session().click_rule == CLICK_RULE_OFF
    with qtbot.waitSignal(w.sessionReady, timeout=WAIT_MS):
        combo.setCurrentIndex(combo.findData("fluorescence"))  # what a user's pick does
    wait_idle(qtbot, w)
    assert w.controller.click_rule == CLICK_RULE_FLUORESCENCE == w.session().click_rule

    labels = _click_and_track_as(w, qtbot, reference(stack, click_rule="fluorescence"))
    path = tmp_path / "rule.ome.zarr"
    with qtbot.waitSignal(w.saved, timeout=WAIT_MS):
        w.save(str(path))
    assert open_result(path).record.settings["click_rule"] == CLICK_RULE_FLUORESCENCE.record()["click_rule"]

    # a new viewer (model default picked): the opened result continues with its rule, and the picker says which
    _viewer2, _layer2, w2 = sam_viewer(stack)
    with qtbot.waitSignal(w2.opened, timeout=WAIT_MS):
        w2.open(str(path))
    wait_idle(qtbot, w2)
    assert w2.click_rule_combo.currentData() == "fluorescence" and w2.session().click_rule == CLICK_RULE_FLUORESCENCE
    np.testing.assert_array_equal(np.asarray(w2.labels_layer.data), labels)

    # made with other constants (none of the named rules): shown and continued as recorded
    other = replace(CLICK_RULE_FLUORESCENCE, level=0.6)
    store = LabelStore.open(path, mode="r+")
    store.update_provenance({"settings": {**store.provenance["settings"], **other.record()}})
    _viewer3, _layer3, w3 = sam_viewer(stack)
    with qtbot.waitSignal(w3.opened, timeout=WAIT_MS):
        w3.open(str(path))
    wait_idle(qtbot, w3)
    combo3 = w3.click_rule_combo
    assert combo3.currentText() == RECORDED_CLICK_RULE and combo3.currentData() == other
    assert w3.session().click_rule == other
    with qtbot.waitSignal(w3.sessionReady, timeout=WAIT_MS):
        combo3.setCurrentIndex(combo3.findData("off"))  # a user may still pick a named rule
    wait_idle(qtbot, w3)
    assert w3.controller.click_rule == CLICK_RULE_OFF == w3.session().click_rule
