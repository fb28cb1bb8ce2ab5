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


def test_object_clicks_only_for_the_objects_watched():
    labels = np.zeros((60, 60), np.uint32)
    labels[5:15, 5:45] = 1  # 10 x 40: elongated (long / short axis 4)
    labels[30:42, 30:42] = 2  # a square: elongation 1
    seen = {}

    def watch(obj, area, elongation):
        seen[obj] = (area, elongation)
        return obj == 1

    clicks = object_clicks(labels, watch)
    assert clicks.shape == (2, 2) and (clicks[:, 0] < 15).all()  # object 1's two clicks only
    assert seen[1][0] == 400 and 3.8 < seen[1][1] < 4.2
    assert seen[2][0] == 144 and 0.99 < seen[2][1] < 1.01
    assert len(object_clicks(labels)) == 4  # no watch: every object


def test_untracked_signal_is_near_bright_pixels_no_tracked_mask_holds():
    from napari_sam2.discovery import near_signal, untracked_signal

    rng = np.random.default_rng(1)
    image = rng.normal(0.1, 0.02, (96, 96)).astype(np.float32)
    yy, xx = np.mgrid[:96, :96]
    tracked_cell = (yy - 30) ** 2 + (xx - 30) ** 2 < 64
    new_cell = (yy - 70) ** 2 + (xx - 70) ** 2 < 64
    image[tracked_cell | new_cell] = 0.7
    labels = np.zeros((96, 96), np.uint32)
    labels[tracked_cell] = 4
    near = untracked_signal(image, labels, reach=6, min_area=30)
    assert near[70, 70] and near[70, 82] and not near[70, 86]  # the new cell (radius 8) and 6 px around it
    assert not near[30, 30] and not near[30, 40]  # the tracked cell and its blurred rim
    assert not near[5, 90]  # background noise
    labels[new_cell] = 5
    assert not untracked_signal(image, labels, reach=6, min_area=30).any()
    near = near_signal(image, reach=6, min_area=30)  # tracked or not
    assert near[30, 30] and near[30, 44] and near[70, 70] and not near[30, 48] and not near[5, 90]
    # read at some pixels only (discovery's grid points): the same answers there
    rows, cols = np.mgrid[0:96:5, 0:96:5].reshape(2, -1)
    assert np.array_equal(near_signal(image, reach=6, min_area=30, at=(rows, cols)), near[rows, cols])
    labels[new_cell] = 0
    full = untracked_signal(image, labels, reach=6.5, min_area=30)
    assert full.any() and np.array_equal(untracked_signal(image, labels, 6.5, 30, at=(rows, cols)), full[rows, cols])


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
    # with a signal map, the uncovered grid points near signal are clicked on every call, changed or not
    sampler = ChangeSampler((64, 64), points_per_side=8, threshold=0.2, revisit=100)
    signal = np.zeros((64, 64), bool)
    signal[:24, :24] = True  # 9 grid points, 4 of them inside object 1
    for _ in range(3):
        clicks = sampler.clicks(features, labels, signal=signal)
        assert len(clicks) == 5 + 2 and (clicks[:-2] < 24).all()
    assert len(sampler.clicks(features, labels, watch=lambda *a: False, signal=signal)) == 5
    # "near": the change test still decides, but only where signal is near
    sampler = ChangeSampler((64, 64), points_per_side=8, threshold=0.2, revisit=100)
    assert len(sampler.clicks(features, labels, near=signal)) == 5 + 2  # first frame: every point near signal
    assert len(sampler.clicks(features, labels, near=signal)) == 2  # unchanged
    assert len(sampler.clicks(changed, labels, near=signal)) == 2  # changed, but far from signal
    near = np.ones((64, 64), bool)
    assert len(sampler.clicks(changed, labels, near=near)) == 16 + 2  # signal came near: the change still counts
    # points near untracked signal are clicked too, changed or not
    assert len(sampler.clicks(changed, labels, near=near, signal=signal)) == 5 + 2
    with pytest.raises(InputError, match="grid_signal"):
        DiscoveryOptions(grid_signal=True)
    with pytest.raises(InputError, match="object_clicks"):
        DiscoveryOptions(object_clicks="some")


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
        assert all(e["kind"] in ("arrival", "division", "refresh", "reclaim", "relink") for e in events)


