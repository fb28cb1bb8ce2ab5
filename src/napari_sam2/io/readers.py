"""Open image stacks from disk lazily: TIFF / OME-TIFF, Zarr / OME-Zarr, .npy and NIfTI (optional extra).

`open_stack(path)` returns an `OpenedStack`: `data` is an array-like (shape, dtype, numpy indexing) that reads only
what is indexed, so a 2,000-frame stack is never loaded whole, and `axes` is a guess of the axis names
("tyx", "zyx", "tcyx", ...) from the file's metadata (or from the number of dimensions when it has none).

  TIFF      tifffile: memory-mapped when the pixels are stored uncompressed and contiguous, else a zarr view of
            the file (tifffile's aszarr store, one page decoded per read). Axes from OME / ImageJ metadata.
  Zarr      a zarr array, or an OME-Zarr image (its first, full-resolution multiscale level, axes from metadata).
  .npy      numpy memmap (mmap_mode="r").
  NIfTI     nibabel (pip install napari-sam2[nifti]); the (i, j, k[, t]) voxel array is presented as
            ([t,] z, y, x) = (k, j, i) through a lazy transposing view; only the slices read are loaded.

`parse_window("-1000,400")` → an `IntensityRange` for a fixed intensity window (e.g. CT Hounsfield units), the
alternative to percentile scaling.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..preprocess import InputError, IntensityRange
from .units import normalise_unit

__all__ = ["LazyTranspose", "OpenedStack", "check_pixels", "open_stack", "parse_window", "resolve_axis"]

NIFTI_HINT = "pip install napari-sam2[nifti]"
TIFF_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff", ".btf", ".tf8")


@dataclass
class OpenedStack:
    """A lazily opened stack: data (array-like), axes (lower-case names, one per axis), path, format, and
    axes_known (False: `axes` is a guess from the number of dimensions, the file said nothing)."""

    data: Any
    axes: str
    path: Path
    format: str
    axes_known: bool = False
    scale: tuple[float, ...] | None = None  # physical size per axis (None: the file said nothing)
    units: dict[str, str] | None = None  # {axis letter: UDUNITS-2 unit}, e.g. {"t": "second", "x": "micrometer"}
    _keep: Any = None  # an open file object the data reads from

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.data.shape)


class LazyTranspose:
    """A read-only view of `array` with its axes permuted by `order` (like np.transpose), read on indexing.

    Only integer and slice indices (plus Ellipsis) are supported, which is what frame readers use.
    """

    def __init__(self, array, order):
        self.array = array
        self.order = tuple(int(i) for i in order)
        if sorted(self.order) != list(range(len(array.shape))):
            raise ValueError(f"order {order} is not a permutation of {len(array.shape)} axes")
        self.shape = tuple(int(array.shape[i]) for i in self.order)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1 :]
        key = key + (slice(None),) * (self.ndim - len(key))
        for k in key:
            if not isinstance(k, (slice, int, np.integer)):
                raise TypeError(f"LazyTranspose supports integers and slices only; got {type(k).__name__}")
        source_key = [slice(None)] * self.ndim
        for view_axis, source_axis in enumerate(self.order):
            source_key[source_axis] = key[view_axis]
        data = np.asarray(self.array[tuple(source_key)])
        kept = [src for view_axis, src in enumerate(self.order) if not isinstance(key[view_axis], (int, np.integer))]
        remaining = sorted(kept)  # the source axes still in `data`, in source order
        return np.transpose(data, [remaining.index(src) for src in kept])

    def __array__(self, dtype=None, copy=None):
        out = self[...]
        return out if dtype is None else out.astype(dtype)


def check_pixels(shape, dtype) -> None:
    """Refuse what cannot be segmented before anything is read: an empty axis, complex or non-numeric pixels."""
    if any(s == 0 for s in shape):
        raise InputError(f"the stack has shape {shape}: an axis of length 0 holds no image")
    if dtype is None:
        return
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        # a torch tensor (e.g. frames already on the GPU) has torch.float32 etc.: numpy knows the name after the dot
        try:
            dtype = np.dtype(str(dtype).rsplit(".", 1)[-1])
        except TypeError:
            raise InputError(
                f"the stack's pixel type {dtype} is not one numpy knows; convert it to an integer or float type"
            ) from None
    if dtype.kind == "c":
        raise InputError(
            f"the stack holds complex numbers ({dtype}); take the magnitude or the real part first (napari-sam2 will "
            "not drop the imaginary part silently)"
        )
    if dtype.kind not in "biuf":
        raise InputError(f"the stack's pixels are not numbers (dtype {dtype}); convert it to an integer or float type")


def parse_window(text: str | tuple[float, float] | None) -> IntensityRange | None:
    """Parse "LO,HI" (e.g. "-1000,400") or (lo, hi) → IntensityRange(lo, hi); None → None (percentiles)."""
    if text is None:
        return None
    if isinstance(text, IntensityRange):
        return text
    if isinstance(text, str):
        parts = [p.strip() for p in text.replace(":", ",").split(",")]
        if len(parts) != 2:
            raise InputError(f"window must be 'LO,HI' (e.g. '-1000,400'); got {text!r}")
        try:
            lo, hi = float(parts[0]), float(parts[1])
        except ValueError:
            raise InputError(f"window must be two numbers 'LO,HI' (e.g. '-1000,400'); got {text!r}") from None
    else:
        lo, hi = (float(v) for v in text)
    if not hi > lo:
        raise InputError(f"window {lo:g},{hi:g} is empty: HI must be larger than LO")
    return IntensityRange(lo, hi)


def resolve_axis(axis: int | str | None, axes: str, ndim: int, axes_known: bool = True) -> int:
    """The stream axis as an index: an int (negative counts from the end), a letter of `axes` ("t", "z"), or
    None (t if present, else z, else 0). A letter not in a guessed 3-D `axes` means axis 0 (the file did not say)."""
    if axis is None:
        for letter in "tz":
            if letter in axes:
                return axes.index(letter)
        return 0
    if isinstance(axis, bool) or not isinstance(axis, (str, int, np.integer)):
        raise InputError(f"axis must be an integer index or a letter (t, z); got {axis!r} ({type(axis).__name__})")
    if isinstance(axis, str) and axis.strip().lstrip("-").isdigit():
        axis = int(axis)
    if isinstance(axis, str):
        letter = axis.strip().lower()
        if letter in axes:
            return axes.index(letter)
        if letter in ("t", "z") and not axes_known and ndim == 3:
            return 0
        raise InputError(f"axis {axis!r} is not an axis of this stack (axes {axes!r}); give t, z or an index")
    if not -ndim <= int(axis) < ndim:
        raise InputError(f"axis {axis} is out of range for a stack with {ndim} axes ({axes!r})")
    return int(axis) % ndim


def _guess_axes(ndim: int) -> str:
    return {2: "yx", 3: "tyx", 4: "tzyx", 5: "tczyx"}.get(ndim, "q" * (ndim - 2) + "yx")


def _normalise_axes(text: str, ndim: int) -> tuple[str, bool]:
    """tifffile/OME axis codes → our lower-case names; unknown codes (Q, I, S…) stay, flagged as a guess."""
    mapping = {"t": "t", "z": "z", "y": "y", "x": "x", "c": "c", "s": "c"}  # S = samples (RGB) → channels
    axes = "".join(mapping.get(a, "q") for a in text.lower())
    if len(axes) != ndim:
        return _guess_axes(ndim), False
    if "q" in axes:  # e.g. "QYX" (unknown leading axis): keep the rest
        guessed = _guess_axes(ndim)
        return "".join(g if a == "q" else a for a, g in zip(axes, guessed, strict=True)), False
    return axes, True


def open_stack(path: str | os.PathLike, *, series: int = 0, key: str | None = None) -> OpenedStack:
    """Open an image stack lazily (see the module docstring for formats). `series`: TIFF series; `key`: a
    path inside a Zarr group (default: the OME-Zarr image's first level, or the group's only array)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"image {path} does not exist")
    name = path.name.lower()
    if name.endswith(".npy"):
        return _open_npy(path)
    if name.endswith((".nii", ".nii.gz")):
        return _open_nifti(path)
    if name.endswith(TIFF_SUFFIXES):
        return _open_tiff(path, series)
    if path.is_dir() or name.endswith(".zarr"):
        return _open_zarr(path, key)
    raise InputError(
        f"{path}: unknown image format {path.suffix!r}; napari-sam2 reads .tif/.tiff (OME-TIFF), .zarr (OME-Zarr), "
        f".npy and .nii/.nii.gz (with {NIFTI_HINT})"
    )


