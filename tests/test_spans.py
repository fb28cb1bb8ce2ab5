"""One rule for every face: an object has no pixels outside its span of frames (`session.span`). The widget's
controller, `replay_log` and `track()` all write results through `replay.LabelWriter`, so a mother that ends where
she divides leaves no pixel on the frames after, whichever face wrote the labels. And discovery on a movie tracked
before: propagating again with discovery on searches every frame of the pass, also those it does not recompute."""

import numpy as np
import pytest
import torch

from napari_sam2 import track
from napari_sam2.discovery import DiscoveryOptions, propagate_with_discovery
from napari_sam2.model import load_model
from napari_sam2.replay import merge_result, replay_log
from napari_sam2.sample_data import nuclei_timelapse
from napari_sam2.session import TrackingSession
from napari_sam2.widget._controller import ControllerView, TrackingController
from napari_sam2.widget._geometry import StackGeometry


@pytest.fixture(scope="module")
def nano():
    return load_model("nano-fluo", device="cpu")


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # float sums, and so boundary pixels, depend on the thread count
    yield
    torch.set_num_threads(threads)


MOVIE = nuclei_timelapse(n_frames=6, shape=(128, 128), n_nuclei=3, seed=11)  # nucleus 1 divides on frame 3
MOTHER, T_DIV = MOVIE.events["division"]["parent"], MOVIE.events["division"]["frame"]


def _oracle(session, frame):  # the true masks stand in for segment everything (fast, and sure to find the division)
    truth = MOVIE.labels[frame]
    return [truth == o for o in np.unique(truth)[1:]]


def _controller(nano, movie=MOVIE):
    """A controller on the movie with every nucleus of frame 0 prompted by its mask (as track()'s seeds)."""
    c = TrackingController()
    c.set_model(nano, "nano-fluo")
    c.set_geometry(StackGeometry.from_array(movie.image))
    c.focus((), 0)
    for obj in np.unique(movie.labels[0])[1:]:
        c.add_mask((), 0, int(obj), movie.labels[0] == obj)
    return c


def _replayed(nano, log, movie=MOVIE):
    """→ (labels, the replaying session's own edit log)."""
    with TrackingSession(nano, movie.image) as fresh:
        return replay_log(fresh, log), fresh.edit_log


def test_a_span_that_shrinks_gives_the_same_labels_in_the_widget_replay_and_track(nano, one_thread):
    options = DiscoveryOptions(detector=_oracle, division_gap=0)
    result = track(MOVIE.image, MOVIE.labels[0], model=nano, direction="forward", discover=options, tables=False)
    labels, log = np.asarray(result.labels), result.provenance["edit_log"]
    assert any(e["op"] == "end" and e["obj_id"] == MOTHER for e in log)
    assert all(e["frames"] for e in log if e["op"] == "pass")  # discovery's edits leave no 0-frame passes
    assert (labels[T_DIV - 1] == MOTHER).any() and not (labels[T_DIV:] == MOTHER).any()
    # her scores end with her pixels (the division frame's first write still held her)
    assert max(r["frame"] for r in result.confidence if r["obj_id"] == MOTHER) == T_DIV - 1

    c = _controller(nano)
    c.discovery = options
    assert c.propagate((), "forward", (0, 5), [0])
    assert c.session(()).edit_log == log  # the same edits in the same order …
    np.testing.assert_array_equal(c.labels, labels)  # … give the same labels through the widget
    assert max(c.confidence[()][MOTHER]) == T_DIV - 1  # and the same end of her scores
    replayed, relogged = _replayed(nano, log)
    np.testing.assert_array_equal(replayed, labels)  # and through replay
    # which logs the same edits again: no passes of no frame, which replay as nothing, between two of discovery's
    assert [(e["op"], e.get("frames")) for e in relogged] == [(e["op"], e.get("frames")) for e in log]
    c.reset_sessions()


