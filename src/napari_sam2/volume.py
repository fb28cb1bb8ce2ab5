"""The axial edge rule on a plain z-stack: a [Z, Y, X] stack tracked along z by one `TrackingSession`.

3D+t (`volume_time.VolumeTimeSession`) ends each object in z with `volume_time.axial_trim` after its z-stream at a
time point (see `volume_time.Z_EDGE`: under the microscope's axial blur a nucleus's cap slices show a dim halo as
wide as its middle, which the model draws whole; a voxel is kept where the image reaches half the brightest voxel
of its (y, x) column inside the mask). A z-stack tracked along z is the same problem, so the same rule runs there:
`TrackingSession(..., z_edge=Z_EDGE)` (what `track()`, the CLI and the widget give a stream axis that is z by
default: `resolve_z_edge`, which also reads the CLI's --z-edge and the widget's z edge field; never a time axis)
notes every object's mask on every slice as the session yields it (`AxialEdge.note`), and
`TrackingSession.axial_edge()` — called by each face once its propagation has run to the end — returns every
slice's result again with the rule applied to each object's whole 3-D mask. The faces write those results as they
write any other (`replay.LabelWriter`); the call is an entry of the edit log ({"op": "edge", "z_edge"}), so
`napari-sam2 replay` applies it at the same point. Nothing the model computes changes: the memory bank keeps the
model's masks, and a later propagation recomputes from them. Until the model recomputes an object on a slice, the
session's results show it as the rule left it (`AxialEdge.shown`): a prompt on one object does not bring back
another's halo on that slice; the next `axial_edge()` trims every object again from the model's masks.

The same stack as ZYX and as a one-time-point TZYX gives the same labels when every object's z-stream is the same
in both: the 3D+t engine runs one z-stream per object from that object's own prompted slices, the z-stack session
one stream for all objects from the earliest prompted slice of any; with every object prompted on the same slice
(and the same intensity window) the two are identical (tests/test_volume.py). The overlap rule is the 3D+t one: a
voxel goes to the object with the highest logit among those whose trimmed mask holds it.

Memory: per object and slice, the model's logits inside the box of its mask there (float32), kept until the object
is removed; no image is kept (each object's box of its slices is read again when the rule runs).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator

import numpy as np

from .errors import InputError
from .model.sam2 import NO_OBJECT_LOGIT
from .volume_time import TRIM_MARGIN, Z_EDGE, Z_EDGE_BACKGROUND, axial_trim, check_z_edge_background

__all__ = ["Z_EDGE", "AxialEdge", "check_z_edge", "resolve_z_edge"]


def check_z_edge(z_edge) -> float | None:
    """z_edge as given → the fraction (float in (0, 1)) or None (the rule off); InputError otherwise: a number
    outside (0, 1) (NaN included), a bool, a string (the faces parse text with `parse_z_edge`) or anything that is
    not a real number (e.g. a 0-d array). Real numbers of any type (float, numpy scalars, fractions.Fraction)
    pass."""
    if z_edge is None:
        return None
    if isinstance(z_edge, (bool, np.bool_)) or not isinstance(z_edge, numbers.Real) or not 0.0 < float(z_edge) < 1.0:
        raise InputError(f"z_edge is a fraction between 0 and 1 (or None: no axial edge rule); got {z_edge!r}")
    return float(z_edge)


def parse_z_edge(value) -> float | None:
    """A z_edge option as a user gives it (a fraction, its text, None / "off" / "none") → the fraction or None (the
    rule off); InputError otherwise. "auto" is not parsed here (see `resolve_z_edge`)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("off", "none"):
            return None
        try:
            value = float(text)
        except ValueError:
            raise InputError(
                f"z_edge is a fraction between 0 and 1, 'off' or 'auto' (0.5 on a z stream); got {value!r}"
            ) from None
    return check_z_edge(value)


def asks_auto_z_edge(given) -> bool:
    """Whether `given` (a --z-edge value: text, a number or None) asks for the automatic axial edge rule."""
    return isinstance(given, str) and given.strip().lower() == "auto"


def resolve_z_edge(given, z_stream: bool, recorded: dict | None = None, where: str = "the store") -> float | None:
    """The axial edge rule a run uses. given: "auto" (Z_EDGE on a z stream, off along t), a fraction, or None / "off".
    z_stream: the stream is z (a ZYX stack along z, or 3D+t). recorded: the settings of the store a resumed run
    replays (its z_edge, none recorded = made before the rule: off); a given value that differs is refused, as any
    changed setting of a resumed run is. A fraction on a time stream is refused (the rule reads a z column)."""
    auto = asks_auto_z_edge(given)
    fraction = None if auto else parse_z_edge(given)
    if recorded is not None:
        made = recorded.get("z_edge")
        if not auto and fraction != made:
            raise InputError(
                f"{where} was made with z_edge={made!r}; a resumed run replays it, so z_edge={fraction!r} cannot "
                "apply: resume without --z-edge, or write to a new --out"
            )
        return made
    if auto:
        return Z_EDGE if z_stream else None
    if fraction is not None and not z_stream:
        raise InputError(
            f"z_edge={fraction} is the axial edge rule of a z-stack, but this stack is followed along time: leave "
            "z_edge out (or give --axis z if the stream axis is z)"
        )
    return fraction


