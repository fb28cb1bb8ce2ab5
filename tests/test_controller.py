"""The widget's Qt-free controller, driven with no display: prompts, the job queue, label merging, propagation,
cancel, delete, save / open. Jobs run inline (`InlineWorker`), so every call has finished when it returns."""

import subprocess
import sys

import numpy as np
import pytest

from napari_sam2.replay import merge_result
from napari_sam2.widget._controller import ControllerView, TrackingController, plan_passes
from napari_sam2.widget._geometry import StackGeometry


class Recorder(ControllerView):
    """Keeps what the controller reports."""

    def __init__(self):
        self.messages, self.prompted, self.ready, self.progress, self.done = [], [], [], [], []

    def show_message(self, kind, text):
        self.messages.append((kind, text))

    def show_prompted(self, results):
        self.prompted.append(results)

    def show_session_ready(self, key, session):
        self.ready.append(key)

    def show_propagation(self, done, total):
        self.progress.append((done, total))

    def show_propagation_done(self, frames_written, cancelled):
        self.done.append((frames_written, cancelled))


@pytest.fixture
def controller(tiny_model, blob_stack):
    """A controller on a 6-frame 96×128 stack with the tiny model and a session on frame 0."""
    view = Recorder()
    c = TrackingController(view)
    c.set_model(tiny_model, "tiny")
    c.set_geometry(StackGeometry.from_array(blob_stack(n_frames=6)))
    c.focus((), 0)
    assert view.ready == [()] and c.session(()) is not None
    yield c
    c.shutdown()
    c.reset_sessions()


def reference_labels(tiny_model, stack, edits):
    """Labels [N, H, W] of the same edits on a plain TrackingSession, merged as the widget merges them."""
    from napari_sam2.session import TrackingSession

    out = np.zeros(stack.shape, np.uint32)
    with TrackingSession(tiny_model, stack) as s:
        for edit in edits:
            results = edit(s)
            for r in results if isinstance(results, list) else list(results):
                out[r.frame] = merge_result(out[r.frame], r)
    return out


