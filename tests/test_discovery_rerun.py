"""Discovery on a movie tracked before: propagating again with discovery on searches every frame of the pass, also
those it does not recompute (a user ticks "discover new objects while propagating" after a first propagation)."""

import numpy as np
import pytest
import torch

from napari_sam2.discovery import DiscoveryOptions, propagate_with_discovery
from napari_sam2.model import load_model
from napari_sam2.sample_data import nuclei_timelapse
from napari_sam2.session import TrackingSession
from napari_sam2.widget._controller import TrackingController
from napari_sam2.widget._geometry import StackGeometry

MOVIE = nuclei_timelapse(n_frames=6, shape=(128, 128), n_nuclei=3, seed=11)  # nucleus 1 divides on frame 3
MOTHER, T_DIV = MOVIE.events["division"]["parent"], MOVIE.events["division"]["frame"]


def _oracle(session, frame):  # the true masks stand in for segment everything
    truth = MOVIE.labels[frame]
    return [truth == o for o in np.unique(truth)[1:]]


@pytest.fixture(scope="module")
def nano():
    return load_model("nano-fluo", device="cpu")


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _controller(nano):
    c = TrackingController()
    c.set_model(nano, "nano-fluo")
    c.set_geometry(StackGeometry.from_array(MOVIE.image))
    c.focus((), 0)
    for obj in np.unique(MOVIE.labels[0])[1:]:
        c.add_mask((), 0, int(obj), MOVIE.labels[0] == obj)
    return c


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
    assert [(e["kind"], e["frame"], e["mother"]) for e in c.events] == [("division", T_DIV, MOTHER)]
    assert c.events == fresh.events
    daughters = c.events[0]["daughters"]
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