class AxialEdge:
    """What a z-stack session keeps for the axial edge rule: per object and slice, the model's logits in the box of
    its mask there, as last yielded (`note`), and the rule applied to them all (`results`)."""

    def __init__(
        self, fraction: float, num_slices: int, frame_shape: tuple[int, int], background: float = Z_EDGE_BACKGROUND
    ):
        self.fraction = check_z_edge(fraction)
        self.background = check_z_edge_background(background)  # the ring percentile (`axial_trim`)
        if self.fraction is None:
            raise InputError("AxialEdge needs a fraction (z_edge); None is the rule off")
        self.num_slices = int(num_slices)
        self.frame_shape = tuple(int(s) for s in frame_shape)
        # obj → {slice: (y0, x0, logits [h, w] float32 of the box of mask > 0) or None (empty there)}
        self.notes: dict[int, dict[int, tuple[int, int, np.ndarray] | None]] = {}
        # obj → {slice: (y0, x0, kept [h, w] bool)}: what the last `results` kept of the noted mask there, until the
        # model recomputes the object on that slice (`shown`)
        self.kept: dict[int, dict[int, tuple[int, int, np.ndarray]]] = {}

    def note(self, frame: int, obj_ids, logits: np.ndarray, computed=()) -> None:
        """The result of slice `frame`: logits [K, Y, X] of objects `obj_ids` (`FrameResult.logits`, as the model
        made them); `computed`: the objects the model (re)computed there (what the last rule kept of them there is
        void)."""
        for obj in computed:
            self.kept.get(int(obj), {}).pop(int(frame), None)
        for k, obj in enumerate(obj_ids):
            inside = logits[k] > 0
            rows, cols = np.nonzero(inside.any(axis=1))[0], np.nonzero(inside.any(axis=0))[0]
            if not len(rows):
                self.notes.setdefault(int(obj), {})[int(frame)] = None
                continue
            y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
            crop = np.array(logits[k, y0:y1, x0:x1], dtype=np.float32, copy=True)
            self.notes.setdefault(int(obj), {})[int(frame)] = (y0, x0, crop)

    def shown(self, frame: int, obj_ids, logits: np.ndarray) -> np.ndarray:
        """logits [K, Y, X] of slice `frame` (noted first) as the faces show them: each object the last `results`
        trimmed there and the model has not recomputed since stays trimmed (its logits ≤ 0 where the rule took the
        mask away), so a prompt on one object does not bring back another's halo on that slice. In place."""
        for k, obj in enumerate(obj_ids):
            entry = self.kept.get(int(obj), {}).get(int(frame))
            if entry is not None:
                y0, x0, box = entry
                part = logits[k, y0 : y0 + box.shape[0], x0 : x0 + box.shape[1]]
                part[...] = np.where(box, part, np.minimum(part, 0.0))
        return logits

    def forget(self, obj: int | None = None) -> None:
        """Drop the notes of `obj` (None: of every object)."""
        if obj is None:
            self.notes.clear()
            self.kept.clear()
        else:
            self.notes.pop(int(obj), None)
            self.kept.pop(int(obj), None)

    def keep_masks(self, objects: dict, read_region, fraction: float | None = None, background=None) -> dict:
        """{obj: {slice: (y0, x0, logits, kept [h, w] bool) or None (empty there)}}: each object's notes on the
        slices it has an output on now, with the voxels the rule keeps. objects: {obj: ObjectTrack} (the session's;
        `output(frame)` says where it has one, `prompts` the slices kept as drawn). read_region(z, rows, cols) →
        [rows, cols] of slice z's image (grey); fraction / background: the rule's (None: this edge's)."""
        fraction = self.fraction if fraction is None else check_z_edge(fraction)
        background = self.background if background is None else check_z_edge_background(background)
        h, w = self.frame_shape
        out = {}
        for obj, track in objects.items():
            notes = {f: n for f, n in self.notes.get(obj, {}).items() if track.output(f) is not None}
            full = {f: n for f, n in notes.items() if n is not None}
            if not full:
                out[obj] = {f: None for f in notes}
                continue
            y_lo = max(0, min(n[0] for n in full.values()) - TRIM_MARGIN)
            y_hi = min(h, max(n[0] + n[2].shape[0] for n in full.values()) + TRIM_MARGIN)
            x_lo = max(0, min(n[1] for n in full.values()) - TRIM_MARGIN)
            x_hi = min(w, max(n[1] + n[2].shape[1] for n in full.values()) + TRIM_MARGIN)
            # the object's mask in its box (+ the margin axial_trim reads): the same box axial_trim crops from the
            # whole [Z, Y, X] mask, so the rule sees exactly what it sees there (the 3D+t engine's call)
            mask = np.zeros((self.num_slices, y_hi - y_lo, x_hi - x_lo), bool)
            for f, (y0, x0, logit) in full.items():
                mask[f, y0 - y_lo : y0 - y_lo + logit.shape[0], x0 - x_lo : x0 - x_lo + logit.shape[1]] = logit > 0

            def region(z, rows, cols, y_lo=y_lo, x_lo=x_lo):
                return read_region(z, slice(rows.start + y_lo, rows.stop + y_lo), slice(cols.start + x_lo,
                                                                                        cols.stop + x_lo))  # fmt: skip

            kept = axial_trim(mask, None, fraction, keep=list(track.prompts), read_region=region, background=background)
            per_slice = {}
            for f, n in notes.items():
                if n is None:
                    per_slice[f] = None
                    continue
                y0, x0, logit = n
                box = kept[f, y0 - y_lo : y0 - y_lo + logit.shape[0], x0 - x_lo : x0 - x_lo + logit.shape[1]]
                per_slice[f] = (y0, x0, logit, box)
            out[obj] = per_slice
        return out

    def results(self, session, fraction: float | None = None, background: float | None = None) -> Iterator:
        """Every slice any object of `session` has an output on, as a `FrameResult` with the rule applied (an
        iterator, in slice order: the rule runs and the session is read at the call, each slice's arrays are made
        when it is asked for, so one slice's [K, Y, X] arrays are held at a time): masks
        are the model's minus what the rule takes away; labels give a voxel to the object with the highest logit
        among those whose trimmed mask holds it (the 3D+t engine's rule); logits are the model's where the trimmed
        mask holds the voxel, else ≤ 0 (`NO_OBJECT_LOGIT` outside it); scores / ious the object's on that slice."""
        objects = dict(session.objects)
        for obj in [o for o in self.notes if o not in objects]:
            del self.notes[obj]  # removed objects
        kept = self.keep_masks(objects, _grey_region(session.frames), fraction, background)
        self.kept = {
            obj: {
                f: (e[0], e[1], e[3])
                for f, e in per_slice.items()
                if e is not None and not np.array_equal(e[3], e[2] > 0)
            }
            for obj, per_slice in kept.items()
        }
        # what each slice's result needs, read from the session now (under its lock); the frame-size arrays are made
        # one slice at a time as the caller asks, so memory stays at one slice however tall the stack
        plans = []
        for frame in sorted({f for per_slice in kept.values() for f in per_slice}):
            ids = [obj for obj in objects if frame in kept[obj]]
            outs = [objects[obj].output(frame) for obj in ids]
            scores = np.asarray([float(out.score.flatten()[0]) for out in outs], np.float32)
            ious = np.asarray([float(out.iou) for out in outs], np.float32)
            plans.append((frame, ids, [kept[obj][frame] for obj in ids], scores, ious))
        return _slice_results(plans, self.frame_shape)


