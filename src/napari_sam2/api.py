"""`napari_sam2.track`: prompts in, tracked label stack out — the scripted face of `TrackingSession`.

    import napari_sam2
    result = napari_sam2.track("movie.tif", "prompts.csv", model="sam2.1_hiera_tiny", out="movie.ome.zarr")
    result.labels        # [T, Y, X] uint32, lazy (zarr) — or numpy when out=None; [T, Z, Y, X] for a 3D+t stack
    result.confidence    # rows: frame, obj_id, score, iou, present, area
    result.tracks        # napari Tracks data [N, 4] (track_id, t, y, x); result.graph its {child: [parent]}

No model logic lives here: prompts are applied to a `TrackingSession`, every `FrameResult` that propagation yields
is written at once to a `LabelStore` (so a killed run leaves a valid store with its finished frames), and the tables
come from `napari_sam2.analysis`. Coordinates are napari's (row, col) = (y, x) pixels of a frame.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import registry
from .analysis import consistent_parents, export_ctc, region_table, tracks_from_labels, write_csv
from .click_rule import click_rule as click_rule_step
from .click_rule import click_rule_from_record
from .errors import ModelNameError
from .io.identity import InputIdentity
from .io.lock import StoreLock
from .io.ome_zarr import LabelStore, StoreExistsError
from .io.outputs import check_outputs, ctc_names, merge_outputs, owned_files, planned_outputs
from .io.provenance import ModelRecord, Provenance, model_record
from .io.readers import OpenedStack, check_pixels, open_stack, parse_window, resolve_axis
from .io.units import normalise_unit
from .preprocess import (
    DEFAULT_PERCENTILES,
    InputError,
    IntensityRange,
    LocalContrast,
    contrast_from_record,
    contrast_step,
    resolve_contrast,
)
from .prompts import PromptSet

__all__ = ["ModelNameError", "TrackResult", "lineage_record", "sidecar_path", "track"]

DIRECTIONS = ("forward", "backward", "both")


@dataclass
class TrackResult:
    """What `track` produced.

    labels: [N, H, W] uint32 object ids along the stream axis (lazy zarr array when written to a store, else
    numpy). confidence: one row per (frame, object) the model output: frame, obj_id, score (object-score logit;
    <= 0: absent), iou (predicted IoU), present, area (pixels in the final labels). regions: the regionprops table
    (`analysis.region_table`: area, centroid, bbox, mean intensity, score, iou, track id). tracks / graph: napari
    Tracks layer data [M, 4] (track_id, t, y, x) and {child track: [parent track]}. path: the store (None without
    `out`); csv_path / ctc_path: files written next to it. frames_written: distinct frames written by this call.
    encoder_runs: frames the image encoder ran on (frames found in `embedding_cache` cost none).
    scale / units: physical size per axis and {axis: unit} as written to the store (None: pixels / unknown).
    parents: the lineage {daughter object id: mother object id} (divisions found by discovery); it is what the
    graph, the regions' parent column, the CTC parents and the store's provenance ("parents") carry.
    lineage_dropped: {daughter: why} for links the final labels cannot carry (e.g. a mother left with no pixel).
    events: what discovery did, one dict per event ({"frame", "kind": "arrival"|"division"|"refresh", ...};
        "refresh": a tracked object re-prompted with a segment-everything mask, see `napari_sam2.discovery`).
    """

    labels: Any
    axes: str
    prompts: PromptSet
    confidence: list[dict] = field(default_factory=list)
    regions: list[dict] = field(default_factory=list)
    tracks: np.ndarray | None = None
    graph: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    path: Path | None = None
    csv_path: Path | None = None
    ctc_path: Path | None = None
    frames_written: list[int] = field(default_factory=list)
    store: LabelStore | None = None
    encoder_runs: int = 0
    scale: list[float] | None = None  # physical size per axis of `axes` (None: pixels)
    units: dict[str, str] | None = None  # {axis letter: UDUNITS-2 unit}
    parents: dict[int, int] = field(default_factory=dict)
    lineage_dropped: dict[int, str] = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)


def sidecar_path(out: str | os.PathLike, suffix: str) -> Path:
    """A file next to a store: `cells.ome.zarr` + "regions.csv" → `cells_regions.csv`."""
    out = Path(out)
    stem = out.name
    for ext in (".ome.zarr", ".zarr"):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    return out.parent / f"{stem}_{suffix}"


def _one_writer(run):
    """track()'s outer step: when writing a store, refuse an output that is the input's own store and hold the
    store's writer lock (io/lock.py, side files included) for the whole run; `run` gets the opened input."""

    @functools.wraps(run)
    def locked(*args, **kwargs):
        bound = inspect.signature(run).bind(*args, **kwargs)
        bound.apply_defaults()
        given = bound.arguments
        if given["out"] is None:
            return run(*bound.args, **bound.kwargs)
        given["stack"] = _open_input(given["stack"])
        _refuse_input_as_output(given["stack"], Path(given["out"]), given["overwrite"], given["resume"])
        with StoreLock(given["out"]):
            return run(*bound.args, **bound.kwargs)

    return locked


