"""Prompts of a tracking run as data: build them in code, from files, from seed labels or from napari layers.

A `PromptSet` is an ordered list of `ObjectPrompt` (one object's points / box / mask on one frame). Applied to a
`TrackingSession` in that order it reproduces the clicks that made a result, so it is also what a result store keeps
as provenance and what `--resume` reads back. Coordinates are napari's: (row, col) = (y, x) in pixels of the frame.

Files:
  JSON  {"format": "napari-sam2-prompts", "version": 1, "prompts": [{"obj_id", "frame", "points": [[y, x], ...],
        "labels": [1, 0, ...], "box": [y0, x0, y1, x1] | null, "mask": {"shape": [H, W], "rle": [...]} | null}]}
        Masks are run-length encoded over the C-ordered (row-major) pixels: run lengths alternating background,
        foreground, background, ... starting with background (a mask starting with foreground begins with 0).
  CSV   header with columns obj_id, frame, y, x, label (label optional, default 1: 1 = object, 0 = background),
        and for boxes kind=box with y0, x0, y1, x1 (kind optional: "point" or "box"). Rows of the same object and
        frame are one prompt; masks cannot be written to CSV (use JSON or seed labels).

3D+t (TZYX) stacks: a prompt lies on one (t, z) slice. `ObjectPrompt.t` holds the time point and `frame` the z
slice (the frame of that time point's z-stream); `t` is None for a prompt on a 3-D stack. Files name the two
indices `t` and `z`: CSV columns obj_id, t, z, y, x, ... and JSON fields "t" and "z" (instead of "frame"). Files
without `t` (every file written before 3D+t) load as before; a file either gives `t` on every row or on none.
Every bad input raises `PromptError` (an `InputError`) that names the file, the line (CSV, and JSON syntax) or
the prompt index (JSON) and the field.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

FORMAT_NAME = "napari-sam2-prompts"
FORMAT_VERSION = 1
#: object ids are label values of the uint32 label store
MAX_OBJ_ID = 2**32 - 1
#: a mask whose frame size is not known yet (e.g. a result's provenance read alone) may declare at most this many
#: pixels (a 16384² frame): a few bytes of JSON must not make the reader allocate gigabytes
MAX_MASK_PIXELS = 16384 * 16384
CSV_COLUMNS = ("obj_id", "frame", "kind", "y", "x", "label", "y0", "x0", "y1", "x1")
#: the CSV columns of prompts on a TZYX stack: (t, z) instead of frame
CSV_COLUMNS_TZ = ("obj_id", "t", "z", "kind", "y", "x", "label", "y0", "x0", "y1", "x1")

__all__ = [
    "CSV_COLUMNS",
    "CSV_COLUMNS_TZ",
    "ObjectPrompt",
    "PromptError",
    "PromptSet",
    "check_box",
    "check_points",
    "make_prompt",
    "rle_decode",
    "rle_encode",
]


class PromptError(InputError):
    """A prompt (or prompts file) that cannot be used; the message names where and what."""


@dataclass
class ObjectPrompt:
    """One object's prompt on one frame, napari pixels of the frame: points [N, 2] (y, x) float, labels [N] int
    (1 object / 0 background), box [4] (y0, x0, y1, x1) or None, mask [H, W] bool or None.
    t: the time point of a prompt on a TZYX stack, whose `frame` is then the z slice (None: a 3-D stack's frame)."""

    obj_id: int
    frame: int
    points: np.ndarray
    labels: np.ndarray
    box: np.ndarray | None = None
    mask: np.ndarray | None = None
    t: int | None = None

    @property
    def z(self) -> int:
        """The z slice of a TZYX prompt (the same number as `frame`)."""
        return int(self.frame)

    @property
    def slice_index(self) -> tuple[int, ...]:
        """(t, z) of a TZYX prompt, (frame,) otherwise: where the prompt lies in the label stack."""
        return (int(self.frame),) if self.t is None else (int(self.t), int(self.frame))

    def to_dict(self) -> dict[str, Any]:
        where = {"frame": int(self.frame)} if self.t is None else {"t": int(self.t), "z": int(self.frame)}
        return {
            "obj_id": int(self.obj_id),
            **where,
            "points": np.asarray(self.points, dtype=float).reshape(-1, 2).tolist(),
            "labels": [int(v) for v in self.labels],
            "box": None if self.box is None else [float(v) for v in self.box],
            "mask": None if self.mask is None else {"shape": list(self.mask.shape), "rle": rle_encode(self.mask)},
        }

    def __eq__(self, other) -> bool:
        return isinstance(other, ObjectPrompt) and self.to_dict() == other.to_dict()

    @classmethod
    def from_dict(cls, item: Mapping[str, Any], where: str = "prompt", frame_shape=None) -> ObjectPrompt:
        """Inverse of `to_dict`; errors name `where` and the field. frame_shape: (H, W) of the stack, if known: a
        mask declaring another size is refused before it is decoded (see `PromptSet.from_dict`)."""
        if not isinstance(item, Mapping):
            raise PromptError(f"{where}: expected an object; got {type(item).__name__}")
        unknown = set(item) - {"obj_id", "frame", "t", "z", "points", "labels", "box", "mask"}
        if unknown:
            raise PromptError(f"{where}: unknown field(s) {sorted(unknown)}")
        item = dict(item)
        if "z" in item:  # a TZYX prompt: z is its frame
            if "frame" in item:
                raise PromptError(f"{where}: give the slice as 'z' (with 't') or as 'frame', not both")
            if "t" not in item:
                raise PromptError(f"{where}: field 'z' needs a time point 't' (a 3-D stack's prompts use 'frame')")
            item["frame"] = item.pop("z")
        elif "t" in item and "frame" not in item:
            raise PromptError(f"{where}: field 'z' is missing (a prompt with a time point 't' lies on a z slice)")
        for required in ("obj_id", "frame"):
            if required not in item:
                raise PromptError(f"{where}: field {required!r} is missing")
        mask = item.get("mask")
        if mask is not None:
            _check_mask_shape(mask, frame_shape, where)
            try:
                mask = rle_decode(mask["rle"], mask["shape"])
            except (KeyError, TypeError, ValueError) as exc:
                raise PromptError(f"{where}.mask: not a valid run-length mask ({exc})") from None
        return _make_prompt(
            item["frame"],
            item["obj_id"],
            item.get("points"),
            item.get("labels"),
            item.get("box"),
            mask,
            where,
            t=item.get("t"),
        )

    @property
    def num_points(self) -> int:
        """Points as the network sees them (a box counts as its two corners)."""
        return len(self.points) + (2 if self.box is not None else 0)

    def check(
        self,
        frame_shape: tuple[int, int],
        num_frames: int | None = None,
        where: str | None = None,
        num_times: int | None = None,
    ) -> None:
        """The one set of rules for a prompt on a stack of `num_frames` (H, W) frames (PromptSet, session, widget
        and files all apply it): frame in range; points at 0 ≤ y < H, 0 ≤ x < W; a box of non-zero area that
        overlaps the frame; a mask of the frame's size. Raises `PromptError` naming `where`.
        num_times: the T of a TZYX stack (then `num_frames` is its Z): the prompt must carry a t in 0…T-1."""
        where = where or self.describe()
        if num_times is not None:
            if self.t is None:
                raise PromptError(
                    f"{where}: a prompt on a TZYX stack needs a time point t as well as its z slice (CSV columns "
                    "obj_id, t, z, y, x; JSON fields 't' and 'z')"
                )
            if not 0 <= self.t < num_times:
                raise PromptError(f"{where}: time point t={self.t} is outside the stack (t 0…{num_times - 1})")
            if num_frames is not None and not 0 <= self.frame < num_frames:
                raise PromptError(f"{where}: z slice {self.frame} is outside the stack (z 0…{num_frames - 1})")
        elif num_frames is not None and self.t is not None:
            raise PromptError(
                f"{where}: the prompt has a time point t={self.t} but the stack has one stream axis; "
                "give prompts without t (CSV column 'frame') for a 3-D stack"
            )
        elif num_frames is not None and not 0 <= self.frame < num_frames:
            raise PromptError(f"{where}: frame {self.frame} is outside the stack (frames 0…{num_frames - 1})")
        if len(self.points):
            check_points(self.points, frame_shape, where)
        if self.box is not None:
            check_box(self.box, frame_shape, where)
        if self.mask is not None and self.mask.shape != tuple(frame_shape):
            raise PromptError(
                f"{where}: mask shape {self.mask.shape} does not match the frame size {tuple(frame_shape)}"
            )

    def describe(self) -> str:
        """ "object 3 on frame 5" / "object 3 at t=2, z=5", for messages."""
        if self.t is None:
            return f"object {self.obj_id} on frame {self.frame}"
        return f"object {self.obj_id} at t={self.t}, z={self.frame}"


def check_points(points: np.ndarray, frame_shape: tuple[int, int], where: str = "prompt") -> None:
    """Points [N, 2] (y, x) must lie on the frame: 0 ≤ y < H and 0 ≤ x < W (pixel (r, c) covers r…r+1, so y == H is
    already below the last row)."""
    h, w = frame_shape
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    outside = ~((pts[:, 0] >= 0) & (pts[:, 0] < h) & (pts[:, 1] >= 0) & (pts[:, 1] < w))
    if outside.any():
        y, x = pts[np.flatnonzero(outside)[0]]
        raise PromptError(
            f"{where}: point (y={y:g}, x={x:g}) lies outside the {h}×{w} frame (0 ≤ y < {h}, 0 ≤ x < {w}; "
            "coordinates are (row, column) pixels)"
        )


def check_box(box: np.ndarray, frame_shape: tuple[int, int], where: str = "prompt") -> None:
    """A box [y0, x0, y1, x1] must have a non-zero area and overlap the frame."""
    h, w = frame_shape
    y0, x0, y1, x1 = (float(v) for v in np.asarray(box, dtype=float).ravel())
    if y0 == y1 or x0 == x1:
        raise PromptError(f"{where}: the box {[y0, x0, y1, x1]} has zero area; drag a rectangle around the object")
    if max(y0, y1) < 0 or min(y0, y1) >= h or max(x0, x1) < 0 or min(x0, x1) >= w:
        raise PromptError(f"{where}: box {[y0, x0, y1, x1]} lies outside the {h}×{w} frame")


def make_prompt(
    frame, obj_id, points=None, labels=None, box=None, mask=None, where: str = "prompt", *, t=None
) -> ObjectPrompt:
    """One checked `ObjectPrompt` from loose values (structure only: types, counts, labels 0/1, finite numbers,
    a non-empty 2-D mask; where it lies on a stack is `ObjectPrompt.check`). Raises `PromptError`.
    t: the time point of a prompt on a TZYX stack (`frame` is then its z slice)."""
    return _make_prompt(frame, obj_id, points, labels, box, mask, where, t=t)


# ---------------------------------------------------------------------- run-length encoding of masks
def rle_encode(mask) -> list[int]:
    """[H, W] bool → run lengths over the row-major pixels, alternating background/foreground, background first."""
    flat = np.asarray(mask, dtype=bool).ravel()
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] else runs


