"""Background work of the widget, as plain functions and generators run by napari's thread workers.

Nothing here touches Qt or napari layers: these run on worker threads and talk to the GUI only through what they
return or yield (the GUI thread writes the labels). The session's RLock lets a prompt (GUI-triggered job) and a
propagation or an encoding pass interleave frame by frame.
"""

from __future__ import annotations

import os

from ..prompts import PromptSet


def load_model_job(source: str, device: str):
    """Load a model by registry name or .pt path → SAM2Model (raises CheckpointError / ModelNotAvailableError /
    RuntimeError for an unavailable device; the GUI turns them into notifications)."""
    from ..model.build import load_model

    return load_model(source, device=device)


def make_session(model, geometry, key):
    """A fresh `TrackingSession` over the lazy stack of session `key` (reads a few frames for the intensity)."""
    from ..session import TrackingSession

    stack, axis, channel_axis = geometry.stack_for(key)
    options = {"channel_axis": channel_axis}
    if geometry.channel is not None:
        options["channel"] = geometry.channel
    return TrackingSession(model, stack, axis=axis, **options)


def encode_job(session, frames):
    """Generator: encode `frames` one by one (current frame first) → yields (done, total)."""
    for i, frame in enumerate(frames):
        session.encode_frames([frame])
        yield i + 1, len(frames)


def propagate_job(session, passes):
    """Generator over passes [(direction, start, stop)] → yields (pass index, frames done in the pass, FrameResult).

    Stopping between two yields (the worker's quit) leaves every finished frame valid in the session."""
    for index, (direction, start, stop) in enumerate(passes):
        for result in session.propagate(direction, start=start, stop=stop):
            yield index, abs(result.frame - start) + 1, result


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
