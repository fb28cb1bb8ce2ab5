"""VolumeTimeSession: objects through z and time in a [T, Z, Y, X] stack, with a real (tiny, random-weight) model."""

import json
from fractions import Fraction

import numpy as np
import pytest
from scipy import ndimage

from napari_sam2.errors import InputError
from napari_sam2.prompts import make_prompt
from napari_sam2.sample_data import synthetic_nuclei_4d
from napari_sam2.volume_time import VolumeTimeSession, replay_volume_time


@pytest.fixture(scope="module")
def movie():
    return synthetic_nuclei_4d(n_frames=4, n_slices=8, shape=(64, 64), n_nuclei=2, seed=3)


class CountingStack:
    """A [T, Z, Y, X] array that records every read (the session must read single (t, z) slices only)."""

    def __init__(self, data):
        self.data, self.shape, self.dtype, self.keys = data, data.shape, data.dtype, []

    def __getitem__(self, key):
        self.keys.append(key)
        return self.data[key]


def click(labels_t, obj):
    """(z, y, x) of the deepest voxel of the object's widest slice."""
    z = int(np.argmax((labels_t == obj).sum(axis=(1, 2))))
    depth = ndimage.distance_transform_edt(labels_t[z] == obj)
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return z, float(y), float(x)


def prompted(model, movie, t=1, frames=None):
    vt = VolumeTimeSession(model, movie.image if frames is None else frames)
    for obj in (1, 2):
        z, y, x = click(movie.labels[t], obj)
        vt.add(t, z, make_prompt(0, obj, [[y, x]], [1]))
    return vt


def test_labels_at_every_time_point_outward_from_the_prompt(tiny_model, movie):
    stack = CountingStack(movie.image)
    vt = prompted(tiny_model, movie, frames=stack)
    out = list(vt.propagate("both"))
    assert [t for t, _ in out] == [1, 2, 3, 0]  # forward from the prompted t, then backward
    for t, labels in out:
        assert labels.shape == (8, 64, 64) and labels.dtype == np.int32
        assert set(np.unique(labels)) <= {0, 1, 2}
        np.testing.assert_array_equal(vt.result(t), labels)
    assert vt.finished() == [0, 1, 2, 3] and vt.obj_ids == [1, 2]
    assert {1, 2} <= set(np.unique(vt.result(1)))  # (random weights: where, is not asserted)
    for obj in (1, 2):  # the anchor of a time point is its slice of most signal there (summed intensity in the mask)
        for t, z_a in vt.anchors(obj).items():
            inside = vt.result(t) == obj
            signal = [(movie.image[t, z][inside[z]].astype(float) - vt.intensity.low).sum() for z in range(8)]
            if inside.any():
                assert z_a == int(np.argmax(signal))
    # scores per object, slice and time point (as a 3-D run reports them per frame); the per-object summary is the
    # best slice's object score and the anchor slice's predicted IoU
    for t in range(4):
        per_z, summary = vt.scores(t), vt.object_scores(t)
        assert set(summary) == {1, 2}
        for obj, (score, iou) in summary.items():
            assert per_z[obj] and score == max(s for s, _ in per_z[obj].values())
            labels = vt.result(t)
            if (labels == obj).any():
                assert len(per_z[obj]) == 8 and iou == per_z[obj][vt.anchors(obj)[t]][1]
    # lazy: only single slices frames[t, z] were read, never a time point or the stack
    assert stack.keys and all(isinstance(k, tuple) and len(k) >= 2 for k in stack.keys)
    assert all(isinstance(k[0], (int, np.integer)) and isinstance(k[1], (int, np.integer)) for k in stack.keys)
    vt.close()


