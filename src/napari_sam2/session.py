"""`TrackingSession`: SAM 2's streaming memory carries prompted objects through a z-stack or time-lapse.

Data flow of one tracked frame, for every object at once:

    frame (lazy read, stack-wide intensity) → image encoder (LRU feature cache)
      → memory attention over the object's memory bank (conditioning frames + recent frames + pointers)
      → mask decoder (mask logits, predicted IoU, object score, object pointer)
      → memory encoder (the new memory of this frame) → pruned memory bank → FrameResult

What the session keeps, per object, and why (everything else is dropped as soon as no future frame can use it,
so memory does not grow with the stack length):
  * prompts per frame (points, box, mask) — to re-run and to save them as provenance;
  * conditioning frames (every prompted frame): memory, pointer, mask logits — attended by every frame;
  * tracked frames: the pointer, object score and IoU (≈ 1 KiB) of every tracked frame, and the memory
    (bf16, as the official predictor stores it) of frames within `num_maskmem − 1` of the current frame or of a
    conditioning frame (a later pass in the other direction starts from there); pointers likewise within 15
    (more if the config's pointer reach is longer);
  * mask logits of tracked frames in an LRU budget (`result_cache_bytes`): used when a correction lands on a
    tracked frame (the previous mask is a prompt, as in the official predictor).

Two presets:
  "default"  corrections stick: a prompt on a tracked frame makes it a conditioning frame; propagation only
             recomputes frames a prompt has made stale (after it up to the object's next conditioning frame, in
             the direction it was tracked) and never overwrites a prompted frame; small holes are filled on the
             CPU (≤ 8 px, as the official predictor does on a GPU).
  "parity"   the official video predictor exactly (facebookresearch/sam2 2b90b9f, CPU): a correction on a
             tracked frame is a non-conditioning output that the next propagation over it recomputes; every
             frame in range is recomputed; no hole filling (the official CPU path skips it).
Coordinates are napari's: (row, col) = (y, x) in pixels of the frame.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from .click_rule import ClickRule, resolve_click_rule
from .embedding_cache import EmbeddingStore, model_fingerprint
from .first_click import decode_first_click
from .frames import FrameSource
from .model.memory_bank import (
    conditioning_memory_index,
    conditioning_pointer_distance,
    max_pointer_distance,
    outside_reach,
    pointer_reach,
    recent_memory_frames,
    recent_pointer_frames,
)
from .model.precision import autocast_context, resolve_precision
from .model.sam2 import NO_OBJECT_LOGIT, ImageFeatures, Memory, Pointer
from .postprocess import fill_holes
from .preprocess import InputError, box_to_model, points_to_model, resolve_contrast
from .prompts import ObjectPrompt, make_prompt

#: official: prompt logits fed back with a correction are clamped to ±32
PROMPT_LOGIT_CLAMP = 32.0
#: object ids are the values of the uint32 label image
MAX_OBJ_ID = 2**32 - 1
#: pointers of tracked frames are kept at least this many frames back (the official pointer reach − 1); see _prune
POINTERS_KEPT = 15

PRESETS = {
    "default": {"sticky_corrections": True, "fill_hole_area": 8, "recompute_all": False, "keep_all_memories": False},
    "parity": {"sticky_corrections": False, "fill_hole_area": 0, "recompute_all": True, "keep_all_memories": True},
}


#: the prompts of one object on one frame: the one prompt type of the package (see prompts.py)
Prompt = ObjectPrompt


@dataclass
class FrameOutput:
    """One object's output on one frame (device tensors, batch 1).

    logits [1, 1, 4h, 4w] fp32 low-res mask logits (after hole filling when on; None once evicted);
    memory [1, mem, h, w] bf16 (None: pruned, or not encoded yet); pointer [1, d] (None: pruned);
    score [1, 1] object-score logit; iou: predicted IoU.
    pending_memory: made by a prompt; its memory is encoded at the next propagation from the binarised mask
    (official: propagate_in_video_preflight), so that several clicks on a frame cost one memory encoding.
    memory_logits: the logits that memory is encoded from where they are not `logits` (a first click's mask before
    the mask refiner: the network's own mask, the kind its memory encoder learned on); None: `logits`.
    """

    logits: torch.Tensor | None
    memory: torch.Tensor | None
    pointer: torch.Tensor | None
    score: torch.Tensor
    iou: float
    pending_memory: bool = False
    memory_logits: torch.Tensor | None = None


class ObjectTrack:
    """Everything the session knows about one object."""

    def __init__(self, obj_id: int):
        self.obj_id = obj_id
        # lineage: the mother (a division's daughters) and the frames the object exists on; None = unbounded.
        # Propagation never tracks the object outside [first, last] (a mother ends when she divides, a daughter
        # starts on the frame she is born on and is not tracked backwards before it).
        self.parent: int | None = None
        self.first: int | None = None
        self.last: int | None = None
        self.prompts: dict[int, ObjectPrompt] = {}
        self.cond: dict[int, FrameOutput] = {}  # conditioning frames, in the order they were made
        self.tracked: dict[int, FrameOutput] = {}  # non-conditioning frames
        self.visited: dict[int, bool] = {}  # frames a propagation has passed → was it a reverse pass
        self.stale: set[int] = set()  # tracked frames that a later prompt has invalidated
        # tracked frames still holding a memory / a pointer: pruning looks only at these, so its cost per
        # frame stays constant however long the stack is
        self.holding_memory: set[int] = set()
        self.holding_pointer: set[int] = set()

    def alive(self, frame: int) -> bool:
        """The object exists on `frame` (inside its lineage span)."""
        return (self.first is None or frame >= self.first) and (self.last is None or frame <= self.last)

    def output(self, frame: int) -> FrameOutput | None:
        """The current output on `frame`: a pending correction first (parity preset), then the prompt's."""
        if not self.alive(frame):
            return None
        tracked = self.tracked.get(frame)
        if tracked is not None and tracked.pending_memory:
            return tracked
        return self.cond.get(frame) or tracked


@dataclass
class FrameResult:
    """Result of one frame, for every object that has an output on it.

    obj_ids [K]; logits [K, H, W] float32 mask logits at the frame's size; masks [K, H, W] bool (logit > 0);
    labels [H, W] uint32 (object id per pixel, overlaps to the higher logit); scores [K] object-score logits
    (≤ 0: the object is absent / occluded, its mask empty); ious [K] predicted IoU; computed: the ids whose
    output was (re)computed in this call (others were taken from the session's store); evicted: ids tracked on
    this frame whose stored logits the `result_cache_bytes` budget dropped (left out: the result is incomplete).
    """

    frame: int
    obj_ids: list[int]
    logits: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    ious: np.ndarray
    computed: list[int]
    evicted: list[int] = field(default_factory=list)

    @property
    def present(self) -> np.ndarray:
        """[K] bool: the object-score head says the object is on this frame."""
        return self.scores > 0


def _check_obj_id(obj_id) -> None:
    if not isinstance(obj_id, (int, np.integer)) or isinstance(obj_id, bool) or not 0 < obj_id <= MAX_OBJ_ID:
        raise InputError(
            f"object ids are positive integers 1…{MAX_OBJ_ID} (the value in the uint32 labels); got {obj_id!r}"
        )


class FeatureCache:
    """LRU cache of per-frame image features with a byte budget (the encoder is the costly step)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[int, ImageFeatures] = OrderedDict()
        self._bytes = 0
        self.hits = self.misses = 0

    def get(self, frame: int) -> ImageFeatures | None:
        item = self._items.get(frame)
        if item is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(frame)
        return item

    def put(self, frame: int, features: ImageFeatures) -> None:
        if frame in self._items:
            self._bytes -= self._items.pop(frame).nbytes
        self._items[frame] = features
        self._bytes += features.nbytes
        while self._bytes > self.max_bytes and len(self._items) > 1:
            _, old = self._items.popitem(last=False)
            self._bytes -= old.nbytes

    def __contains__(self, frame: int) -> bool:
        return frame in self._items

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()
        self._bytes = 0


class TrackingSession:
    """Prompt objects on any frame of a stack and propagate them with SAM 2's memory.

    model: a `SAM2Model` (e.g. `napari_sam2.load_model("sam2.1_hiera_tiny")`).
    stack: array-like with the stream axis `axis` plus (Y, X) and optionally channels (see `FrameSource`).
    preset: "default" (sticky corrections, CPU hole filling) or "parity" (the official predictor's behaviour).
    feature_cache_bytes: budget of the image-feature LRU (≈ 16 MiB per frame at 1024²).
    result_cache_bytes: budget of retained mask logits of tracked frames (for corrections and re-yields).
    num_frames: the stack length the pointer encoding assumes (default: the stack's; the official normalises
        pointer distances by min(num_frames, 16) − 1).
    embedding_cache: a directory in which image features are also kept on disk (zarr, one store per model
        + preprocessing + stack; see `embedding_cache.py`), so a second propagation beyond the in-memory budget
        or a re-opened session over the same data runs the image encoder on no frame again.
    max_cond_frames (attribute, default None): each object attends to every conditioning (prompted) frame, as the
    official default; k ≥ 2 → the k nearest (the nearest before and after the frame first), the official
    max_cond_frames_in_attn rule.
    object_batch: at most this many objects (whose memory banks line up) go through memory attention and the heads
        together: default 64 on CUDA, 1 elsewhere (faster on a CPU); results do not depend on it.
    z_edge: the axial edge rule for a stack whose stream axis is z (`napari_sam2.volume`; the 3D+t engine's
        `volume_time.axial_trim`): the session notes every object's mask on every slice, and `axial_edge()` returns
        the slices again with each object ended in z where the image falls below this fraction of the brightest
        voxel of each (y, x) column in its mask. `track()`, the CLI and the widget give `volume.Z_EDGE` (0.5) when
        the stream axis is z and None for time; None here (the session cannot tell z from t): the rule is off.
    z_edge_background: the percentile of the ring around a mask that the rule takes as a slice's local background
        (None: `volume_time.Z_EDGE_BACKGROUND`); each "edge" entry of the edit log records the one it applied.
    contrast: the contrast step of the model input (`preprocess`): "global", "local", a `preprocess.LocalContrast`,
        or None (default): the model's (`registry.ModelInfo.contrast`, in a z stream its `z_contrast`; "global" for a
        checkpoint not in the registry). The resolved step is `frames.contrast`.
    click_rule: how a frame prompted with clicks is read (`napari_sam2.click_rule`): "off", "fluorescence", a
        `click_rule.ClickRule`, or None (default): the model's (`registry.ModelInfo.click_rule`; "off" for a
        checkpoint not in the registry and under preset "parity"). The resolved rule is `click_rule`.
    z_stream: the stream axis is z (True wherever `z_edge` is given): the rule's `through_z` mends tracked masks
        (`ClickRule.mend_tracked`) in a z stream only, and `contrast` None is the model's z-stream default. The
        3D+t engine's z-streams say so (their contrast is given: the 4-D stack's, the model's plain default); time is
        left as it is.
    Other keyword arguments go to `FrameSource` (channel, channel_axis, intensity, percentiles, preprocessed,
    frame_shape, read_ahead).
    """

    def __init__(
        self,
        model,
        stack,
        axis: int = 0,
        preset: str = "default",
        precision: str = "auto",
        feature_cache_bytes: int = 1 << 30,
        result_cache_bytes: int = 256 << 20,
        fill_hole_area: int | None = None,
        num_frames: int | None = None,
        embedding_cache: str | os.PathLike | None = None,
        object_batch: int | None = None,
        z_edge: float | None = None,
        z_edge_background: float | None = None,
        contrast=None,
        click_rule=None,
        z_stream: bool = False,
        **frame_options,
    ):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        options = PRESETS[preset]
        self.model = model
        self.device = model.device
        self.cfg = model.cfg
        self.preset = preset
        self.sticky_corrections = options["sticky_corrections"]
        self.recompute_all = options["recompute_all"]
        self.keep_all_memories = options["keep_all_memories"]
        self.fill_hole_area = options["fill_hole_area"] if fill_hole_area is None else fill_hole_area
        self.precision = resolve_precision(self.device, precision, preset, model)
        frame_options.setdefault("pin_memory", self.device.type == "cuda")
        #: the stream axis is z: tracked masks are mended where the click rule says so (`ClickRule.through_z`)
        self.z_stream = bool(z_stream) or z_edge is not None
        # a z stream's default contrast may differ (registry.ModelInfo.z_contrast); the parity preset keeps the stack's
        contrast = resolve_contrast(contrast, model, z_stream=self.z_stream, preset=preset)
        self.click_rule = resolve_click_rule(click_rule, model, preset)
        self.frames = FrameSource(stack, model.image_size, axis=axis, contrast=contrast, **frame_options)
        self.num_frames = num_frames or len(self.frames)
        self.frame_shape = self.frames.frame_shape
        self.features = FeatureCache(feature_cache_bytes)
        self.result_cache_bytes = result_cache_bytes
        self._result_lru: OrderedDict[tuple[int, int], int] = OrderedDict()  # (obj, frame) → bytes
        self._result_bytes = 0
        self.objects: dict[int, ObjectTrack] = {}
        self._lock = threading.RLock()  # the widget prompts from the GUI thread while a worker may propagate
        self.encoder_runs = 0
        self._pending = False  # a prompt's memory is still to be encoded (see _propagate_pass)
        # one object at a time on a CPU: batching 16 objects at 1024² ran 1.9× slower there (caches outgrown;
        # bench_tracking.py speed), while a GPU gains from batches
        self.object_batch = object_batch or (64 if self.device.type == "cuda" else 1)
        # None: every conditioning frame is attended to (the official default); k >= 2: the k nearest (discovery's
        # re-prompts add conditioning frames, each one more memory for every later frame of that object)
        self.max_cond_frames: int | None = None
        self.embeddings = None if embedding_cache is None else self._open_embedding_cache(embedding_cache)
        from .volume import AxialEdge, check_z_edge
        from .volume_time import Z_EDGE_BACKGROUND, check_z_edge_background

        self.z_edge = check_z_edge(z_edge)
        #: the axial edge rule's background percentile (`volume_time.Z_EDGE_BACKGROUND`): what `axial_edge` applies
        self.z_edge_background = check_z_edge_background(
            Z_EDGE_BACKGROUND if z_edge_background is None else z_edge_background
        )
        if self.z_edge is not None and self.frames.preprocessed:
            raise InputError("z_edge (the axial edge rule) reads the image's pixels; a preprocessed stack has none")
        # the axial edge rule's notes of every object's mask on every slice (None: the rule is off)
        self._edge = (
            None
            if self.z_edge is None
            else AxialEdge(self.z_edge, len(self.frames), self.frame_shape, self.z_edge_background)
        )
        # Every edit, in order (see `edit_log`); `_quiet` > 0 while a public method runs others on its behalf.
        self._log: list[dict] = []
        self._quiet = 0
        self._pass: dict | None = None  # the pass running now: its log entry, frame order and frames done
        # the frame-size logits of the last frame `_result` assembled: {obj id: (its low-res logits tensor, [H, W]
        # float32)}. Discovery asks for one frame's result several times (after the pass, after each re-prompt,
        # once more at the end) while only the re-prompted objects' logits changed; the others are reused (the
        # same bilinear resize of the same tensor: the same numbers). One frame only, so it holds at most one
        # result's logits beside the caller's copy.
        self._upsampled: tuple[int, dict[int, tuple[torch.Tensor, np.ndarray]]] = (-1, {})

    # ------------------------------------------------------------------ frames and features
    @property
    def contrast(self):
        """The resolved contrast step of the model input (`frames.contrast`; as `VolumeTimeSession.contrast`)."""
        return self.frames.contrast

    def __len__(self) -> int:
        return len(self.frames)

    # ------------------------------------------------------------------ the edit log
    @property
    def edit_log(self) -> list[dict]:
        """Every edit since the session was made, in order, as JSON-able dicts: {"op": "add", "prompt":
        ObjectPrompt.to_dict(), "replace"}, {"op": "set", "frame", "obj_id", "prompt": dict | None}, {"op": "clear",
        "frame", "obj_id"}, {"op": "remove", "obj_id"}, {"op": "reset"}, {"op": "object", "obj_id", "parent", "start"},
        {"op": "end", "obj_id", "last_frame"}, {"op": "edge", "z_edge"} (`axial_edge`) and {"op": "pass", "first", "last",
        "reverse", "frames"} (a propagation pass over frames first…last, of which `frames` were processed before
        it ended or was stopped). SAM 2's memory makes a result depend on the order of prompts and passes, not only
        on the prompts, so `napari_sam2.replay` re-runs this log to reproduce a session bit for bit (same thread
        count). A copy, without passes of no frame (they replay as nothing: e.g. the rest of a pass between two edits
        discovery made on one frame, or a pass stopped before its first frame)."""
        with self._lock:
            return [dict(entry) for entry in self._log if entry["op"] != "pass" or entry["frames"]]

    def _record(self, entry: dict) -> dict:
        if self._quiet:
            return entry
        self._log.append(entry)
        active = self._pass
        if entry["op"] != "pass" and active is not None and active["done"] < len(active["order"]):
            # an edit between two frames of a pass (e.g. discovery adds an object): the rest of the pass is logged
            # as a pass of its own after the edit, so a replay makes the edit at the same point
            order = active["order"]
            active["entry"] = {"op": "pass", "first": order[active["done"]], "last": order[-1],
                               "reverse": active["reverse"], "frames": 0}  # fmt: skip
            self._log.append(active["entry"])
        return entry

    class _Quiet:
        def __init__(self, session):
            self.session = session

        def __enter__(self):
            self.session._quiet += 1

        def __exit__(self, *exc):
            self.session._quiet -= 1

    def _open_embedding_cache(self, cache_dir) -> EmbeddingStore:
        f = self.frames
        key_parts = {
            "model": model_fingerprint(self.model),
            "image_size": self.model.image_size,
            "precision": self.precision,
            "stack": {"shape": list(f.stack.shape), "dtype": str(getattr(f.stack, "dtype", "")), "axis": f.axis},
            "channel": [f.channel, f.channel_axis],
            "intensity": None if f.intensity is None else [float(f.intensity.low), float(f.intensity.high)],
            "preprocessed": f.preprocessed,
        }
        if f.contrast.name != "global":  # features made with another contrast step; "global" keeps older caches' key
            key_parts["contrast"] = f.contrast.record()
        f.digests = True
        return EmbeddingStore.open(cache_dir, key_parts, len(f))

    def _features(self, frame: int, upcoming: list[int] = ()) -> ImageFeatures:
        """Features of `frame`: from the in-memory LRU, else the disk cache, else the image encoder."""
        feats = self.features.get(frame)
        if feats is None:
            x, digest = self.frames.model_input_and_digest(frame, upcoming)
            if self.embeddings is not None:
                feats = self.embeddings.get(frame, digest)
            if feats is not None:
                feats = feats.to(self.device, non_blocking=True)
            else:
                with torch.inference_mode(), autocast_context(self.device, self.precision):
                    feats = self.model.encode_image(x[None].to(self.device, non_blocking=True))
                self.encoder_runs += 1
                if self.embeddings is not None:
                    self.embeddings.put(frame, digest, feats)
            self.features.put(frame, feats)
        return feats

    def encode_frames(self, frames=None, progress=None) -> None:
        """Encode frames ahead of prompting (the widget does this in the background). progress(i, n)."""
        frames = list(range(len(self.frames))) if frames is None else list(frames)
        for i, frame in enumerate(frames):
            with self._lock:
                self._features(frame, frames[i + 1 : i + 3])
            if progress is not None:
                progress(i + 1, len(frames))

    # ------------------------------------------------------------------ prompts
    @property
    def obj_ids(self) -> list[int]:
        return list(self.objects)

    def _object(self, obj_id: int, create: bool = False) -> ObjectTrack:
        _check_obj_id(obj_id)
        obj_id = int(obj_id)
        if obj_id not in self.objects:
            if not create:
                raise InputError(f"unknown object id {obj_id}; known objects: {self.obj_ids or 'none yet'}")
            self.objects[obj_id] = ObjectTrack(obj_id)
        return self.objects[obj_id]

    # ------------------------------------------------------------------ lineage
    def add_object(self, obj_id: int, parent: int | None = None, start: int | None = None) -> None:
        """Declare object `obj_id` (before prompting it) with its lineage.

        parent: the mother's object id when `obj_id` is a daughter of a division (the mother must be known).
        start: the first frame the object exists on (a daughter: the frame after the mother's last); propagation
        never tracks it before that frame, in either direction. None: no bound. On an existing object both are
        updated. Prompt it afterwards with `add_prompt` (a new object on its start frame: a mask prompt).
        """
        with self._lock:
            if parent is not None:
                parent = int(self._object(parent).obj_id)
                if parent == int(obj_id):
                    raise InputError(f"object {obj_id} cannot be its own parent")
            if start is not None:
                self.frames.check_index(start)
            obj = self._object(obj_id, create=True)
            self._record({"op": "object", "obj_id": int(obj_id), "parent": parent, "start": start and int(start)})
            obj.parent = parent
            obj.first = None if start is None else int(start)
            for frame in [f for f in list(obj.tracked) + list(obj.cond) if not obj.alive(f)]:
                self._drop_output(obj, frame)

    def end_object(self, obj_id: int, last_frame: int) -> None:
        """The object exists up to `last_frame` (inclusive) and no longer: e.g. a mother that divides between
        `last_frame` and the next frame. Its outputs and prompts after `last_frame` are dropped and propagation
        never tracks it there again. `last_frame` = -1 … the object's whole past is dropped."""
        with self._lock:
            obj = self._object(obj_id)
            if last_frame >= 0:
                self.frames.check_index(last_frame)
            self._record({"op": "end", "obj_id": int(obj_id), "last_frame": int(last_frame)})
            obj.last = int(last_frame)
            for frame in [f for f in list(obj.tracked) + list(obj.cond) + list(obj.prompts) if not obj.alive(f)]:
                self._drop_output(obj, frame)

    def _drop_output(self, obj: ObjectTrack, frame: int) -> None:
        obj.tracked.pop(frame, None)
        obj.cond.pop(frame, None)
        obj.prompts.pop(frame, None)
        obj.visited.pop(frame, None)
        obj.stale.discard(frame)
        obj.holding_memory.discard(frame)
        obj.holding_pointer.discard(frame)
        self._forget_result(obj.obj_id, frame)

    @property
    def parents(self) -> dict[int, int]:
        """{daughter object id: mother object id} for every object with a parent (the lineage of divisions)."""
        return {o.obj_id: o.parent for o in self.objects.values() if o.parent is not None}

    def span(self, obj_id: int) -> tuple[int | None, int | None]:
        """(first, last) frame the object exists on, as declared by `add_object` / `end_object` (None: unbounded)."""
        obj = self._object(obj_id)
        return obj.first, obj.last

    def add_prompt(
        self,
        frame: int,
        obj_id: int,
        points=None,
        labels=None,
        box=None,
        mask=None,
        replace: bool = False,
    ) -> FrameResult:
        """Prompt object `obj_id` on `frame` and return that frame's result at once.

        points [[y, x], …] with labels (1 object / 0 background, default 1) are added to the frame's earlier
        clicks (replace=True starts over); box [y0, x0, y1, x1] replaces the frame's box; mask [H, W] bool
        replaces all prompts of the frame. Only the decoder runs when the frame's features are cached.
        """
        prompt = make_prompt(frame, obj_id, points, labels, box, mask, where=f"object {obj_id} on frame {frame}")
        return self.add(prompt, replace=replace)

    def add(self, prompt: ObjectPrompt, replace: bool = False) -> FrameResult:
        """Apply one `ObjectPrompt` (what `add_prompt` builds; `PromptSet.apply` sends each of its prompts here):
        its points join the object's earlier clicks on that frame (replace=True starts over), its box replaces the
        frame's box, a mask replaces every prompt of the frame. Checked first (`ObjectPrompt.check`): a bad prompt
        changes nothing. Returns the frame's result."""
        prompt.check(self.frame_shape, len(self.frames))
        frame = int(prompt.frame)
        with self._lock, torch.inference_mode():
            self._features(frame)  # loads the frame (needed by the prompt anyway) and notes whether it is constant
            self.frames.check_promptable(frame)
            created = int(prompt.obj_id) not in self.objects
            obj = self._object(prompt.obj_id, create=True)
            if not obj.alive(frame):
                raise InputError(
                    f"object {obj.obj_id} exists on frames {obj.first if obj.first is not None else 0}…"
                    f"{obj.last if obj.last is not None else len(self.frames) - 1} only (its lineage); frame {frame} "
                    "lies outside: prompt a new object there instead"
                )
            old = obj.prompts.get(frame)
            if prompt.mask is not None or old is None or old.mask is not None or replace:
                merged = ObjectPrompt(obj.obj_id, frame, np.zeros((0, 2)), np.zeros((0,), dtype=np.int32))
            else:
                merged = ObjectPrompt(obj.obj_id, frame, old.points.copy(), old.labels.copy(), old.box)
            if prompt.mask is not None:
                merged.mask = np.asarray(prompt.mask, dtype=bool)
            if len(prompt.points):
                merged.points = np.concatenate([merged.points.reshape(-1, 2), np.asarray(prompt.points, float)])
                merged.labels = np.concatenate([merged.labels, prompt.labels]).astype(np.int32)
            if prompt.box is not None:
                merged.box = np.asarray(prompt.box, dtype=float)
            obj.prompts[frame] = merged
            try:
                self._run_prompt(obj, frame, merged)
                result = self._result(frame, computed=[obj.obj_id])
            except BaseException:  # a failed call leaves the session as it was
                if created:
                    self.objects.pop(obj.obj_id, None)
                elif old is None:
                    obj.prompts.pop(frame, None)
                else:
                    obj.prompts[frame] = old
                raise
            self._record({"op": "add", "prompt": prompt.to_dict(), "replace": bool(replace)})  # logged once it worked
            return result

    def set_prompt(self, frame: int, obj_id: int, prompt: ObjectPrompt | None) -> list[FrameResult]:
        """Make `prompt` the whole of object `obj_id`'s prompts on `frame` (None: remove them), e.g. after a click was
        deleted or moved in the widget. An object no propagation has passed starts over from its prompts (they are
        all initial conditioning frames, independent of each other); otherwise the frame's prompt is replaced as a
        correction. Returns the results of the frames whose output changed."""
        frame, obj_id = int(frame), int(obj_id)
        if prompt is not None:
            if (int(prompt.frame), int(prompt.obj_id)) != (frame, obj_id):
                raise InputError(
                    f"the prompt is for object {prompt.obj_id} on frame {prompt.frame}, not {obj_id} on {frame}"
                )
            prompt.check(self.frame_shape, len(self.frames))
        with self._lock:
            with self._Quiet(self):
                results = self._set_prompt(frame, obj_id, prompt)
            self._record({"op": "set", "frame": frame, "obj_id": obj_id, "prompt": prompt and prompt.to_dict()})
            return results

    def _set_prompt(self, frame: int, obj_id: int, prompt: ObjectPrompt | None) -> list[FrameResult]:
        obj = self.objects.get(obj_id)
        if obj is None:
            return [] if prompt is None else [self.add(prompt)]
        if not obj.visited:
            others = [p for f, p in obj.prompts.items() if f != frame]
            self.remove_object(obj_id)
            for p in others:
                self.add(p)
            if prompt is not None:
                self.add(prompt)
            return [self.result(f) for f in sorted({frame, *(p.frame for p in others)})]
        self.clear_prompts(frame, obj_id)
        if prompt is not None:
            self.add(prompt, replace=True)
        return [self.result(frame)]

    def prompts_of(self, obj_id: int) -> dict[int, ObjectPrompt]:
        """{frame: the object's current prompt there} (copies)."""
        with self._lock:
            obj = self._object(obj_id)
            return {
                f: ObjectPrompt(p.obj_id, f, p.points.copy(), p.labels.copy(), p.box, p.mask)
                for f, p in obj.prompts.items()
            }

    def is_encoded(self, frame: int) -> bool:
        """Whether `frame`'s image features are in memory (a prompt there then runs only the decoder)."""
        return frame in self.features

    def has_propagated(self, obj_id: int) -> bool:
        """Whether any propagation has passed over object `obj_id` (its prompts then are corrections)."""
        with self._lock:
            obj = self.objects.get(int(obj_id))
            return obj is not None and bool(obj.visited)

    def visited_frames(self, obj_id: int) -> dict[int, str]:
        """{frame: "forward" | "backward"}: the frames a propagation has passed for `obj_id`, and in which direction."""
        with self._lock:
            obj = self._object(obj_id)
            return {f: ("backward" if rev else "forward") for f, rev in obj.visited.items()}

    def _run_prompt(self, obj: ObjectTrack, frame: int, prompt: ObjectPrompt) -> None:
        """The official add_new_points_or_box / add_new_mask step for one object.

        A frame no propagation has visited is an initial conditioning frame (no memory). On a visited frame
        the prompt is a correction: the frame is conditioned on the object's memory bank in the direction it
        was tracked, and its previous mask logits join the clicks as a mask prompt.
        """
        is_first = frame not in obj.visited
        reverse = False if is_first else obj.visited[frame]
        previous = obj.output(frame)
        feats = self._features(frame)
        memory_logits = None
        with autocast_context(self.device, self.precision):
            if prompt.mask is not None:
                mask = torch.from_numpy(prompt.mask).float()[None, None].to(self.device)
                size = self.model.image_size
                if mask.shape[-2:] != (size, size):
                    mask = F.interpolate(mask, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
                    mask = (mask >= 0.5).float()
                out = self.model.mask_as_output(feats, mask)
                logits = out.logits.float()
                pointer, score, iou = out.object_pointer, out.object_score, out.reported_iou
            else:
                coords, labels = self._prompt_points(prompt)
                # the click rule's level: a dim clicked object is decoded from the frame brought up to its level
                seen, grey, own_grey = self._clicked_view(frame, feats, coords, labels, raise_level=is_first)
                if is_first:
                    embedding = self.model.image_embedding(seen)
                else:
                    embedding = self._conditioned(obj, frame, feats, reverse)
                prev_logits = None
                if previous is not None and previous.logits is not None:
                    prev_logits = previous.logits.clamp(-PROMPT_LOGIT_CLAMP, PROMPT_LOGIT_CLAMP)
                one_click = prompt.box is None and prompt.num_points == 1 and int(prompt.labels[0]) == 1
                if is_first and one_click and prev_logits is None:  # a first click: as every face decodes it
                    if grey is None and self.model.mask_refiner is not None:
                        grey = ClickRule.grey(self.frames.model_input(frame))  # (a rule that reads no image)
                    first = decode_first_click(self.model, self.click_rule, embedding, seen.high_res, coords, grey,
                                               own_grey, every_candidate=False)  # fmt: skip
                    logits = first.chosen("logits")
                    if self.model.mask_refiner is not None:
                        # the object's memory is encoded from the network's own mask, as without a refiner (from the
                        # refined one, tracking fell: tuning bench_nano 0.852 -> 0.832; model/README.md, "The mask
                        # refiner")
                        memory_logits = fill_holes(first.chosen("unrefined"), self.fill_hole_area)
                    pointer, score, iou = first.object_pointer, first.object_score, first.chosen("reported")
                else:
                    out = self.model.decode(
                        embedding,
                        seen.high_res,
                        coords,
                        labels,
                        mask_prompt=prev_logits,
                        multimask=prompt.num_points <= 1,  # one click (or none) is ambiguous: best of three
                    )
                    # read on the frame the mask was decoded from (grey), and on the frame as it is (own_grey)
                    logits, changed = self.click_rule.steps(
                        out.logits.float(), grey, own_grey, *(t[0].cpu().numpy() for t in (coords, labels)),
                        self.model.image_size,
                    )  # fmt: skip
                    if changed and out.quality is not None:  # the head's estimate is of the mask that is kept
                        quality = self.model.mask_quality(logits, seen.high_res, coords, labels, self.model.image_size)
                        out = replace(out, quality=quality.to(out.iou.dtype))
                    pointer, score, iou = out.object_pointer, out.object_score, out.reported_iou
        result = FrameOutput(
            logits=fill_holes(logits, self.fill_hole_area),
            memory=None,
            pointer=pointer.float(),
            score=score.float(),
            iou=float(iou.float().flatten()[0]),
            pending_memory=True,
            memory_logits=memory_logits,
        )
        self._forget_result(obj.obj_id, frame)
        if is_first or self.sticky_corrections:
            obj.tracked.pop(frame, None)
            obj.cond[frame] = result
            if not is_first:
                self._invalidate_after_prompt(obj, frame)
        else:  # parity: a correction is a non-conditioning output, recomputed by the next pass over it
            obj.tracked[frame] = result
            self._remember_result(obj.obj_id, frame, result)
        obj.stale.discard(frame)
        self._pending = True

    def _clicked_view(
        self, frame: int, feats: ImageFeatures, coords: torch.Tensor, labels: torch.Tensor, raise_level: bool
    ) -> tuple[ImageFeatures, np.ndarray | None, np.ndarray | None]:
        """(the features a click prompt is decoded from, the grey [S, S] of that model input in [0, 1], the grey of
        the frame as it is; both None when the click rule reads no image). The frame's own features `feats`, or — on
        a first prompt (`raise_level`) whose clicked object the rule raises (`ClickRule.gain` > 1) — those of the
        frame times that gain, encoded once for this prompt and not cached (the frame's memory and every tracked
        frame use the frame's own)."""
        if not self.click_rule.reads_image:
            return feats, None, None
        raised, grey, own_grey = self.click_rule.clicked_input(
            self.frames.model_input(frame), coords[0].cpu().numpy(), labels[0].cpu().numpy(), raise_level,
            local_view=lambda: self.frames.local_view_input(frame),
        )  # fmt: skip
        if raised is None:
            return feats, grey, own_grey
        with torch.inference_mode(), autocast_context(self.device, self.precision):
            gained = self.model.encode_image(raised[None].to(self.device))
        self.encoder_runs += 1
        return gained, grey, own_grey

    def _prompt_points(self, prompt: ObjectPrompt):
        size = self.model.image_size
        coords, labels = [], []
        if prompt.box is not None:
            coords.append(box_to_model(prompt.box, self.frame_shape, size))
            labels.append(np.array([2, 3], dtype=np.int32))
        if len(prompt.points):
            coords.append(points_to_model(prompt.points, self.frame_shape, size))
            labels.append(prompt.labels.astype(np.int32))
        c = torch.from_numpy(np.concatenate(coords))[None].to(self.device)
        lab = torch.from_numpy(np.concatenate(labels))[None].to(self.device)
        return c, lab

    def _invalidate_after_prompt(self, obj: ObjectTrack, frame: int) -> None:
        """A new conditioning frame makes stale the frames whose memory chain runs through it."""
        later = [c for c in obj.cond if c > frame]
        earlier = [c for c in obj.cond if c < frame]
        stop_fwd = min(later) if later else self.num_frames
        stop_rev = max(earlier) if earlier else -1
        for f in obj.tracked:
            reverse = obj.visited.get(f, False)
            if (frame < f < stop_fwd and not reverse) or (stop_rev < f < frame and reverse):
                obj.stale.add(f)

    def clear_prompts(self, frame: int, obj_id: int) -> None:
        """Remove the prompts of `obj_id` on `frame`; its result there reverts to a tracked (stale) frame."""
        with self._lock:
            obj = self._object(obj_id)
            self._record({"op": "clear", "frame": int(frame), "obj_id": int(obj_id)})
            obj.prompts.pop(frame, None)
            tracked = obj.tracked.get(frame)
            if tracked is not None and tracked.pending_memory:
                del obj.tracked[frame]
            out = obj.cond.pop(frame, None)
            if out is not None:  # as the official: the output stays as a tracked one, the frame unvisited
                out.pending_memory, out.memory_logits = False, None
                obj.tracked[frame] = out
                obj.holding_memory.add(frame)
                obj.holding_pointer.add(frame)
                obj.visited.pop(frame, None)
                obj.stale.add(frame)
                self._invalidate_after_prompt(obj, frame)

    def remove_object(self, obj_id: int) -> None:
        """Forget an object; daughters of it lose their parent (they stay, as objects without a mother)."""
        with self._lock:
            self._object(obj_id)
            self._record({"op": "remove", "obj_id": int(obj_id)})
            del self.objects[int(obj_id)]
            if self._edge is not None:
                self._edge.forget(int(obj_id))
            for other in self.objects.values():
                if other.parent == int(obj_id):
                    other.parent = None
            for key in [k for k in self._result_lru if k[0] == int(obj_id)]:
                self._result_bytes -= self._result_lru.pop(key)

    def reset(self) -> None:
        """Forget all objects and prompts (image features stay cached)."""
        with self._lock:
            self._record({"op": "reset"})
            self.objects.clear()
            if self._edge is not None:
                self._edge.forget()
            self._result_lru.clear()
            self._result_bytes = 0
            self._upsampled = (-1, {})

    # ------------------------------------------------------------------ memory
    def _conditioned(self, obj_or_objs, frame: int, feats: ImageFeatures, reverse: bool) -> torch.Tensor:
        """Memory-conditioned embedding [B, d, h, w] for one object (or several with the same bank layout)."""
        objs = obj_or_objs if isinstance(obj_or_objs, list) else [obj_or_objs]
        banks = [self._memory_bank(o, frame, reverse) for o in objs]
        memories = [
            Memory(torch.cat([b[0][i][1] for b in banks], dim=0), banks[0][0][i][0]) for i in range(len(banks[0][0]))
        ]
        pointers = [
            Pointer(torch.cat([b[1][i][1] for b in banks], dim=0), banks[0][1][i][0]) for i in range(len(banks[0][1]))
        ]
        batch = feats.select([0] * len(objs))
        scale = max_pointer_distance(self.num_frames, self.cfg.max_obj_ptrs_in_encoder)
        return self.model.condition_on_memory(batch, memories, pointers, scale)

    def _memory_bank(self, obj: ObjectTrack, frame: int, reverse: bool):
        """The official memory selection for `obj` at `frame` → ([(tpos index, memory)], [(distance, pointer)]),
        laid out by model/memory_bank.py (as model/train_nano.py lays it out in training)."""
        nmem = self.cfg.num_maskmem
        cond_index = conditioning_memory_index(nmem)
        conds = self._attended_conditioning(obj, frame)
        memories = [(cond_index, out.memory) for out in conds.values() if out.memory is not None]
        for index, source in recent_memory_frames(frame, reverse, nmem):
            out = obj.tracked.get(source)
            if out is not None and out.memory is not None:
                memories.append((index, out.memory))
        signed = self.cfg.use_signed_tpos_enc_to_obj_ptrs
        pointers = []
        for t, out in conds.items():
            distance = conditioning_pointer_distance(frame, t, reverse, signed)
            if distance is not None:
                pointers.append((distance, out.pointer))
        reach = pointer_reach(self.num_frames, self.cfg.max_obj_ptrs_in_encoder)
        for distance, source in recent_pointer_frames(frame, reverse, reach, self.num_frames):
            out = obj.tracked.get(source)
            if out is not None and out.pointer is not None:
                pointers.append((distance, out.pointer))
        return memories, pointers

    def _attended_conditioning(self, obj: ObjectTrack, frame: int) -> dict:
        """The conditioning frames `frame` attends to: all of them, or with `max_cond_frames` = k (≥ 2) the nearest
        one before `frame`, the nearest one at or after it and then the nearest others, k in all (the official
        max_cond_frames_in_attn rule), in the order they were prompted."""
        cap = self.max_cond_frames
        if not cap or len(obj.cond) <= cap:
            return obj.cond
        chosen = set()
        before = [t for t in obj.cond if t < frame]
        after = [t for t in obj.cond if t >= frame]
        if before:
            chosen.add(max(before))
        if after:
            chosen.add(min(after))
        rest = sorted((t for t in obj.cond if t not in chosen), key=lambda t: (abs(t - frame), t))
        chosen.update(rest[: max(0, cap - len(chosen))])
        return {t: out for t, out in obj.cond.items() if t in chosen}

    def _bank_signature(self, obj: ObjectTrack, frame: int, reverse: bool):
        mems, ptrs = self._memory_bank(obj, frame, reverse)
        return tuple(i for i, _ in mems), tuple(d for d, _ in ptrs)

    def _preflight(self) -> None:
        """Before a pass (official propagate_in_video_preflight): encode the memories of prompted frames from
        their stored low-res logits (upsampled, binarised), and drop tracked outputs of conditioning frames."""
        size = self.model.image_size
        for obj in self.objects.values():
            for frame, out in list(obj.tracked.items()) + list(obj.cond.items()):
                if out.pending_memory:
                    feats = self._features(frame)
                    source = out.logits if out.memory_logits is None else out.memory_logits
                    high = F.interpolate(source, size=(size, size), mode="bilinear", align_corners=False)
                    with autocast_context(self.device, self.precision):
                        memory = self.model.encode_memory(feats, high, out.score, binarize=True)
                    out.memory = memory.to(torch.bfloat16)
                    out.pending_memory, out.memory_logits = False, None
            for frame in obj.cond:
                if obj.tracked.pop(frame, None) is not None:
                    self._forget_result(obj.obj_id, frame)
        self._pending = False

    def _prune(self, obj: ObjectTrack, frame: int, reverse: bool) -> None:
        """Drop the memories and pointers of tracked frames that neither the rest of this pass nor a later pass
        starting at a conditioning frame can attend to (model/memory_bank.py `outside_reach`): memories
        num_maskmem − 1 or more frames behind the current frame, pointers 15 (or the pointer reach − 1, if longer)
        or more, and as far from every conditioning frame.

        Only the passes of the current prompts are foreseen: a correction made later on a tracked frame reads that
        frame's bank (and the pass after it the banks next to it), and a pass in the other direction that starts
        on frames already tracked (an object tracked forwards from before its own first prompt, because another
        object starts earlier) reads theirs; what was dropped there is missing, so those results differ from
        keeping everything (the "parity" preset keeps everything, as the official predictor does). Replaying the
        same edits drops the same entries: the results are reproducible."""
        if self.keep_all_memories:
            return
        memory_slots = self.cfg.num_maskmem - 1
        # 15 even where the config reaches less far (nano-fluo: 7): corrections read what is kept (see above)
        pointer_slots = max(POINTERS_KEPT, max_pointer_distance(self.num_frames, self.cfg.max_obj_ptrs_in_encoder))
        conds = list(obj.cond)
        for holding, slots, attr in (
            (obj.holding_memory, memory_slots, "memory"),
            (obj.holding_pointer, pointer_slots, "pointer"),
        ):
            for f in [f for f in holding if outside_reach(f, frame, reverse, conds, slots, self.num_frames)]:
                holding.discard(f)
                if f in obj.tracked:
                    setattr(obj.tracked[f], attr, None)

    # ------------------------------------------------------------------ results kept for corrections
    def _remember_result(self, obj_id: int, frame: int, out: FrameOutput) -> None:
        key = (obj_id, frame)
        size = out.logits.numel() * out.logits.element_size()
        self._forget_result(obj_id, frame)
        self._result_lru[key] = size
        self._result_bytes += size
        while self._result_bytes > self.result_cache_bytes and self._result_lru:
            (oid, f), nbytes = self._result_lru.popitem(last=False)
            self._result_bytes -= nbytes
            victim = self.objects.get(oid)
            if victim is not None and f in victim.tracked:
                victim.tracked[f].logits = None

    def _forget_result(self, obj_id: int, frame: int) -> None:
        nbytes = self._result_lru.pop((obj_id, frame), None)
        if nbytes is not None:
            self._result_bytes -= nbytes

    # ------------------------------------------------------------------ propagation
    def propagate(
        self, direction: str = "forward", start: int | None = None, stop: int | None = None, every_frame: bool = False
    ):
        """Track every object frame by frame; a generator of `FrameResult`.

        direction: "forward", "backward" or "both" (forward, then backward from the same start).
        start: first frame (default: the earliest prompted frame of any object); stop: last frame, inclusive
        (default: the stack's end in that direction). Stopping the generator between two frames (cancel)
        leaves every finished frame valid. In the default preset, frames that no prompt has made stale are
        skipped (nothing to recompute), prompted frames are yielded from their prompt. every_frame: yield those
        skipped frames too, from the outputs already held (discovery reads every frame of a pass, also when a
        movie tracked before is propagated again with discovery on).
        """
        if direction not in ("forward", "backward", "both"):
            raise InputError(f"direction must be 'forward', 'backward' or 'both'; got {direction!r}")
        with self._lock:
            if not self.objects:
                raise InputError("nothing to propagate: add a prompt (points, box or mask) on some frame first")
            missing = [o.obj_id for o in self.objects.values() if not o.cond and not o.prompts and o.last is None]
            if missing:
                raise InputError(f"objects {missing} have no prompt on any frame; prompt them or remove them")
            if start is None:
                conds = [f for o in self.objects.values() for f in o.cond]
                if not conds:
                    raise InputError("nothing to propagate: no object has a prompted frame left")
                start = min(conds)
            self.frames.check_index(start)
            if stop is not None:
                self.frames.check_index(stop)
            if direction == "both" and stop is not None:
                raise InputError("stop applies to one direction: propagate 'forward' and 'backward' separately")
        last = len(self.frames) - 1
        passes = []
        if direction in ("forward", "both"):
            passes.append((list(range(start, (last if stop is None else stop) + 1)), False))
        if direction in ("backward", "both") and start > 0:  # the official skips a reverse pass from frame 0
            passes.append((list(range(start, (0 if stop is None else stop) - 1, -1)), True))
        for order, reverse in passes:
            yield from self._propagate_pass(order, reverse, every_frame)

    def propagate_pass(self, first: int, last: int, reverse: bool, frames: int | None = None):
        """One propagation pass over first…last (inclusive; last < first when `reverse`), stopping after `frames`
        of them (default all): what `propagate` runs, and what an edit log's "pass" entries replay. A generator of
        `FrameResult`, as `propagate`."""
        self.frames.check_index(first)
        self.frames.check_index(last)
        if (last < first) != bool(reverse) and first != last:
            raise InputError(f"a {'backward' if reverse else 'forward'} pass cannot run from {first} to {last}")
        step = -1 if reverse else 1
        order = list(range(first, last + step, step))
        if frames is not None:
            order = order[: int(frames)]
        if not order:
            return
        yield from self._propagate_pass(order, bool(reverse))

    def _propagate_pass(self, order: list[int], reverse: bool, every_frame: bool = False):
        with self._lock, torch.inference_mode():
            entry = self._record({"op": "pass", "first": order[0], "last": order[-1], "reverse": reverse, "frames": 0})
            state = {"entry": entry, "order": order, "reverse": reverse, "done": 0}
            self._pass = state
            self._preflight()
        try:
            yield from self._pass_frames(order, reverse, state, every_frame)
        finally:
            # A cancelled generator may be closed only when it is garbage-collected, after a newer pass began:
            # clear the marker only if it is still this pass's.
            if self._pass is state:
                self._pass = None

    def _pass_frames(self, order: list[int], reverse: bool, state: dict, every_frame: bool = False):
        for i, frame in enumerate(order):
            with self._lock, torch.inference_mode():
                if self._pending:  # prompted between two frames of this pass (e.g. discovery added an object)
                    self._preflight()
                todo = [
                    o
                    for o in self.objects.values()
                    if frame not in o.cond
                    and o.alive(frame)
                    and (o.cond or o.tracked)
                    and (self.recompute_all or frame not in o.tracked or frame in o.stale)
                ]
                has_cond = any(frame in o.cond for o in self.objects.values())
                if todo:
                    self._track_frame(frame, todo, reverse, order[i + 1 : i + 3])
                for o in self.objects.values():
                    if o.alive(frame):
                        o.visited[frame] = reverse
                # counted before the yield: a consumer that stops there has this frame
                state["entry"]["frames"] += 1
                state["done"] = i + 1
                if not todo and not has_cond and not self.recompute_all and not every_frame:
                    continue  # nothing changed on this frame
                result = self._result(frame, computed=[o.obj_id for o in todo])
            yield result

    def _track_frame(self, frame: int, objects: list[ObjectTrack], reverse: bool, upcoming: list[int]) -> None:
        """One frame for several objects: shared encoder pass, batched where the memory banks line up."""
        feats = self._features(frame, upcoming)
        groups: dict[tuple, list[ObjectTrack]] = {}
        for obj in objects:
            groups.setdefault(self._bank_signature(obj, frame, reverse), []).append(obj)
        size = self.object_batch
        batches = [g[i : i + size] for g in groups.values() for i in range(0, len(g), size)]
        for group in batches:
            with autocast_context(self.device, self.precision):
                embedding = self._conditioned(group, frame, feats, reverse)
                batch = feats.select([0] * len(group))
                # tracked frames report the IoU token's number (below), so the mask-quality head is not run there
                out = self.model.decode(embedding, batch.high_res, multimask=True, quality=False)
                high = self.model.upsample_logits(out.logits)
                memory = self.model.encode_memory(batch, high, out.object_score, binarize=False)
            logits = fill_holes(out.logits.float(), self.fill_hole_area)
            if self._mends_tracked:
                logits = self._mended(frame, logits, batch.high_res)
            for k, obj in enumerate(group):
                result = FrameOutput(
                    logits=logits[k : k + 1],
                    memory=memory[k : k + 1].to(torch.bfloat16),  # stored in bf16, as the official does
                    pointer=out.object_pointer[k : k + 1].float(),
                    score=out.object_score[k : k + 1].float(),
                    # tracked frames keep the IoU token's number: the mask-quality head was trained on prompted
                    # frames and on tracked ones reported worse (mean |err| 0.24 vs 0.09, bench_nano, model/README.md)
                    iou=float(out.iou[k].float()),
                )
                obj.tracked[frame] = result
                obj.holding_memory.add(frame)
                obj.holding_pointer.add(frame)
                obj.stale.discard(frame)
                self._remember_result(obj.obj_id, frame, result)
                self._prune(obj, frame, reverse)

    @property
    def _mends_tracked(self) -> bool:
        """Tracked masks get the click rule's extent step and the mask refiner (`ClickRule.through_z`, z streams)."""
        return self.z_stream and self.click_rule.through_z and not self.frames.preprocessed

    def _mended(self, frame: int, logits: torch.Tensor, high_res: list[torch.Tensor]) -> torch.Tensor:
        """The tracked masks' logits [B, 1, h, w] of one frame (their memory already encoded from the network's own)
        → each mended as a z stream's (`ClickRule.mend_tracked`): shown, saved and handed to a later correction."""
        grey = ClickRule.grey(self.frames.model_input(frame))
        grey_t = ClickRule.grey_tensor(grey)
        mended = logits.clone()
        with autocast_context(self.device, self.precision):
            for k in range(logits.shape[0]):
                maps = [h[k : k + 1] for h in high_res]
                refine = None
                if self.model.mask_refiner is not None:
                    refine = lambda lg, maps=maps: self.model.refine_click_mask(lg, grey_t, maps).float()
                mended[k : k + 1] = self.click_rule.mend_tracked(logits[k : k + 1], grey, refine)
        return mended

    # ------------------------------------------------------------------ results
    def _result(self, frame: int, computed: list[int]) -> FrameResult:
        ids, lows, scores, ious, evicted = [], [], [], [], []
        for obj in self.objects.values():
            out = obj.output(frame)
            if out is None or out.logits is None:
                if out is not None:
                    evicted.append(obj.obj_id)
                continue
            ids.append(obj.obj_id)
            lows.append(out.logits)
            scores.append(float(out.score.flatten()[0]))
            ious.append(out.iou)
        h, w = self.frame_shape
        logits = self._frame_logits(frame, ids, lows)
        if self._edge is not None:  # the axial edge rule (`axial_edge`): what it trims, and what it trimmed
            self._edge.note(frame, ids, logits, computed)
            logits = self._edge.shown(frame, ids, logits)
        masks = logits > 0
        labels = np.zeros((h, w), dtype=np.uint32)
        if ids:
            # the object with the highest logit wins a pixel some object holds: argmax over the held pixels only
            # (numpy's argmax across the object axis of the whole frame strides through memory: several times
            # slower; the same first-maximum rule, so the same labels)
            held = np.flatnonzero(masks.any(axis=0))
            best = np.argmax(logits.reshape(len(ids), h * w)[:, held], axis=0)
            labels.reshape(-1)[held] = np.asarray(ids, dtype=np.uint32)[best]
        return FrameResult(
            frame=frame,
            obj_ids=ids,
            logits=logits.astype(np.float32, copy=False),
            masks=masks,
            labels=labels,
            scores=np.asarray(scores, dtype=np.float32),
            ious=np.asarray(ious, dtype=np.float32),
            computed=list(computed),
            evicted=evicted,
        )

    def _frame_logits(self, frame: int, ids: list[int], lows: list[torch.Tensor]) -> np.ndarray:
        """The objects' low-res logits [1, 1, h', w'] each → [K, H, W] float32 at the frame's size, reusing the
        resize of an object whose logits tensor is the one resized on the last call for this frame."""
        h, w = self.frame_shape
        if not ids:
            self._upsampled = (frame, {})
            return np.zeros((0, h, w), dtype=np.float32)
        known = self._upsampled[1] if self._upsampled[0] == frame else {}
        rows: list[np.ndarray | None] = []
        todo = []
        for k, (obj_id, low) in enumerate(zip(ids, lows, strict=True)):
            hit = known.get(obj_id)
            rows.append(hit[1] if hit is not None and hit[0] is low else None)
            if rows[-1] is None:
                todo.append(k)
        if todo:
            fresh = self.model.upsample_logits(torch.cat([lows[k] for k in todo], dim=0), (h, w))[:, 0].cpu().numpy()
            for k, row in zip(todo, fresh, strict=True):
                rows[k] = row
        self._upsampled = (frame, {obj_id: (low, row) for obj_id, low, row in zip(ids, lows, rows, strict=True)})
        return np.stack(rows).astype(np.float32, copy=False)

    def result(self, frame: int) -> FrameResult:
        """The stored result of `frame` (objects whose logits are no longer retained are left out)."""
        self.frames.check_index(frame)
        with self._lock:
            return self._result(frame, computed=[])

    def axial_edge(self, z_edge: float | None = None, background: float | None = None) -> Iterator[FrameResult]:
        """The axial edge rule (`napari_sam2.volume`) on every object's whole 3-D mask: → an iterator of a
        `FrameResult` for every slice an object has an output on (the rule runs at the call; each slice's arrays are
        made as it is asked for), each object's mask ended in z where the image falls below `z_edge`
        (default the session's) of the brightest voxel of each (y, x) column inside it; slices the object is
        prompted on are kept as drawn; background: the percentile of the ring around the mask taken as a slice's
        background (default the session's `z_edge_background`). Call it once a propagation has run to its end and
        write the results over the slices (a face does this after its passes, `track()` before its tables). Logged
        ({"op": "edge", "z_edge", "background"}), so a replay applies it at the same point. Needs a session made
        with `z_edge` (the notes start then)."""
        with self._lock:
            if self._edge is None:
                raise InputError(
                    "the axial edge rule needs a session made with z_edge (a stack whose stream axis is z): "
                    "TrackingSession(..., z_edge=napari_sam2.volume.Z_EDGE)"
                )
            fraction = self.z_edge if z_edge is None else float(z_edge)
            background = self.z_edge_background if background is None else float(background)
            results = self._edge.results(self, fraction, background)
            self._record({"op": "edge", "z_edge": fraction, "background": background})
            return results

    def segment_everything(self, frame: int, **params):
        """Every object on `frame` by SAM 2's automatic mask generator, from the cached image features.

        The frame is encoded at most once for tracking and discovery together. params: those of
        `napari_sam2.segment_everything` (points_per_side, pred_iou_thresh, …; no crops). Returns `AutoMasks`
        (labels (Y, X) uint32, objects) at the frame's size. Adds no object to the session.
        """
        from .automatic import segment_features

        self.frames.check_index(frame)
        with self._lock:
            feats = self._features(frame)
            return segment_features(self.model, feats, self.frame_shape, precision=self.precision, **params)

    def segment_points(self, frame: int, points, **params):
        """Masks for the given clicks on `frame` ([N, 2] (y, x) pixels), filtered and de-duplicated as
        `segment_everything` does (`napari_sam2.automatic.segment_points`: scored at the decoder's resolution by
        default), from the cached image features. Returns `AutoMasks`. Adds no object to the session."""
        from .automatic import segment_points

        self.frames.check_index(frame)
        with self._lock:
            feats = self._features(frame)
            return segment_points(self.model, feats, self.frame_shape, points, precision=self.precision, **params)

    def frame_intensity(self, frame: int) -> np.ndarray | None:
        """Frame `frame` as the model's input is made from it, before resizing: [Y, X] float32 in 0…1 (the stack's
        intensity range applied; the mean of the channels of an RGB frame), or None for a preprocessed stack. The
        stack-wide linear map only, whatever the session's contrast step (`frames.contrast`): the signal maps of the
        rules that read it (discovery) compare brightness between objects and frames, which a local step would
        flatten."""
        self.frames.check_index(frame)
        if self.frames.preprocessed:
            return None
        scaled = self.frames.intensity.apply(self.frames.rgb_frame(frame))
        scaled = np.asarray(scaled, dtype=np.float32)
        return scaled.mean(axis=-1) if scaled.ndim == 3 else scaled

    def image_features(self, frame: int) -> torch.Tensor:
        """The image encoder's lowest-resolution features of `frame`, [C, h, w] (h, w = the model's input size / 16),
        from the cache (the encoder runs at most once per frame for tracking and discovery together)."""
        self.frames.check_index(frame)
        with self._lock:
            return self._features(frame).vision[0]

    def close(self) -> None:
        self.frames.close()
        self.features.clear()
        self._upsampled = (-1, {})

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


__all__ = ["NO_OBJECT_LOGIT", "FrameResult", "Prompt", "TrackingSession"]