def _slice_results(plans, frame_shape):
    """Generator of the `FrameResult`s of `AxialEdge.results`' plans [(slice, ids, entries, scores, ious)]."""
    from .session import FrameResult

    h, w = frame_shape
    for frame, ids, entries, scores, ious in plans:
        logits = np.full((len(ids), h, w), NO_OBJECT_LOGIT, np.float32)
        masks = np.zeros((len(ids), h, w), bool)
        for k, entry in enumerate(entries):
            if entry is None:
                continue
            y0, x0, logit, box = entry
            region = (slice(y0, y0 + logit.shape[0]), slice(x0, x0 + logit.shape[1]))
            logits[k][region] = np.where(box, logit, np.minimum(logit, 0.0))
            masks[k][region] = box
        labels = np.zeros((h, w), np.uint32)
        if ids:
            ranked = np.where(masks, logits, -np.inf)
            best = np.argmax(ranked, axis=0)
            held = masks.any(axis=0)
            labels[held] = np.asarray(ids, np.uint32)[best[held]]
        yield FrameResult(
            frame=frame, obj_ids=ids, logits=logits, masks=masks, labels=labels, scores=scores, ious=ious, computed=[]
        )


def _grey_region(frames):
    """read_region(z, rows, cols) of a `FrameSource`: the part [rows, cols] of slice z as stored, one channel (the
    chosen one; RGB without a choice: the mean of its channels), read without the rest of the slice."""

    def read(z: int, rows: slice, cols: slice) -> np.ndarray:
        region = frames.raw_region(int(z), rows, cols)
        if region.ndim == 3:
            region = region[..., frames.channel] if frames.channel is not None else region.mean(axis=-1)
        return region

    return read
