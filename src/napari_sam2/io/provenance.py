"""What made a result: the one provenance record every face writes into a result store and reads back.

`track()` / the command line, the widget's Save… and napari's File ▸ Save all write a `Provenance`
(`to_dict()` under ``napari_sam2.provenance`` of the label image, see `io/ome_zarr.py`); `napari-sam2 info`,
`track(resume=True)`, the widget's Open… and napari's File ▸ Open all read it with `Provenance.from_dict`, which
also reads the forms written by earlier versions (the widget's flat record with ``"model"`` as a string, the napari
writer's ``"original"``), so older stores keep opening.

Layout of `to_dict()` (JSON)::

    {"provenance_version": 2, "tool": "track" | "widget" | "napari writer",
     "model": {"source": NAME|PATH, "config": ..., "checkpoint": PATH, "checkpoint_sha256": HEX, ["note": ...]},
     "settings": {...},          # how the stack was tracked (direction, preset, axis, channel, window, device, ...)
     "prompts": PromptSet.to_dict() | null,
     "parents": {"child id": parent id, ...},   # lineage (divisions); empty when no object has a parent
     "input": {"path": ..., "shape": [...], "layer": ...},   # what was tracked
     "edit_log": [...],          # TrackingSession.edit_log: every prompt and pass in order (see replay.py)
     "package_version": "...", "status": "running" | "interrupted" | "complete", "created": ISO date,
     ...}                        # any other key is kept as it is (`extra`)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..prompts import PromptSet

__all__ = ["PROVENANCE_VERSION", "ModelRecord", "Provenance", "checkpoint_sha256", "model_record"]

PROVENANCE_VERSION = 2

# keys of the widget's flat record (versions before PROVENANCE_VERSION 2) that are settings
_OLD_WIDGET_SETTINGS = ("device", "preset", "stream_axis", "channel_axis", "channel", "session_key")
_KNOWN = {
    "provenance_version", "tool", "model", "settings", "prompts", "parents", "input", "package_version", "status",
    "created", "edit_log",
}  # fmt: skip


@dataclass
class ModelRecord:
    """The model that made a result. source: what the user named (registry name or checkpoint path); config: the
    architecture's name; checkpoint: the file loaded; checkpoint_sha256: its hash (None for an in-memory model)."""

    source: str | None = None
    config: str | None = None
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "source": self.source,
            "config": self.config,
            "checkpoint": self.checkpoint,
            "checkpoint_sha256": self.checkpoint_sha256,
        }
        if self.note:
            out["note"] = self.note
        return out

    @classmethod
    def from_value(cls, value, flat: Mapping[str, Any] | None = None) -> ModelRecord:
        """A record from the dict form, or from the older string form (then the flat record's "model_config",
        "checkpoint" and "checkpoint_sha256" complete it)."""
        flat = flat or {}
        if isinstance(value, Mapping):
            return cls(
                source=_str_or_none(value.get("source")),
                config=_str_or_none(value.get("config")),
                checkpoint=_str_or_none(value.get("checkpoint")),
                checkpoint_sha256=_str_or_none(value.get("checkpoint_sha256")),
                note=_str_or_none(value.get("note")),
            )
        return cls(
            source=_str_or_none(value),
            config=_str_or_none(flat.get("model_config")),
            checkpoint=_str_or_none(flat.get("checkpoint")),
            checkpoint_sha256=_str_or_none(flat.get("checkpoint_sha256")),
        )

    def describe(self) -> str:
        sha = self.checkpoint_sha256
        return f"{self.source or '?'} (config {self.config or '?'}, sha256 {sha[:16] + '…' if sha else '-'})"


