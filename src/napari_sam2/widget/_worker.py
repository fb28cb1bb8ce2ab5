"""Background work of the widget, as plain functions and generators run by napari's thread workers.

Nothing here touches Qt or napari layers: these run on worker threads and talk to the GUI only through what they
return or yield (the GUI thread writes the labels). The session's RLock lets a prompt (GUI-triggered job) and a
propagation or an encoding pass interleave frame by frame.
"""

from __future__ import annotations

import os

import numpy as np

from ..prompts import PromptSet


def load_model_job(source: str, device: str):
    """Load a model by registry name or .pt path → SAM2Model (raises CheckpointError / ModelNotAvailableError /
    RuntimeError for an unavailable device; the GUI turns them into notifications)."""
    from ..model.build import load_model

    return load_model(source, device=device)


def make_session(model, geometry, key, log=None, contrast=None, *, z_edge="auto", click_rule=None, preprocessing=None):
    """A fresh `TrackingSession` over the lazy stack of session `key` (reads a few frames for the intensity). A z
    stream (`geometry.z_stream`, not 3D+t, whose per-slice sessions only preview prompts) gets the axial edge rule
    (`napari_sam2.volume`): `z_edge` ("auto", a fraction or None: off; the face's choice, resolved as track() does);
    `log`, an opened result's edit log it will continue: the rule that log applied (else `z_edge`'s). contrast: the
    model input's contrast step (None: the model's default); click_rule: the session's (`napari_sam2.click_rule`; None:
    the model's default). A 3D+t preview (`geometry.coupled`) takes the range and
    contrast window of the whole 4-D stack, as the `VolumeTimeSession` that propagates fits them, so a click previews
    the mask propagation starts from: `preprocessing`, the (IntensityRange, contrast step) that
    `volume_time.stack_preprocessing` fitted for this geometry, model and contrast (None: fitted here)."""
    from ..replay import log_z_edge
    from ..session import TrackingSession
    from ..volume import resolve_z_edge

    stack, axis, channel_axis = geometry.stack_for(key)
    options = {"channel_axis": channel_axis}
    if geometry.channel is not None:
        options["channel"] = geometry.channel
    z_stream = geometry.plain_z_stream
    z_edge = resolve_z_edge(z_edge if z_stream else "auto", z_stream)  # as track() resolves it for the stream
    if log is not None:
        z_edge = log_z_edge(log, z_edge)
    if geometry.coupled:
        from ..volume_time import stack_preprocessing

        if preprocessing is None:
            preprocessing = stack_preprocessing(geometry.volume_view(), model, contrast)
        options["intensity"], contrast = preprocessing
    return TrackingSession(
        model, stack, axis=axis, z_edge=z_edge, contrast=contrast, click_rule=click_rule, z_stream=z_stream, **options
    )


def apply_changed(session, prompts: PromptSet) -> list:
    """Make the session's point / box prompts those of `prompts` (the face's prompt layers): groups that differ are
    set again, point / box groups the layers no longer hold are removed; mask prompts (the layers cannot show them)
    stay. → the FrameResults of the frames that changed."""
    wanted = {(int(p.frame), int(p.obj_id)): p for p in prompts}
    results = []
    for (frame, obj), prompt in wanted.items():
        if prompt.mask is not None:
            continue  # masks are not edited in the layers
        held = session.prompts_of(obj).get(frame) if obj in session.obj_ids else None
        if held is None or not _same(held, prompt):
            results += session.set_prompt(frame, obj, prompt)
    for obj in session.obj_ids:
        for frame, held in session.prompts_of(obj).items():
            if held.mask is None and (frame, obj) not in wanted:
                results += session.set_prompt(frame, obj, None)
    return results


def _same(a, b) -> bool:
    def box(p):
        return None if p.box is None else [float(v) for v in p.box]

    return (
        np.array_equal(np.asarray(a.points, float).reshape(-1, 2), np.asarray(b.points, float).reshape(-1, 2))
        and np.array_equal(np.asarray(a.labels).ravel(), np.asarray(b.labels).ravel())
        and box(a) == box(b)
        and a.mask is None
        and b.mask is None
    )


def encode_job(session, frames):
    """Generator: encode `frames` one by one (current frame first) → yields (done, total)."""
    for i, frame in enumerate(frames):
        session.encode_frames([frame])
        yield i + 1, len(frames)


def propagate_job(session, passes, discovery=None, events=None):
    """Generator over passes [(direction, start, stop)] → yields (pass index, frames done in the pass, FrameResult).

    discovery: `DiscoveryOptions` — forward passes find new objects and divisions (`propagate_with_discovery`, to
    the last frame; a frame changed by discovery is yielded again), their events appended to `events`.
    Stopping between two yields (the worker's quit) leaves every finished frame valid in the session."""
    for index, (direction, start, stop) in enumerate(passes):
        if discovery is not None and direction == "forward":
            from ..discovery import propagate_with_discovery

            results = propagate_with_discovery(session, discovery, "forward", start=start, events=events)
        else:
            results = session.propagate(direction, start=start, stop=stop)
        for result in results:
            yield index, abs(result.frame - start) + 1, result
    if passes and session.z_edge is not None:  # a z stream: the axial edge rule once every pass has run
        direction, start, stop = passes[-1]
        for result in session.axial_edge():
            yield len(passes) - 1, abs(stop - start) + 1, result


def volume_job(get_volume, prompts: PromptSet, passes):
    """3D+t: generator over passes [(direction, first t, last t)] of a `VolumeTimeSession` → yields (pass index,
    time points done in the pass, t, labels [Z, Y, X] int32, {obj: {z: (score, iou)}}).

    get_volume() gives the session (made on this thread the first time: it reads slices for the intensity). Its
    prompts are first made those of `prompts` (the face's, each with its (t, z)): changed ones are set again,
    removed ones dropped — the engine then recomputes only the time points a change affects. Stopping between
    two yields leaves every yielded time point finished in the session."""
    volume = get_volume()
    wanted = {(int(p.t), int(p.frame), int(p.obj_id)): p for p in prompts}
    held = {(t, z, int(p.obj_id)): p for t, z, p in volume.prompts()}
    for (t, z, obj), prompt in wanted.items():
        if held.get((t, z, obj)) != prompt:
            volume.set_prompt(t, z, obj, prompt)
    for t, z, obj in held:
        if (t, z, obj) not in wanted:
            volume.set_prompt(t, z, obj, None)
    for index, (direction, first, last) in enumerate(passes):
        for t, labels in volume.propagate_pass(first, last, reverse=direction == "backward"):
            yield index, abs(t - first) + 1, t, labels, volume.scores(t)


def save_job(path, labels, axes, prompts: PromptSet, provenance, scale, units=None):
    """Write the result store; `provenance` is a `Provenance` (the checkpoint is hashed here, off the GUI thread)."""
    from ..io.provenance import checkpoint_sha256
    from ..io.results import save_result

    model = provenance.model
    if model.checkpoint and not model.checkpoint_sha256 and os.path.isfile(model.checkpoint):
        model.checkpoint_sha256 = checkpoint_sha256(model.checkpoint)
    save_result(
        path, labels, axes=axes, prompts=prompts, provenance=provenance, scale=scale, units=units, overwrite=True
    )
    return str(path)
