"""napari reader and writer contributions for napari-sam2 result stores (OME-Zarr 0.5); no napari import needed.

Reader: a store written by napari-sam2 opens as Image (the stored frames, if any) + Labels (lazy, zarr-backed)
+ Tracks (t-stacks with objects; the graph carries gaps and the recorded lineage of divisions); any other path
gives None so napari asks the next reader.
Writer: a Labels layer is saved as a result store (`io.results.save_result`). The layer's metadata under
"napari_sam2" carries what the reader found ("provenance": the recorded `Provenance` dict, prompts included), so
File ▸ Open then File ▸ Save keeps the model, settings and prompts; a "prompts" entry there (a `PromptSet.to_dict()`)
replaces the recorded prompts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .io.results import is_result_store, open_result, save_result

__all__ = ["get_reader", "read_result", "write_labels"]


def get_reader(path):
    """npe2 reader command: a function returning layer data for our stores, else None (never raises)."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        if not is_result_store(path):
            return None
    except Exception:  # noqa: BLE001  (a reader must never raise: napari then asks the next one)
        return None
    return read_result


def read_result(path) -> list[tuple]:
    """[(data, kwargs, layer_type), ...]: image (if stored), labels, and tracks (time-lapses with objects)."""
    if isinstance(path, (list, tuple)):
        path = path[0]
    result = open_result(path)
    name = Path(path).name
    for ext in (".ome.zarr", ".zarr"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
    scale = tuple(result.scale) if result.scale else None
    # napari shows the store's axes by name (the slider reads "t" or "z") and at its physical scale and units
    common: dict = {"axis_labels": tuple(result.axes)}
    if scale:
        common["scale"] = scale
    if result.units:
        common["units"] = tuple(result.units.get(a, "pixel") for a in result.axes)
    meta = {"napari_sam2": {"path": str(path), "provenance": result.provenance, "axes": result.axes}}
    layers = []
    if result.image is not None:
        layers.append((result.image, {"name": f"{name} image", **common}, "image"))
    labels_kwargs = {"name": f"{name} labels", "metadata": meta, **common}
    if result.colors:  # the colours recorded in image-label, as the widget and other OME-Zarr viewers show them
        colormap = {int(k): [c / 255 for c in rgba] for k, rgba in result.colors.items()}
        colormap[0] = [0.0, 0.0, 0.0, 0.0]
        colormap[None] = [1.0, 1.0, 1.0, 1.0]  # an id without a recorded colour: white, never hidden
        labels_kwargs["colormap"] = colormap
    layers.append((result.labels, labels_kwargs, "labels"))
    if result.axes[0] == "t" and result.colors:
        from .analysis import consistent_parents, parents_from_provenance, tracks_from_labels

        parents = parents_from_provenance(result.provenance)
        if parents:  # the recorded lineage was made consistent with these labels; recheck for edited stores
            presence = {}
            for t in range(int(result.labels.shape[0])):
                for obj in np.unique(np.asarray(result.labels[t])):
                    if obj:
                        presence.setdefault(int(obj), []).append(t)
            parents, _ = consistent_parents(parents, presence)
        data, graph = tracks_from_labels(result.labels, parents=parents)
        if len(data):
            track_kwargs = {"name": f"{name} tracks", "graph": graph, **common}
            layers.append((data, track_kwargs, "tracks"))
    return layers


def write_labels(path: str, data, meta: dict) -> list[str]:
    """npe2 single-layer writer for Labels: [T|Z, Y, X] or [T, Z, Y, X] (a 2-D layer is saved as one frame)."""
    from .io.provenance import Provenance
    from .prompts import PromptSet

    array = data
    ndim = len(array.shape)
    if ndim == 2:
        array = np.asarray(array)[None]
        ndim = 3
    axes_labels = [str(a).lower()[:1] for a in (meta.get("axis_labels") or ())]
    if ndim == 3:
        axes = "zyx" if axes_labels[:1] == ["z"] else "tyx"
    elif ndim == 4:
        axes = "tzyx"
    else:
        raise ValueError(f"napari-sam2 saves 2-D to 4-D labels; this layer has shape {tuple(data.shape)}")
    scale = meta.get("scale")
    if scale is not None:
        scale = [float(s) for s in scale]
        scale = ([1.0] * (ndim - len(scale)) + scale)[-ndim:]
    ours = (meta.get("metadata") or {}).get("napari_sam2") or {}
    record = Provenance.from_dict(ours.get("provenance"), source=f"layer {meta.get('name')!r} (provenance)")
    if ours.get("prompts"):
        record.prompts = PromptSet.from_dict(ours["prompts"], source=f"layer {meta.get('name')!r} (prompts)")
    if ours.get("path"):
        record.extra["saved_from"] = str(ours["path"])
    record.tool = "napari writer"
    record.input = {**record.input, "layer": meta.get("name")}
    record.status, record.created = None, None  # a new store: complete when written, dated now
    record.extra.pop("writes", None)
    units = meta.get("units")  # napari's pint units ("micrometer", "second"; "pixel" when unset)
    if units is not None:
        units = [str(u) for u in units]
        units = (["pixel"] * (ndim - len(units)) + units)[-ndim:]
    save_result(path, array, axes=axes, provenance=record, scale=scale, units=units, overwrite=True)
    return [str(path)]
