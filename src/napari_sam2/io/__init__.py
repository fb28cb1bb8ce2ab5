"""On-disk outputs of napari-sam2 (no napari imports): the OME-Zarr label store written frame by frame."""

from .ome_zarr import LabelStore, LabelStoreError, StoreExistsError, StoreWriteError

__all__ = ["LabelStore", "LabelStoreError", "StoreExistsError", "StoreWriteError"]
