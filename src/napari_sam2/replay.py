"""Reproduce an interactive session bit for bit from its edit log.

Why a log and not the prompts alone: SAM 2's memory attention reads every conditioning (prompted) frame, and a
click on a frame that was already tracked is a *correction* (conditioned on the memory of the frames before it,
with the previous mask as a prompt). So the labels depend on the order of clicks and propagations: click frame 0,
propagate, correct frame 4, propagate gives other labels on frames 3–7 than applying both clicks and propagating
once (frame 4 is then an initial prompt, and frames 1–3 attend to its memory). The session therefore records
every edit in order (`TrackingSession.edit_log`), every face stores it in the result's provenance, and
`replay_log` re-runs it on a fresh session, writing the labels exactly as the widget does (`merge_result`). At the
same torch thread count (`torch.set_num_threads`; recorded as settings["threads"]) the labels are identical.

    napari-sam2 replay result.ome.zarr --image movie.tif        # re-run and compare with the stored labels
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .prompts import ObjectPrompt

__all__ = ["ReplayResult", "merge_result", "replay", "replay_log"]


def merge_result(old: np.ndarray, result, drop: Iterable[int] = ()) -> np.ndarray:
    """The labels of one frame after writing a `FrameResult` over `old` [H, W]: the result's labels, except that
    pixels of objects the result does not cover (opened results, painted labels, evicted outputs) are kept where
    the new labels are empty — unless their id is in `drop`. The widget writes every result this way."""
    new = np.asarray(result.labels).astype(np.uint32, copy=True)
    old = np.asarray(old)
    keep = (old != 0) & (new == 0) & ~np.isin(old, [*result.obj_ids, *drop])
    new[keep] = old[keep]
    return new


def replay_log(session, log: list[dict], labels: np.ndarray | None = None, on_result=None) -> np.ndarray:
    """Run an edit log (`TrackingSession.edit_log`) on a fresh `session`; → the labels [N, H, W] uint32 written as
    the widget writes them (into `labels` when given). on_result(result) is called for every result."""
    n, (h, w) = len(session), session.frame_shape
    out = np.zeros((n, h, w), np.uint32) if labels is None else labels

    def write(results, drop=()):
        for r in results:
            out[r.frame] = merge_result(out[r.frame], r, drop)
            if on_result is not None:
                on_result(r)

    for i, entry in enumerate(log):
        op = entry.get("op")
        where = f"edit {i} ({op})"
        if op == "add":
            prompt = ObjectPrompt.from_dict(entry["prompt"], where)
            write([session.add(prompt, replace=bool(entry.get("replace", False)))])
        elif op == "set":
            prompt = None if entry.get("prompt") is None else ObjectPrompt.from_dict(entry["prompt"], where)
            write(session.set_prompt(entry["frame"], entry["obj_id"], prompt), drop=(int(entry["obj_id"]),))
        elif op == "clear":
            session.clear_prompts(entry["frame"], entry["obj_id"])
        elif op == "remove":
            session.remove_object(entry["obj_id"])
            out[out == int(entry["obj_id"])] = 0
        elif op == "reset":
            session.reset()
        elif op == "object":
            session.add_object(entry["obj_id"], parent=entry.get("parent"), start=entry.get("start"))
            if entry.get("start") is not None:  # the object does not exist before its start frame
                _erase(out[: int(entry["start"])], int(entry["obj_id"]))
        elif op == "end":
            session.end_object(entry["obj_id"], entry["last_frame"])
            # nor after its last frame: a mother's pixels on the frame her daughters start on are not kept
            _erase(out[max(0, int(entry["last_frame"]) + 1) :], int(entry["obj_id"]))
        elif op == "pass":
            write(session.propagate_pass(entry["first"], entry["last"], bool(entry["reverse"]), entry["frames"]))
        else:
            raise InputError(f"{where}: unknown edit {op!r}; this log was written by a newer napari-sam2")
    return out


def _erase(labels: np.ndarray, obj_id: int) -> None:
    """Clear `obj_id` from labels [..., H, W] in place (the session dropped its outputs there)."""
    labels[labels == obj_id] = 0


@dataclass
class ReplayResult:
    """labels: [N, H, W] uint32 replayed; stored: the store's labels (lazy); differing_frames: frames whose labels
    differ; differing_pixels: how many pixels in all; identical: no pixel differs."""

    labels: np.ndarray
    stored: Any
    differing_frames: list[int] = field(default_factory=list)
    differing_pixels: int = 0

    @property
    def identical(self) -> bool:
        return not self.differing_frames

    @classmethod
    def compare(cls, labels: np.ndarray, stored) -> ReplayResult:
        """Replayed `labels` [N, ...] against the store's `stored` labels (read one frame at a time)."""
        result = cls(labels=labels, stored=stored)
        for t in range(labels.shape[0]):
            diff = int(np.count_nonzero(np.asarray(stored[t]) != labels[t]))
            if diff:
                result.differing_frames.append(t)
                result.differing_pixels += diff
        return result


