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

__all__ = ["LabelWriter", "ReplayResult", "log_z_edge", "merge_result", "outside_span", "replay", "replay_log"]


Span = tuple[int | None, int | None]  # (first, last) frame an object exists on; None: unbounded


def outside_span(span: Span, frame: int) -> bool:
    """Whether `frame` lies outside `span` (`TrackingSession.span`: the frames the object exists on)."""
    first, last = span
    return (first is not None and frame < first) or (last is not None and frame > last)


def merge_result(old: np.ndarray | None, result, drop: Iterable[int] = (), spans: dict | None = None) -> np.ndarray:
    """The labels of one frame after writing a `FrameResult` over `old` [H, W]: the result's labels, except that
    pixels of objects the result does not cover (opened results, painted labels, evicted outputs) are kept where
    the new labels are empty — unless their id is in `drop`. old None: nothing is kept (the result replaces the
    frame). spans {obj: (first, last)}: no object keeps or gets a pixel on a frame outside its span (a result made
    before its object was ended can still hold it). Every face writes results this way (`LabelWriter`)."""
    new = np.asarray(result.labels).astype(np.uint32, copy=True)
    if old is not None:
        old = np.asarray(old)
        keep = (old != 0) & (new == 0) & ~np.isin(old, [*result.obj_ids, *drop])
        new[keep] = old[keep]
    gone = [obj for obj, span in (spans or {}).items() if outside_span(span, result.frame)]
    if gone:
        new[np.isin(new, gone)] = 0
    return new


class LabelWriter:
    """Writes one session's results into its labels, as the widget, `replay_log` and `track()` all do, under one
    rule: an object has no pixel outside its span of frames (`session.span`; a mother ends on the frame before she
    divides, a daughter or an arrival starts on the frame it is found on). A result's own frame is merged with
    `merge_result` under the current spans; when a span has shrunk since the last write, the object's pixels on
    the frames now outside it are cleared too (results keep pixels of objects they do not cover, so a frame an
    earlier pass wrote would keep them).

    read(frame) → the session's labels of `frame` [H, W]; write(frame, labels) stores them. keep: merge with the
    frame's old labels (False: each result replaces its frame, as track() writes). frames_of(obj) → the frames
    that may hold `obj` (default every frame of the session; track() knows where it wrote each object).
    on_span(obj, span): called for each object whose span changed, after its pixels outside it were cleared (the
    widget drops that object's confidences outside the span the same way).
    """

    def __init__(self, session, read, write, keep: bool = True, frames_of=None, on_span=None):
        self.session, self.read, self.store, self.keep = session, read, write, keep
        self.frames_of = frames_of or (lambda obj: range(len(session)))
        self.on_span = on_span
        self.spans = self.current()  # the spans the labels already obey

    def current(self) -> dict[int, Span]:
        """{obj: span} of every object of the session now."""
        return {obj: self.session.span(obj) for obj in self.session.obj_ids}

    def write(self, result, drop: Iterable[int] = ()) -> np.ndarray:
        """Merge `result` into its frame (ids in `drop` lose their old pixels there); → the frame's new labels."""
        spans = self.current()
        labels = merge_result(self.read(result.frame) if self.keep else None, result, drop, spans)
        self.store(result.frame, labels)
        self.enforce(spans)
        return labels

    def enforce(self, spans: dict[int, Span] | None = None) -> None:
        """Clear each object whose span changed since the last call from the frames outside its new span."""
        for obj, span in (self.current() if spans is None else spans).items():
            if self.spans.get(obj) == span:
                continue
            self.spans[obj] = span
            for t in [t for t in self.frames_of(obj) if outside_span(span, t)]:
                plane = np.asarray(self.read(t))
                if (plane == obj).any():
                    self.store(t, np.where(plane == obj, 0, plane).astype(plane.dtype, copy=False))
            if self.on_span is not None:
                self.on_span(obj, span)


def replay_log(session, log: list[dict], labels: np.ndarray | None = None, on_result=None) -> np.ndarray:
    """Run an edit log (`TrackingSession.edit_log`) on a fresh `session`; → the labels [N, H, W] uint32 written as
    the widget writes them (into `labels` when given). on_result(result) is called for every result."""
    n, (h, w) = len(session), session.frame_shape
    out = np.zeros((n, h, w), np.uint32) if labels is None else labels

    writer = LabelWriter(session, out.__getitem__, out.__setitem__)

    def write(results, drop=()):
        for r in results:
            writer.write(r, drop)
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
        elif op == "object":  # the object does not exist before its start frame: its pixels there go (`writer`)
            session.add_object(entry["obj_id"], parent=entry.get("parent"), start=entry.get("start"))
            writer.enforce()
        elif op == "end":  # nor after its last frame: a mother's pixels on the frame her daughters start on go
            session.end_object(entry["obj_id"], entry["last_frame"])
            writer.enforce()
        elif op == "pass":
            write(session.propagate_pass(entry["first"], entry["last"], bool(entry["reverse"]), entry["frames"]))
        elif op == "edge":  # the axial edge rule of a z-stack, applied where the face applied it (an entry written
            # before session 12 names no background: the ring's median then)
            from .volume_time import Z_EDGE_BACKGROUND_BEFORE

            write(session.axial_edge(entry.get("z_edge"), entry.get("background", Z_EDGE_BACKGROUND_BEFORE)))
        else:
            raise InputError(f"{where}: unknown edit {op!r}; this log was written by a newer napari-sam2")
    return out


def log_z_edge(log: list[dict] | None, recorded=None) -> float | None:
    """The axial edge rule a z-stack session needs to rerun `log`: the fraction its "edge" entries applied (else
    `recorded`, the settings' z_edge; None: a log without the rule, e.g. made before it, replays without it)."""
    for entry in log or ():
        if entry.get("op") == "edge":
            return float(entry.get("z_edge") or recorded)
    return recorded


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
    from .click_rule import click_rule_from_record
    from .io.results import open_result
    from .preprocess import contrast_from_record
    from .session import TrackingSession

    saved = open_result(store)
    record = saved.record
    if not record.edit_log:
        raise InputError(
            f"{store} records no edit log (made by an older napari-sam2, or saved from a plain labels layer); "
            "only the prompts can be re-run: napari_sam2.track(image, result.prompts)"
        )
    settings = record.settings
    volume_time = settings.get("engine") == "volume_time"
    # a 3D+t log is the whole [T, Z, Y, X] session's; its session_key only names the time point the widget showed
    if settings.get("session_key") and not volume_time:
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
    if volume_time:  # a 3D+t result of track() or the widget: the VolumeTimeSession's log
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
    options["contrast"] = contrast_from_record(settings)  # none recorded: made before the option, global
    options["click_rule"] = click_rule_from_record(settings)  # none recorded: made before the rule, off
    threads = threads or settings.get("threads")
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        with TrackingSession(
            net,
            opened.data,
            axis=axis,
            preset=settings.get("preset", "default"),
            z_edge=log_z_edge(record.edit_log, settings.get("z_edge")),
            # a z stream's tracked masks are mended by a click rule with through_z (none recorded: made before it,
            # when the rule had no such step)
            z_stream=bool(settings.get("z_stream", False)),
            **options,
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
