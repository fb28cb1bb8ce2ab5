"""Physical units end to end: file metadata (OME-TIFF, ImageJ TIFF, OME-Zarr, NIfTI) → the result store's axes
(unit) and scale → the napari layer data of the reader → the region table's physical columns; and a napari layer's
scale and units → the store through the writer."""

import numpy as np
import pytest
import tifffile

from napari_sam2 import track
from napari_sam2._napari_io import read_result, write_labels
from napari_sam2.io.readers import open_stack
from napari_sam2.io.results import open_result
from napari_sam2.io.units import normalise_unit

OME_UNITS = {"PhysicalSizeX": 0.5, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": 0.5, "PhysicalSizeYUnit": "µm"}


@pytest.fixture
def ome_movie(tmp_path, blob_stack):
    """A 4-frame OME-TIFF with 0.5 µm pixels and 30 s between frames, and seed labels for frame 0."""
    stack = blob_stack(n_frames=4, shape=(64, 96))
    path = tmp_path / "movie.ome.tif"
    meta = {"axes": "TYX", "TimeIncrement": 30.0, "TimeIncrementUnit": "s", **OME_UNITS}
    tifffile.imwrite(path, stack, ome=True, photometric="minisblack", metadata=meta)
    seeds = np.zeros((64, 96), np.uint16)
    seeds[20:40, 20:40] = 1
    return path, seeds


def test_ome_tiff_units_reach_store_reader_layers_and_regions(ome_movie, tmp_path, capsys):
    path, seeds = ome_movie
    opened = open_stack(path)
    assert opened.scale == (30.0, 0.5, 0.5)
    assert opened.units == {"t": "second", "y": "micrometer", "x": "micrometer"}

    out = tmp_path / "movie.ome.zarr"
    result = track(path, seeds, model="nano-fluo", axis="t", out=out, device="cpu", direction="forward")
    assert result.scale == [30.0, 0.5, 0.5] and result.units == {"t": "second", "y": "micrometer", "x": "micrometer"}

    ms = result.store.attrs["ome"]["multiscales"][0]
    assert ms["axes"] == [
        {"name": "t", "type": "time", "unit": "second"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    assert ms["datasets"][0]["coordinateTransformations"] == [{"type": "scale", "scale": [30.0, 0.5, 0.5]}]

    saved = open_result(out)
    assert saved.scale == (30.0, 0.5, 0.5) and saved.units == {"t": "second", "y": "micrometer", "x": "micrometer"}
    layers = read_result(str(out))
    assert [kind for _, _, kind in layers][:2] == ["image", "labels"]
    for _, kwargs, _ in layers:
        assert kwargs["scale"] == (30.0, 0.5, 0.5)
        assert kwargs["units"] == ("second", "micrometer", "micrometer")
        assert kwargs["axis_labels"] == ("t", "y", "x")

    rows = [r for r in result.regions if r["label"] == 1]
    assert rows, "the seeded object was tracked"
    for row in rows:
        assert row["t_s"] == pytest.approx(30.0 * row["frame"])
        assert row["area_um2"] == pytest.approx(0.25 * row["area"])
        assert row["centroid_y_um"] == pytest.approx(0.5 * row["centroid_y"])
        assert row["centroid_x_um"] == pytest.approx(0.5 * row["centroid_x"])
    header = (tmp_path / "movie_regions.csv").read_text().splitlines()[0].split(",")
    assert {"area", "area_um2", "centroid_y", "centroid_y_um", "t_s"} <= set(header)
    from napari_sam2 import cli

    capsys.readouterr()
    assert cli.main(["info", str(out)]) == 0
    assert "scale: t=30 second, y=0.5 micrometer, x=0.5 micrometer" in capsys.readouterr().out


def test_a_layer_scale_and_units_go_through_the_writer(tmp_path):
    labels = np.zeros((3, 16, 16), np.uint32)
    labels[:, 4:8, 4:8] = 2
    meta = {"name": "cells", "scale": (2.0, 0.25, 0.25), "units": ("second", "nanometer", "nanometer")}
    meta["axis_labels"] = ("t", "y", "x")
    write_labels(str(tmp_path / "cells.ome.zarr"), labels, meta)
    saved = open_result(tmp_path / "cells.ome.zarr")
    assert saved.scale == (2.0, 0.25, 0.25) and saved.units == {"t": "second", "y": "nanometer", "x": "nanometer"}
    # napari's default unit "pixel" is not a physical unit: no `unit` is written for it
    meta["units"] = ("pixel", "pixel", "pixel")
    write_labels(str(tmp_path / "px.ome.zarr"), labels, meta)
    assert open_result(tmp_path / "px.ome.zarr").units is None


def test_imagej_ome_zarr_and_nifti_units(tmp_path):
    data = np.zeros((3, 2, 8, 8), np.uint8)
    tifffile.imwrite(tmp_path / "ij.tif", data, imagej=True, resolution=(4.0, 4.0),
                     metadata={"axes": "TZYX", "spacing": 2.0, "unit": "micron", "finterval": 5.0})  # fmt: skip
    opened = open_stack(tmp_path / "ij.tif")
    assert opened.scale == (5.0, 2.0, 0.25, 0.25)
    assert opened.units == {"t": "second", "z": "micrometer", "y": "micrometer", "x": "micrometer"}

    from napari_sam2.io.ome_zarr import LabelStore

    LabelStore.create(tmp_path / "in.ome.zarr", (2, 8, 8), axes="zyx", image=np.zeros((2, 8, 8), np.uint8),
                      scale=[1.5, 0.1, 0.1], units={"z": "micrometer", "y": "micrometer", "x": "micrometer"})  # fmt: skip
    opened = open_stack(tmp_path / "in.ome.zarr")
    assert opened.scale == (1.5, 0.1, 0.1) and opened.units == {"z": "micrometer", "y": "micrometer", "x": "micrometer"}

    nibabel = pytest.importorskip("nibabel")
    image = nibabel.Nifti1Image(np.zeros((8, 6, 4), np.int16), np.diag([0.8, 0.8, 2.5, 1.0]))
    image.header.set_xyzt_units("mm", "sec")
    nibabel.save(image, tmp_path / "ct.nii.gz")
    opened = open_stack(tmp_path / "ct.nii.gz")
    assert opened.scale == pytest.approx((2.5, 0.8, 0.8))
    assert opened.units == {"z": "millimeter", "y": "millimeter", "x": "millimeter"}


@pytest.mark.parametrize(
    ("text", "unit"),
    [("µm", "micrometer"), ("μm", "micrometer"), ("micron", "micrometer"), ("nm", "nanometer"), ("sec", "second"),
     ("s", "second"), ("min", "minute"), ("seconds", "second"), ("mm", "millimeter"), ("pixel", None), ("", None),
     (None, None), ("furlong", None)],
)  # fmt: skip
def test_unit_spellings(text, unit):
    assert normalise_unit(text) == unit
