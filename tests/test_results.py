"""Whole-result save/open, and the napari reader/writer contributions run through npe2 (no viewer)."""

from pathlib import Path

import numpy as np
import pytest

import napari_sam2
from napari_sam2.io.ome_zarr import LabelStoreError
from napari_sam2.io.results import is_result_store, open_result, save_result
from napari_sam2.prompts import PromptSet

MANIFEST = Path(napari_sam2.__file__).parent / "napari.yaml"


def _labels(n=4, shape=(24, 32)):
    labels = np.zeros((n, *shape), np.uint32)
    for t in range(n):
        labels[t, 4:10, 2 + 3 * t : 8 + 3 * t] = 3
        if t != 2:  # object 9 vanishes on frame 2 and comes back: two tracks
            labels[t, 14:20, 20:26] = 9
    return labels


def _prompts():
    prompts = PromptSet()
    prompts.add(0, 3, points=[[6, 4]])
    prompts.add(0, 9, box=[14, 20, 20, 26])
    return prompts


def test_save_and_open_roundtrip(tmp_path):
    labels = _labels()
    image = (labels * 20).astype(np.uint8)
    path = tmp_path / "r.ome.zarr"
    save_result(path, labels, image=image, prompts=_prompts(), provenance={"note": "x"}, scale=(1, 0.5, 0.5))
    result = open_result(path)
    np.testing.assert_array_equal(result.labels[:], labels)
    np.testing.assert_array_equal(result.image[:], image)
    assert result.axes == "tyx" and result.scale == (1, 0.5, 0.5)
    assert result.prompts == _prompts()
    assert result.provenance["note"] == "x" and result.provenance["status"] == "complete"
    assert result.finished_frames == [0, 1, 2, 3] and result.complete
    assert sorted(result.colors) == [3, 9]
    assert is_result_store(path) and not is_result_store(tmp_path) and not is_result_store(tmp_path / "nothing")
    with pytest.raises(FileExistsError, match="already exists"):
        save_result(path, labels)
    save_result(path, labels[:2], overwrite=True)
    assert open_result(path).labels.shape == (2, 24, 32) and open_result(path).prompts is None
    with pytest.raises((FileNotFoundError, LabelStoreError)):
        open_result(tmp_path / "missing.zarr")


@pytest.fixture
def plugin_manager():
    npe2 = pytest.importorskip("npe2")
    pm = npe2.PluginManager.instance()
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    registered = manifest.name in pm._manifests
    if not registered:
        pm.register(manifest)
    yield npe2
    if not registered:
        pm.unregister(manifest.name)


def test_npe2_reader_opens_our_store_and_declines_others(tmp_path, plugin_manager):
    npe2 = plugin_manager
    labels = _labels()
    path = tmp_path / "cells.ome.zarr"
    save_result(path, labels, image=(labels * 20).astype(np.uint8), prompts=_prompts(), scale=(1, 0.5, 0.5))
    layers = npe2.read([str(path)], stack=False, plugin_name="napari-sam2")
    assert [t for _, _, t in layers] == ["image", "labels", "tracks"]
    _, (lab, lab_kw, _), (tracks, tracks_kw, _) = layers
    np.testing.assert_array_equal(np.asarray(lab), labels)
    assert lab_kw["name"] == "cells labels" and lab_kw["scale"] == (1, 0.5, 0.5)
    assert lab_kw["metadata"]["napari_sam2"]["provenance"]["prompts"] == _prompts().to_dict()
    assert sorted(set(tracks[:, 0].astype(int))) == [3, 9, 10] and tracks_kw["graph"] == {10: [9]}

    from napari_sam2._napari_io import get_reader

    assert get_reader(str(tmp_path)) is None  # a plain folder
    assert get_reader(str(tmp_path / "missing.zarr")) is None
    import zarr

    zarr.create_array(tmp_path / "foreign.zarr", shape=(2, 4, 4), dtype="u1")
    assert get_reader(str(tmp_path / "foreign.zarr")) is None