@dataclass
class Provenance:
    """Everything recorded about how a result was made (see the module docstring for the stored layout).

    prompts: the `PromptSet` that, applied in order, reproduces the tracking (None when none was recorded, e.g.
    labels saved from a hand-drawn layer). parents: {obj_id: parent obj_id} for objects born by division.
    edit_log: the session's ordered edits (`TrackingSession.edit_log`), which `napari_sam2.replay` re-runs to
    reproduce the labels bit for bit (None when not recorded). extra: any other recorded key (kept through a
    read/write round trip).
    """

    model: ModelRecord = field(default_factory=ModelRecord)
    settings: dict[str, Any] = field(default_factory=dict)
    prompts: PromptSet | None = None
    parents: dict[int, int] = field(default_factory=dict)
    input: dict[str, Any] = field(default_factory=dict)
    package_version: str | None = None
    tool: str | None = None
    status: str | None = None
    created: str | None = None
    edit_log: list[dict] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.package_version is None:
            from .. import __version__

            self.package_version = __version__

    # -------------------------------------------------------------- dict form
    def to_dict(self) -> dict[str, Any]:
        """The JSON-able record stored in a result (None-valued optional keys are left out)."""
        out: dict[str, Any] = dict(self.extra)
        out.update(
            {
                "provenance_version": PROVENANCE_VERSION,
                "tool": self.tool,
                "model": self.model.to_dict(),
                "settings": dict(self.settings),
                "prompts": None if self.prompts is None else self.prompts.to_dict(),
                "parents": {str(int(k)): int(v) for k, v in sorted(self.parents.items())},
                "input": dict(self.input),
                "package_version": self.package_version,
            }
        )
        for key in ("status", "created", "edit_log"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, source: str = "provenance", frame_shape=None) -> Provenance:
        """Read a recorded provenance of any version (tolerant: unknown keys go to `extra`; the older flat widget
        record and the napari writer's "original" are understood). Bad prompts raise `PromptError` naming `source`."""
        data = dict(data or {})
        if data.get("provenance_version") is None and isinstance(data.get("original"), Mapping):
            # napari writer before version 2: the tracked result's record under "original", prompts on top
            inner = dict(data.pop("original"))
            if data.get("prompts") is not None:
                inner["prompts"] = data["prompts"]
            for key in ("status", "created", "package_version"):
                if key in data:
                    inner[key] = data[key]
            record = cls.from_dict(inner, source, frame_shape)
            record.tool = "napari writer"
            record.input = {**record.input, **({"layer": data["layer"]} if data.get("layer") else {})}
            return record
        old = data.get("provenance_version") is None
        model = ModelRecord.from_value(data.get("model"), data)
        settings = dict(data.get("settings") or {})
        record_input = dict(data.get("input") or {})
        tool = data.get("tool")
        if old:
            if isinstance(data.get("model"), str) or tool == "napari-sam2 widget":  # the widget's flat record
                tool = "widget"
                for key in _OLD_WIDGET_SETTINGS:
                    if key in data:
                        settings.setdefault(key, data[key])
                if data.get("image_layer") is not None:
                    record_input.setdefault("layer", data["image_layer"])
                if data.get("image_source") is not None:
                    record_input.setdefault("path", data["image_source"])
            elif data.get("source") == "napari writer":
                tool = "napari writer"
                if data.get("layer") is not None:
                    record_input.setdefault("layer", data["layer"])
            elif "settings" in data:
                tool = tool or "track"
                if "input" in settings:  # track() before version 2 kept the input among the settings
                    record_input.setdefault("path", settings.pop("input"))
                if "input_shape" in settings:
                    record_input.setdefault("shape", settings.pop("input_shape"))
        prompts = None
        if data.get("prompts"):
            prompts = PromptSet.from_dict(data["prompts"], source=f"{source} (prompts)", frame_shape=frame_shape)
        parents = {}
        for child, parent in (data.get("parents") or {}).items():
            parents[int(child)] = int(parent)
        consumed = set(_KNOWN)
        if old:
            consumed |= {"model_config", "checkpoint", "checkpoint_sha256", "image_layer", "image_source", "source"}
            consumed |= {"napari_sam2_version", "layer"} | set(_OLD_WIDGET_SETTINGS)
        return cls(
            model=model,
            settings=settings,
            prompts=prompts,
            parents=parents,
            input=record_input,
            package_version=_str_or_none(data.get("package_version") or data.get("napari_sam2_version")),
            tool=tool,
            status=data.get("status"),
            created=data.get("created"),
            edit_log=list(data["edit_log"]) if isinstance(data.get("edit_log"), list) else None,
            extra={k: v for k, v in data.items() if k not in consumed},
        )

    @classmethod
    def from_store(cls, store) -> Provenance:
        """The provenance of an open `LabelStore`."""
        return cls.from_dict(store.provenance, source=f"{store.path} (provenance)", frame_shape=store.shape[-2:])


# ---------------------------------------------------------------------- model records
_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def checkpoint_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a checkpoint file, remembered per (path, size, mtime) so a second run does not hash it again."""
    from .. import registry

    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = registry.file_sha256(path)
    return _SHA_CACHE[key]


def model_record(net, source: str | os.PathLike | None = None) -> ModelRecord:
    """The record of a loaded `SAM2Model`; `source` is what the user named (default: its checkpoint path)."""
    checkpoint = getattr(net, "checkpoint_path", None)
    checkpoint = None if checkpoint is None else os.fspath(checkpoint)
    sha = checkpoint_sha256(checkpoint) if checkpoint and os.path.isfile(checkpoint) else None
    return ModelRecord(
        source=os.fspath(source) if source is not None else checkpoint,
        config=getattr(getattr(net, "cfg", None), "name", None),
        checkpoint=checkpoint,
        checkpoint_sha256=sha,
        note=None
        if checkpoint
        else "an in-memory model without a checkpoint file: its weights cannot be identified by hash",
    )


def _str_or_none(value) -> str | None:
    return None if value is None else str(value)