def test_a_correction_on_another_time_and_slice_sticks_and_replays(tiny_model):
    movie = synthetic_nuclei_4d(n_frames=4, n_slices=6, shape=(48, 48), n_nuclei=2, seed=4, nucleus_radius=7)
    vt = prompted(tiny_model, movie)
    list(vt.propagate("both"))
    before = {t: vt.result(t) for t in range(4)}
    square = np.zeros((48, 48), bool)
    square[5:15, 30:42] = True
    assert vt.set_prompt(2, 5, 1, make_prompt(5, 1, mask=square)) is not None
    redone = [t for t, _ in vt.propagate("both")]
    assert redone == [2, 3]  # the corrected time point, then those carried from it; 0 and 1 are unchanged
    for t in (0, 1):
        np.testing.assert_array_equal(vt.result(t), before[t])
    assert (vt.result(2)[5][square] == 1).mean() > 0.9  # the correction sticks on its slice (edges: low-res logits)
    # the log is JSON and replays to identical labels
    log = json.loads(json.dumps(vt.edit_log))
    assert [e["op"] for e in log] == ["add", "add", "pass", "pass", "set", "pass", "pass"]
    again = replay_volume_time(tiny_model, movie.image, log)
    for t in range(4):
        np.testing.assert_array_equal(again.result(t), vt.result(t))
    # removing the correction: t = 2 is carried from t = 1 again
    vt.set_prompt(2, 5, 1, None)
    assert [t for t, _ in vt.propagate("forward")] == [2, 3]
    assert vt.edit_log[-2]["op"] == "set" and vt.edit_log[-2]["prompt"] is None


def test_memory_bank_stays_bounded_over_time(tiny_model):
    movie = synthetic_nuclei_4d(n_frames=14, n_slices=3, shape=(48, 48), n_nuclei=1, seed=5, nucleus_radius=8)
    vt = VolumeTimeSession(tiny_model, movie.image)
    z, y, x = click(movie.labels[0], 1)
    vt.add(0, z, make_prompt(0, 1, [[y, x]], [1]))
    seen = []
    for t, _ in vt.propagate("forward"):
        seen.append(t)
        stats = vt.memory_stats()
        if stats:
            s = stats[1]
            # SAM 2's bank: conditioning frames, the num_maskmem − 1 recent memories (and those near a conditioning
            # frame, which a pass the other way reads), ≤ 16 pointers likewise: a bound that does not grow with t
            n, c = tiny_model.cfg.num_maskmem, s["conditioning"]
            assert s["memories"] <= n + (n - 1) * c + c
            assert s["pointers"] <= 16 + 15 * c + c
            assert s["logits"] <= 4 + c
            assert s["features"] <= 3
    assert seen == list(range(14))
    assert vt._cache_t is None  # no time point's features are kept once it is done


def test_bad_input_is_named(tiny_model, movie):
    with pytest.raises(InputError, match=r"\[T, Z, Y, X\]"):
        VolumeTimeSession(tiny_model, movie.image[0])
    vt = VolumeTimeSession(tiny_model, movie.image)
    with pytest.raises(InputError, match="nothing to propagate"):
        list(vt.propagate())
    with pytest.raises(InputError, match="t = 9 is outside"):
        vt.add(9, 0, make_prompt(0, 1, [[3, 3]], [1]))
    with pytest.raises(InputError, match="z = 8 is outside"):
        vt.add(0, 8, make_prompt(0, 1, [[3, 3]], [1]))
    with pytest.raises(InputError, match="outside the 64×64 frame"):
        vt.add(0, 1, make_prompt(0, 1, [[70, 3]], [1]))
    with pytest.raises(InputError, match="direction"):
        vt.add(0, 1, make_prompt(0, 1, [[3, 3]], [1]))
        list(vt.propagate("sideways"))


def test_lineage_bounds_where_objects_are_carried(tiny_model):
    movie = synthetic_nuclei_4d(n_frames=3, n_slices=3, shape=(40, 40), n_nuclei=2, seed=6, nucleus_radius=7)
    vt = VolumeTimeSession(tiny_model, movie.image)
    vt.add(0, 1, make_prompt(0, 1, [[20, 20]], [1]))
    vt.add(2, 1, make_prompt(0, 2, [[10, 10]], [1]))
    vt.end_object(1, 1)  # the mother divides after t = 1 ...
    vt.add_object(2, parent=1, start=2)  # ... and object 2 is a daughter born at t = 2
    assert vt.parents == {2: 1} and vt.span(1) == (None, 1) and vt.span(2) == (2, None)
    assert [t for t, _ in vt.propagate("both")] == [0, 1, 2]  # 2 is not carried back before its birth
    assert 1 not in vt.result(2) and 2 not in vt.result(0) and 2 not in vt.result(1)
    with pytest.raises(InputError, match="lineage"):
        vt.add(0, 1, make_prompt(0, 2, [[10, 10]], [1]))
    vt.end_object(1, 0)  # shortening a span removes the object's voxels there at once
    assert 1 not in vt.result(1)
    again = replay_volume_time(tiny_model, movie.image, vt.edit_log)
    for t in range(3):
        np.testing.assert_array_equal(again.result(t), vt.result(t))


