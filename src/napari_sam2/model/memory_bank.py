"""SAM 2's memory-bank layout: which earlier frames a frame attends to, and at which temporal position.

`TrackingSession` (session.py) lays out every object's bank with these functions, and so does the training loop
(model/train_nano.py), so that what is trained is what runs. Plain integers only: no tensors, no torch.

The layout of the official video predictor (facebookresearch/sam2, `_prepare_memory_conditioned_features`), for a
frame `frame` tracked in a pass that runs forwards (`reverse=False`) or backwards (`reverse=True`):

  * spatial memories: every conditioning (prompted) frame at temporal index num_maskmem − 1, then the
    num_maskmem − 1 frames just before `frame` in the pass direction, the farthest first, the frame k steps back
    at temporal index k − 1 (rows of the model's `maskmem_tpos_enc`);
  * object pointers: every conditioning frame not ahead of `frame` in the pass direction, at its frame distance
    (signed or not, per the config), then the frames 1 … reach − 1 steps back (stopping at the stack's edge), where
    reach = min(stack length, max_obj_ptrs_in_encoder); the pointers' sine encoding is normalised by reach − 1.
"""

from __future__ import annotations

__all__ = [
    "conditioning_memory_index",
    "conditioning_pointer_distance",
    "max_pointer_distance",
    "outside_reach",
    "pointer_reach",
    "recent_memory_frames",
    "recent_pointer_frames",
]


def conditioning_memory_index(num_maskmem: int) -> int:
    """The temporal index (row of `maskmem_tpos_enc`) of a conditioning frame's memory: num_maskmem − 1."""
    return num_maskmem - 1


def recent_memory_frames(frame: int, reverse: bool, num_maskmem: int) -> list[tuple[int, int]]:
    """The non-conditioning memory slots of `frame`: [(temporal index, source frame)], the num_maskmem − 1 frames
    before `frame` in the pass direction, the farthest first. Source frames may lie outside the stack or be
    untracked; the caller skips those (the official predictor does the same)."""
    step = 1 if reverse else -1  # where "previous" frames lie
    return [(num_maskmem - t_pos - 1, frame + step * (num_maskmem - t_pos)) for t_pos in range(1, num_maskmem)]


def conditioning_pointer_distance(frame: int, cond_frame: int, reverse: bool, signed: bool) -> int | None:
    """The distance at which `frame` sees the pointer of conditioning frame `cond_frame`, or None when that frame
    lies ahead of `frame` in the pass direction (its pointer is not attended). `signed`: the config's
    use_signed_tpos_enc_to_obj_ptrs."""
    if (cond_frame < frame) if reverse else (cond_frame > frame):
        return None
    if not signed:
        return abs(frame - cond_frame)
    return (frame - cond_frame) * (-1 if reverse else 1)


def pointer_reach(num_frames: int, max_obj_ptrs_in_encoder: int) -> int:
    """How many pointer slots a frame has: min(stack length, max_obj_ptrs_in_encoder)."""
    return min(num_frames, max_obj_ptrs_in_encoder)


def max_pointer_distance(num_frames: int, max_obj_ptrs_in_encoder: int) -> int:
    """The normaliser of the pointers' distance encoding (`SAM2Model.condition_on_memory`): reach − 1."""
    return pointer_reach(num_frames, max_obj_ptrs_in_encoder) - 1


def recent_pointer_frames(frame: int, reverse: bool, reach: int, num_frames: int) -> list[tuple[int, int]]:
    """The non-conditioning pointer slots of `frame`: [(distance, source frame)] for the frames 1 … reach − 1
    steps back in the pass direction, stopping at the stack's edge (frames 0 … num_frames − 1)."""
    step = 1 if reverse else -1
    out = []
    for distance in range(1, reach):
        source = frame + step * distance
        if source < 0 or source >= num_frames:
            break
        out.append((distance, source))
    return out


def outside_reach(source: int, frame: int, reverse: bool, conditioning, slots: int, num_frames: int) -> bool:
    """Whether a tracked frame's memory (slots = num_maskmem − 1) or pointer (slots = reach − 1) can no longer be
    attended once `frame` is done: neither the rest of this pass (the next frame reads 1 … slots frames back, so a
    source `slots` or more behind `frame` is out of its reach) nor a later pass starting at a conditioning frame
    (it reads the frames within slots − 1 of it) reads it. `conditioning`: the conditioning frames."""
    behind = (source - frame) if reverse else (frame - source)  # > 0 for frames this pass has left behind
    near_cond = min((abs(source - c) for c in conditioning), default=num_frames)
    return behind >= slots and near_cond >= slots