def rle_decode(runs, shape) -> np.ndarray:
    """Inverse of `rle_encode`: run lengths + (H, W) → [H, W] bool."""
    shape = tuple(int(s) for s in shape)
    runs = np.asarray(runs, dtype=np.int64)
    if runs.ndim != 1 or (runs.size and runs.min() < 0):
        raise ValueError("run lengths must be a flat list of non-negative integers")
    total = int(np.prod(shape))
    if int(runs.sum()) != total:
        raise ValueError(f"run lengths add up to {int(runs.sum())} pixels but the shape {shape} has {total}")
    values = np.arange(runs.size) % 2 == 1  # odd runs are foreground
    return np.repeat(values, runs).reshape(shape)


# ---------------------------------------------------------------------- validation helpers
def _int(value, field: str, where: str, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise PromptError(f"{where}: {field} must be an integer; got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PromptError(f"{where}: {field} must be an integer; got {value!r}") from None
    if not number.is_integer() or number < minimum:
        rule = "a positive integer" if minimum == 1 else "a non-negative integer"
        raise PromptError(f"{where}: {field} must be {rule}; got {value!r}")
    if maximum is not None and int(number) > maximum:
        raise PromptError(f"{where}: {field} must be at most {maximum} (it is a uint32 label value); got {value!r}")
    return int(number)


def _float_array(value, field: str, where: str, shape_rule: str, check) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise PromptError(f"{where}: {field} must be numbers ({shape_rule}); got {value!r}") from None
    if not check(arr):
        raise PromptError(f"{where}: {field} must be {shape_rule}; got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise PromptError(f"{where}: {field} holds a NaN or infinite coordinate")
    return arr


def _make_prompt(frame, obj_id, points, labels, box, mask, where: str, t=None) -> ObjectPrompt:
    obj_id = _int(obj_id, "obj_id", where, 1, MAX_OBJ_ID)
    frame = _int(frame, "frame" if t is None else "z", where, 0)
    t = None if t is None else _int(t, "t", where, 0)
    has_points = points is not None and len(points) > 0
    if not has_points and box is None and mask is None:
        raise PromptError(f"{where}: object {obj_id} on frame {frame} has no points, box or mask")
    if mask is not None and (has_points or box is not None):
        raise PromptError(f"{where}: give either a mask or points/box for object {obj_id} on frame {frame}, not both")
    pts = np.zeros((0, 2))
    lab = np.zeros((0,), dtype=np.int32)
    if has_points:
        pts = _float_array(points, "points", where, "[[y, x], ...]", lambda a: a.ndim == 2 and a.shape[1] == 2)
        if labels is None:
            lab = np.ones(len(pts), dtype=np.int32)
        else:
            raw = np.asarray(labels).ravel()
            if raw.dtype == bool:
                raw = raw.astype(np.int32)
            if len(raw) != len(pts):
                raise PromptError(f"{where}: {len(pts)} points but {len(raw)} labels")
            try:
                lab = raw.astype(np.float64)
            except (TypeError, ValueError):
                raise PromptError(f"{where}: labels must be 1 (object) or 0 (background); got {list(raw)}") from None
            if not np.all(np.isin(lab, (0, 1))):
                raise PromptError(f"{where}: labels must be 1 (object) or 0 (background); got {raw.tolist()}")
            lab = lab.astype(np.int32)
    bx = None
    if box is not None:
        bx = _float_array(box, "box", where, "[y0, x0, y1, x1]", lambda a: a.shape == (4,))
    m = None
    if mask is not None:
        m = np.asarray(mask)
        if m.ndim != 2:
            raise PromptError(f"{where}: mask must be a 2-D [H, W] array; got shape {m.shape}")
        if m.dtype.kind in "fc" and not np.all(np.isfinite(m)):
            raise PromptError(f"{where}: the mask of object {obj_id} on frame {frame} holds NaN or infinite values")
        m = m.astype(bool)
        if not m.any():
            raise PromptError(f"{where}: the mask of object {obj_id} on frame {frame} is empty")
    return ObjectPrompt(obj_id, frame, pts, lab, bx, m, t)


# ---------------------------------------------------------------------- the prompt set
class PromptSet:
    """An ordered list of `ObjectPrompt` (order = the order they were given, which is the order they are applied)."""

    def __init__(self, prompts: Iterable[ObjectPrompt] = ()):
        self._prompts: list[ObjectPrompt] = list(prompts)

    def add(self, frame, obj_id, points=None, labels=None, box=None, mask=None, *, t=None) -> ObjectPrompt:
        """Append one object's prompt on `frame`: points [[y, x], ...] with labels (default 1), a box
        [y0, x0, y1, x1], or a mask [H, W] (alone). Returns the new `ObjectPrompt`.
        TZYX stacks: `t` is the time point and `frame` the z slice, e.g. ``add(z, obj_id, points, t=t)``."""
        prompt = _make_prompt(frame, obj_id, points, labels, box, mask, f"prompt {len(self._prompts)}", t=t)
        self._prompts.append(prompt)
        return prompt

    def append(self, prompt: ObjectPrompt) -> None:
        """Append an `ObjectPrompt` made elsewhere (`make_prompt`, the widget's layers)."""
        if not isinstance(prompt, ObjectPrompt):
            raise TypeError(f"expected an ObjectPrompt; got {type(prompt).__name__}")
        self._prompts.append(prompt)

    def __iter__(self) -> Iterator[ObjectPrompt]:
        return iter(self._prompts)

    def __len__(self) -> int:
        return len(self._prompts)

    def __getitem__(self, index):
        return self._prompts[index]

    def __eq__(self, other) -> bool:
        return isinstance(other, PromptSet) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"PromptSet({len(self)} prompts, objects {self.obj_ids}, frames {self.frames})"

    @property
    def obj_ids(self) -> list[int]:
        """Object ids in first-seen order."""
        return list(dict.fromkeys(p.obj_id for p in self._prompts))

    @property
    def frames(self) -> list[int]:
        """Prompted frames, sorted (the z slices of TZYX prompts; see `slices` for (t, z))."""
        return sorted({p.frame for p in self._prompts})

    @property
    def times(self) -> list[int]:
        """Prompted time points of TZYX prompts, sorted ([] when no prompt carries a t)."""
        return sorted({p.t for p in self._prompts if p.t is not None})

    @property
    def slices(self) -> list[tuple[int, ...]]:
        """Prompted (t, z) slices of TZYX prompts, or (frame,) of 3-D ones, sorted."""
        return sorted({p.slice_index for p in self._prompts})

    @property
    def is_4d(self) -> bool:
        """True when the prompts carry time points (they are for a TZYX stack)."""
        return any(p.t is not None for p in self._prompts)

    # -------------------------------------------------------------- use
    def validate(self, num_frames: int, frame_shape: tuple[int, int], num_times: int | None = None) -> None:
        """Check every prompt against a stack of `num_frames` frames of (H, W) `frame_shape` with the rules of
        `ObjectPrompt.check` (the session's own); one clear error naming the prompt. A TZYX stack: `num_times`
        its T and `num_frames` its Z (every prompt must then carry a t)."""
        for i, p in enumerate(self._prompts):
            where = f"prompt {i} ({p.describe()})"
            p.check(frame_shape, num_frames, where=where, num_times=num_times)

    def apply(self, session) -> list:
        """`session.add(prompt)` for each prompt, in order (clicks on the same object and frame add up, as in the
        widget) → the result of each. A TZYX prompt goes to a 3D+t session as `session.add(t, z, prompt)`."""
        return [session.add(p) if p.t is None else session.add(p.t, p.frame, p) for p in self._prompts]

    # -------------------------------------------------------------- dict / JSON
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (masks run-length encoded)."""
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "prompts": [p.to_dict() for p in self._prompts]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "prompts", frame_shape=None) -> PromptSet:
        """Inverse of `to_dict`; errors name `source`, the prompt index and the field. frame_shape: (H, W) of the
        stack the prompts are for; a mask declaring another size is refused before it is decoded (without it, masks
        may declare at most `MAX_MASK_PIXELS`)."""
        if not isinstance(data, Mapping):
            raise PromptError(f"{source}: expected an object with 'prompts'; got {type(data).__name__}")
        if data.get("format", FORMAT_NAME) != FORMAT_NAME:
            raise PromptError(f"{source}: format is {data.get('format')!r}, expected {FORMAT_NAME!r}")
        version = data.get("version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise PromptError(f"{source}: prompts format version {version!r} is not supported (expected 1)")
        items = data.get("prompts")
        if not isinstance(items, list):
            raise PromptError(f"{source}: field 'prompts' must be a list of prompts")
        return cls(ObjectPrompt.from_dict(item, f"{source}: prompts[{i}]", frame_shape) for i, item in enumerate(items))

    # -------------------------------------------------------------- files
    def save(self, path: str | os.PathLike) -> Path:
        """Write to `.json` (everything) or `.csv` (points and boxes; masks refused)."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".json":
            self._require_one_kind(path)
            path.write_text(json.dumps(self.to_dict(), indent=1))
        elif suffix == ".csv":
            if any(p.mask is not None for p in self._prompts):
                raise PromptError(f"{path}: mask prompts cannot be written to CSV; save as .json instead")
            self._require_one_kind(path)
            tz = self.is_4d
            with path.open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(CSV_COLUMNS_TZ if tz else CSV_COLUMNS)
                for p in self._prompts:
                    where = [p.obj_id, p.t, p.frame] if tz else [p.obj_id, p.frame]
                    for (y, x), label in zip(p.points, p.labels, strict=True):
                        writer.writerow([*where, "point", _num(y), _num(x), int(label), "", "", "", ""])
                    if p.box is not None:
                        writer.writerow([*where, "box", "", "", "", *(_num(v) for v in p.box)])
        else:
            raise PromptError(f"{path}: prompts are saved as .json or .csv, not {suffix or 'no extension'!r}")
        return path

    def _require_one_kind(self, source) -> None:
        """Prompts of one set are all for a TZYX stack (with t) or all for a 3-D stack (without)."""
        with_t = [p.t is not None for p in self._prompts]
        if any(with_t) and not all(with_t):
            first = self._prompts[with_t.index(False)]
            raise PromptError(
                f"{source}: {first.describe()} has no time point t while other prompts have one; prompts of a "
                "TZYX stack all carry t (and z), those of a 3-D stack none"
            )

    @classmethod
    def load(cls, path: str | os.PathLike, frame_shape=None) -> PromptSet:
        """Read a `.json` or `.csv` prompts file (see the module docstring); frame_shape as in `from_dict`."""
        path = Path(path)
        if not path.is_file():
            raise PromptError(f"prompts file {path} does not exist" + ("" if not path.exists() else " (not a file)"))
        suffix = path.suffix.lower()
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise PromptError(f"{path}: cannot be read as text ({exc})") from None
        if suffix == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise PromptError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from None
            prompts = cls.from_dict(data, source=str(path), frame_shape=frame_shape)
            prompts._require_one_kind(path)
        elif suffix == ".csv":
            prompts = cls._from_csv(text, str(path))
        else:
            raise PromptError(f"{path}: prompts files are .json or .csv, not {suffix or 'no extension'!r}")
        if not len(prompts):
            raise PromptError(f"{path}: holds no prompts")
        return prompts

    @classmethod
    def _from_csv(cls, text: str, source: str) -> PromptSet:
        reader = csv.reader(io.StringIO(text))
        try:
            return cls._read_csv(reader, source)
        except csv.Error as exc:  # e.g. a field over the csv module's 131,072-character limit
            raise PromptError(f"{source}:{reader.line_num}: not a valid CSV row ({exc})") from None

    @classmethod
    def _read_csv(cls, reader, source: str) -> PromptSet:
        header = next(reader, None)
        if header is None:
            raise PromptError(f"{source}:1: empty file; expected a header with {', '.join(CSV_COLUMNS[:6])}")
        header = [h.strip().lower() for h in header]
        tz = "t" in header or "z" in header  # a TZYX file: (t, z) instead of frame
        columns = CSV_COLUMNS_TZ if tz else CSV_COLUMNS
        unknown = [h for h in header if h not in columns]
        if unknown:
            hint = " (a TZYX file gives t and z instead of frame)" if tz and unknown[0] == "frame" else ""
            raise PromptError(f"{source}:1: unknown column {unknown[0]!r}; columns are {', '.join(columns)}{hint}")
        for required in ("obj_id", "t", "z") if tz else ("obj_id", "frame"):
            if required not in header:
                raise PromptError(f"{source}:1: column {required!r} is missing")
        groups: dict[tuple[int, ...], dict[str, Any]] = {}
        first_line: dict[tuple[int, ...], int] = {}
        for line, row in enumerate(reader, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise PromptError(f"{source}:{line}: {len(row)} values but the header has {len(header)} columns")
            cells = {h: c.strip() for h, c in zip(header, row, strict=True)}
            where = f"{source}:{line}"
            obj_id = _int(cells["obj_id"], "column 'obj_id'", where, 1, MAX_OBJ_ID)
            if tz:
                frame = _int(cells["z"], "column 'z'", where, 0)
                key: tuple[int, ...] = (obj_id, frame, _int(cells["t"], "column 't'", where, 0))
            else:
                frame = _int(cells["frame"], "column 'frame'", where, 0)
                key = (obj_id, frame)
            kind = cells.get("kind", "").lower() or ("box" if cells.get("y0") else "point")
            group = groups.setdefault(key, {"points": [], "labels": [], "box": None})
            first_line.setdefault(key, line)
            if kind == "point":
                y = _csv_float(cells, "y", where)
                x = _csv_float(cells, "x", where)
                label = cells.get("label", "") or "1"
                if label not in ("0", "1", "1.0", "0.0"):
                    raise PromptError(f"{where}: column 'label' must be 1 (object) or 0 (background); got {label!r}")
                group["points"].append([y, x])
                group["labels"].append(int(float(label)))
            elif kind == "box":
                if group["box"] is not None:
                    slice_ = f"t={key[2]}, z={frame}" if tz else f"frame {frame}"
                    raise PromptError(f"{where}: a second box for object {obj_id} on {slice_}")
                group["box"] = [_csv_float(cells, k, where) for k in ("y0", "x0", "y1", "x1")]
            else:
                raise PromptError(f"{where}: column 'kind' must be 'point' or 'box'; got {kind!r}")
        out = cls()
        for key, group in groups.items():
            obj_id, frame, *t = key
            where = f"{source}:{first_line[key]}"
            points, labels = group["points"] or None, group["labels"] or None
            out._prompts.append(
                _make_prompt(frame, obj_id, points, labels, group["box"], None, where, t=t[0] if t else None)
            )
        return out

    # -------------------------------------------------------------- other sources
    @classmethod
    def from_seed_labels(cls, labels_2d, frame: int = 0) -> PromptSet:
        """Every object of a label image of one frame (e.g. Cellpose / StarDist output) becomes a mask prompt on
        `frame`, with obj_id = its label value. labels_2d: [H, W] integers, 0 = background."""
        labels = np.asarray(labels_2d)
        if labels.ndim != 2:
            raise PromptError(f"seed labels must be one 2-D frame [H, W]; got shape {labels.shape}")
        if labels.dtype == bool:
            labels = labels.astype(np.uint8)
        if not np.issubdtype(labels.dtype, np.integer):
            if not np.issubdtype(labels.dtype, np.floating) or not np.all(np.mod(labels, 1) == 0):
                raise PromptError(f"seed labels must be integer object ids; got dtype {labels.dtype}")
            labels = labels.astype(np.int64)
        if labels.size and labels.min() < 0:
            raise PromptError(f"seed labels must be >= 0 (0 = background); found {labels.min()}")
        ids = [int(v) for v in np.unique(labels) if v != 0]
        if not ids:
            raise PromptError("the seed labels hold no objects (every pixel is 0)")
        if ids[-1] > MAX_OBJ_ID:
            raise PromptError(f"seed label {ids[-1]} does not fit the uint32 label store (object ids 1…{MAX_OBJ_ID})")
        out = cls()
        for obj_id in ids:
            out.add(frame, obj_id, mask=labels == obj_id)
        return out


def _check_mask_shape(mask, frame_shape, where: str) -> None:
    """Refuse a run-length mask whose declared shape is not the frame's (or absurd) before decoding allocates it."""
    shape = mask.get("shape") if isinstance(mask, Mapping) else None
    if (
        not isinstance(shape, (list, tuple))
        or len(shape) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)
    ):
        raise PromptError(f"{where}.mask: 'shape' must be [H, W], two positive integers; got {shape!r}")
    if frame_shape is not None and tuple(shape) != tuple(int(v) for v in frame_shape):
        raise PromptError(
            f"{where}.mask: declared shape {list(shape)} does not match the frame size {tuple(frame_shape)}"
        )
    if frame_shape is None and shape[0] * shape[1] > MAX_MASK_PIXELS:
        raise PromptError(
            f"{where}.mask: declared shape {list(shape)} exceeds the {MAX_MASK_PIXELS} pixels a mask may have"
        )


def _num(value) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def _csv_float(cells: Mapping[str, str], column: str, where: str) -> float:
    if column not in cells:
        raise PromptError(f"{where}: column {column!r} is missing")
    text = cells[column]
    try:
        value = float(text)
    except ValueError:
        raise PromptError(f"{where}: column {column!r} must be a number; got {text!r}") from None
    if not np.isfinite(value):
        raise PromptError(f"{where}: column {column!r} must be finite; got {text!r}")
    return value
