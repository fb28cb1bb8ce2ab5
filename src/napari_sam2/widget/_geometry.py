"""How an image layer's axes map to a tracking session: which axis is streamed, which are pixels, which are fixed.

napari layer axes (the layer's data axes without an RGB axis) are split into
  * the stream axis (z or t) that SAM 2 walks through (none for a 2-D image: one frame),
  * the two spatial axes (the layer's last two non-channel axes: Y, X),
  * an optional channel axis (RGB: the data's last axis; or a short axis of a multichannel layer),
  * every other axis (e.g. t while streaming z of a TZYX layer): held at one index per session.
Nothing here reads pixels: `LazyView` only rewrites indices, so dask / zarr layers stay on disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import InputError

#: label stacks above this many bytes live in a temporary on-disk zarr array instead of memory
IN_MEMORY_LABELS_LIMIT = 1 << 30


class LazyView:
    """A read-only view of `base` with some axes held at one index (`fixed`: base axis → index), and a leading
    length-1 axis when `add_leading` (a 2-D image seen as a one-frame stack). Indexing forwards one combined
    key to `base`, so nothing is read until a frame is asked for."""

    def __init__(self, base, fixed: dict[int, int] | None = None, add_leading: bool = False):
        self.base = base
        self.fixed = dict(fixed or {})
        self.add_leading = add_leading
        free = [int(s) for i, s in enumerate(base.shape) if i not in self.fixed]
        self.shape = tuple(([1] if add_leading else []) + free)
        self.dtype = getattr(base, "dtype", np.dtype(float))
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        key = tuple(key) + (slice(None),) * (self.ndim - len(key))
        if self.add_leading:
            lead, key = key[0], key[1:]
            if not isinstance(lead, slice) and int(lead) != 0:
                raise IndexError(f"index {lead} is out of range for a one-frame stack")
        it = iter(key)
        full = tuple(self.fixed[i] if i in self.fixed else next(it) for i in range(len(self.base.shape)))
        out = self.base[full]
        if self.add_leading and isinstance(lead, slice):
            out = np.asarray(out)[None]
        return out

    def __len__(self) -> int:
        return self.shape[0]


@dataclass
class StackGeometry:
    """Axes of one image layer as tracking sees them (all axis numbers are layer axes unless named `data_`).

    ndim: the layer's ndim (RGB axis excluded); stream_axis: None for a 2-D image; channel_axis: a layer axis of
    a non-RGB multichannel layer, or None; rgb: the data has a trailing colour axis (channel chooses one colour,
    None keeps RGB); spatial: (y_axis, x_axis); fixed_axes: the other axes, held per session.
    """

    data: object
    ndim: int
    rgb: bool
    stream_axis: int | None
    spatial: tuple[int, int]
    channel_axis: int | None = None
    channel: int | None = None
    fixed_axes: tuple[int, ...] = field(default_factory=tuple)
    #: 3D+t: objects are propagated through z and t together (`VolumeTimeSession`); the per-slice sessions stream z
    #: (one per time point: the key is (t,)) and serve the prompts' immediate masks
    coupled: bool = False
    #: the stream axis is z (the viewer names it "z", or it is z of a [T, Z, Y, X] layer; `named`): its sessions
    #: apply the axial edge rule (`napari_sam2.volume`), as `track()` does on a z stream; never on a time axis
    z_stream: bool = False

    @property
    def plain_z_stream(self) -> bool:
        """The stack's own sessions stream z as a ZYX stack (a z stream that is not 3D+t): what `make_session` gives
        them as `z_stream`, and so the z-stream defaults (contrast, axial edge rule) they resolve."""
        return self.z_stream and not self.coupled

    def named(self, axis_labels) -> StackGeometry:
        """This geometry with `z_stream` read from the viewer's labels of the layer's axes (as `axes_string` names
        the saved axes: a 3-D layer's stream axis is z when labelled "z"; a 4-D layer's second axis is z)."""
        if self.stream_axis is None:
            return replace(self, z_stream=False)
        labels = [str(axis_labels[a]).lower() if a < len(axis_labels) else "" for a in range(self.ndim)]
        is_z = labels[self.stream_axis] == "z" or (self.is_tzyx and self.stream_axis == self.label_axes[1])
        return replace(self, z_stream=bool(is_z))

    @classmethod
    def from_layer(
        cls,
        layer,
        stream_axis: int | str | None,
        channel_axis: int | None = None,
        channel: int | None = None,
    ):
        """Check the layer's axes and the user's choice; raises `InputError` with what to do. stream_axis "tz": a
        layer with two axes besides (Y, X) and the channel is 3D+t, its first such axis t and its second z."""
        data = layer.data
        if isinstance(data, (list, tuple)):  # a multiscale layer: track the full-resolution level
            data = data[0]
        rgb = bool(getattr(layer, "rgb", False))
        ndim = int(layer.ndim)
        if ndim < 2:
            raise InputError(f"layer {layer.name!r} is {ndim}-D; SAM 2 needs images of at least 2-D (Y, X)")
        if rgb and channel_axis is not None:
            raise InputError("an RGB layer has its colour axis last; no other channel axis can be chosen")
        non_channel = [a for a in range(ndim) if a != channel_axis]
        if len(non_channel) < 2:
            raise InputError(f"layer {layer.name!r}: after the channel axis fewer than two axes are left for Y, X")
        spatial = (non_channel[-2], non_channel[-1])
        coupled = stream_axis == "tz"
        if coupled:
            if len(non_channel) != 4:
                besides = "Y, X and the channel" if channel_axis is not None else "Y, X"
                raise InputError(
                    f"3D+t (t and z together) needs two axes besides {besides}; layer {layer.name!r} has "
                    f"{len(non_channel) - 2}: pick one stream axis instead"
                )
            stream_axis = non_channel[1]  # z: the per-time-point sessions stream it
        if stream_axis is not None and (stream_axis in spatial or stream_axis == channel_axis):
            raise InputError(f"axis {stream_axis} cannot be the stream axis: it is a pixel or channel axis")
        if stream_axis is None and len(non_channel) > 2:
            stream_axis = non_channel[0]
        fixed = tuple(a for a in non_channel[:-2] if a != stream_axis)
        shape = [int(s) for s in np.shape(data)[:ndim]] if not rgb else [int(s) for s in data.shape[:-1]]
        h, w = shape[spatial[0]], shape[spatial[1]]
        if min(h, w) < 8:
            hint = (
                " It looks like an RGB / multichannel image shown as a stack: open it with rgb=True or pick the "
                "channel axis."
                if min(h, w) <= 4
                else ""
            )
            raise InputError(f"frames of layer {layer.name!r} would be {h}×{w} pixels, too small to segment.{hint}")
        n_channels = data.shape[-1] if rgb else (shape[channel_axis] if channel_axis is not None else None)
        if n_channels is not None and channel is not None and not 0 <= channel < n_channels:
            raise InputError(f"channel {channel} does not exist: the layer has {n_channels} channels")
        if channel_axis is not None and channel is None and n_channels not in (1, 3, 4):
            channel = 0
        if coupled and n_channels == 1 and channel is None:
            channel = 0
        if coupled and n_channels is not None and channel is None:
            raise InputError("3D+t tracking takes one channel: pick it in the channel list")
        return cls(data, ndim, rgb, stream_axis, spatial, channel_axis, channel, fixed, coupled)

    @classmethod
    def from_array(cls, data, stream_axis: int | None = 0, channel_axis: int | None = None, channel: int | None = None):
        """The geometry of a plain array (no napari layer; e.g. a (T, Y, X) stack) — `from_layer`'s checks."""
        from types import SimpleNamespace

        layer = SimpleNamespace(data=data, rgb=False, ndim=len(np.shape(data)), name="array")
        return cls.from_layer(layer, stream_axis, channel_axis, channel)

    # ------------------------------------------------------------------ shapes
    @property
    def layer_shape(self) -> tuple[int, ...]:
        shape = tuple(int(s) for s in self.data.shape)
        return shape[:-1] if self.rgb else shape

    @property
    def num_frames(self) -> int:
        return 1 if self.stream_axis is None else self.layer_shape[self.stream_axis]

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self.layer_shape[self.spatial[0]], self.layer_shape[self.spatial[1]]

    @property
    def label_axes(self) -> tuple[int, ...]:
        """Layer axes the label array has (the channel axis of a multichannel layer is dropped)."""
        return tuple(a for a in range(self.ndim) if a != self.channel_axis)

    @property
    def label_shape(self) -> tuple[int, ...]:
        return tuple(self.layer_shape[a] for a in self.label_axes)

    # ------------------------------------------------------------------ sessions
    def key_of(self, coords) -> tuple[int, ...]:
        """The fixed-axis indices (session key) of layer coordinates."""
        return tuple(round(float(coords[a])) for a in self.fixed_axes)

    def frame_of(self, coords) -> int:
        return 0 if self.stream_axis is None else round(float(coords[self.stream_axis]))

    def yx_of(self, coords) -> list[float]:
        return [float(coords[self.spatial[0]]), float(coords[self.spatial[1]])]

    def key_in_range(self, key) -> bool:
        return all(0 <= k < self.layer_shape[a] for k, a in zip(key, self.fixed_axes, strict=True))

    def stack_for(self, key: tuple[int, ...]):
        """(lazy stack, stream axis in it, channel axis in it or None) for the session with fixed indices `key`.

        The returned stack keeps the layer's axis order minus the fixed axes (plus the RGB axis last)."""
        fixed = dict(zip(self.fixed_axes, key, strict=True))
        if self.stream_axis is None:
            view = LazyView(self.data, add_leading=True)
            kept = [None] + list(range(len(self.data.shape)))
        else:
            view = LazyView(self.data, fixed)
            kept = [a for a in range(len(self.data.shape)) if a not in fixed]
        axis = kept.index(self.stream_axis)
        if self.rgb:
            channel_axis = len(kept) - 1
        elif self.channel_axis is not None:
            channel_axis = kept.index(self.channel_axis)
        else:
            channel_axis = None
        return view, axis, channel_axis

    def label_index(self, key: tuple[int, ...], frame: int) -> tuple:
        """Index into the label array of one frame of session `key`."""
        fixed = dict(zip(self.fixed_axes, key, strict=True))
        index = []
        for a in self.label_axes:
            if a in fixed:
                index.append(fixed[a])
            elif a == self.stream_axis:
                index.append(frame)
            else:
                index.append(slice(None))
        return tuple(index)

    # ------------------------------------------------------------------ 3D+t prompts: (t, z) of a 4-D label array
    @property
    def is_tzyx(self) -> bool:
        """The labels are [T, Z, Y, X] (a 4-D layer, channels aside): prompts are saved with their (t, z)."""
        return len(self.label_axes) == 4

    def volume_view(self):
        """3D+t: the layer as a lazy [T, Z, Y, X] array of the chosen channel (what `VolumeTimeSession` reads)."""
        fixed = {}
        if self.rgb:
            fixed[len(self.data.shape) - 1] = self.channel
        elif self.channel_axis is not None:
            fixed[self.channel_axis] = self.channel
        return LazyView(self.data, fixed)

    def tz_prompt(self, key: tuple[int, ...], prompt):
        """A session's prompt (key, prompt.frame on the stream axis) as a stack prompt: for [T, Z, Y, X] labels an
        `ObjectPrompt` with t (label axis 0) and frame = z (label axis 1), as `PromptSet` files hold them; else
        the prompt itself."""
        if not self.is_tzyx:
            return prompt
        index = dict(zip(self.fixed_axes, key, strict=True))
        index[self.stream_axis] = int(prompt.frame)
        t_axis, z_axis = self.label_axes[:2]
        return replace(prompt, frame=int(index[z_axis]), t=int(index[t_axis]))

    def session_prompt(self, prompt) -> tuple[tuple[int, ...], object]:
        """Inverse of `tz_prompt`: (session key, the prompt with frame = its index on the stream axis, no t)."""
        if not self.is_tzyx or prompt.t is None:
            return (0,) * len(self.fixed_axes), prompt
        t_axis, z_axis = self.label_axes[:2]
        index = {t_axis: int(prompt.t), z_axis: int(prompt.frame)}
        key = tuple(index[a] for a in self.fixed_axes)
        return key, replace(prompt, frame=index[self.stream_axis], t=None)

    def axes_string(self, axis_labels=()) -> str:
        """OME axes of the label array for saving ("tyx", "zyx" or "tzyx"), from the viewer's axis labels when
        they name t / z, else t for the stream axis of a 3-D stack."""
        n = len(self.label_axes)
        if n == 2:
            return "tyx"
        labels = [str(axis_labels[a]).lower() if a < len(axis_labels) else "" for a in self.label_axes]
        if n == 3:
            return "zyx" if labels[0] == "z" else "tyx"
        if n == 4:
            return "tzyx"
        raise InputError(f"labels of {n} axes cannot be saved as OME-Zarr t/z/y/x (at most 4 axes)")


