"""From a microscopy frame (any dtype, grey or multichannel, any size) to the network's input tensor.

    frame [Y, X] or [Y, X, C]  →  intensity scaling to [0, 1]  →  3 channels  →  resize to S × S
                               →  ImageNet mean/std  →  tensor [3, S, S]

Microscopy is 8/12/16-bit or float, so intensities are mapped with percentiles of the data (1st–99.8th by
default), never by the dtype's full range (a 12-bit camera in a uint16 file would come out nearly black)
and never through JPEG. A time-lapse or z-stack uses ONE range for all frames (see `IntensityRange`) so
masks do not flicker with per-frame contrast. Resizing squashes to a square without padding, as SAM 2 was
trained; masks are resized back to the frame's own size afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_PERCENTILES = (1.0, 99.8)


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

    def apply(self, frame: np.ndarray) -> np.ndarray:
        """frame → float32 in [0, 1]."""
        out = (np.asarray(frame, dtype=np.float32) - np.float32(self.low)) / np.float32(self.high - self.low)
        return np.clip(out, 0.0, 1.0, out=out)


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