def _box(shape, rows, cols):
    mask = np.zeros(shape, bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return mask


def test_reclaim_shares_a_swallowed_or_squeezed_neighbour_out_again():
    from napari_sam2.discovery import reclaim_swallowed

    shape = (40, 60)
    own, neighbour = _box(shape, (10, 20), (10, 20)), _box(shape, (10, 20), (20, 30))  # 100 px each, touching
    good = {1: (4, own), 2: (4, neighbour)}  # their masks on frame 4, their usual size
    usual = {1: 100.0, 2: 100.0}
    opts = DiscoveryOptions()
    swallowed = np.zeros(shape, np.uint32)
    swallowed[own | neighbour] = 1  # frame 5: object 1 spans both cells, object 2 is gone
    found = reclaim_swallowed(swallowed, opts, 5, usual, good, alive={1, 2})
    assert [(p.kind, p.mother, p.other, p.sign) for p in found] == [("reclaim", 1, 2, "swallowed")]
    assert (found[0].masks[0] == own).all() and (found[0].masks[1] == neighbour).all()
    squeezed = swallowed.copy()
    squeezed[10:20, 27:30] = 2  # object 2 kept a 30 px sliver
    found = reclaim_swallowed(squeezed, opts, 5, usual, good, alive={1, 2})
    assert [(p.mother, p.other, p.sign) for p in found] == [(1, 2, "squeezed")]
    assert found[0].masks[1].sum() == 100 and (found[0].masks[0] | found[0].masks[1] == own | neighbour).all()
    # must not fire: a mother that divided (ended: not alive) is covered by her daughters
    daughters = np.zeros(shape, np.uint32)
    daughters[own | neighbour] = 7
    assert reclaim_swallowed(daughters, opts, 5, usual, {**good, 7: (3, own)}, alive={7}) == []
    assert reclaim_swallowed(swallowed, opts, 5, usual, good, alive={1}) == []
    # ... nor when the neighbour did not grow (object 2 left the field), nor when object 2 kept its size
    alone = np.zeros(shape, np.uint32)
    alone[own] = 1
    assert reclaim_swallowed(alone, opts, 5, usual, good, alive={1, 2}) == []
    both = alone.copy()
    both[neighbour] = 2
    both[25:35, 10:20] = 1  # object 1 grew elsewhere (a stray piece), object 2 is whole
    assert reclaim_swallowed(both, opts, 5, usual, good, alive={1, 2}) == []
    # ... nor when the last good mask is older than reclaim_frames, nor with the rule off
    assert reclaim_swallowed(swallowed, opts, 10, usual, good, alive={1, 2}) == []
    assert reclaim_swallowed(swallowed, DiscoveryOptions(reclaim=False), 5, usual, good, alive={1, 2}) == []


def test_relink_closes_the_gap_of_a_lost_object_next_to_where_it_was_last_seen():
    from napari_sam2.discovery import relink_candidate

    shape = (80, 80)
    good = {3: (10, _box(shape, (40, 50), (40, 50))), 4: (12, _box(shape, (5, 15), (60, 70)))}
    usual = {3: 100.0, 4: 100.0}  # radius ~5.6 px: relink_distance 3 reaches ~17 px
    labels = np.zeros(shape, np.uint32)
    labels[5:15, 60:70] = 4  # object 4 is tracked; object 3 is lost
    opts = DiscoveryOptions()
    back = _box(shape, (44, 54), (50, 60))  # 10 px from where object 3 was last seen
    assert relink_candidate(back, 14, opts, labels, usual, good, alive={3, 4}) == 3
    # must not: too far, lost too long ago, already relinked, no longer existing, a present object, rule off
    far = _box(shape, (65, 75), (5, 15))
    assert relink_candidate(far, 14, opts, labels, usual, good, alive={3, 4}) is None
    assert relink_candidate(back, 10 + opts.relink_frames + 1, opts, labels, usual, good, alive={3, 4}) is None
    assert relink_candidate(back, 14, opts, labels, usual, good, alive={3, 4}, taken={3}) is None
    assert relink_candidate(back, 14, opts, labels, usual, good, alive={4}) is None
    near_4 = _box(shape, (16, 26), (60, 70))
    assert relink_candidate(near_4, 14, opts, labels, usual, good, alive={3, 4}) is None
    assert relink_candidate(back, 14, DiscoveryOptions(relink=False), labels, usual, good, alive={3, 4}) is None


def _two_neighbours(seed=0):
    """A 5-frame 128² movie with the generator's touching pair (nuclei 3 and 4) and a wanderer (5)."""
    movie = nuclei_timelapse(n_frames=5, shape=(128, 128), n_nuclei=5, seed=seed, nucleus_radius=9.0)
    return movie, np.where(np.isin(movie.labels[0], [3, 4, 5]), movie.labels[0], 0)


def _run(nano, image, seeds, edits=(), **options):
    """Track `seeds` forward with discovery every frame (segment everything off: only the tracking-side rules
    and the probe of lost objects) after the prompt `edits` [(frame, obj, kwargs)]. → (labels [T, Y, X], events)."""
    from napari_sam2.discovery import propagate_with_discovery
    from napari_sam2.session import TrackingSession

    session = TrackingSession(nano, image)
    for obj in np.unique(seeds)[1:]:
        session.add_prompt(0, int(obj), mask=seeds == obj)
    for frame, obj, kwargs in edits:
        session.add_prompt(frame, obj, **kwargs)
    events: list = []
    labels = {}
    opts = DiscoveryOptions(arrivals=False, divisions=False, refresh=False, **options)
    for result in propagate_with_discovery(session, opts, events=events, segment=lambda s, t: []):
        labels[result.frame] = result.labels
    return np.stack([labels[t] for t in sorted(labels)]), events


def test_real_reclaim_gives_a_swallowed_neighbour_back(nano):
    movie, seeds = _two_neighbours()
    truth3, truth4 = movie.labels[3] == 3, movie.labels[3] == 4
    cy, cx = (c.mean() for c in np.nonzero(truth4))
    # frame 3: object 3 swallows its touching neighbour (a mask over both) and object 4 is told it is not there
    dot = np.zeros_like(truth4)
    dot[int(cy), int(cx)] = True  # too small for the model's low-res masks: object 4 is empty on frame 3
    swallow = [(3, 3, {"mask": truth3 | truth4}), (3, 4, {"mask": dot})]
    plain, events = _run(nano, movie.image, seeds, relink=False)
    assert events == []  # must not fire: plain tracking of the pair, each cell its own
    assert (plain[3] == 4)[truth4].mean() > 0.5
    labels, events = _run(nano, movie.image, seeds, swallow, relink=False)
    # (the prompts on frame 3 reach the tracking of frame 2 too, through the conditioning memory)
    assert (3, "reclaim", [3, 4]) in [(e["frame"], e["kind"], e["objects"]) for e in events]
    assert all(e["kind"] == "reclaim" and e["frame"] >= 2 for e in events)
    assert (labels[3] == 4)[truth4].mean() > 0.5 and (labels[3] == 3)[truth4].mean() < 0.2
    assert (labels[3] == 3)[truth3].mean() > 0.5
    off, events = _run(nano, movie.image, seeds, swallow, relink=False, reclaim=False)
    assert events == [] and (off[3] == 4)[truth4].mean() < 0.2  # without the rule, object 4 stays swallowed


def test_real_probe_finds_a_lost_object_where_it_was_and_not_where_it_is_gone(nano):
    movie, seeds = _two_neighbours()
    truth5 = movie.labels[3] == 5
    cy, cx = (c.mean() for c in np.nonzero(truth5))
    dot = np.zeros_like(truth5)
    dot[int(cy), int(cx)] = True
    lose = [(3, 5, {"mask": dot})]  # frame 3: object 5 is empty (a one-pixel mask is too small for the model)
    labels, events = _run(nano, movie.image, seeds, lose)
    relinks = [(e["frame"], e["kind"], e["object"], e["sign"]) for e in events if e.get("object") == 5]
    assert relinks[:1] == [(3, "relink", 5, "probe")]
    assert (labels[3] == 5)[truth5].mean() > 0.5
    # must not: the same, but nucleus 5 really is gone from frame 3 on (its pixels set to the background)
    from scipy import ndimage

    gone = movie.image.copy()
    background = np.median(movie.image[3][movie.labels[3] == 0])
    for t in range(3, 5):
        gone[t][ndimage.binary_dilation(movie.labels[t] == 5, iterations=3)] = background
    labels, events = _run(nano, gone, seeds, lose)
    assert not [e for e in events if e.get("object") == 5]
    assert not (labels[3] == 5).any()


def _disc(shape, centre, radius):
    yy, xx = np.indices(shape)
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def test_resplit_splits_a_drifted_touching_pair_by_shape():
    from napari_sam2.discovery import resplit_pairs

    shape = (50, 70)
    left, right = _disc(shape, (25, 24), 10), _disc(shape, (25, 44), 10)  # two touching nuclei, 317 px each
    reference = {1: float(left.sum()), 2: float(right.sum())}  # their areas when first tracked
    drifted = np.zeros(shape, np.uint32)
    drifted[left] = 1
    drifted[right] = 2
    drifted[right & (np.indices(shape)[1] < 41)] = 1  # object 1 took the near third of nucleus 2
    opts = DiscoveryOptions()
    found = resplit_pairs(drifted, opts, reference)
    assert [(p.kind, p.mother, p.other, p.sign) for p in found] == [("reclaim", 1, 2, "resplit")]
    part1, part2 = found[0].masks
    assert _iou(part1, left) > 0.9 and _iou(part2, right) > 0.9
    # must not fire: the pair as it started, a shrunk object whose neighbour did not grow, the rule off
    whole = np.zeros(shape, np.uint32)
    whole[left], whole[right] = 1, 2
    assert resplit_pairs(whole, opts, reference) == []
    shrunk = whole.copy()
    shrunk[right & (np.indices(shape)[1] < 41)] = 0  # object 2 lost a third to the background, not to object 1
    assert resplit_pairs(shrunk, opts, reference) == []
    assert resplit_pairs(drifted, opts, {1: 450.0, 2: reference[2]}) == []  # object 1 is that large by nature
    assert resplit_pairs(drifted, DiscoveryOptions(resplit=False), reference) == []


def test_refresh_does_not_take_what_a_squeezed_neighbour_lost():
    shape = (50, 70)
    left, right = _disc(shape, (25, 24), 10), _disc(shape, (25, 44), 10)
    labels = np.zeros(shape, np.uint32)
    labels[left & (np.indices(shape)[1] < 28)] = 1  # object 1 shrank to a fragment of its nucleus
    labels[right & (np.indices(shape)[1] > 40)] = 2  # its neighbour 2 is squeezed too
    spans_both = (left | right) & (np.indices(shape)[1] < 40)  # an auto mask over nucleus 1 and part of 2
    reference = {1: float(left.sum()), 2: float(right.sum())}
    opts = DiscoveryOptions()
    kinds = [(p.kind, p.mother) for p in compare_masks(labels, [spans_both], opts, largest_area={1: 320, 2: 320})]
    assert kinds == [("refresh", 1)]  # without references: refreshed into the neighbour's pixels
    found = compare_masks(labels, [spans_both], opts, largest_area={1: 320, 2: 320}, reference_area=reference)
    assert found == []  # 1.1 × its reference area beside a neighbour below 0.8 × hers: refused
    # must still refresh: the same fragment with an auto mask of its own nucleus
    found = compare_masks(labels, [left], opts, largest_area={1: 320, 2: 320}, reference_area=reference)
    assert [(p.kind, p.mother) for p in found] == [("refresh", 1)]


def test_split_before_finds_touching_daughters_and_not_a_whole_nucleus():
    from napari_sam2.discovery import split_before

    shape = (50, 80)
    pair = _disc(shape, (25, 30), 9) | _disc(shape, (25, 47), 9)  # two daughters touching (pinched where they meet)
    # the daughters one frame later, a little further apart
    daughters = [_disc(shape, (25, 28), 9), _disc(shape, (25, 49), 9)]
    opts = DiscoveryOptions()
    parts = split_before(pair, daughters, opts)
    assert parts is not None
    assert _iou(parts[0], _disc(shape, (25, 30), 9)) > 0.85 and _iou(parts[1], _disc(shape, (25, 47), 9)) > 0.85
    assert not (parts[0] & parts[1]).any() and ((parts[0] | parts[1]) == pair).all()
    # must not: one convex nucleus (an ellipse as long as the pair) seeded by the same daughters
    yy, xx = np.indices(shape)
    ellipse = ((yy - 25) / 10.0) ** 2 + ((xx - 38.5) / 18.0) ** 2 <= 1
    assert split_before(ellipse, daughters, opts) is None
    # ... nor a mask only one daughter overlaps, nor with a neck threshold no pinch passes
    assert split_before(_disc(shape, (25, 30), 9), daughters, opts) is None
    assert split_before(pair, daughters, DiscoveryOptions(division_neck=0.3)) is None


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_a_fragment_falling_in_two_is_no_division():
    labels = np.zeros((40, 60), np.uint32)
    labels[10:20, 10:18] = 1  # object 1 as two 80 px pieces, 4 px apart
    labels[10:20, 22:30] = 1
    opts = DiscoveryOptions()
    found = compare_masks(labels, [], opts, usual_area={1: 200.0})
    assert [(p.kind, p.sign) for p in found] == [("division", "two components")]  # 160 px of her usual 200
    # must not: the same pieces of a mother whose usual area is 400 (together 40 % of her: she is squeezed)
    assert compare_masks(labels, [], opts, usual_area={1: 400.0}) == []
    pieces = [labels == 1, np.zeros_like(labels, dtype=bool)]
    pieces[0][:, 20:], pieces[1][10:20, 22:30] = False, True  # rule (a): the two pieces as auto masks
    labels[10:20, 18:22] = 1  # (one component now)
    assert [p.kind for p in compare_masks(labels, pieces, opts, usual_area={1: 200.0})] == ["division"]
    assert compare_masks(labels, pieces, opts, usual_area={1: 400.0}) == []


def test_resplit_gives_a_swallowed_object_back_by_shape():
    from napari_sam2.discovery import resplit_swallowed

    shape = (50, 70)
    left, right = _disc(shape, (25, 24), 10), _disc(shape, (25, 44), 10)
    labels = np.zeros(shape, np.uint32)
    labels[left | right] = 2  # object 2 covers both nuclei; object 1 (its last good mask: `left`) is gone
    reference, usual = {1: float(left.sum()), 2: float(right.sum())}, {1: 300.0, 2: 330.0}
    opts = DiscoveryOptions()
    found = resplit_swallowed(labels, opts, reference, usual, {1: left})
    assert [(p.kind, p.mother, p.other, p.sign) for p in found] == [("reclaim", 2, 1, "resplit")]
    assert _iou(found[0].masks[1], left) > 0.85 and _iou(found[0].masks[0], right) > 0.85
    # must not: object 2 is that large by nature, object 1 was last seen on the background, the rule off
    assert resplit_swallowed(labels, opts, {1: reference[1], 2: 640.0}, {1: 300.0, 2: 640.0}, {1: left}) == []
    elsewhere = _disc(shape, (8, 62), 6)
    assert resplit_swallowed(labels, opts, reference, usual, {1: elsewhere}) == []
    assert resplit_swallowed(labels, DiscoveryOptions(resplit=False), reference, usual, {1: left}) == []


def test_settled_candidates_keep_their_mask_and_cost_no_click(tiny_model, blob_stack):
    from napari_sam2 import automatic
    from napari_sam2.automatic import AutoObject, recenter
    from napari_sam2.session import TrackingSession

    labels = np.zeros((96, 128), np.uint32)
    labels[10:40, 10:40] = 1  # a settled cell
    inside, across = np.zeros((96, 128), bool), np.zeros((96, 128), bool)
    inside[12:30, 12:38] = True  # lies in cell 1
    across[20:40, 30:60] = True  # a third of it in cell 1
    objects = [
        AutoObject(m, (int(np.nonzero(m)[0].min()), int(np.nonzero(m)[1].min()), int(np.nonzero(m)[0].max()) + 1,
                       int(np.nonzero(m)[1].max()) + 1), int(m.sum()), 0.9, 0.9, (20.0, 20.0), (0, 0, 96, 128))
        for m in (inside, across)
    ]  # fmt: skip
    keep = automatic._settled(labels)
    assert keep(objects[0]) and not keep(objects[1])
    session = TrackingSession(tiny_model, blob_stack(n_frames=1))
    feats = session._features(0)
    calls = []
    original = tiny_model.decode

    def counted(*args, **kwargs):
        calls.append(args[2].shape[0])  # clicks in this decoder call
        return original(*args, **kwargs)

    tiny_model.decode = counted
    try:
        settings = automatic.default_settings(tiny_model)
        out = recenter(tiny_model, feats, (96, 128), objects, settings, keep)
    finally:
        del tiny_model.decode
    assert sum(calls) == 1  # only the candidate across the border is clicked again
    assert out[0] is objects[0]  # the settled one is kept as it was


def test_max_cond_frames_attends_to_the_nearest_conditioning_frames(tiny_model, blob_stack):
    from napari_sam2.session import TrackingSession

    session = TrackingSession(tiny_model, blob_stack(n_frames=8))
    mask = np.zeros(session.frame_shape, bool)
    mask[30:50, 30:50] = True
    for frame in (0, 2, 5):
        session.add_prompt(frame, 1, mask=mask)
    obj = session.objects[1]
    assert list(session._attended_conditioning(obj, 7)) == [0, 2, 5]  # default: all (the official default)
    session.max_cond_frames = 2
    assert list(session._attended_conditioning(obj, 7)) == [2, 5]  # the nearest before, then the next nearest
    assert list(session._attended_conditioning(obj, 3)) == [2, 5]  # the nearest before and the nearest after
    assert list(session._attended_conditioning(obj, 1)) == [0, 2]
    with pytest.raises(InputError, match="max_cond_frames"):
        DiscoveryOptions(max_cond_frames=1)


def _squeeze(truth, keep_near, fraction):
    """The part of `truth` [H, W] bool nearest to `keep_near` [H, W] bool that holds `fraction` of it: a track
    that let go of the far side of its cell."""
    from scipy import ndimage

    distance = ndimage.distance_transform_edt(~keep_near)
    order = np.sort(distance[truth])
    return truth & (distance <= order[int(fraction * len(order)) - 1])


def test_real_probe_finds_a_cell_that_shrank_slowly_below_its_reference_area(nano):
    movie, seeds = _two_neighbours()
    # object 4 lets go of the far side of its nucleus a little more on each frame (85, 80, 65 % of it), so the
    # median of its last areas follows it down: only its area on its first frame shows the loss
    squeeze = [(t, 4, {"mask": _squeeze(movie.labels[t] == 4, movie.labels[t] == 3, f)}) for t, f in
               ((1, 0.85), (2, 0.8), (3, 0.65))]  # fmt: skip
    truth4 = movie.labels[3] == 4
    labels, events = _run(nano, movie.image, seeds, squeeze, relink=False)
    probes = [(e["frame"], e["objects"], e["sign"]) for e in events if e["kind"] == "reclaim"]
    assert (3, [4], "probe") in probes
    assert (labels[3] == 4)[truth4].mean() > 0.8  # the far side back (the squeeze left it ~0.67)
    # must not: the rule off (nothing fires: 65 % is above reclaim_shrink × the median), or a milder drift
    labels, events = _run(nano, movie.image, seeds, squeeze, relink=False, reclaim_reference=0.0)
    assert events == [] and (labels[3] == 4)[truth4].mean() < 0.75
    mild = [(t, 4, {"mask": _squeeze(movie.labels[t] == 4, movie.labels[t] == 3, 0.85)}) for t in (1, 2, 3)]
    labels, events = _run(nano, movie.image, seeds, mild, relink=False)
    assert not [e for e in events if e["kind"] == "reclaim" and 4 in e["objects"] and e["frame"] <= 3]


def test_probe_targets_an_object_below_its_reference_area_though_its_median_followed():
    from napari_sam2.discovery import _weak

    shape = (50, 70)
    left, right = _disc(shape, (25, 24), 10), _disc(shape, (25, 44), 10)  # 317 px each
    labels = np.zeros(shape, np.uint32)
    labels[left] = 1
    labels[right & (np.indices(shape)[1] > 40)] = 2  # object 2 kept 0.71 of its nucleus (226 px)
    good = {1: (9, left), 2: (9, labels == 2)}
    usual = {1: 317.0, 2: 250.0}  # object 2's median drifted down with it
    reference = {1: 317.0, 2: 317.0}  # their areas on their first frames
    opts = DiscoveryOptions()
    assert set(_weak(good, labels, {1, 2}, usual, 10, opts, reference)) == {2}
    # must not: without reference areas (the median alone: 0.9 of it), the rule off, a drift to 0.85 only,
    # last seen in full too long ago
    assert _weak(good, labels, {1, 2}, usual, 10, opts) == {}
    assert _weak(good, labels, {1, 2}, usual, 10, DiscoveryOptions(reclaim_reference=0.0), reference) == {}
    assert _weak(good, labels, {1, 2}, usual, 10, opts, {1: 317.0, 2: 226 / 0.85}) == {}
    assert _weak(good, labels, {1, 2}, usual, 9 + opts.reclaim_frames + 1, opts, reference) == {}


@pytest.mark.parametrize("updates", [False, True])
def test_a_point_clicked_for_untracked_signal_keeps_its_change_reference(updates):
    # grid_signal="near": a point clicked only because untracked signal lies beside it keeps the features of its
    # last click for a change as its reference (default), so a newcomer growing there still counts as a change on
    # the next frames once no untracked signal is left (a tracked cell took it over)
    import torch

    sampler = ChangeSampler((64, 64), 4, threshold=0.5, revisit=100, signal_updates_reference=updates)
    labels = np.zeros((64, 64), np.uint32)
    iy, ix = sampler.pixels()
    p = int(np.flatnonzero((iy == 8) & (ix == 8))[0])  # the grid point in feature cell (0, 0)
    near, only_p, none = np.ones(16, bool), np.arange(16) == p, np.zeros(16, bool)
    base = torch.ones(8, 4, 4)

    def features(scale):
        f = base.clone()
        f[:, 0, 0] *= scale
        return f

    def clicked(out):
        return bool(((out[:, 0] == sampler.points[p, 0]) & (out[:, 1] == sampler.points[p, 1])).any())

    assert clicked(sampler.clicks(features(1.0), labels, near=near, signal=none))  # the first frame: every point
    assert clicked(sampler.clicks(features(1.3), labels, near=near, signal=only_p))  # 0.3 < 0.5: for the signal
    # 1.7 is a change of 0.7 since the last click for a change (1.0), of 0.3 since the signal's click (1.3)
    assert clicked(sampler.clicks(features(1.7), labels, near=near, signal=none)) != updates


def test_discovery_iou_filter_follows_the_session_contrast_step(tiny_model, blob_stack):
    from napari_sam2.discovery import DISCOVERY_PRED_IOU, generator_for, segment_frame
    from napari_sam2.session import TrackingSession

    stack = blob_stack(n_frames=2)
    options = DiscoveryOptions()
    assert "pred_iou_thresh" not in options.generator  # the session's contrast step picks it
    for contrast in ("global", "local"):
        session = TrackingSession(tiny_model, stack, contrast=contrast)
        used = generator_for(session, options.generator)
        assert used["pred_iou_thresh"] == DISCOVERY_PRED_IOU[contrast]
        masks = segment_frame(session, 0, options)
        direct = session.segment_everything(0, **used).objects
        assert len(masks) == len(direct) and all(np.array_equal(m, o.mask) for m, o in zip(masks, direct))
    assert DISCOVERY_PRED_IOU == {"global": 0.6, "local": 0.3}
    # a threshold the options name (every store recorded before the rule: 0.6) is kept under either step
    assert generator_for(session, {**options.generator, "pred_iou_thresh": 0.6})["pred_iou_thresh"] == 0.6
    assert "pred_iou_thresh" not in options.generator  # not filled in place