def test_npe2_reader_opens_a_tzyx_store_as_4d_layers(tmp_path, plugin_manager):
    """A 3D+t result opens as a 4-D Labels layer (both sliders) at its physical scale, with 4-D tracks (t, z, y, x)."""
    npe2 = plugin_manager
    labels = np.zeros((3, 5, 24, 32), np.uint32)
    for t in range(3):
        labels[t, 1:4, 4:10, 2 + 3 * t : 8 + 3 * t] = 3
        labels[t, 2:5, 14:20, 20:26] = 9
    path = tmp_path / "embryo.ome.zarr"
    units = ["second", "micrometer", "micrometer", "micrometer"]
    save_result(path, labels, axes="tzyx", image=(labels * 20).astype(np.uint8), scale=(30, 2, 0.5, 0.5), units=units)
    layers = npe2.read([str(path)], stack=False, plugin_name="napari-sam2")
    assert [t for _, _, t in layers] == ["image", "labels", "tracks"]
    (img, img_kw, _), (lab, lab_kw, _), (tracks, tracks_kw, _) = layers
    assert img.shape == lab.shape == (3, 5, 24, 32)
    np.testing.assert_array_equal(np.asarray(lab), labels)
    assert lab_kw["scale"] == img_kw["scale"] == (30, 2, 0.5, 0.5)
    assert lab_kw["axis_labels"] == ("t", "z", "y", "x") and lab_kw["units"] == tuple(units)
    assert tracks.shape == (6, 5) and tracks_kw["scale"] == (30, 2, 0.5, 0.5)  # track id, t, z, y, x
    np.testing.assert_array_equal(tracks[tracks[:, 0] == 9][:, 1:3], [[0, 3.0], [1, 3.0], [2, 3.0]])

    # napari's writer saves the 4-D layer back as a tzyx store
    out = tmp_path / "again.ome.zarr"
    npe2.write(str(out), [(np.asarray(lab), lab_kw, "labels")], plugin_name="napari-sam2")
    again = open_result(out)
    assert again.axes == "tzyx" and tuple(again.scale) == (30, 2, 0.5, 0.5)
    np.testing.assert_array_equal(again.labels[:], labels)


def test_npe2_writer_saves_a_labels_layer(tmp_path, plugin_manager):
    npe2 = plugin_manager
    labels = _labels()
    meta = {
        "name": "tracked",
        "scale": (1.0, 0.25, 0.25),
        "metadata": {"napari_sam2": {"prompts": _prompts().to_dict(), "provenance": {"model": {"source": "m"}}}},
    }
    out = tmp_path / "saved.ome.zarr"
    written = npe2.write(str(out), [(labels, meta, "labels")], plugin_name="napari-sam2")
    assert written == [str(out)]
    result = open_result(out)
    np.testing.assert_array_equal(result.labels[:], labels)
    assert result.prompts == _prompts() and result.scale == (1.0, 0.25, 0.25)
    assert result.record.model.source == "m" and result.record.tool == "napari writer"
    assert result.record.input["layer"] == "tracked"
    # and napari can read back what it wrote, through our reader
    assert [t for _, _, t in npe2.read([str(out)], stack=False, plugin_name="napari-sam2")] == ["labels", "tracks"]


def test_napari_open_then_save_keeps_prompts_model_and_settings(tmp_path, plugin_manager):
    """File ▸ Open then File ▸ Save: the reader's metadata carries the provenance, the writer keeps all of it."""
    from napari_sam2.io.provenance import ModelRecord, Provenance

    npe2 = plugin_manager
    labels = _labels()
    record = Provenance(
        model=ModelRecord(source="nano-fluo", config="nano", checkpoint_sha256="ab" * 32),
        settings={"direction": "forward", "preset": "default"},
        parents={10: 9},
        tool="track",
    )
    first = tmp_path / "first.ome.zarr"
    save_result(first, labels, prompts=_prompts(), provenance=record)
    layers = npe2.read([str(first)], stack=False, plugin_name="napari-sam2")
    data, kwargs, _ = next(layer for layer in layers if layer[2] == "labels")
    second = tmp_path / "second.ome.zarr"
    npe2.write(str(second), [(np.asarray(data), kwargs, "labels")], plugin_name="napari-sam2")
    back = open_result(second)
    assert back.prompts == _prompts()
    assert back.record.model == record.model and back.record.settings == record.settings
    assert back.record.parents == {10: 9} and back.record.tool == "napari writer"
    assert back.record.extra["saved_from"] == str(first)


def test_save_writes_the_attributes_once_not_per_frame(tmp_path):
    """A new id on every frame: the colours are all recorded, in one attribute write after the frames."""
    path = tmp_path / "r.ome.zarr"
    attrs = path / "labels" / "sam2" / "zarr.json"
    seen = []

    class Frames:  # a lazy stack (as a napari layer's dask/zarr data): frame t is read just before it is written
        shape, dtype, ndim = (5, 16, 16), np.dtype(np.uint32), 3

        def __getitem__(self, t):
            if t > 0:  # frames 0..t-1 are written by now
                seen.append((attrs.stat().st_mtime_ns, attrs.read_bytes()))
            frame = np.zeros((16, 16), np.uint32)
            frame[t : t + 3, 2:6] = 10 + t
            return frame

    save_result(path, Frames())
    assert len(seen) == 4 and len(set(seen)) == 1
    assert sorted(open_result(path).colors) == [10, 11, 12, 13, 14]