def _open_npy(path: Path) -> OpenedStack:
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputError(f"{path} is not a readable .npy array ({exc})") from None
    return OpenedStack(data, _guess_axes(data.ndim), path, "npy", axes_known=False)


def _open_tiff(path: Path, series: int) -> OpenedStack:
    import tifffile
    import zarr

    try:
        with tifffile.TiffFile(path) as tif:
            if not 0 <= series < len(tif.series):
                raise InputError(f"{path} has {len(tif.series)} image series; series {series} does not exist")
            s = tif.series[series]
            axes, known = _normalise_axes(s.axes, len(s.shape))
            if len(s.shape) < 2:
                raise InputError(f"{path} holds no image (shape {s.shape})")
            scale, units = _tiff_physical(tif, series, axes)
    except (tifffile.TiffFileError, OSError) as exc:
        raise InputError(f"{path} is not a readable TIFF file ({exc})") from None
    try:
        data = tifffile.memmap(path, series=series, mode="r")
        return OpenedStack(data, axes, path, "tiff (memmap)", axes_known=known, scale=scale, units=units)
    except (ValueError, OSError):
        pass  # compressed or tiled: read page by page through tifffile's zarr store
    store = tifffile.imread(path, aszarr=True, series=series, level=0)
    data = zarr.open(store, mode="r")
    if not hasattr(data, "shape"):  # a multiscale group
        data = data["0"]
    return OpenedStack(data, axes, path, "tiff (zarr)", axes_known=known, scale=scale, units=units, _keep=store)