@pytest.fixture(scope="module")
def nano():
    from napari_sam2 import load_model

    return load_model("nano-fluo", device="cpu")


def division_movie():
    """6 t x 8 z x 64², one nucleus that divides at t = 3 (daughters 2 and 3 touch there, apart from t = 4)."""
    return synthetic_nuclei_4d(n_frames=6, n_slices=8, shape=(64, 64), n_nuclei=1, seed=0)


def test_discovery_finds_a_division_in_3d_t_and_replays(nano):
    from napari_sam2.discovery import DiscoveryOptions
    from napari_sam2.volume_time import propagate_volume_with_discovery

    movie = division_movie()
    vt = VolumeTimeSession(nano, movie.image)
    z, y, x = click(movie.labels[0], 1)
    vt.add(0, z, make_prompt(0, 1, [[y, x]], [1]))
    events = []
    out = list(propagate_volume_with_discovery(vt, DiscoveryOptions(), "both", events=events))
    # the mother's 3-D mask falls into two pieces at t = 4 (nano-fluo answers the daughters, which touch at t = 3,
    # with one mask); her mask at t = 3 has a narrow waist between them (the axial edge rule trims the halo that
    # bridged them), so the division is dated t = 3, the true one: t = 3 and 4 are yielded again with the daughters
    assert [t for t, _ in out] == [0, 1, 2, 3, 4, 3, 4, 5]
    sign = "two components; a neck one time point before"
    assert events == [{"frame": 3, "kind": "division", "mother": 1, "daughters": [2, 3], "sign": sign}]
    assert vt.parents == {2: 1, 3: 1} and vt.span(1) == (None, 2) and vt.span(2) == vt.span(3) == (3, None)
    assert {int(i) for i in np.unique(vt.result(2))} == {0, 1}
    np.testing.assert_array_equal(out[5][1], vt.result(3))  # the second yield of t = 3 is its result
    np.testing.assert_array_equal(out[6][1], vt.result(4))
    for t in (3, 4, 5):
        labels = vt.result(t)
        assert {int(i) for i in np.unique(labels)} == {0, 2, 3}
        children = list(movie.events["division"]["children"])
        # each daughter is one true daughter, not the same one: the CTC match (covers > half of it) and holds
        # little of her sister (nano-fluo's masks are wider than the truth on these small nuclei)
        for d in (2, 3):
            mine = labels == d
            c = max(children, key=lambda c: _iou(mine, movie.labels[t] == c))
            truth, sister = movie.labels[t] == c, (movie.labels[t] > 0) & (movie.labels[t] != c)
            assert (mine & truth).sum() > 0.5 * truth.sum() and (mine & sister).sum() < 0.2 * sister.sum(), (t, d)
            children = [k for k in children if k != c]
    # each daughter is prompted at t = 4 with her piece of the mother's mask, on every slice it covers
    for d in (2, 3):
        slices = {z: p.mask for t, z, p in vt.prompts() if p.obj_id == d and t == 4}
        assert slices and all(p.mask is not None for t, z, p in vt.prompts() if p.obj_id == d)
        # (a piece of a pixel or two on a cap slice may vanish at the model's mask resolution: not asserted)
        assert all((vt.result(4)[z] == d)[m].all() for z, m in slices.items() if m.sum() >= 10)
    again = replay_volume_time(nano, movie.image, vt.edit_log)
    assert again.parents == vt.parents and again.finished() == vt.finished()
    for t in range(6):
        np.testing.assert_array_equal(again.result(t), vt.result(t))
    vt.close()