@_one_writer
def track(
    stack,
    prompts=None,
    model: str | os.PathLike | Any | None = None,
    axis: int | str | tuple[int, int] | None = None,
    out: str | os.PathLike | None = None,
    direction: str | None = None,
    channel: int | None = None,
    device: str = "auto",
    window=None,
    resume: bool = False,
    ctc: str | os.PathLike | None = None,
    progress: Callable[[int, int], Any] | None = None,
    *,
    seed_frame: int = 0,
    overwrite: bool = False,
    preset: str = "default",
    save_image: bool = True,
    tables: bool = True,
    scale=None,
    units=None,
    embedding_cache: str | os.PathLike | None = None,
    discover=None,
    auto: bool = False,
    z_edge="auto",
    contrast=None,
    click_rule=None,
) -> TrackResult:
    """Track the prompted objects through a stack; write the labels frame by frame as they are computed.

    stack: an array-like [..., N at `axis`, ..., Y, X] (+ optional channel axis), or a path (TIFF, Zarr/OME-Zarr,
        .npy, NIfTI; see `io.readers.open_stack`). axis: the stream axis, an index or "t"/"z" (None: t, else z).
        3D+t stacks [T, Z, Y, X] (+ optional channel axis) have two stream axes, followed together (one object = one
        3-D mask per time point; `napari_sam2.volume_time`): axis "tz" or (T_INDEX, Z_INDEX); the default (None)
        for a stack with four non-channel axes is the axes the file names t and z, or, unnamed (numpy), the first
        two. One stream axis on such a stack, or axes named otherwise (e.g. "qqyx"), is refused with a message
        naming the fix. Prompts then carry (t, z) (`ObjectPrompt.t`; CSV columns obj_id, t, z, y, x), seed labels
        are one time point's [Z, Y, X] volume on t = `seed_frame`, and the store, `labels`, the region table (with
        centroid_z, volume), the tracks (t, z, y, x) and the CTC export ([Z, Y, X] masks) are 3D+t; a "frame"
        (progress, resume, `frames_written`) is a time point. discover finds divisions there (an object's 3-D mask
        falling into two pieces; `volume_time.propagate_volume_with_discovery`), not arrivals; auto is refused.
    prompts: a `PromptSet`; a `.json`/`.csv` prompts file; or seed labels — a [H, W] label image (or its path, or
        a [N, H, W] label stack) whose every object on `seed_frame` becomes a mask prompt (obj_id = label value).
    model: registry name (default: the built-in "nano-fluo"; "sam2.1_hiera_tiny" for real work), checkpoint path,
        or a loaded `SAM2Model`.
    out: OME-Zarr store to write (refused if it exists, unless `overwrite` or `resume`); None keeps labels in memory.
    direction: "forward", "backward" or "both" (None: "both") from the first prompted frame. Frames outside the range
        tracked (e.g. before the first prompt with "forward") are written empty at the end.
    channel: channel of multichannel data. window: fixed intensity window (lo, hi), "lo,hi" or an IntensityRange
        (e.g. CT "-1000,400") instead of percentile scaling. device: "auto", "cpu", "cuda", "mps".
    progress: called as progress(frames_done, frames_total) after each frame; raising from it (e.g.
        KeyboardInterrupt) stops the run and leaves a valid store.
    ctc: folder for a Cell Tracking Challenge export (res_track.txt + maskTTT.tif). tables=False skips the region
        table, tracks and CSV. scale: physical size per store axis (stream axis, y, x), e.g. a napari layer's
        scale; default: read from the file (OME-TIFF, ImageJ TIFF, OME-Zarr, NIfTI). units: {axis letter: unit}
        or one unit per store axis ("micrometer"/"µm", "second"/"s", ...); default: read from the file. Both go
        into the store's axes and into physical columns of the region table (area_um2, centroid_y_um, t_s, ...).
        save_image: copy the frames into the store.

    embedding_cache: a directory for image features on disk (see `TrackingSession`): a resumed or repeated run
        over the same frames then runs the image encoder on no frame again (≈ 16 MiB per frame for tiny at 1024²).

    discover: find new objects and divisions while tracking forward (see `napari_sam2.discovery`): True (every
        frame), an int k (every k frames), a dict of `DiscoveryOptions` fields or a `DiscoveryOptions`. New objects
        get ids above the prompted ones; divisions end the mother and start two daughters (`TrackResult.parents`).
    auto: no prompts needed: segment everything on `seed_frame` (each mask becomes an object, ids 1.. in order of
        decreasing area) and track forward with discovery (every frame unless `discover` says otherwise).
    z_edge: the axial edge rule of z-stacks (`napari_sam2.volume`; ZYX along z and 3D+t): each object's mask is ended
        in z where the image falls below this fraction of the brightest voxel of its (y, x) column. "auto" (default):
        `volume.Z_EDGE` (0.5) on a z stream, off along t; a fraction in (0, 1); None or "off": the rule off (e.g.
        objects that are not bright on a dark background). Recorded in the store; a resumed run keeps it.
    contrast: the contrast step of the model input after the intensity window (`napari_sam2.preprocess`): "global"
        (the window alone), "local" (each frame divided by its local envelope: dim objects beside bright ones, e.g.
        nuclei of very different brightness), a `preprocess.LocalContrast`, or None (default): the model's
        (`registry.ModelInfo.contrast`). Recorded in the store (with local's constants); a resumed run keeps it.
    click_rule: how a frame prompted with clicks is read (`napari_sam2.click_rule`): "fluorescence" (a dim clicked
        object is brought up to a set brightness before the network, and only the clicked part of the mask is kept),
        "off" (the network's answer as it is), a `click_rule.ClickRule`, or None (default): the model's
        (`registry.ModelInfo.click_rule`: "fluorescence" for nano-fluo, "off" for the official checkpoints and under
        preset "parity"). Recorded in the store; a resumed run keeps it.

    Resume (resume=True on an existing store): the prompts, direction, channel, window, contrast and preset recorded
    in the store are used (prompts given here must equal them; a different checkpoint is refused). SAM 2's memory of a
    frame depends on every frame tracked before it, so the run is *replayed* from the recorded prompts in the
    original order and only the writes that did not complete before the interruption are made (a finished frame is
    rewritten only where the original run writes it twice, e.g. the prompted start frame of a "both" run, whose
    backward pass yields it again, or a frame discovery changed), so the labels are identical to those of an
    uninterrupted run; the store records per frame which write it holds (`TrackJob`). The price is recomputing
    the finished part (on a GPU, minutes for thousands of frames). resume=True on a path that does not exist starts a
    new run, so a cluster job can always be resubmitted with the same command line.
    """
    return _job(locals()).execute()


def _job(ask: dict) -> TrackJob:
    """The job for the input: `TrackJob` (one stream axis) or, for a 3D+t stack, its TZYX variant."""
    from ._volume_job import VolumeTimeJob, stream_axes

    opened = _open_input(ask["stack"])
    axes = stream_axes(ask["axis"], opened)
    ask = {**ask, "stack": opened}
    return TrackJob(ask) if axes is None else VolumeTimeJob(ask, axes)


