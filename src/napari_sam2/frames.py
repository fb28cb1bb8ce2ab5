"""Lazy frame sources: one 2-D frame at a time out of any array-like stack, never the whole stack.

A stack is anything indexable with numpy semantics and a `.shape` (numpy arrays and memmaps, zarr arrays,
dask arrays, tifffile's zarr stores): the stream axis (z or t) plus (Y, X), and optionally a channel axis.
`FrameSource` reads frame i as `np.asarray(stack[..., i, ...])`, so a 2,000-frame stack costs the memory
of one frame (plus a small read-ahead).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from .embedding_cache import frame_digest
from .io.readers import check_pixels
from .preprocess import (
    CONTRAST_FIT_PLANES,
    DEFAULT_PERCENTILES,
    INTENSITY_SAMPLE_FRAMES,
    InputError,
    IntensityRange,
    LocalContrast,
    as_rgb,
    check_finite,
    contrast_step,
    evenly_spaced,
    percentile_sample,
    scale_frame,
    to_model_input,
)


class FrameSource:
    """Frames of a stack along `axis`, preprocessed for a model of input size `image_size`.

    stack: [..., N (at `axis`), ..., Y, X] with an optional channel axis (`channel_axis`, counted in the
    full stack's axes); `channel` picks one channel of multichannel data (None keeps 3-channel RGB).
    intensity: one range for the whole stack (default: `percentiles` of up to `sample_frames` frames).
    contrast: the contrast step after the intensity range (`preprocess`): "global" (default; the range alone),
    "local" or a `preprocess.LocalContrast` (each frame divided by its local envelope). This class knows no model:
    a face resolves None (= the model's default) with `preprocess.resolve_contrast` first; None here is "global".
    Not used on a preprocessed stack (it holds network inputs already).
    preprocessed: the stack already holds network inputs [N, 3, S, S] (ImageNet-normalised float), e.g. to
    reproduce another preprocessing exactly; then `frame_shape` gives the (H, W) masks come back at.
    read_ahead: frames prepared ahead on a background thread; pin_memory: return page-locked tensors (CUDA).
    """

    def __init__(
        self,
        stack,
        image_size: int,
        axis: int = 0,
        channel: int | None = None,
        channel_axis: int | None = None,
        intensity: IntensityRange | tuple[float, float] | None = None,
        percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
        sample_frames: int = INTENSITY_SAMPLE_FRAMES,
        preprocessed: bool = False,
        frame_shape: tuple[int, int] | None = None,
        read_ahead: int = 2,
        pin_memory: bool = False,
        on_read=None,
        contrast="global",
    ):
        self.contrast = contrast_step("global" if contrast is None else contrast)
        if not hasattr(stack, "shape") or not hasattr(stack, "__getitem__"):
            stack = np.asarray(stack)
        self.stack = stack
        self.on_read = on_read  # on_read(index, pixels) sees every frame read, before it is used (io/identity.py)
        self.image_size = image_size
        self.preprocessed = preprocessed
        shape = tuple(int(s) for s in stack.shape)
        ndim = len(shape)
        check_pixels(shape, getattr(stack, "dtype", None))
        self.num_frames = shape[axis] if -ndim <= axis < ndim else 0
        if preprocessed:
            if ndim != 4 or shape[1] != 3 or shape[2] != shape[3] or shape[2] != image_size:
                raise InputError(f"preprocessed frames must be [N, 3, {image_size}, {image_size}]; got {shape}")
            self.axis, self.channel_axis = 0, None
            self.frame_shape = tuple(frame_shape) if frame_shape else (image_size, image_size)
            self.intensity = None
        else:
            if ndim < 3:
                raise InputError(
                    f"a stack needs a z/t axis plus (Y, X); got {ndim} dimension(s) {shape}. "
                    "For a single 2-D image use ImagePredictor"
                )
            if not -ndim <= axis < ndim:
                raise InputError(f"axis {axis} is out of range for a stack of shape {shape} ({ndim} axes)")
            self.axis = axis % ndim
            if channel_axis is None and ndim >= 4 and shape[-1] <= 16 and self.axis != ndim - 1:
                channel_axis = ndim - 1  # a short trailing axis is channels (RGB, or a few fluorophores)
            if channel_axis is not None:
                if not -ndim <= channel_axis < ndim:
                    raise InputError(f"channel axis {channel_axis} is out of range for shape {shape}")
                channel_axis %= ndim
                if channel_axis == self.axis:
                    raise InputError("the channel axis and the stream axis must differ")
            self.channel_axis = channel_axis
            spatial = [i for i in range(ndim) if i not in (self.axis, channel_axis)]
            if len(spatial) != 2:
                raise InputError(
                    f"after the stream axis ({self.axis}) and channel axis ({channel_axis}) the stack of shape "
                    f"{shape} must have exactly 2 spatial axes (Y, X), not {len(spatial)}; pick the axes"
                )
            if channel_axis is not None:
                n_ch = shape[channel_axis]
                if channel is None and n_ch not in (1, 3, 4):
                    raise InputError(f"the stack has {n_ch} channels; choose one with channel=<index> (0…{n_ch - 1})")
                if channel is not None and not -n_ch <= channel < n_ch:
                    raise InputError(f"channel {channel} does not exist: the stack has {n_ch} channels")
            elif channel is not None:
                raise InputError(f"channel={channel} was given but the stack of shape {shape} has no channel axis")
            self.channel = channel
            self.frame_shape = (shape[spatial[0]], shape[spatial[1]])
            if isinstance(intensity, IntensityRange) or intensity is None:
                self.intensity = intensity
            else:
                self.intensity = IntensityRange(*intensity)
            if self.intensity is None:
                self.intensity = self._stack_intensity(percentiles, sample_frames)
            self.contrast = self._fit_contrast(self.contrast)
        self.num_frames = shape[self.axis]
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-sam2-read") if read_ahead else None
        self.read_ahead = read_ahead
        self.pin_memory = pin_memory
        self.digests = False  # set by a session that persists features (embedding_cache)
        self._pending: dict[int, Future] = {}
        self._constant: dict[int, bool] = {}  # frame -> every pixel equal (noted as frames are loaded)
        self._local_view: LocalContrast | None = None  # fitted on the first `local_view_input`

    def __len__(self) -> int:
        return self.num_frames

    def raw_frame(self, index: int) -> np.ndarray:
        """Frame `index` as stored: [Y, X] or [Y, X, C] (channels moved last)."""
        return self._read(index)

    def raw_region(self, index: int, rows: slice, cols: slice) -> np.ndarray:
        """The part [rows, cols] of frame `index` as stored ([h, w] or [h, w, C], channels last, as `raw_frame`),
        read without the rest of the frame (a zarr / dask stack reads only the chunks it covers). Not passed to
        `on_read` (a part cannot be checked against a frame's digest; the model's reads of the frame are)."""
        return self._read(index, (rows, cols))

    def _read(self, index: int, region: tuple[slice, slice] | None = None) -> np.ndarray:
        """Frame `index` (region None: whole, and passed to `on_read`) or its part region = (rows, cols), as stored,
        channels moved last; a stack that cannot be read there gives one InputError."""
        self.check_index(index)
        key: list = [slice(None)] * len(self.stack.shape)
        key[self.axis] = index
        if region is not None:
            if self.preprocessed:
                raise InputError("a preprocessed stack holds network inputs, not the image's pixels")
            spatial = [i for i in range(len(key)) if i not in (self.axis, self.channel_axis)]
            key[spatial[0]], key[spatial[1]] = region
        try:
            frame = np.asarray(self.stack[tuple(key)])
        except (InputError, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001  (a damaged file: zlib, truncated gzip, a corrupt zarr chunk ...)
            raise InputError(
                f"frame {index} of the stack cannot be read ({type(exc).__name__}: {exc}); the file is damaged "
                "there — repair or re-export it"
            ) from None
        if region is None and self.on_read is not None:
            self.on_read(index, frame)
        if frame.dtype == bool:  # a mask stack: intensities 0/1
            frame = frame.astype(np.uint8)
        if self.channel_axis is not None:
            ch = self.channel_axis - (1 if self.channel_axis > self.axis else 0)
            frame = np.moveaxis(frame, ch, -1)
        return frame

    def check_promptable(self, index: int) -> None:
        """Refuse a prompt on a constant frame (nothing to click on): one message naming the frame and the fix."""
        if self.preprocessed:
            return
        constant = self._constant.get(index)
        if constant is None:  # not loaded yet (a session loads the prompted frame first: no second read)
            constant = self._constant[index] = bool(np.ptp(self.rgb_frame(index)) == 0)
        if constant:
            value = self.rgb_frame(index).flat[0]
            raise InputError(
                f"frame {index} is constant (every pixel {value}); nothing can be segmented there — prompt "
                "the object on a frame that shows it, or check the channel"
            )

    def check_index(self, index: int) -> None:
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise InputError(f"a frame is an integer index; got {index!r} ({type(index).__name__})")
        if not 0 <= index < self.num_frames:
            raise InputError(f"frame {index} is outside the stack (frames 0…{self.num_frames - 1})")

    def _stack_intensity(self, percentiles, sample_frames) -> IntensityRange:
        """One intensity range for the whole stack from evenly spaced frames (so masks don't flicker)."""
        picks = evenly_spaced(int(self.stack.shape[self.axis]), sample_frames)
        values = []
        for i in picks:
            frame = self.rgb_frame(i)
            check_finite(frame, f"frame {i}")
            values.append(percentile_sample(frame))
        try:
            return IntensityRange.from_percentiles(np.concatenate(values), percentiles)
        except InputError as exc:
            raise InputError(f"{exc} (sampled {len(picks)} frames of the stack)") from None

    def _fit_contrast(self, contrast):
        """The contrast step fitted to the stack (`LocalContrast.fitted` on three evenly spaced frames, read only when
        it has no window), so that every frame is scaled with the same window, and a store records it."""
        picks = evenly_spaced(int(self.stack.shape[self.axis]), CONTRAST_FIT_PLANES)
        return contrast.fitted((self.intensity.scale(self.rgb_frame(i)) for i in picks), self.image_size)

    def local_view_input(self, index: int) -> torch.Tensor | None:
        """Network input [3, S, S] of frame `index` under local contrast (`preprocess.LocalContrast`, its window
        fitted to the stack once, as `contrast="local"` would fit it) — the view the click rule decodes a first click
        from (`ClickRule.local_view`). None where `model_input` is that view already (a stack under local contrast)
        or where there are no pixels to scale (a preprocessed stack)."""
        if self.preprocessed or isinstance(self.contrast, LocalContrast):
            return None
        self.check_index(index)
        if self._local_view is None:
            self._local_view = self._fit_contrast(LocalContrast())
        rgb = self.rgb_frame(index)
        check_finite(rgb, f"frame {index}")
        return to_model_input(scale_frame(rgb, self.intensity, self._local_view, self.image_size), self.image_size)

    def rgb_frame(self, index: int) -> np.ndarray:
        """Frame `index` as the network input is made from it, before intensity scaling and resizing: [Y, X, 3]
        (grey replicated, or the chosen channel; `preprocess.as_rgb`), not yet scaled."""
        return self._rgb(self.raw_frame(index))

    def _rgb(self, frame: np.ndarray) -> np.ndarray:
        return as_rgb(frame, channel=self.channel, channel_axis=-1 if frame.ndim == 3 else None)

    def _load(self, index: int) -> tuple[torch.Tensor, bytes | None]:
        """(network input [3, S, S], digest of the frame's pixels or None); runs on the read-ahead thread."""
        if self.preprocessed:
            pixels = np.asarray(self.stack[index])
            tensor = torch.as_tensor(pixels, dtype=torch.float32)
        else:
            pixels = self.raw_frame(index)
            rgb = self._rgb(pixels)
            check_finite(rgb, f"frame {index}")
            self._constant[index] = bool(np.ptp(rgb) == 0)
            # a constant frame (a blank z slice, a dropped time point) is tracked through with the stack's intensity
            # range, as the official predictor does; only prompting on one is refused (`check_promptable`)
            tensor = to_model_input(scale_frame(rgb, self.intensity, self.contrast, self.image_size), self.image_size)
        if self.pin_memory:  # page-locked, so the upload to the GPU can overlap with compute
            tensor = tensor.pin_memory()
        return tensor, (frame_digest(pixels) if self.digests else None)

    def model_input(self, index: int, upcoming: list[int] = ()) -> torch.Tensor:
        """Network input [3, S, S] for frame `index`; starts reading `upcoming` frames in the background."""
        return self.model_input_and_digest(index, upcoming)[0]

    def model_input_and_digest(self, index: int, upcoming: list[int] = ()) -> tuple[torch.Tensor, bytes | None]:
        """`model_input` plus the frame's pixel digest (None unless `digests` is on; see embedding_cache)."""
        self.check_index(index)
        future = self._pending.pop(index, None)
        loaded = future.result() if future is not None else self._load(index)
        if self._pool is not None:
            for nxt in list(upcoming)[: self.read_ahead]:
                if 0 <= nxt < self.num_frames and nxt not in self._pending:
                    self._pending[nxt] = self._pool.submit(self._load, nxt)
        # forget stale read-aheads (e.g. after a change of direction) so memory stays bounded
        for stale in [k for k in self._pending if k not in upcoming]:
            self._pending.pop(stale).cancel()
        return loaded

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