def _iou(a, b):
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def test_volume_divisions_rule_on_a_label_volume():
    from napari_sam2.discovery import DiscoveryOptions
    from napari_sam2.volume_time import volume_divisions

    labels = np.zeros((6, 20, 40), np.int32)
    labels[1:5, 4:14, 4:14] = 1  # object 1: two comparable pieces (not touching by a face)
    labels[1:5, 4:14, 16:25] = 1
    labels[1:5, 15:19, 28:38] = 2  # object 2: one piece with a small stray fragment
    labels[0, 0, 39] = 2
    found = volume_divisions(labels, DiscoveryOptions())
    assert [(p.kind, p.mother, p.sign) for p in found] == [("division", 1, "two components")]
    a, b = found[0].masks
    assert a.shape == labels.shape and a.sum() == 400 and b.sum() == 360 and not (a & b).any()
    assert not volume_divisions(labels, DiscoveryOptions(), may_divide=lambda obj: obj != 1)  # e.g. too young
    # the larger piece is about the mother's usual volume: a stray piece, not a division
    assert not volume_divisions(labels, DiscoveryOptions(), usual_volume={1: 420.0})
    assert not volume_divisions(labels, DiscoveryOptions(divisions=False))
    # a piece that was not inside the mother on the time point before is a neighbour she grabbed, not a daughter
    before = np.zeros_like(labels)
    before[1:5, 4:14, 4:25] = 1
    assert len(volume_divisions(labels, DiscoveryOptions(), previous_labels=before)) == 1
    before[1:5, 4:14, 16:25] = 0
    assert not volume_divisions(labels, DiscoveryOptions(), previous_labels=before)


def test_neck_split_tells_touching_daughters_from_one_mother():
    """The division moves one time point back when the mother's mask there, shared out between the daughters'
    pieces, has a narrow waist (two touching balls), not when it is one elongated nucleus."""
    from napari_sam2.discovery import DiscoveryOptions
    from napari_sam2.volume_time import neck_split

    zz, yy, xx = np.mgrid[:12, :24, :40]

    def ball(cx, r=4.0, ry=None):
        return (zz - 6) ** 2 / r**2 + (yy - 12) ** 2 / (ry or r) ** 2 + (xx - cx) ** 2 / r**2 <= 1

    pieces = ball(11), ball(29)  # the daughters at t, apart
    touching = ball(16) | ball(24)  # at t - 1: two balls that touch
    parts = neck_split(touching, *pieces, DiscoveryOptions())
    assert parts is not None
    np.testing.assert_array_equal(parts[0], ball(16))
    np.testing.assert_array_equal(parts[1], ball(24) & ~ball(16))  # (the voxel they share: the nearer/first)
    elongated = ((zz - 6) / 4.0) ** 2 + ((yy - 12) / 4.0) ** 2 + ((xx - 20) / 8.0) ** 2 <= 1  # one mother
    assert neck_split(elongated, *pieces, DiscoveryOptions()) is None
    assert neck_split(touching, pieces[0], pieces[0], DiscoveryOptions()) is None  # no second piece


def _blurred_nucleus(dark=False):
    """A bright ellipsoid (half-depth 3 slices) on a dim background, blurred along z as a microscope does, and the
    mask a z-stream draws of it: the true outline on every slice the halo reaches (2 slices past each cap)."""
    zz, yy, xx = np.mgrid[:16, :40, :40]
    truth = ((zz - 8) / 3.5) ** 2 + ((yy - 20) / 8) ** 2 + ((xx - 20) / 8) ** 2 <= 1
    image = ndimage.gaussian_filter(np.where(truth, 0.2 if dark else 1.0, 0.5 if dark else 0.1), (1.5, 0.7, 0.7))
    widest = truth[8]
    halo = np.zeros_like(truth)
    halo[3:14] = widest  # 11 slices drawn as wide as the middle one; the nucleus covers 7 (5-11)
    return image, truth, halo


def test_axial_trim_ends_a_blurred_nucleus_where_it_ends_in_z():
    from napari_sam2.volume_time import axial_trim

    image, truth, halo = _blurred_nucleus()
    trimmed = axial_trim(halo, lambda z: image[z])
    assert (trimmed <= halo).all()  # only takes voxels away
    assert _iou(halo, truth) < 0.6 and _iou(trimmed, truth) > 0.85
    covered = np.nonzero(trimmed.any(axis=(1, 2)))[0]
    assert covered.min() >= 4 and covered.max() <= 12  # at most one slice past the true caps (5 and 11)
    kept = axial_trim(halo, lambda z: image[z], keep=[3, 13])  # slices the user prompted are kept whole
    np.testing.assert_array_equal(kept[[3, 13]], halo[[3, 13]])
    np.testing.assert_array_equal(kept[4:13], trimmed[4:13])
    one = np.zeros_like(halo)
    one[8] = halo[8]
    np.testing.assert_array_equal(axial_trim(one, lambda z: image[z]), one)  # one slice: nothing to compare


