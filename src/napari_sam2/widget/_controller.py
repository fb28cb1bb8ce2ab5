"""What the napari widget does, without Qt or napari: the model, one `TrackingSession` per slice, the job queue that
applies prompts in the order they were made, the label image the results are merged into, propagation, and
save / open of results. On a 3D+t layer (`StackGeometry.coupled`) the slice sessions stream z (one per time point)
and give each prompt its mask at once, while propagation runs one `VolumeTimeSession` over the whole [T, Z, Y, X]
layer (`propagate_volume`: the engine of `track()`), kept between runs so that corrections recompute only what
they change.

The widget (`_widget.py`) lays out, turns clicks and layer edits into calls here and shows the state this object
reports through its `view` (see `ControllerView`). Work that can take long runs through `spawn(func, *args,
**handlers)`, which returns an unstarted worker (`start()`, `quit()`): the widget passes one that runs on Qt thread
workers; the default `InlineWorker` runs everything at `start()` on the calling thread, which is how the tests drive
this class with no display. Handlers are called with what the function returned (`returned`), each value a
generator yields (`yielded`), its exception (`errored`), `aborted` after `quit()`, and `finished` last.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from ..prompts import ObjectPrompt, PromptSet
from ..replay import LabelWriter, merge_result, outside_span, replay_log
from . import _worker
from ._geometry import StackGeometry, make_label_array

MAX_PREFETCH = 64  # frames encoded ahead when a layer is chosen (the feature cache holds about this many at 1024²)

__all__ = [
    "MAX_PREFETCH",
    "ControllerView",
    "InlineWorker",
    "TrackingController",
    "error_text",
    "plan_passes",
    "z_streamed",
]


def error_text(exc: BaseException) -> str:
    """One line for a notification: the message of an expected error, the type name added for anything else."""
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, (InputError, ValueError, OSError, RuntimeError)) else f"{type(exc).__name__}: {text}"


class InlineWorker:
    """A worker that runs its function on the calling thread at `start()` (no display, no threads: tests, scripts).
    `quit()` from a handler stops a generator after the value being handled."""

    def __init__(self, func, *args, **handlers):
        self.func, self.args, self.handlers = func, args, handlers
        self.abort_requested = False

    def _emit(self, name, *args):
        handler = self.handlers.get(name)
        if handler is not None:
            handler(*args)

    def quit(self) -> None:
        self.abort_requested = True

    def start(self) -> None:
        try:
            value = self.func(*self.args)
            if hasattr(value, "__next__"):
                for item in value:
                    self._emit("yielded", item)
                    if self.abort_requested:
                        value.close()
                        self._emit("aborted")
                        break
                else:
                    self._emit("returned", None)
            else:
                self._emit("returned", value)
        except Exception as exc:  # noqa: BLE001 (handed to the errored handler, as a thread worker does)
            self._emit("errored", exc)
        self._emit("finished")


class ControllerView:
    """What the controller tells its face; every method does nothing here (a face overrides what it shows)."""

    def show_message(self, kind: str, text: str) -> None:
        """kind: "info", "warning" or "error"."""

    def show_labels(self, key: tuple) -> None:
        """Labels of session `key` changed (the label array was written)."""

    def show_prompted(self, results: list) -> None:
        """A prompt job's FrameResults were written."""

    def show_session_ready(self, key: tuple, session) -> None:
        """Session `key` is made and its prompts applied."""

    def show_encoding(self, done: int, total: int) -> None:
        """Background encoding progress (total 0: none running)."""

    def show_propagation(self, done: int, total: int) -> None:
        """Frames written by the running propagation / frames it will visit."""

    def show_propagation_done(self, frames_written: int, cancelled: bool) -> None:
        """A propagation run ended (finished, failed or cancelled)."""

    def show_model(self, model, source: str | None) -> None:
        """A model was loaded (or failed to: model None)."""

    def show_state(self) -> None:
        """Objects, busy state or sessions changed: refresh buttons and the object list."""


@dataclass
class _TimePoint:
    """One time point of a 3D+t propagation as `replay.LabelWriter` writes it: frame = t, labels [Z, Y, X], obj_ids
    = the session's objects (its result covers every one of them at t)."""

    frame: int
    labels: np.ndarray
    obj_ids: list[int]


def z_streamed(geometry: StackGeometry | None) -> bool:
    """The geometry streams z: a stream axis named z (`StackGeometry.z_stream`) or 3D+t (`coupled`, z and t): where
    the axial edge rule applies (`TrackingController.z_edge`)."""
    return geometry is not None and (geometry.z_stream or geometry.coupled)


def plan_passes(prompted_frames, direction: str, lo: int, hi: int) -> list[tuple[str, int, int]]:
    """The propagation passes [(direction, start, stop)] over frames lo…hi for `direction` "forward", "backward" or
    "both", starting from the first (forward) / last (backward) prompted frame inside the range."""
    if direction not in ("forward", "backward", "both"):
        raise InputError(f"direction must be 'forward', 'backward' or 'both', not {direction!r}")
    inside = [f for f in prompted_frames if lo <= f <= hi]
    passes = []
    if direction in ("forward", "both"):
        passes.append(("forward", min(inside, default=lo), hi))
    if direction in ("backward", "both"):
        start = max(inside, default=hi)
        if start > lo or direction == "backward":
            passes.append(("backward", start, lo))
    return passes


