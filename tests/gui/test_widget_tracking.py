"""Propagation, cancel, corrections, confidence strip, save / open, and bad input — driven through the widget."""

import numpy as np
import pytest
from gui_helpers import WAIT_MS, canvas_click, wait_idle
from qtpy.QtCore import QPoint, Qt


@pytest.fixture
def notes(monkeypatch):
    seen = []
    monkeypatch.setattr("napari_sam2.widget._widget._notify", lambda kind, msg: seen.append((kind, msg)))
    return seen


def _prompt(w, qtbot, coords):
    with qtbot.waitSignal(w.prompted, timeout=WAIT_MS):
        w.prompt_layers.points.add(coords)
    wait_idle(qtbot, w)


def _run(w, qtbot, button):
    """Click a propagate button; collect the frames the worker yields; wait for the end."""
    frames = []
    with qtbot.waitSignal(w.propagationDone, timeout=WAIT_MS):
        button.click()
        assert w.cancel_button.isEnabled() and not w.forward_button.isEnabled()
        w.propagation_worker.yielded.connect(lambda v: frames.append(v[2].frame))
    wait_idle(qtbot, w)
    return frames


def _reference_both(ref, start, n):
    out = {}
    for r in ref.propagate("forward", start=start, stop=n - 1):
        out[r.frame] = r.labels
    for r in ref.propagate("backward", start=start, stop=0):
        out[r.frame] = r.labels
    return out


def test_propagate_both_ways_matches_session(sam_viewer, stack, qtbot, reference):
    _viewer, _layer, w = sam_viewer(stack)
    _prompt(w, qtbot, [2, 30, 36])
    frames = _run(w, qtbot, w.both_button)
    assert sorted(set(frames)) == list(range(6))  # forward 2…5, then backward 2…0
    assert w.progress.value() == w.progress.maximum() == 7
    ref = reference(stack)
    ref.add_prompt(2, 1, points=[[30, 36]], labels=[1])
    expected = _reference_both(ref, 2, 6)
    labels = np.asarray(w.labels_layer.data)
    for f in range(6):
        np.testing.assert_array_equal(labels[f], expected[f], err_msg=f"frame {f}")
    assert w.table.item(0, 2).text().startswith("tracked 6/6")
    assert w.forward_button.isEnabled() and not w.cancel_button.isEnabled()


def test_cancel_keeps_finished_frames_and_resumes(sam_viewer, blob_stack, qtbot, reference, notes):
    stack = blob_stack(n_frames=10)
    _viewer, _layer, w = sam_viewer(stack)
    _prompt(w, qtbot, [0, 30, 30])
    done = []

    def cancel_after_three(value):  # runs on the worker thread right after each frame, like a quick user
        done.append(value[2].frame)
        if len(done) == 3:
            w.propagation_worker.quit()  # what the Cancel button does

    with qtbot.waitSignal(w.propagationDone, timeout=WAIT_MS) as finished:
        w.forward_button.click()
        w.propagation_worker.yielded.connect(cancel_after_three, Qt.ConnectionType.DirectConnection)
    wait_idle(qtbot, w)
    assert finished.args == [3] and done == [0, 1, 2]
    assert any("cancelled" in msg and "3 finished frames" in msg for _, msg in notes)
    ref = reference(stack)
    ref.add_prompt(0, 1, points=[[30, 30]], labels=[1])
    expected = {r.frame: r.labels for r in ref.propagate("forward", start=0)}
    labels = np.asarray(w.labels_layer.data)
    for f in range(3):
        np.testing.assert_array_equal(labels[f], expected[f])
    assert not labels[3:].any()  # unfinished frames untouched
    # propagating again finishes the rest, the same as an uninterrupted run
    _run(w, qtbot, w.forward_button)
    labels = np.asarray(w.labels_layer.data)
    for f in range(10):
        np.testing.assert_array_equal(labels[f], expected[f], err_msg=f"frame {f}")