def test_axial_trim_leaves_objects_darker_than_their_surroundings():
    from napari_sam2.volume_time import axial_trim

    image, _, halo = _blurred_nucleus(dark=True)
    np.testing.assert_array_equal(axial_trim(halo, lambda z: image[z]), halo)


def test_the_axial_edge_rule_is_an_option_of_the_session(tiny_model, movie):
    with pytest.raises(InputError, match="z_edge is a fraction"):
        VolumeTimeSession(tiny_model, movie.image, z_edge=1.5)
    # volume.check_z_edge, TrackingSession's check: strings (even "0.5", which float() read before), bools and
    # 0-d arrays are refused with the same message; every real number in (0, 1) stays valid as the same float
    for bad in ("0.5", "off", True, False, np.array(0.5), 0.0, 1.0, float("nan")):
        with pytest.raises(InputError, match="z_edge is a fraction"):
            VolumeTimeSession(tiny_model, movie.image[:1], z_edge=bad)
    for good in (0.5, 0.3, np.float32(0.25), np.float64(0.75), Fraction(1, 2)):
        made = VolumeTimeSession(tiny_model, movie.image[:1], z_edge=good).z_edge
        assert type(made) is float and made == float(good)
    results = {}
    for z_edge in (None, 0.5):
        vt = VolumeTimeSession(tiny_model, movie.image[:2], z_edge=z_edge)
        z, y, x = click(movie.labels[0], 1)
        vt.add(0, z, make_prompt(0, 1, [[y, x]], [1]))
        results[z_edge] = [labels for _, labels in vt.propagate("forward")]
        vt.close()
    for off, on in zip(results[None], results[0.5], strict=True):
        assert ((on > 0) <= (off > 0)).all()  # the rule only takes voxels away from the z-streams' masks


def test_axial_trim_reading_only_the_objects_box_gives_the_same_masks():
    """read_region (only the object's box of each slice, as the sessions read) against read_slice (whole slices):
    identical masks, for nuclei in the middle, at the image's borders and at a corner, bright and dark, with slices
    kept; and the region reader reads no pixel outside the box (+ margin)."""
    from napari_sam2.volume_time import axial_trim

    rng = np.random.default_rng(7)
    zz, yy, xx = np.mgrid[:14, :48, :56]
    for cy, cx, dark in [(24, 28, False), (3, 28, False), (24, 54, False), (0, 0, False), (46, 55, True)]:
        truth = ((zz - 7) / 3.0) ** 2 + ((yy - cy) / 7) ** 2 + ((xx - cx) / 6) ** 2 <= 1
        image = ndimage.gaussian_filter(np.where(truth, 0.2 if dark else 1.0, 0.5 if dark else 0.1), (1.5, 0.7, 0.7))
        image = (image + rng.normal(0, 0.02, image.shape)).astype(np.float32)
        halo = ndimage.binary_dilation(truth, iterations=2) & (rng.random(truth.shape) < 0.97)
        read = []

        def region(z, rows, cols, image=image, read=read):
            read.append((rows.stop - rows.start) * (cols.stop - cols.start))
            return image[z, rows, cols]

        for keep in ((), (int(np.nonzero(halo.any(axis=(1, 2)))[0][0]),)):
            whole = axial_trim(halo, lambda z, image=image: image[z], keep=keep)
            boxed = axial_trim(halo, None, keep=keep, read_region=region)
            np.testing.assert_array_equal(boxed, whole)
        ys, xs = np.nonzero(halo.any(axis=0))
        box = (min(48, ys.max() + 11) - max(0, ys.min() - 10)) * (min(56, xs.max() + 11) - max(0, xs.min() - 10))
        assert set(read) == {box} and box < 48 * 56
