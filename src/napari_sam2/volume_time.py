"""`VolumeTimeSession`: objects followed through z and through time together in a 3D+t stack [T, Z, Y, X].

One object is one 3-D mask per time point. Prompt it on any (t, z) slice; propagation fills z at that time point,
then carries the object to t ± 1, fills z there, and so on, outward in time.

The streams (every one is a plain `TrackingSession`, so all model logic — memory attention, pruning, corrections —
is the 2-D engine's):
  * z-stream (one per object and time point, made when that time point is computed and dropped when it is done):
    a `TrackingSession` over the slices of time point t, seeded on one or more slices and propagated both ways in
    z. All objects' z-streams of one time point share one image-feature cache, so each slice is encoded once.
    One session per object (not one for all) because each object is seeded on its own slice: one session would
    track an object seeded on slice 9 "forward" from the lowest seed of any object, in the wrong order.
  * t-stream (one per object, for the whole run): a `TrackingSession` over time whose frame t is ONE slice of
    time point t — the object's anchor slice. Its memory bank is SAM 2's (bounded: `num_maskmem` memories and 16
    pointers), so memory stays flat in T.

The hand-over between time points (t → t+1; t → t−1 in a backward pass is the mirror image):
  1. the anchor slice z_a = the slice of the object's finished 3-D mask at t that holds the most signal: the
     largest summed image intensity (above the stack's low end) inside the mask. Nuclei move in z between time
     points, so the anchor follows the object: it is re-chosen at every time point from the 3-D result, never
     fixed at the prompted slice. Not simply the widest slice: under the axial blur of a microscope the z-stream
     over-segments a nucleus's cap slices (a dim halo as wide as its middle), so a nucleus diving through the
     slices kept its widest mask on the slice it came from and was lost a few time points later; the centre
     slice is where the light is (bench_4d: 3-D IoU 0.629 → 0.661 on the held-out seed with the diving nucleus).
     The t-stream sees image (t+1, z_a) as its frame t+1 (the object moved less than half its depth, so z_a
     still cuts it near its middle, where it is large and clear).
  2. the t-stream tracks frame t+1 from its memory (the previous time points' anchor slices and the prompted
     time points) — SAM 2 does the motion in (y, x) — and its mask on (t+1, z_a) seeds the z-stream at t+1 as a
     mask prompt on slice z_a. An empty mask (object score ≤ 0: the object left or is hidden) seeds nothing: the
     object is absent at t+1, and the t-stream keeps going (SAM 2 can find it again later).
  3. the z-stream at t+1 propagates both ways from z_a; its 3-D mask gives the next anchor.
  Where the user prompted an object at time point t (on any slices), those prompts define it at t (the carried
  seed is not used there): its z-stream is seeded with them, and the finished 3-D mask's anchor slice becomes a
  conditioning frame (mask prompt) of its t-stream. So a correction on any (t, z) sticks and re-steers every later
  time point of that object (earlier ones in a backward pass), as a correction does in the 2-D session.
  Why not the previous 3-D mask's anchor slice as a mask prompt at t+1: a mask prompt is taken as the answer on
  its slice, so the mask of t would be pasted unchanged onto t+1 however far the nucleus moved.

Where an object ends in z (the axial edge rule, `axial_trim`, on by default: `z_edge` = 0.5). A microscope blurs
2-4x more along z than in (y, x), so a nucleus's top and bottom slices (and the one past each) show a dim halo as
wide as its middle, and the z-stream draws it whole (nano-fluo on the 4-D generator's tuning seeds at t = 0: the outermost true
slice drawn 2.15x too large, slice IoU 0.44; the middle slices 0.88, as good as a click on the true centre of each
slice gives, 0.84). After an object's z-stream at t, each voxel of its 3-D mask is kept where the image (smoothed by
1 pixel in (y, x), minus the 10th percentile of a ring around the mask on that slice: `Z_EDGE_BACKGROUND`) reaches
half the brightest voxel of its (y, x) column in the mask — the half maximum, where a blurred edge is. Columns no
brighter than the background (a dark object) are left alone, and so are slices the user prompted at t. It reads the
object's box of its slices once more (not the whole slices) and runs no model; the z-stream's memory is not changed.
Chosen on tuning seeds (3-D IoU of the z-streams at t = 0 0.771 → 0.842; the outermost slices 0.44 → 0.65, drawn
0.8x; the middle ones unchanged); `z_edge=None` turns it off. The plain z-stack path (`TrackingSession(z_edge=...)`, see
`napari_sam2.volume`) applies the same rule to a ZYX stack tracked along z.

Cost per (t, z) slice over a plain z-stream: one more tracked frame per object and time point (the t-stream; its
image features are the z-stream's, never encoded twice). Memory: one time point's features and logits at a time,
each object's t-stream bank, and each finished time point's labels zlib-compressed (`result`).

Discovery of divisions (`propagate_volume_with_discovery`; `track(..., discover=...)` and the CLI's
`--discover-every K` on a 3D+t stack). After each discovery time point t of a forward pass (every k-th, counted
from the pass's start) is computed, every object's finished 3-D mask is examined — no extra model run, the masks
are what the z-streams produced:
  1. split: 2-D discovery's rule "the mother's mask falls into two comparable pieces" (`discovery.compare_masks`,
     rule b) on the label volume, so the pieces are 3-D connected components: the two largest each hold ≥
     `division_min_share` (0.2) of her voxels, smaller / larger ≥ `division_size_ratio` (0.5), the larger at most
     `division_max_daughter` (0.8) of her usual volume (median over her time points so far: else it is the
     whole mother beside a stray piece), and — 3-D only — each piece has ≥ `PIECE_FROM_MOTHER` (0.2) of its
     voxels inside her mask at t − 1 (daughters come out of their mother; a piece of a neighbour she grabbed lies
     elsewhere: that was a false division on a tuning seed). A mother younger than `min_cycle` time points does
     not divide again; nothing divides on the pass's first time point.
  2. when: nano-fluo answers two daughters that still touch with one mask, so the pieces appear one time point
     after the division. The mother's mask at t − 1 is shared out between the two pieces (each voxel to the
     nearer); if it has a narrow waist — the two parts touch over ≤ `DIVISION_NECK` (0.65) × (smaller part's
     volume)^(2/3) voxels; 0.25–0.49 where daughters first touch, 0.81–1.33 on mothers, tuning seeds — it already
     was the two daughters, and the division is dated t − 1 (`neck_split`).
  3. the lineage: the mother ends on the time point before the division (`end_object`), two new objects (ids
     above every id held) start on it with her as parent (`add_object`), each prompted with its piece as a mask
     prompt on every slice the piece covers (at t, and at t − 1 with her shared-out mask when dated there; a
     piece on one slice alone let a daughter's z-stream run into a neighbour above or below). The pass then
     restarts from the division's time point: that time point (and t) is recomputed with the daughters and
     yielded again — consumers keep the last result of a time point, as with 2-D discovery.
  Everything goes through the public edits (`add_object`, `end_object`, `add`) and passes, so the edit log
  holds the division and `replay_volume_time` (and `napari-sam2 replay`) reruns it to the same labels; a resumed
  `track` reruns discovery (deterministic) and skips the writes the store holds. Not looked for in 3D+t:
  arrivals (cells entering the volume would need segment everything on every slice), the repairs (probe,
  reclaim, relink) and refresh of 2-D discovery; `auto` is refused. Cost: a connected-component labelling per
  object and time point, plus, per division found, one or two time points recomputed for the daughters.

Labels overlap rule: within one computation of a time point, a voxel goes to the object with the higher logit;
objects recomputed later (after a correction) win over stored ones where they are foreground.

Coordinates are napari's: (row, col) = (y, x) pixels of a slice; indices (t, z) into the stack's first two axes.

Note for the faces (17b): the public API below is stable; `edit_log` entries are {"op": "add", "t", "z", "prompt",
"replace"}, {"op": "set", "t", "z", "obj_id", "prompt"}, {"op": "pass", "first", "last", "reverse", "times"};
{"op": "object", "obj_id", "parent", "start"}, {"op": "end", "obj_id", "last"} (lineage: `add_object`,
`end_object`, `parents`, `span`); `replay_volume_time(model, frames, log)` reruns them.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Iterator

import numpy as np
import torch
from scipy import ndimage

from .click_rule import resolve_click_rule
from .errors import InputError
from .preprocess import (
    CONTRAST_FIT_PLANES,
    DEFAULT_PERCENTILES,
    INTENSITY_SAMPLE_FRAMES,
    IntensityRange,
    as_rgb,
    evenly_spaced,
    percentile_sample,
    resolve_contrast,
)
from .prompts import ObjectPrompt, make_prompt
from .session import FeatureCache, TrackingSession, _check_obj_id

__all__ = [
    "VolumeTimeSession",
    "axial_trim",
    "neck_split",
    "propagate_volume_with_discovery",
    "replay_volume_time",
    "volume_divisions",
]


#: the axial edge rule's default fraction: the half maximum. A nucleus blurred along z (the axial point-spread
#: function is 2-4x longer than the lateral one) reaches half its plateau brightness where it really ends; the
#: z-streams answer its cap slices with the dim halo, as wide as a middle slice (nano-fluo, tuning seeds
#: 2,990,000-9 at t = 0, `bench_4d.py slices --tuning --seeds 10`: the outermost true slice drawn 2.15x too large,
#: slice IoU 0.44; 0.88 in the middle). Offline on the z-streams' masks of 20 tuning seeds, mean 3-D IoU 0.756
#: without the rule and 0.814 / 0.830 / 0.832 / 0.819 with the fractions 0.4 / 0.45 / 0.5 / 0.55
Z_EDGE = 0.5
#: the background ring around an object's mask on a slice: from this many pixels outside it ...
_RING_INNER = 2
#: ... to this many (a low percentile of its intensity is the local background of that slice: `Z_EDGE_BACKGROUND`)
_RING_OUTER = 6
#: the axial edge rule's local background of a slice: this percentile of the ring around the mask. In a cluster of
#: nuclei touching in 3-D most of the ring lies on neighbours, and the median (the rule before session 12) took their
#: brightness for background: the rule then cut the clicked nucleus's own middle slices (synthetic_hard
#: large_anisotropic, tuning stacks 4,000,250-3, mean IoU through z from one click: 0.566 without the rule, 0.497
#: with the median, 0.566 with the 10th percentile; isolated nuclei, `bench_4d.py zstack --tuning --seeds 10`: 0.861
#: with either). Stores record it ("z_edge_background"; the "edge" entries of a z-stack's edit log: "background")
Z_EDGE_BACKGROUND = 10.0
#: the percentile a store that records none was made with (the median): its replay and resume keep it
Z_EDGE_BACKGROUND_BEFORE = 50.0
#: the pixels `axial_trim` looks at around an object's mask: the ring and the smoothing see this far past it
TRIM_MARGIN = _RING_OUTER + 4


class _Slab:
    """Time point t of a [T, Z, Y, X] stack as a lazy [Z, Y, X] stack: reads only frames[t, z]."""

    def __init__(self, frames, t: int):
        self.frames, self.t = frames, int(t)
        self.shape = tuple(int(s) for s in frames.shape[1:])
        self.dtype = getattr(frames, "dtype", None)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        return np.asarray(self.frames[(self.t, *key)])


class _AnchorView:
    """A lazy [T, Y, X] stack whose frame t is slice z[t] of time point t (the t-stream's view of the data)."""

    def __init__(self, frames):
        self.frames = frames
        t, _, h, w = (int(s) for s in frames.shape)
        self.shape = (t, h, w)
        self.dtype = getattr(frames, "dtype", None)
        self.z: dict[int, int] = {}

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        t = int(key[0])
        return np.asarray(self.frames[(t, self.z[t], *key[1:])])


def _stack_intensity(frames, percentiles, samples: int = INTENSITY_SAMPLE_FRAMES) -> IntensityRange:
    """One intensity range for the whole 4-D stack from up to `samples` slices spread over (t, z), so that the
    same slice gives the same network input in every stream (a t-stream can reuse a z-stream's features)."""
    n_t, n_z = int(frames.shape[0]), int(frames.shape[1])
    values = []
    for i in evenly_spaced(n_t * n_z, samples):
        values.append(percentile_sample(as_rgb(np.asarray(frames[i // n_z, i % n_z]))))
    return IntensityRange.from_percentiles(np.concatenate(values), percentiles)


def _stack_contrast(frames, step, intensity: IntensityRange, image_size: int, samples: int = CONTRAST_FIT_PLANES):
    """`step` fitted on `samples` slices spread over (t, z) (`LocalContrast.fitted`, read only when it has no window;
    as `FrameSource` fits one on a 3-D stack)."""
    n_t, n_z = int(frames.shape[0]), int(frames.shape[1])
    planes = (intensity.scale(as_rgb(np.asarray(frames[i // n_z, i % n_z]))) for i in evenly_spaced(n_t * n_z, samples))
    return step.fitted(planes, image_size)


def stack_preprocessing(frames, model, contrast=None, percentiles=DEFAULT_PERCENTILES, intensity=None):
    """The intensity range and the fitted contrast step a `VolumeTimeSession` over `frames` [T, Z, Y, X] gives every
    slice: → (IntensityRange, contrast step). contrast: as `VolumeTimeSession` takes it (None: the model's default;
    not its z-stream default, `registry.ModelInfo.z_contrast`, which was chosen for plain z-stacks: on 3D+t's tuning
    movies local contrast lost TRA, model/README.md "Session 16");
    intensity: a given range or (low, high) (None: percentiles of slices spread over (t, z)). A per-slice session
    given these (`TrackingSession(..., intensity=, contrast=)`) makes the same network input for a slice as the
    3D+t session does (the widget's 3D+t previews)."""
    if intensity is None:
        intensity = _stack_intensity(frames, percentiles)
    elif not isinstance(intensity, IntensityRange):
        intensity = IntensityRange(*intensity)
    return intensity, _stack_contrast(frames, resolve_contrast(contrast, model), intensity, model.image_size)


class VolumeTimeSession:
    """Prompt objects on any (t, z) slice of a 3D+t stack and propagate them through z and time.

    model: a `SAM2Model`, or a registry name / checkpoint path (loaded on `device`).
    frames: array-like [T, Z, Y, X] (numpy, zarr, dask, ...); only frames[t, z] → [Y, X] is ever read. Pick a
        channel before (e.g. `frames[:, :, 0]` of a TZCYX dask array stays lazy).
    preset, precision, fill_hole_area, object_batch: as `TrackingSession` (used by every stream).
    intensity: (low, high) range for every slice (default: percentiles of 16 slices spread over the stack).
    contrast: the contrast step of every stream's model input (`preprocess`): "global", "local", a
        `preprocess.LocalContrast`, or None: the model's default. The resolved step is `self.contrast`; the axial
        edge rule reads the image's own pixels, whatever it is.
    feature_cache_bytes: image features of one time point kept in memory (≈ 16 MiB a slice at 1024²; give at
        least Z slices' worth or slices are encoded again for each object).
    on_read: called as on_read(t, z, pixels) for every slice the streams read, before it is used (e.g. an
        `io.identity.InputIdentity` keyed by t * Z + z: a resumed run checks each slice against the recorded one).
    z_edge: the axial edge rule (`axial_trim`): a voxel of an object's 3-D mask is kept where the image reaches
        this fraction of the brightest voxel of its (y, x) column in the mask (background subtracted) — 0.5, the
        half maximum, by default; None keeps the z-streams' masks as they are (e.g. for objects that are not
        brighter than their surroundings, where the rule does nothing anyway). Slices the user prompted at a
        time point are kept as the model answered them. Checked by `napari_sam2.volume.check_z_edge` (as
        `TrackingSession`'s): a real number in (0, 1) or None; a string, a bool or a 0-d array is refused.
    z_edge_background: the percentile of the ring around a mask that the rule takes as a slice's local background
        (`Z_EDGE_BACKGROUND`; a store that records none was made with `Z_EDGE_BACKGROUND_BEFORE`, the median).
    click_rule: how a slice prompted with clicks is read (`napari_sam2.click_rule`; None: the model's default). The
        resolved rule is `self.click_rule`.
    Coordinates: (y, x) napari pixels of a slice; (t, z) indices into the first two axes.
    """

    def __init__(
        self,
        model,
        frames,
        *,
        device: str | torch.device | None = "auto",
        preset: str = "default",
        precision: str = "auto",
        intensity=None,
        percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
        feature_cache_bytes: int = 1 << 30,
        fill_hole_area: int | None = None,
        object_batch: int | None = None,
        on_read=None,
        z_edge: float | None = Z_EDGE,
        contrast=None,
        click_rule=None,
        z_edge_background: float = Z_EDGE_BACKGROUND,
    ):
        if isinstance(model, (str,)) or hasattr(model, "__fspath__"):
            from .model.build import load_model

            model = load_model(model, device=device)
        if not hasattr(frames, "shape") or not hasattr(frames, "__getitem__"):
            frames = np.asarray(frames)
        shape = tuple(int(s) for s in frames.shape)
        if len(shape) != 4:
            raise InputError(
                f"a 3D+t stack is [T, Z, Y, X]; got {len(shape)} axes {shape}. Select one channel first "
                "(e.g. frames[:, :, channel]); a 3-D stack goes to TrackingSession"
            )
        if min(shape) < 1:
            raise InputError(f"the stack {shape} is empty along an axis")
        self.model = model
        self.frames = frames
        self.num_times, self.num_slices = shape[0], shape[1]
        self.frame_shape = shape[2:]
        # one range and one contrast step for every stream (a local window fitted once on slices spread over (t, z)),
        # so the same slice gives the same network input in every stream
        self.intensity, self.contrast = stack_preprocessing(frames, model, contrast, percentiles, intensity)
        from .volume import check_z_edge  # the one check of z_edge (TrackingSession's too; volume imports this module)

        self.z_edge = check_z_edge(z_edge)
        self.z_edge_background = check_z_edge_background(z_edge_background)
        self.click_rule = resolve_click_rule(click_rule, model, preset)
        self.feature_cache_bytes = int(feature_cache_bytes)
        self._options = {"preset": preset, "precision": precision, "fill_hole_area": fill_hole_area,
                         "object_batch": object_batch, "intensity": self.intensity, "read_ahead": 0,
                         "contrast": self.contrast, "click_rule": self.click_rule}  # fmt: skip
        # prompts[t][obj][z]: the user's prompts (they define the object at t; see the module docstring)
        self._prompts: dict[int, dict[int, dict[int, ObjectPrompt]]] = {}
        self._objects: list[int] = []
        self._done: dict[int, dict[int, bool]] = {}  # obj → {t: computed in a reverse pass}
        self._stale: dict[int, set[int]] = {}  # obj → time points a later edit has invalidated
        self._anchor: dict[int, dict[int, int]] = {}  # obj → {t: anchor slice (most signal; else the seed slice)}
        self._present: dict[int, dict[int, bool]] = {}  # obj → {t: any voxel at t}
        self._tstreams: dict[int, TrackingSession] = {}
        self._views: dict[int, _AnchorView] = {}
        self._labels: dict[int, bytes] = {}  # t → zlib-compressed int32 [Z, Y, X]
        self._cache_t: tuple[int, FeatureCache] | None = None  # features of the time point being worked on
        self._feature_bytes: int | None = None
        self._log: list[dict] = []
        self._span: dict[int, tuple[int | None, int | None]] = {}  # obj → (first, last) t it exists on
        self._parent: dict[int, int] = {}  # daughter → mother
        self._scores: dict[int, dict[int, dict[int, tuple[float, float]]]] = {}  # t → obj → z → (score, iou)
        self.on_read = on_read  # on_read(t, z, pixels): every slice a stream reads, before it is used
        # keep the last computed time point's image features until the next one starts (discovery prompts the
        # daughters on it and recomputes it: no slice is encoded twice); the peak memory is the same either way
        self.keep_features = False

    # ------------------------------------------------------------------ basics
    @property
    def obj_ids(self) -> list[int]:
        """Object ids in the order they were first prompted."""
        return list(self._objects)

    @property
    def edit_log(self) -> list[dict]:
        """Every edit and pass, in order, JSON-able: {"op": "add", "t", "z", "prompt": ObjectPrompt.to_dict(),
        "replace"}, {"op": "set", "t", "z", "obj_id", "prompt": dict | None}, {"op": "pass", "first", "last",
        "reverse", "times"} (a pass over time points first…last, of which `times` were finished), {"op": "object",
        "obj_id", "parent", "start"}, {"op": "end", "obj_id", "last"}.
        `replay_volume_time` reruns it to identical labels (same thread count). A copy."""
        return [dict(e) for e in self._log]

    def _check_tz(self, t, z) -> tuple[int, int]:
        for name, v, n in (("t", t, self.num_times), ("z", z, self.num_slices)):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                raise InputError(f"{name} is an integer index; got {v!r}")
            if not 0 <= v < n:
                raise InputError(f"{name} = {v} is outside the stack ({name} = 0…{n - 1})")
        return int(t), int(z)

    def prompts(self) -> list[tuple[int, int, ObjectPrompt]]:
        """Every current prompt as (t, z, prompt) (a copy with prompt.t = t, prompt.frame = z), ordered by t,
        object, z."""
        return [
            (t, z, dataclasses.replace(p, t=t))
            for t in sorted(self._prompts)
            for obj in sorted(self._prompts[t])
            for z, p in sorted(self._prompts[t][obj].items())
        ]

    # ------------------------------------------------------------------ prompts
    def add(self, t: int, z: int, prompt: ObjectPrompt, replace: bool = False, preview: bool = True):
        """Prompt an object on slice (t, z): points join that slice's earlier clicks of the object (replace=True
        starts over), a box replaces its box, a mask replaces all its prompts there. prompt.frame is ignored
        (taken as z); (y, x) are pixels of the slice. Returns the object's [Y, X] bool mask on that slice from
        the prompts of (t, z) alone (a preview; `propagate` computes the volumes), or None with preview=False
        (no model run: discovery prompting daughters on many slices)."""
        t, z = self._check_tz(t, z)
        prompt = self._on_slice(prompt, z)
        prompt.check(self.frame_shape, self.num_slices)
        old = self._prompts.get(t, {}).get(prompt.obj_id, {}).get(z)
        merged = _merge(old, prompt, replace)
        self._put(t, z, prompt.obj_id, merged)
        self._log.append({"op": "add", "t": t, "z": z, "prompt": prompt.to_dict(), "replace": bool(replace)})
        return self._preview(t, z, merged) if preview else None

    def set_prompt(self, t: int, z: int, obj_id: int, prompt: ObjectPrompt | None) -> np.ndarray | None:
        """Make `prompt` the whole of object `obj_id`'s prompts on slice (t, z) (None removes them). Propagation
        then recomputes that time point and the ones carried from it. Returns the preview mask as `add` (None
        when removed)."""
        t, z = self._check_tz(t, z)
        _check_obj_id(obj_id)
        obj_id = int(obj_id)
        if prompt is not None:
            if int(prompt.obj_id) != obj_id:
                raise InputError(f"the prompt is for object {prompt.obj_id}, not {obj_id}")
            prompt = self._on_slice(prompt, z)
            prompt.check(self.frame_shape, self.num_slices)
        self._put(t, z, obj_id, prompt)
        self._log.append(
            {"op": "set", "t": t, "z": z, "obj_id": obj_id, "prompt": None if prompt is None else prompt.to_dict()}
        )
        return None if prompt is None else self._preview(t, z, prompt)

    @staticmethod
    def _on_slice(prompt: ObjectPrompt, z: int) -> ObjectPrompt:
        """The prompt as its z-stream takes it: frame = z, no time point (prompt.t and prompt.frame are ignored)."""
        if not isinstance(prompt, ObjectPrompt):
            raise InputError(f"a prompt is an ObjectPrompt (see napari_sam2.prompts.make_prompt); got {prompt!r}")
        return ObjectPrompt(int(prompt.obj_id), z, prompt.points, prompt.labels, prompt.box, prompt.mask)

    def _put(self, t: int, z: int, obj: int, prompt: ObjectPrompt | None) -> None:
        if obj not in self._objects:
            if prompt is None:
                return
            self._register(obj)
        if prompt is not None and not self._alive(obj, t):
            first, last = self.span(obj)
            raise InputError(
                f"object {obj} exists on time points {0 if first is None else first}…"
                f"{self.num_times - 1 if last is None else last} only (its lineage); t = {t} lies outside: "
                "prompt a new object there instead"
            )
        slices = self._prompts.setdefault(t, {}).setdefault(obj, {})
        if prompt is None:
            slices.pop(z, None)
        else:
            slices[z] = prompt
        if not slices:
            del self._prompts[t][obj]
            if not self._prompts[t]:
                del self._prompts[t]
        self._invalidate(obj, t)

    def _register(self, obj: int) -> None:
        if obj not in self._objects:
            self._objects.append(obj)
            for d in (self._done, self._anchor, self._present):
                d[obj] = {}
            self._stale[obj] = set()

    def _invalidate(self, obj: int, t: int) -> None:
        """An edit at t makes t stale, and the time points carried from it (up to the object's next prompted time
        point in the direction they were carried)."""
        prompted = [u for u in self._prompts if obj in self._prompts[u] and u != t]
        later = min([u for u in prompted if u > t], default=self.num_times)
        earlier = max([u for u in prompted if u < t], default=-1)
        stale = self._stale[obj]
        stale.add(t)
        for u, reverse in self._done[obj].items():
            if (t < u < later and not reverse) or (earlier < u < t and reverse):
                stale.add(u)

    def _preview(self, t: int, z: int, prompt: ObjectPrompt) -> np.ndarray:
        session = self._z_session(t)
        try:
            result = session.add(prompt)
            k = result.obj_ids.index(prompt.obj_id)
            return result.masks[k].copy()
        finally:
            session.frames.close()

    # ------------------------------------------------------------------ lineage
    def add_object(self, obj_id: int, parent: int | None = None, start: int | None = None) -> None:
        """Declare object `obj_id` with its lineage (before or after prompting it): parent, the mother's id when it
        is a daughter of a division; start, the first time point it exists on (a daughter: the one after her
        mother's last). Propagation never carries it before `start`, in either direction, and its voxels at
        earlier time points are removed from the results."""
        _check_obj_id(obj_id)
        obj_id = int(obj_id)
        if parent is not None:
            _check_obj_id(parent)
            if int(parent) == obj_id:
                raise InputError(f"object {obj_id} cannot be its own parent")
        if start is not None:
            start = self._check_tz(start, 0)[0]
        self._register(obj_id)
        self._log.append({"op": "object", "obj_id": obj_id, "parent": parent and int(parent), "start": start})
        if parent is None:
            self._parent.pop(obj_id, None)
        else:
            self._parent[obj_id] = int(parent)
        self._span[obj_id] = (start, self._span.get(obj_id, (None, None))[1])
        self._drop_outside_span(obj_id)

    def end_object(self, obj_id: int, last: int) -> None:
        """Object `obj_id` exists up to time point `last` (inclusive) and no longer (e.g. a mother that divides
        after `last`): it is never carried past it and its voxels after it are removed from the results."""
        _check_obj_id(obj_id)
        obj_id = int(obj_id)
        if obj_id not in self._objects:
            raise InputError(f"unknown object id {obj_id}; known objects: {self._objects or 'none yet'}")
        last = self._check_tz(last, 0)[0]
        self._log.append({"op": "end", "obj_id": obj_id, "last": last})
        self._span[obj_id] = (self._span.get(obj_id, (None, None))[0], last)
        self._drop_outside_span(obj_id)

    @property
    def parents(self) -> dict[int, int]:
        """{daughter object id: mother object id} (the lineage of divisions, as declared by `add_object`)."""
        return dict(self._parent)

    def span(self, obj_id: int) -> tuple[int | None, int | None]:
        """(first, last) time point object `obj_id` exists on (None: unbounded)."""
        return self._span.get(int(obj_id), (None, None))

    def _alive(self, obj: int, t: int) -> bool:
        first, last = self._span.get(obj, (None, None))
        return (first is None or t >= first) and (last is None or t <= last)

    def _drop_outside_span(self, obj: int) -> None:
        for t in [t for t in self._labels if not self._alive(obj, t)]:
            labels = self.result(t)
            if (labels == obj).any():
                labels[labels == obj] = 0
                self._labels[t] = zlib.compress(np.ascontiguousarray(labels, np.int32).tobytes(), 1)
        for d in (self._done[obj], self._anchor[obj], self._present[obj]):
            for t in [t for t in d if not self._alive(obj, t)]:
                del d[t]
        for t, per_obj in self._scores.items():
            if not self._alive(obj, t):
                per_obj.pop(obj, None)

    # ------------------------------------------------------------------ streams
    def _features_of(self, t: int) -> FeatureCache:
        if self._cache_t is None or self._cache_t[0] != t:
            self._cache_t = None  # drop the previous time point's features first (memory flat)
            self._cache_t = (t, FeatureCache(self.feature_cache_bytes))
        return self._cache_t[1]

    def _z_session(self, t: int) -> TrackingSession:
        hook = None if self.on_read is None else (lambda z, pixels: self.on_read(t, int(z), pixels))
        session = TrackingSession(
            self.model, _Slab(self.frames, t), axis=0, feature_cache_bytes=0, on_read=hook, z_stream=True,
            **self._options,
        )  # fmt: skip
        session.features = self._features_of(t)  # shared by every object's z-stream of this time point
        return session

    def _slice_features(self, t: int, z: int, zs: TrackingSession):
        feats = zs._features(z)
        if self._feature_bytes is None:
            self._feature_bytes = feats.nbytes
        return feats

    def _t_stream(self, obj: int) -> TrackingSession:
        stream = self._tstreams.get(obj)
        if stream is None:
            view = _AnchorView(self.frames)
            hook = None if self.on_read is None else (lambda t, pixels: self.on_read(int(t), view.z[int(t)], pixels))
            # features: the current and the previous time point's (a prompt's memory is encoded at the next pass)
            budget = 3 * (self._feature_bytes or 0)
            logits = 4 * (self.model.image_size // 4) ** 2 * 4  # low-res fp32 logits of 4 frames (corrections)
            stream = TrackingSession(self.model, view, axis=0, feature_cache_bytes=budget,
                                     result_cache_bytes=logits, on_read=hook, **self._options)  # fmt: skip
            self._tstreams[obj], self._views[obj] = stream, view
        return stream

    def _t_stream_frame(self, obj: int, t: int, z: int, zs: TrackingSession) -> TrackingSession:
        """The object's t-stream, with its frame t set to slice (t, z) and that slice's features handed over."""
        feats = self._slice_features(t, z, zs)
        stream = self._t_stream(obj)
        self._views[obj].z[t] = z
        stream.features.put(t, feats)
        return stream

    # ------------------------------------------------------------------ propagation
    def propagate(self, direction: str = "both") -> Iterator[tuple[int, np.ndarray]]:
        """Propagate every object through z and time; a generator of (t, labels [Z, Y, X] int32 object ids).

        A time point is yielded once its whole volume is done, in time order outward from the prompted time
        points: "forward" from the earliest prompted t to the end, "backward" from the latest t on which an object
        was first prompted down to 0, "both" forward then backward. Only time points something was (re)computed
        on are yielded; after a correction that is the corrected t and those carried from it. With an object
        first prompted after another's first prompt, "both" yields the time points between twice (the second
        time with that object added). Stopping the generator leaves every yielded time point finished.
        """
        if direction not in ("forward", "backward", "both"):
            raise InputError(f"direction must be 'forward', 'backward' or 'both'; got {direction!r}")
        start, back = self._outward_from()
        if direction in ("forward", "both"):
            yield from self.propagate_pass(start, self.num_times - 1, reverse=False)
        if direction in ("backward", "both"):
            yield from self.propagate_pass(back, 0, reverse=True)

    def _outward_from(self) -> tuple[int, int]:
        """(the earliest time point any object is prompted on, the latest time point an object is first prompted
        on): where `propagate` starts its forward and its backward pass."""
        if not self._prompts:
            raise InputError("nothing to propagate: add a prompt (points, box or mask) on some (t, z) first")
        firsts = [min(t for t in self._prompts if obj in self._prompts[t]) for obj in self._objects
                  if any(obj in p for p in self._prompts.values())]  # fmt: skip
        return min(firsts), max(firsts)

    def propagate_pass(self, first: int, last: int, reverse: bool, times: int | None = None):
        """One pass over time points first…last (inclusive; last ≤ first when `reverse`), stopping after `times`
        of them: what `propagate` runs and what the edit log's "pass" entries replay. Yields as `propagate`."""
        self._check_tz(first, 0)
        self._check_tz(last, 0)
        if (last < first) != bool(reverse) and first != last:
            raise InputError(f"a {'backward' if reverse else 'forward'} pass cannot run from {first} to {last}")
        step = -1 if reverse else 1
        order = list(range(first, last + step, step))
        if times is not None:
            order = order[: int(times)]
        entry = {"op": "pass", "first": int(first), "last": int(last), "reverse": bool(reverse), "times": 0}
        self._log.append(entry)
        for t in order:
            labels = self._time_point(t, bool(reverse))
            entry["times"] += 1  # counted before the yield: a consumer that stops there has this time point
            if labels is not None:
                yield t, labels

    def _sources(self, t: int, reverse: bool) -> list[int]:
        """Objects to (re)compute at t: not done or stale there, and with a prompt at t or carried from t ∓ 1."""
        src = t + 1 if reverse else t - 1
        todo = []
        for obj in self._objects:
            if (t in self._done[obj] and t not in self._stale[obj]) or not self._alive(obj, t):
                continue
            prompted = obj in self._prompts.get(t, {})
            carried = obj in self._tstreams and src in self._done[obj] and src not in self._stale[obj]
            if prompted or carried:
                todo.append(obj)
        return todo

    def _time_point(self, t: int, reverse: bool) -> np.ndarray | None:
        todo = self._sources(t, reverse)
        if not todo:
            return None
        src = t + 1 if reverse else t - 1
        z_count, (h, w) = self.num_slices, self.frame_shape
        best = np.zeros((z_count, h, w), np.float32)  # the highest foreground logit so far (0: none)
        fresh = np.zeros((z_count, h, w), np.int32)
        seeds_at: dict[int, int] = {}
        scores: dict[int, dict[int, tuple[float, float]]] = {}  # obj → z → (score, iou) of this computation
        with torch.inference_mode():
            for obj in todo:
                zs = self._z_session(t)
                try:
                    user = self._prompts.get(t, {}).get(obj)
                    if user:
                        seeds = list(user.values())
                    else:
                        seeds, carried = self._carry(obj, t, src, reverse, zs)
                        if carried is not None:  # the t-stream's verdict on the anchor slice (absent: score ≤ 0)
                            scores[obj] = {self._anchor[obj][src]: carried}
                    if not seeds:
                        continue
                    seeds_at[obj] = seeds[0].frame
                    for p in seeds:
                        zs.add(p)
                    scores[obj] = {}
                    logits: dict[int, np.ndarray] = {}
                    for res in zs.propagate("both"):
                        k = res.obj_ids.index(obj)
                        logits[res.frame] = res.logits[k]
                        scores[obj][res.frame] = (float(res.scores[k]), float(res.ious[k]))
                    keep = self._trimmed(t, obj, logits)
                    for z, logit in logits.items():
                        win = (logit > np.maximum(best[z], 0)) & keep[z]
                        best[z][win] = logit[win]
                        fresh[z][win] = obj
                finally:
                    zs.frames.close()
            labels = self.result(t) if t in self._labels else np.zeros((z_count, h, w), np.int32)
            labels[np.isin(labels, todo)] = 0
            labels[fresh > 0] = fresh[fresh > 0]
            self._labels[t] = zlib.compress(np.ascontiguousarray(labels, np.int32).tobytes(), 1)
            signal = self._signal(t, labels, todo)
            for obj in todo:
                present = bool(signal[obj].any())
                sought = seeds_at.get(obj, self._anchor[obj].get(src, 0))  # where it was looked for
                self._anchor[obj][t] = int(np.argmax(signal[obj])) if present else sought
                self._present[obj][t] = present
                self._done[obj][t] = reverse
                self._stale[obj].discard(t)
                self._scores.setdefault(t, {})[obj] = scores.get(obj, {})
                if obj in self._prompts.get(t, {}):
                    self._condition_t_stream(obj, t, labels)
        if not self.keep_features:
            self._cache_t = None
        return labels

    def _trimmed(self, t: int, obj: int, logits: dict[int, np.ndarray]) -> np.ndarray:
        """[Z, Y, X] bool: the object's z-stream mask at t (logit > 0) after the axial edge rule (`axial_trim`),
        slices the user prompted at t kept whole."""
        mask = np.zeros((self.num_slices, *self.frame_shape), bool)
        for z, logit in logits.items():
            mask[z] = logit > 0
        if self.z_edge is None:
            return mask
        prompted = self._prompts.get(t, {}).get(obj, {})
        # only the object's box of each slice is read (a slice shared by many nuclei is not read whole each time)
        return axial_trim(
            mask,
            None,
            self.z_edge,
            keep=prompted,
            read_region=lambda z, rows, cols: self.frames[t, z, rows, cols],
            background=self.z_edge_background,
        )

    def _signal(self, t: int, labels: np.ndarray, objs) -> dict[int, np.ndarray]:
        """{obj: [Z] the image's summed intensity (above the stack's low end) inside the object's mask, per slice}:
        what chooses the anchor (see the module docstring). Reads the slices the objects are on once more (the
        z-streams have read and checked them already)."""
        low = float(self.intensity.low)
        out = {obj: np.zeros(self.num_slices) for obj in objs}
        for z in range(self.num_slices):
            plane = labels[z]
            if not np.isin(plane, list(objs)).any():
                continue
            pixels = np.asarray(self.frames[t, z], np.float32) - low
            for obj in objs:
                inside = plane == obj
                if inside.any():
                    out[obj][z] = float(pixels[inside].sum())
        return out

    def _carry(self, obj: int, t: int, src: int, reverse: bool, zs: TrackingSession):
        """The hand-over: the t-stream tracks the object onto the anchor slice of `src` at time point t; its mask
        there (if the object is present) is the seed of the z-stream at t. → (seeds, (score, iou) of the t-stream
        on that slice, or None when it has nothing to track)."""
        z = self._anchor[obj][src]
        stream = self._t_stream_frame(obj, t, z, zs)
        track = stream.objects.get(obj)
        if track is None:  # its prompted time points gave an empty mask: nothing to carry
            return [], None
        if t in track.cond:  # prompted at t before, no longer: t is tracked again
            stream.clear_prompts(t, obj)
        if t in track.tracked:
            track.stale.add(t)  # the slice or the memory behind it may have changed: recompute
        mask, verdict = None, None
        for res in stream.propagate_pass(t, t, reverse):
            if obj in res.obj_ids:
                k = res.obj_ids.index(obj)
                verdict = (float(res.scores[k]), float(res.ious[k]))
                if res.scores[k] > 0 and res.masks[k].any():
                    mask = res.masks[k]
        if mask is None:
            return [], verdict
        return [ObjectPrompt(obj, z, np.zeros((0, 2)), np.zeros((0,), np.int32), mask=mask)], verdict

    def _condition_t_stream(self, obj: int, t: int, labels: np.ndarray) -> None:
        """A prompted time point's finished 3-D mask conditions the object's t-stream on its anchor slice."""
        z = self._anchor[obj][t]
        mask = labels[z] == obj
        zs = self._z_session(t)
        try:
            stream = self._t_stream_frame(obj, t, z, zs)
        finally:
            zs.frames.close()
        prompt = None
        if mask.any():
            prompt = ObjectPrompt(obj, t, np.zeros((0, 2)), np.zeros((0,), np.int32), mask=mask)
        if obj in stream.objects:
            stream.set_prompt(t, obj, prompt)
        elif prompt is not None:
            stream.add(prompt)

    # ------------------------------------------------------------------ results
    def result(self, t: int) -> np.ndarray:
        """Labels [Z, Y, X] int32 of a finished time point (a copy). Raises if t was not computed yet."""
        self._check_tz(t, 0)
        data = self._labels.get(int(t))
        if data is None:
            raise InputError(f"time point {t} has no result yet: propagate first")
        return np.frombuffer(zlib.decompress(data), np.int32).reshape(self.num_slices, *self.frame_shape).copy()

    def scores(self, t: int) -> dict[int, dict[int, tuple[float, float]]]:
        """{obj: {z: (score, iou)}} of time point t's last computation of each object: the z-stream's object-score
        logit (> 0: present on that slice) and predicted IoU per slice. An object the t-stream lost at t has one
        entry, on the slice it was sought on, with the t-stream's (score ≤ 0, iou). {} before t is computed."""
        self._check_tz(t, 0)
        return {obj: dict(zs) for obj, zs in self._scores.get(int(t), {}).items()}

    def object_scores(self, t: int) -> dict[int, tuple[float, float]]:
        """{obj: (score, iou)} per object at time point t, as the 2-D/3-D runs report per frame: score, the
        highest object-score logit over its slices (> 0: the object exists at t); iou, the predicted IoU on its
        anchor slice, or on its best-scored slice where the anchor has none."""
        out = {}
        for obj, per_z in self.scores(t).items():
            if not per_z:
                continue
            best_z = max(per_z, key=lambda z: per_z[z][0])
            anchor = self._anchor.get(obj, {}).get(int(t))
            out[obj] = (per_z[best_z][0], per_z.get(anchor, per_z[best_z])[1])
        return out

    def finished(self) -> list[int]:
        """Time points that have a result."""
        return sorted(self._labels)

    def anchors(self, obj_id: int) -> dict[int, int]:
        """{t: the object's anchor slice z at t} (its slice of most signal; where absent, the slice it was sought
        on)."""
        return dict(self._anchor[int(obj_id)])

    def memory_stats(self) -> dict:
        """What the streams hold now (to check that memory stays flat in T): per object, the t-stream's tracked
        frames that still hold a memory / a pointer / mask logits, and its cached feature frames."""
        stats = {}
        for obj, stream in self._tstreams.items():
            track = stream.objects.get(obj)
            if track is None:
                continue
            outs = list(track.tracked.values()) + list(track.cond.values())
            stats[obj] = {
                "memories": sum(o.memory is not None for o in outs),
                "pointers": sum(o.pointer is not None for o in outs),
                "logits": sum(o.logits is not None for o in outs),
                "features": len(stream.features),
                "conditioning": len(track.cond),
            }
        return stats

    def close(self) -> None:
        for stream in self._tstreams.values():
            stream.close()
        self._tstreams.clear()
        self._cache_t = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def check_z_edge_background(value) -> float:
    """The axial edge rule's background percentile (`Z_EDGE_BACKGROUND`) as given or recorded → a float in
    [0, 100]; InputError otherwise."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)) or not 0 <= value <= 100:
        raise InputError(f"z_edge_background is a percentile between 0 and 100; got {value!r}")
    return float(value)


def axial_trim(
    mask: np.ndarray,
    read_slice=None,
    fraction: float = Z_EDGE,
    keep=(),
    *,
    read_region=None,
    background: float = Z_EDGE_BACKGROUND,
) -> np.ndarray:
    """The axial edge rule: where a bright object (a fluorescent nucleus) ends along z.

    mask: [Z, Y, X] bool, one object's 3-D mask; read_slice(z) → the image's [Y, X] slice z (read only for the
    slices the mask covers), or instead read_region(z, rows, cols) → the part [rows, cols] (two slices) of slice z:
    then only the object's box (plus a margin of 10 pixels for the ring and the smoothing) is read, so a slice
    that N objects share is not read N times whole (a lazy zarr / dask stack reads only the chunks it covers);
    the result is the same, as the rule only ever looks at that box. fraction: a voxel (z, y, x) of the mask is kept when its brightness reaches `fraction`
    of the brightest voxel of its column (y, x) within the mask; brightness = the slice smoothed by a 1-pixel
    Gaussian in (y, x) (photon noise) minus that slice's local background (the `background` percentile of a ring 2-6
    pixels around the mask there; `Z_EDGE_BACKGROUND`). Columns whose brightest voxel is not above the background are
    kept whole (no evidence: a dark object), and so are the slices in `keep` (e.g. those the user prompted) and a
    mask on one slice only. Returns a new [Z, Y, X] bool mask (a subset of `mask`).

    Why: under the microscope's axial blur a nucleus's cap slices show a dim halo as wide as its middle, which the
    model segments whole; the half maximum along z is where a blurred edge really is (the rule's fraction was chosen
    on tuning seeds of the synthetic 4-D generator; see `Z_EDGE`).
    """
    mask = np.asarray(mask, bool)
    slices = np.nonzero(mask.any(axis=(1, 2)))[0]
    if len(slices) < 2:
        return mask.copy()
    ys, xs = np.nonzero(mask.any(axis=0))
    h, w = mask.shape[1:]
    y0, y1 = max(0, int(ys.min()) - TRIM_MARGIN), min(h, int(ys.max()) + TRIM_MARGIN + 1)
    x0, x1 = max(0, int(xs.min()) - TRIM_MARGIN), min(w, int(xs.max()) + TRIM_MARGIN + 1)
    crop = mask[:, y0:y1, x0:x1]
    bright = np.full(crop.shape, -np.inf, np.float32)
    rows, cols = slice(y0, y1), slice(x0, x1)
    for z in slices.tolist():
        if read_region is not None:
            pixels = np.asarray(read_region(z, rows, cols), np.float32)
        else:
            pixels = np.asarray(read_slice(z), np.float32)
            if pixels.ndim != 2:
                raise InputError(f"axial_trim reads [Y, X] slices; slice {z} has shape {pixels.shape}")
            pixels = pixels[rows, cols]
        if pixels.shape != crop.shape[1:]:
            raise InputError(f"axial_trim read {pixels.shape} pixels of slice {z}; the mask's box is {crop.shape[1:]}")
        pixels = ndimage.gaussian_filter(pixels, 1.0)
        inside = crop[z]
        ring = ndimage.binary_dilation(inside, iterations=_RING_OUTER)
        ring &= ~ndimage.binary_dilation(inside, iterations=_RING_INNER)
        if not ring.any():  # the mask fills the image: no background to measure
            return mask.copy()
        bright[z][inside] = pixels[inside] - float(np.percentile(pixels[ring], background))
    peak = bright.max(axis=0)  # [Y, X] the brightest voxel of each column
    kept = crop & ((bright >= fraction * peak) | (peak <= 0))
    for z in keep:
        if 0 <= int(z) < len(kept):
            kept[int(z)] = crop[int(z)]
    out = mask.copy()
    out[:, y0:y1, x0:x1] = kept
    return out


def _merge(old: ObjectPrompt | None, new: ObjectPrompt, replace: bool) -> ObjectPrompt:
    """The prompt of one object on one slice after `new` is added (the rules of `TrackingSession.add`)."""
    if new.mask is not None or old is None or old.mask is not None or replace:
        points, labels, box = np.zeros((0, 2)), np.zeros((0,), np.int32), None
    else:
        points, labels, box = np.asarray(old.points, float).reshape(-1, 2), np.asarray(old.labels), old.box
    if len(new.points):
        points = np.concatenate([points, np.asarray(new.points, float).reshape(-1, 2)])
        labels = np.concatenate([labels, np.asarray(new.labels)]).astype(np.int32)
    if new.box is not None:
        box = np.asarray(new.box, float)
    mask = None if new.mask is None else np.asarray(new.mask, bool)
    return make_prompt(new.frame, new.obj_id, points, labels, box, mask)


# ---------------------------------------------------------------------- discovery in 3D+t (divisions)
#: a piece of a mother's 3-D mask is a daughter only if at least this share of its voxels lay in the mother's mask
#: on the time point before (daughters come out of their mother: 0.39-0.51 on the tuning seeds, the previous mask
#: covering both touching daughters); a piece of a neighbour the tracker grabbed lies elsewhere (0 there)
PIECE_FROM_MOTHER = 0.2


#: a division found at t moves to t − 1 when the mother's mask at t − 1, shared out between the two pieces of t
#: (each voxel to the nearer piece), has a narrow waist: the voxels where the two parts touch number at most this
#: times (smaller part's volume)^(2/3) — two touching daughters, not one mother. Tuning seeds: 0.25-0.49 on the
#: time point the daughters first touch (the tracker answers them with one mask), 0.81-1.33 on the mother before
DIVISION_NECK = 0.65


def neck_split(previous: np.ndarray, piece_a: np.ndarray, piece_b: np.ndarray, options) -> tuple | None:
    """The mother's [Z, Y, X] bool mask one time point before her division was found, shared out between the two
    daughters' pieces (each voxel to the nearer piece) → (part a, part b) when it already was two touching
    daughters: each part ≥ `division_min_share` of it, of comparable size (`division_size_ratio`), and the two
    touching over at most `DIVISION_NECK` × (smaller part's volume)^(2/3) voxels; else None."""
    union = np.asarray(previous, bool)
    only_a, only_b = piece_a & ~piece_b, piece_b & ~piece_a
    if not union.any() or not only_a.any() or not only_b.any():
        return None
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(union | only_a | only_b))
    part_a = np.zeros_like(union)
    part_a[box] = union[box] & (
        ndimage.distance_transform_edt(~only_a[box]) <= ndimage.distance_transform_edt(~only_b[box])
    )
    part_b = union & ~part_a
    small, big = sorted((int(part_a.sum()), int(part_b.sum())))
    if small < options.division_min_share * union.sum() or small < options.division_size_ratio * big:
        return None
    touching = int((part_a & ndimage.binary_dilation(part_b, ndimage.generate_binary_structure(3, 1))).sum())
    return (part_a, part_b) if touching <= DIVISION_NECK * small ** (2 / 3) else None


def volume_divisions(
    labels: np.ndarray,
    options,
    may_divide=None,
    usual_volume: dict[int, float] | None = None,
    previous_labels: np.ndarray | None = None,
) -> list:
    """Divisions on one time point's label volume [Z, Y, X] (object ids): 2-D discovery's rule "the mother's mask
    falls into two comparable pieces" (`discovery.compare_masks`, sign "two components") applied to the 3-D
    masks — the pieces are 3-D connected components (faces touch), the two largest of which each hold ≥
    `division_min_share` of the mother's voxels and are of comparable size (smaller / larger ≥
    `division_size_ratio`), the larger not above `division_max_daughter` of her usual volume (else it is the
    whole mother with a stray piece). Small stray pieces (a cap slice's fragment) are ignored. With
    `previous_labels` (the label volume of the time point before), each piece must also have ≥ `PIECE_FROM_MOTHER`
    of its voxels inside the mother's mask there (else it is a piece of a neighbour she grabbed).
    options: a `DiscoveryOptions`; may_divide(obj) → False excludes an object; usual_volume: {obj: median volume
    (voxels) of its recent time points}. → `discovery.Proposal`s of kind "division" whose `masks` are the two
    daughters' [Z, Y, X] bool masks."""
    from .discovery import compare_masks

    rules = dataclasses.replace(options, arrivals=False, refresh=False, relink=False, detector=None)
    found = compare_masks(np.asarray(labels), [], rules, may_divide=may_divide, usual_area=usual_volume)
    found = [p for p in found if p.kind == "division"]
    if previous_labels is not None:
        found = [
            p
            for p in found
            if all((m & (previous_labels == p.mother)).sum() >= PIECE_FROM_MOTHER * m.sum() for m in p.masks)
        ]
    return found


def propagate_volume_with_discovery(
    session: VolumeTimeSession, options, direction: str = "forward", events: list[dict] | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """`session.propagate(direction)` with discovery of divisions on every `options.every`-th time point of the
    forward pass (see the module docstring, "Discovery"): yields (t, labels [Z, Y, X]) as `propagate` does; a
    time point on which a division was found is yielded again with the daughters (consumers keep the last
    result of a time point). The mother ends on t − 1 (`end_object`), two new objects (ids above every id the
    session holds) start on t with her as parent (`add_object`), each prompted with her piece of the mask (on
    every slice it covers); when her mask on t − 1 already was the two daughters touching (`neck_split`), the
    division moves to t − 1 (prompted there with her mask of t − 1 shared out, and on t with the pieces) and
    t − 1 is yielded again too. options: `DiscoveryOptions` (or what `DiscoveryOptions.coerce` takes). events:
    a list that receives {"frame": t, "kind": "division", "mother", "daughters", "sign"} per division. Only
    divisions are looked for (no arrivals; see the module docstring). "both": the backward half tracks without
    discovery (a division read backwards is a merge)."""
    from .discovery import DiscoveryOptions

    options = DiscoveryOptions.coerce(options)
    if options is None:
        raise InputError("discovery options are missing: give True, an int (every k time points) or DiscoveryOptions")
    if direction not in ("forward", "both"):
        raise InputError(
            "discovery runs forward in time: use direction 'forward' (or 'both': the backward half then tracks "
            "without discovery)"
        )
    start, back = session._outward_from()
    events = events if events is not None else []
    last = session.num_times - 1
    next_id = max(session.obj_ids, default=0) + 1
    born: dict[int, float] = {}  # object → the time point it was first seen on (min_cycle)
    volumes: dict[int, dict[int, int]] = {}  # object → {t: its volume} (the last result of each t; usual volume)
    searched: set[int] = set()
    keep, session.keep_features = session.keep_features, True
    try:
        t = start
        while True:
            restart = None
            passes = session.propagate_pass(t, last, reverse=False)
            try:
                for now, labels in passes:
                    yield now, labels
                    ids, counts = np.unique(labels, return_counts=True)
                    present = {int(i): int(c) for i, c in zip(ids, counts) if i}
                    for obj in present:  # objects of the start time point may be of any age: no min_cycle for them
                        born.setdefault(obj, now if now > start else -np.inf)
                    offset = now - start
                    if (
                        now in searched
                        or offset % options.every
                        or (offset == 0 and not options.on_start_frame)
                        or not options.divisions
                    ):
                        _remember_volumes(volumes, present, now)
                        continue
                    searched.add(now)
                    # the time point before (read back only where discovery looks: it is stored compressed)
                    previous = session.result(now - 1) if now - 1 in session._labels else None
                    usual = {o: float(np.median(list(v.values())[-50:])) for o, v in volumes.items() if v}
                    found = volume_divisions(
                        labels,
                        options,
                        # a division ends the mother on now - 1: never on the pass's first time point
                        may_divide=lambda obj, now=now: now > start and now - born.get(obj, now) >= options.min_cycle,
                        usual_volume=usual,
                        previous_labels=previous,
                    )
                    if not found:
                        _remember_volumes(volumes, present, now)
                        continue
                    restart = now
                    for p in found:
                        # the daughters first touched at now - 1, where the tracker answered them with one mask:
                        # the division moves there (see DIVISION_NECK) when the mother may end on now - 2
                        early = None
                        if (
                            previous is not None
                            and now - 1 > start
                            and (now - 1) - born.get(p.mother, now) >= options.min_cycle
                        ):
                            early = neck_split(previous == p.mother, *p.masks, options)
                        birth = now if early is None else now - 1
                        session.end_object(p.mother, birth - 1)
                        daughters = []
                        for _ in p.masks:
                            session.add_object(next_id, parent=p.mother, start=birth)
                            daughters.append(next_id)
                            born[next_id] = birth
                            next_id += 1
                        # each piece is a daughter: a mask prompt on every slice it covers (one slice alone let the
                        # daughter's z-stream run into a neighbour above or below on the tuning seeds); time point
                        # by time point, so that each one's slices are encoded once
                        for t_, pieces in ((now - 1, early), (now, p.masks)):
                            for d, piece in zip(daughters, pieces or (), strict=False):
                                _prompt_volume(session, t_, d, piece)
                        sign = p.sign if early is None else f"{p.sign}; a neck one time point before"
                        events.append({"frame": birth, "kind": "division", "mother": p.mother, "daughters": daughters,
                                       "sign": sign})  # fmt: skip
                        restart = min(restart, birth)
                    break  # recompute from there with the daughters (yielded again), then go on
            finally:
                passes.close()
            if restart is None:
                break
            t = restart
    finally:
        session.keep_features = keep
        session._cache_t = None
    if direction == "both":
        yield from session.propagate_pass(back, 0, reverse=True)


def _prompt_volume(session: VolumeTimeSession, t: int, obj: int, mask: np.ndarray) -> None:
    """Object `obj` at time point t is `mask` [Z, Y, X]: a mask prompt on every slice it covers."""
    empty = (np.zeros((0, 2)), np.zeros((0,), np.int32))
    for z in np.nonzero(mask.any(axis=(1, 2)))[0].tolist():
        session.add(t, z, ObjectPrompt(obj, z, *empty, mask=mask[z]), preview=False)


def _remember_volumes(volumes: dict[int, dict[int, int]], present: dict[int, int], t: int) -> None:
    for obj, count in present.items():
        volumes.setdefault(obj, {})[t] = count


def replay_volume_time(model, frames, log: list[dict], **options) -> VolumeTimeSession:
    """A new `VolumeTimeSession` on `frames` (options as its constructor) with every entry of an `edit_log` rerun
    in order: the same labels as the session that wrote the log (same model, data and thread count)."""
    session = VolumeTimeSession(model, frames, **options)
    for i, entry in enumerate(log):
        op = entry.get("op")
        if op == "add":
            session.add(entry["t"], entry["z"], ObjectPrompt.from_dict(entry["prompt"], f"log[{i}]"), entry["replace"])
        elif op == "set":
            p = entry["prompt"]
            session.set_prompt(entry["t"], entry["z"], entry["obj_id"], p and ObjectPrompt.from_dict(p, f"log[{i}]"))
        elif op == "object":
            session.add_object(entry["obj_id"], entry["parent"], entry["start"])
        elif op == "end":
            session.end_object(entry["obj_id"], entry["last"])
        elif op == "pass":
            for _ in session.propagate_pass(entry["first"], entry["last"], entry["reverse"], entry["times"]):
                pass
        else:
            raise InputError(f"log[{i}]: unknown op {op!r}")
    return session