def test_an_ended_mother_keeps_no_pixels_an_earlier_pass_wrote(nano, one_thread):
    """The case the rule is for: the mother was tracked over the whole movie first; her prompt is made again (the
    frames after it are tracked again) and a discovery pass, cancelled just after the division, ends her there.
    The frames after it are not written again, and results do not cover an ended object, so a plain merge would
    keep her old pixels."""
    c = _controller(nano)
    assert c.propagate((), "forward", (0, 5), [0])
    assert (c.labels[T_DIV:] == MOTHER).any(axis=(1, 2)).all()
    c.add_mask((), 0, MOTHER, MOVIE.labels[0] == MOTHER)  # a pass that only re-reads tracked frames yields none

    class Cancel(ControllerView):
        def show_propagation(self, done, total):
            if c.frames_written == T_DIV + 2:  # frames 0 … T_DIV, and T_DIV again after the division
                c.cancel()

    c.view = Cancel()
    c.discovery = DiscoveryOptions(detector=_oracle, arrivals=False, division_gap=0)
    assert c.propagate((), "forward", (0, 5), [0])
    assert [e["kind"] for e in c.events] == ["division"] and c.frames_written == T_DIV + 2
    assert (c.labels[T_DIV - 1] == MOTHER).any() and not (c.labels[T_DIV:] == MOTHER).any()
    assert max(c.confidence[()][MOTHER]) == T_DIV - 1  # the first pass's scores after her end are forgotten too
    log = c.session(()).edit_log
    np.testing.assert_array_equal(_replayed(nano, log)[0], c.labels)

    # without the rule (a plain merge of every result, as `merge_result` alone does) her pixels would stay
    plain = np.zeros_like(c.labels)
    with TrackingSession(nano, MOVIE.image) as fresh:
        replay_log(fresh, log, on_result=lambda r: plain.__setitem__(r.frame, merge_result(plain[r.frame], r)))
    assert (plain[T_DIV + 1 :] == MOTHER).any()
    c.reset_sessions()


# ---------------------------------------------------------------- discovery on frames tracked before
def test_the_widget_finds_a_division_on_frames_it_tracked_before(nano, one_thread):
    options = DiscoveryOptions(detector=_oracle, arrivals=False, division_gap=0)
    fresh = _controller(nano)  # discovery from the start
    fresh.discovery = options
    assert fresh.propagate((), "forward", (0, 5), [0])

    c = _controller(nano)
    assert c.propagate((), "forward", (0, 5), [0])
    assert not c.events and (c.labels[T_DIV:] == MOTHER).any(axis=(1, 2)).all()
    c.discovery = options
    assert c.propagate((), "forward", (0, 5), [0])  # nothing is stale: every frame comes from the stored outputs
    divisions = [e for e in c.events if e["kind"] == "division"]  # (beside repairs of the nucleus it loses)
    assert [(e["frame"], e["mother"]) for e in divisions] == [(T_DIV, MOTHER)]
    assert c.events == fresh.events
    daughters = divisions[0]["daughters"]
    assert c.session(()).parents == {d: MOTHER for d in daughters}
    assert not (c.labels[T_DIV:] == MOTHER).any()
    np.testing.assert_array_equal(c.labels, fresh.labels)  # as if discovery had been on from the start
    for done in (c, fresh):
        done.reset_sessions()


def test_frames_whose_masks_were_evicted_are_not_searched(nano, one_thread):
    """With the logits budget spent, a re-yielded frame lacks tracked cells: they would look like arrivals."""
    options = DiscoveryOptions(detector=_oracle, division_gap=0)
    found = {}
    for budget in (256 << 20, 1):
        with TrackingSession(nano, MOVIE.image, result_cache_bytes=budget) as session:
            for obj in np.unique(MOVIE.labels[0])[1:]:
                session.add_prompt(0, int(obj), mask=MOVIE.labels[0] == obj)
            list(session.propagate("forward"))
            events = []
            results = list(propagate_with_discovery(session, options, events=events))
            found[budget] = [e["kind"] for e in events]
            if budget == 1:  # the prompted frame keeps its outputs; every later frame lost its logits
                assert all(r.evicted for r in results if r.frame > 0)
    assert "division" in found[256 << 20]  # (and the nucleus the model lost on frame 2 comes back as an arrival)
    assert found[1] == []