class TrackJob:
    """One `track` call, in phases run in this order by `execute` (`ask`: track's arguments, by name).

    open    the input (shape, stream axis, frame shape) and, with resume, the existing store and its record;
            an existing store is refused here unless overwrite/resume.
    plan    settings (a resumed run takes the recorded ones), discovery options, prompts and side files: every
            refusal that needs no model happens here, before anything slow and before anything is on disk.
    start   the model, the session, the prompts applied (auto: the seed frame's objects, segmented), then the
            store created with its attributes (model, settings, prompts, outputs) — or, resuming, the replay plan
            read from the store: which writes of the original run completed (`LabelStore.write_counts`) and which
            finished frames are damaged since.
    run     propagation (with discovery if asked); every yielded frame is written at once and counted in the
            store's per-frame records (`done`, `writes`): the attribute JSON is not rewritten per frame.
    finish  frames never tracked written empty, label colours, lineage, tables, CTC export, status "complete".

    A failure or interruption after the store exists records status "interrupted" (one attribute write) and
    leaves every finished frame intact for `resume=True`.
    """

    def __init__(self, ask: dict):
        self.ask = dict(ask)
        self.store: LabelStore | None = None
        self.recorded: Provenance | None = None
        self.session = None
        # the run's progress: results, this call's writes, and how far the replay of a resumed run has come
        self.scores: dict[tuple[int, int], tuple[float, float]] = {}
        self.areas: dict[tuple[int, int], int] = {}
        self.counts: dict[int, dict[int, int]] = {}  # frame → {id: pixels} as just written
        self.events: list[dict] = []
        self.written: list[int] = []  # distinct frames this call wrote, in order
        self.finished: set[int] = set()
        self.covered: set[int] = set()  # frames the propagation yielded
        # object ids in the store's finished frames, those a resume skipped included (a run killed with -9 never
        # recorded their colours): their colours are recorded once, at the end or on interruption
        self.ids: set[int] = set()
        self.writes_seen: dict[int, int] = {}  # frame -> how many times this run's propagation wrote it so far
        self.write_index = 0  # writes so far, over all frames (the record of stores made before `writes`)
        self.done_writes = np.zeros(0, dtype=np.uint32)  # per frame: writes a resumed store already holds
        self.legacy_writes: int | None = None  # an older store's run-wide count of completed writes
        self.damaged: set[int] = set()
        self.labels_mem: np.ndarray | None = None

    # ------------------------------------------------------------------ the phases
    def execute(self) -> TrackResult:
        self.open()
        self.plan()
        self.start()
        try:
            self.run()
        except BaseException:
            self.session.close()
            self._interrupted(changed=bool(self.written) or self.recorded is None)
            raise
        self.session.close()
        try:
            return self.finish()
        except BaseException:  # the tables or the CTC export failed: the run is not complete, --resume redoes them
            self._interrupted(changed=True)
            raise

    def open(self) -> None:
        """The input and, with resume, the existing store; an existing store without overwrite/resume is refused."""
        a = self.ask
        if a["direction"] is not None and a["direction"] not in DIRECTIONS:
            raise InputError(f"direction must be one of {', '.join(DIRECTIONS)}; got {a['direction']!r}")
        self.opened = opened = _open_input(a["stack"])
        self.data = opened.data
        self.shape = shape = opened.shape
        check_pixels(shape, getattr(self.data, "dtype", None))
        self._geometry()
        source = str(opened.path) if opened.format != "array" else "the input array"
        # one digest per frame read (io/identity.py); a variant reading smaller pieces sets `digest_count`
        count = getattr(self, "digest_count", self.n_frames)
        self.identity = InputIdentity(shape, self.data.dtype, count, source=source)

        # the output store: refuse clobbering before anything slow happens
        self.out_path = out_path = None if a["out"] is None else Path(a["out"])
        if out_path is not None and (out_path.exists() or out_path.is_symlink()):
            if a["resume"]:
                self.store = LabelStore.open(out_path, mode="r+")
                self.recorded = Provenance.from_store(self.store)
                mismatch = self._store_mismatch()
                if mismatch:
                    raise InputError(
                        f"{out_path} {mismatch}; resume it with the stack (and axis/channel) it was made from"
                    )
                self.identity.attach(self.store, resume=True)
            elif not a["overwrite"]:
                raise StoreExistsError(
                    f"{out_path} already exists; pass overwrite=True (--overwrite) to replace it or resume=True "
                    "(--resume) to finish an interrupted run"
                )

    def _geometry(self) -> None:
        """The stream axis, channel axis, frame shape, frame count and the store's shape and axes."""
        a, opened, shape = self.ask, self.opened, self.shape
        self.ax = resolve_axis(a["axis"], opened.axes, len(shape), opened.axes_known)
        self.channel_axis = _channel_axis(opened, self.ax)
        self.frame_shape = _frame_shape(shape, self.ax, self.channel_axis)
        self.n_frames = shape[self.ax]
        self.letter = _stream_letter(a["axis"], opened.axes[self.ax])
        self.store_shape = (self.n_frames, *self.frame_shape)
        self.store_axes = self.letter + "yx"

    def _store_mismatch(self) -> str | None:
        """Why the existing store cannot be resumed with this input (None: it can)."""
        if self.store.shape != self.store_shape:
            return f"holds labels of shape {self.store.shape} but this stack gives {self.store_shape}"
        return None

    def plan(self) -> None:
        """Settings (a resumed run replays the recorded ones), discovery, prompts and the side files."""
        from .discovery import DiscoveryOptions
        from .volume import resolve_z_edge

        a, recorded, store, out_path = self.ask, self.recorded, self.store, self.out_path
        direction, preset, channel, window = a["direction"], a["preset"], a["channel"], a["window"]
        discover, auto, seed_frame = a["discover"], a["auto"], a["seed_frame"]
        settings = recorded.settings if recorded is not None else {}
        if store is not None:
            _refuse_changed_settings(out_path, settings, direction=direction, channel=channel, window=window)
            direction = settings.get("direction", direction)
            preset = settings.get("preset", preset)
            channel = settings.get("channel", channel)
            window = settings.get("window", window)
        self.direction = direction or "both"
        self.preset, self.channel = preset, channel
        self.intensity = window if isinstance(window, IntensityRange) else parse_window(window)
        # the axial edge rule for a z stream (never time); a resumed run keeps what it began with, and a store that
        # predates the rule records no z_edge: off, as it was made
        self.z_edge = resolve_z_edge(a["z_edge"], self._z_stream(), settings if store is not None else None, out_path)
        # and its background percentile: a resumed run keeps it too (none recorded: made before session 12, the median)
        from .volume_time import Z_EDGE_BACKGROUND, Z_EDGE_BACKGROUND_BEFORE

        self.z_edge_background = (
            settings.get("z_edge_background", Z_EDGE_BACKGROUND_BEFORE) if store is not None else Z_EDGE_BACKGROUND
        )
        # the contrast step: a resumed run replays the recorded one (none recorded: made before the option, global);
        # a new run's None is the model's default, resolved once the model is loaded (`start`)
        self.contrast = _plan_contrast(a["contrast"], settings if store is not None else None, out_path)
        # the click rule likewise (none recorded: made before the rule, off)
        self.click_rule = _plan_click_rule(a["click_rule"], settings if store is not None else None, out_path)
        if auto and a["prompts"] is not None:
            raise InputError("auto segments the first frame itself: give either prompts/seeds or auto, not both")
        if store is not None and "discover" in settings:  # replay what was recorded (a custom detector: given again)
            recorded_discover = settings["discover"]
            if isinstance(discover, DiscoveryOptions) and discover.detector is not None:
                recorded_discover = {**recorded_discover, "detector": None}
                discover = replace(DiscoveryOptions.from_record(recorded_discover), detector=discover.detector)
            elif isinstance(recorded_discover, dict):
                discover = DiscoveryOptions.from_record(recorded_discover)
            else:
                discover = recorded_discover
            auto = bool(settings.get("auto", auto))
        if auto and discover is None:
            discover = {"on_start_frame": False}
        self.auto = auto
        self.discovery = discovery = DiscoveryOptions.coerce(discover)
        if discovery is not None and auto:
            discovery.on_start_frame = False
        if discovery is not None and self.direction == "backward":
            raise InputError("discovery follows time forward: use direction 'forward' or 'both' with discover/auto")

        prompt_set = self._prompts_given()
        if recorded is not None:
            stored = recorded.prompts if recorded.prompts is not None else PromptSet()
            if prompt_set is not None and prompt_set != stored:
                raise InputError(
                    f"the prompts given differ from those recorded in {out_path}; resume without prompts (the "
                    "recorded ones are used) or write to a new output"
                )
            prompt_set = stored
        if (prompt_set is None or not len(prompt_set)) and not auto:
            raise InputError("no prompts: give a PromptSet, a prompts file (.json/.csv) or seed labels (or auto=True)")
        if not 0 <= seed_frame < self.n_frames:
            raise InputError(f"seed frame {seed_frame} is outside the stack (frames 0…{self.n_frames - 1})")
        if prompt_set is not None:
            self._check_prompts(prompt_set)
        self.prompt_set = prompt_set

        # side files: refused before anything is created unless this store wrote them (io/outputs.py)
        csv_paths = [sidecar_path(out_path, "regions.csv"), sidecar_path(out_path, "confidence.csv")] if (
            out_path is not None and a["tables"]) else []  # fmt: skip
        self.outputs = outputs = planned_outputs(csv_paths, a["ctc"], self.n_frames)
        overwrite = a["overwrite"]
        old_outputs = recorded.extra.get("outputs") if recorded is not None else _old_outputs(out_path, overwrite)
        owned = set() if out_path is None else owned_files(old_outputs)
        if out_path is None and overwrite:  # no store to record ownership: only the files this export writes
            ctc = a["ctc"]
            owned = {os.path.join(outputs["ctc"]["dir"], n) for n in ctc_names(self.n_frames)} if ctc else set()
        check_outputs(outputs, owned, overwrite or store is not None, out_path)

    def start(self) -> None:
        """Model and session, prompts applied, then the store created (or, resuming, the replay plan read)."""
        a, recorded, out_path = self.ask, self.recorded, self.out_path
        model = a["model"]
        if model is None:
            model = (recorded.model.source if recorded is not None else None) or registry.DEFAULT_MODEL
        self.net, used_model = _load_model(model, a["device"])
        self.contrast = resolve_contrast(
            self.contrast, self.net, z_stream=self._z_stream_contrast(), preset=self.preset
        )
        recorded_sha = recorded.model.checkpoint_sha256 if recorded is not None else None
        if recorded_sha and used_model.checkpoint_sha256 and recorded_sha != used_model.checkpoint_sha256:
            raise InputError(
                f"{out_path} was made with checkpoint {recorded.model.source} (SHA-256 "
                f"{recorded_sha[:12]}…); resuming with another model ({used_model.source}) would mix two models"
            )

        self.session = session = self._make_session()
        try:  # the prompts are applied before the store exists: a prompt that fails leaves nothing behind
            if self.prompt_set is None or not len(self.prompt_set):  # auto: the first frame's objects, segmented
                self.prompt_set = self._segment_seed_frame()
            self.prompt_set.apply(session)
        except BaseException:
            session.close()
            raise
        self.image_view = self._image_view()
        settings = self._settings()
        if self.discovery is not None:
            settings["discover"] = self.discovery.to_dict()
            settings["auto"] = bool(self.auto)
        opened = self.opened
        self.provenance = Provenance(
            model=used_model,
            settings=settings,
            prompts=self.prompt_set,
            input={"path": str(opened.path) if opened.format != "array" else "array", "shape": list(self.shape)},
            tool="track",
            status="running",
            extra={"outputs": self.outputs},
        )
        store = self.store
        if store is not None:  # resuming: the store keeps what the first run recorded
            self.store_scale, self.store_units = store.scale, store.units
        else:
            self.store_scale, self.store_units = self._scale_units()
        try:
            if recorded is not None:
                self._plan_replay()
            elif out_path is not None:
                self.store = LabelStore.create(
                    out_path,
                    self.store_shape,
                    axes=self.store_axes,
                    image=self.image_view if a["save_image"] else None,
                    scale=self.store_scale,
                    units=self.store_units,
                    provenance=self.provenance.to_dict(),
                    overwrite=a["overwrite"],
                )
                self.identity.attach(self.store, resume=False)
            else:
                self.labels_mem = np.zeros(self.store_shape, dtype=np.uint32)
        except BaseException:
            session.close()
            raise
        if self.store is not None:
            self.finished = set(self.store.finished_frames())

    def run(self) -> None:
        """Propagate, writing every yielded frame at once (`_emit`) and collecting scores, areas and events.

        Results are written by a `replay.LabelWriter` as the widget and replay write them, except that each replaces
        its frame whole (nothing else is in these labels): no object keeps pixels outside its span."""
        from .replay import LabelWriter

        if self.discovery is None:
            results = self.session.propagate(self.direction)
        else:
            from .discovery import propagate_with_discovery

            results = propagate_with_discovery(self.session, self.discovery, self.direction, events=self.events)
        writer = LabelWriter(self.session, self._read_frame, self._write_frame, keep=False, frames_of=self._holding)
        if self.session.z_edge is not None:  # a z-stack: the axial edge rule once every pass has run
            results = _then_axial_edge(results, self.session)
        for result in results:
            writer.write(result)
            count_of = self.counts.pop(result.frame)
            for obj, score, iou in zip(result.obj_ids, result.scores, result.ious, strict=True):
                self.scores[(result.frame, obj)] = (float(score), float(iou))
                self.areas[(result.frame, obj)] = int(count_of.get(obj, 0))
            self.covered.add(result.frame)

    def _write_frame(self, frame: int, labels: np.ndarray) -> None:
        """The writer's store: the frame written (`_emit`), its pixel count per id noted in `counts`."""
        ids, counts = np.unique(labels, return_counts=True)  # not bincount: ids go up to 2**32 - 1
        self.counts[frame] = dict(zip(ids.tolist(), counts.tolist(), strict=True))
        self._emit(frame, labels, ids.tolist())

    def _read_frame(self, frame: int) -> np.ndarray:
        return np.asarray(self.store.read_labels()[frame] if self.store is not None else self.labels_mem[frame])

    def _holding(self, obj: int) -> list[int]:
        """The frames written with pixels of `obj` (the writer looks only there for pixels outside its span)."""
        return sorted(f for (f, o), area in self.areas.items() if o == obj and area)

    def _drop_outside_spans(self) -> None:
        """Forget the scores and areas of objects on frames outside their span: a frame written before discovery
        ended a mother there (her division frame's first write) must not report her present where the labels no
        longer hold her, nor count her area in the lineage check."""
        from .replay import outside_span

        spans = {obj: self.session.span(obj) for obj in self.session.obj_ids}
        for key in [k for k in self.scores if k[1] in spans and outside_span(spans[k[1]], k[0])]:
            del self.scores[key]
            self.areas.pop(key, None)

    def finish(self) -> TrackResult:
        """Frames outside the tracked range written empty, then colours, lineage, tables, CTC and the status."""
        for frame in range(self.n_frames):  # outside the propagated range: nothing tracked there
            if frame not in self.covered:
                self._emit(frame, np.zeros(self.store_shape[1:], dtype=np.uint32), [])
        store, out_path, a = self.store, self.out_path, self.ask
        scores, areas = self.scores, self.areas
        self.provenance.edit_log = self.session.edit_log
        if store is not None:
            store.add_colors(self.ids)
        labels_out = store.read_labels() if store is not None else self.labels_mem
        self._drop_outside_spans()
        confidence = [
            {"frame": f, "obj_id": o, "score": s, "iou": i, "present": s > 0, "area": areas[(f, o)]}
            for (f, o), (s, i) in sorted(scores.items())
        ]
        result = TrackResult(
            labels=labels_out,
            axes=self.store_axes,
            prompts=self.prompt_set,
            confidence=confidence,
            path=out_path if store is not None else None,
            frames_written=self.written,
            store=store,
            encoder_runs=getattr(self.session, "encoder_runs", 0),
            scale=None if self.store_scale is None else [float(size) for size in self.store_scale],
            units=self.store_units,
            events=self.events,
        )
        presence: dict[int, list[int]] = {}
        for (f, o), area in sorted(areas.items()):
            if area:
                presence.setdefault(o, []).append(f)
        result.parents, result.lineage_dropped = consistent_parents(getattr(self.session, "parents", {}), presence)
        lineage = lineage_record(result.parents, result.lineage_dropped, self.events)
        self.provenance.parents = dict(result.parents)
        self.provenance.extra["lineage"] = lineage["lineage"]
        if a["tables"]:
            result.regions = region_table(
                labels_out,
                intensity=self.image_view,
                scores=scores,
                scale=self.store_scale,
                units=self.store_units,
                axes=self.store_axes,
                parents=result.parents,
            )
            result.tracks, result.graph = tracks_from_labels(labels_out, parents=result.parents)
            if out_path is not None:
                result.csv_path = write_csv(result.regions, sidecar_path(out_path, "regions.csv"))
                write_csv(confidence, sidecar_path(out_path, "confidence.csv"))
        if a["ctc"] is not None:  # existing files there: ours (io/outputs.py)
            export_ctc(labels_out, a["ctc"], parents=result.parents, overwrite=True)
            result.ctc_path = Path(a["ctc"])
        self.provenance.status = "complete"
        if store is not None:
            store.update_provenance(
                {**lineage, "status": "complete", "edit_log": self.provenance.edit_log, **self._legacy_done()}
            )
        result.provenance = store.provenance if store is not None else self.provenance.to_dict()
        return result

    # ------------------------------------------------------------------ what a variant (the 3D+t job) replaces
    def _prompts_given(self) -> PromptSet | None:
        """The prompts argument as a PromptSet (a prompts file, seed labels on `seed_frame`, ...), None if none."""
        a = self.ask
        return _as_prompts(a["prompts"], a["seed_frame"], self.data, self.ax, self.frame_shape)

    def _check_prompts(self, prompt_set: PromptSet) -> None:
        prompt_set.validate(self.n_frames, self.frame_shape)

    def _make_session(self):
        from .session import TrackingSession

        return TrackingSession(
            self.net,
            self.data,
            axis=self.ax,
            preset=self.preset,
            channel=self.channel,
            channel_axis=self.channel_axis,
            intensity=self.intensity,
            embedding_cache=self.ask["embedding_cache"],
            on_read=self.identity,
            z_edge=self.z_edge,
            z_edge_background=self.z_edge_background,
            contrast=self.contrast,
            click_rule=self.click_rule,
            z_stream=self._z_stream(),  # (tracked masks mended by the click rule's through_z, the axial edge rule or not)
        )

    def _z_stream(self) -> bool:
        """The stream axis is z (the axial edge rule's domain), not time."""
        return self.letter == "z"

    def _z_stream_contrast(self) -> bool:
        """Whether a new run's default contrast is the model's z-stream one (`registry.ModelInfo.z_contrast`, resolved
        as the session resolves it: `preprocess.resolve_contrast`): on a z stream."""
        return self._z_stream()

    def _image_view(self):
        """The frames as the store's image and the region table's intensities (None: several channels kept)."""
        if self.channel is not None or self.channel_axis is None:
            return _ImageView(self.session.frames, self.channel)
        return None

    def _settings(self) -> dict:
        """The settings recorded in the store (a resumed run replays them)."""
        intensity, used = self.intensity, self.session.frames.intensity
        return {
            "direction": self.direction,
            "preset": self.preset,
            "axis": self.ax,
            "axis_name": self.letter,
            "channel": self.channel,
            "channel_axis": self.channel_axis,
            "window": None if intensity is None else [intensity.low, intensity.high],
            "intensity": [used.low, used.high],
            "percentiles": None if intensity is not None else list(DEFAULT_PERCENTILES),
            "device": str(self.net.device),
            "threads": _torch_threads(),
            "z_edge": self.session.z_edge,  # the axial edge rule (z streams; None: off), for resume and replay
            "z_edge_background": self.session.z_edge_background,  # its background percentile, for resume
            "z_stream": self.session.z_stream,  # the stream is z (the click rule's through_z), for replay
            **self.session.frames.contrast.record(),  # "contrast" (and local's constants), for resume and replay
            **self.session.click_rule.record(),  # "click_rule", for resume and replay
        }

    def _scale_units(self) -> tuple[list[float] | None, dict[str, str] | None]:
        """Scale and units of a new store (given, else read from the input file)."""
        a, opened = self.ask, self.opened
        scale = a["scale"] if a["scale"] is not None else _store_scale(opened, self.ax, self.channel_axis)
        return scale, _store_units(a["units"], opened, self.ax, self.channel_axis, self.letter)

    # ------------------------------------------------------------------ the steps
    def _segment_seed_frame(self) -> PromptSet:
        """auto: the seed frame's objects (segment everything), largest first, as mask prompts with ids 1, 2, …"""
        from .discovery import segment_frame

        seed_frame, discovery = self.ask["seed_frame"], self.discovery
        masks = sorted(segment_frame(self.session, seed_frame, discovery), key=lambda m: -int(m.sum()))
        prompt_set = PromptSet()
        taken = np.zeros(self.frame_shape, dtype=bool)
        for mask in masks:  # overlapping masks: the larger keeps the shared pixels
            own = mask & ~taken
            if own.sum() >= discovery.min_area:
                prompt_set.add(seed_frame, len(prompt_set) + 1, mask=own)
                taken |= own
        if not len(prompt_set):
            raise InputError(f"segment everything found no object on frame {seed_frame}; nothing to track")
        return prompt_set

    def _plan_replay(self) -> None:
        """A resumed run replays the original from its recorded prompts; this reads which of its writes completed.

        The store records, per frame, which write of the run its chunks hold (`LabelStore.write_counts`): the
        replay skips its n-th write of a frame when n <= that count, and makes the others. Propagation is
        deterministic, so this is exactly the set of writes the original run did not finish — also where a frame
        is written twice (the start frame of a "both" run; a frame discovery changed and yields again). Stores
        made before that record carry a run-wide count instead (provenance "writes"): the first that many writes
        are skipped, and the per-frame record is filled in as the replay passes them."""
        store, recorded = self.store, self.recorded
        self.done_writes = store.write_counts().reshape(self.n_frames, -1).max(axis=1)
        legacy = recorded.extra.get("writes")
        self.legacy_writes = int(legacy) if isinstance(legacy, int) and not isinstance(legacy, bool) else None
        self.damaged = _unreadable_frames(store)  # finished frames whose chunks were damaged since: rewritten
        store.update_provenance({"outputs": merge_outputs(recorded.extra.get("outputs"), self.outputs)})

    def _emit(self, frame: int, labels: np.ndarray, ids) -> None:
        """The run's next write (frame `frame`): made, unless a resumed run finds it completed in the store."""
        n = self.writes_seen[frame] = self.writes_seen.get(frame, 0) + 1  # the run's n-th write of this frame
        self.ids.update(ids)
        if self.legacy_writes is not None:
            completed = self.write_index < self.legacy_writes
        else:
            completed = frame < len(self.done_writes) and n <= int(self.done_writes[frame])
        store = self.store
        if not completed or frame in self.damaged:
            if store is not None:
                store.write_frame(frame, labels, colors=False)  # colours: once, at the end (`add_colors`)
                store.record_write(frame, n)
            else:
                self.labels_mem[frame] = labels
            self.finished.add(frame)
            if frame not in self.written:
                self.written.append(frame)
        elif self.legacy_writes is not None:  # an older store: its per-frame record is made as the replay passes
            store.record_write(frame, n)
        self.write_index += 1
        if self.ask["progress"] is not None:
            self.ask["progress"](len(self.finished), self.n_frames)

    def _legacy_done(self) -> dict:
        """{"writes": None} once the replay of an older store has passed its run-wide count (the per-frame record
        is then complete and replaces it), else {}."""
        if self.legacy_writes is not None and self.write_index >= self.legacy_writes:
            return {"writes": None}
        return {}

    def _interrupted(self, changed: bool) -> None:
        """Record a stopped run as "interrupted" (never "running"), with the colours of the frames it wrote; a
        resume that wrote nothing keeps its status. One attribute write or two, never a failure of its own."""
        if self.store is None or not changed:
            return
        try:
            self.store.add_colors(self.ids)
            self.store.update_provenance({"status": "interrupted", **self._legacy_done()})
        except Exception:  # noqa: BLE001, S110  (the store may be what failed; finished frames are intact)
            pass


