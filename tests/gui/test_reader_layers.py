"""A result store opened in a real napari viewer: layers at the store's physical scale with units, axes named
(the slider reads "t"), the labels in the colours recorded in the store."""

import numpy as np
import pytest

from napari_sam2.io.ome_zarr import label_color
from napari_sam2.io.results import save_result


@pytest.fixture
def store(tmp_path):
    labels = np.zeros((4, 24, 32), np.uint32)
    labels[:, 4:10, 4:12] = 3
    labels[1:, 14:20, 18:28] = 9
    image = (labels * 20).astype(np.uint8)
    path = tmp_path / "cells.ome.zarr"
    units = {"t": "second", "y": "micrometer", "x": "micrometer"}
    save_result(path, labels, axes="tyx", image=image, scale=[30.0, 0.5, 0.5], units=units)
    return path


def test_store_opens_with_scale_units_axis_names_and_colours(make_napari_viewer, store):
    viewer = make_napari_viewer()
    layers = viewer.open(str(store), plugin="napari-sam2")
    kinds = [type(layer).__name__ for layer in layers]
    assert kinds == ["Image", "Labels", "Tracks"]
    for layer in layers:
        np.testing.assert_allclose(layer.scale, [30.0, 0.5, 0.5])
        assert [str(u) for u in layer.units] == ["second", "micrometer", "micrometer"]
        assert tuple(layer.axis_labels) == ("t", "y", "x")
    assert tuple(viewer.dims.axis_labels) == ("t", "y", "x")  # the slider is named "t", not "-3"
    labels = layers[1]
    for label in (3, 9):
        np.testing.assert_allclose(labels.colormap.map(label), np.array(label_color(label)) / 255, atol=1e-6)
    assert labels.colormap.map(0)[3] == 0  # the background stays transparent


def test_plain_open_without_a_chooser_where_napari_allows_it(make_napari_viewer, store):
    """napari's `viewer.open(path)` defaults to plugin="napari" (its built-in reader, which cannot read OME-Zarr
    label stores); with plugin=None napari picks the reader itself when the user has set a preference for the
    pattern (File ▸ Open asks once and can remember). Both are napari's rules; we check ours is offered and works."""
    from napari.plugins import _npe2
    from napari.settings import get_settings

    viewer = make_napari_viewer()
    assert "napari-sam2" in _npe2.get_readers(str(store))
    settings = get_settings().plugins
    before = dict(settings.extension2reader)
    try:
        settings.extension2reader = {**before, "*.ome.zarr/": "napari-sam2"}  # folders match with a trailing /
        layers = viewer.open(str(store), plugin=None)
    finally:
        settings.extension2reader = before
    assert [type(layer).__name__ for layer in layers] == ["Image", "Labels", "Tracks"]


def test_widget_layers_and_saved_store_keep_the_image_units(sam_viewer, stack, qtbot, tmp_path):
    from gui_helpers import WAIT_MS, wait_idle

    from napari_sam2.io.results import open_result

    units = ("second", "micrometer", "micrometer")
    _viewer, _layer, w = sam_viewer(stack, scale=(30.0, 0.5, 0.5), units=units, axis_labels=("t", "y", "x"))
    for made in (w.labels_layer, w.prompt_layers.points, w.prompt_layers.boxes):
        assert tuple(str(u) for u in made.units) == units and tuple(made.axis_labels) == ("t", "y", "x")
        np.testing.assert_allclose(made.scale, [30.0, 0.5, 0.5])
    with qtbot.waitSignal(w.prompted, timeout=WAIT_MS):
        w.prompt_layers.points.add([0, 30, 30])
    wait_idle(qtbot, w)
    with qtbot.waitSignal(w.saved, timeout=WAIT_MS):
        w.save(str(tmp_path / "saved.ome.zarr"))
    saved = open_result(tmp_path / "saved.ome.zarr")
    assert saved.scale == (30.0, 0.5, 0.5)
    assert saved.units == {"t": "second", "y": "micrometer", "x": "micrometer"}
