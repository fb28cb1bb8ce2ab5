"""The widget's contrast picker: the model input's contrast step, recorded on save and taken back on open."""

import numpy as np
from gui_helpers import WAIT_MS, wait_idle


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

    with qtbot.waitSignal(w.prompted, timeout=WAIT_MS):
        w.prompt_layers.points.add([0, 30, 30])
    wait_idle(qtbot, w)
    with qtbot.waitSignal(w.propagationDone, timeout=WAIT_MS):
        w.forward_button.click()
    wait_idle(qtbot, w)
    ref = reference(stack, contrast="local")
    ref.add_prompt(0, 1, points=[[30, 30]], labels=[1])
    expected = {r.frame: r.labels for r in ref.propagate("forward", start=0)}
    labels = np.asarray(w.labels_layer.data)
    for f in range(6):
        np.testing.assert_array_equal(labels[f], expected[f], err_msg=f"frame {f}")

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
