"""From a microscopy frame (any dtype, grey or multichannel, any size) to the network's input tensor.

    frame [Y, X] or [Y, X, C]  →  3 channels  →  linear intensity map (low → 0, high → 1)  →  contrast step
                               →  resize to S × S  →  ImageNet mean/std  →  tensor [3, S, S]

The contrast step turns the linearly mapped frame into [0, 1]: "global" (`GlobalContrast`, the default of every
model today) only clips it; "local" (`LocalContrast`) divides each frame by a smooth envelope of its own local
maxima, so that a dim object beside a bright one (fluorescent nuclei differ ~10x in brightness in one image) reaches
the same input brightness. `resolve_contrast(contrast, model)` turns a face's `contrast` option ("global", "local",
a `LocalContrast`, or None = the model's default, `registry.ModelInfo.contrast`) into the step. Signal maps read by
rules (discovery's `TrackingSession.frame_intensity`, the axial edge rule) keep the linear map alone.

Microscopy is 8/12/16-bit or float, so intensities are mapped with percentiles of the data (1st–99.8th by
default), never by the dtype's full range (a 12-bit camera in a uint16 file would come out nearly black)
and never through JPEG. A time-lapse or z-stack uses ONE range for all frames (see `IntensityRange`) so
masks do not flicker with per-frame contrast. Resizing squashes to a square without padding, as SAM 2 was
trained; masks are resized back to the frame's own size afterwards.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_PERCENTILES = (1.0, 99.8)
#: a stack's intensity range reads up to this many evenly spaced frames; its contrast window is fitted on this many
INTENSITY_SAMPLE_FRAMES = 16
CONTRAST_FIT_PLANES = 3


def evenly_spaced(n: int, count: int) -> list[int]:
    """Up to `count` indices spread evenly over range(n), first and last included (all n when n <= count): the
    frames a stack's intensity range and contrast window are fitted on, so every frame is scaled alike."""
    return [int(i) for i in np.unique(np.linspace(0, n - 1, min(n, count)).round().astype(int))]


