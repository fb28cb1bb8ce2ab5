"""The napari dock widget (imports napari and Qt; the core package does not)."""

from ._widget import SHORTCUTS, SAM2Widget

__all__ = ["SHORTCUTS", "SAM2Widget"]