# ---------------------------------------------------------------------- helpers
def lineage_record(parents, dropped=None, events=()) -> dict:
    """Provenance entries of a lineage: "parents" {"<daughter>": mother} (the `Provenance.parents` field) and
    "lineage" {"dropped": {"<daughter>": why}, "events": [discovery events]} (read back with
    `analysis.parents_from_provenance`)."""
    return {
        "parents": {str(int(d)): int(m) for d, m in sorted(parents.items())},
        "lineage": {"dropped": {str(d): why for d, why in sorted((dropped or {}).items())}, "events": list(events)},
    }


def _then_axial_edge(results, session):
    """`results`, then the z-stack session's axial edge rule (`TrackingSession.axial_edge`: every slice again, each
    object ended in z) once they have all run: a stopped run applies none (as a replay of its log does not)."""
    yield from results
    yield from session.axial_edge()


def _torch_threads() -> int:
    """torch's CPU thread count: float sums, and so boundary pixels, depend on it (a replay sets the same)."""
    import torch

    return torch.get_num_threads()


class _ImageView:
    """The stack's frames as a lazy [N, H, W] (or [N, H, W, C] for RGB) array: what the store keeps as its image
    and what the region table measures intensities in. Indexing reads one frame through the FrameSource."""

    def __init__(self, frames, channel):
        self._frames = frames
        self._channel = channel
        first = self[0]
        self.shape = (len(frames), *first.shape)
        self.dtype = first.dtype
        self.ndim = len(self.shape)

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, key):
        if isinstance(key, tuple):
            if len(key) != 1:
                raise TypeError("frames are read one at a time: index with a frame number")
            key = key[0]
        frame = self._frames.raw_frame(int(key))
        if self._channel is not None and frame.ndim == 3:
            frame = frame[..., self._channel]
        return frame


