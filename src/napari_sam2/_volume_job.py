"""`track()` on a 3D+t stack: the TZYX variant of `api.TrackJob`, driving a `VolumeTimeSession`.

Stream axes. A 3-D stack has one stream axis (t or z); a 3D+t stack has two, and `track` follows objects through
both: `axis` names them as "tz" (or a pair of indices (T, Z)). The default for a stack with four non-channel axes
is t and z: the axes named t and z by the file (OME-TIFF, ImageJ, OME-Zarr, NIfTI), or — when nothing names them
(a numpy array, a TIFF without metadata) — the first two, napari's [T, Z, Y, X] order. A file that names its axes
but not as t and z (e.g. "qqyx") is refused with a message asking for `axis=(T, Z)`, as is a single stream axis
on a 4-D stack. The store is (t, z, y, x); a frame of this job is one time point t, a [Z, Y, X] volume written
as soon as the engine yields it (one chunk per (t, z) plane, `done` and the resume record per t).

What differs from the 3-D job: the session (`VolumeTimeSession`, prompts at (t, z) — `ObjectPrompt.t`), the
input view (a lazy [T, Z, Y, X] of one channel, which is also the store's image and the region table's intensity),
and the settings recorded (both axes). Resume is the 3-D job's: the engine is deterministic, so replaying the
recorded prompts and skipping the writes the store holds gives the labels of an uninterrupted run. The input's
identity is one digest per (t, z) slice (index t * Z + z), recorded and checked as the engine reads each slice.
Confidence: one row per (t, object), `VolumeTimeSession.object_scores`.
"""

from __future__ import annotations

import numpy as np

from .api import TrackJob, _read_seeds, _torch_threads
from .errors import InputError
from .io.readers import LazyTranspose, OpenedStack
from .io.units import normalise_unit
from .preprocess import DEFAULT_PERCENTILES
from .prompts import PromptSet

__all__ = ["StreamAxes", "TZYXView", "VolumeTimeJob", "stream_axes"]

PAIR_WORDS = ("tz", "zt", "t,z", "z,t")


class StreamAxes(tuple):
    """(t index, z index) of the input, with the channel axis (or None) as `.channel`."""

    channel: int | None = None


def _channel_index(opened: OpenedStack, skip=()) -> int | None:
    """The channel axis of a 4-D/5-D input: the one named c, else a short trailing axis (≤ 16) of a 5-D stack or
    of a 4-D stack whose axes were guessed as having channels ("tyxc")."""
    shape, axes = opened.shape, opened.axes
    if "c" in axes and axes.index("c") not in skip:
        return axes.index("c")
    last = len(shape) - 1
    if last in skip:
        return None
    if len(shape) >= 5 and shape[-1] <= 16:
        return last
    if len(shape) == 4 and shape[-1] <= 16 and (axes.endswith("c") or not opened.axes_known):
        return last  # as the 3-D job: a short trailing axis of an unnamed 4-D stack is channels (T, Y, X, C)
    return None


def _pair(axis):
    """axis as given → ("letters", "tz") / ("indices", (t, z)) when it names two stream axes, else None."""
    if isinstance(axis, str):
        text = axis.strip().lower().replace(" ", "")
        if text in PAIR_WORDS:
            return "letters", ("t", "z") if text.replace(",", "").startswith("t") else ("z", "t")
        parts = text.split(",")
        if len(parts) == 2 and all(p.lstrip("-").isdigit() for p in parts):
            return "indices", (int(parts[0]), int(parts[1]))
        return None
    if isinstance(axis, (tuple, list)) and len(axis) == 2:
        if all(isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in axis):
            return "indices", (int(axis[0]), int(axis[1]))
        if all(isinstance(a, str) for a in axis) and sorted(a.strip().lower() for a in axis) == ["t", "z"]:
            return "letters", tuple(a.strip().lower() for a in axis)
        raise InputError(f"axis={axis!r}: stream axes are two indices (T, Z) or the letters 't', 'z'")
    return None