class TrackingController:
    """The widget's state and actions, with no Qt and no napari.

    geometry: a `StackGeometry` (which axis is streamed, which are fixed; one session per `key` = indices of the
    fixed axes). labels: the label array (`geometry.label_shape`, uint32) every result is merged into by a
    `replay.LabelWriter` (as `replay` and `track()` write them). confidence: {key: {obj: {frame: (score, iou)}}}.
    prompts_of(key) → `PromptSet`: the prompts a new session of `key` starts from (the widget reads its prompt
    layers; default none).
    """

    def __init__(self, view: ControllerView | None = None, spawn: Callable[..., Any] = InlineWorker, prompts_of=None):
        self.view = view or ControllerView()
        self.spawn = spawn
        self.prompts_of = prompts_of or (lambda key: PromptSet())
        self.model = None
        self.model_source: str | None = None
        self.geometry: StackGeometry | None = None
        self.labels = None
        self.sessions: dict[tuple, Any] = {}  # key → TrackingSession, or "creating"
        self.guard = threading.Lock()
        self.object_ids: list[int] = []
        # prompts the face's layers cannot show (masks: objects found by `find_objects` or by discovery), per key:
        # {(frame, obj): ObjectPrompt}; saved and re-applied with the layers' prompts
        self.mask_prompts: dict[tuple, dict[tuple[int, int], ObjectPrompt]] = {}
        self.events: list[dict] = []  # what discovery did in the last propagation ({"frame", "kind", ...})
        self.discovery = None  # DiscoveryOptions: discover new objects and divisions on forward passes (None: off)
        #: the contrast step of the model input (`preprocess`): None = the model's default, "global", "local" or a
        #: `preprocess.LocalContrast` (an opened result's recorded one); `set_contrast` restarts the sessions
        self.contrast = None
        #: the click rule of prompted frames (`napari_sam2.click_rule`): None = the model's default, or a rule (an
        #: opened result's recorded one, so that its edit log is continued as it was made); `set_click_rule` sets it
        self.click_rule = None
        #: the axial edge rule asked for on a z stream (`napari_sam2.volume`): "auto" (track()'s default), a fraction
        #: in (0, 1) or None (off); `set_z_edge` checks it, `z_edge_used` resolves it (along t: never a rule)
        self.z_edge: str | float | None = "auto"
        self.max_id = 0
        self.confidence: dict[tuple, dict] = {}
        self.writers: dict[tuple, tuple] = {}  # key → (session, geometry, its LabelWriter)
        self.opened_record = None  # the Provenance of the last opened result
        self.opened_key: tuple | None = None  # the session key the opened result was made on
        # key → whether the session's edit log alone reproduces its labels (False: continued from an opened result
        # that recorded no log, so the session started from its prompts only)
        self.log_complete: dict[tuple, bool] = {}
        self.current: tuple | None = None  # (key, frame) the face shows (see `focus`)
        self.jobs: collections.deque = collections.deque()
        self.job_worker = None
        self.model_worker = None
        self.encode_worker = None
        self.propagation_worker = None
        self.save_worker = None
        self.frames_written = 0
        #: 3D+t (`geometry.coupled`): the `VolumeTimeSession` propagation runs on, kept between runs so that a
        #: correction recomputes only what it changes (None: made at the next propagation)
        self.volume = None
        #: 3D+t previews: the 4-D stack's (intensity range, contrast step) last fitted, with the geometry, model and
        #: contrast it was fitted for (`stack_preprocessing`); each time point's preview session takes it
        self.fitted_stack: tuple | None = None
        self.fit_lock = threading.Lock()
        self.encoded = (0, 0)
        self.workers: set = set()
        self.alive = True

    # ================================================================== workers
    def start(self, func, *args, **handlers):
        """Run `func(*args)` through `spawn`; `handlers` as in the module docstring (dropped after `shutdown`)."""
        wrapped = {name: (lambda *a, cb=cb: cb(*a) if self.alive else None) for name, cb in handlers.items()}
        box = []

        def finished():
            self.workers.discard(box[0])
            wrapped.get("finished", lambda: None)()

        worker = self.spawn(func, *args, **{**wrapped, "finished": finished})
        box.append(worker)
        self.workers.add(worker)
        return worker

    @property
    def idle(self) -> bool:
        """No prompt job, session creation or propagation is pending."""
        return self.job_worker is None and not self.jobs and self.propagation_worker is None

    @property
    def running(self) -> bool:
        """A propagation runs."""
        return self.propagation_worker is not None

    # ================================================================== model
    def load_model(self, source: str, device: str = "auto") -> None:
        """Load a registry model or .pt file on a worker; sessions restart with it once loaded."""

        def loaded(model):
            self.set_model(model, source)

        def failed(exc):
            hint = (
                " Choose device 'auto' or 'cpu'." if device in ("cuda", "mps") and isinstance(exc, RuntimeError) else ""
            )
            self.view.show_model(None, source)
            self.view.show_message("error", f"Model {source!r} could not be loaded: {error_text(exc)}{hint}")

        def done():
            self.model_worker = None
            self.view.show_state()

        self.model_worker = worker = self.start(
            _worker.load_model_job, source, device, returned=loaded, errored=failed, finished=done
        )
        self.view.show_state()
        worker.start()

    def set_model(self, model, source: str | None) -> None:
        self.model, self.model_source = model, source
        self.fitted_stack = None  # fitted for the model before (and holding it)
        self.reset_sessions()
        self.view.show_model(model, source)

    def set_contrast(self, contrast) -> None:
        """Make the model input with another contrast step (None: the model's default; "global", "local", or a
        `preprocess.LocalContrast`): the sessions restart with it (the labels and prompts stay; prompts are applied
        again). InputError for anything else."""
        from ..preprocess import contrast_step

        if contrast is not None:
            contrast_step(contrast)  # refuse a bad value here, not on a worker
        if contrast == self.contrast:
            return
        self.contrast = contrast
        self.reset_sessions()

    def set_click_rule(self, rule) -> None:
        """Read clicks with another click rule (None: the model's default; "off", "fluorescence", or a
        `click_rule.ClickRule`, e.g. an opened result's recorded one): the sessions restart with it (the labels and
        prompts stay; prompts are applied again); the rule it already has changes nothing. InputError for anything
        else."""
        from ..click_rule import click_rule

        if rule is not None:
            rule = click_rule(rule)  # a name → its rule; a bad value is refused here, not on a worker
        if rule == self.click_rule:
            return
        self.click_rule = rule
        self.reset_sessions()

    def contrast_used(self, session=None):
        """The contrast step (resolved, never None) the labels of `session` (or of this face's 3D+t session) are made
        with; an opened result not tracked again: its recorded one."""
        from ..preprocess import GlobalContrast, contrast_from_record, resolve_contrast

        g = self.geometry
        z_stream = g is not None and g.plain_z_stream  # as `make_session` gives a session its z stream

        def resolve(contrast, model):
            return resolve_contrast(contrast, model, z_stream=z_stream)

        return self._made_with(session, "contrast", contrast_from_record, GlobalContrast(), resolve)

    def click_rule_used(self, session=None):
        """The click rule (resolved, never None) the labels of `session` (or of this face's 3D+t session) are made
        with; an opened result not tracked again: its recorded one."""
        from ..click_rule import CLICK_RULE_OFF, click_rule_from_record, resolve_click_rule

        return self._made_with(session, "click_rule", click_rule_from_record, CLICK_RULE_OFF, resolve_click_rule)

    def _made_with(self, session, name: str, from_record, without_model, resolve):
        """The setting `name` ("contrast", "click_rule") the labels are made with: that of this face's 3D+t session
        on a coupled geometry, else of `session`; without either, an opened result's recorded one (`from_record`),
        else this face's option resolved for its model (`resolve`; `without_model` before a model is loaded)."""
        g = self.geometry
        if g is not None and g.coupled and self.volume is not None:
            return getattr(self.volume, name)
        if session is not None:
            return getattr(session, name)
        if self.opened_record is not None:
            return from_record(self.opened_record.settings)
        return without_model if self.model is None else resolve(getattr(self, name), self.model)

    # ================================================================== the axial edge rule (z streams)
    def z_edge_used(self, geometry: StackGeometry | None = None) -> float | None:
        """The axial edge rule the sessions of `geometry` (default the current one) run with: `z_edge` resolved by
        `volume.resolve_z_edge` (track()'s and the CLI's rule) on a z stream (3D+t included); off along t."""
        from ..volume import resolve_z_edge

        z_stream = z_streamed(geometry or self.geometry)
        return resolve_z_edge(self.z_edge if z_stream else "auto", z_stream)

    def set_z_edge(self, value) -> tuple[int, int] | None:
        """Ask for another axial edge rule: "auto", "off" / None, or a fraction in (0, 1) (a number or its text), as
        `--z-edge` takes it (`volume.resolve_z_edge`: InputError for anything else, nothing changed).

        When the rule the current geometry's sessions run with changes, they restart with it (labels and prompts
        stay; the prompts are applied again; the 3D+t session is made again at the next propagation) and an opened
        result is no longer continued (its edit log applied the rule replaced). → None, or (first, last): the frames
        (3D+t: time points) that propagations of the replaced session had written, which hold the old rule's masks
        — the face propagates them again both ways, so that no frame keeps them beside the new rule's and the next
        save records one rule and a log that replays to its labels."""
        from ..volume import asks_auto_z_edge, resolve_z_edge

        used = resolve_z_edge(value, True)  # a bad value is refused here (nothing changed), not on a worker
        before = self.z_edge_used()
        self.z_edge = "auto" if asks_auto_z_edge(value) else used
        if not z_streamed(self.geometry) or self.z_edge_used() == before:
            return None
        extent = self._propagated_extent()
        self.opened_key = None
        self.reset_sessions()
        return extent

    def _propagated_extent(self) -> tuple[int, int] | None:
        """(first, last) frames (3D+t: time points) the propagation passes behind the labels shown covered: those
        of the current session (3D+t: of the 3D+t session) and of the opened result it continues; None: none."""
        g = self.geometry
        logs = []
        if g.coupled:
            logs.append([] if self.volume is None else self.volume.edit_log)
            record = self.opened_record
            if record is not None and record.settings.get("engine") == "volume_time":
                logs.append(record.edit_log or [])
        elif self.current is not None:
            key = self.current[0]
            session = self.session(key)
            logs.append(session.edit_log if session is not None else self.opened_log(key) or [])
        ends = [int(e[k]) for log in logs for e in log if e.get("op") == "pass" for k in ("first", "last")]
        return (min(ends), max(ends)) if ends else None

    # ================================================================== geometry and labels
    def set_geometry(self, geometry: StackGeometry | None, new_labels: bool = True) -> bool:
        """Track along `geometry` now (call `focus` and `reset_sessions` next). A new zeroed label array (and no
        objects) unless `new_labels` is False and the old array fits; → whether the label array is new."""
        old = self.geometry
        self.geometry = geometry
        self.fitted_stack = None  # fitted for the geometry before (and holding it)
        self.current = None
        self.confidence.clear()
        self.drop_volume()
        if geometry is None:
            return False
        if new_labels or self.labels is None or old is None or old.label_shape != geometry.label_shape:
            self.labels = make_label_array(geometry.label_shape)
            self.object_ids, self.max_id = [], 0
            self.mask_prompts.clear()
            self.opened_record = self.opened_key = None
            return True
        return False

    def drop_image(self) -> None:
        """The image went away: stop, forget geometry and sessions (the labels stay; a running propagation keeps
        writing its finished frames into them)."""
        self.cancel()
        self.stop_encoding()
        self.geometry = None
        self.current = None
        self.sessions.clear()

    def focus(self, key, frame: int) -> None:
        """The face shows `frame` of session `key`: make that session if needed (with a model)."""
        self.current = (key, int(frame))
        g = self.geometry
        if self.model is not None and g is not None and key not in self.sessions and g.key_in_range(key):
            self.create_session(key)

    def label_stack(self):
        """The label array with a leading frame axis (a single image's labels get one of length 1)."""
        return self.labels if self.labels.ndim > 2 else self.labels[None]

    def write_result(self, key, result, drop=(), geometry=None, session=None) -> None:
        """Merge one FrameResult of session `key` into the labels (as `replay` does: pixels of objects the result
        does not cover stay, except ids in `drop`; no object keeps pixels outside its span) and note its
        confidences. `geometry`: the one the result was made under (a propagation outlives a change of layer);
        `session`: the one that made it (default the ready session of `key`)."""
        geometry = geometry or self.geometry
        if self.labels is None or geometry is None:
            return
        session = session if session is not None else self.session(key)
        conf = self.confidence.setdefault(key, {})
        spans = {}
        if session is None:  # closed meanwhile: no spans to obey
            index = geometry.label_index(key, result.frame)
            self.labels[index] = merge_result(self.labels[index], result, drop)
        else:
            writer = self.label_writer(key, session, geometry)
            writer.write(result, drop)  # drops confidences outside a span that changed (its on_span)
            spans = writer.spans
        for obj, score, iou in zip(result.obj_ids, result.scores, result.ious, strict=True):
            self.add_object(int(obj), quiet=True)
            if int(obj) in spans and outside_span(spans[int(obj)], result.frame):
                continue  # made before discovery ended her: the labels do not hold her here either
            conf.setdefault(int(obj), {})[int(result.frame)] = (float(score), float(iou))
        self.view.show_labels(key)

    def _drop_confidence_outside(self, key, obj: int, span) -> None:
        """Forget `obj`'s confidences (session `key`) on frames outside `span`: a mother ended by discovery keeps no
        score after her division, as she keeps no pixel (the LabelWriter calls this when a span changes)."""
        frames = self.confidence.get(key, {}).get(int(obj), {})
        for t in [t for t in frames if outside_span(span, t)]:
            del frames[t]

    def label_writer(self, key, session, geometry) -> LabelWriter:
        """The `replay.LabelWriter` of `session` (key `key`) into the labels: one per session and geometry, kept, so
        that a span that shrank between two writes (discovery ended a mother on the worker) is noticed."""
        made = self.writers.get(key)
        if made is not None and made[0] is session and made[1] is geometry:
            return made[2]

        def read(t):
            return self.labels[geometry.label_index(key, t)]

        def write(t, plane):
            self.labels[geometry.label_index(key, t)] = plane

        def on_span(obj, span):
            self._drop_confidence_outside(key, obj, span)

        writer = LabelWriter(session, read, write, on_span=on_span)
        for obj, span in writer.spans.items():  # scores noted under an earlier writer obey the spans from now on
            on_span(obj, span)
        self.writers[key] = (session, geometry, writer)
        return writer

    # ================================================================== objects
    def add_object(self, obj: int, quiet: bool = False) -> None:
        """Put `obj` in the object list."""
        obj = int(obj)
        if obj not in self.object_ids:
            self.object_ids.append(obj)
            self.object_ids.sort()
        self.max_id = max(self.max_id, obj)
        if not quiet:
            self.view.show_state()

    def new_object_id(self, taken=()) -> int:
        """An id no object has ever had (`taken`: ids in use elsewhere, e.g. in the prompt layers)."""
        sessions = [s for s in self.sessions.values() if not isinstance(s, str)]
        ids = [self.max_id, *self.object_ids, *taken, *(i for s in sessions for i in s.obj_ids)]
        return max(ids, default=0) + 1

    def delete_object(self, obj: int) -> bool:
        """Delete `obj` from every session, the labels and the confidences; False (nothing done) while propagating."""
        obj = int(obj)
        if self.running:
            self.view.show_message("info", "Wait for the propagation to end (or cancel it) before deleting an object.")
            return False
        for s in list(self.sessions.values()):
            if not isinstance(s, str) and obj in s.obj_ids:
                self.enqueue(lambda s=s: s.remove_object(obj), lambda _: None)
        if self.volume is not None and obj in self.volume.obj_ids:
            self.drop_volume()  # 3D+t: remade from the remaining prompts at the next propagation
        if isinstance(self.labels, np.ndarray):
            self.labels[self.labels == obj] = 0
        elif self.labels is not None:
            for t in range(self.labels.shape[0]):
                plane = np.asarray(self.labels[t])
                if (plane == obj).any():
                    plane[plane == obj] = 0
                    self.labels[t] = plane
        for conf in self.confidence.values():
            conf.pop(obj, None)
        for masks in self.mask_prompts.values():
            for group in [g for g in masks if g[1] == obj]:
                del masks[group]
        if obj in self.object_ids:
            self.object_ids.remove(obj)
        self.view.show_labels(None)
        return True

    def lineage(self, key=()) -> dict[int, int]:
        """{daughter: mother} of session `key` (divisions found while propagating with discovery; an opened
        result's lineage until its session is ready)."""
        session = self.session(key)
        if session is not None:
            return dict(session.parents)
        if self.opened_record is not None and key == self.opened_key:
            return {int(d): int(m) for d, m in self.opened_record.parents.items()}
        return {}

    def mask_frames(self, key, obj: int) -> list[int]:
        """Frames where `obj` is prompted by a mask in session `key`."""
        return sorted(f for f, o in self.mask_prompts.get(key, {}) if o == obj)

    def mask_prompt_set(self, key) -> PromptSet:
        """The mask prompts of session `key` as a `PromptSet`."""
        return PromptSet(list(self.mask_prompts.get(key, {}).values()))

    def _note_mask_prompts(self, key, session, objs) -> None:
        masks = self.mask_prompts.setdefault(key, {})
        for obj in objs:
            if obj in session.obj_ids:
                for frame, prompt in session.prompts_of(obj).items():
                    if prompt.mask is not None:
                        masks[(frame, obj)] = prompt

    # ================================================================== sessions
    def session(self, key):
        """The ready TrackingSession of `key`, or None."""
        s = self.sessions.get(key)
        return None if s is None or isinstance(s, str) else s

    def reset_sessions(self) -> None:
        """Close every session and drop pending jobs; make the session of the focused key (see `focus`) when a model
        and a geometry are there."""
        self.stop_encoding()
        self.jobs.clear()
        with self.guard:
            for s in self.sessions.values():
                if not isinstance(s, str):
                    s.close()
            self.sessions.clear()
            self.writers.clear()
        self.drop_volume()
        if self.model is not None and self.geometry is not None and self.current is not None:
            self.create_session(self.current[0])
        self.view.show_state()

    def stack_preprocessing(self, geometry, model, contrast):
        """The intensity range and contrast step of the 4-D stack of a 3D+t `geometry` for `model` and `contrast`
        (`volume_time.stack_preprocessing`, which reads 16 + 3 slices): fitted once and kept for every time point's
        preview session until the geometry, the model or the contrast changes. Runs on workers."""
        from ..volume_time import stack_preprocessing

        with self.fit_lock:  # two previews made at once fit the stack once
            known = self.fitted_stack
            if known is not None and known[0] is geometry and known[1] is model and known[2] == contrast:
                return known[3]
            fitted = stack_preprocessing(geometry.volume_view(), model, contrast)
            self.fitted_stack = (geometry, model, contrast, fitted)
            return fitted

    def opened_log(self, key) -> list[dict] | None:
        """The edit log of the opened result when session `key` continues it (None: nothing to continue)."""
        record = self.opened_record
        if record is None or key != self.opened_key or not record.edit_log:
            return None
        return record.edit_log

    def create_session(self, key) -> None:
        """Queue the creation of session `key`: a fresh session plus every prompt already made for it.

        A session that continues an opened result first re-runs the result's edit log (as `napari-sam2 replay`
        does): SAM 2's memory makes later edits depend on every earlier one, so only then does the session's log
        (the opened edits + the new ones) reproduce what is saved next. Its labels replace the opened ones (they
        are equal at the recorded thread count). Prompts changed in the face since opening are applied after it."""
        self.sessions[key] = "creating"
        model, geometry, prompts = self.model, self.geometry, self.prompts_of(key)
        log = self.opened_log(key)
        continued = self.opened_record is not None and key == self.opened_key
        z_edge = self.z_edge  # the rule asked for now (the session is made on a worker)

        # a continued result's log replays with the contrast and click rule it was made with (`open_result` sets them)
        contrast, click_rule = self.contrast, self.click_rule

        def job():
            fitted = self.stack_preprocessing(geometry, model, contrast) if geometry.coupled else None
            session = _worker.make_session(
                model, geometry, key, log, contrast, z_edge=z_edge, click_rule=click_rule, preprocessing=fitted
            )
            if log is None:
                return session, prompts.apply(session), None
            seen = {}
            replayed = replay_log(session, log, on_result=lambda r: seen.__setitem__(r.frame, r))
            return session, [*seen.values(), *_worker.apply_changed(session, prompts)], replayed

        def done(value):
            session, results, replayed = value
            if self.sessions.get(key) != "creating" or self.geometry is not geometry or self.model is not model:
                session.close()  # outdated while it was being made
                return
            self.sessions[key] = session
            self.log_complete[key] = log is not None or not continued
            if replayed is not None:
                for t in range(len(replayed)):
                    self.labels[geometry.label_index(key, t)] = replayed[t]
                self._note_mask_prompts(key, session, session.obj_ids)  # e.g. daughters found by discovery
            for r in results:
                self.write_result(key, r)
            self.view.show_prompted(results)
            self.view.show_session_ready(key, session)
            if self.current is not None and self.current[0] == key:
                self.start_encoding(session, self.current[1])
            self.view.show_state()

        def failed(exc):
            if self.sessions.get(key) == "creating":
                del self.sessions[key]
            self.view.show_message("error", f"Cannot track this layer: {error_text(exc)}")

        self.enqueue(job, done, failed)

    # ================================================================== encoding ahead
    def start_encoding(self, session, frame: int, limit: int = MAX_PREFETCH) -> None:
        """Encode the `limit` frames nearest `frame` (nearest first) in the background."""
        self.stop_encoding()
        order = sorted(range(len(session)), key=lambda f: (abs(f - frame), f))[:limit]
        order = [f for f in order if not session.is_encoded(f)]
        if not order:
            return
        self.encoded = (0, len(order))
        self.view.show_encoding(0, len(order))

        def progress(value):
            self.encoded = value
            self.view.show_encoding(*value)

        def finished():
            if self.encode_worker is worker:
                self.encode_worker = None
                self.encoded = (0, 0)
                self.view.show_encoding(0, 0)

        def errored(exc):
            self.view.show_message("warning", f"Encoding frames in the background stopped: {error_text(exc)}")

        worker = self.encode_worker = self.start(
            _worker.encode_job, session, order, yielded=progress, finished=finished, errored=errored
        )
        worker.start()

    def stop_encoding(self) -> None:
        if self.encode_worker is not None:
            self.encode_worker.quit()
            self.encode_worker = None
        self.encoded = (0, 0)
        self.view.show_encoding(0, 0)

    # ================================================================== job queue (prompts, in order)
    def enqueue(self, job, done, failed=None) -> None:
        """Run `job()` after every job queued before it; `done(value)` / `failed(exc)` get its outcome."""
        self.jobs.append((job, done, failed))
        if self.job_worker is None:
            self._next_job()

    def _next_job(self) -> None:
        if not self.jobs or not self.alive:
            self.job_worker = None
            self.view.show_state()
            return
        job, done, failed = self.jobs.popleft()
        worker = self.job_worker = self.start(
            job, returned=done, errored=failed or self._prompt_failed, finished=self._next_job
        )
        worker.start()

    def _prompt_failed(self, exc) -> None:
        self.view.show_message("warning", f"Prompt not applied: {error_text(exc)}")

    # ================================================================== prompts
    def _prompt_job(self, key, call, drop=()) -> None:
        def job():
            return call(self.sessions[key])

        def done(results):
            for r in results:
                self.write_result(key, r, drop=drop)
            self.view.show_prompted(results)
            self.view.show_state()

        self.enqueue(job, done)

    def add_points(self, key, frame: int, obj: int, points, labels=None) -> None:
        """Queue clicks [[y, x], …] (labels 1 object / 0 background) on object `obj` on `frame` of session `key`."""
        self.add_object(obj, quiet=True)
        self._prompt_job(key, lambda s: [s.add_prompt(frame, obj, points=points, labels=labels)])

    def add_box(self, key, frame: int, obj: int, box) -> None:
        """Queue a box (y0, x0, y1, x1) for `obj` on `frame` of session `key`."""
        self.add_object(obj, quiet=True)
        self._prompt_job(key, lambda s: [s.add_prompt(frame, obj, box=box)])

    def add_mask(self, key, frame: int, obj: int, mask) -> None:
        """Queue a mask prompt [H, W] bool for `obj` on `frame` of session `key`."""
        self.add_object(obj, quiet=True)
        self._prompt_job(key, lambda s: [s.add_prompt(frame, obj, mask=mask)])

    def set_prompt(self, key, frame: int, obj: int, prompt: ObjectPrompt | None) -> None:
        """Queue: `prompt` becomes all of `obj`'s prompts on `frame` (None: none; e.g. after a click was deleted)."""
        self._prompt_job(key, lambda s: s.set_prompt(frame, obj, prompt), drop=(obj,))

    # ================================================================== propagation
    def propagate(self, key, direction: str, frames_range: tuple[int, int], prompted_frames) -> bool:
        """Propagate every object of session `key` ("forward", "backward", "both") over frames_range (lo, hi) on a
        worker, the labels written frame by frame; False (with a message) when it cannot start.

        With `discovery` (a `napari_sam2.discovery.DiscoveryOptions`) forward passes find new objects (arrivals)
        and divisions as they go (`propagate_with_discovery`) and run to the last frame; new objects join the
        object list, daughters carry their mother in `lineage`."""
        if self.running:
            return False
        session = self.session(key)
        if session is None:
            self.view.show_message("info", "Load a model and add a prompt first (the session is not ready yet).")
            return False
        if not prompted_frames:
            self.view.show_message(
                "warning", "Nothing to propagate: click on an object (or draw a box) on some frame first."
            )
            return False
        if self.geometry.num_frames < 2:
            self.view.show_message("info", "A single image has nothing to propagate to.")
            return False
        passes = plan_passes(prompted_frames, direction, *frames_range)
        discovery = self.discovery
        if discovery is not None:  # discovery follows a pass to the end of the stack
            last = self.geometry.num_frames - 1
            passes = [(d, start, last if d == "forward" else stop) for d, start, stop in passes]
        lengths = [abs(stop - start) + 1 for _, start, stop in passes]
        geometry, total = self.geometry, sum(lengths)
        self.frames_written = 0
        cancelled = []
        before = set(session.obj_ids)
        self.events = []

        def on_result(value):
            pass_index, done, result = value
            # the writer reads the spans now: the worker may have ended an object since it made this result (the
            # GUI thread lags behind it), so the result can still hold her on a frame she no longer lives on
            self.write_result(key, result, geometry=geometry, session=session)
            self.frames_written += 1
            self.view.show_propagation(sum(lengths[:pass_index]) + min(done, lengths[pass_index]), total)

        def aborted():
            cancelled.append(True)
            self.view.show_message("info", f"Propagation cancelled; {self.frames_written} finished frames kept.")

        def finished():
            self.propagation_worker = None
            new = [o for o in session.obj_ids if o not in before]
            if new and self.session(key) is session:
                self._note_mask_prompts(key, session, new)
                found = [e for e in self.events if e["kind"] == "division"]
                self.view.show_message(
                    "info",
                    f"Discovery: {len(new)} new objects ({len(found)} divisions, "
                    f"{sum(e['kind'] == 'arrival' for e in self.events)} arrivals); see the object list.",
                )
            self.view.show_propagation_done(self.frames_written, bool(cancelled))
            self.view.show_state()

        self.view.show_propagation(0, total)
        worker = self.propagation_worker = self.start(
            _worker.propagate_job,
            session,
            passes,
            discovery,
            self.events,
            yielded=on_result,
            errored=lambda exc: self.view.show_message("warning", f"Propagation stopped: {error_text(exc)}"),
            aborted=aborted,
            finished=finished,
        )
        self.view.show_state()
        worker.start()
        return True

    # ================================================================== 3D+t: through z and time together
    def drop_volume(self) -> None:
        """Forget the 3D+t session (the next propagation makes a new one from the prompts)."""
        if self.volume is not None and not self.running:
            self.volume.close()
        self.volume = None

    def propagate_volume(self, direction: str, times_range: tuple[int, int], prompts: PromptSet) -> bool:
        """3D+t (`geometry.coupled`): propagate every object through z and time ("forward", "backward", "both" in
        time, over time points times_range (lo, hi)) with the `VolumeTimeSession` of the whole layer, on a worker;
        each finished time point's [Z, Y, X] labels are written as it comes. prompts: every prompt of the face with
        its (t, z) (`ObjectPrompt.t`, frame = z). The session is kept: after a correction on any (t, z), the next
        run recomputes that time point and those carried from it. False (with a message) when it cannot start."""
        g = self.geometry
        if self.running or g is None:
            return False
        if self.model is None:
            self.view.show_message("info", "Load a model first.")
            return False
        if not len(prompts):
            self.view.show_message("warning", "Nothing to propagate: click on an object on some (t, z) slice first.")
            return False
        passes = plan_passes(sorted({int(p.t) for p in prompts}), direction, *times_range)
        lengths = [abs(stop - start) + 1 for _, start, stop in passes]
        total, model, contrast, click_rule = sum(lengths), self.model, self.contrast, self.click_rule
        z_edge = self.z_edge_used(g)  # the axial edge rule of a new 3D+t session (the face's control)
        z_count = g.layer_shape[g.stream_axis]
        self.frames_written = 0
        cancelled = []

        def get_volume():
            volume = self.volume
            if volume is None or volume.model is not model or volume.z_edge != z_edge:
                from ..volume_time import VolumeTimeSession

                volume = self.volume = VolumeTimeSession(
                    model, g.volume_view(), contrast=contrast, z_edge=z_edge, click_rule=click_rule
                )
            return volume

        def on_time_point(value):
            pass_index, done, t, volume_labels, scores = value
            if self.geometry is g and self.labels is not None:
                volume = self.volume
                if volume is not None:  # objects of the session are replaced, anything else stays (`merge_result`)
                    result = _TimePoint(t, volume_labels, list(volume.obj_ids))
                    self._volume_writer(g, volume, z_count).write(result)
                conf = self.confidence.setdefault((t,), {})
                for obj, per_z in scores.items():
                    conf[int(obj)] = {int(z): (float(sc), float(iou)) for z, (sc, iou) in per_z.items()}
                    self.add_object(int(obj), quiet=True)
                self.view.show_labels((t,))
            self.frames_written += 1
            self.view.show_propagation(sum(lengths[:pass_index]) + min(done, lengths[pass_index]), total)

        def aborted():
            cancelled.append(True)
            self.view.show_message("info", f"Propagation cancelled; {self.frames_written} finished time points kept.")

        def failed(exc):
            cancelled.append(False)
            self.view.show_message("warning", f"Propagation stopped: {error_text(exc)}")

        def finished():
            self.propagation_worker = None
            if not cancelled:  # time points with nothing to recompute are passed over: the run is whole
                self.view.show_propagation(total, total)
            self.view.show_propagation_done(self.frames_written, any(cancelled))
            self.view.show_state()

        self.view.show_propagation(0, total)
        worker = self.propagation_worker = self.start(
            _worker.volume_job,
            get_volume,
            prompts,
            passes,
            yielded=on_time_point,
            errored=failed,
            aborted=aborted,
            finished=finished,
        )
        self.view.show_state()
        worker.start()
        return True

    def _volume_writer(self, g: StackGeometry, volume, z_count: int) -> LabelWriter:
        """The `replay.LabelWriter` of the 3D+t session into the labels, one "frame" per time point ([Z, Y, X]): the
        rule every face writes results by (`merge_result`; no object keeps voxels outside its span of time points),
        kept per session and geometry as `label_writer` keeps the slice sessions' writers."""
        made = self.writers.get("volume")
        if made is not None and made[0] is volume and made[1] is g:
            return made[2]

        def read(t):
            return np.stack([np.asarray(self.labels[g.label_index((t,), z)]) for z in range(z_count)])

        def write(t, volume_labels):
            for z in range(z_count):
                self.labels[g.label_index((t,), z)] = volume_labels[z]

        writer = LabelWriter(volume, read, write, frames_of=lambda obj: range(volume.num_times))
        self.writers["volume"] = (volume, g, writer)
        return writer

    def cancel(self) -> None:
        """Stop the propagation after the frame being computed; every finished frame stays."""
        if self.propagation_worker is not None:
            self.propagation_worker.quit()

    # ================================================================== automatic
    def find_objects(self, key, frame: int, taken=(), options=None) -> bool:
        """Queue "segment everything" on `frame` of session `key` (`TrackingSession.segment_everything` with the
        settings of `discovery`, default `DiscoveryOptions()`): each mask that no object already holds (at most
        `arrival_max_covered` of it covered, at least `min_area` px of its own) becomes a new object prompted by its
        mask, largest first; they join the object list and can be reviewed and deleted like any other. taken: ids
        in use elsewhere (the face's prompt layers). options: `DiscoveryOptions` (its generator / detector,
        min_area, arrival_max_covered; default `discovery` or the defaults). False (with a message) when no session
        is ready."""
        from ..discovery import DiscoveryOptions, segment_frame

        session = self.session(key)
        if session is None:
            self.view.show_message("info", "Load a model first (the session is not ready yet).")
            return False
        options = options or self.discovery or DiscoveryOptions()
        first_id = self.new_object_id(taken)
        held = np.asarray(self.labels[self.geometry.label_index(key, frame)]) != 0

        def job():
            masks = sorted(segment_frame(session, frame, options), key=lambda m: -int(m.sum()))
            taken_px = held | (session.result(frame).labels != 0)
            results, new, next_id = [], [], max([first_id - 1, *session.obj_ids]) + 1
            for mask in masks:
                own = mask & ~taken_px
                if own.sum() < options.min_area or (mask & taken_px).sum() > options.arrival_max_covered * mask.sum():
                    continue  # one of the objects already there
                results.append(session.add_prompt(frame, next_id, mask=own))
                new.append(next_id)
                taken_px |= own
                next_id += 1
            return new, results

        def done(value):
            new, results = value
            for r in results:
                self.write_result(key, r)
            self._note_mask_prompts(key, session, new)
            for obj in new:
                self.add_object(obj, quiet=True)
            self.view.show_message("info", f"Found {len(new)} new objects on frame {frame}.")
            self.view.show_prompted(results)
            self.view.show_state()

        self.view.show_message("info", f"Segmenting everything on frame {frame}…")
        self.enqueue(job, done)
        return True

    # ================================================================== save / open
    def provenance(self, key, input_record: dict, extra: dict | None = None, prompts: PromptSet | None = None):
        """The `Provenance` of what the controller holds for session `key` (the checkpoint's hash is added by the
        save job). input_record: {"layer", "path", "shape"} of the image. prompts: 3D+t, every prompt of the face
        with its (t, z): the 3D+t session's edit log is recorded only when its prompts are these (nothing was
        prompted since the last propagation), as it then reproduces the labels (`napari-sam2 replay`)."""
        import torch

        from ..io.provenance import ModelRecord, Provenance

        g = self.geometry
        session = self.session(key)
        edit_log = None
        if g.coupled:
            volume = self.volume
            held = None if volume is None else {(t, z, p.obj_id): p for t, z, p in volume.prompts()}
            if held is not None and prompts is not None and held == {(p.t, p.frame, p.obj_id): p for p in prompts}:
                edit_log = volume.edit_log
        elif session is not None and self.log_complete.get(key, True):
            edit_log = session.edit_log  # (a continued session's log holds the opened result's log first)
        if self.model is not None:
            checkpoint = getattr(self.model, "checkpoint_path", None)
            model = ModelRecord(
                source=self.model_source,
                config=getattr(self.model.cfg, "name", None),
                checkpoint=None if checkpoint is None else str(checkpoint),
            )
        elif self.opened_record is not None:  # opened, not re-tracked: the opened result's model made it
            model = self.opened_record.model
        else:
            model = ModelRecord(source=self.model_source)
        parents = dict(self.opened_record.parents) if self.opened_record is not None else {}
        if session is not None:
            parents.update(session.parents)
        return Provenance(
            model=model,
            settings={
                "device": str(getattr(self.model, "device", "")) or None,
                "preset": next((s.preset for s in self.sessions.values() if not isinstance(s, str)), "default"),
                "stream_axis": g.stream_axis,
                "channel_axis": g.channel_axis,
                "channel": g.channel,
                "session_key": list(key),
                "threads": torch.get_num_threads(),
                **self.contrast_used(session).record(),  # "contrast" (and local's constants), for replay
                **self.click_rule_used(session).record(),  # "click_rule", for replay
                **(
                    {
                        "engine": "volume_time",
                        "stream_axes": {"t": g.fixed_axes[0], "z": g.stream_axis},
                        "z_edge": self._z_edge(),  # the axial edge rule the labels were made with (replay)
                        "z_edge_background": self._z_edge_background(),
                    }
                    if g.coupled
                    else {
                        "z_edge": self._session_z_edge(session),
                        # the stream is z (the click rule's through_z): as make_session gives it, so also without
                        # a session (an opened result saved again untracked)
                        "z_stream": g.z_stream,
                    }
                ),
            },
            parents=parents,
            input=dict(input_record),
            tool="widget",
            edit_log=edit_log,
            extra=dict(extra or {}),
        )

    def _z_edge(self) -> float | None:
        """The axial edge rule of this face's 3D+t session (`VolumeTimeSession.z_edge`; before one exists, the one
        the next will have: `z_edge_used`)."""
        return self.z_edge_used() if self.volume is None else self.volume.z_edge

    def _z_edge_background(self) -> float:
        """The axial edge rule's background percentile of this face's 3D+t session (before one exists, the one the
        next will have: `volume_time.Z_EDGE_BACKGROUND`)."""
        from ..volume_time import Z_EDGE_BACKGROUND

        return Z_EDGE_BACKGROUND if self.volume is None else self.volume.z_edge_background

    def _session_z_edge(self, session) -> float | None:
        """The axial edge rule of a z-stack session (`TrackingSession.z_edge`; None on a time axis). Without a
        session (an opened result not tracked again): the opened result's."""
        if session is not None:
            return session.z_edge
        return None if self.opened_record is None else self.opened_record.settings.get("z_edge")

    def save(self, path, axes: str, prompts: PromptSet, provenance, scale, units, on_saved=None) -> None:
        """Write the labels as an OME-Zarr result on a worker; on_saved(path) once written."""

        def done():
            self.save_worker = None
            self.view.show_state()

        def saved(p):
            self.view.show_message("info", f"Saved {p}")
            if on_saved is not None:
                on_saved(p)

        labels = self.label_stack()
        if labels.ndim != len(scale):
            scale, units = [1.0, *scale], ["pixel", *units]
        worker = self.save_worker = self.start(
            _worker.save_job,
            path,
            labels,
            axes,
            prompts,
            provenance,
            scale,
            units,
            returned=saved,
            errored=lambda exc: self.view.show_message("error", f"Could not save {path}: {error_text(exc)}"),
            finished=done,
        )
        self.view.show_state()
        worker.start()

    def open_result(self, result) -> tuple[tuple, PromptSet | None]:
        """Take the labels and objects of an opened result (`io.results.open_result`) whose labels fit the geometry;
        → (the session key it was made on, its prompts) for the face to show. Sessions restart (InputError when the
        shapes differ)."""
        g = self.geometry
        shape = tuple(result.labels.shape)
        expected = g.label_shape if len(g.label_shape) > 2 else (1, *g.label_shape)
        if shape != expected:
            raise InputError(
                f"The result's labels have shape {shape}, the picked image's frames {expected}: "
                "pick the image the result was made from."
            )
        target = self.label_stack()
        ids = set()
        for t in range(shape[0]):
            plane = np.asarray(result.labels[t]).astype(np.uint32)
            target[t] = plane
            ids.update(int(i) for i in np.unique(plane) if i)
        record = result.record
        key = tuple(record.settings.get("session_key") or ()) or (0,) * len(g.fixed_axes)
        if len(key) != len(g.fixed_axes):
            key = (0,) * len(g.fixed_axes)
        self.mask_prompts.clear()
        if result.prompts is not None:
            ids.update(result.prompts.obj_ids)
            for prompt in result.prompts:
                if prompt.mask is not None:  # a 4-D result's prompts go back to the session of their (t, z)
                    where, on_session = g.session_prompt(prompt) if prompt.t is not None else (key, prompt)
                    masks = self.mask_prompts.setdefault(where, {})
                    masks[(int(on_session.frame), int(on_session.obj_id))] = on_session
        self.confidence.clear()
        self.drop_volume()
        self.object_ids = sorted(ids)
        self.max_id = max(ids, default=0)
        continued = key
        if record.settings.get("engine") == "volume_time":
            # a 3D+t result: its log is a VolumeTimeSession's, not a slice session's; the prompts return to their
            # (t, z) and the next propagation recomputes from them
            continued = None
        elif record.settings.get("stream_axis", g.stream_axis) != g.stream_axis:
            # made along another axis (e.g. z where this face streams t): its edit log belongs to a session of that
            # geometry and cannot be continued here; the prompts still return (to their own (t, z) on a 4-D layer)
            continued = None
        self.opened_record, self.opened_key = record, continued
        # the sessions that follow continue what the result was made with (none recorded: made before the option)
        from ..preprocess import GlobalContrast, LocalContrast, contrast_from_record

        made = contrast_from_record(record.settings)
        self.contrast = made.name if made in (GlobalContrast(), LocalContrast()) else made
        from ..click_rule import click_rule_from_record

        self.click_rule = click_rule_from_record(record.settings)
        settings = record.settings
        made_here = (settings.get("engine") == "volume_time") == g.coupled  # 3D+t as 3D+t, a z-stack as a z-stack
        if z_streamed(g) and made_here and settings.get("stream_axis", g.stream_axis) == g.stream_axis:
            from ..volume import resolve_z_edge

            # what follows uses the result's rule (as a resumed run does; none recorded: made before it, off)
            self.z_edge = resolve_z_edge("auto", True, settings)
        return key, result.prompts

    # ================================================================== teardown
    def shutdown(self) -> None:
        """Stop every worker and drop pending jobs; handlers of workers still finishing are ignored from now on."""
        self.alive = False
        self.jobs.clear()
        for worker in list(self.workers):
            worker.quit()
