"""On-disk inputs and outputs of napari-sam2 (no napari imports): readers and the OME-Zarr label store.

The store's names are loaded on first use, so that the tracking core (frames.py uses io.readers) runs where zarr
is not installed, e.g. in the parity environment.
"""

__all__ = ["LabelStore", "LabelStoreError", "StoreExistsError", "StoreWriteError"]


def __getattr__(name):
    if name in __all__:
        from . import ome_zarr

        return getattr(ome_zarr, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