def stream_axes(axis, opened: OpenedStack) -> StreamAxes | None:
    """The stream axes of `opened` for `axis` (see the module docstring): StreamAxes (t, z) for a 3D+t run, None
    for a 3-D run (one stream axis). Raises InputError, naming the fix, for a 4-D stack with one stream axis given,
    for axes that cannot be told apart, and for "tz" on a stack without two stream axes."""
    shape, axes, ndim = opened.shape, opened.axes, len(opened.shape)
    pair = _pair(axis)
    if pair is not None and pair[0] == "indices":
        t, z = (i % ndim if -ndim <= i < ndim else None for i in pair[1])
        if t is None or z is None or t == z or {t, z} & {ndim - 1, ndim - 2}:
            raise InputError(
                f"axis={axis!r}: the stream axes (T, Z) must be two different axes of the {ndim}-D stack {shape} "
                "other than its last two (Y, X)"
            )
        found = StreamAxes((t, z))
        found.channel = _channel_index(opened, skip=(t, z))
        rest = [i for i in range(ndim) if i not in (t, z, found.channel)]
        if len(rest) != 2:
            raise InputError(
                f"axis={axis!r}: a stack of shape {shape} (axes {axes!r}) has {len(rest)} axes besides t, z and a "
                "channel; it needs exactly (Y, X)"
            )
        return found
    channel = _channel_index(opened)
    others = [i for i in range(ndim) if i != channel][:-2]  # the non-channel axes before (Y, X)
    if len(others) != 2:
        if pair is not None:
            raise InputError(
                f"axis={axis!r} asks for two stream axes (t and z), but the stack {shape} (axes {axes!r}) has "
                f"{len(others)} axis besides Y, X{' and the channel' if channel is not None else ''}: give one "
                "stream axis (axis='t' or 'z')"
            )
        return None
    letters = [axes[i] for i in others]
    if axis is not None and pair is None:  # one stream axis on a 3D+t stack
        raise InputError(
            f"the stack {shape} (axes {axes!r}) is 3D+t: it has two stream axes; track them together with "
            "axis='tz' (the default for a 4-D stack: give no axis) or axis=(T_INDEX, Z_INDEX). To follow one z "
            "slice or one time point alone, select it first (e.g. stack[:, z])"
        )
    if set(letters) == {"t", "z"}:
        found = StreamAxes((others[letters.index("t")], others[letters.index("z")]))
    elif not opened.axes_known:  # nothing names the axes: napari's order, [T, Z, Y, X]
        found = StreamAxes((others[0], others[1]))
    else:
        raise InputError(
            f"the stack {shape} has axes {axes!r}: napari-sam2 cannot tell which of {letters[0]!r} (axis "
            f"{others[0]}) and {letters[1]!r} (axis {others[1]}) is time and which is z; give them as "
            f"axis=(T_INDEX, Z_INDEX), e.g. axis=({others[0]}, {others[1]}) (CLI: --axis {others[0]},{others[1]})"
        )
    found.channel = channel
    return found


class TZYXView:
    """The input as a lazy [T, Z, Y, X] array of one channel: reads only what is indexed (e.g. one (t, z) slice
    or one time point's volume). It is what the engine reads, what the store copies as its image and what the
    region table measures intensities in."""

    def __init__(self, data, axes: StreamAxes, channel: int | None):
        ndim = len(data.shape)
        t, z = axes
        spatial = [i for i in range(ndim) if i not in (t, z, axes.channel)]
        order = [t, z, *spatial] + ([axes.channel] if axes.channel is not None else [])
        self._view = LazyTranspose(data, order)
        self._channel = None
        if axes.channel is not None:
            count = int(data.shape[axes.channel])
            if channel is None and count != 1:
                raise InputError(
                    f"the stack has {count} channels (axis {axes.channel}); pick one with channel=N (CLI: --channel N)"
                )
            self._channel = 0 if channel is None else int(channel)
            if not 0 <= self._channel < count:
                raise InputError(f"channel {channel} is outside the {count} channels (0…{count - 1})")
        elif channel not in (None, 0):
            raise InputError(f"channel={channel} was given but the stack {tuple(data.shape)} has no channel axis")
        self.shape = tuple(self._view.shape[:4])
        self.dtype = self._view.dtype
        self.ndim = 4

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        data = self._view[key]
        if self._channel is not None:
            data = data[..., self._channel]
        return data

    def __array__(self, dtype=None, copy=None):
        out = self[...]
        return out if dtype is None else out.astype(dtype)


