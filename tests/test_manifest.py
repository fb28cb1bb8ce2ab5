"""The npe2 manifest is valid, every command resolves, and the sample-data commands give napari layer data."""

from pathlib import Path

import pytest

npe2 = pytest.importorskip("npe2")

import napari_sam2

MANIFEST = Path(napari_sam2.__file__).parent / "napari.yaml"


def test_manifest_parses_and_sample_data_loads():
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    assert manifest.name == "napari-sam2"
    keys = {s.key for s in manifest.contributions.sample_data}
    assert keys == {"nuclei_timelapse", "nuclei_timelapse_16bit", "nuclei_zstack", "nuclei_4d"}
    commands = {c.id: c for c in manifest.contributions.commands}
    for command in commands.values():  # every command points at something importable and callable
        module, func = command.python_name.split(":")
        assert callable(getattr(__import__(module, fromlist=[func]), func)), command.id
    for sample in manifest.contributions.sample_data:
        module, func = commands[sample.command].python_name.split(":")
        layers = getattr(__import__(module, fromlist=[func]), func)()
        (image, _, image_type), (labels, _, labels_type) = layers
        assert (image_type, labels_type) == ("image", "labels")
        assert image.shape == labels.shape and labels.max() > 0