def test_correction_sticks_after_repropagation(sam_viewer, stack, qtbot, reference, tmp_path, capsys):
    viewer, _layer, w = sam_viewer(stack)
    _prompt(w, qtbot, [0, 30, 30])
    _run(w, qtbot, w.forward_button)
    # correct frame 3 with a real Shift+click (background) on the canvas
    viewer.dims.set_current_step(0, 3)
    viewer.layers.selection.active = w.prompt_layers.points
    w.prompt_layers.points.mode = "add"
    with qtbot.waitSignal(w.prompted, timeout=WAIT_MS):
        canvas_click(viewer, (70, 90), modifiers=("Shift",))
    wait_idle(qtbot, w)
    corrected = np.asarray(w.labels_layer.data[3]).copy()
    _run(w, qtbot, w.forward_button)
    ref = reference(stack)
    ref.add_prompt(0, 1, points=[[30, 30]], labels=[1])
    expected = {r.frame: r.labels for r in ref.propagate("forward", start=0)}
    y, x = w.prompt_layers.points.data[1, 1:]
    correction = ref.add_prompt(3, 1, points=[[y, x]], labels=[0]).labels
    np.testing.assert_array_equal(corrected, correction)
    again = {r.frame: r.labels for r in ref.propagate("forward", start=0)}
    assert sorted(again) == [0, 3, 4, 5]  # only what the correction made stale is recomputed
    expected.update(again)
    labels = np.asarray(w.labels_layer.data)
    np.testing.assert_array_equal(labels[3], corrected)  # the corrected frame is kept
    for f in range(6):
        np.testing.assert_array_equal(labels[f], expected[f], err_msg=f"frame {f}")

    # the saved result records the session's edits; `napari-sam2 replay` re-runs them to the same labels
    from napari_sam2 import cli

    path = tmp_path / "corrected.ome.zarr"
    with qtbot.waitSignal(w.saved, timeout=WAIT_MS):
        w.save(str(path))
    np.save(tmp_path / "stack.npy", stack)
    capsys.readouterr()
    assert cli.main(["replay", str(path), "--image", str(tmp_path / "stack.npy"), "--device", "cpu"]) == 0
    assert "identical labels on all 6 frames" in capsys.readouterr().out


def test_confidence_strip_jumps_and_weakest_frame(sam_viewer, stack, qtbot):
    from napari_sam2.widget._confidence import confidence

    viewer, _layer, w = sam_viewer(stack)
    _prompt(w, qtbot, [2, 30, 36])
    _run(w, qtbot, w.both_button)
    values = w.strip.values[1]
    assert sorted(values) == list(range(6))
    session = w.session()
    for f in (0, 4):
        r = session.result(f)
        assert values[f] == pytest.approx((float(r.scores[0]), float(r.ious[0])))
    # a click on the strip's cell of frame 4 moves the viewer there
    cell = w.strip.width() / 6
    qtbot.mouseClick(w.strip, Qt.MouseButton.LeftButton, pos=QPoint(int(4.5 * cell), 5))
    assert viewer.dims.current_step[0] == 4
    # "next weakest" visits unprompted frames from the least confident on
    order = sorted((f for f in range(6) if f != 2), key=lambda f: (confidence(*values[f]), f))
    w.weakest_button.click()
    assert viewer.dims.current_step[0] == order[0]
    w.weakest_button.click()
    assert viewer.dims.current_step[0] == order[1]