class VolumeTimeJob(TrackJob):
    """`track` on a 3D+t stack (see the module docstring): the phases of `TrackJob` with a `VolumeTimeSession`;
    frame = time point t, written as a [Z, Y, X] volume."""

    def __init__(self, ask: dict, axes: StreamAxes):
        super().__init__(ask)
        self.stream = axes

    def _geometry(self) -> None:
        t_ax, z_ax = self.stream
        self.ax, self.channel_axis = t_ax, self.stream.channel
        self.spatial = [i for i in range(len(self.shape)) if i not in (t_ax, z_ax, self.channel_axis)]
        self.frame_shape = tuple(int(self.shape[i]) for i in self.spatial)
        self.n_frames, self.n_slices = int(self.shape[t_ax]), int(self.shape[z_ax])
        self.letter = "t"
        self.store_axes = "tzyx"
        self.store_shape = (self.n_frames, self.n_slices, *self.frame_shape)
        # the identity (TrackJob.open) records one digest per (t, z) slice, index t * Z + z, as the engine reads
        # it: a resumed run checks every slice it reads against the original input's
        self.digest_count = self.n_frames * self.n_slices

    def _store_mismatch(self) -> str | None:
        if self.store.shape != self.store_shape or self.store.axes != "tzyx":
            return (
                f"holds labels of shape {self.store.shape} (axes {self.store.axes!r}) but this 3D+t stack gives "
                f"{self.store_shape} (tzyx)"
            )
        return None

    def plan(self) -> None:
        a = self.ask
        if a["auto"]:
            raise InputError(
                "auto (segment everything on the first frame) is for 2-D frames; a 3D+t stack is tracked from "
                "prompts (one click per object on any (t, z) slice, or seed labels): give prompts/seeds, and "
                "discover=True (CLI: --discover-every 1) to find divisions while tracking"
            )
        detector = getattr(a["discover"], "detector", None)
        if detector is not None:
            raise InputError(
                "discover's detector is for 2-D frames; 3D+t discovery finds divisions in the tracked 3-D masks "
                "themselves: give discover=True (or an int, or DiscoveryOptions without a detector)"
            )
        if a["embedding_cache"] is not None:
            raise InputError("embedding_cache is for 3-D stacks; a 3D+t run keeps one time point's features in memory")
        super().plan()

    def _prompts_given(self) -> PromptSet | None:
        """A PromptSet or prompts file with (t, z) prompts, or seed labels: a [Z, Y, X] volume (or a [T, Z, Y, X]
        stack, of which time point `seed_frame` is used) whose objects become mask prompts on every slice they
        cover at t = seed_frame."""
        a = self.ask
        prompts, t = a["prompts"], a["seed_frame"]
        if prompts is None or isinstance(prompts, PromptSet):
            return prompts
        volume = tuple(self.store_shape[1:])
        seeds = _read_seeds(
            prompts, t, self.frame_shape, volume, "time points",
            f"a 3D+t stack needs one time point's volume [Z, Y, X] = {volume} (or the whole [T, Z, Y, X] labels)",
        )  # fmt: skip
        if isinstance(seeds, PromptSet):
            return seeds
        if not 0 <= t < self.n_frames:
            raise InputError(f"seed frame {t} is outside the stack (t 0…{self.n_frames - 1})")
        out = PromptSet()
        for z in range(seeds.shape[0]):
            if seeds[z].any():
                for prompt in PromptSet.from_seed_labels(seeds[z], z):
                    out.add(z, prompt.obj_id, mask=prompt.mask, t=t)
        if not len(out):
            raise InputError("the seed labels hold no objects (every voxel is 0)")
        return out

    def _check_prompts(self, prompt_set: PromptSet) -> None:
        prompt_set.validate(self.n_slices, self.frame_shape, num_times=self.n_frames)

    def _make_session(self):
        from .volume_time import VolumeTimeSession

        self.view = TZYXView(self.data, self.stream, self.channel)
        intensity = self.intensity
        n_slices, identity = self.n_slices, self.identity
        identity.describe = lambda index: f"slice (t={index // n_slices}, z={index % n_slices})"
        return VolumeTimeSession(
            self.net,
            self.view,
            preset=self.preset,
            intensity=None if intensity is None else (intensity.low, intensity.high),
            on_read=lambda t, z, pixels: identity(t * n_slices + z, pixels),
            z_edge=self.z_edge,  # `TrackJob.plan`: the given or recorded rule (a store from before it: off)
            z_edge_background=self.z_edge_background,  # `TrackJob.plan`: the recorded one on a resume
            contrast=self.contrast,  # `TrackJob.start`: the given, recorded or model's step
            click_rule=self.click_rule,  # `TrackJob.plan`: the given or recorded rule (a store from before it: off)
        )

    def _z_stream(self) -> bool:
        return True  # 3D+t: every object's z-stream at each time point

    def _z_stream_contrast(self) -> bool:
        # 3D+t keeps the model's contrast, not its z-stream one: on the 4-D tuning movies (small nuclei of similar
        # brightness) local contrast lost IoU and TRA (model/README.md, "Session 16")
        return False

    def _image_view(self):
        return self.view

    def _settings(self) -> dict:
        return {
            "direction": self.direction,
            "preset": self.preset,
            "axis": list(self.stream),
            "axis_name": "tz",
            "stream_axes": {"t": int(self.stream[0]), "z": int(self.stream[1])},
            "channel": self.channel,
            "channel_axis": self.channel_axis,
            "window": None if self.intensity is None else [self.intensity.low, self.intensity.high],
            "intensity": [self.session.intensity.low, self.session.intensity.high],
            "percentiles": None if self.intensity is not None else list(DEFAULT_PERCENTILES),
            "device": str(self.net.device),
            "threads": _torch_threads(),
            "engine": "volume_time",
            "z_edge": self.session.z_edge,
            "z_edge_background": self.session.z_edge_background,
            **self.session.contrast.record(),  # "contrast" (and local's constants), for resume and replay
            **self.session.click_rule.record(),  # "click_rule", for resume and replay
        }

    def _scale_units(self):
        a, opened = self.ask, self.opened
        order = [*self.stream, *self.spatial]
        scale = a["scale"]
        if scale is None and opened.scale is not None and len(opened.scale) == len(opened.shape):
            scale = [opened.scale[i] for i in order]
            scale = scale if all(s > 0 for s in scale) else None
        units = a["units"]
        if units is None:
            units = {a_: opened.units.get(opened.axes[i]) for a_, i in zip("tzyx", order)} if opened.units else None
        elif not isinstance(units, dict):
            units = list(units)
            if len(units) != 4:
                raise InputError(f"units must give one unit per axis of 'tzyx'; got {units}")
            units = dict(zip("tzyx", units))
        clean = {k: normalise_unit(v) for k, v in (units or {}).items()}
        return scale, ({k: v for k, v in clean.items() if v} or None)

    def run(self) -> None:
        """Propagate; every time point the engine yields is written at once as a [Z, Y, X] volume."""
        if self.discovery is None:
            results = self.session.propagate(self.direction)
        else:
            from .volume_time import propagate_volume_with_discovery

            results = propagate_volume_with_discovery(self.session, self.discovery, self.direction, self.events)
        for t, labels in results:  # a time point discovery changed is yielded (and written) again
            ids, counts = np.unique(labels, return_counts=True)
            count_of = dict(zip(ids.tolist(), counts.tolist()))
            for obj in self.session.obj_ids:
                self.areas[(t, obj)] = int(count_of.get(obj, 0))
            for obj, (score, iou) in self.session.object_scores(t).items():  # as a 3-D run's per frame
                self.scores[(t, obj)] = (score, iou)
            self.covered.add(t)
            self._emit(t, labels.astype(np.uint32), ids.tolist())


