"""An OME-Zarr 0.5 (Zarr v3) label store that propagation writes into frame by frame.

Layout (`path` is a directory, conventionally named ``*.ome.zarr``)::

    zarr.json                  root group; with a source image: ome.multiscales of that image
    0/                         the source image (only if given), one chunk per 2-D plane
    labels/zarr.json           {"ome": {"version": "0.5", "labels": [<name>]}}
    labels/<name>/zarr.json    ome.multiscales + ome.image-label (colours, source) + napari_sam2 (provenance)
    labels/<name>/0/           uint32 labels (0 = background), the image's shape, one chunk per 2-D plane
    labels/<name>/done/        bool over the leading axes (t / z / t,z): which planes are finished
    labels/<name>/writes/      (optional) uint32 over the leading axes: which write of a run a plane holds (`track`'s
                               resume record, see `LabelStore.record_write`; absent until a run records one)

Crash safety: a frame is written in the order label chunk(s) → new colours → ``done`` flag, so a run that is
killed between (or during) two writes leaves a valid store whose ``done`` record lists only planes whose chunks
were completely written; `LabelStore.open(path, "r+")` resumes it. zarr's LocalStore (3.1) writes every file
to a temporary name and renames it into place, so a chunk is never half-written on disk either.

Without a source image the root carries no multiscales; readers then open ``path/labels/<name>`` directly (a
complete multiscale label image). Only local paths are supported.
"""

from __future__ import annotations

import colorsys
import datetime
import errno
import math
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import zarr

NGFF_VERSION = "0.5"
ATTR_KEY = "napari_sam2"  # our own attributes (store format, provenance) live under this key
STORE_FORMAT = 1
LEVEL_PATH = "0"  # the single resolution level of image and labels
DONE_PATH = "done"
WRITES_PATH = "writes"
AXIS_TYPES = {"t": "time", "z": "space", "y": "space", "x": "space"}
SUPPORTED_AXES = ("tyx", "zyx", "tzyx")
UINT32_MAX = 2**32 - 1
BACKGROUND_COLOR = {"label-value": 0, "rgba": [0, 0, 0, 0]}


class LabelStoreError(Exception):
    """Base class of the label store's errors."""


class StoreExistsError(LabelStoreError, FileExistsError):
    """The target path exists and was not to be replaced."""


class StoreWriteError(LabelStoreError, OSError):
    """Writing to the store failed (read-only location, full disk, ...); finished frames stay intact."""


def label_color(label: int) -> list[int]:
    """A stable RGBA colour (0-255) for a label id: hues walk the golden ratio, so neighbouring ids differ."""
    hue = (int(label) * 0.6180339887498949) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
    return [round(255 * r), round(255 * g), round(255 * b), 255]


