"""TrackingSession with the real (tiny, random-weight) network: the promised behaviour of the default preset."""

import numpy as np
import pytest
import torch

from napari_sam2 import TrackingSession, load_model
from napari_sam2.preprocess import InputError


@pytest.fixture
def stack(blob_stack):
    return blob_stack(n_frames=10)


@pytest.fixture
def session(tiny_model, stack):
    s = TrackingSession(tiny_model, stack)
    yield s
    s.close()


def test_prompt_returns_the_frame_at_once_and_reuses_features(session):
    res = session.add_prompt(4, 1, points=[[30, 42]], labels=[1])
    assert res.frame == 4 and res.obj_ids == [1]
    assert res.labels.shape == (96, 128) and res.labels.dtype == np.uint32
    assert res.masks.shape == (1, 96, 128)
    assert set(np.unique(res.labels)) <= {0, 1}
    assert session.encoder_runs == 1
    res2 = session.add_prompt(4, 1, points=[[35, 42]], labels=[0])  # a second click: decoder only
    assert session.encoder_runs == 1
    assert len(session.objects[1].prompts[4].points) == 2
    assert not np.array_equal(res.logits, res2.logits)


def test_propagate_both_ways_covers_every_frame(session):
    session.add_prompt(4, 1, points=[[30, 42]])
    session.add_prompt(4, 2, box=[55, 75, 76, 96])
    frames = [r.frame for r in session.propagate("both")]
    assert frames == list(range(4, 10)) + list(range(4, -1, -1))
    for r in session.propagate("forward", start=0):
        assert r.obj_ids == [1, 2]
    assert session.encoder_runs == 10  # each frame encoded once


def test_cancel_keeps_finished_frames_and_resumes(session):
    session.add_prompt(0, 1, points=[[30, 30]])
    done = []
    for r in session.propagate("forward"):
        done.append(r.frame)
        if r.frame == 4:
            break  # the user pressed Cancel
    for f in done:
        assert 1 in session.result(f).obj_ids
    rest = [r.frame for r in session.propagate("forward")]
    assert rest == [0, 5, 6, 7, 8, 9]  # the prompted frame, then only what was not tracked yet


def test_a_cancelled_pass_closed_late_leaves_a_newer_pass_running(session):
    # The widget's worker stops iterating on Cancel; the abandoned generator is closed only when it is
    # garbage-collected, possibly while the next propagation runs (seen as a TypeError under load in CI).
    session.add_prompt(0, 1, points=[[30, 30]])
    first = session.propagate("forward")
    assert [next(first).frame, next(first).frame] == [0, 1]
    second = session.propagate("forward")
    frames = [next(second).frame]
    first.close()
    frames += [r.frame for r in second]
    assert frames == [0] + list(range(2, 10))
    assert [e["frames"] for e in session.edit_log if e["op"] == "pass"] == [2, 10]


def test_correction_sticks_and_retracks_only_what_it_can_change(tiny_model, stack):
    s = TrackingSession(tiny_model, stack)
    s.add_prompt(2, 1, points=[[30, 36]])
    s.add_prompt(2, 2, points=[[65, 89]])
    s.add_prompt(7, 1, points=[[30, 51]])  # a second prompted frame of object 1
    list(s.propagate("forward"))
    before = {f: s.result(f) for f in range(2, 10)}
    encoder_runs = s.encoder_runs

    corrected = s.add_prompt(4, 1, points=[[20, 42]], labels=[0])
    assert 4 in s.objects[1].cond  # the correction became a conditioning frame
    again = list(s.propagate("forward"))
    # object 1 is recomputed on 5 and 6 only (7 is its next prompted frame); object 2 nowhere
    assert {r.frame: r.computed for r in again if r.computed} == {5: [1], 6: [1]}
    assert s.encoder_runs == encoder_runs  # features were cached: no encoder pass
    after4 = s.result(4)
    np.testing.assert_array_equal(after4.logits[0], corrected.logits[0])  # never overwritten
    np.testing.assert_array_equal(s.result(8).logits, before[8].logits)  # beyond the next prompt: unchanged
    i2 = after4.obj_ids.index(2)
    np.testing.assert_array_equal(after4.logits[i2], before[4].logits[before[4].obj_ids.index(2)])


