"""The memory-bank layout shared by TrackingSession and model/train_nano.py (src/napari_sam2/model/memory_bank.py)."""

from napari_sam2.model.memory_bank import (
    conditioning_memory_index,
    conditioning_pointer_distance,
    max_pointer_distance,
    outside_reach,
    pointer_reach,
    recent_memory_frames,
    recent_pointer_frames,
)


def test_recent_memories_are_the_previous_frames_in_the_pass_direction_farthest_first():
    # num_maskmem 7 (the official models): six previous frames, the frame k back at temporal index k − 1
    assert recent_memory_frames(10, False, 7) == [(5, 4), (4, 5), (3, 6), (2, 7), (1, 8), (0, 9)]
    assert recent_memory_frames(10, True, 7) == [(5, 16), (4, 15), (3, 14), (2, 13), (1, 12), (0, 11)]
    assert recent_memory_frames(3, False, 1) == []
    assert conditioning_memory_index(7) == 6  # the last row of maskmem_tpos_enc


def test_pointers_reach_back_to_the_stack_edge_and_conditioning_frames_behind_only():
    assert recent_pointer_frames(3, False, 16, 40) == [(1, 2), (2, 1), (3, 0)]  # stops at frame 0
    assert recent_pointer_frames(37, True, 16, 40) == [(1, 38), (2, 39)]
    assert recent_pointer_frames(20, False, 4, 40) == [(1, 19), (2, 18), (3, 17)]
    assert pointer_reach(10, 16) == 10 and pointer_reach(100, 16) == 16
    assert max_pointer_distance(100, 16) == 15 and max_pointer_distance(1, 16) == 0
    assert conditioning_pointer_distance(10, 4, False, signed=True) == 6
    assert conditioning_pointer_distance(4, 10, True, signed=True) == 6  # behind in a backward pass: positive too
    assert conditioning_pointer_distance(4, 10, True, signed=False) == 6
    assert conditioning_pointer_distance(4, 10, False, signed=True) is None  # ahead of a forward pass: unseen
    assert conditioning_pointer_distance(10, 4, True, signed=False) is None


def test_outside_reach_keeps_what_the_next_frame_or_a_pass_from_a_prompt_reads():
    # the next frame (11) reads 10 … 5 with num_maskmem 7 (6 slots): frame 4 is out of reach, 5 is not
    assert outside_reach(4, 10, False, [], 6, 40)
    assert not outside_reach(5, 10, False, [], 6, 40)
    assert not outside_reach(4, 10, False, [0], 6, 40)  # a pass from the prompted frame 0 reads it
    assert outside_reach(16, 10, True, [30], 6, 40) and not outside_reach(15, 10, True, [30], 6, 40)
    # every memory the bank can read in a forward pass is still held when it is read
    slots = 6
    for frame in range(20, 30):
        done = frame - 1  # the frame finished just before `frame` is read
        for _, source in recent_memory_frames(frame, False, slots + 1):
            assert not outside_reach(source, done, False, [], slots, 40)
        for _, source in recent_pointer_frames(frame, False, 8, 40):
            assert not outside_reach(source, done, False, [], 8 - 1, 40)