class LabelStore:
    """A multiscale (one level) OME-Zarr label image of shape `shape` over `axes`, written plane by plane.

    Make one with `LabelStore.create(...)` or reopen one with `LabelStore.open(...)`; not constructed directly.
    A *frame* is one index along the first axis (t or z); in a "tzyx" store a frame is a (Z, Y, X) volume and
    each of its (Y, X) planes can also be written and tracked on its own with an index (t, z).
    """

    def __init__(self, root: zarr.Group, path: Path, name: str, mode: str):
        self.path = path
        self.name = name
        self.mode = mode
        self._root = root
        self._group = root[f"labels/{name}"]
        self._labels = self._group[LEVEL_PATH]
        self._done = self._group[DONE_PATH]
        self._writes = self._group.get(WRITES_PATH)  # made on first use (`record_write`)
        image_label = self._group.attrs["ome"].get("image-label", {})
        self._colored = {int(c["label-value"]) for c in image_label.get("colors", [])}

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        shape: Sequence[int],
        *,
        axes: str = "tyx",
        name: str = "sam2",
        image: Any = None,
        scale: Sequence[float] | None = None,
        units: Mapping[str, str] | None = None,
        provenance: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> LabelStore:
        """Create an empty store (every frame pending) at `path`.

        shape: the label image's shape, in `axes` order ("tyx", "zyx" or "tzyx").
        image: optional source image of exactly `shape` (any array-like: numpy, zarr, dask, memmap); it is
            copied plane by plane into the root as the store's image, so it never has to fit in memory.
        scale: physical size per axis (default 1 each); units: optional {axis: UDUNITS-2 unit}, e.g.
            {"t": "second", "y": "micrometer", "x": "micrometer"}.
        provenance: JSON-able facts about the run (model name, checkpoint hash, prompts, settings); the package
            version and creation date are added unless given.
        overwrite: replace an existing store made by napari-sam2 (other directories are never deleted).
        """
        path = Path(path)
        axes = str(axes).lower()
        if axes not in SUPPORTED_AXES:
            raise ValueError(f"axes must be one of {SUPPORTED_AXES}; got {axes!r}")
        shape = tuple(int(s) for s in shape)
        if len(shape) != len(axes) or min(shape) < 1:
            raise ValueError(f"shape {shape} must have one positive size per axis of {axes!r}")
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"label name must be a plain, non-empty name; got {name!r}")
        scale = _check_scale(scale, axes)
        units = {str(k): str(v) for k, v in (units or {}).items()}
        unknown_axes = set(units) - set(axes)
        if unknown_axes:
            raise ValueError(f"units name axes {sorted(unknown_axes)} that are not in {axes!r}")
        if image is not None:
            if not hasattr(image, "shape") or not hasattr(image, "dtype"):
                image = np.asarray(image)
            if tuple(image.shape) != shape:
                raise ValueError(
                    f"image shape {tuple(image.shape)} must equal the label shape {shape} ({axes!r}); "
                    "pick one channel of multichannel data first"
                )
            if not (np.issubdtype(image.dtype, np.number) or image.dtype == bool):
                raise TypeError(f"image must be numeric; got dtype {image.dtype}")
        info = dict(provenance or {})
        info.setdefault("package_version", _package_version())
        info.setdefault("created", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        info = _jsonable(info, "provenance")

        _clear_target(path, overwrite)
        leading = shape[:-2]
        plane_chunks = (1,) * len(leading) + shape[-2:]
        multiscale = {
            "type": "none",  # the downscaling method: none, there is one resolution level
            "metadata": {"description": "a single resolution level written by napari-sam2 (no downscaling)"},
            "axes": [{"name": a, "type": AXIS_TYPES[a], **({"unit": units[a]} if a in units else {})} for a in axes],
            "datasets": [{"path": LEVEL_PATH, "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
        }
        with _removed_on_failure(path) as made, _io_errors(path, "create the store"):
            root = zarr.open_group(path, mode="w-", zarr_format=3)
            made.append(path)
            root_attrs: dict[str, Any] = {ATTR_KEY: {"format": STORE_FORMAT, "labels": name}}
            if image is not None:
                root_attrs["ome"] = {"version": NGFF_VERSION, "multiscales": [{**multiscale, "name": "image"}]}
            root.update_attributes(root_attrs)
            labels_group = root.create_group("labels")
            labels_group.update_attributes({"ome": {"version": NGFF_VERSION, "labels": [name]}})
            group = labels_group.create_group(name)
            # The background's colour (transparent) is always listed, so `colors` is never the empty list that
            # the NGFF 0.5 (strict) label schema rejects, even before the first frame is written.
            image_label: dict[str, Any] = {"version": NGFF_VERSION, "colors": [dict(BACKGROUND_COLOR)]}
            if image is not None:
                image_label["source"] = {"image": "../../"}
            group.update_attributes(
                {
                    "ome": {
                        "version": NGFF_VERSION,
                        "multiscales": [{**multiscale, "name": name}],
                        "image-label": image_label,
                    },
                    ATTR_KEY: {"format": STORE_FORMAT, "done": DONE_PATH, "provenance": info},
                }
            )
            group.create_array(
                LEVEL_PATH,
                shape=shape,
                dtype="uint32",
                chunks=plane_chunks,
                fill_value=0,
                dimension_names=list(axes),
            )
            # One chunk for the whole record: each update rewrites one small file (atomically).
            group.create_array(
                DONE_PATH,
                shape=leading,
                dtype="bool",
                chunks=leading,
                fill_value=False,
                dimension_names=list(axes[: len(leading)]),
            )
            if image is not None:
                image_dtype = np.uint8 if image.dtype == bool else image.dtype
                image_array = root.create_array(
                    LEVEL_PATH,
                    shape=shape,
                    dtype=image_dtype,
                    chunks=plane_chunks,
                    fill_value=0,
                    dimension_names=list(axes),
                )
                for key in np.ndindex(*leading):  # plane by plane: the source may be larger than memory
                    image_array[key] = np.asarray(image[key]).astype(image_dtype, copy=False)
        return cls(root, path, name, "r+")

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r", name: str | None = None) -> LabelStore:
        """Open an existing store: mode "r" (read only) or "r+" (resume writing); `name` picks a label image
        (default: the one napari-sam2 created there)."""
        path = Path(path)
        if mode not in ("r", "r+"):
            raise ValueError(f"mode must be 'r' or 'r+'; got {mode!r}")
        if not (path / "zarr.json").is_file():
            raise FileNotFoundError(
                f"no Zarr v3 store at {path} (zarr.json missing); create one with LabelStore.create"
            )
        with _io_errors(path, "open the store"):
            root = zarr.open_group(path, mode=mode, zarr_format=3)
        try:
            listed = list(root["labels"].attrs["ome"]["labels"])
        except KeyError:
            raise LabelStoreError(f"{path} has no OME-Zarr 'labels' group; it is not a label store") from None
        if name is None:
            name = root.attrs.get(ATTR_KEY, {}).get("labels")
            if name is None:
                ours = [n for n in listed if ATTR_KEY in root[f"labels/{n}"].attrs]
                if not ours:
                    raise LabelStoreError(f"{path} holds no label image written by napari-sam2 (labels: {listed})")
                name = ours[0]
        if name not in listed:
            raise LabelStoreError(f"{path} has no label image {name!r}; it has {listed}")
        if DONE_PATH not in root[f"labels/{name}"]:
            raise LabelStoreError(f"labels/{name} in {path} was not written by napari-sam2 (no '{DONE_PATH}' record)")
        return cls(root, path, name, mode)

    # ------------------------------------------------------------------ description
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._labels.shape)

    @property
    def axes(self) -> str:
        return "".join(self._labels.metadata.dimension_names)

    @property
    def read_only(self) -> bool:
        return self.mode == "r"

    @property
    def attrs(self) -> dict:
        """All attributes of the label image group (a copy): "ome" (multiscales, image-label) and ours."""
        return self._group.attrs.asdict()

    @property
    def provenance(self) -> dict:
        """What produced these labels: model, checkpoint hash, prompts, settings, package version, date."""
        return dict(self._group.attrs[ATTR_KEY].get("provenance", {}))

    @property
    def scale(self) -> list[float] | None:
        """Physical size per axis (the first dataset's scale transform), None when every entry is 1 (pixels)."""
        for ms in self._group.attrs["ome"].get("multiscales", []):
            for transform in ms["datasets"][0].get("coordinateTransformations", []):
                if transform.get("type") == "scale":
                    scale = [float(v) for v in transform["scale"]]
                    return None if all(v == 1.0 for v in scale) else scale
        return None

    @property
    def units(self) -> dict[str, str] | None:
        """{axis name: unit} of the axes that carry one (None: none does)."""
        units = {}
        for ms in self._group.attrs["ome"].get("multiscales", [])[:1]:
            units = {a["name"]: a["unit"] for a in ms.get("axes", []) if isinstance(a, dict) and a.get("unit")}
        return units or None

    @property
    def colors(self) -> dict[int, list[int]]:
        """{label id: [r, g, b, a]} of the objects as recorded in image-label (the background, 0, left out)."""
        image_label = self._group.attrs["ome"].get("image-label", {})
        colors = {int(c["label-value"]): list(c["rgba"]) for c in image_label.get("colors", []) if "rgba" in c}
        colors.pop(0, None)
        return colors

    def __repr__(self) -> str:
        done = int(self.done.sum())
        return (
            f"LabelStore({str(self.path)!r}, name={self.name!r}, axes={self.axes!r}, shape={self.shape}, "
            f"mode={self.mode!r}, {done}/{self._done.size} planes finished)"
        )

    # ------------------------------------------------------------------ reading
    def read_labels(self) -> zarr.Array:
        """The label image as a lazy zarr array (index it to read; planes not yet written read as 0)."""
        return self._labels

    def read_image(self) -> zarr.Array | None:
        """The stored source image (lazy), or None if the store was made without one."""
        return self._root.get(LEVEL_PATH)

    @property
    def done(self) -> np.ndarray:
        """bool array over the leading axes ([T], [Z] or [T, Z]): planes finished, read fresh from the store."""
        return np.asarray(self._done[...], dtype=bool)

    def write_counts(self) -> np.ndarray:
        """uint32 array over the leading axes: for each plane, which write of the run that made it its chunks
        hold (the n-th time the run wrote that plane; 0: none recorded). See `record_write`."""
        if self._writes is None:
            self._writes = self._group.get(WRITES_PATH)  # a writer may have made it since this store was opened
        if self._writes is None:
            return np.zeros(self.shape[:-2], dtype=np.uint32)
        return np.asarray(self._writes[...], dtype=np.uint32)

    def finished_frames(self) -> list[int]:
        """Frames (first-axis indices) whose every plane is finished."""
        done = self.done.reshape(self.shape[0], -1)
        return [int(i) for i in np.flatnonzero(done.all(axis=1))]

    def pending_frames(self) -> list[int]:
        """Frames a resumed run must still compute (the complement of `finished_frames`)."""
        finished = set(self.finished_frames())
        return [i for i in range(self.shape[0]) if i not in finished]

    # ------------------------------------------------------------------ writing
    def write_frame(self, index: int | Sequence[int], labels, *, colors: bool = True) -> None:
        """Write one frame and record it as finished.

        index: a frame (first-axis index; labels then [Y, X], or [Z, Y, X] in a "tzyx" store) or, in a "tzyx"
            store, a (t, z) pair for one [Y, X] plane.
        labels: integer object ids (0 = background), stored as uint32.
        colors: record a colour for each id not seen before (in the attributes: a rewrite of the label image's
            zarr.json); False leaves that to a later `add_colors` (a run writing thousands of frames does it
            once at the end instead of whenever an object appears).
        """
        self._require_writable()
        key = self._normalize_index(index)
        data = self._as_labels(labels, self.shape[len(key) :], index)
        with _io_errors(self.path, f"write frame {index}"):
            if self._done[key].any():
                # Rewriting a finished frame: it is unfinished until its new chunks are all on disk.
                self._done[key] = False
            self._labels[key] = data  # 1. the chunk(s)
        if colors:
            self.add_colors(np.unique(data).tolist())  # 2. colours of objects that appeared
        with _io_errors(self.path, f"record frame {index} as finished"):
            self._done[key] = True  # 3. only now is the frame finished

    def add_colors(self, ids) -> None:
        """Record the stable colour (`label_color`) of every id in `ids` that has none yet (0 is background);
        one attribute write, none if every id has its colour."""
        self._require_writable()
        new_ids = {int(i) for i in ids} - {0} - self._colored
        if new_ids:
            self._add_colors({i: label_color(i) for i in new_ids})

    def record_write(self, index: int | Sequence[int], count: int) -> None:
        """Record that the plane(s) at `index` hold the `count`-th write a run made there (call it after
        `write_frame` returned, so a crash in between only under-counts and a resume redoes that write).

        A resumed run replays the original one and skips its n-th write of a plane when n <= the recorded
        count: one small chunk per frame, instead of a run-wide counter in the attributes (see `api.track`)."""
        self._require_writable()
        key = self._normalize_index(index)
        if not 0 <= int(count) <= UINT32_MAX:
            raise ValueError(f"write count must lie in 0..{UINT32_MAX}; got {count}")
        with _io_errors(self.path, f"record the write of frame {index}"):
            if self._writes is None:
                leading = self.shape[:-2]
                self._writes = self._group.create_array(
                    WRITES_PATH,
                    shape=leading,
                    dtype="uint32",
                    chunks=leading,  # one chunk, as `done`: each update rewrites one small file atomically
                    fill_value=0,
                    dimension_names=list(self.axes[: len(leading)]),
                )
            self._writes[key] = int(count)

    def update_provenance(self, entries: Mapping[str, Any]) -> None:
        """Merge `entries` (JSON-able) into the provenance record, e.g. prompts added after creation."""
        self._require_writable()
        ours = dict(self._group.attrs[ATTR_KEY])
        ours["provenance"] = {**ours.get("provenance", {}), **_jsonable(dict(entries), "provenance")}
        with _io_errors(self.path, "update the provenance"):
            self._group.update_attributes({ATTR_KEY: ours})

    # ------------------------------------------------------------------ helpers
    def _add_colors(self, new: dict[int, list[int]]) -> None:
        for label, rgba in new.items():
            if len(rgba) != 4 or not all(0 <= c <= 255 for c in rgba):
                raise ValueError(f"colour of label {label} must be 4 ints in 0..255; got {rgba}")
        ome = dict(self._group.attrs["ome"])
        image_label = dict(ome.get("image-label", {}))
        merged = {int(c["label-value"]): c["rgba"] for c in image_label.get("colors", [])}
        merged.update(new)
        image_label["colors"] = [{"label-value": k, "rgba": list(merged[k])} for k in sorted(merged)]
        ome["image-label"] = image_label
        with _io_errors(self.path, "record label colours"):
            self._group.update_attributes({"ome": ome})
        self._colored.update(new)

    def _require_writable(self) -> None:
        if self.read_only:
            raise LabelStoreError(f"{self.path} is open read-only; reopen it with LabelStore.open(path, mode='r+')")

    def _normalize_index(self, index) -> tuple[int, ...]:
        leading = self.shape[:-2]
        key = (index,) if np.ndim(index) == 0 else tuple(index)
        if not 1 <= len(key) <= len(leading):
            raise IndexError(f"index {index!r} must address 1..{len(leading)} leading axes of {self.axes!r}")
        out = []
        for i, size in zip(key, leading, strict=False):  # key may address fewer axes
            if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
                raise TypeError(f"frame index must be an integer; got {i!r}")
            i = int(i) + (size if i < 0 else 0)
            if not 0 <= i < size:
                raise IndexError(f"frame index {index!r} is out of range for leading shape {leading}")
            out.append(i)
        return tuple(out)

    @staticmethod
    def _as_labels(labels, expected: tuple[int, ...], index) -> np.ndarray:
        data = np.asarray(labels)
        if data.shape != expected:
            raise ValueError(f"frame {index!r} must have shape {expected}; got {data.shape}")
        if data.dtype == bool:
            return data.astype(np.uint32)
        if not np.issubdtype(data.dtype, np.integer):
            raise TypeError(f"labels must be an integer array of object ids; got dtype {data.dtype}")
        if data.size and (data.min() < 0 or data.max() > UINT32_MAX):
            raise ValueError(f"label ids must lie in 0..{UINT32_MAX}; frame {index!r} has {data.min()}..{data.max()}")
        return data.astype(np.uint32, copy=False)


# ---------------------------------------------------------------------- module helpers
@contextmanager
def _io_errors(path: Path, action: str) -> Iterator[None]:
    """Turn an OS-level failure into a StoreWriteError that names the store, the cause and the way out."""
    try:
        yield
    except StoreWriteError:
        raise
    except OSError as err:
        cause = err.strerror or str(err) or type(err).__name__
        if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            hint = "free some space (or choose another location)"
        elif err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            hint = "choose a writable location (or fix its permissions)"
        else:
            hint = "fix the cause"
        where = f" ({err.filename})" if err.filename else ""
        raise StoreWriteError(
            err.errno,
            f"could not {action} in {path}: {cause}{where}. Frames recorded as finished before this are intact; "
            f"{hint}, then resume: `napari-sam2 track ... --resume` (Python: track(..., resume=True), or "
            f"LabelStore.open({str(path)!r}, mode='r+')).",
        ) from err


@contextmanager
def _removed_on_failure(path: Path) -> Iterator[list]:
    """Remove a store this call created if creating it fails part way (a frame of the image unreadable, Ctrl-C
    while copying it): a half-made store is debris that would need --overwrite. The caller appends to the
    yielded list once *it* has made the directory, so a store another process made is never touched."""
    made: list = []
    try:
        yield made
    except BaseException:
        if made:
            shutil.rmtree(path, ignore_errors=True)
        raise


def _clear_target(path: Path, overwrite: bool) -> None:
    if not path.exists() and not path.is_symlink():
        return
    if not overwrite:
        raise StoreExistsError(
            f"{path} already exists. Pass overwrite=True to replace it, or resume it with "
            f"LabelStore.open({str(path)!r}, mode='r+')."
        )
    from .lock import StoreLockedError, is_held_elsewhere, lock_path

    holder = is_held_elsewhere(path)
    if holder is not None:
        raise StoreLockedError(
            f"{path} is being written by {holder}; overwrite will not delete it under a running writer "
            f"(lock file {lock_path(path)})"
        )
    if path.is_dir() and not path.is_symlink():
        if not any(path.iterdir()):
            path.rmdir()
            return
        if _made_by_us(path):
            with _io_errors(path, "remove the old store"):
                shutil.rmtree(path)
            return
    raise StoreExistsError(
        f"{path} exists and is not a store written by napari-sam2, so overwrite=True will not delete it; "
        "choose another path."
    )


def _made_by_us(path: Path) -> bool:
    try:
        return ATTR_KEY in zarr.open_group(path, mode="r", zarr_format=3).attrs
    except Exception:  # noqa: BLE001 (whatever the failure, it is not a zarr v3 group written by us)
        return False


def _check_scale(scale, axes: str) -> list[float]:
    if scale is None:
        return [1.0] * len(axes)
    scale = [float(s) for s in scale]
    if len(scale) != len(axes) or not all(math.isfinite(s) and s > 0 for s in scale):
        raise ValueError(f"scale must hold one positive number per axis of {axes!r}; got {scale}")
    return scale


def _jsonable(value: Any, where: str) -> Any:
    """`value` as plain JSON types (numpy scalars/arrays, tensors, tuples and paths converted)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else str(value)  # JSON has no NaN/inf
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hasattr(value, "tolist"):  # numpy arrays, torch tensors
        return _jsonable(value.tolist(), where)
    raise TypeError(f"{where} has a {type(value).__name__}, which cannot be stored as JSON; convert it first")


def _package_version() -> str:
    from .. import __version__

    return __version__
