"""Measurements and track exports of a tracked label stack (no napari imports).

A *label stack* is [T, Y, X] or [T, Z, Y, X]: any array-like that can be indexed one frame at a time (numpy,
zarr such as `LabelStore.read_labels()`, dask), so a long stack is never loaded whole. The first axis is the one
SAM 2 propagated along (time, or z for a z-stack); a pixel holds an object id, 0 is background.

Tracks and gaps (one rule shared by `track_segments`, `tracks_from_labels`, `region_table` and `export_ctc`):
SAM 2 keeps an object's id from frame to frame, so an id *is* a track while the object is visible. The Cell
Tracking Challenge (CTC) format requires a track to be present on every frame from its begin B to its end E, so
when an object vanishes and reappears, the reappearance becomes a new track whose parent is the track before the
gap (a single-child link, the CTC convention for gaps). An object's first segment keeps the object id as its
track id; later segments get fresh ids above the largest object id, in order of (start frame, object id).

Divisions come from `parents = {daughter object id: mother object id}`. A daughter's first segment gets as parent
the mother's segment that ended last before the daughter appeared. If the mother is still present on that frame
(e.g. one daughter kept the mother's id), her segment is cut there and the continuation becomes a new track,
also a child of the pre-division segment, so the lineage is a valid CTC division (parent ends before children).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from skimage.measure import regionprops

from .io.units import symbol

CTC_MAX_LABEL = 2**16 - 1  # CTC masks are uint16

__all__ = [
    "TrackSegment",
    "consistent_parents",
    "export_ctc",
    "parents_from_provenance",
    "region_table",
    "scores_from_results",
    "track_segments",
    "tracks_from_labels",
    "write_csv",
]


@dataclass(frozen=True)
class TrackSegment:
    """One CTC track: `object_id` present on every frame `start..end` (inclusive); `parent` 0 = none."""

    track_id: int
    object_id: int
    start: int
    end: int
    parent: int = 0


# ---------------------------------------------------------------------- tracks
def track_segments(labels_stack, parents: Mapping[int, int] | None = None) -> list[TrackSegment]:
    """The tracks of a label stack under the gap/division rules of this module, sorted by track id."""
    presence = _presence(labels_stack)
    return _segments(presence, parents or {})


def tracks_from_labels(
    labels_stack, parents: Mapping[int, int] | None = None
) -> tuple[np.ndarray, dict[int, list[int]]]:
    """Data and graph for a napari Tracks layer.

    Returns data [N, 4] rows (track_id, t, y, x) for [T, Y, X] stacks, or [N, 5] (track_id, t, z, y, x) for
    [T, Z, Y, X], with the object's centroid per frame (pixels), sorted by track then frame; and graph
    {child track id: [parent track id]} for gaps and divisions (see the module docstring).
    """
    centroids: dict[tuple[int, int], tuple[float, ...]] = {}
    for t, frame in _frames(labels_stack):
        for label, region in _regions(frame):
            centroids[(label, t)] = tuple(float(c) for c in region.centroid)
    presence: dict[int, list[int]] = {}
    for obj, t in sorted(centroids, key=lambda k: (k[0], k[1])):
        presence.setdefault(obj, []).append(t)
    segments = _segments(presence, parents or {})
    width = len(labels_stack.shape) + 1  # track id, t, then the frame's (z,) y, x
    rows = [
        (seg.track_id, t, *centroids[(seg.object_id, t)]) for seg in segments for t in range(seg.start, seg.end + 1)
    ]
    data = np.asarray(rows, dtype=np.float64).reshape(-1, width)
    graph = {seg.track_id: [seg.parent] for seg in segments if seg.parent}
    return data, graph


def consistent_parents(
    parents: Mapping[int, int], presence: Mapping[int, Sequence[int]]
) -> tuple[dict[int, int], dict[int, str]]:
    """Split a lineage {daughter: mother} into the links the track rules accept and the ones they cannot.

    presence: {object id: frames where it has pixels} (e.g. from the label stack). A link is kept when both
    objects appear and the mother appears on some frame before the daughter's first one (a mother whose every
    pixel was taken by neighbours in the final labels has no track to be the parent of). Returns (kept,
    dropped) with dropped = {daughter: why}; daughters that never appear are silently left out of both.
    """
    first = {int(o): min(fr) for o, fr in presence.items() if len(fr)}
    kept: dict[int, int] = {}
    dropped: dict[int, str] = {}
    for daughter, mother in parents.items():
        daughter, mother = int(daughter), int(mother)
        if daughter not in first:
            continue
        if mother not in first:
            dropped[daughter] = f"its parent {mother} never appears in the labels"
        elif first[mother] >= first[daughter]:
            dropped[daughter] = f"its parent {mother} does not appear before frame {first[daughter]}"
        else:
            kept[daughter] = mother
    return kept, dropped


def parents_from_provenance(provenance: Mapping[str, Any]) -> dict[int, int]:
    """The lineage {daughter object id: mother object id} recorded in a result store's provenance dict ({} if none;
    stored as "parents": {"<daughter>": mother}, JSON object keys being strings; see `io.provenance`)."""
    return {int(d): int(m) for d, m in (provenance.get("parents") or {}).items()}


# ---------------------------------------------------------------------- measurements
def region_table(
    labels_stack,
    intensity=None,
    scores: Mapping[tuple[int, int], tuple[float, float]] | None = None,
    *,
    parents: Mapping[int, int] | None = None,
    scale: Sequence[float] | None = None,
    units: Mapping[str, str] | None = None,
    axes: str | None = None,
) -> list[dict[str, Any]]:
    """One row per object per frame, measured with skimage.measure.regionprops.

    intensity: optional image of the stack's shape (or with a trailing channel axis) for mean intensities.
    scores: optional {(frame, object id): (object score, predicted IoU)}, e.g. from `scores_from_results`.
    parents: {daughter object id: mother object id} (divisions).
    Columns: frame, label (object id), track_id (see module docstring), parent_track_id (the track's parent
    track: the mother's for a daughter's first track, the earlier piece for a continuation; 0 = none),
    parent_label (the mother's object id for a daughter, else 0), area (pixels; voxels for [T, Z, Y, X] stacks,
    which also get the same number as `volume`), centroid_[z,]y,x,
    bbox_[z0,]y0,x0,[z1,]y1,x1 (half-open, like numpy slices), mean_intensity (or mean_intensity_<c> per
    channel), score, iou (None where `scores` has no entry). Frames where an object is absent have no row.
    Physical columns, beside the pixel ones, when `scale` (size per axis of the stack, e.g. [30, 0.5, 0.5]) or
    `units` ({axis letter: UDUNITS-2 unit}, e.g. {"t": "second", "y": "micrometer", "x": "micrometer"}) is given:
    the frame's position (e.g. t_s = frame × 30), area_<u>2 (volume_<u>3 for 3-D objects) and centroid_<axis>_<u>, with
    <u> the unit's symbol (um, nm, s, ...) or "phys" when unknown. axes: the stack's axis letters (default "t"
    then "yx" or "zyx").
    """
    if intensity is not None and not hasattr(intensity, "shape"):
        intensity = np.asarray(intensity)
    shape = tuple(labels_stack.shape)
    if intensity is not None and tuple(intensity.shape[: len(shape)]) != shape:
        raise ValueError(f"intensity shape {tuple(intensity.shape)} must start with the label shape {shape}")
    if intensity is not None and intensity.ndim > len(shape) + 1:
        raise ValueError(f"intensity may add at most one channel axis to the label shape {shape}")
    physical = _physical_columns(shape, scale, units, axes)
    rows: list[dict[str, Any]] = []
    for t, frame in _frames(labels_stack):
        axes_ = "zyx"[3 - frame.ndim :]
        image = None if intensity is None else np.asarray(intensity[t])
        for label, region in _regions(frame, image):
            row: dict[str, Any] = {"frame": t, "label": label, "track_id": None}
            row["parent_track_id"] = 0
            row["parent_label"] = 0
            row["area"] = int(region.area)
            if frame.ndim == 3:  # a TZYX stack: each object is a 3-D mask per time point
                row["volume"] = int(region.area)
            for a, c in zip(axes_, region.centroid, strict=True):
                row[f"centroid_{a}"] = float(c)
            bbox = region.bbox
            for k, a in enumerate(axes_):
                row[f"bbox_{a}0"] = int(bbox[k])
            for k, a in enumerate(axes_):
                row[f"bbox_{a}1"] = int(bbox[frame.ndim + k])
            if physical is not None:
                (frame_column, step), (area_column, voxel), centroid_columns = physical
                row[frame_column] = t * step
                row[area_column] = float(region.area) * voxel
                for (column, size), c in zip(centroid_columns, region.centroid, strict=True):
                    row[column] = float(c) * size
            if image is not None:
                mean = np.atleast_1d(region.intensity_mean)
                if image.ndim == frame.ndim:
                    row["mean_intensity"] = float(mean[0])
                else:
                    for c, value in enumerate(mean):
                        row[f"mean_intensity_{c}"] = float(value)
            if scores is not None:
                score, iou = scores.get((t, row["label"]), (None, None))
                row["score"] = None if score is None else float(score)
                row["iou"] = None if iou is None else float(iou)
            rows.append(row)
    presence: dict[int, list[int]] = {}
    for row in rows:
        presence.setdefault(row["label"], []).append(row["frame"])
    track_of = {}
    for seg in _segments(presence, parents or {}):
        for t in range(seg.start, seg.end + 1):
            track_of[(seg.object_id, t)] = seg
    mothers = {int(d): int(m) for d, m in (parents or {}).items()}
    for row in rows:
        seg = track_of[(row["label"], row["frame"])]
        row["track_id"] = seg.track_id
        row["parent_track_id"] = seg.parent
        row["parent_label"] = mothers.get(row["label"], 0)
    return rows


def _physical_columns(shape, scale, units, axes):
    """Column names and factors of the physical columns of `region_table` (None: pixels only)."""
    if scale is None and not units:
        return None
    ndim = len(shape)
    scale = [1.0] * ndim if scale is None else [float(v) for v in scale]
    if len(scale) != ndim:
        raise ValueError(f"scale {scale} must give one size per axis of the label shape {shape}")
    axes = (axes or "t" + "zyx"[4 - ndim :]).lower()
    units = dict(units or {})
    symbols = [symbol(units.get(a)) for a in axes]
    frame_column = (f"{axes[0]}_{symbols[0]}", scale[0])
    spatial = set(symbols[1:])
    area_unit = f"{symbols[1]}{ndim - 1}" if len(spatial) == 1 and "phys" not in spatial else "phys"
    size = "volume" if ndim == 4 else "area"  # a [T, Z, Y, X] stack measures volumes
    area_column = (f"{size}_{area_unit}", float(np.prod(scale[1:])))
    centroids = [(f"centroid_{a}_{u}", size) for a, u, size in zip(axes[1:], symbols[1:], scale[1:], strict=True)]
    return frame_column, area_column, centroids


def scores_from_results(results: Iterable[Any]) -> dict[tuple[int, int], tuple[float, float]]:
    """{(frame, object id): (object score, IoU)} from per-frame results with `.frame`, `.obj_ids`, `.scores`,
    `.ious` (the tracking session's FrameResult); later results for the same frame replace earlier ones."""
    out: dict[tuple[int, int], tuple[float, float]] = {}
    for result in results:
        for obj, score, iou in zip(result.obj_ids, np.asarray(result.scores), np.asarray(result.ious), strict=True):
            out[(int(result.frame), int(obj))] = (float(score), float(iou))
    return out


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write rows (e.g. from `region_table`) as CSV; columns in first-seen order, None as an empty cell."""
    path = Path(path)
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return path


# ---------------------------------------------------------------------- Cell Tracking Challenge export
def export_ctc(
    labels_stack,
    out_dir: str | os.PathLike,
    *,
    parents: Mapping[int, int] | None = None,
    ground_truth: bool = False,
    overwrite: bool = False,
) -> dict[int, list[int]]:
    """Write the stack in the Cell Tracking Challenge layout.

    Results (default): `out_dir/res_track.txt` + `out_dir/maskTTT.tif`. Ground truth: `out_dir/TRA/man_track.txt`
    + `out_dir/TRA/man_trackTTT.tif`, and the same masks as `out_dir/SEG/man_segTTT.tif`. Masks are uint16, TTT is
    3 digits (4 from 1000 frames on). Track rows are `L B E P` (label, begin, end, parent; 0 = no parent).
    parents: {daughter object id: mother object id} for divisions. Vanishing and reappearing objects are split into
    tracks linked by parent, as `tracks_from_labels` does; CTC labels equal its track ids unless they exceed
    65535, in which case all tracks are renumbered 1.. in order of (begin, track id).
    overwrite: replace an earlier export in `out_dir` (otherwise existing CTC files there are refused).
    Returns {our object id: [its CTC labels, in time order]}.
    """
    import tifffile

    out_dir = Path(out_dir)
    shape = tuple(labels_stack.shape)
    if len(shape) not in (3, 4):
        raise ValueError(f"labels_stack must be [T, Y, X] or [T, Z, Y, X]; got shape {shape}")
    n_frames = shape[0]
    digits = 3 if n_frames < 1000 else max(4, len(str(n_frames - 1)))
    if ground_truth:
        mask_dirs = {"TRA": ("man_track", out_dir / "TRA"), "SEG": ("man_seg", out_dir / "SEG")}
        track_file = out_dir / "TRA" / "man_track.txt"
    else:
        mask_dirs = {"RES": ("mask", out_dir)}
        track_file = out_dir / "res_track.txt"
    _prepare_ctc_dirs(track_file, mask_dirs.values(), overwrite)

    segments = _segments(_presence(labels_stack), parents or {})
    ctc_label = {seg.track_id: seg.track_id for seg in segments}
    if segments and max(ctc_label) > CTC_MAX_LABEL:
        if len(segments) > CTC_MAX_LABEL:
            raise ValueError(f"{len(segments)} tracks do not fit the CTC's 16-bit labels (at most {CTC_MAX_LABEL})")
        order = sorted(segments, key=lambda s: (s.start, s.track_id))
        ctc_label = {seg.track_id: i + 1 for i, seg in enumerate(order)}

    # For each frame: object id -> CTC label of the segment covering that frame.
    per_frame: list[dict[int, int]] = [{} for _ in range(n_frames)]
    for seg in segments:
        for t in range(seg.start, seg.end + 1):
            per_frame[t][seg.object_id] = ctc_label[seg.track_id]
    for t, frame in _frames(labels_stack):
        ids, inverse = np.unique(frame, return_inverse=True)
        lut = np.array([0 if i == 0 else per_frame[t][int(i)] for i in ids], dtype=np.uint16)
        mask = lut[inverse].reshape(frame.shape)
        for prefix, folder in mask_dirs.values():
            tifffile.imwrite(folder / f"{prefix}{t:0{digits}d}.tif", mask)
    lines = [
        f"{ctc_label[s.track_id]} {s.start} {s.end} {ctc_label[s.parent] if s.parent else 0}"
        for s in sorted(segments, key=lambda s: ctc_label[s.track_id])
    ]
    track_file.write_text("".join(line + "\n" for line in lines))

    mapping: dict[int, list[int]] = {}
    for seg in sorted(segments, key=lambda s: (s.object_id, s.start)):
        mapping.setdefault(seg.object_id, []).append(ctc_label[seg.track_id])
    return mapping


# ---------------------------------------------------------------------- internals
def _regions(frame: np.ndarray, image=None):
    """(object id, regionprops region) per object of a frame. regionprops allocates per label value up to the
    largest (an id of 2**32 - 1 would ask for gigabytes), so the ids are made consecutive first."""
    ids, dense = np.unique(frame, return_inverse=True)
    dense = dense.reshape(frame.shape)
    if ids[0] != 0:  # no background in this frame: keep 0 free
        ids, dense = np.concatenate([[0], ids]), dense + 1
    for region in regionprops(dense, intensity_image=image):
        yield int(ids[region.label]), region


def _frames(labels_stack):
    """(t, frame) pairs, one frame read at a time; frames must hold non-negative integer ids."""
    for t in range(int(labels_stack.shape[0])):
        frame = np.asarray(labels_stack[t])
        if frame.ndim not in (2, 3):
            raise ValueError(f"each frame must be 2-D or 3-D; frame {t} has shape {frame.shape}")
        if frame.dtype == bool:
            frame = frame.astype(np.uint8)
        elif not np.issubdtype(frame.dtype, np.integer):
            raise TypeError(f"labels must be integer object ids; got dtype {frame.dtype}")
        elif frame.size and frame.min() < 0:
            raise ValueError(f"labels must be >= 0; frame {t} holds {frame.min()}")
        yield t, frame


def _presence(labels_stack) -> dict[int, list[int]]:
    """{object id: sorted frames where it has at least one pixel}."""
    presence: dict[int, list[int]] = {}
    for t, frame in _frames(labels_stack):
        for obj in np.unique(frame):
            if obj:
                presence.setdefault(int(obj), []).append(t)
    return presence


def _segments(presence: Mapping[int, Sequence[int]], parents: Mapping[int, int]) -> list[TrackSegment]:
    """Split each object's frames into continuous tracks and link them (see the module docstring)."""
    frames_of = {obj: sorted(set(frames)) for obj, frames in presence.items() if frames}
    present = {obj: set(frames) for obj, frames in frames_of.items()}
    parents = {int(d): int(m) for d, m in parents.items()}
    cuts: dict[int, set[int]] = {obj: set() for obj in frames_of}
    for daughter, mother in parents.items():
        if daughter == mother:
            raise ValueError(f"object {daughter} cannot be its own parent")
        if daughter not in frames_of:
            continue  # a daughter that never appears has nothing to link
        if mother not in frames_of:
            raise ValueError(f"parent {mother} of object {daughter} never appears in the labels")
        birth = frames_of[daughter][0]
        if birth in present[mother] and birth - 1 in present[mother]:
            cuts[mother].add(birth)  # the mother continues past the division: cut her track there

    runs: dict[int, list[tuple[int, int]]] = {}
    for obj, frames in frames_of.items():
        obj_runs = []
        start = prev = frames[0]
        for t in frames[1:]:
            if t != prev + 1 or t in cuts[obj]:
                obj_runs.append((start, prev))
                start = t
            prev = t
        obj_runs.append((start, prev))
        runs[obj] = obj_runs

    # Track ids: first run keeps the object id, later runs count up from above the largest object id.
    track_id: dict[tuple[int, int], int] = {}
    next_id = max(frames_of, default=0) + 1
    later = sorted(((r[0], obj, k) for obj, rs in runs.items() for k, r in enumerate(rs) if k), key=lambda x: x[:2])
    for obj in runs:
        track_id[(obj, 0)] = obj
    for _, obj, k in later:
        track_id[(obj, k)] = next_id
        next_id += 1

    segments = []
    for obj, obj_runs in runs.items():
        for k, (start, end) in enumerate(obj_runs):
            parent = 0
            if k:
                parent = track_id[(obj, k - 1)]  # a gap or a division cut: continuation of the same object
            elif obj in parents:
                mother = parents[obj]
                before = [j for j, (_, e) in enumerate(runs[mother]) if e < start]
                if not before:
                    raise ValueError(
                        f"object {obj} appears on frame {start}, but its parent {mother} is not present before it"
                    )
                parent = track_id[(mother, before[-1])]
            segments.append(TrackSegment(track_id[(obj, k)], obj, start, end, parent))
    return sorted(segments, key=lambda s: s.track_id)


_CTC_NAME = re.compile(r"^(mask|man_track|man_seg)\d+\.tif$")


def _prepare_ctc_dirs(track_file: Path, mask_dirs, overwrite: bool) -> None:
    folders = [folder for _, folder in mask_dirs]
    existing = [track_file] if track_file.exists() else []
    for folder in folders:
        if folder.is_dir():
            existing += [p for p in folder.iterdir() if _CTC_NAME.match(p.name)]
    if existing and not overwrite:
        raise FileExistsError(
            f"{track_file.parent} already holds a CTC export ({existing[0].name}, ...); pass overwrite=True to "
            "replace it or choose another folder"
        )
    for path in existing:  # stale masks of a longer earlier export would corrupt the new one
        path.unlink()
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