def _open_zarr(path: Path, key: str | None) -> OpenedStack:
    import zarr

    try:
        node = zarr.open(path, mode="r")
    except Exception as exc:  # noqa: BLE001  (zarr raises several kinds for "not a store")
        raise InputError(f"{path} is not a readable Zarr store ({type(exc).__name__}: {exc})") from None
    if key is not None:
        try:
            node = node[key]
        except KeyError:
            raise InputError(f"{path} has no array {key!r}") from None
    if hasattr(node, "shape") and not hasattr(node, "members"):
        names = node.metadata.dimension_names if getattr(node.metadata, "zarr_format", 2) == 3 else None
        if names and all(names):
            axes, known = _normalise_axes("".join(n[0] for n in names), node.ndim)
        else:
            axes, known = _guess_axes(node.ndim), False
        return OpenedStack(node, axes, path, "zarr", axes_known=known)
    attrs = node.attrs.asdict()
    multiscales = attrs.get("ome", attrs).get("multiscales") if isinstance(attrs.get("ome", attrs), dict) else None
    if multiscales:
        ms, dataset = _first_dataset(path, multiscales)
        try:
            array = node[dataset["path"]]
        except KeyError:
            raise InputError(
                f"{path}: its OME-Zarr multiscales name the array {dataset['path']!r}, which is missing"
            ) from None
        if not hasattr(array, "shape"):
            raise InputError(f"{path}: {dataset['path']!r} named by its multiscales is a group, not an array")
        axes_meta = ms.get("axes")
        if axes_meta:
            names = "".join((a["name"] if isinstance(a, dict) else a)[0] for a in axes_meta)
            axes, known = _normalise_axes(names, array.ndim)
        else:
            axes, known = _guess_axes(array.ndim), False
        scale = None
        for transform in dataset.get("coordinateTransformations", []):
            if transform.get("type") == "scale":
                scale = tuple(float(v) for v in transform["scale"])
        units = {}
        for letter, axis in zip(axes, axes_meta or [], strict=False):
            unit = normalise_unit(axis.get("unit")) if isinstance(axis, dict) else None
            if unit:
                units[letter] = unit
        return OpenedStack(array, axes, path, "ome-zarr", axes_known=known, scale=scale, units=units or None)
    arrays = [name for name, _ in node.arrays()]
    if len(arrays) == 1:
        array = node[arrays[0]]
        return OpenedStack(array, _guess_axes(array.ndim), path, "zarr", axes_known=False)
    raise InputError(
        f"{path} is a Zarr group without OME-Zarr multiscales and with {len(arrays)} arrays ({arrays[:5]}); "
        "name the array to read"
    )