def replay(
    store: str | os.PathLike,
    image=None,
    model=None,
    device: str = "auto",
    threads: int | None = None,
) -> ReplayResult:
    """Re-run the edit log recorded in a result store and compare with its labels.

    store: a result written by the widget or `track()`. image: the stack it was made from (array or path; default:
    the recorded input path). model: default the recorded one (a different checkpoint is refused). threads: torch
    CPU threads (default: the recorded count — float sums, and so boundary pixels, depend on it).
    """
    import torch

    from .api import _load_model, _open_input
    from .io.results import open_result
    from .session import TrackingSession

    saved = open_result(store)
    record = saved.record
    if not record.edit_log:
        raise InputError(
            f"{store} records no edit log (made by an older napari-sam2, or saved from a plain labels layer); "
            "only the prompts can be re-run: napari_sam2.track(image, result.prompts)"
        )
    settings = record.settings
    if settings.get("session_key"):
        raise InputError(f"{store} was made on one slice {settings['session_key']} of a larger stack; replay "
                         "handles sessions over a whole 3-D stack")  # fmt: skip
    if image is None:
        image = record.input.get("path")
        if not image or image == "array" or not Path(image).exists():
            raise InputError(f"give the image {store} was made from (the recorded input {image!r} is not a file)")
    opened = _open_input(image)
    net, used = _load_model(model if model is not None else (record.model.source or None), device)
    if record.model.checkpoint_sha256 and used.checkpoint_sha256 not in (None, record.model.checkpoint_sha256):
        raise InputError(f"{store} was made with checkpoint {record.model.source}; replaying with another model "
                         f"({used.source}) cannot reproduce it")  # fmt: skip
    if settings.get("engine") == "volume_time":  # a 3D+t result of track(): the VolumeTimeSession's log
        from ._volume_job import replay_tzyx

        return replay_tzyx(saved, opened, net, threads)
    axis = settings.get("axis", settings.get("stream_axis", 0))
    options = {}
    for key in ("channel", "channel_axis"):
        if settings.get(key) is not None:
            options[key] = settings[key]
    if settings.get("window") is not None:
        from .preprocess import IntensityRange

        options["intensity"] = IntensityRange(*settings["window"])
    threads = threads or settings.get("threads")
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        with TrackingSession(
            net, opened.data, axis=axis, preset=settings.get("preset", "default"), **options
        ) as session:
            if (len(session), *session.frame_shape) != tuple(saved.labels.shape):
                raise InputError(
                    f"the image gives {(len(session), *session.frame_shape)} labels but {store} holds "
                    f"{tuple(saved.labels.shape)}: give the image (and axis) it was made from"
                )
            labels = replay_log(session, record.edit_log)
    finally:
        torch.set_num_threads(before)
    return ReplayResult.compare(labels, saved.labels)
