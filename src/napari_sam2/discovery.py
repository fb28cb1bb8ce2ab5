"""Discovery while tracking: new cells (arrivals) and divisions, found by comparing "segment everything" with the
tracked masks on discovery frames, and fed back into a `TrackingSession` through its public methods.

    from napari_sam2.discovery import DiscoveryOptions, propagate_with_discovery
    for result in propagate_with_discovery(session, DiscoveryOptions(every=1)):
        ...   # FrameResults, as session.propagate yields them (a frame changed by discovery is yielded again)

The rules, on a discovery frame t (every `every` frames of the pass, counted from its start frame), after the
tracker has produced frame t. "Tracked mask" = an object's pixels in the frame's label image; "auto mask" = a
mask of `segment_everything` on frame t; overlaps are in pixels.

* **Division** of a tracked object M (mother), by either of two signs:
  (a) two auto masks lie mostly inside M (each ≥ `division_inside` of its own area within M) and each covers
      ≥ `division_min_share` of M; the two largest such masks are of comparable size (smaller / larger ≥
      `division_size_ratio`), together cover ≥ `division_coverage` of M, and are apart (no pixel of one within
      `division_gap` px of the other, default 3: daughters separate, while the two halves segment-everything
      sometimes makes of one textured nucleus touch — measured on the synthetic movies, this is what tells them
      apart; a division is therefore recognised a frame or so after the daughters appear);
  (b) M's mask falls into two connected components, each ≥ `division_min_share` of M, of comparable size
      (same ratio) — the daughters' masks are the components;
  (c) an unexplained auto mask (see arrivals) touches M (within `touch_distance` px) and is of comparable size
      to M's mask, and M's mask shrank to ≤ `division_shrink` of its area on the previous discovery frame: the
      tracker followed one daughter and the other is the unexplained mask.
  The mother ends on frame t − 1 (`session.end_object`), two new objects start on frame t with the mother as
  parent (`session.add_object(d, parent=M, start=t)`), each prompted by its mask on frame t.
  A mother younger than `min_cycle` frames (since she was born or first tracked) does not divide again: this stops
  a freshly born daughter, still touching her sister, from being split once more.
* **Arrival**: an auto mask of ≥ `min_area` pixels that no tracked object explains — its best IoU with any tracked
  mask is < `match_iou` and ≤ `arrival_max_covered` of it is covered by tracked masks — becomes a new object that
  starts on frame t, prompted by that mask (the part of it no tracked object holds) — unless it touches a tracked
  mask (within `touch_distance` px; `arrival_apart`): that is a piece of a tracked cell the tracker let go of.
  A newcomer is therefore found once it is clear of the cells around it.
Every event is recorded (frame, kind, objects) in the list given as `events`.
New ids count up from the largest id the session has ever held, so they never reuse a deleted object's id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from scipy import ndimage

from .errors import InputError

__all__ = ["DISCOVERY_GENERATOR", "DiscoveryOptions", "compare_masks", "propagate_with_discovery", "segment_frame"]


#: segment-everything settings for discovery: a 16 × 16 grid (a quarter of the official 32 × 32: the decoder runs
#: once per grid point, which is what discovery costs) and looser quality filters than the official 0.8 / 0.95,
#: under which the built-in nano-fluo keeps no mask at all (its predicted IoUs on the synthetic nuclei lie at
#: 0.68-0.86, stabilities at 0.85-0.95; measured on the demo movie's candidates)
DISCOVERY_GENERATOR = {"points_per_side": 16, "pred_iou_thresh": 0.6, "stability_score_thresh": 0.85}


@dataclass
class DiscoveryOptions:
    """Settings of discovery while tracking (see the module docstring for the rules they parametrise).

    every: discover on every `every`-th frame of a pass (1 = every frame), counted from the pass's start frame.
    on_start_frame: also discover on the start frame itself (False for `--auto`, whose start frame was just
        segmented to make the first prompts).
    arrivals / divisions: which events to look for.
    min_area: smallest auto mask (pixels) that can become a new object.
    match_iou: an auto mask with IoU ≥ this against some tracked mask is explained by it.
    arrival_max_covered: an auto mask more covered than this (fraction of its pixels) by tracked masks is not new.
    division_inside, division_min_share, division_size_ratio, division_coverage, division_gap, division_shrink,
    touch_distance, min_cycle, arrival_apart: the division and arrival rules.
    generator: keyword arguments for `segment_everything` (default `DISCOVERY_GENERATOR`; e.g. points_per_side).
    detector: instead of segment everything, any detector: detector(session, frame) → list of [H, W] bool masks
        (e.g. a Cellpose run on `session.frames.raw_frame(frame)`); not recorded in provenance beyond its name.
    """

    every: int = 1
    on_start_frame: bool = True
    arrivals: bool = True
    divisions: bool = True
    min_area: int = 30
    match_iou: float = 0.5
    arrival_max_covered: float = 0.3
    division_inside: float = 0.7
    division_min_share: float = 0.2
    division_size_ratio: float = 0.5
    division_coverage: float = 0.6
    division_shrink: float = 0.75
    touch_distance: float = 2.0
    division_gap: float = 3.0
    arrival_apart: bool = True
    min_cycle: int = 4
    generator: dict[str, Any] = field(default_factory=lambda: dict(DISCOVERY_GENERATOR))
    detector: Callable[[Any, int], list[np.ndarray]] | None = None

    def __post_init__(self):
        if int(self.every) < 1:
            raise InputError(f"discovery needs every >= 1 (1 = every frame); got {self.every}")
        self.every = int(self.every)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (recorded in a result store's provenance)."""
        record = asdict(replace(self, detector=None))
        if self.detector is not None:
            record["detector"] = getattr(self.detector, "__qualname__", repr(self.detector))
        return record

    @classmethod
    def coerce(cls, value) -> DiscoveryOptions | None:
        """None/False → None; True → defaults; an int k → every k frames; a dict → fields; an instance as is."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, (int, np.integer)):
            return cls(every=int(value))
        if isinstance(value, dict):
            unknown = set(value) - set(cls.__dataclass_fields__)
            if unknown:
                raise InputError(
                    f"unknown discovery options {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}"
                )
            if isinstance(value.get("detector"), str):
                raise InputError(
                    f"this run used a custom detector ({value['detector']}); pass it again as "
                    "discover=DiscoveryOptions(detector=...)"
                )
            return cls(**value)
        raise InputError(f"discover must be True, an int (every k frames), a dict or DiscoveryOptions; got {value!r}")


@dataclass
class Proposal:
    """One event found on a frame: kind "arrival" (masks: [the new object's mask]) or "division" (mother, masks:
    the two daughters' masks, `sign`: which rule found it)."""

    kind: str
    masks: list[np.ndarray]
    mother: int | None = None
    sign: str = ""


def segment_frame(session, frame: int, generator: dict[str, Any] | None = None) -> list[np.ndarray]:
    """Segment everything on `frame` of the session's stack, reusing its cached image features → [H, W] bool masks."""
    if isinstance(generator, DiscoveryOptions):
        if generator.detector is not None:
            return [np.asarray(m, dtype=bool) for m in generator.detector(session, frame)]
        generator = generator.generator
    auto = session.segment_everything(frame, **(generator or {}))
    return [np.asarray(o.mask, dtype=bool) for o in auto.objects]


def compare_masks(
    labels: np.ndarray,
    auto_masks: list[np.ndarray],
    options: DiscoveryOptions,
    previous_area: dict[int, int] | None = None,
    may_divide: Callable[[int], bool] | None = None,
) -> list[Proposal]:
    """The discovery rules on one frame: tracked label image [H, W] (object ids) vs auto masks [[H, W] bool]
    → proposals (arrivals and divisions). previous_area: {object id: area on the previous discovery frame} (for
    rule c). may_divide(obj) → False excludes an object from dividing (e.g. too young)."""
    ids = [int(i) for i in np.unique(labels) if i]
    areas = {i: int((labels == i).sum()) for i in ids}
    auto = [m for m in auto_masks if m.sum() >= 1]
    proposals: list[Proposal] = []
    # overlap of every auto mask with every tracked object: one bincount per auto mask
    inter = np.zeros((len(auto), (max(ids) + 1) if ids else 1), dtype=np.int64)
    for j, m in enumerate(auto):
        counts = np.bincount(labels[m].ravel().astype(np.int64), minlength=inter.shape[1])
        inter[j] = counts[: inter.shape[1]]
    auto_area = np.array([int(m.sum()) for m in auto], dtype=np.int64)

    def iou(j: int, i: int) -> float:
        union = auto_area[j] + areas[i] - inter[j, i]
        return float(inter[j, i] / union) if union else 0.0

    explained = []
    for j in range(len(auto)):
        best = max((iou(j, i) for i in ids), default=0.0)
        covered = float(inter[j, 1:].sum() / auto_area[j]) if auto_area[j] else 1.0
        explained.append(best >= options.match_iou or covered > options.arrival_max_covered)
    unexplained = [j for j in range(len(auto)) if not explained[j]]
    used: set[int] = set()

    if options.divisions:
        for i in ids:
            if may_divide is not None and not may_divide(i):
                continue
            mother = labels == i
            # (a) two auto masks inside the mother
            inside = [
                j
                for j in range(len(auto))
                if auto_area[j]
                and inter[j, i] / auto_area[j] >= options.division_inside
                and inter[j, i] / areas[i] >= options.division_min_share
                and iou(j, i) < 0.8  # a mask equal to the mother is the mother, not a daughter
            ]
            inside = _disjoint_largest(inside, auto, auto_area)
            if len(inside) >= 2:
                a, b = inside[:2]
                ratio = min(auto_area[a], auto_area[b]) / max(auto_area[a], auto_area[b])
                cover = (inter[a, i] + inter[b, i]) / areas[i]
                apart = not _within(auto[a], auto[b], options.division_gap)
                if ratio >= options.division_size_ratio and cover >= options.division_coverage and apart:
                    proposals.append(Proposal("division", [auto[a], auto[b]], mother=i, sign="two masks inside"))
                    used.update((a, b))
                    continue
            # (b) the mother's mask falls apart into two comparable components
            comp, n = ndimage.label(mother)
            if n >= 2:
                sizes = np.bincount(comp.ravel())[1:]
                order = np.argsort(sizes)[::-1]
                big, small = sizes[order[0]], sizes[order[1]]
                if small / areas[i] >= options.division_min_share and small / big >= options.division_size_ratio:
                    masks = [comp == order[0] + 1, comp == order[1] + 1]
                    proposals.append(Proposal("division", masks, mother=i, sign="two components"))
                    continue
            # (c) the tracker kept one daughter; the other is an unexplained mask touching the mother
            if previous_area and i in previous_area and areas[i] <= options.division_shrink * previous_area[i]:
                near = ndimage.binary_dilation(mother, iterations=max(1, round(options.touch_distance)))
                for j in unexplained:
                    if j in used:
                        continue
                    ratio = min(auto_area[j], areas[i]) / max(auto_area[j], areas[i])
                    if ratio >= options.division_size_ratio and (near & auto[j]).any():
                        proposals.append(Proposal("division", [mother, auto[j] & ~mother], mother=i, sign="sister"))
                        used.add(j)
                        break

    if options.arrivals:
        taken = labels > 0
        for j in unexplained:
            if j in used:
                continue
            mask = auto[j] & ~taken
            if mask.sum() < options.min_area:
                continue
            if options.arrival_apart and _within(mask, labels > 0, options.touch_distance):
                continue  # touching a tracked cell: a part of it the tracker let go of, not a newcomer
            proposals.append(Proposal("arrival", [mask]))
            taken = taken | mask  # two overlapping auto masks do not make two arrivals
    return proposals


def _within(a: np.ndarray, b: np.ndarray, distance: float) -> bool:
    """Masks a and b touch or come closer than `distance` pixels."""
    if distance <= 0:
        return bool((a & b).any())
    return bool((ndimage.binary_dilation(a, iterations=max(1, round(distance))) & b).any())


def _disjoint_largest(candidates: list[int], auto: list[np.ndarray], area: np.ndarray) -> list[int]:
    """Candidates from the largest down, skipping any that overlaps an already chosen one by > 30 % of itself."""
    chosen: list[int] = []
    for j in sorted(candidates, key=lambda k: -area[k]):
        if all((auto[j] & auto[c]).sum() <= 0.3 * area[j] for c in chosen):
            chosen.append(j)
    return chosen


def propagate_with_discovery(
    session,
    options: DiscoveryOptions,
    direction: str = "forward",
    start: int | None = None,
    events: list[dict] | None = None,
    segment: Callable[[Any, int], list[np.ndarray]] | None = None,
) -> Iterator:
    """`session.propagate(direction, start)` with discovery on every `options.every`-th frame: yields the
    session's `FrameResult`s; after a frame on which discovery changed something, that frame's new result is
    yielded again (consumers keep the last result of a frame). Only forward passes discover (a division read
    backwards is a merge). events: a list that receives one dict per event. segment(session, frame) → masks
    replaces segment-everything (tests; other detectors)."""
    if direction not in ("forward", "both"):
        raise InputError("discovery runs forward in time: use direction 'forward' (or 'both': the backward half "
                         "then tracks without discovery)")  # fmt: skip
    segment = segment or options.detector or (lambda s, f: segment_frame(s, f, options.generator))
    events = events if events is not None else []
    next_id = max(session.obj_ids, default=0) + 1
    born: dict[int, int] = {}  # object → the frame it was first seen on (for min_cycle)
    previous_area: dict[int, int] = {}
    first = None
    for result in session.propagate("forward", start=start):
        yield result
        t = result.frame
        first = t if first is None else first
        for obj in result.obj_ids:  # objects of the start frame may be of any age: no min_cycle for them
            born.setdefault(obj, t if t > first else -(10**9))
        offset = t - first
        if offset % options.every or (offset == 0 and not options.on_start_frame):
            previous_area = _areas(result.labels)
            continue
        proposals = compare_masks(
            result.labels,
            segment(session, t),
            options,
            previous_area=previous_area,
            # a division ends the mother on t - 1: never on the pass's first frame
            may_divide=lambda obj, t=t, first=first: t > first and t - born.get(obj, t) >= options.min_cycle,
        )
        for p in proposals:
            if p.kind == "division":
                mother = p.mother
                session.end_object(mother, t - 1)
                daughters = []
                for mask in p.masks:
                    session.add_object(next_id, parent=mother, start=t)
                    session.add_prompt(t, next_id, mask=mask)
                    daughters.append(next_id)
                    born[next_id] = t
                    next_id += 1
                events.append({"frame": t, "kind": "division", "mother": mother, "daughters": daughters,
                               "sign": p.sign})  # fmt: skip
            else:
                session.add_object(next_id, start=t)
                session.add_prompt(t, next_id, mask=p.masks[0])
                events.append({"frame": t, "kind": "arrival", "object": next_id})
                born[next_id] = t
                next_id += 1
        if proposals:
            result = session.result(t)
            yield result
        previous_area = _areas(result.labels)
    if direction == "both" and first is not None and first > 0:
        yield from session.propagate("backward", start=first)


def _areas(labels: np.ndarray) -> dict[int, int]:
    counts = np.bincount(labels.ravel().astype(np.int64))
    return {int(i): int(c) for i, c in enumerate(counts) if i and c}
