"""Saving and opening a whole result at once (the widget's save/open; the napari reader and writer).

Tracking runs stream into a `LabelStore` frame by frame (see `napari_sam2.api.track`); `save_result` writes a label
stack that already exists in memory into the same OME-Zarr 0.5 layout, and `open_result` reads either back lazily,
with the prompts that made it (stored in the provenance as `PromptSet.to_dict()`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..prompts import PromptSet
from .ome_zarr import ATTR_KEY, LabelStore, LabelStoreError
from .provenance import Provenance
from .units import normalise_unit

__all__ = ["SavedResult", "is_result_store", "open_result", "save_result"]


@dataclass
class SavedResult:
    """A result store opened read-only.

    labels: lazy zarr array in `axes` order (e.g. [T, Y, X] uint32); image: the stored source image (lazy) or
    None; prompts: the `PromptSet` recorded in the provenance (None when none was recorded); provenance: the
    recorded dict as stored (model, checkpoint hash, settings, package version, dates); record: the same read as
    a `Provenance` (any version of the record); finished_frames: first-axis indices completely written;
    scale: physical size per axis (1.0 each unless given); units: {axis letter: UDUNITS-2 unit} of the axes that
    carry one (None: none does).
    """

    path: Path
    labels: Any
    image: Any
    axes: str
    prompts: PromptSet | None
    provenance: dict
    finished_frames: list[int]
    scale: tuple[float, ...] | None = None
    colors: dict[int, list[int]] = field(default_factory=dict)
    store: LabelStore | None = None
    record: Provenance | None = None
    units: dict[str, str] | None = None

    @property
    def complete(self) -> bool:
        """Every frame is finished."""
        return len(self.finished_frames) == int(self.labels.shape[0])


def save_result(
    path: str | os.PathLike,
    labels,
    *,
    axes: str = "tyx",
    image=None,
    prompts: PromptSet | None = None,
    provenance: Provenance | dict | None = None,
    scale=None,
    units=None,
    overwrite: bool = False,
) -> LabelStore:
    """Write a whole label stack (e.g. a napari Labels layer) as an OME-Zarr 0.5 result store at `path`.

    labels: [T, Y, X] / [Z, Y, X] / [T, Z, Y, X] integer ids in `axes` order, written one frame at a time (a
    lazy array is never loaded whole). image: optional source image of the same shape. provenance: a
    `Provenance` (or its dict form); prompts: replace the provenance's prompts. overwrite: replace an earlier
    napari-sam2 store (never other folders). scale: physical size per axis; units: {axis letter: unit} or one
    unit per axis (e.g. a napari layer's `units`; "pixel" and unknown units are left out).
    """
    shape = tuple(int(s) for s in labels.shape)
    if not isinstance(provenance, Provenance):
        provenance = Provenance.from_dict(provenance)
    if prompts is not None:
        provenance.prompts = prompts
    if provenance.status is None:
        provenance.status = "complete"
    info = provenance.to_dict()
    if units is not None and not isinstance(units, dict):
        units = dict(zip(axes, units, strict=False))
    units = {a: u for a, u in ((a, normalise_unit(u)) for a, u in (units or {}).items()) if u and a in axes}
    store = LabelStore.create(
        path, shape, axes=axes, image=image, provenance=info, scale=scale, units=units, overwrite=overwrite
    )
    ids: set[int] = set()
    for t in range(shape[0]):
        frame = np.asarray(labels[t])
        store.write_frame(t, frame, colors=False)  # the colours: one attribute write at the end, not one per frame
        ids.update(np.unique(frame).tolist())
    store.add_colors(ids)
    return store


def is_result_store(path: str | os.PathLike) -> bool:
    """True if `path` is an OME-Zarr store written by napari-sam2 (never raises)."""
    path = Path(path)
    try:
        if not (path / "zarr.json").is_file():
            return False
        import zarr

        return ATTR_KEY in zarr.open_group(path, mode="r", zarr_format=3).attrs
    except Exception:  # noqa: BLE001  (any failure to open means: not one of ours)
        return False


def open_result(path: str | os.PathLike) -> SavedResult:
    """Open a result store read-only (lazily; nothing but metadata is read here)."""
    store = LabelStore.open(path, mode="r")
    provenance = store.provenance
    try:
        record = Provenance.from_dict(provenance, source=f"{path} (provenance)", frame_shape=store.shape[-2:])
    except ValueError as exc:
        raise LabelStoreError(f"{path}: the recorded prompts cannot be read ({exc})") from None
    scale = None
    for ms in store.attrs["ome"].get("multiscales", []):
        for transform in ms["datasets"][0].get("coordinateTransformations", []):
            if transform.get("type") == "scale":
                scale = tuple(float(v) for v in transform["scale"])
    return SavedResult(
        path=Path(path),
        labels=store.read_labels(),
        image=store.read_image(),
        axes=store.axes,
        prompts=record.prompts,
        provenance=provenance,
        finished_frames=store.finished_frames(),
        scale=scale,
        colors=store.colors,
        store=store,
        record=record,
        units=store.units,
    )