# ---------------------------------------------------------------- a division placed one frame back
# larger nuclei than MOVIE's (daughters of ~100 px: the shape test needs a few pixels of depth)
LATE = nuclei_timelapse(n_frames=6, shape=(128, 128), n_nuclei=3, seed=11, nucleus_radius=9.0)
LATE_MOTHER, LATE_DIV = LATE.events["division"]["parent"], LATE.events["division"]["frame"]


def _late_oracle(session, frame):
    """The true masks, except that on the frame the daughters appear they come as one mask (as nano-fluo's clicks
    answer for daughters that still touch): the division is found a frame late."""
    truth = LATE.labels[frame]
    ids = [int(o) for o in np.unique(truth)[1:]]
    if frame != LATE_DIV:
        return [truth == o for o in ids]
    children = list(LATE.events["division"]["children"])
    return [truth == o for o in ids if o not in children] + [np.isin(truth, children)]


def test_a_division_found_late_goes_back_one_frame_in_track_the_widget_replay_and_resume(nano, one_thread, tmp_path):
    options = DiscoveryOptions(detector=_late_oracle, arrivals=False, division_gap=0)
    result = track(LATE.image, LATE.labels[0], model=nano, direction="forward", discover=options, tables=False)
    labels, log = np.asarray(result.labels), result.provenance["edit_log"]
    divisions = [e for e in result.events if e["kind"] == "division"]
    assert [(e["frame"], e.get("found"), e["mother"]) for e in divisions] == [(LATE_DIV, LATE_DIV + 1, LATE_MOTHER)]
    assert (labels[LATE_DIV - 1] == LATE_MOTHER).any() and not (labels[LATE_DIV:] == LATE_MOTHER).any()
    for child in LATE.events["division"]["children"]:  # each true daughter is most of one daughter from LATE_DIV on
        truth = LATE.labels[LATE_DIV] == child
        assert max((labels[LATE_DIV] == d)[truth].mean() for d in divisions[0]["daughters"]) > 0.7
    c = _controller(nano, LATE)
    c.discovery = options
    assert c.propagate((), "forward", (0, 5), [0])
    assert c.session(()).edit_log == log  # the same edits …
    np.testing.assert_array_equal(c.labels, labels)  # … the same labels through the widget …
    np.testing.assert_array_equal(_replayed(nano, log, LATE)[0], labels)  # … and through replay
    c.reset_sessions()

    # and through a run killed right after the first write of the frame the division is found on (the frame
    # before it still holds the mother), then resumed
    def stop(done, total, calls=[]):  # noqa: B006  (counts this run's writes)
        calls.append(done)
        if len(calls) == LATE_DIV + 2:
            raise KeyboardInterrupt

    cut = tmp_path / "cut.ome.zarr"
    with pytest.raises(KeyboardInterrupt):
        track(LATE.image, LATE.labels[0], model=nano, direction="forward", discover=options, tables=False, out=cut,
              progress=stop)  # fmt: skip
    resumed = track(LATE.image, LATE.labels[0], model=nano, direction="forward", discover=options, tables=False,
                    out=cut, resume=True)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(resumed.labels[...]), labels)
    # must not go back: the same with the rule off (found and placed on LATE_DIV + 1)
    off = DiscoveryOptions(detector=_late_oracle, arrivals=False, division_gap=0, division_back=False)
    off = track(LATE.image, LATE.labels[0], model=nano, direction="forward", discover=off, tables=False)
    assert [(e["frame"], e.get("found")) for e in off.events if e["kind"] == "division"] == [(LATE_DIV + 1, None)]