def _refuse_changed_settings(out_path, recorded: dict, **given) -> None:
    """A resumed run replays the recorded settings; one given explicitly that differs is refused, not ignored."""
    for name, value in given.items():
        if value is None or name not in recorded:
            continue
        if name == "window":
            window = value if isinstance(value, IntensityRange) else parse_window(value)
            value = [window.low, window.high]
        if value != recorded[name]:
            raise InputError(
                f"{out_path} was made with {name}={recorded[name]!r}; a resumed run replays it, so {name}={value!r} "
                f"cannot apply: resume without --{name}, or write to a new --out"
            )


def _plan_contrast(given, recorded: dict | None, out_path):
    """The contrast step of a run: given None → None (the model's default, resolved when it is loaded); a resumed run
    (recorded: the store's settings) → the recorded step (none recorded: "global", as a store made before the option
    was made); a given one that differs from it is refused, as any changed setting."""
    step = None if given is None else contrast_step(given)
    if recorded is None:
        return step
    made = contrast_from_record(recorded)
    if step is not None and not _same_contrast(step, made):

        def text(s):  # the name; the constants where the names agree (a LocalContrast given in Python)
            return repr(s.name) if step.name != made.name else repr(s)

        raise InputError(
            f"{out_path} was made with contrast={text(made)}; a resumed run replays it, so contrast={text(step)} "
            "cannot apply: resume without --contrast, or write to a new --out"
        )
    return made