def make_label_array(shape: tuple[int, ...], tmp_dir: str | None = None):
    """A zeroed uint32 label array: in memory when small, else a temporary on-disk zarr array (one chunk per
    frame) so that long stacks never need their labels in RAM.

    The temporary folder lives exactly as long as the returned array: it is removed when the array is garbage
    collected (the widget drops it for a new image or closes) or, at the latest, when Python exits — a long
    session that opens many large stacks must not fill the temporary disk with abandoned label arrays.
    """
    nbytes = int(np.prod(shape, dtype=np.int64)) * 4
    if nbytes <= IN_MEMORY_LABELS_LIMIT:
        return np.zeros(shape, dtype=np.uint32)
    import shutil
    import tempfile
    import weakref

    import zarr

    path = tempfile.mkdtemp(prefix="napari-sam2-labels-", dir=tmp_dir)
    try:
        chunks = (1,) * (len(shape) - 2) + tuple(shape[-2:])
        array = zarr.open_array(path, mode="w", shape=shape, chunks=chunks, dtype="uint32", fill_value=0)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    weakref.finalize(array, shutil.rmtree, path, ignore_errors=True)
    return array


def label_layer_data(base, geometry: StackGeometry):
    """What the Labels layer shows: `base` itself, or for a multichannel layer a view with the channel axis
    put back at stride 0 (every channel shows, and painting writes, the same labels) so the layers line up."""
    if geometry.channel_axis is None:
        return base
    if not isinstance(base, np.ndarray):
        raise InputError("labels of a multichannel layer this large cannot be shown; split the channels first")
    n_channels = geometry.layer_shape[geometry.channel_axis]
    expanded = np.expand_dims(base, geometry.channel_axis)
    shape = list(expanded.shape)
    shape[geometry.channel_axis] = n_channels
    strides = list(expanded.strides)
    strides[geometry.channel_axis] = 0
    return np.lib.stride_tricks.as_strided(expanded, shape=tuple(shape), strides=tuple(strides), writeable=True)