def _first_dataset(path: Path, multiscales) -> tuple[dict, dict]:
    """The first multiscale and its first (full-resolution) dataset, checked (malformed metadata: InputError)."""
    bad = f"{path}: malformed OME-Zarr metadata"
    if not isinstance(multiscales, list) or not isinstance(multiscales[0], dict):
        raise InputError(f"{bad}: 'multiscales' must be a list of objects; got {type(multiscales).__name__}")
    ms = multiscales[0]
    datasets = ms.get("datasets")
    if not isinstance(datasets, list) or not datasets or not isinstance(datasets[0], dict):
        raise InputError(f"{bad}: multiscales[0] has no 'datasets' list")
    if not isinstance(datasets[0].get("path"), str):
        raise InputError(f"{bad}: multiscales[0].datasets[0] has no 'path'")
    axes = ms.get("axes")
    if axes is not None and (
        not isinstance(axes, list)
        or not all(isinstance(a, str) and a or isinstance(a, dict) and isinstance(a.get("name"), str) and a["name"]
                   for a in axes)
    ):  # fmt: skip
        raise InputError(f"{bad}: multiscales[0].axes must be a list of named axes")
    transforms = datasets[0].get("coordinateTransformations", [])
    if not isinstance(transforms, list) or not all(isinstance(t, dict) for t in transforms):
        raise InputError(f"{bad}: coordinateTransformations must be a list of objects")
    for t in transforms:
        if t.get("type") == "scale":
            scale = t.get("scale")
            if not isinstance(scale, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                      for v in scale):  # fmt: skip
                raise InputError(f"{bad}: a scale transformation must be a list of numbers")
    return ms, datasets[0]


def _open_nifti(path: Path) -> OpenedStack:
    try:
        import nibabel
    except ImportError:
        raise InputError(f"reading NIfTI ({path.name}) needs nibabel: {NIFTI_HINT}") from None
    try:
        image = nibabel.load(str(path))
    except Exception as exc:  # noqa: BLE001  (nibabel raises ImageFileError, OSError, EOFError ...)
        raise InputError(f"{path} is not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    proxy = image.dataobj  # an ArrayProxy: slicing reads only that part of the file
    ndim = len(proxy.shape)
    if ndim == 3:
        data, axes = LazyTranspose(proxy, (2, 1, 0)), "zyx"
    elif ndim == 4:
        data, axes = LazyTranspose(proxy, (3, 2, 1, 0)), "tzyx"
    else:
        raise InputError(f"{path}: NIfTI with {ndim} dimensions {proxy.shape}; expected 3-D (i, j, k) or 4-D")
    zooms = image.header.get_zooms()[:ndim]
    scale = tuple(float(z) for z in reversed(zooms))
    space, time = (normalise_unit(u) for u in image.header.get_xyzt_units())  # "unknown" → None
    units = {a: space for a in "zyx" if space}
    if time and "t" in axes:
        units["t"] = time
    return OpenedStack(data, axes, path, "nifti", axes_known=True, scale=scale, units=units or None)


def _tiff_physical(tif, series: int, axes: str) -> tuple[tuple[float, ...] | None, dict[str, str] | None]:
    """Physical size per axis and units from OME-XML (PhysicalSizeX/Y/Z, TimeIncrement and their units; OME's
    defaults are µm and s) or ImageJ metadata (XY from the resolution tags, `spacing`, `finterval`, `unit`)."""
    sizes: dict[str, float] = {}
    units: dict[str, str] = {}
    try:
        if tif.is_ome and tif.ome_metadata:
            import tifffile

            images = tifffile.xml2dict(tif.ome_metadata).get("OME", {}).get("Image", [])
            images = images if isinstance(images, list) else [images]
            pixels = images[series].get("Pixels", {}) if series < len(images) else {}
            for letter, key, default in (("x", "PhysicalSizeX", "µm"), ("y", "PhysicalSizeY", "µm"),
                                         ("z", "PhysicalSizeZ", "µm"), ("t", "TimeIncrement", "s")):  # fmt: skip
                if key in pixels:
                    sizes[letter] = float(pixels[key])
                    unit = normalise_unit(pixels.get(f"{key}Unit", default))
                    if unit:
                        units[letter] = unit
        elif tif.is_imagej and tif.imagej_metadata:
            meta = tif.imagej_metadata
            unit = normalise_unit(meta.get("unit"))
            page = tif.pages[0]
            for letter, tag in (("x", "XResolution"), ("y", "YResolution")):
                if tag in page.tags:
                    num, den = page.tags[tag].value
                    if num and den and unit:  # without a unit ImageJ's resolution is pixels per inch of print
                        sizes[letter] = den / num
                        units[letter] = unit
            if meta.get("spacing") and unit:
                sizes["z"], units["z"] = float(meta["spacing"]), unit
            if meta.get("finterval"):
                sizes["t"], units["t"] = float(meta["finterval"]), "second"
    except (KeyError, ValueError, TypeError, IndexError, AttributeError):
        return None, None  # unreadable metadata: pixels as units rather than a failed open
    if not sizes:
        return None, None
    scale = tuple(sizes.get(a, 1.0) for a in axes)
    if not all(math.isfinite(v) and v > 0 for v in scale):
        return None, None
    return scale, {a: u for a, u in units.items() if a in axes} or None