def _plan_click_rule(given, recorded: dict | None, out_path):
    """The click rule of a run: given None → None (the model's default, resolved by the session); a resumed run →
    the recorded rule (none recorded: off, as a store made before the rule was made); a given one that differs from
    it is refused, as any changed setting."""
    rule = None if given is None else click_rule_step(given)
    if recorded is None:
        return rule
    made = click_rule_from_record(recorded)
    if rule is not None and rule != made:
        raise InputError(
            f"{out_path} was made with click_rule={made}; a resumed run replays it, so click_rule={rule} cannot "
            "apply: resume without --click-rule, or write to a new --out"
        )
    return made


def _same_contrast(given, made) -> bool:
    """A given contrast step agrees with the one a store was made with: the same step, or a local one without a
    window (to be fitted to the data) whose other constants are the store's (its window was fitted then)."""
    if given.name != made.name:
        return False
    if isinstance(given, LocalContrast) and given.window is None:
        made = replace(made, window=None)
    return given == made


def _old_outputs(out_path: Path, overwrite: bool) -> dict | None:
    """The "outputs" record of the store an overwrite replaces (None if there is none or it is not ours)."""
    if not overwrite or not (out_path / "zarr.json").is_file():
        return None
    try:
        return LabelStore.open(out_path, mode="r").provenance.get("outputs")
    except Exception:  # noqa: BLE001  (not a store of ours: LabelStore.create refuses to replace it anyway)
        return None