def replay_tzyx(saved, opened: OpenedStack, net, threads: int | None = None):
    """`replay.replay` of a 3D+t result of `track`: a fresh `VolumeTimeSession` on the same [T, Z, Y, X] view of
    the image reruns the recorded edit log (`replay_volume_time`); a time point's labels are the engine's last
    result for it (what `track` wrote last there), zero where nothing was tracked. → `ReplayResult`."""
    import torch

    from .click_rule import click_rule_from_record
    from .preprocess import contrast_from_record
    from .replay import ReplayResult
    from .volume_time import Z_EDGE_BACKGROUND_BEFORE, replay_volume_time

    record = saved.record
    settings = record.settings
    stream = settings.get("stream_axes") or {}
    axes = StreamAxes((int(stream.get("t", 0)), int(stream.get("z", 1))))
    axes.channel = settings.get("channel_axis")
    view = TZYXView(opened.data, axes, settings.get("channel"))
    if tuple(view.shape) != tuple(saved.labels.shape):
        raise InputError(
            f"the image gives [T, Z, Y, X] = {view.shape} but the result holds {tuple(saved.labels.shape)}: give the "
            "image it was made from"
        )
    window = settings.get("window")
    threads = threads or settings.get("threads")
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        session = replay_volume_time(
            net,
            view,
            record.edit_log,
            preset=settings.get("preset", "default"),
            intensity=window,
            z_edge=settings.get("z_edge"),  # none recorded: a result made before the axial edge rule
            # none recorded: made before session 12, with the ring's median
            z_edge_background=settings.get("z_edge_background", Z_EDGE_BACKGROUND_BEFORE),
            contrast=contrast_from_record(settings),  # none recorded: made before the option, global
            click_rule=click_rule_from_record(settings),  # none recorded: made before the rule, off
        )
        try:
            labels = np.zeros(view.shape, np.uint32)
            for t in session.finished():
                labels[t] = session.result(t)
        finally:
            session.close()
    finally:
        torch.set_num_threads(before)
    return ReplayResult.compare(labels, saved.labels)
