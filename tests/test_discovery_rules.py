"""Discovery's cheaper sampling and its repair rules (napari_sam2.discovery): which clicks a discovery frame
decodes, the absorbed-neighbour and refresh rules, and the real segment-everything path with the built-in
nano-fluo (an arrival found on its first discovery frame without any oracle)."""

import numpy as np
import pytest
import torch

from napari_sam2 import load_model, track
from napari_sam2.discovery import ChangeSampler, DiscoveryOptions, compare_masks, object_clicks
from napari_sam2.errors import InputError
from napari_sam2.sample_data import nuclei_timelapse


def test_object_clicks_fall_in_each_half_of_the_long_axis():
    labels = np.zeros((40, 60), np.uint32)
    labels[10:20, 10:50] = 3  # 10 x 40, long axis along x
    clicks = object_clicks(labels)
    assert clicks.shape == (2, 2)
    xs = sorted(clicks[:, 1])
    assert 15 <= xs[0] <= 25 and 35 <= xs[1] <= 45  # a quarter of the way in from each end
    assert all(10 <= y <= 20 for y in clicks[:, 0])
    assert object_clicks(np.zeros((5, 5), np.uint32)).shape == (0, 2)


def test_change_sampler_clicks_only_changed_uncovered_points_and_revisits():
    rng = np.random.default_rng(0)
    features = torch.as_tensor(rng.normal(1.0, 0.1, (8, 4, 4)), dtype=torch.float32)
    labels = np.zeros((64, 64), np.uint32)
    labels[0:16, 0:16] = 1  # covers grid point (4, 4) of the 8 x 8 grid (spacing 8 px, first at 4)
    sampler = ChangeSampler((64, 64), points_per_side=8, threshold=0.2, revisit=100)
    first = sampler.clicks(features, labels)
    # the whole grid except the 4 points inside object 1, then object 1's two clicks
    assert len(first) == 64 - 4 + 2
    assert not ((first[:-2] < 16).all(axis=1)).any() and (first[-2:] < 16).all()
    again = sampler.clicks(features, labels)
    assert len(again) == 2  # nothing changed: only the object's own clicks
    changed = features.clone()
    changed[:, 3, 3] *= 3.0  # the bottom-right feature cell (pixels 48-63)
    third = sampler.clicks(changed, labels)
    grid_points = third[:-2]
    # the points whose 3 x 3 feature neighbourhood holds the changed cell: pixels 32-63 on both axes, 4 x 4 points
    assert len(grid_points) == 16 and (grid_points >= 32).all()
    # revisits are staggered: with revisit 3, each uncovered point is clicked once in any 3 unchanged frames
    sampler = ChangeSampler((64, 64), points_per_side=8, threshold=0.2, revisit=3)
    sampler.clicks(features, labels)
    seen = [sampler.clicks(features, labels)[:-2] for _ in range(3)]
    assert all(15 <= len(s) <= 25 for s in seen)
    assert len({tuple(p) for s in seen for p in s}) == sum(len(s) for s in seen) == 60
    with pytest.raises(InputError, match="sampling"):
        DiscoveryOptions(sampling="sometimes")


def test_absorbed_neighbour_is_no_division_and_a_fragment_is_refreshed():
    labels = np.zeros((60, 60), np.uint32)
    labels[5:15, 5:35] = 1  # object 1 swallowed a newcomer: her own 10 x 12 part and a 10 x 14 part
    own, swallowed = np.zeros((60, 60), bool), np.zeros((60, 60), bool)
    own[5:15, 5:17], swallowed[5:15, 21:35] = True, True
    previous = np.zeros_like(labels)
    previous[5:15, 4:17] = 1  # where she was on the frame before
    opts = DiscoveryOptions()
    found = compare_masks(labels, [own, swallowed], opts, usual_area={1: 125.0}, previous_labels=previous)
    assert [(p.kind, p.mother, p.sign) for p in found] == [("refresh", 1, "absorbed"), ("arrival", None, "absorbed")]
    assert (found[0].masks[0] == own).all() and (found[1].masks[0] == swallowed).all()
    # the same masks in a mother of her usual size (daughters about half of her): a division
    found = compare_masks(labels, [own, swallowed], opts, usual_area={1: 300.0})
    assert [p.kind for p in found] == ["division"]
    # a tracked mask shrunk to a fragment of a nucleus is re-prompted with the nucleus
    shrunk = np.zeros_like(labels)
    shrunk[40:45, 40:45] = 2
    nucleus = np.zeros((60, 60), bool)
    nucleus[38:48, 38:48] = True
    found = compare_masks(shrunk, [nucleus], opts, largest_area={2: 100})
    assert [(p.kind, p.mother, p.sign) for p in found] == [("refresh", 2, "fragment")]
    # ... but not with a mask far larger than the object ever was (a cluster of cells)
    assert compare_masks(shrunk, [nucleus], opts, largest_area={2: 25}) == []
    assert compare_masks(shrunk, [nucleus], DiscoveryOptions(refresh=False), largest_area={2: 100}) == []


@pytest.fixture(scope="module")
def nano():
    return load_model("nano-fluo", device="cpu")


def test_real_discovery_finds_an_unseeded_nucleus_on_the_first_discovery_frame(nano):
    # no oracle: nano-fluo's own clicks; nucleus 6 is left unseeded and discovery starts on frame 2
    movie = nuclei_timelapse(n_frames=4, shape=(128, 128), n_nuclei=6, seed=5)
    seeds = np.where(np.isin(movie.labels[0], [1, 2, 3, 4, 5]), movie.labels[0], 0)
    options = DiscoveryOptions(every=2, on_start_frame=False, divisions=False)
    result = track(movie.image, seeds, model=nano, direction="forward", discover=options)
    arrivals = [e for e in result.events if e["kind"] == "arrival"]
    labels = np.asarray(result.labels)
    truth = movie.labels[2] == 6
    hits = [e for e in arrivals if (labels[2] == e["object"])[truth].mean() > 0.5]
    assert [e["frame"] for e in hits] == [2]  # found on frame 2, the first discovery frame
    assert not (labels[:2] == hits[0]["object"]).any() and (labels[3] == hits[0]["object"]).any()


def test_discovery_runs_with_a_random_weight_sam2_model(tiny_model, blob_stack):
    # the path official checkpoints take (their weights cannot be downloaded here): both samplings, every frame
    from napari_sam2.discovery import propagate_with_discovery
    from napari_sam2.session import TrackingSession

    stack = blob_stack(n_frames=3)
    for sampling in ("changed", "grid"):
        session = TrackingSession(tiny_model, stack)
        session.add_prompt(0, 1, points=[[30, 30]])
        events: list = []
        options = DiscoveryOptions(sampling=sampling, generator={"points_per_side": 4})
        frames = [r.frame for r in propagate_with_discovery(session, options, events=events)]
        assert sorted(set(frames)) == [0, 1, 2]
        assert all(e["kind"] in ("arrival", "division", "refresh") for e in events)