def test_batched_objects_equal_objects_tracked_alone(tiny_model, stack):
    def run(prompts):
        s = TrackingSession(tiny_model, stack)
        for obj, pts in prompts.items():
            s.add_prompt(3, obj, points=pts)
        return {r.frame: r for r in s.propagate("forward")}

    together = run({1: [[30, 39]], 2: [[65, 86]]})
    alone1 = run({1: [[30, 39]]})
    alone2 = run({2: [[65, 86]]})
    for f in range(4, 10):
        np.testing.assert_allclose(together[f].logits[0], alone1[f].logits[0], atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(together[f].logits[1], alone2[f].logits[0], atol=1e-4, rtol=1e-4)

    s = TrackingSession(tiny_model, stack, object_batch=8)  # batched (the CPU default is one at a time)
    for obj, pts in {1: [[30, 39]], 2: [[65, 86]]}.items():
        s.add_prompt(3, obj, points=pts)
    one_by_one = {r.frame: r for r in s.propagate("forward")}
    for f in range(4, 10):
        np.testing.assert_allclose(one_by_one[f].logits, together[f].logits, atol=1e-4, rtol=1e-4)


def test_occlusion_is_reported_and_masks_empty(make_checkpoint, tiny_config, stack):
    model = load_model(make_checkpoint(tiny_config(), seed=0, object_score_bias=-4.0), device="cpu")
    s = TrackingSession(model, stack)
    s.add_prompt(0, 1, points=[[30, 30]])
    results = list(s.propagate("forward"))[1:]
    for r in results:
        assert r.scores[0] <= 0 and not r.present[0]
        assert not r.masks[0].any() and not r.labels.any()


def test_memory_stays_bounded_on_a_long_stack(tiny_model, blob_stack):
    s = TrackingSession(tiny_model, blob_stack(n_frames=60, shape=(64, 64)), feature_cache_bytes=1 << 20)
    s.add_prompt(0, 1, points=[[30, 30]])
    for _ in s.propagate("forward"):
        obj = s.objects[1]
        memories = sum(o.memory is not None for o in obj.tracked.values())
        pointers = sum(o.pointer is not None for o in obj.tracked.values())
        assert memories <= 2 * (s.cfg.num_maskmem - 1)  # last 6, and the 6 after the prompted frame
        assert pointers <= 2 * 15
    assert len(s.features) < 60  # the feature LRU respects its byte budget


def test_frames_are_read_lazily(tiny_model, blob_stack):
    data = blob_stack(n_frames=12)

    class CountingStack:
        shape, dtype, reads = data.shape, data.dtype, []

        def __getitem__(self, key):
            self.reads.append(key)
            return data[key]

    stack = CountingStack()
    s = TrackingSession(tiny_model, stack, read_ahead=0)
    sampling = len(stack.reads)
    s.add_prompt(0, 1, points=[[30, 30]])
    list(s.propagate("forward", stop=3))
    assert all(isinstance(k, tuple) and isinstance(k[0], (int, np.integer)) for k in stack.reads)
    assert len(stack.reads) - sampling == 4  # one read per tracked frame, never the whole stack


def test_multichannel_tzyxc_and_channel_choice(tiny_model, blob_stack):
    grey = blob_stack(n_frames=4)
    stack = np.stack([grey, np.zeros_like(grey), grey // 2], axis=-1)  # T, Y, X, C
    s = TrackingSession(tiny_model, stack, channel=0)
    res = s.add_prompt(1, 1, points=[[30, 33]])
    assert res.labels.shape == grey.shape[1:]
    with pytest.raises(InputError, match="channel 5 does not exist"):
        TrackingSession(tiny_model, stack, channel=5)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda st: st[0], "z/t axis"),
        (lambda st: np.stack([st] * 5, axis=-1), "5 channels"),
        (lambda st: st.astype(np.float32) * np.where(np.arange(st.size).reshape(st.shape) == 7, np.nan, 1), "NaN"),
    ],
)
def test_bad_stacks(tiny_model, stack, make, message):
    with pytest.raises(InputError, match=message):
        TrackingSession(tiny_model, make(stack))


