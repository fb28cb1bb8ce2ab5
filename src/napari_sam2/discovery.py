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
  Both signs (a) and (b) need a whole mother: the two daughters' masks together hold ≥ `division_coverage` of
  her usual area (a mother squeezed to a fragment that falls in two is the tracker losing her, not a division —
  seen on tuning seed 4,100,000's squeezed daughter; a real division conserves the mother's material).
  The mother ends on frame t − 1 (`session.end_object`), two new objects start on frame t with the mother as
  parent (`session.add_object(d, parent=M, start=t)`), each prompted by its mask on frame t.
  **One frame back** (`division_back`): daughters that have just formed still touch, and both the tracker and
  segment everything take the pair for one cell (nano-fluo answers both clicks of rule (a) with the pair), so a
  division is found a frame after the daughters appear. When M's mask on t − 1 splits by shape — a watershed of
  its distance transform from one marker per daughter (M's deepest pixel inside that daughter's mask on t) —
  into two parts of comparable size (`division_size_ratio`) joined by a neck (the deepest pixel of their common
  border ≤ `division_neck` (0.88) × the depth of the shallower part), the daughters were already there: M ends
  on t − 2 and the daughters start on t − 1, prompted with those parts (and with their masks on t); frame t − 1
  is yielded again (the event's "frame" is t − 1, "found" is t). Why it holds for cells in general: two daughter
  nuclei (or cells in late cytokinesis) are two convex bodies pinched where they touch, while a nucleus before it
  divides is convex — a cut across it is no shallower than its halves. Measured on the tuning seeds' 13
  divisions found by nano-fluo: on the frame before, neck 0.69–0.93 (11 of 13 ≤ 0.88) and size ratio ≥ 0.77;
  two frames before (the mother still whole), neck ≥ 0.91 wherever the ratio passed.
  A mother younger than `min_cycle` frames (since she was born or first tracked) does not divide again: this stops
  a freshly born daughter, still touching her sister, from being split once more.
* **Arrival**: an auto mask of ≥ `min_area` pixels that no tracked object explains — its best IoU with any tracked
  mask is < `match_iou` and ≤ `arrival_max_covered` of it is covered by tracked masks — becomes a new object that
  starts on frame t, prompted by that mask (the part of it no tracked object holds) — unless it touches a tracked
  mask (within `touch_distance` px; `arrival_apart`): that is a piece of a tracked cell the tracker let go of —
  except when every cell it touches still has ≥ 80 % of its usual area and the mask is at least
  `division_size_ratio` of each one's usual area: then it is an untracked neighbour (e.g. one of a touching pair
  whose track was lost), and it becomes a new object (`arrival_neighbours`).
* **Absorbed neighbour** (not a division): when the larger of the two masks of rule (a) is more than
  `division_max_daughter` (0.8) of the mother's usual area (the median of her last 50 frames), she had swallowed a
  neighbour (daughters are about half of her): she is re-prompted with the mask that best overlaps her mask on
  the previous discovery frame, and the other mask becomes an arrival. The same test stops rule (b) when the
  larger piece is the whole mother.
