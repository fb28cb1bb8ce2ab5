"""napari-sam2: SAM 2 segmentation and tracking of z-stacks and time-lapses, in napari and from Python.

The core (model, predictors, tracking session, I/O) imports no napari; the plugin is a face over it.
"""

try:
    from ._version import __version__
except ImportError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"

__all__ = [
    "AutoMasks",
    "CheckpointError",
    "ImagePredictor",
    "PromptSet",
    "TrackResult",
    "TrackingSession",
    "__version__",
    "encode",
    "load_model",
    "segment_everything",
    "track",
    "track_many",
]


def __getattr__(name):
    # Everything is imported on first use, so `import napari_sam2` (and so `napari-sam2 --help`, `models list`,
    # napari's plugin discovery) imports no torch.
    if name in ("CheckpointError", "load_model"):
        from . import model

        return getattr(model, name)
    if name == "ImagePredictor":
        from .predictor import ImagePredictor

        return ImagePredictor
    if name == "TrackingSession":
        from .session import TrackingSession

        return TrackingSession
    if name in ("track", "TrackResult"):
        from . import api

        return getattr(api, name)
    if name in ("segment_everything", "AutoMasks"):
        from . import automatic

        return getattr(automatic, name)
    if name in ("track_many", "encode"):
        from . import scale_out

        return getattr(scale_out, name)
    if name == "PromptSet":
        from .prompts import PromptSet

        return PromptSet
    raise AttributeError(f"module 'napari_sam2' has no attribute {name!r}")