def test_bad_axis_and_constant_frame(tiny_model, stack):
    with pytest.raises(InputError, match="axis 3 is out of range"):
        TrackingSession(tiny_model, stack, axis=3)
    flat = stack.copy()
    flat[5] = 7
    s = TrackingSession(tiny_model, flat)
    with pytest.raises(InputError, match="frame 5 is constant"):
        s.add_prompt(5, 1, points=[[3, 3]])
    assert s.obj_ids == []  # the refused prompt left nothing behind


def test_tracking_passes_through_a_constant_frame(tiny_model, stack):
    """A blank frame inside the stack (an empty z slice, a dropped time point) is tracked through with the stack's
    intensity range, like any other frame: the pass reaches the frames after it."""
    flat = stack.copy()
    flat[3] = 7
    with TrackingSession(tiny_model, flat) as s:
        s.add_prompt(0, 1, points=[[30, 36]])
        frames = [r.frame for r in s.propagate("forward")]
        assert frames == list(range(len(s)))
        assert s.result(len(s) - 1).masks.shape[1:] == s.frame_shape


def test_bad_prompts_leave_the_session_intact(session):
    good = session.add_prompt(2, 1, points=[[30, 36]])
    cases = [
        ({"frame": 10, "obj_id": 1, "points": [[3, 3]]}, "outside the stack"),
        ({"frame": 2, "obj_id": 1, "points": [[300, 3]]}, "outside the 96×128 frame"),
        ({"frame": 2, "obj_id": 1, "box": [10, 10, 10, 40]}, "zero area"),
        ({"frame": 2, "obj_id": 1, "mask": np.ones((5, 5), bool)}, "does not match the frame size"),
        ({"frame": 2, "obj_id": 1, "points": [[3, 3]], "labels": [2]}, "labels must be 1"),
        ({"frame": 2, "obj_id": 0, "points": [[3, 3]]}, "positive integer"),
        ({"frame": 2, "obj_id": 1}, "no points, box or mask"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InputError, match=message):
            session.add_prompt(**kwargs)
    np.testing.assert_array_equal(session.result(2).logits, good.logits)
    assert len(session.objects[1].prompts[2].points) == 1


def test_propagate_without_prompts_and_unknown_object(session):
    with pytest.raises(InputError, match="add a prompt"):
        next(session.propagate())
    with pytest.raises(InputError, match="unknown object id 9"):
        session.remove_object(9)
    with pytest.raises(InputError, match="direction"):
        next(session.propagate("sideways"))


def test_remove_object_and_clear_prompts(session):
    session.add_prompt(1, 1, points=[[30, 33]])
    session.add_prompt(1, 2, points=[[65, 92]])
    session.remove_object(2)
    assert session.obj_ids == [1]
    session.clear_prompts(1, 1)
    assert 1 not in session.objects[1].cond
    with pytest.raises(InputError, match="no prompt"):
        next(session.propagate())


def test_mask_prompt_is_taken_as_the_mask(session, stack):
    mask = np.zeros(stack.shape[1:], bool)
    mask[20:40, 20:45] = True
    res = session.add_prompt(0, 3, mask=mask)
    assert res.scores[0] > 0
    iou = (res.masks[0] & mask).sum() / (res.masks[0] | mask).sum()
    assert iou > 0.9  # the given mask comes back (through the 4x-downsampled logits)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_tracking(tiny_checkpoint, stack):
    model = load_model(tiny_checkpoint, device="cuda")
    s = TrackingSession(model, stack)
    assert s.precision == "bf16"
    s.add_prompt(0, 1, points=[[30, 30]])
    assert len(list(s.propagate())) == 10


def test_a_torch_tensor_stack_is_accepted_like_its_numpy_twin(tiny_model, stack):
    # frames already in torch (e.g. on the GPU, as benchmarks/gpu_check.py hands them) are a valid stack
    a = TrackingSession(tiny_model, stack).add_prompt(2, 1, points=[[30, 42]], labels=[1])
    b = TrackingSession(tiny_model, torch.from_numpy(np.ascontiguousarray(stack))).add_prompt(
        2, 1, points=[[30, 42]], labels=[1]
    )
    np.testing.assert_array_equal(a.labels, b.labels)


def test_pruning_the_memory_bank_never_changes_a_propagation(make_checkpoint, tiny_config, blob_stack):
    """The default preset drops memories and pointers no later frame of a pass can read (model/memory_bank.py);
    keeping all of them gives the same logits. A short bank (3 memories, 4 pointers), so that most are dropped;
    prompts on frames the object has not visited, passes both ways from them, a pass that stops and resumes.
    (A correction on a tracked frame, or a pass that starts on a frame tracked in the other direction, reads
    banks that may have been dropped: see `_prune`.)"""
    import dataclasses

    config = dataclasses.replace(tiny_config(), name="test-tiny-short-bank", num_maskmem=3, max_obj_ptrs_in_encoder=4)
    model = load_model(make_checkpoint(config), device="cpu")
    stack = blob_stack(n_frames=16, shape=(64, 64))

    def run(keep_all):
        s = TrackingSession(model, stack)
        s.keep_all_memories = keep_all
        yielded = []
        s.add_prompt(6, 1, points=[[30, 30]])
        yielded += list(s.propagate("forward", stop=11))
        s.add_prompt(14, 1, points=[[30, 40]])  # a second prompted frame, beyond where the pass stopped
        s.add_prompt(6, 2, points=[[40, 20]])
        yielded += list(s.propagate("forward"))
        yielded += list(s.propagate("backward"))
        held = sum(o.memory is not None for o in s.objects[1].tracked.values())
        return [(r.frame, r.obj_ids, r.logits) for r in yielded], held

    pruned, held_pruned = run(False)
    kept, held_kept = run(True)
    assert held_pruned < held_kept  # something was dropped
    assert [(f, ids) for f, ids, _ in pruned] == [(f, ids) for f, ids, _ in kept]
    for (frame, _, a), (_, _, b) in zip(pruned, kept, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=f"frame {frame}")


def test_a_frame_asked_again_reuses_unchanged_objects_and_equals_a_fresh_result(tiny_model, stack):
    # discovery reads a frame's result several times while re-prompting some objects on it: the resize of an
    # object whose logits did not change is reused, and the answer equals one assembled from scratch
    session = TrackingSession(tiny_model, stack)
    session.add_prompt(0, 1, points=[[30, 42]])
    session.add_prompt(0, 2, box=[55, 75, 76, 96])
    session.add_prompt(0, 3, points=[[20, 100]])
    *_, last = session.propagate("forward", stop=3)
    first = session.result(3)
    assert np.array_equal(first.labels, last.labels) and np.array_equal(first.logits, last.logits)
    mask = np.zeros(stack.shape[1:], bool)
    mask[60:80, 10:40] = True
    prompted = session.add_prompt(3, 2, mask=mask)  # object 2 changes on frame 3, objects 1 and 3 do not
    again = session.result(3)
    session._upsampled = (-1, {})  # forget the kept resizes: assembled from scratch
    fresh = session.result(3)
    for res in (prompted, again):
        assert res.obj_ids == fresh.obj_ids == [1, 2, 3]
        assert np.array_equal(res.logits, fresh.logits) and np.array_equal(res.labels, fresh.labels)
    k = fresh.obj_ids.index(2)
    assert not np.array_equal(fresh.logits[k], first.logits[k])  # the re-prompted object did change
    assert ((fresh.labels == 2) & mask).sum() > 0.8 * mask.sum()
    again.logits[:] = 0  # a caller writing into its result does not change the next one
    assert np.array_equal(session.result(3).logits, fresh.logits)
    session.close()