def _unreadable_frames(store: LabelStore) -> set[int]:
    """Finished frames whose label chunks cannot be read any more (damaged on disk since): a resume redoes them."""
    labels = store.read_labels()
    bad = set()
    for frame in store.finished_frames():
        try:
            np.asarray(labels[frame])
        except Exception:  # noqa: BLE001  (zarr raises codec-specific errors for a damaged chunk)
            bad.add(frame)
    return bad


def _refuse_input_as_output(opened: OpenedStack, out: Path, overwrite: bool, resume: bool) -> None:
    """`--overwrite` of the store the image is read from would delete the image before it is read."""
    if opened.format == "array" or resume or not overwrite:
        return
    source, target = Path(os.path.realpath(opened.path)), Path(os.path.realpath(out))
    if source == target or target in source.parents:
        raise InputError(
            f"--out {out} is the input image's own store ({opened.path}); overwriting it would delete the image "
            "before it is read: write to another --out"
        )


def _open_input(stack) -> OpenedStack:
    if isinstance(stack, OpenedStack):
        return stack
    if isinstance(stack, (str, os.PathLike)):
        return open_stack(stack)
    if not hasattr(stack, "shape") or not hasattr(stack, "__getitem__"):
        stack = np.asarray(stack)
    ndim = len(stack.shape)
    # unnamed axes: a short last axis is channels (RGB, a few stains); 4-D without one is napari's [T, Z, Y, X]
    few = ndim >= 4 and int(stack.shape[-1]) <= 16
    guess = {3: "tyx", 4: "tyxc" if few else "tzyx", 5: "tzyxc" if few else "qqqyx"}.get(
        ndim, "q" * max(0, ndim - 2) + "yx"
    )
    return OpenedStack(stack, guess, Path("."), "array", axes_known=False)