* **Refresh** (`refresh`): a tracked mask that lies ≥ 80 % inside an auto mask at least `refresh_growth` (1.3)
  times its size — but at most 1.75 × the largest area the object ever had and, if the object is not smaller than
  its usual area, at most `refresh_max_usual` (1.4) × that (a mask spanning it and a touching neighbour is larger:
  measured on the tuning seeds, refreshing a full-sized cell to such masks made it swallow its neighbour frame
  after frame, while a cell tracked as a fragment from the start needs the larger mask), and with at most
  `refresh_max_others` (0.3) of it held by other objects — has shrunk to a fragment of
  its cell: the object is re-prompted on frame t with that mask (minus other objects' pixels). Event kind
  "refresh".
* **Probe** (repairs first, before the clicks; `relink` and `reclaim`): an object that exists on frame t but
  holds no pixel (lost, last seen in full at most `relink_frames` (10) frames ago) or shrank below
  `reclaim_shrink` (0.6) of its usual area or below `reclaim_reference` (0.8) of its reference area (its area on
  the first frame it was tracked, see "Resplit"; seen in full at most `reclaim_frames` (5) frames ago) is clicked
  once, on the innermost pixel of its last good mask (lost) or of its mask now (shrunk) — "good mask": its mask on the
  last frame its area was within `reclaim_shrink` … `reclaim_growth` of its usual area. The click is decoded by the
  session's model without the generator's quality filters. Once the pixels other objects hold are taken out (a
  click on a dim cell beside a bright one often answers with both), the answer with the best IoU (≥ `relink_iou`,
  0.5) against the last good mask (lost), or the largest that holds ≥ 80 % of the fragment and is ≥
  `refresh_growth` × its size (shrunk), is the object again — neighbours
  that grew to ≥ `reclaim_growth` (1.2) × their usual area keep none of it: they give those pixels back and are
  re-prompted without them, keeping ≥ half their usual area — if it is at most `refresh_max_usual` × the
  object's usual (or largest) area. The object is re-prompted
  with it: event "relink" (sign "probe", with the gap in frames and the neighbours it took pixels "from") for a
  lost one, "reclaim" (sign "probe", objects [neighbours…, object]) for a shrunk one. nano-fluo's tracker drops
  or squeezes the dimmer cell of a touching pair again and again, while a click there still finds it (measured
  on the tuning seeds). The reference-area trigger is for a slow loss: a cell does not shrink to four fifths
  of the area it started with while it is followed (between divisions it grows; a division ends its track and
  starts the daughters' with their own reference), but nano-fluo's tracker can let go of the far side of a cell
  a few pixels a frame — the demo's nucleus 4 beside nucleus 3 from frame 7 on with `object_clicks="all"`,
  323 → ~200 px by frame 12 — and the median of its last frames follows it down, so `reclaim_shrink` × that
  median never sees it (demo TRA 0.938 without this trigger, 0.995 with it; 0.8 chosen on the tuning seeds). The
  probe only takes pixels no object holds (or a grown neighbour's), and its answer must hold the fragment and be
  ≥ `refresh_growth` × it: a cell that really is smaller now (half out of the field) answers with itself and
  keeps its mask (the cost is one click per frame while it stays below).
* **Reclaim** (`reclaim`, when the probe found nothing): a tracked object X that shrank below `reclaim_shrink` of
  its usual area (or vanished), while an object Y touching X (X's mask or its last good mask, at most
  `reclaim_frames` frames old) grew to ≥ `reclaim_growth` × its usual area, by at least `reclaim_balance` (0.5) of
  what X lost (the neighbour that gained the most): Y swallowed or squeezed X. X's and Y's pixels on frame t are
  shared out again by their last good masks (each pixel to the nearer one), X also gets the rest of its last good
  mask that no object holds, and both are re-prompted with their part, as long as each part keeps ≥ half of its
  object's usual area. Event kind "reclaim" (objects [Y, X], sign "swallowed" or "squeezed").
* **Resplit** (`resplit`, after reclaim, for the objects it left alone): two touching objects whose areas drifted
  apart from their *reference areas* — each object's area on the first frame it was tracked on (the mask it was
  prompted with: a seed, a segment-everything mask, a daughter's or an arrival's mask), not the median of its
  last frames, which follows a drift that starts on the first frames — one at most `resplit_shrink` (0.8) × the
  larger of its reference and usual areas, the other at least `resplit_growth` (1.1) × the smaller of its own
  (a cell grows — a newborn daughter fast — but does not shrink) and by at least `reclaim_balance` of what the
  first lost: their union is split again by shape (a watershed of its distance transform from each one's deepest
  pixel; the grown one's away from the other's by the shrunk one's radius), and both are re-prompted with their
  part when it brings both areas closer to their references (and keeps each ≥ half of it). Event kind
  "reclaim" (objects [grown, shrunk], sign "resplit"). Why: a cell does not lose a fifth of its area in a few
  frames while its touching neighbour gains it (cells grow slowly, and a division ends the mother); two touching
  nuclei are two convex bodies, whose union is pinched where they meet. nano-fluo's tracker moves the border of
  a touching pair of equal brightness a little every frame (the demo's nuclei 3 and 4 from frame 1 on), too
  slowly for the median of the last frames to see it. A *swallowed* object (no pixel on t, seen in full at most
  `relink_frames` ago) whose last good mask's innermost pixel now lies in an object Y that grew (as above, by at
  least `reclaim_balance` of the swallowed one's area) is given back the same way: Y's mask is split by shape
  from Y's deepest pixel within the swallowed one's radius of that pixel and from Y's deepest pixel away from it
  (`resplit_swallowed`; its part must be 0.5–1.5 × its area; tuning seed 4,100,002's dim nucleus, which the
  probe's click answers together with part of its bright neighbour). The same test guards **refresh**: a refresh that would
  make an object larger than `resplit_growth` × its reference beside a touching object below `resplit_shrink` ×
  hers is refused (the extra area is the squeezed neighbour's).
* **Relink** (gap closing, `relink`): an arrival whose mask lies within `relink_distance` (3) radii (of a circle of
  the object's usual area) of the last good mask of a tracked object that is absent on frame t and was last seen
  at most `relink_frames` frames ago is that object coming back (it left the field, or the tracker lost it):
  the lost object is re-prompted with the mask instead of a new object (the nearest such object; its id, lineage
  and parent carry on; the CTC export links the two pieces of its track across the gap, as the CTC rules do for a
  cell that leaves and comes back). Event kind "relink" (sign "near"). An unexplained auto (or detected) mask
  overlapping such an object's last good mask (≥ 30 % of the smaller) relinks it too, even where it touches a
  tracked cell (sign "overlap").

Sampling (`sampling`, default "changed"): the full segment-everything grid costs one decoder run per grid point
on every discovery frame, most of it on background that has not changed. On a discovery frame the clicks are
* the grid points (`points_per_side`² of the generator) that are not inside a tracked mask (a click inside a
  tracked object cannot reveal a new object) and whose 3 × 3 neighbourhood in the image encoder's features
  (already computed for tracking) changed by more than `change_threshold` (relative L2 norm, default 0.5) since
  the point was last clicked, or that were last clicked `revisit` (16) discovery frames ago (staggered: 1/16 of
  the grid falls due each frame); every point on the pass's first discovery frame. On the synthetic movies
  background cells change by ~0.01-0.05 between frames (99th percentile 0.1-2: cells beside moving nuclei) and
  the cell a newcomer enters by 1.6-1.9 (measured on tuning seed 4,100,001); 0.5 and 16 found the same objects
  as 0.2 and 8 on the tuning seeds with fewer clicks;
* two clicks per tracked object, one in each half along its long axis (`object_clicks`): a dividing cell answers
  with its two daughters, a whole one with itself (rules a-c see them). By default (`object_clicks="watch"`) only
  for the objects that show a sign of dividing or of trouble: an area more than `watch_area` (15 %) away from its
  usual area (the median of its last frames), an elongation (long / short axis) ≥ `watch_elongation` (1.4), or an
  age below `watch_young` (3) frames (no usual area yet). A mother elongates before she divides and her mask spans
  both daughters after it; a cell that swallowed a newcomer grows, one squeezed or halved shrinks. The others
  answer a click with themselves (what every tracked mask already says): on the cost movie of bench_auto a third of the
  objects are watched on a frame, and `object_clicks="all"` clicks every object (the choice before, see the cost
  leg of benchmarks/bench_auto.py for what each costs);
decoded with the generator's filters but scored at the decoder's resolution (`automatic.segment_points`: only the
masks that survive NMS are upsampled). "grid" runs the whole `segment_everything` grid as before.
With `object_clicks="watch"` a candidate that lies ≥ 80 % inside a tracked cell that is not watched is kept as
its grid click found it, without the recentring click (`skip_settled`; its deepest pixel lies in that cell, and a
centred click on a cell that shows no sign of change answers with the cell).
Grid points on dark background (`grid_signal="near"`, the default; "off" before): the change test picks the points
whose feature neighbourhood (three feature cells, 48 px at 256²) changed — whenever a cell moves nearby — but a
click farther than half a grid spacing from any bright pixel (`near_signal`: signal of tracked cells included)
answers with nothing; such points are left out (they keep their reference features, so the change still counts when
signal comes near). The points near *untracked* signal (`untracked_signal`: bright pixels that no tracked mask
holds, in a piece more than 3 px thick) are clicked on every discovery frame, changed or not: a newcomer at the
border too small on its first frame for a mask to survive the filters changes its neighbourhood little on the next
frames, and the change test alone would wait (tuning seed 4,100,002). A point clicked only for that untracked
signal keeps the reference of its last click for a change (`signal_updates_reference`, False): taking the
newcomer's first-frame features as the reference hid its growth on the next frames once a tracked cell covered it,
and that arrival was found a frame late (tuning seed 4,100,002). About a fifth of the grid clicks of "off" (the
change test alone, the default before) remain (11 of 45 a frame on the cost movie of bench_auto), at the same
quality on the tuning seeds (8 of 9 arrivals; TRA 0.987 / 0.977 / 0.960 against 0.987 / 0.977 / 0.962 with "off").
"untracked" (a cheaper path that
loses arrivals) replaces the change test: only the points within half a grid spacing of *untracked* signal
(`untracked_signal`) are clicked, on every discovery frame — but a newcomer that a tracked cell partly covers on its
first frames shows no untracked signal, and the clicks that would have found it beside that cell are gone (measured
on the tuning seeds: 6 of 9 arrivals instead of 8, TRA 0.960 instead of 0.969).
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

__all__ = [
    "DISCOVERY_GENERATOR",
    "DISCOVERY_PRED_IOU",
    "ChangeSampler",
    "DiscoveryOptions",
    "compare_masks",
    "generator_for",
    "object_clicks",
    "propagate_with_discovery",
    "segment_frame",
]


#: segment-everything settings for discovery: a 16 × 16 grid (a quarter of the official 32 × 32: the decoder runs
#: once per grid point, which is what discovery costs) and looser quality filters than the official 0.8 / 0.95,
#: under which the built-in nano-fluo keeps no mask at all (its predicted IoUs on the synthetic nuclei lie at
#: 0.68-0.86, stabilities at 0.85-0.95; measured on the demo movie's candidates). The IoU filter
#: (`pred_iou_thresh`) is not here: it depends on the session's contrast step (`DISCOVERY_PRED_IOU`).
DISCOVERY_GENERATOR = {"points_per_side": 16, "stability_score_thresh": 0.85}

#: discovery's filter on the IoU token (`pred_iou_thresh`) per contrast step, used where the generator names none.
#: The token reads lower under local contrast (its grey, noisy background): nano-fluo predicts 0.45-0.62 for good
#: masks that it predicts 0.7-0.8 for under global contrast, so 0.6 dropped the nuclei of small scenes. 0.3 was
#: chosen on tuning seeds only (first-frame "find all objects" F1, IoU ≥ 0.5, 16 × 16 grid, on issue-7 movies
#: 1,500,000 + 100 c + k at 256² and 128², and lineage movies 4,100,000 + k: local 0.6 / 0.5 / 0.4 / 0.3 / 0.2 / 0
#: → 0.795 / 0.811 / 0.822 / 0.829 / 0.824 / 0.824, global at 0.6: 0.812; `--auto` on the lineage tuning movies
#: gave the same TRA and arrivals at 0.6, 0.45 and 0.3). "global" keeps its value of before.
DISCOVERY_PRED_IOU = {"global": 0.6, "local": 0.3}


def generator_for(session, generator: dict[str, Any]) -> dict[str, Any]:
    """Discovery's segment-everything settings on `session`: a copy of `generator` (e.g. `DiscoveryOptions.generator`)
    with `pred_iou_thresh` from `DISCOVERY_PRED_IOU` for the session's contrast step (`session.frames.contrast`)
    when it names none. A store that recorded a threshold (every store made before this rule: 0.6) keeps it."""
    generator = dict(generator)
    if "pred_iou_thresh" not in generator:
        frames = getattr(session, "frames", None)
        name = getattr(getattr(frames, "contrast", None), "name", "global")
        generator["pred_iou_thresh"] = DISCOVERY_PRED_IOU.get(name, DISCOVERY_PRED_IOU["global"])
    return generator


#: Fields added to DiscoveryOptions after stores already recorded it, with the value that reproduces what a run
#: made before the field existed did (`DiscoveryOptions.from_record`): every object clicked, every candidate
#: recentred, no reference-area probe. Fields whose earlier behaviour no value reproduces are not listed: a store
#: that predates them resumes with today's default.
RECORDED_BEFORE: dict[str, Any] = {
    "object_clicks": "all",
    "skip_settled": False,
    "reclaim_reference": 0.0,
    "grid_signal": "off",
    "max_cond_frames": None,
    "signal_updates_reference": True,
}


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
    touch_distance, min_cycle, arrival_apart, arrival_neighbours: the division and arrival rules.
    division_max_daughter: a "daughter" larger than this fraction of the mother's usual area (median of her last
        frames) is no daughter: the mother had swallowed a neighbour (see "absorbed neighbour").
    refresh, refresh_growth, refresh_max_others, refresh_max_usual: the "refresh" rule (a tracked mask that shrank
        to a fragment of an auto mask).
    reclaim, reclaim_shrink, reclaim_growth, reclaim_balance, reclaim_frames: the "reclaim" rule (a touching
        neighbour swallowed or squeezed an object: their pixels are shared out again by their last good masks).
    reclaim_reference: the probe also clicks an object below this fraction of its reference area (its area on
        the first frame it was tracked; 0 turns this trigger off): a slow loss its median area follows down.
    division_back, division_neck: a division found on frame t is placed on t − 1 when the mother's mask there is
        already the two daughters (split by shape, both parts comparable and joined by a neck: the deepest point of
        their common border ≤ division_neck × the depth of the shallower part).
    resplit, resplit_shrink, resplit_growth: the "resplit" rule (a touching pair whose areas drifted apart from
        the areas they started with, one below resplit_shrink × hers and the other above resplit_growth × his, is
        split again by shape).
    relink, relink_frames, relink_distance, relink_iou: gap closing (an arrival next to where a lost object was
        last seen is that object: it is re-prompted instead of a new object; distance in radii of the object's
        usual area; a click where it was last seen that answers with its shape, IoU ≥ relink_iou, finds it too).
    sampling: which clicks a discovery frame decodes: "changed" (default: the grid points whose neighbourhood in
        the image features changed by more than `change_threshold` since they were last clicked, or were last
        clicked `revisit` discovery frames ago, and are not inside a tracked mask; plus two clicks per tracked
        object, one in each half along its long axis) or "grid" (the whole `points_per_side` grid every time, as
        `segment_everything`). See "Sampling" in the module docstring.
    object_clicks, watch_area, watch_elongation, watch_young: "watch" (default) gives the two per-object clicks of
        sampling "changed" only to objects whose area is more than watch_area (fraction) away from their usual
        area, whose long / short axis ≥ watch_elongation, or younger than watch_young frames; "all" to every one.
    grid_signal: "near" (default): the change test picks the grid points, leaving out those farther than half a
        grid spacing from any bright pixel, and those near untracked bright pixels are added; "off" (the default
        before): the change test alone (more clicks); "untracked": only the points near
        untracked bright pixels (cheapest, loses arrivals). See "Sampling". Needs the stack's pixels (a
        preprocessed stack: "off").
    signal_updates_reference: with grid_signal "near", a grid point clicked only because it lies near untracked
        signal (not for a change) takes its features then as its new reference (True, as before this field) or
        keeps the reference of its last click for a change (False, default; see `ChangeSampler`).
    skip_settled: a candidate mask lying mostly inside a tracked cell that is not watched is not recentred (see
        "Sampling"; with object_clicks="watch").
    max_cond_frames: None (default) leaves the session as it is; k ≥ 2 sets `TrackingSession.max_cond_frames`
        (each object attends to its k nearest conditioning frames: every re-prompt of a repair adds one) for this
        pass and after it.
    generator: keyword arguments for `segment_everything` (default `DISCOVERY_GENERATOR`; e.g. points_per_side);
        without "pred_iou_thresh", the session's contrast step picks it (`DISCOVERY_PRED_IOU`, `generator_for`).
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
    arrival_neighbours: bool = True
    min_cycle: int = 4
    division_max_daughter: float = 0.8
    refresh: bool = True
    refresh_growth: float = 1.3
    refresh_max_others: float = 0.3
    refresh_max_usual: float = 1.4
    reclaim: bool = True
    reclaim_shrink: float = 0.6
    reclaim_growth: float = 1.2
    reclaim_balance: float = 0.5
    reclaim_frames: int = 5
    reclaim_reference: float = 0.8
    division_back: bool = True
    division_neck: float = 0.88
    resplit: bool = True
    resplit_shrink: float = 0.8
    resplit_growth: float = 1.1
    relink: bool = True
    relink_frames: int = 10
    relink_distance: float = 3.0
    relink_iou: float = 0.5
    sampling: str = "changed"
    object_clicks: str = "watch"
    watch_area: float = 0.15
    watch_elongation: float = 1.4
    watch_young: int = 3
    grid_signal: str = "near"
    signal_updates_reference: bool = False
    max_cond_frames: int | None = None
    skip_settled: bool = True
    change_threshold: float = 0.5
    revisit: int = 16
    generator: dict[str, Any] = field(default_factory=lambda: dict(DISCOVERY_GENERATOR))
    detector: Callable[[Any, int], list[np.ndarray]] | None = None

    def __post_init__(self):
        if int(self.every) < 1:
            raise InputError(f"discovery needs every >= 1 (1 = every frame); got {self.every}")
        self.every = int(self.every)
        if self.sampling not in ("changed", "grid"):
            raise InputError(f"discovery sampling is 'changed' or 'grid'; got {self.sampling!r}")
        if self.max_cond_frames is not None and int(self.max_cond_frames) < 2:
            raise InputError(f"discovery max_cond_frames is None (all) or >= 2; got {self.max_cond_frames}")
        if self.grid_signal not in ("near", "untracked", "off"):
            raise InputError(f"discovery grid_signal is 'near', 'untracked' or 'off'; got {self.grid_signal!r}")
        if self.object_clicks not in ("watch", "all"):
            raise InputError(f"discovery object_clicks is 'watch' or 'all'; got {self.object_clicks!r}")
        if int(self.revisit) < 1:
            raise InputError(f"discovery revisit must be >= 1 (discovery frames); got {self.revisit}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (recorded in a result store's provenance)."""
        record = asdict(replace(self, detector=None))
        if self.detector is not None:
            record["detector"] = getattr(self.detector, "__qualname__", repr(self.detector))
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> DiscoveryOptions:
        """The options a result store recorded (`to_dict`), to resume or replay that run. A store written before a
        field existed does not name it; where the field's `RECORDED_BEFORE` value reproduces the rules that run
        used, that value is taken instead of today's default, so a resumed run goes on as it began."""
        record = dict(record)
        for name, before in RECORDED_BEFORE.items():
            record.setdefault(name, before)
        return cls.coerce(record)

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
    """One event found on a frame: kind "arrival" (masks: [the new object's mask]), "division" (mother, masks:
    the two daughters' masks, `sign`: which rule found it), "refresh" (mother re-prompted with masks[0]) or
    "reclaim" (mother = the object that swallowed, other = the swallowed one, masks: [mother's part, other's])."""

    kind: str
    masks: list[np.ndarray]
    mother: int | None = None
    sign: str = ""
    other: int | None = None


def segment_frame(session, frame: int, generator: dict[str, Any] | None = None) -> list[np.ndarray]:
    """Segment everything on `frame` of the session's stack, reusing its cached image features → [H, W] bool masks."""
    if isinstance(generator, DiscoveryOptions):
        if generator.detector is not None:
            return [np.asarray(m, dtype=bool) for m in generator.detector(session, frame)]
        generator = generator.generator
    # None: the model's own segment-everything defaults, as before
    auto = session.segment_everything(frame, **({} if generator is None else generator_for(session, generator)))
    return [np.asarray(o.mask, dtype=bool) for o in auto.objects]


def compare_masks(
    labels: np.ndarray,
    auto_masks: list[np.ndarray],
    options: DiscoveryOptions,
    previous_area: dict[int, int] | None = None,
    may_divide: Callable[[int], bool] | None = None,
    usual_area: dict[int, float] | None = None,
    largest_area: dict[int, int] | None = None,
    previous_labels: np.ndarray | None = None,
    lost: dict[int, np.ndarray] | None = None,
    reference_area: dict[int, float] | None = None,
) -> list[Proposal]:
    """The discovery rules on one frame: tracked label image [H, W] (object ids) vs auto masks [[H, W] bool]
    → proposals: "arrival", "division", "refresh" (object `mother` re-prompted with `masks[0]`) and "relink"
    (the lost object `mother` re-prompted with `masks[0]`).
    lost: {object id: its last good mask [H, W] bool} for objects absent on this frame that were seen at most
    `relink_frames` ago: an unexplained auto mask overlapping one of them is that object (gap closing), even
    where it touches a tracked cell.
    previous_area: {object id: area on the previous discovery frame} (rule c). may_divide(obj) → False excludes
    an object from dividing (e.g. too young). usual_area: {object id: median area on its last 50 frames} (the
    absorbed-neighbour test); largest_area: {object id: its largest area so far} (the refresh rule);
    previous_labels: the label image of the previous discovery frame (which mask of an absorbed pair is the
    mother's own); reference_area: {object id: its area on the frame it was first tracked} (the resplit guard of
    the refresh rule)."""
    areas = _areas(labels)
    ids = sorted(areas)
    boxes = ndimage.find_objects(labels.astype(np.int64, copy=False)) if ids else []  # object i: boxes[i - 1]
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
    refreshed: set[int] = set()

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
            usual = (usual_area or {}).get(i)
            if len(inside) >= 2:
                a, b = inside[:2]
                ratio = min(auto_area[a], auto_area[b]) / max(auto_area[a], auto_area[b])
                cover = (inter[a, i] + inter[b, i]) / areas[i]
                # a mother is whole when she divides: her daughters hold most of her usual area together
                whole = not usual or auto_area[a] + auto_area[b] >= options.division_coverage * usual
                if ratio >= options.division_size_ratio and cover >= options.division_coverage and whole:
                    if usual and max(auto_area[a], auto_area[b]) > options.division_max_daughter * usual:
                        # absorbed neighbour: one mask is the mother as she was, the other a cell she swallowed
                        before = previous_labels == i if previous_labels is not None else mother
                        keep, new = sorted((a, b), key=lambda j: -_iou(auto[j], before))
                        others = (labels > 0) & ~mother
                        proposals.append(Proposal("refresh", [auto[keep] & ~others], mother=i, sign="absorbed"))
                        if auto_area[new] >= options.min_area:
                            proposals.append(Proposal("arrival", [auto[new] & ~others & ~auto[keep]], sign="absorbed"))
                        used.update((a, b))
                        refreshed.add(i)
                        continue
                    if not _within(auto[a], auto[b], options.division_gap):
                        proposals.append(Proposal("division", [auto[a], auto[b]], mother=i, sign="two masks inside"))
                        used.update((a, b))
                        continue
            # (b) the mother's mask falls apart into two comparable components (counted inside her box: the same
            # components, numbered in the same raster order, as on the whole frame)
            box = boxes[i - 1]
            comp, n = ndimage.label(mother[box])
            if n >= 2:
                sizes = np.bincount(comp.ravel())[1:]
                order = np.argsort(sizes)[::-1]
                big, small = sizes[order[0]], sizes[order[1]]
                if usual and big > options.division_max_daughter * usual:
                    pass  # the larger piece is the whole mother: a stray fragment, not a daughter
                elif usual and big + small < options.division_coverage * usual:
                    pass  # a fragment of the mother falling apart: the tracker losing her, not a division
                elif small / areas[i] >= options.division_min_share and small / big >= options.division_size_ratio:
                    masks = [np.zeros_like(mother), np.zeros_like(mother)]
                    masks[0][box], masks[1][box] = comp == order[0] + 1, comp == order[1] + 1
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

    if options.refresh:
        divided = {p.mother for p in proposals if p.kind == "division"}
        for i in ids:
            if i in divided or i in refreshed:
                continue
            # refresh: the tracked mask is a fragment lying inside an auto mask that no other object holds much of,
            # and that is not much larger than the object ever was (a mask of a cluster would be)
            best, best_iou = None, 0.0
            for j in range(len(auto)):
                others = inter[j, 1:].sum() - inter[j, i]
                if (
                    j not in used
                    and inter[j, i] >= 0.8 * areas[i]
                    and auto_area[j] >= options.refresh_growth * areas[i]
                    and auto_area[j] <= 1.75 * (largest_area or {}).get(i, areas[i])
                    and (
                        areas[i] < (usual_area or {}).get(i, np.inf)
                        or auto_area[j] <= options.refresh_max_usual * usual_area[i]
                    )
                    and others <= options.refresh_max_others * auto_area[j]
                    and iou(j, i) > best_iou
                ):
                    best, best_iou = j, iou(j, i)
            if best is not None and _squeezes_neighbour(best, i, auto, labels, areas, reference_area, options):
                best = None
            if best is not None:
                proposals.append(
                    Proposal("refresh", [auto[best] & ~((labels > 0) & (labels != i))], mother=i, sign="fragment")
                )
                used.add(best)
                refreshed.add(i)

    if options.relink and lost:
        relinked: set[int] = set()
        for j in unexplained:
            if j in used or auto_area[j] < options.min_area:
                continue
            mask = auto[j] & ~(labels > 0)
            overlaps = {o: int((mask & m).sum()) / max(1, min(int(mask.sum()), int(m.sum()))) for o, m in lost.items()}
            best = max((o for o in overlaps if o not in relinked), key=overlaps.get, default=None)
            if best is not None and overlaps[best] >= 0.3 and mask.sum() >= options.min_area:
                proposals.append(Proposal("relink", [mask], mother=best, sign="overlap"))
                used.add(j)
                relinked.add(best)

    if options.arrivals:
        taken = labels > 0
        for j in unexplained:
            if j in used:
                continue
            mask = auto[j] & ~taken
            if mask.sum() < options.min_area:
                continue
            if options.arrival_apart and _within(mask, labels > 0, options.touch_distance):
                # touching a tracked cell: a part of it the tracker let go of, not a newcomer — unless every cell
                # it touches kept its usual size and the mask is the size of a cell (a neighbour nobody tracks)
                near = ndimage.binary_dilation(mask, iterations=max(1, round(options.touch_distance)))
                touched = [int(k) for k in np.unique(labels[near]) if k]
                usual = {k: (usual_area or {}).get(k) for k in touched}
                if (
                    not options.arrival_neighbours
                    or not usual_area
                    or not all(
                        usual[k] and areas[k] >= 0.8 * usual[k] and mask.sum() >= options.division_size_ratio * usual[k]
                        for k in touched
                    )
                ):
                    continue
            proposals.append(Proposal("arrival", [mask]))
            taken = taken | mask  # two overlapping auto masks do not make two arrivals
    return proposals


def split_before(mother: np.ndarray, daughters: list[np.ndarray], options: DiscoveryOptions) -> list[np.ndarray] | None:
    """The daughters on the frame before a division was found: the mother's mask there [H, W] bool, split by shape
    (watershed of its distance transform from one marker per daughter: the mother's deepest pixel inside that
    daughter's mask [H, W] bool on the division frame) → [part of daughter 0, part of daughter 1], or None when
    the mother was still one cell: the parts must be of comparable size (`division_size_ratio`) and joined by a
    neck (the deepest pixel of their common border ≤ `division_neck` × the depth of the shallower part). Two
    daughters that have just formed are two convex bodies pinched where they touch; a nucleus before it divides
    is convex, its depth along any cut across it is no less than the depth of its halves."""
    if len(daughters) != 2 or not mother.any():
        return None
    box, m, depth = _depth_in_box(mother)
    at = []
    for d in daughters:
        inside = m & d[box]
        if not inside.any():
            return None
        at.append(np.unravel_index(int(np.argmax(np.where(inside, depth, -1))), m.shape))
    if at[0] == at[1]:
        return None
    split = _watershed_in_box(m, depth, at[0], at[1])
    a, b = split == 1, split == 2
    if not a.any() or not b.any() or min(a.sum(), b.sum()) / max(a.sum(), b.sum()) < options.division_size_ratio:
        return None
    border = a & ndimage.binary_dilation(b)
    if not border.any() or depth[border].max() > options.division_neck * min(depth[a].max(), depth[b].max()):
        return None
    return [_uncrop(a, box, mother.shape), _uncrop(b, box, mother.shape)]


def _squeezes_neighbour(j, i, auto, labels, areas, reference, options) -> bool:
    """Would refreshing object i to auto mask j make it larger than `resplit_growth` × its reference area next to a
    touching object below `resplit_shrink` × its own? (The extra area is likely the squeezed neighbour's: the pair
    the resplit rule repairs.)"""
    if not options.resplit or not reference or not reference.get(i):
        return False
    mask = auto[j] & ~((labels > 0) & (labels != i))
    if mask.sum() <= options.resplit_growth * reference[i]:
        return False
    near = ndimage.binary_dilation(mask, iterations=max(1, round(options.touch_distance)))
    return any(
        reference.get(k) and areas.get(k, 0) <= options.resplit_shrink * reference[k]
        for k in (int(k) for k in np.unique(labels[near]) if k and k != i)
    )


def reclaim_swallowed(
    labels: np.ndarray,
    options: DiscoveryOptions,
    frame: int,
    usual_area: dict[int, float],
    good_masks: dict[int, tuple[int, np.ndarray]],
    alive: set[int] | None = None,
) -> list[Proposal]:
    """The "reclaim" rule (module docstring) on one frame: label image [H, W] (object ids) → proposals of kind
    "reclaim", each with `mother` = Y (the object that swallowed), `other` = X (the swallowed one) and masks
    [Y's part, X's part] ([H, W] bool). usual_area: {object id: median area on its last frames};
    good_masks: {object id: (frame, [H, W] bool mask) of its last frame with a usual-sized mask}; alive: the objects
    that exist on `frame` (an ended mother is not swallowed by her daughters; None: every object of good_masks)."""
    if not options.reclaim:
        return []
    areas = _areas(labels)
    proposals: list[Proposal] = []
    done: set[int] = set()
    # the most shrunken first: a vanished object before a merely squeezed one
    order = sorted(good_masks, key=lambda o: areas.get(o, 0) / max(usual_area.get(o) or 1.0, 1.0))
    for x in order:
        seen, ref_x = good_masks[x]
        usual_x = usual_area.get(x)
        if x in done or (alive is not None and x not in alive) or not usual_x:
            continue
        if not 0 < frame - seen <= options.reclaim_frames or areas.get(x, 0) >= options.reclaim_shrink * usual_x:
            continue
        # the neighbour that grew the most among those touching X (where X is or last was in full)
        near = ndimage.binary_dilation(ref_x | (labels == x), iterations=max(1, round(options.touch_distance)))
        loss = usual_x - areas.get(x, 0)
        y = _grown_neighbour(
            labels, near, x, areas, usual_area, options.reclaim_growth, options.reclaim_balance * loss,
            lambda k: k not in done and k in good_masks,
        )  # fmt: skip
        if y is None:
            continue
        usual_y = usual_area[y]
        union = (labels == x) | (labels == y)
        parts = _share_out(union, good_masks[y][1], ref_x)
        if parts is None:
            continue
        part_y, part_x = parts
        part_x = part_x | (ref_x & (labels == 0))  # where X was in full and nobody is now: still X
        if part_y.sum() < 0.5 * usual_y or part_x.sum() < max(options.min_area, 0.5 * usual_x):
            continue
        sign = "swallowed" if not areas.get(x) else "squeezed"
        proposals.append(Proposal("reclaim", [part_y, part_x], mother=y, other=x, sign=sign))
        done.update((x, y))
    return proposals


def resplit_pairs(
    labels: np.ndarray,
    options: DiscoveryOptions,
    reference: dict[int, float],
    alive: set[int] | None = None,
    usual: dict[int, float] | None = None,
) -> list[Proposal]:
    """The "resplit" rule (module docstring) on one frame: label image [H, W] (object ids) → proposals of kind
    "reclaim" with sign "resplit", `mother` = Y (the object that grew), `other` = X (the one that shrank), masks
    [Y's part, X's part] ([H, W] bool). reference: {object id: its area on the frame it was first tracked};
    usual: {object id: the median of its areas on its last frames} (X shrank below the larger of the two, Y grew
    above the smaller: a cell grows, a newborn daughter fast, but does not shrink); alive: the objects that may
    be split (None: all)."""
    if not options.resplit:
        return []
    usual = usual or {}
    areas = _areas(labels)
    proposals: list[Proposal] = []
    done: set[int] = set()
    high = {o: max(reference[o], usual.get(o, 0.0)) for o in areas if reference.get(o)}
    low = {o: min(reference[o], usual.get(o) or np.inf) for o in areas if reference.get(o)}
    for x in sorted(high, key=lambda o: areas[o] / high[o]):  # the most shrunken first
        if areas[x] > options.resplit_shrink * high[x] or x in done or (alive is not None and x not in alive):
            continue
        mask_x = labels == x
        near = ndimage.binary_dilation(mask_x, iterations=max(1, round(options.touch_distance)))
        loss = high[x] - areas[x]
        y = _grown_neighbour(
            labels, near, x, areas, low, options.resplit_growth, options.reclaim_balance * loss,
            lambda k: k not in done and (alive is None or k in alive),
        )  # fmt: skip
        if y is None:
            continue
        mask_y = labels == y
        union = mask_x | mask_y
        box, u, depth = _depth_in_box(union)
        mx, my = mask_x[box], mask_y[box]
        # one marker per cell: the deepest point of the union in X's mask, and in Y's mask away from X's
        # marker by at least X's radius (Y may have swallowed X's core)
        cx = np.unravel_index(int(np.argmax(np.where(mx, depth, -1))), u.shape)
        yy, xx = np.indices(u.shape)
        far = np.hypot(yy - cx[0], xx - cx[1]) >= np.sqrt(high[x] / np.pi)
        if not (my & far).any():
            continue
        cy = np.unravel_index(int(np.argmax(np.where(my & far, depth, -1))), u.shape)
        split = _watershed_in_box(u, depth, cx, cy)
        part_x, part_y = _uncrop(split == 1, box, union.shape), _uncrop(split == 2, box, union.shape)
        px, py = int(part_x.sum()), int(part_y.sum())
        # the split must bring both closer to the areas they started with, and keep each a cell
        before = abs(np.log(areas[x] / high[x])) + abs(np.log(areas[y] / low[y]))
        after = abs(np.log(max(px, 1) / high[x])) + abs(np.log(max(py, 1) / low[y]))
        if px <= areas[x] or after >= before or min(px, py) < options.min_area:
            continue
        if px < 0.5 * high[x] or py < 0.5 * low[y]:
            continue
        proposals.append(Proposal("reclaim", [part_y, part_x], mother=y, other=x, sign="resplit"))
        done.update((x, y))
    return proposals


def resplit_swallowed(
    labels: np.ndarray,
    options: DiscoveryOptions,
    reference: dict[int, float],
    usual: dict[int, float],
    lost: dict[int, np.ndarray],
    alive: set[int] | None = None,
) -> list[Proposal]:
    """ "Resplit" of a swallowed object (module docstring): for each object X that holds no pixel but was seen in
    full recently ({X: its last good mask [H, W] bool} in `lost`), the object Y that now covers the innermost
    pixel of that mask, if Y grew (≥ `resplit_growth` × the smaller of its reference and usual areas, by at
    least `reclaim_balance` of X's area), is split by shape between the two (a watershed of Y's distance
    transform from Y's deepest pixel within X's radius of that pixel, and from Y's deepest pixel away from that
    one by X's radius). → proposals of kind
    "reclaim", sign "resplit", masks [Y's part, X's part], when X's part is 0.5-1.5 × X's area (the larger of
    its reference and usual areas) and Y's part is nearer Y's own than Y's mask now."""
    if not options.resplit or not lost:
        return []
    areas = _areas(labels)
    proposals: list[Proposal] = []
    done: set[int] = set()
    for x, ref in lost.items():
        if x in done or (alive is not None and x not in alive) or not ref.any() or x in areas:
            continue
        high_x = max(reference.get(x, 0.0), usual.get(x, 0.0))
        if not high_x:
            continue
        ((py_, px_),) = _inner_points({x: ref}).astype(np.int64)
        y = int(labels[py_, px_])
        if not y or y == x or y in done or (alive is not None and y not in alive) or not reference.get(y):
            continue
        low_y = min(reference[y], usual.get(y) or reference[y])
        if areas[y] < options.resplit_growth * low_y or areas[y] - low_y < options.reclaim_balance * high_x:
            continue
        mask_y = labels == y
        box, u, depth = _depth_in_box(mask_y)
        # X's marker: the deepest pixel of Y's mask within X's radius of where X was (the centre of its lobe)
        yy, xx = np.indices(u.shape)
        radius = np.sqrt(high_x / np.pi)
        near = u & (np.hypot(yy - (py_ - box[0].start), xx - (px_ - box[1].start)) < radius)
        cx = np.unravel_index(int(np.argmax(np.where(near, depth, -1))), u.shape)
        far = u & (np.hypot(yy - cx[0], xx - cx[1]) >= radius)
        if not far.any():
            continue
        cy = np.unravel_index(int(np.argmax(np.where(far, depth, -1))), u.shape)
        split = _watershed_in_box(u, depth, cx, cy)
        part_x, part_y = _uncrop(split == 1, box, mask_y.shape), _uncrop(split == 2, box, mask_y.shape)
        px, py = int(part_x.sum()), int(part_y.sum())
        if not max(options.min_area, 0.5 * high_x) <= px <= 1.5 * high_x or py < 0.5 * low_y:
            continue
        if abs(np.log(py / low_y)) >= abs(np.log(areas[y] / low_y)):
            continue
        proposals.append(Proposal("reclaim", [part_y, part_x], mother=y, other=x, sign="resplit"))
        done.update((x, y))
    return proposals


def _grown_neighbour(labels, near, x, areas, baseline, growth, min_gain, eligible) -> int | None:
    """The object touching X that gained the most: among the ids of `labels` [H, W] under `near` (bool, X's
    neighbourhood) other than `x`, those `eligible(k)` allows whose area (`areas`) reached `growth` × their
    `baseline` area and exceeds it by ≥ `min_gain` pixels → the one with the largest gain, or None (also for ids
    without a baseline). Used by reclaim (baseline: usual areas) and resplit (the smaller of reference and usual)."""
    best, y = 0.0, None
    for k in (int(k) for k in np.unique(labels[near]) if k and k != x):
        base = baseline.get(k)
        if not base or not eligible(k):
            continue
        gain = areas.get(k, 0) - base
        if areas.get(k, 0) >= growth * base and gain >= min_gain and gain > best:
            best, y = gain, k
    return y


def _depth_in_box(mask: np.ndarray) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """The crop the splits by shape work on: mask [H, W] bool (not empty) → (its bounding box grown by one pixel
    on each side, clipped to the frame, so the distance transform sees background all round; the mask in that
    box; its distance transform there)."""
    rows, cols = np.nonzero(mask)
    box = (slice(max(rows.min() - 1, 0), rows.max() + 2), slice(max(cols.min() - 1, 0), cols.max() + 2))
    crop = mask[box]
    return box, crop, ndimage.distance_transform_edt(crop)


def _watershed_in_box(crop: np.ndarray, depth: np.ndarray, first, second) -> np.ndarray:
    """Split `crop` (bool, in its box) by a watershed of its distance transform `depth` from two marker pixels
    (row, col in the box) → int labels in the box: 1 for `first`'s part, 2 for `second`'s, 0 outside the mask.
    Two touching convex bodies meet where their union is pinched: the watershed line falls there."""
    from skimage.segmentation import watershed

    markers = np.zeros(crop.shape, dtype=np.int32)
    markers[first], markers[second] = 1, 2
    return watershed(-depth, markers, mask=crop)


def _uncrop(part: np.ndarray, box: tuple[slice, slice], shape: tuple[int, ...]) -> np.ndarray:
    """A bool mask of the box back into a frame of `shape` (False outside the box)."""
    full = np.zeros(shape, dtype=bool)
    full[box] = part
    return full


def _share_out(union: np.ndarray, seed_a: np.ndarray, seed_b: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Split `union` [H, W] bool between two objects: each pixel goes to the nearer of their seed masks (pixels
    in both seeds count for neither). → (part a, part b), or None when a seed is empty. Works on the bounding box
    of the three masks (distance transforms cost per pixel)."""
    only_a, only_b = seed_a & ~seed_b, seed_b & ~seed_a
    if not only_a.any() or not only_b.any() or not union.any():
        return None
    rows, cols = np.nonzero(union | only_a | only_b)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    dist_a = ndimage.distance_transform_edt(~only_a[box])
    dist_b = ndimage.distance_transform_edt(~only_b[box])
    part_a = np.zeros_like(union)
    part_a[box] = union[box] & (dist_a <= dist_b)
    return part_a, union & ~part_a


def relink_candidate(
    mask: np.ndarray,
    frame: int,
    options: DiscoveryOptions,
    labels: np.ndarray,
    usual_area: dict[int, float],
    good_masks: dict[int, tuple[int, np.ndarray]],
    alive: set[int] | None = None,
    taken: set[int] = frozenset(),
) -> int | None:
    """Gap closing (module docstring, "relink"): the lost object an arrival's mask [H, W] bool is, or None.
    A candidate exists on `frame` (alive), holds no pixel of `labels` there, was last seen (good_masks) at most
    `relink_frames` frames ago, and its last mask lies within `relink_distance` radii (of a circle of its usual
    area) of the arrival's mask; the nearest (centroid to centroid) wins. taken: objects already relinked."""
    if not options.relink or not mask.any():
        return None
    present = set(_areas(labels))
    cy, cx = (c.mean() for c in np.nonzero(mask))
    best, best_distance = None, np.inf
    for obj, (seen, ref) in good_masks.items():
        if obj in present or obj in taken or (alive is not None and obj not in alive):
            continue
        if not 0 < frame - seen <= options.relink_frames or not ref.any():
            continue
        radius = np.sqrt((usual_area.get(obj) or ref.sum()) / np.pi)
        ry, rx = (c.mean() for c in np.nonzero(ref))
        distance = float(np.hypot(cy - ry, cx - rx))
        if distance <= options.relink_distance * radius and distance < best_distance:
            best, best_distance = obj, distance
    return best


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


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


class ChangeSampler:
    """The clicks of one discovery frame under sampling="changed" (see the module docstring, "Sampling").

    frame_shape: (Y, X); points_per_side: the grid. `clicks(features, labels)` → [N, 2] (y, x) pixels, and
    records which grid points were clicked (their feature neighbourhood becomes the new reference; with `near`, a
    point clicked only for `signal` keeps its reference unless signal_updates_reference).
    """

    def __init__(
        self,
        frame_shape: tuple[int, int],
        points_per_side: int,
        threshold: float,
        revisit: int,
        signal_updates_reference: bool = False,
    ):
        from .automatic import point_grid

        h, w = int(frame_shape[0]), int(frame_shape[1])
        grid = point_grid(int(points_per_side))  # (x, y) in the unit square
        self.shape = (h, w)
        self.points = np.stack([grid[:, 1] * h, grid[:, 0] * w], axis=1)  # (y, x) pixels
        self.threshold, self.revisit = float(threshold), int(revisit)
        self.reference = None  # [N, C, 9]: each point's 3 x 3 feature neighbourhood when it was last clicked
        self.age = np.zeros(len(self.points), dtype=np.int64)
        self.last_count = 0
        self.signal_updates_reference = bool(signal_updates_reference)

    def pixels(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cols) [N] int: the pixel each grid point lies in."""
        iy = np.minimum(self.points[:, 0].astype(np.int64), self.shape[0] - 1)
        ix = np.minimum(self.points[:, 1].astype(np.int64), self.shape[1] - 1)
        return iy, ix

    def _patches(self, features) -> Any:
        import torch
        import torch.nn.functional as F

        feats = torch.as_tensor(features).detach().float().cpu()
        c, fh, fw = feats.shape
        unfolded = F.unfold(feats[None], 3, padding=1)[0].view(c, 9, fh * fw)  # [C, 9, cells]
        iy = np.minimum((self.points[:, 0] / self.shape[0] * fh).astype(np.int64), fh - 1)
        ix = np.minimum((self.points[:, 1] / self.shape[1] * fw).astype(np.int64), fw - 1)
        return unfolded[:, :, torch.as_tensor(iy * fw + ix)].permute(2, 0, 1)  # [N, C, 9]

    def clicks(
        self,
        features,
        labels: np.ndarray,
        watch: Callable[[int, int, float], bool] | None = None,
        signal: np.ndarray | None = None,
        near: np.ndarray | None = None,
    ) -> np.ndarray:
        """watch: which tracked objects get their two clicks (`object_clicks`); None: all of them. signal: [Y, X]
        bool, where a grid click may reveal something (`untracked_signal`): given, the grid points there that no
        tracked mask covers are clicked on every call and the change test is not used; None: the change test.
        near: [Y, X] bool (`near_signal`): the change test's points are clicked only where it is True (a point
        left out keeps its reference features: a change there still counts when signal comes near); with both,
        the points of `signal` are clicked too, changed or not. Both may also be [N] bool, one value per grid point
        (`pixels()`)."""
        patches = self._patches(features)
        first = self.reference is None
        if first:
            due = np.ones(len(self.points), dtype=bool)
        else:
            change = (patches - self.reference).norm(dim=1) / (self.reference.norm(dim=1) + 1e-6)  # [N, 9]
            due = (change.max(dim=1).values > self.threshold).numpy() | (self.age + 1 >= self.revisit)
        # a point inside a tracked mask cannot reveal a new object (the per-object clicks look for divisions)
        iy, ix = self.pixels()

        def at_points(where):  # a [Y, X] map read at the grid's pixels, or already one value per grid point
            where = np.asarray(where)
            return where if where.ndim == 1 else where[iy, ix]

        tested = None  # with `near`: the points the change test picked (and `near` let through)
        if near is not None:
            due &= at_points(near)
            tested = due.copy()
            if signal is not None:
                due |= at_points(signal)
        elif signal is not None:
            due = at_points(signal).copy()
        due &= np.asarray(labels)[iy, ix] == 0
        if first:
            self.reference = patches.clone()
            # staggered revisits: 1 / revisit of the grid falls due each frame, not all of it every revisit frames
            self.age = np.arange(len(self.points), dtype=np.int64) % self.revisit
        else:
            # a point clicked only for the untracked signal beside it keeps the reference of its last change-test
            # click (`signal_updates_reference` False): else its features there, often those of a newcomer's first
            # frame, become the reference, and the newcomer's growth on the next frames no longer counts as a
            # change once a tracked cell covers it (tuning seed 4,100,002: its arrival found a frame later)
            moved = due if tested is None or self.signal_updates_reference else due & tested
            self.reference[torch_index(moved)] = patches[torch_index(moved)]
            self.age[moved] = 0
            self.age[~moved] += 1
        grid = self.points[due]
        probes = object_clicks(labels, watch)
        out = np.concatenate([grid, probes]) if len(probes) else grid
        self.last_count = len(out)
        return out


def _signal(intensity: np.ndarray) -> np.ndarray:
    """Bright pixels: the frame [Y, X] smoothed (Gaussian, sigma 2) above half-way from its median (the background,
    where cells are sparse) to its Otsu threshold. [Y, X] bool."""
    from skimage.filters import threshold_otsu

    smooth = ndimage.gaussian_filter(np.asarray(intensity, dtype=np.float32), 2.0)
    background = float(np.median(smooth))
    return smooth > background + 0.5 * (threshold_otsu(smooth, nbins=256) - background)


def near_signal(
    intensity: np.ndarray, reach: float, min_area: int, bright: np.ndarray | None = None, at=None
) -> np.ndarray:
    """Where a grid click can answer with a cell at all: [Y, X] bool, the pixels within `reach` px of signal
    (`_signal`, tracked cells included) in pieces of ≥ min_area / 4 px. intensity: [Y, X] 0…1. A click on dark
    background farther than that answers with nothing (or with a blob of noise); the change test picks such
    points whenever a cell moves within a feature cell and a half of them (measured on tuning seed 4,100,001:
    27 of the 37 changed points of a frame lay more than 8 px from any signal). bright: `_signal(intensity)` when
    already computed for the frame. at: (rows, cols) [N] int → the map at those pixels only, [N] bool."""
    found = _signal(intensity) if bright is None else bright
    pieces, n = ndimage.label(found)
    if n:
        sizes = np.bincount(pieces.ravel())
        found = (sizes >= max(1, min_area // 4))[pieces] & found
    return _within_reach(found, reach, at)


def untracked_signal(
    intensity: np.ndarray, labels: np.ndarray, reach: float, min_area: int, bright: np.ndarray | None = None, at=None
) -> np.ndarray:
    """Where a grid click can reveal an object no tracked mask holds: [Y, X] bool, the pixels within `reach` px of
    untracked signal. intensity: [Y, X] 0…1 (`TrackingSession.frame_intensity`); labels: [Y, X] tracked ids.
    Signal: the frame smoothed (Gaussian, sigma 2) brighter than half-way from its median (the background, where
    cells are sparse) to its Otsu threshold. Untracked: outside every tracked mask, in a piece of ≥ min_area / 4 px
    that is more than 3 px thick somewhere (the image border does not count as an edge: a cell entering the field
    is thin there) — the blurred rim around a tracked cell is bright too, but thin. A click on dark background or
    beside a tracked cell only answers with nothing or with that cell. bright: `_signal(intensity)` when already
    computed for the frame. at: (rows, cols) [N] int → the map at those pixels only, [N] bool."""
    found = (_signal(intensity) if bright is None else bright) & (np.asarray(labels) == 0)
    pieces, n = ndimage.label(found)
    if not n:
        return _within_reach(found, reach, at)
    core = ndimage.binary_erosion(found, iterations=3, border_value=1)
    thick = np.zeros(n + 1, dtype=bool)
    thick[np.unique(pieces[core])] = True
    sizes = np.bincount(pieces.ravel(), minlength=n + 1)
    keep = thick & (sizes >= max(1, min_area // 4))
    keep[0] = False
    return _within_reach(keep[pieces], reach, at)


def _within_reach(found: np.ndarray, reach: float, at=None) -> np.ndarray:
    """[Y, X] bool: the pixels at most `reach` px (Euclidean) from a pixel of `found` [Y, X] bool; with at = (rows,
    cols) only at those N pixels, [N] bool — the same test (the distance of the nearest pixel, its root taken in
    float64 as scipy's distance transform takes it) in a window around each: the grid clicks read their own
    pixels only, and the transform of the whole frame cost as much as the rest of the signal maps."""
    if at is None:
        if not found.any():
            return found
        return ndimage.distance_transform_edt(~found) <= reach
    rows, cols = (np.asarray(a, dtype=np.int64) for a in at)
    if not found.any():
        return np.zeros(len(rows), dtype=bool)
    r = int(np.floor(reach))
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(found, r), (2 * r + 1, 2 * r + 1))[rows, cols]
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float64)
    nearest = np.where(windows, dy * dy + dx * dx, np.inf).min(axis=(1, 2))
    return np.sqrt(nearest) <= reach


def torch_index(mask: np.ndarray):
    import torch

    return torch.as_tensor(np.asarray(mask, dtype=bool))


def object_clicks(labels: np.ndarray, watch: Callable[[int, int, float], bool] | None = None) -> np.ndarray:
    """Two clicks per tracked object, one in each half along its long axis (half-way between the centroid and
    the end of the long axis, moved to the object's nearest pixel): a dividing cell answers with its two daughters,
    an undivided one with itself. watch(object id, area, elongation) → False skips an object (elongation: the
    ratio of its long to its short axis, 1 for a disc); None clicks every object. [N, 2] (y, x)."""
    labels = np.asarray(labels)
    out = []
    for obj, where in enumerate(ndimage.find_objects(labels.astype(np.int64, copy=False)), start=1):
        if where is None:
            continue
        ys, xs = np.nonzero(labels[where] == obj)  # inside the object's box: its pixels in the same (raster) order
        if len(ys) < 3:
            continue
        ys, xs = ys + where[0].start, xs + where[1].start
        cy, cx = ys.mean(), xs.mean()
        cov = np.cov(np.stack([ys - cy, xs - cx]))
        values, vectors = np.linalg.eigh(cov)
        if watch is not None:
            elongation = float(np.sqrt(max(values[-1], 0.0) / max(values[0], 1e-6)))
            if not watch(obj, len(ys), elongation):
                continue
        axis = vectors[:, -1] * 2.0 * np.sqrt(max(values[-1], 0.0))  # (dy, dx) to the end of the long axis
        for sign in (-1.0, 1.0):
            py, px = cy + 0.5 * sign * axis[0], cx + 0.5 * sign * axis[1]
            k = int(np.argmin((ys - py) ** 2 + (xs - px) ** 2))
            out.append((float(ys[k]) + 0.5, float(xs[k]) + 0.5))
    return np.asarray(out, dtype=np.float64).reshape(-1, 2)


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
    yielded again (consumers keep the last result of a frame). Only forward passes discover (a division read backwards is a merge).
    events: a list that receives one dict per event. segment(session, frame) → masks replaces
    segment-everything (tests; other detectors)."""
    if direction not in ("forward", "both"):
        raise InputError("discovery runs forward in time: use direction 'forward' (or 'both': the backward half "
                         "then tracks without discovery)")  # fmt: skip
    segment = segment or options.detector
    if options.max_cond_frames is not None:  # re-prompts add conditioning frames: attend to the nearest k only
        session.max_cond_frames = int(options.max_cond_frames)
    sampler = None
    events = events if events is not None else []
    next_id = max(session.obj_ids, default=0) + 1
    born: dict[int, int] = {}  # object → the frame it was first seen on (for min_cycle)
    previous_area: dict[int, int] = {}
    history: dict[int, list[int]] = {}  # object → its areas on the last frames (the absorbed-neighbour test)
    largest: dict[int, int] = {}
    reference: dict[int, float] = {}  # object → its area on the first frame it was tracked on (resplit)
    previous_labels = None
    previous_whole = False  # previous_labels holds every object's whole mask (not an evicted frame's)
    good: dict[int, tuple[int, np.ndarray]] = {}  # object → (frame, mask) of its last usual-sized mask
    first = None
    # every frame, also those a run without discovery tracked already: each is searched for newcomers and divisions
    for result in session.propagate("forward", start=start, every_frame=True):
        yield result
        t = result.frame
        first = t if first is None else first
        for obj in result.obj_ids:  # objects of the start frame may be of any age: no min_cycle for them
            born.setdefault(obj, t if t > first else -(10**9))
        offset = t - first
        usual = {o: float(np.median(h)) for o, h in history.items() if h}
        # a frame tracked before whose masks the session no longer holds in full: the missing cells would look new
        if offset % options.every or (offset == 0 and not options.on_start_frame) or result.evicted:
            areas = _areas(result.labels)
            previous_area = areas
            previous_labels = result.labels
            previous_whole = not result.evicted
            if not result.evicted:  # (its masks are not whole)
                _remember_good(good, result.labels, areas, usual, t, options)
                for obj, area in areas.items():
                    reference.setdefault(obj, float(area))
            _remember(history, largest, areas)
            continue
        alive = set(result.obj_ids)
        # repairs from the label image and one click per weak object first: the clicks and the other rules then
        # see the repaired frame
        reclaimed: set[int] = set()
        targets = _weak(good, result.labels, alive, usual, t, options, reference)
        if targets:
            areas = _areas(result.labels)
            grown = {o for o, a in areas.items() if usual.get(o) and a >= options.reclaim_growth * usual[o]}
            cap = {o: options.refresh_max_usual * max(usual[o], largest.get(o, 0)) for o in targets}
            found = probe_objects(session, t, targets, result.labels, grown, cap, options)
            for obj, mask in found.items():
                givers = [int(y) for y in np.unique(result.labels[mask]) if y and y != obj]
                if any(((result.labels == y) & ~mask).sum() < 0.5 * usual.get(y, 0) for y in givers):
                    continue  # the answer would leave a neighbour a fragment: it is the neighbour's shape
                for y in givers:  # a grown neighbour gives the pixels back
                    session.add_prompt(t, y, mask=(result.labels == y) & ~mask)
                session.add_prompt(t, obj, mask=mask)
                if obj in areas:
                    events.append({"frame": t, "kind": "reclaim", "objects": [*givers, obj], "sign": "probe"})
                else:
                    events.append({"frame": t, "kind": "relink", "object": obj, "gap": t - good[obj][0],
                                   "sign": "probe", "from": givers})  # fmt: skip
                reclaimed.update((*givers, obj))  # re-prompted on this frame: no refresh or division of them here
            if found:
                result = session.result(t)
        for p in reclaim_swallowed(result.labels, options, t, usual, good, alive - reclaimed):
            session.add_prompt(t, p.mother, mask=p.masks[0])
            session.add_prompt(t, p.other, mask=p.masks[1])
            events.append({"frame": t, "kind": "reclaim", "objects": [p.mother, p.other], "sign": p.sign})
            reclaimed.update((p.mother, p.other))
        swallowed = _lost(good, result.labels, alive - reclaimed, t, options)
        for p in [
            *resplit_pairs(result.labels, options, reference, alive - reclaimed, usual),
            *resplit_swallowed(result.labels, options, reference, usual, swallowed, alive - reclaimed),
        ]:
            if p.mother in reclaimed or p.other in reclaimed:
                continue
            session.add_prompt(t, p.mother, mask=p.masks[0])
            session.add_prompt(t, p.other, mask=p.masks[1])
            events.append({"frame": t, "kind": "reclaim", "objects": [p.mother, p.other], "sign": p.sign})
            reclaimed.update((p.mother, p.other))
        if reclaimed:
            result = session.result(t)
        lost = _lost(good, result.labels, alive, t, options) if options.relink else {}
        if segment is not None:
            masks = segment(session, t)
        elif options.sampling == "grid":
            masks = segment_frame(session, t, options.generator)
        else:
            if sampler is None:
                sampler = ChangeSampler(
                    session.frame_shape,
                    options.generator.get("points_per_side", 16),
                    options.change_threshold,
                    options.revisit,
                    options.signal_updates_reference,
                )
            watch = None
            watched: dict[int, bool] = {}
            if options.object_clicks == "watch":

                def watch(obj, area, elongation, t=t, usual=usual, watched=watched):
                    u = usual.get(obj)
                    watched[obj] = (
                        not u
                        or t - born.get(obj, t) < options.watch_young
                        or abs(area / u - 1.0) > options.watch_area
                        or elongation >= options.watch_elongation
                    )
                    return watched[obj]

            signal = near = None
            intensity = session.frame_intensity(t) if options.grid_signal != "off" else None
            if intensity is not None:
                # half the grid spacing: a cell between grid points is still clicked from its nearest one
                reach = 0.5 * max(session.frame_shape) / max(1, options.generator.get("points_per_side", 16))
                bright = _signal(intensity)  # smoothed and thresholded once for both maps
                at = sampler.pixels()  # the maps are read at the grid's pixels only
                signal = untracked_signal(intensity, result.labels, reach, options.min_area, bright, at)
                if options.grid_signal == "near":
                    near = near_signal(intensity, reach, options.min_area, bright, at)
            clicks = sampler.clicks(session.image_features(t), result.labels, watch, signal, near)
            params = {k: v for k, v in generator_for(session, options.generator).items() if k != "points_per_side"}
            settled = None
            if options.skip_settled and watched:  # unwatched cells: a click there answers with the cell itself
                calm = [o for o, w in watched.items() if not w]
                settled = np.where(np.isin(result.labels, calm), result.labels, 0)
            auto = session.segment_points(t, clicks, settled=settled, **params)
            masks = [np.asarray(o.mask, dtype=bool) for o in auto.objects]
        proposals = compare_masks(
            result.labels,
            masks,
            options,
            previous_area=previous_area,
            # a division ends the mother on t - 1: never on the pass's first frame; a pair just shared out again
            # by "reclaim" is no division either
            may_divide=lambda obj, t=t, first=first, reclaimed=reclaimed: (
                t > first and t - born.get(obj, t) >= options.min_cycle and obj not in reclaimed
            ),
            usual_area=usual,
            largest_area=largest,
            previous_labels=previous_labels,
            lost=lost,
            reference_area=reference,
        )
        ended: set[int] = set()
        went_back = False
        relinked: set[int] = {p.mother for p in proposals if p.kind == "relink"}
        for p in proposals:
            if p.kind == "relink":
                session.add_prompt(t, p.mother, mask=p.masks[0])
                events.append(
                    {"frame": t, "kind": "relink", "object": p.mother, "gap": t - good[p.mother][0], "sign": p.sign}
                )
            elif p.kind == "refresh":
                if p.mother in ended or p.mother in reclaimed:
                    continue
                session.add_prompt(t, p.mother, mask=p.masks[0])
                events.append({"frame": t, "kind": "refresh", "object": p.mother, "sign": p.sign})
            elif p.kind == "division":
                mother = p.mother
                # the daughters were already there, touching, on the frame before (a cell that has just divided
                # looks like one to the tracker and to segment everything): the division goes back one frame
                before = None
                if (
                    options.division_back
                    and previous_whole
                    and t - 1 > first
                    and t - 1 - born[mother] >= options.min_cycle
                ):
                    before = split_before(previous_labels == mother, p.masks, options)
                start = t if before is None else t - 1
                session.end_object(mother, start - 1)
                ended.add(mother)
                daughters = []
                for k, mask in enumerate(p.masks):
                    session.add_object(next_id, parent=mother, start=start)
                    if before is not None:
                        session.add_prompt(t - 1, next_id, mask=before[k])
                    session.add_prompt(t, next_id, mask=mask)
                    daughters.append(next_id)
                    born[next_id] = start
                    next_id += 1
                event = {"frame": start, "kind": "division", "mother": mother, "daughters": daughters, "sign": p.sign}
                if before is not None:
                    event["found"] = t  # found on t, placed on the frame before
                    went_back = True
                events.append(event)
            else:
                lost = relink_candidate(
                    p.masks[0], t, options, result.labels, usual, good, alive - ended, taken=relinked | reclaimed
                )
                if lost is not None:  # gap closing: the lost object comes back
                    session.add_prompt(t, lost, mask=p.masks[0])
                    events.append(
                        {"frame": t, "kind": "relink", "object": lost, "gap": t - good[lost][0], "sign": "near"}
                    )
                    relinked.add(lost)
                    continue
                session.add_object(next_id, start=t)
                session.add_prompt(t, next_id, mask=p.masks[0])
                events.append({"frame": t, "kind": "arrival", "object": next_id})
                born[next_id] = t
                next_id += 1
        if went_back:  # frame t - 1 changed (the mother ends before it, her daughters start on it)
            yield session.result(t - 1)
        if proposals or reclaimed:
            result = session.result(t)
            yield result
        areas = _areas(result.labels)
        previous_area = areas
        previous_labels = result.labels
        previous_whole = True
        _remember_good(good, result.labels, areas, usual, t, options)
        _remember(history, largest, areas)
        for obj, area in areas.items():
            reference.setdefault(obj, float(area))
    if direction == "both" and first is not None and first > 0:
        yield from session.propagate("backward", start=first)


def _lost(
    good: dict[int, tuple[int, np.ndarray]], labels: np.ndarray, alive: set[int], frame: int, options: DiscoveryOptions
) -> dict[int, np.ndarray]:
    """{object id: last good mask} of the objects that exist on `frame` but hold no pixel of it, last seen at most
    `relink_frames` frames ago (the candidates of gap closing)."""
    present = set(_areas(labels))
    return {
        obj: mask
        for obj, (seen, mask) in good.items()
        if obj in alive and obj not in present and 0 < frame - seen <= options.relink_frames
    }


def _weak(
    good: dict[int, tuple[int, np.ndarray]],
    labels: np.ndarray,
    alive: set[int],
    usual: dict[int, float],
    frame: int,
    options: DiscoveryOptions,
    reference: dict[int, float] | None = None,
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """The objects to probe on `frame`: {object id: (where to click, its last good mask)}, [H, W] bool each.
    Lost (`relink`): it exists but holds no pixel, seen in full at most `relink_frames` ago → click on its last
    good mask. Shrunk (`reclaim`): below `reclaim_shrink` of its usual area, or below `reclaim_reference` of its
    reference area (`reference`: {object id: its area on the first frame it was tracked}, when given), seen in
    full at most `reclaim_frames` ago → click on its mask now."""
    areas = _areas(labels)
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for obj, (seen, ref) in good.items():
        u, a = usual.get(obj), areas.get(obj, 0)
        if obj not in alive or not u or frame <= seen:
            continue
        if not a and options.relink and frame - seen <= options.relink_frames:
            out[obj] = (ref, ref)
        elif (
            a
            and options.reclaim
            and frame - seen <= options.reclaim_frames
            and (a < options.reclaim_shrink * u or a < options.reclaim_reference * (reference or {}).get(obj, 0.0))
        ):
            out[obj] = (labels == obj, ref)
    return out


def probe_objects(
    session,
    frame: int,
    targets: dict[int, tuple[np.ndarray, np.ndarray]],
    labels: np.ndarray,
    claimable: set[int],
    cap: dict[int, float],
    options: DiscoveryOptions,
) -> dict[int, np.ndarray]:
    """One click per target object ({object id: (where to click, reference shape)}, [H, W] bool) on the innermost
    pixel of where to click, decoded by the session's model without the generator's quality filters (the test is
    the shape instead). Each answer loses the pixels other objects hold, except those of `claimable` objects
    (neighbours that grew: they give them back) — a click on a dim cell beside a bright one often answers with
    both, and what is left is the dim cell — and must be ≥ `min_area` and ≤ cap[object] pixels. A lost object
    (no pixel now): the answer with the best IoU ≥ `relink_iou` against its last good mask. A shrunk one: the
    largest answer that holds ≥ 80 % of its fragment and is ≥ `refresh_growth` × the fragment (a fast-moving
    daughter has left her last good mask behind: no shape test). → {object id: [H, W] bool mask}."""
    objs = [o for o, (click, _) in targets.items() if click.any()]
    if not objs:
        return {}
    points = _inner_points({o: targets[o][0] for o in objs})
    # only the raw answers are read (`candidates`): no recentring, no label image to resolve
    found = session.segment_points(
        frame,
        points,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        box_nms_thresh=1.0,
        min_kept_fraction=0.0,
        recenter=False,
    )
    taken = np.zeros(labels.shape, dtype=bool)
    out: dict[int, np.ndarray] = {}
    for obj, (py, px) in zip(objs, points, strict=True):
        fixed = (labels > 0) & (labels != obj) & ~np.isin(labels, list(claimable))
        now = labels == obj
        best, best_score = None, 0.0
        for cand in found.candidates:
            if abs(cand.point[0] - py) > 1e-6 or abs(cand.point[1] - px) > 1e-6:
                continue
            mask = cand.mask & ~taken & ~fixed
            area = int(mask.sum())
            if not options.min_area <= area <= cap.get(obj, np.inf):
                continue
            if now.any():  # shrunk: the answer holds (most of) the fragment and is a cell around it
                inside = (mask & now).sum() / now.sum()
                ok = inside >= 0.8 and area >= options.refresh_growth * now.sum()
                score = float(area) if ok else 0.0
            else:  # lost: the answer has its shape where it was last seen
                score = _iou(mask, targets[obj][1])
                score = score if score >= options.relink_iou else 0.0
            if score > best_score:
                best, best_score = mask, score
        if best is not None:
            out[obj] = best
            taken |= best
    return out


def _inner_points(masks: dict[int, np.ndarray]) -> np.ndarray:
    """One click per mask, on its innermost pixel (farthest from its border). [N, 2] (y, x), pixel centres."""
    out = []
    for mask in masks.values():
        if mask.any():
            # the transform of the mask's box grown by a pixel (clipped to the frame, as the frame clips the whole
            # frame's transform) is the whole frame's there, and the first deepest pixel in raster order is the same
            box, _, depth = _depth_in_box(mask)
            y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
            out.append((y + box[0].start + 0.5, x + box[1].start + 0.5))
    return np.asarray(out, dtype=np.float64).reshape(-1, 2)


def _remember_good(
    good: dict[int, tuple[int, np.ndarray]],
    labels: np.ndarray,
    areas: dict[int, int],
    usual: dict[int, float],
    frame: int,
    options: DiscoveryOptions,
) -> None:
    """Keep each object's last usual-sized mask (within reclaim_shrink … reclaim_growth of its usual area, or its
    first): what "reclaim" shares a swallowed pair out by and where "relink" looks for a lost object."""
    if not (options.reclaim or options.relink):
        return
    for obj, area in areas.items():
        u = usual.get(obj)
        if u is None or options.reclaim_shrink * u <= area <= options.reclaim_growth * u:
            good[obj] = (frame, labels == obj)


def _remember(history: dict[int, list[int]], largest: dict[int, int], areas: dict[int, int], keep: int = 50) -> None:
    for obj, area in areas.items():
        h = history.setdefault(obj, [])
        h.append(area)
        del h[:-keep]
        largest[obj] = max(largest.get(obj, 0), area)


def _areas(labels: np.ndarray) -> dict[int, int]:
    counts = np.bincount(labels.ravel().astype(np.int64))
    return {int(i): int(c) for i, c in enumerate(counts) if i and c}
