"""The napari dock widget (imports napari and Qt; the core package does not).

`SAM2Widget` is imported on first use, so that the Qt-free `TrackingController` (`widget._controller`) can be used
and tested without Qt or a display."""

__all__ = ["SHORTCUTS", "SAM2Widget"]


def __getattr__(name):
    if name in __all__:
        from . import _widget

        return getattr(_widget, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