def _channel_axis(opened: OpenedStack, ax: int) -> int | None:
    shape, axes = opened.shape, opened.axes
    if "c" in axes and axes.index("c") != ax:
        return axes.index("c")
    if len(shape) >= 4 and shape[-1] <= 16 and ax != len(shape) - 1:
        return len(shape) - 1  # as FrameSource: a short trailing axis is channels
    return None


def _frame_shape(shape, ax, channel_axis) -> tuple[int, int]:
    spatial = [i for i in range(len(shape)) if i not in (ax, channel_axis)]
    if len(spatial) != 2:
        raise InputError(
            f"a stack of shape {shape} with stream axis {ax} has {len(spatial)} other non-channel axes; it needs "
            "exactly (Y, X) — pick the stream axis with axis=… (a 3D+t stack: axis='tz', its default)"
        )
    return int(shape[spatial[0]]), int(shape[spatial[1]])


def _stream_letter(axis, guessed: str) -> str:
    if isinstance(axis, str) and axis.strip().lower() in ("t", "z"):
        return axis.strip().lower()
    return guessed if guessed in ("t", "z") else "t"


def _store_units(units, opened: OpenedStack, ax: int, channel_axis, letter: str) -> dict[str, str] | None:
    """{store axis letter: UDUNITS-2 unit} from `units` (a mapping or one per store axis) or the file's metadata."""
    store_axes = letter + "yx"
    if units is None:
        if not opened.units:
            return None
        spatial = [i for i in range(len(opened.shape)) if i not in (ax, channel_axis)]
        sources = [opened.axes[i] for i in (ax, *spatial)]
        units = {a: opened.units.get(src) for a, src in zip(store_axes, sources, strict=True)}
    elif not isinstance(units, dict):
        units = list(units)
        if len(units) != len(store_axes):
            raise InputError(f"units must give one unit per axis of {store_axes!r}; got {units}")
        units = dict(zip(store_axes, units, strict=True))
    clean = {a: normalise_unit(units.get(a)) for a in store_axes}
    return {a: u for a, u in clean.items() if u} or None


def _store_scale(opened: OpenedStack, ax: int, channel_axis) -> list[float] | None:
    if opened.scale is None or len(opened.scale) != len(opened.shape):
        return None
    spatial = [i for i in range(len(opened.shape)) if i not in (ax, channel_axis)]
    scale = [opened.scale[ax], *(opened.scale[i] for i in spatial)]
    return scale if all(s > 0 for s in scale) else None


def _as_prompts(prompts, seed_frame: int, data, ax: int, frame_shape) -> PromptSet | None:
    """PromptSet | prompts file | seed label image (array or path) → PromptSet (None stays None)."""
    if prompts is None or isinstance(prompts, PromptSet):
        return prompts
    seeds = _read_seeds(
        prompts, seed_frame, frame_shape, tuple(frame_shape), "frames", f"they must be one frame of the stack, "
        f"{tuple(frame_shape)}"
    )  # fmt: skip
    if isinstance(seeds, PromptSet):
        return seeds
    n_frames = data.shape[ax]
    if not 0 <= seed_frame < n_frames:
        raise InputError(f"seed frame {seed_frame} is outside the stack (frames 0…{n_frames - 1})")
    return PromptSet.from_seed_labels(seeds, seed_frame)


def _read_seeds(prompts, seed_frame: int, frame_shape, seed_shape: tuple, unit: str, expected: str):
    """A prompts file (.json / .csv) → its PromptSet; seed labels (an array, or the path of a label image) → the
    seed frame's labels, an array of `seed_shape` (a stack of them, one more leading axis, gives its
    `seed_frame`-th). frame_shape: (Y, X) of the stack's frames, for the prompts file. unit: what that leading axis
    counts ("frames", "time points"); expected: the refusal's hint when the labels have another shape."""
    if isinstance(prompts, (str, os.PathLike)):
        path = Path(prompts)
        if path.suffix.lower() in (".json", ".csv"):
            return PromptSet.load(path, frame_shape=frame_shape)
        prompts = open_stack(path).data
    seeds = prompts if hasattr(prompts, "shape") else np.asarray(prompts)
    if len(seeds.shape) == len(seed_shape) + 1:
        if not 0 <= seed_frame < seeds.shape[0]:
            raise InputError(f"seed frame {seed_frame} is outside the seed stack of {seeds.shape[0]} {unit}")
        seeds = seeds[seed_frame]
    seeds = np.asarray(seeds)
    if seeds.shape != tuple(seed_shape):
        raise InputError(f"the seed labels have shape {seeds.shape}; {expected}")
    return seeds


def _load_model(model, device) -> tuple[Any, ModelRecord]:
    """→ (SAM2Model, its provenance `ModelRecord`)."""
    from .model import load_model

    if isinstance(model, (str, os.PathLike)):
        try:
            net = load_model(model, device=device)
        except KeyError as exc:  # an unknown registry name
            raise ModelNameError(str(exc.args[0]) if exc.args else str(exc)) from None
        return net, model_record(net, model)
    net = model
    if device not in (None, "auto") and str(net.device) != str(device):
        net = net.to(device)
    return net, model_record(net)