def test_the_controller_imports_no_qt_and_no_napari():
    code = (
        "import sys, napari_sam2.widget._controller\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', "
        "'napari', 'superqt', 'vispy')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_prompt_then_propagate_gives_the_sessions_labels(controller, tiny_model, blob_stack):
    stack = blob_stack(n_frames=6)
    controller.add_points((), 0, 1, [[30, 30]], [1])
    controller.add_box((), 2, 2, (55, 75, 76, 100))
    assert controller.view.prompted and controller.object_ids == [1, 2]
    assert controller.propagate((), "forward", (0, 5), [0, 2])
    assert controller.idle and controller.view.done == [(6, False)]
    assert controller.view.progress[-1] == (6, 6)
    expected = reference_labels(
        tiny_model,
        stack,
        [
            lambda s: [s.add_prompt(0, 1, points=[[30, 30]], labels=[1])],
            lambda s: [s.add_prompt(2, 2, box=(55, 75, 76, 100))],
            lambda s: list(s.propagate("forward", start=0, stop=5)),
        ],
    )
    np.testing.assert_array_equal(controller.labels, expected)
    assert set(np.unique(controller.labels)) == {0, 1, 2}
    assert set(controller.confidence[()][1]) == set(range(6))


def test_a_failed_prompt_says_why_and_the_queue_goes_on(controller):
    controller.add_points((), 0, 1, [[500, 30]], [1])  # outside the 96×128 frame
    assert controller.view.messages and controller.view.messages[-1][0] == "warning"
    assert "Prompt not applied" in controller.view.messages[-1][1]
    controller.add_points((), 0, 1, [[30, 30]], [1])
    assert controller.idle and (controller.labels[0] == 1).any()


def test_cancel_keeps_the_finished_frames(controller):
    controller.add_points((), 0, 1, [[30, 30]], [1])

    class Canceller(Recorder):
        def show_propagation(self, done, total):
            super().show_propagation(done, total)
            if done == 2:
                controller.cancel()

    controller.view = Canceller()
    controller.propagate((), "forward", (0, 5), [0])
    assert controller.view.done == [(2, True)] and controller.idle
    tracked = [t for t in range(6) if (controller.labels[t] == 1).any()]
    assert tracked == [0, 1]
    assert "cancelled" in controller.view.messages[-1][1]


def test_delete_removes_the_object_everywhere(controller):
    controller.add_points((), 0, 1, [[30, 30]], [1])
    controller.add_points((), 0, 2, [[65, 95]], [1])
    controller.propagate((), "forward", (0, 5), [0])
    assert controller.delete_object(1)
    assert controller.object_ids == [2] and not (controller.labels == 1).any() and (controller.labels == 2).any()
    assert 1 not in controller.session(()).obj_ids and 1 not in controller.confidence[()]
    assert controller.new_object_id() == 3  # ids are never reused


def test_save_then_open_brings_back_labels_objects_and_prompts(controller, tmp_path):
    from napari_sam2.io.results import open_result
    from napari_sam2.prompts import PromptSet

    controller.add_points((), 0, 1, [[30, 30]], [1])
    controller.propagate((), "forward", (0, 5), [0])
    prompts = PromptSet()
    prompts.add(0, 1, points=[[30, 30]], labels=[1])
    saved = []
    provenance = controller.provenance((), {"layer": "blobs", "path": None, "shape": [6, 96, 128]})
    assert [e["op"] for e in provenance.edit_log] == ["add", "pass"]
    controller.save(tmp_path / "r.ome.zarr", "tyx", prompts, provenance, [1.0] * 3, ["pixel"] * 3, saved.append)
    assert saved == [str(tmp_path / "r.ome.zarr")]
    labels = np.array(controller.labels)
    controller.set_geometry(controller.geometry)  # a fresh start: no labels, no objects
    assert not controller.labels.any() and controller.object_ids == []
    key, opened_prompts = controller.open_result(open_result(tmp_path / "r.ome.zarr"))
    assert key == () and len(opened_prompts) == 1
    np.testing.assert_array_equal(controller.labels, labels)
    assert controller.object_ids == [1] and controller.opened_record.tool == "widget"


def test_open_refuses_labels_of_another_shape(controller, tmp_path):
    from napari_sam2.errors import InputError
    from napari_sam2.io.results import open_result, save_result

    save_result(tmp_path / "other.ome.zarr", np.zeros((3, 96, 128), np.uint32), axes="tyx")
    with pytest.raises(InputError, match="shape"):
        controller.open_result(open_result(tmp_path / "other.ome.zarr"))


def test_plan_passes():
    assert plan_passes([2, 4], "both", 0, 9) == [("forward", 2, 9), ("backward", 4, 0)]
    assert plan_passes([0], "both", 0, 9) == [("forward", 0, 9)]
    assert plan_passes([7], "forward", 0, 5) == [("forward", 0, 5)]  # no prompt inside: the range's start
    assert plan_passes([3], "backward", 0, 9) == [("backward", 3, 0)]


def test_a_session_continued_from_an_opened_result_saves_a_log_that_replays(tiny_model, blob_stack, tmp_path):
    """Open a result, correct it, propagate, save: the saved edit log (the opened log + the new edits) reproduces
    the labels with `napari-sam2 replay`, bit for bit."""
    from napari_sam2.io.results import open_result
    from napari_sam2.prompts import PromptSet
    from napari_sam2.replay import replay

    stack = blob_stack(n_frames=6)
    record = {"layer": "blobs", "path": None, "shape": [6, 96, 128]}

    def fresh():
        c = TrackingController(Recorder())
        c.set_model(tiny_model, "tiny")
        c.set_geometry(StackGeometry.from_array(stack))
        c.focus((), 0)
        return c

    first = fresh()
    first.add_points((), 0, 1, [[30, 30]], [1])
    first.propagate((), "forward", (0, 5), [0])
    prompts = PromptSet()
    prompts.add(0, 1, points=[[30, 30]], labels=[1])
    first.save(tmp_path / "a.ome.zarr", "tyx", prompts, first.provenance((), record), [1.0] * 3, ["pixel"] * 3)
    first.reset_sessions()

    second = fresh()
    assert second.open_result(open_result(tmp_path / "a.ome.zarr"))[0] == ()
    second.prompts_of = lambda key: prompts  # what the widget's prompt layers hold after Open
    second.reset_sessions()  # the session re-runs the opened log
    assert [e["op"] for e in second.session(()).edit_log] == ["add", "pass"]
    np.testing.assert_array_equal(second.labels, np.asarray(open_result(tmp_path / "a.ome.zarr").labels))
    second.add_points((), 3, 1, [[30, 60]], [0])  # a correction, then propagate on
    second.propagate((), "forward", (0, 5), [0, 3])
    provenance = second.provenance((), record)
    assert [e["op"] for e in provenance.edit_log] == ["add", "pass", "add", "pass"]
    second.save(tmp_path / "b.ome.zarr", "tyx", prompts, provenance, [1.0] * 3, ["pixel"] * 3)
    replayed = replay(tmp_path / "b.ome.zarr", image=stack, model=tiny_model)
    assert replayed.identical, replayed.differing_frames
    assert not np.array_equal(replayed.labels, np.asarray(open_result(tmp_path / "a.ome.zarr").labels))
    second.reset_sessions()


def test_an_opened_result_without_a_log_saves_none(controller, tmp_path):
    """A result with no edit log (e.g. saved from a plain labels layer) cannot be replayed: continuing it saves no
    log rather than one that would not reproduce the labels."""
    from napari_sam2.io.results import open_result, save_result

    save_result(tmp_path / "plain.ome.zarr", np.zeros((6, 96, 128), np.uint32), axes="tyx")
    controller.open_result(open_result(tmp_path / "plain.ome.zarr"))
    controller.reset_sessions()
    controller.add_points((), 0, 1, [[30, 30]], [1])
    assert controller.provenance((), {}).edit_log is None


# ---------------------------------------------------------------------- automatic: Find all, discovery, lineage
@pytest.fixture(scope="module")
def nano():
    from napari_sam2.model import load_model

    return load_model("nano-fluo", device="cpu")


def _on(movie, nano):
    c = TrackingController(Recorder())
    c.set_model(nano, "nano-fluo")
    c.set_geometry(StackGeometry.from_array(movie.image))
    c.focus((), 0)
    return c


def _deepest(mask):
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(mask)
    return [list(np.unravel_index(int(np.argmax(depth)), mask.shape))]


def test_the_widget_clicks_with_the_models_click_rule_and_saves_it_for_replay(nano, tmp_path):
    """The widget's sessions read a click as track() does (nano-fluo: the fluorescence rule), record the rule, and
    its saved result replays to the same labels; an opened result made without the rule is continued without it."""
    from test_contrast_track import dim_and_bright_movie

    from napari_sam2.click_rule import CLICK_RULE_FLUORESCENCE, CLICK_RULE_OFF
    from napari_sam2.io.ome_zarr import LabelStore
    from napari_sam2.io.results import open_result
    from napari_sam2.prompts import PromptSet
    from napari_sam2.replay import replay
    from napari_sam2.sample_data import SampleStack

    stack = dim_and_bright_movie()
    c = _on(SampleStack(image=stack, labels=np.zeros(stack.shape, np.uint32), axes="TYX"), nano)
    c.add_points((), 0, 1, [[44, 40]], [1])  # the dim disk
    c.propagate((), "forward", (0, 4), [0])
    assert c.session(()).click_rule == CLICK_RULE_FLUORESCENCE == c.click_rule_used(c.session(()))
    record = {"layer": "movie", "path": None, "shape": list(stack.shape)}
    provenance = c.provenance((), record)
    assert provenance.settings["click_rule"] == CLICK_RULE_FLUORESCENCE.record()["click_rule"]
    prompts = PromptSet()
    prompts.add(0, 1, points=[[44, 40]], labels=[1])
    c.save(tmp_path / "w.ome.zarr", "tyx", prompts, provenance, [1.0] * 3, ["pixel"] * 3)
    replayed = replay(tmp_path / "w.ome.zarr", image=stack, model=nano)
    assert replayed.identical, replayed.differing_frames

    store = LabelStore.open(tmp_path / "w.ome.zarr", mode="r+")  # as if made before the rule existed
    store.update_provenance({"settings": {k: v for k, v in store.provenance["settings"].items() if k != "click_rule"}})
    c.open_result(open_result(tmp_path / "w.ome.zarr"))
    assert c.click_rule == CLICK_RULE_OFF
    c.prompts_of = lambda key: prompts
    c.reset_sessions()
    assert c.session(()).click_rule == CLICK_RULE_OFF
    c.reset_sessions()


def test_find_all_objects_adds_the_nuclei_not_yet_in_the_list(nano):
    from napari_sam2.sample_data import nuclei_timelapse

    movie = nuclei_timelapse(n_frames=3, shape=(128, 128), n_nuclei=4, seed=21)
    truth = movie.labels[0]
    c = _on(movie, nano)
    c.add_points((), 0, 1, _deepest(truth == 1), [1])
    assert c.find_objects((), 0)
    new = [o for o in c.object_ids if o != 1]
    assert len(new) >= 2 and "new objects on frame 0" in c.view.messages[-1][1]
    labels = c.labels[0]
    for obj in new:  # each is a true nucleus other than the clicked one, prompted by its mask
        best = np.bincount(truth[labels == obj], minlength=5)
        assert best.argmax() not in (0, 1), (obj, best)
        assert c.mask_frames((), obj) == [0]
    assert c.mask_prompt_set(()).obj_ids == new
    # reviewed: a wrong one is deleted like any object; then the rest propagate
    assert c.delete_object(new[0])
    assert new[0] not in c.object_ids and c.mask_frames((), new[0]) == [] and not (c.labels == new[0]).any()
    assert c.propagate((), "forward", (0, 2), [0])
    assert all((c.labels[2] == o).any() for o in [1, *new[1:]])
    c.reset_sessions()


def test_discovery_while_propagating_finds_the_division_and_reopens(nano, tmp_path):
    from napari_sam2.discovery import DiscoveryOptions
    from napari_sam2.sample_data import nuclei_timelapse

    movie = nuclei_timelapse(n_frames=6, shape=(128, 128), n_nuclei=3, seed=11)
    div = movie.events["division"]
    mother, t_div = div["parent"], div["frame"]

    def oracle(session, frame):  # a perfect detector: the test is about the controller, not segmentation
        truth = movie.labels[frame]
        return [truth == o for o in np.unique(truth)[1:]]

    c = _on(movie, nano)
    for obj in np.unique(movie.labels[0])[1:]:
        c.add_mask((), 0, int(obj), movie.labels[0] == obj)
    c.discovery = DiscoveryOptions(detector=oracle, arrivals=False, division_gap=0)
    assert c.propagate((), "forward", (0, 5), [0])
    daughters = sorted(d for d, m in c.lineage(()).items() if m == mother)
    assert len(daughters) == 2 and set(daughters) <= set(c.object_ids)
    found = [e["kind"] for e in c.events if e["kind"] in ("division", "arrival")]  # besides repairs (relink…)
    assert found == ["division"] and "1 divisions" in c.view.messages[-1][1]
    assert not (c.labels[t_div:] == mother).any() and (c.labels[t_div - 1] == mother).any()
    # each daughter is prompted on the division frame (and again on a frame where a repair re-prompted her)
    assert all(c.mask_frames((), d)[0] == t_div for d in daughters)
    provenance = c.provenance((), {"layer": "movie", "path": None, "shape": list(movie.image.shape)})
    assert provenance.parents == dict.fromkeys(daughters, mother)
    prompts = c.mask_prompt_set(())
    c.save(tmp_path / "d.ome.zarr", "tyx", prompts, provenance, [1.0] * 3, ["pixel"] * 3)
    c.reset_sessions()
    # opened again and continued: the session re-runs the saved edit log (as `napari-sam2 replay` does) to the same
    # labels, and the lineage and the daughters' mask prompts come back with it
    from napari_sam2.io.results import open_result

    again = _on(movie, nano)
    again.open_result(open_result(tmp_path / "d.ome.zarr"))
    again.reset_sessions()
    assert again.lineage(()) == dict.fromkeys(daughters, mother)
    assert all(again.mask_frames((), d) == c.mask_frames((), d) for d in daughters)
    np.testing.assert_array_equal(again.labels, c.labels)
    again.reset_sessions()


def test_3d_t_propagation_matches_the_engine_and_cancel_keeps_finished_time_points(tiny_model):
    """3D+t (a TZYX array, stream axes "tz"): propagate_volume writes the labels of the `VolumeTimeSession` run on the
    same prompts (the engine of track()), a cancel keeps the finished time points, and the geometry refuses what
    it cannot track together."""
    from napari_sam2.errors import InputError
    from napari_sam2.prompts import PromptSet
    from napari_sam2.volume_time import VolumeTimeSession

    rng = np.random.default_rng(0)
    stack = (rng.random((3, 3, 40, 40)) * 40).astype(np.uint8)
    stack[:, 1:3, 14:30, 12:28] += 180
    g = StackGeometry.from_array(stack, stream_axis="tz")
    assert g.coupled and (g.stream_axis, g.fixed_axes) == (1, (0,)) and g.volume_view().shape == stack.shape
    with pytest.raises(InputError, match="needs two axes besides Y, X; layer 'array' has 3"):
        StackGeometry.from_array(np.zeros((2, 3, 4, 32, 32), np.uint8), stream_axis="tz")
    with pytest.raises(InputError, match="takes one channel"):
        StackGeometry.from_array(np.zeros((2, 3, 4, 32, 32), np.uint8), stream_axis="tz", channel_axis=1)

    prompts = PromptSet()
    prompts.add(1, 1, points=[[22, 20]], t=0)
    prompts.add(2, 1, points=[[21, 19]], labels=[1], t=2)
    with VolumeTimeSession(tiny_model, stack) as vt:
        for p in prompts:
            vt.add(p.t, p.frame, p)
        expected = {t: labels for t, labels in vt.propagate("both")}

    view = Recorder()

    class Canceller(Recorder):
        def show_propagation(self, done, total):
            super().show_propagation(done, total)
            if done == 1:
                c.cancel()

    c = TrackingController(Canceller())
    c.set_model(tiny_model, "tiny")
    c.set_geometry(g)
    assert c.propagate_volume("both", (0, 2), prompts)
    assert c.view.done == [(1, True)] and c.idle
    assert c.labels[0].any() and not c.labels[1:].any()  # t = 0 finished, nothing after it
    c.view = view
    painted = np.zeros(stack.shape, bool)  # a label painted by hand (id 7) where t = 2 is not computed yet
    painted[2, :, :4, :] = True
    c.labels[painted] = 7
    assert c.propagate_volume("both", (0, 2), prompts)  # the kept session goes on from there
    # t = 1, 2 forward; the backward pass finds every time point done (the progress still ends full)
    assert view.done == [(2, False)] and view.progress[-1] == (6, 6)
    for t in range(3):
        np.testing.assert_array_equal(c.labels[t][~painted[t]], expected[t][~painted[t]])
        # written as every face writes results (`replay.LabelWriter`): the session's objects replace what is under
        # them, a painted label stays elsewhere
        np.testing.assert_array_equal(c.labels[t][painted[t]], np.where(expected[t] > 0, expected[t], 7)[painted[t]])
        assert set(c.confidence[(t,)][1]) == set(range(3))
    assert c.delete_object(1) and c.volume is None and set(np.unique(c.labels)) <= {0, 7}


def test_a_3d_t_result_saved_as_the_widget_saves_it_replays_to_the_same_labels(tiny_model, tmp_path):
    """3D+t: prompts on two time points, propagate_volume, Save with the provenance the widget records (its session
    key is the shown time point, as `SAM2Widget.provenance` passes it): `replay` reruns the VolumeTimeSession's log
    to the saved labels at every (t, z)."""
    import torch

    from napari_sam2.io.results import open_result
    from napari_sam2.prompts import PromptSet
    from napari_sam2.replay import replay

    rng = np.random.default_rng(1)
    stack = (rng.random((3, 3, 40, 40)) * 40).astype(np.uint8)
    stack[:, 1:3, 14:30, 12:28] += 180
    stack[:, 0:2, 4:12, 28:38] += 160
    prompts = PromptSet()
    prompts.add(1, 1, points=[[22, 20]], t=0)
    prompts.add(2, 1, points=[[8, 33]], t=2)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # float sums (so boundary pixels) depend on the thread count; the log records it
    try:
        c = TrackingController(Recorder())
        c.set_model(tiny_model, "tiny")
        c.set_geometry(StackGeometry.from_array(stack, stream_axis="tz"))
        assert c.propagate_volume("both", (0, 2), prompts)
        labels = c.label_stack().copy()
        assert labels[0].any() and labels[2].any()  # (the random tiny model's masks: any shape will do here)
        record = {"layer": "embryo", "path": None, "shape": list(stack.shape)}
        provenance = c.provenance((2,), record, prompts=prompts)  # the widget shows t = 2 when it saves
        assert provenance.settings["engine"] == "volume_time"
        assert [e["op"] for e in provenance.edit_log].count("set") == 2  # the two prompts, then the passes
        path = tmp_path / "embryo.ome.zarr"
        c.save(path, "tzyx", prompts, provenance, [1.0] * 4, ["pixel"] * 4)
        c.shutdown()
    finally:
        torch.set_num_threads(before)
    saved = open_result(path)
    np.testing.assert_array_equal(np.asarray(saved.labels), labels)
    replayed = replay(path, image=stack, model=tiny_model)
    assert replayed.identical, (replayed.differing_frames, replayed.differing_pixels)
    np.testing.assert_array_equal(replayed.labels, labels)  # every (t, z)


@pytest.mark.parametrize("contrast", ["global", "local"])
def test_a_3d_t_preview_makes_the_input_the_3d_t_session_propagates_from(tiny_model, contrast):
    """The widget's per-time-point preview session of a 3D+t layer takes the 4-D stack's intensity range and contrast
    window (`volume_time.stack_preprocessing`), not its own time point's: a click previews the very mask the
    VolumeTimeSession starts from, on a time point much dimmer than the rest."""
    from napari_sam2.prompts import make_prompt
    from napari_sam2.volume_time import VolumeTimeSession
    from napari_sam2.widget import _worker

    rng = np.random.default_rng(3)
    stack = (rng.random((3, 4, 40, 40)) * 30).astype(np.uint16)
    stack[:, 1:3, 12:28, 10:26] += np.array([150, 1500, 3000], np.uint16)[:, None, None, None]  # t = 0 is dim
    g = StackGeometry.from_array(stack, stream_axis="tz")
    preview = _worker.make_session(tiny_model, g, (0,), contrast=contrast)
    own = _worker.make_session(tiny_model, StackGeometry.from_array(stack[0]), (), contrast=contrast)
    with VolumeTimeSession(tiny_model, stack, contrast=contrast) as vt:
        assert preview.frames.intensity == vt.intensity and preview.frames.contrast == vt.contrast
        assert own.frames.intensity != vt.intensity  # time point 0 alone would be scaled otherwise
        z_session = vt._z_session(0)
        for z in range(4):
            assert np.array_equal(preview.frames.model_input(z).numpy(), z_session.frames.model_input(z).numpy())
        clicked = preview.add_prompt(2, 1, points=[[20, 18]], labels=[1])
        started = vt.add(0, 2, make_prompt(2, 1, points=[[20, 18]], labels=[1]))
        assert np.array_equal(clicked.masks[clicked.obj_ids.index(1)], started)
    preview.close()
    own.close()


def test_3d_t_previews_fit_the_4d_stack_once(tiny_model, monkeypatch):
    """Each time point a user visits gets its own preview session, all with the 4-D stack's range and contrast
    window: fitted once (16 + 3 slice reads) and again only when the contrast, the model or the geometry changes."""
    from napari_sam2 import volume_time

    fits = []
    real = volume_time.stack_preprocessing

    def counted(frames, model, contrast=None, *args, **kwargs):
        fits.append(contrast)
        return real(frames, model, contrast, *args, **kwargs)

    monkeypatch.setattr(volume_time, "stack_preprocessing", counted)
    rng = np.random.default_rng(5)
    stack = (rng.random((3, 4, 40, 40)) * 30).astype(np.uint16)
    stack[:, 1:3, 12:28, 10:26] += np.array([150, 1500, 3000], np.uint16)[:, None, None, None]
    c = TrackingController(Recorder())
    c.set_model(tiny_model, "tiny")
    c.set_geometry(StackGeometry.from_array(stack, stream_axis="tz"))
    for t in range(3):
        c.focus((t,), 1)
    assert all(c.session((t,)) is not None for t in range(3)) and fits == [None]
    first = c.session((0,)).frames.intensity
    assert all(c.session((t,)).frames.intensity == first for t in range(3))  # the 4-D stack's, on every time point
    assert first == real(stack, tiny_model)[0]
    c.set_contrast("local")  # the sessions restart: fitted again for the new contrast, once
    c.focus((1,), 1)
    c.focus((2,), 1)
    assert fits == [None, "local"]
    c.set_model(tiny_model, "tiny")  # a model (re)loaded: fitted again
    c.focus((1,), 1)
    assert fits == [None, "local", "local"]
    c.shutdown()
    c.reset_sessions()


def test_the_axial_edge_rule_is_checked_once_and_applies_only_where_z_is_streamed(controller, tiny_model):
    """set_z_edge reads what --z-edge reads (volume.resolve_z_edge): a bad value is refused and changes nothing;
    along t the rule stays off whatever is asked; in 3D+t (z streamed) the VolumeTimeSession gets it, and changed
    after a propagation the controller names the time points to propagate again."""
    from napari_sam2.errors import InputError
    from napari_sam2.prompts import PromptSet

    for bad in ("1.5", "half", 0.0, True):
        with pytest.raises(InputError, match="z_edge"):
            controller.set_z_edge(bad)
    assert controller.z_edge == "auto"
    assert controller.set_z_edge("0.3") is None and controller.z_edge == 0.3  # a time-lapse: no rule, no restart
    assert controller.z_edge_used() is None and controller.session(()).z_edge is None

    stack = np.zeros((2, 3, 40, 40), np.uint8)
    stack[:, 1:3, 14:30, 12:28] = 200
    c = TrackingController(Recorder())
    c.set_model(tiny_model, "tiny")
    c.set_geometry(StackGeometry.from_array(stack, stream_axis="tz"))
    assert c.z_edge_used() == 0.5  # auto: 3D+t streams z
    assert c.set_z_edge("off") is None and c.z_edge is None and c.z_edge_used() is None
    prompts = PromptSet()
    prompts.add(1, 1, points=[[22, 20]], t=0)
    assert c.propagate_volume("forward", (0, 1), prompts) and c.volume.z_edge is None
    assert c.provenance((0,), {}).settings["z_edge"] is None  # what a save records
    assert c.set_z_edge(0.3) == (0, 1) and c.volume is None and c.z_edge_used() == 0.3
    assert c.propagate_volume("both", (0, 1), prompts) and c.volume.z_edge == 0.3
    assert c.set_z_edge(" Auto ") == (0, 1) and c.z_edge == "auto" and c.z_edge_used() == 0.5  # as --z-edge reads it
    c.shutdown()


def test_the_contrast_recorded_before_any_session_is_the_one_a_session_would_use(nano):
    """A z-stack saved before any session exists (nothing tracked yet) records the contrast a session on it would be
    made with: the model's z-stream default (nano-fluo: local), as `make_session` gives a ZYX stack; a time-lapse
    records the model's default. Before, both recorded the latter."""
    from dataclasses import replace

    from napari_sam2.session import TrackingSession

    stack = (np.random.default_rng(0).random((4, 48, 48)) * 255).astype(np.uint8)
    c = TrackingController(Recorder())
    c.set_model(nano, "nano-fluo")
    try:
        c.set_geometry(replace(StackGeometry.from_array(stack), z_stream=True))
        assert c.session(()) is None
        # (the step, not yet fitted to the stack: a replay fits it as the session did)
        with TrackingSession(nano, stack, z_stream=True) as session:
            assert c.contrast_used().name == session.contrast.name == "local"
        c.set_geometry(StackGeometry.from_array(stack))
        with TrackingSession(nano, stack) as session:
            assert c.contrast_used().name == session.contrast.name == "global"
    finally:
        c.shutdown()
        c.reset_sessions()