def test_save_and_reopen_continue(sam_viewer, stack, qtbot, tmp_path, tiny_checkpoint, capsys):
    """Across faces: widget Save → `napari-sam2 info` → `track --resume` → widget Open → napari Open/Save."""
    from napari_sam2 import registry
    from napari_sam2.io.results import open_result

    _viewer, _layer, w = sam_viewer(stack)
    _prompt(w, qtbot, [2, 30, 36])
    w.new_object()
    with qtbot.waitSignal(w.prompted, timeout=WAIT_MS):
        w.prompt_layers.boxes.add_rectangles(np.array([[2, 52, 82], [2, 52, 108], [2, 78, 108], [2, 78, 82]]))
    wait_idle(qtbot, w)
    _run(w, qtbot, w.both_button)
    path = tmp_path / "result.ome.zarr"
    with qtbot.waitSignal(w.saved, timeout=WAIT_MS):
        w.save(str(path))
    saved = open_result(path)
    np.testing.assert_array_equal(np.asarray(saved.labels), np.asarray(w.labels_layer.data))
    assert saved.axes == "tyx" and saved.complete
    assert saved.prompts == w.prompt_set() and saved.prompts.obj_ids == [1, 2]
    assert saved.record.model.checkpoint == str(tiny_checkpoint) and saved.record.tool == "widget"
    assert saved.record.model.checkpoint_sha256 == registry.file_sha256(tiny_checkpoint)
    assert saved.record.settings["stream_axis"] == 0 and saved.record.input["layer"] == "blobs"

    # the scripted face (track(), and through it the CLI) gives the widget's labels for the saved prompts
    from napari_sam2 import track

    scripted = track(stack, saved.prompts, model=tiny_checkpoint, device="cpu", direction="both", tables=False)
    np.testing.assert_array_equal(scripted.labels, np.asarray(w.labels_layer.data))

    # across faces: `napari-sam2 info` and `track --resume` read the widget's store (no traceback)
    from napari_sam2 import cli

    np.save(tmp_path / "stack.npy", stack)
    assert cli.main(["info", str(path)]) == 0
    assert (
        cli.main(["track", str(tmp_path / "stack.npy"), "--out", str(path), "--resume", "-q", "--device", "cpu"]) == 0
    )
    resumed = open_result(path)
    assert resumed.complete and resumed.prompts == saved.prompts
    np.testing.assert_array_equal(np.asarray(resumed.labels), np.asarray(w.labels_layer.data))

    # a new viewer: open the result onto the same image; labels and prompts come back and work continues
    viewer2, _layer2, w2 = sam_viewer(stack)
    with qtbot.waitSignal(w2.opened, timeout=WAIT_MS):
        w2.open(str(path))
    wait_idle(qtbot, w2)
    np.testing.assert_array_equal(np.asarray(w2.labels_layer.data), np.asarray(saved.labels))
    assert len(w2.prompt_layers.points.data) == 1 and len(w2.prompt_layers.boxes.data) == 1
    assert w2.prompt_set() == saved.prompts and w2.objects == [1, 2]
    assert sorted(w2.session().obj_ids) == [1, 2]
    w2.select_object(1)
    viewer2.dims.set_current_step(0, 4)
    _prompt(w2, qtbot, [4, 35, 45])
    assert w2.table.item(0, 1).text() == "2, 4"
    _run(w2, qtbot, w2.forward_button)
    assert np.asarray(w2.labels_layer.data).any()
    assert w2.provenance().model.source == str(tiny_checkpoint)

    # the continued session saves the opened log + its own edits, and `napari-sam2 replay` reproduces its labels
    continued = tmp_path / "continued.ome.zarr"
    with qtbot.waitSignal(w2.saved, timeout=WAIT_MS):
        w2.save(str(continued))
    opened_log, log = resumed.record.edit_log, open_result(continued).record.edit_log
    assert opened_log and log[: len(opened_log)] == opened_log and len(log) > len(opened_log)
    capsys.readouterr()
    assert cli.main(["replay", str(continued), "--image", str(tmp_path / "stack.npy"), "--device", "cpu"]) == 0
    assert "identical labels on all 6 frames" in capsys.readouterr().out

    # napari's own File > Open then File > Save keep the prompts the widget saved
    from napari_sam2._napari_io import read_result, write_labels

    _data, kwargs, _kind = next(layer for layer in read_result(str(path)) if layer[2] == "labels")
    resaved = tmp_path / "resaved.ome.zarr"
    write_labels(str(resaved), np.asarray(saved.labels), {**kwargs, "scale": None})
    assert open_result(resaved).prompts == saved.prompts


def test_bad_input_notifies_and_keeps_labels(sam_viewer, stack, qtbot, tmp_path, notes):
    import torch

    viewer, layer, w = sam_viewer(stack)
    # propagate with no prompts: buttons are off, the shortcut explains
    assert not w.forward_button.isEnabled()
    w.propagate("forward")
    assert "Nothing to propagate" in notes[-1][1]
    # a file that is not a checkpoint: an error, the loaded model stays
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    model = w.model
    w.set_model_source(str(bad))
    w.load_button.click()
    qtbot.waitUntil(lambda: w.model_worker is None, timeout=WAIT_MS)
    assert notes[-1][0] == "error" and "broken.pt" in notes[-1][1] and w.model is model
    if not torch.cuda.is_available():
        w.device_combo.setCurrentText("cuda")
        w.load_button.click()
        qtbot.waitUntil(lambda: w.model_worker is None, timeout=WAIT_MS)
        assert notes[-1][0] == "error" and "cpu" in notes[-1][1] and w.model is model
    # the image layer removed while propagating: it stops, finished frames stay
    _prompt(w, qtbot, [0, 30, 30])
    with qtbot.waitSignal(w.propagationDone, timeout=WAIT_MS):
        w.forward_button.click()
        viewer.layers.remove(layer)
    wait_idle(qtbot, w)
    assert any("was removed" in msg for _, msg in notes)
    assert w.labels_layer.data[0].any() and w.geometry is None
    # an RGB picture opened as a stack of 3-pixel-wide frames
    viewer.add_image(np.random.default_rng(0).random((64, 64, 3)), name="rgb as stack", rgb=False)
    w.layer_combo.setCurrentText("rgb as stack")
    assert w.geometry is None and "rgb=True" in notes[-1][1]
