"""VolumeTimeSession: objects through z and time in a [T, Z, Y, X] stack, with a real (tiny, random-weight) model."""

import json

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