def percentile_sample(frame: np.ndarray) -> np.ndarray:
    """The pixels of `frame` [Y, X, ...] an intensity range reads, flat: every k-th row and column, about 256 of
    each (percentiles of a subsample are as good and the whole frame need not be copied)."""
    return frame[:: max(1, frame.shape[0] // 256), :: max(1, frame.shape[1] // 256)].ravel()


@dataclass(frozen=True)
class IntensityRange:
    """Linear map of intensities: `low` → 0, `high` → 1, clipped outside.

    Use `IntensityRange.from_percentiles(data)` for microscopy, `IntensityRange(0, 255)` for 8-bit RGB
    photographs (what the official SAM 2 does), or a fixed window (e.g. CT: level ± width/2).
    """

    low: float
    high: float

    def __post_init__(self):
        if not (np.isfinite(self.low) and np.isfinite(self.high)):
            raise InputError(f"intensity range ({self.low}, {self.high}) is not finite")
        if self.high <= self.low:
            raise InputError(
                f"intensity range ({self.low}, {self.high}) is empty: the data is constant (or the window is "
                "inverted); nothing can be segmented in a constant image — check the channel or the window"
            )

    @classmethod
    def from_percentiles(cls, data, percentiles=DEFAULT_PERCENTILES, max_samples: int = 2_000_000):
        """Range from percentiles of `data` (a frame or a sample of frames), ignoring NaN/Inf-free checks.

        Large inputs are subsampled with a fixed stride (deterministic) to at most `max_samples` values.
        """
        values = np.asarray(data).ravel()
        if values.size > max_samples:
            values = values[:: int(np.ceil(values.size / max_samples))]
        values = values.astype(np.float64, copy=False)
        if not np.all(np.isfinite(values)):
            raise InputError("the image contains NaN or Inf pixels; replace them (e.g. np.nan_to_num) first")
        low, high = np.percentile(values, percentiles)
        if high <= low:  # e.g. sparse images where both percentiles hit the background
            low, high = float(values.min()), float(values.max())
        return cls(float(low), float(high))

    @classmethod
    def window(cls, level: float, width: float):
        """A display window (e.g. CT Hounsfield: level 40, width 400 for soft tissue)."""
        return cls(level - width / 2, level + width / 2)

    def scale(self, frame: np.ndarray) -> np.ndarray:
        """frame → float32 (frame - low) / (high - low), not clipped (what a contrast step takes)."""
        return (np.asarray(frame, dtype=np.float32) - np.float32(self.low)) / np.float32(self.high - self.low)

    def apply(self, frame: np.ndarray) -> np.ndarray:
        """frame → float32 in [0, 1]."""
        out = self.scale(frame)
        return np.clip(out, 0.0, 1.0, out=out)


# --- the contrast step ------------------------------------------------------------------------------------------

#: the values a face's `contrast` option takes (None: the model's default, `registry.ModelInfo.contrast`)
CONTRASTS = ("global", "local")


@dataclass(frozen=True)
class GlobalContrast:
    """The contrast step "global": the stack-wide linear map alone, clipped to [0, 1] (the behaviour before the
    option existed; every frame of a stack keeps the same scale)."""

    name: ClassVar[str] = "global"

    def apply(self, x: np.ndarray, image_size: int) -> np.ndarray:
        """x: float32 [Y, X] or [Y, X, 3], the linearly mapped frame (`IntensityRange.scale`) → clipped in place."""
        return np.clip(x, 0.0, 1.0, out=x)

    def fitted(self, planes, image_size: int) -> GlobalContrast:
        """Nothing to fit (as `LocalContrast.fitted`): this step; `planes` is not read."""
        return self

    def record(self) -> dict:
        """The provenance entries of this step (settings["contrast"])."""
        return {"contrast": self.name}


@dataclass(frozen=True)
class LocalContrast:
    """The contrast step "local": each frame divided by a smooth envelope of its local maxima.

    Fluorescent nuclei differ up to ~10x in brightness within one image; a stack-wide linear map leaves the dim ones
    near black beside the bright ones, and a click on a dim one then segments a bright neighbour or nothing. Per
    frame (grey plane g: the frame, or the mean of an RGB frame's channels):

        y   = max(g - pedestal, 0)                                   the background pedestal removed
        pedestal = percentile(g, background_percentile) + background_noise * sigma
        env = G_{window/2}( max_{window}( G_{smooth}(y) ) )           G_s: Gaussian of sigma s; max_w: w-wide maximum
        out = clip((x - pedestal) / (env + lift), 0, 1)              every channel by the same envelope
        lift = max(floor * max(y), noise_floor * sigma)               sigma: the noise, 1.4826 × MAD of g

    window, smooth (and so the sigmas) are in MODEL-INPUT pixels — the object scale the network sees — converted per
    axis to frame pixels (a (H, W) frame is squashed to S × S: one input pixel is H / S rows, W / S columns). window
    should exceed an object's diameter, so that the envelope of an object is its own peak, yet stay below the
    distance to a brighter neighbour; None (the default) fits it to the objects of the data (`fitted`:
    WINDOW_PER_RADIUS × their median radius; a stack is fitted once, so all its frames share one window). lift keeps
    the noise of empty regions from being stretched to full brightness: far from any object the envelope is the noise
    itself, so without the noise term a dim 12-bit movie's background came out as bright as its nuclei and tracking
    through it broke (tuning movies: TRA 0.95 → 0.65); noise_floor 4 was chosen on tuning seeds (issue-7 movies
    1,500,000 + …, synthetic_hard 4,000,050 + …: 3 lost 0.02 TRA, 6 gave back 0.10 of the brightness-spread click
    IoU). background_noise (default 0: the pedestal at the 5th percentile) lifts the pedestal by that many noise
    sigmas (1.645: the background's median for Gaussian noise): at 0 empty background comes out as grey noise about
    1.6 sigma above zero, where nano-fluo's IoU token reads 0.45-0.62 for good masks and masks of a tracked nucleus
    beside an untracked one can collapse or bleed. 1.3 was tried as nano-fluo's default with local contrast and not
    adopted (model/README.md, "Local contrast as nano-fluo's default": it passed the tests and the lineage bars but
    segment-everything F1 fell to 0.896, and it gives back part of the click gain on the dimmest nuclei; tuning
    seeds synthetic_hard 4,000,050 + …, click median brightness / mitotic: 0 → 0.572 / 0.583, 0.75 → 0.498 / 0.556,
    1.0 → 0.445 / 0.528, 1.3 → 0.405 / 0.508, 1.645 → 0.355 / 0.460; global 0.046 / 0.265). A constant frame gives
    zeros.
    """

    window: float | None = None
    floor: float = 0.05
    background_percentile: float = 5.0
    smooth: float = 2.0
    noise_floor: float = 4.0
    background_noise: float = 0.0

    name: ClassVar[str] = "local"

    def __post_init__(self):
        checks = [
            ("window", self.window, lambda v: v > 0, "a positive width in model-input pixels (or None: fitted)"),
            ("floor", self.floor, lambda v: v > 0, "a positive fraction of the frame's maximum"),
            ("background_percentile", self.background_percentile, lambda v: 0 <= v < 100, "a percentile in [0, 100)"),
            ("smooth", self.smooth, lambda v: v >= 0, "a sigma >= 0 in model-input pixels"),
            ("noise_floor", self.noise_floor, lambda v: v >= 0, "a multiple >= 0 of the frame's noise"),
            ("background_noise", self.background_noise, lambda v: v >= 0, "a multiple >= 0 of the frame's noise"),
        ]
        for name, value, ok, what in checks:
            if name == "window" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
                raise InputError(f"LocalContrast {name} is {what}; got {value!r}")
            if not (np.isfinite(value) and ok(float(value))):
                raise InputError(f"LocalContrast {name} is {what}; got {value!r}")

    def fitted(self, planes, image_size: int) -> LocalContrast:
        """This step with its window fitted to the objects of `planes` (linearly mapped frames of one stack, [Y, X] or
        [Y, X, C]) when it has none: WINDOW_PER_RADIUS × `object_radius`, within WINDOW_RANGE (FALLBACK_WINDOW when
        no object is found). A step with a window is returned as it is, without reading `planes` (an iterable: give
        a generator and no frame is read for nothing)."""
        if self.window is not None:
            return self
        radius = object_radius(planes, image_size)
        window = FALLBACK_WINDOW if radius is None else float(np.clip(WINDOW_PER_RADIUS * radius, *WINDOW_RANGE))
        return replace(self, window=round(window, 2))

    def apply(self, x: np.ndarray, image_size: int) -> np.ndarray:
        """x: the linearly mapped frame (`IntensityRange.scale`, NOT clipped), float [Y, X] or [Y, X, C] →
        float32 in [0, 1] of the same shape. image_size: the model's input size S (the frame is squashed to S × S).
        Without a window, it is fitted to this frame alone (`fitted`; a stack fits one for all its frames)."""
        from scipy import ndimage

        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 3:  # one envelope for all channels: grey replicated to RGB is read once, exactly
            first = x[..., 0]
            same = all(np.array_equal(first, x[..., c]) for c in range(1, x.shape[-1]))
            grey = first if same else x.mean(axis=-1, dtype=np.float32)
        elif x.ndim == 2:
            grey = x
        else:
            raise InputError(f"local contrast takes one frame [Y, X] or [Y, X, C]; got shape {x.shape}")
        if self.window is None:
            return self.fitted([x], image_size).apply(x, image_size)
        sigma = _noise_sigma(grey)
        pedestal = np.float32(np.percentile(grey, self.background_percentile) + self.background_noise * sigma)
        y = np.maximum(grey - pedestal, np.float32(0.0))
        peak = float(y.max()) if y.size else 0.0
        if not peak > 0.0:  # a constant frame: no signal to scale (and no division by zero)
            return np.zeros_like(x)
        rows, cols = grey.shape[0] / float(image_size), grey.shape[1] / float(image_size)  # frame px per input px
        # the envelope is smooth at the model input's scale: on a frame larger than the input it is made from block
        # means of whole input pixels and enlarged again (a 1024² frame for a 256² input: 16x fewer pixels to filter)
        step = (max(1, int(rows)), max(1, int(cols)))
        small = _block_mean(y, step)
        rows, cols = rows / step[0], cols / step[1]  # now: `small` px per input px
        size = (max(1, round(self.window * rows)), max(1, round(self.window * cols)))
        env = ndimage.gaussian_filter(small, (self.smooth * rows, self.smooth * cols))
        env = ndimage.maximum_filter(env, size=size)
        env = ndimage.gaussian_filter(env, (self.window / 2 * rows, self.window / 2 * cols))
        if step != (1, 1):
            env = _enlarge(env, step, grey.shape)
        env += np.float32(max(self.floor * peak, self.noise_floor * sigma))
        if x.ndim == 3:
            env = env[..., None]
        out = (x - pedestal) / env
        return np.clip(out, 0.0, 1.0, out=out)

    def record(self) -> dict:
        """The provenance entries of this step: settings["contrast"] = "local" and its constants (a replay uses them,
        so a store keeps reproducing after the defaults change)."""
        return {
            "contrast": self.name,
            "local_contrast": {k: None if v is None else float(v) for k, v in asdict(self).items()},
        }


ContrastStep = GlobalContrast | LocalContrast


def _noise_sigma(plane: np.ndarray, max_samples: int = 262_144) -> float:
    """The noise of a frame: 1.4826 × the median absolute deviation of its pixels (the standard deviation of
    Gaussian noise; robust while objects cover less than half of the frame). Large frames: a fixed-stride sample."""
    values = plane.ravel()
    if values.size > max_samples:
        values = values[:: int(np.ceil(values.size / max_samples))]
    median = np.median(values)
    return float(1.4826 * np.median(np.abs(values - median)))


def _block_mean(plane: np.ndarray, step: tuple[int, int]) -> np.ndarray:
    """Means of step[0] × step[1] blocks of `plane` [Y, X] (edge blocks padded with their last row / column)."""
    if step == (1, 1):
        return plane
    h, w = plane.shape
    pad = (-h % step[0], -w % step[1])
    plane = np.pad(plane, ((0, pad[0]), (0, pad[1])), mode="edge")
    blocks = plane.reshape(plane.shape[0] // step[0], step[0], plane.shape[1] // step[1], step[1])
    return blocks.mean(axis=(1, 3), dtype=np.float32)


def _enlarge(small: np.ndarray, step: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """`_block_mean`'s blocks back to a plane of `shape`: bilinear between block centres, float32 [Y, X]."""
    size = (small.shape[0] * step[0], small.shape[1] * step[1])
    big = F.interpolate(torch.from_numpy(np.ascontiguousarray(small))[None, None], size=size, mode="bilinear")
    return big[0, 0, : shape[0], : shape[1]].numpy()


#: a fitted local-contrast window is WINDOW_PER_RADIUS × the objects' median radius (model-input pixels), within
#: WINDOW_RANGE; chosen on tuning seeds of `synthetic_hard` (2.5 kept large nuclei at their global-contrast click IoU,
#: 1.5–2 lost 0.03–0.08 there; brightness spread and mitotic neighbours were flat from 1.5 to 3)
WINDOW_PER_RADIUS, WINDOW_RANGE, FALLBACK_WINDOW = 2.5, (8.0, 96.0), 16.0


def object_radius(planes, image_size: int, min_area: float = 12.0) -> float | None:
    """Median equivalent radius, in model-input pixels, of the bright blobs of `planes` (frames [Y, X] or [Y, X, C]
    of one stack, any linear scale): each plane smoothed (sigma 1.5 input px), split at its Otsu threshold, blobs
    of ≥ `min_area` input px² kept (the split at least 4 noise sigmas above the plane's median). With a 10x
    brightness spread Otsu keeps the bright objects only; their size still tells the scale. None when no plane has
    such a blob."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    radii = []
    for plane in planes:
        plane = np.asarray(plane, dtype=np.float32)
        grey = plane.mean(axis=-1, dtype=np.float32) if plane.ndim == 3 else plane
        rows, cols = grey.shape[0] / float(image_size), grey.shape[1] / float(image_size)  # frame px per input px
        smooth = ndimage.gaussian_filter(grey, (1.5 * rows, 1.5 * cols))
        if not np.ptp(smooth) > 0:
            continue
        # a plane of noise alone (an empty z slice, a frame before the cells come in) has no objects, yet Otsu splits
        # it into one-pixel specks that would set a tiny window for the whole stack: the split is at least 4 noise
        # sigmas above the median (it changed no window fitted on the tuning stacks)
        split = max(float(threshold_otsu(smooth)), float(np.median(smooth)) + 4.0 * _noise_sigma(smooth))
        blobs, n = ndimage.label(smooth > split)
        if n == 0:
            continue
        areas = np.bincount(blobs.ravel())[1:] / (rows * cols)  # in input px²
        radii += list(np.sqrt(areas[areas >= min_area] / np.pi))
    return float(np.median(radii)) if radii else None


def contrast_step(contrast) -> ContrastStep:
    """A resolved contrast option → its step: "global" / "local" (the default constants) / a step itself.
    Anything else (None included: resolve it with `resolve_contrast`) → one InputError naming the allowed values."""
    if isinstance(contrast, (GlobalContrast, LocalContrast)):
        return contrast
    if isinstance(contrast, str) and contrast.strip().lower() in CONTRASTS:
        return GlobalContrast() if contrast.strip().lower() == "global" else LocalContrast()
    raise InputError(
        f"contrast must be one of {', '.join(repr(c) for c in CONTRASTS)} (or None: the model's default); "
        f"got {contrast!r}"
    )


def default_contrast(model, z_stream: bool = False) -> str:
    """The contrast a model's input is made with unless the user says otherwise: `registry.ModelInfo.contrast` of
    the registry model `model` names (a name, an alias, its checkpoint path, or a loaded model's `checkpoint_path`),
    or its `z_contrast` for a z stream (`z_stream`: a z-stack tracked along z); "global" for any other checkpoint or
    an in-memory model."""
    from . import registry

    source = model if isinstance(model, (str, os.PathLike)) else getattr(model, "checkpoint_path", None)
    return "global" if source is None else registry.default_contrast(source, z_stream=z_stream)


def resolve_contrast(contrast, model, z_stream: bool = False, preset: str = "default") -> ContrastStep:
    """A face's contrast option → its step: None → the model's default (`default_contrast`; `z_stream`: its default
    for a z stream, except under preset "parity", which keeps the model's own as the official predictor does), else
    `contrast_step`."""
    if contrast is None:
        contrast = default_contrast(model, z_stream=z_stream and preset != "parity")
    return contrast_step(contrast)


def contrast_from_record(settings: dict | None) -> ContrastStep:
    """The contrast step a store's settings record (`<step>.record()`); a store made before the option records none:
    "global", as it was made."""
    settings = settings or {}
    name = settings.get("contrast") or "global"
    if name == "local" and isinstance(settings.get("local_contrast"), dict):
        # a store made before background_noise existed used none (the pedestal at the 5th percentile), whatever
        # the default is now
        return LocalContrast(**{"background_noise": 0.0, **settings["local_contrast"]})
    return contrast_step(name)


def scale_frame(rgb: np.ndarray, intensity: IntensityRange, contrast: ContrastStep, image_size: int) -> np.ndarray:
    """[Y, X, 3] frame → float32 [Y, X, 3] in [0, 1]: the linear intensity map, then the contrast step (for a model
    of input size `image_size`). What `to_model_input` takes."""
    return contrast.apply(intensity.scale(rgb), image_size)


def as_rgb(frame: np.ndarray, channel: int | None = None, channel_axis: int | None = None) -> np.ndarray:
    """A 2-D frame as [Y, X, 3]: grey is replicated; one channel of a multichannel frame is picked.

    frame: [Y, X], or [Y, X, C] / [C, Y, X] with `channel_axis` saying where C is (default: the shorter of
    the first and last axes). `channel=None` on a 3-channel frame keeps it as RGB.
    """
    frame = np.asarray(frame)
    if frame.ndim == 2:
        return np.repeat(frame[..., None], 3, axis=-1)
    if frame.ndim != 3:
        raise InputError(
            f"expected a 2-D image (Y, X) or one with channels (Y, X, C); got shape {frame.shape}. "
            "For a stack, use TrackingSession or pick one frame"
        )
    if channel_axis is None:  # channels are the short axis: (Y, X, C) or (C, Y, X)
        channel_axis = -1 if frame.shape[-1] <= frame.shape[0] else 0
    frame = np.moveaxis(frame, channel_axis, -1)
    n = frame.shape[-1]
    if channel is not None:
        if not -n <= channel < n:
            raise InputError(f"channel {channel} does not exist: the image has {n} channels (0…{n - 1})")
        channel %= n  # -1 = the last channel (a slice -1:0 would be empty)
        return np.repeat(frame[..., channel : channel + 1], 3, axis=-1)
    if n == 3:
        return frame
    if n == 4:  # RGBA: drop alpha
        return frame[..., :3]
    if n == 1:
        return np.repeat(frame, 3, axis=-1)
    raise InputError(f"the image has {n} channels; choose one with channel=<index> (0…{n - 1})")


def to_model_input(rgb01: np.ndarray, image_size: int) -> torch.Tensor:
    """[Y, X, 3] float in [0, 1] → normalised [3, S, S] float32 tensor.

    Resize: bilinear with antialiasing on the float image (what the official image predictor does).
    """
    x = torch.from_numpy(np.ascontiguousarray(rgb01, dtype=np.float32)).permute(2, 0, 1)[None]
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x - mean) / std)[0]


def check_finite(frame: np.ndarray, where: str = "the image") -> None:
    if np.issubdtype(np.asarray(frame).dtype, np.floating) and not np.all(np.isfinite(frame)):
        raise InputError(f"{where} contains NaN or Inf pixels; replace them (e.g. np.nan_to_num) first")


# --- coordinates: napari (row, col) in original pixels ↔ SAM (x, y) in model-input pixels -------------


def points_to_model(points_yx, frame_shape: tuple[int, int], image_size: int) -> np.ndarray:
    """[[y, x], …] in pixels of a (H, W) frame → [[x, y], …] in pixels of the S × S model input.

    The one place where napari's (row, col) order becomes SAM's (x, y) (official: p / (W, H) · S).
    """
    pts = np.asarray(points_yx, dtype=np.float32).reshape(-1, 2)
    h, w = frame_shape
    return np.stack([pts[:, 1] / w * image_size, pts[:, 0] / h * image_size], axis=1).astype(np.float32)


def box_to_model(box_yxyx, frame_shape: tuple[int, int], image_size: int) -> np.ndarray:
    """[y0, x0, y1, x1] → the two corners [[x0, y0], [x1, y1]] in model-input pixels (SAM's box points)."""
    y0, x0, y1, x1 = (float(v) for v in np.asarray(box_yxyx).ravel())
    corners = [[min(y0, y1), min(x0, x1)], [max(y0, y1), max(x0, x1)]]
    return points_to_model(corners, frame_shape, image_size)
