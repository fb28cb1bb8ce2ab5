"""Lazy stack readers: TIFF (memmap / zarr view), OME-TIFF axes, Zarr / OME-Zarr, .npy, NIfTI; windows; axes."""

import sys

import numpy as np
import pytest
import tifffile
import zarr

from napari_sam2.io.ome_zarr import LabelStore
from napari_sam2.io.readers import LazyTranspose, open_stack, parse_window, resolve_axis
from napari_sam2.preprocess import InputError, IntensityRange


@pytest.fixture
def stack():
    return np.random.default_rng(0).integers(0, 4000, (5, 24, 32), dtype=np.uint16)


def test_npy_is_memory_mapped(tmp_path, stack):
    np.save(tmp_path / "s.npy", stack)
    opened = open_stack(tmp_path / "s.npy")
    assert isinstance(opened.data, np.memmap) and opened.axes == "tyx" and not opened.axes_known
    np.testing.assert_array_equal(opened.data[2], stack[2])


def test_tiff_memmap_or_zarr_never_a_loaded_array(tmp_path, stack):
    tifffile.imwrite(tmp_path / "plain.tif", stack, metadata={"axes": "ZYX"})
    tifffile.imwrite(tmp_path / "packed.tif", stack, compression="zlib", metadata={"axes": "TYX"})
    plain = open_stack(tmp_path / "plain.tif")
    assert isinstance(plain.data, np.memmap) and plain.axes == "zyx" and plain.axes_known
    packed = open_stack(tmp_path / "packed.tif")
    assert isinstance(packed.data, zarr.Array) and packed.axes == "tyx"  # decoded page by page on indexing
    np.testing.assert_array_equal(packed.data[3], stack[3])
    np.testing.assert_array_equal(plain.data[1], stack[1])


def test_ome_tiff_channel_axis(tmp_path):
    data = np.random.default_rng(1).integers(0, 255, (4, 2, 16, 20), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "c.ome.tif", data, metadata={"axes": "TCYX"}, ome=True)
    opened = open_stack(tmp_path / "c.ome.tif")
    assert opened.axes == "tcyx" and opened.shape == (4, 2, 16, 20)
    assert resolve_axis("t", opened.axes, 4) == 0


def test_zarr_array_and_ome_zarr_image(tmp_path, stack):
    arr = zarr.create_array(tmp_path / "a.zarr", shape=stack.shape, dtype=stack.dtype, chunks=(1, 24, 32))
    arr[:] = stack
    opened = open_stack(tmp_path / "a.zarr")
    assert isinstance(opened.data, zarr.Array) and opened.shape == stack.shape
    LabelStore.create(tmp_path / "o.ome.zarr", stack.shape, axes="zyx", image=stack, scale=(2, 0.5, 0.5))
    ome = open_stack(tmp_path / "o.ome.zarr")
    assert ome.format == "ome-zarr" and ome.axes == "zyx" and ome.axes_known and ome.scale == (2, 0.5, 0.5)
    np.testing.assert_array_equal(ome.data[4], stack[4])


def test_nifti_is_presented_as_zyx(tmp_path):
    nib = pytest.importorskip("nibabel")
    vol = np.random.default_rng(2).normal(0, 300, (20, 16, 6)).astype(np.int16)  # (i, j, k) = (x, y, z)
    affine = np.diag([0.8, 0.9, 2.5, 1.0])
    nib.save(nib.Nifti1Image(vol, affine), tmp_path / "ct.nii.gz")
    opened = open_stack(tmp_path / "ct.nii.gz")
    assert opened.axes == "zyx" and opened.shape == (6, 16, 20) and opened.format == "nifti"
    assert opened.scale == pytest.approx((2.5, 0.9, 0.8))
    np.testing.assert_array_equal(opened.data[3], vol[:, :, 3].T)
    np.testing.assert_array_equal(opened.data[:, 5, :], vol[:, 5, :].T)


def test_nifti_without_nibabel_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / "a.nii").write_bytes(b"\0" * 400)
    monkeypatch.setitem(sys.modules, "nibabel", None)
    with pytest.raises(InputError, match=r"pip install napari-sam2\[nifti\]"):
        open_stack(tmp_path / "a.nii")


def test_lazy_transpose_matches_numpy():
    a = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    view = LazyTranspose(a, (2, 0, 3, 1))
    ref = np.transpose(a, (2, 0, 3, 1))
    assert view.shape == ref.shape
    for key in [(1,), (slice(None), 1), (0, slice(None), 2), (Ellipsis, 0), (slice(1, 3), 1, slice(None), 2)]:
        np.testing.assert_array_equal(view[key], ref[key])
    np.testing.assert_array_equal(np.asarray(view), ref)


def test_window_and_axis_parsing():
    assert parse_window("-1000,400") == IntensityRange(-1000.0, 400.0)
    assert parse_window((0, 255)) == IntensityRange(0.0, 255.0)
    assert parse_window(None) is None
    for bad, message in [("400,-1000", "is empty"), ("1,2,3", "LO,HI"), ("a,b", "two numbers")]:
        with pytest.raises(InputError, match=message):
            parse_window(bad)
    assert resolve_axis(None, "zyx", 3) == 0 and resolve_axis("2", "tyx", 3) == 2 and resolve_axis(-3, "tyx", 3) == 0
    assert resolve_axis("z", "tyx", 3, axes_known=False) == 0
    with pytest.raises(InputError, match="not an axis"):
        resolve_axis("z", "tyx", 3, axes_known=True)
    with pytest.raises(InputError, match="out of range"):
        resolve_axis(3, "tyx", 3)


def test_bad_paths_give_clear_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        open_stack(tmp_path / "nope.tif")
    (tmp_path / "x.png").write_bytes(b"x")
    with pytest.raises(InputError, match="unknown image format '.png'"):
        open_stack(tmp_path / "x.png")
    (tmp_path / "bad.tif").write_bytes(b"not a tiff")
    with pytest.raises(InputError, match="not a readable TIFF"):
        open_stack(tmp_path / "bad.tif")
    (tmp_path / "bad.npy").write_bytes(b"nope")
    with pytest.raises(InputError, match="not a readable .npy"):
        open_stack(tmp_path / "bad.npy")
