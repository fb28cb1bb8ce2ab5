"""docs/make_screenshot.py (the README's screenshot) runs: the built-in model on the shipped sample, in a real
viewer, and writes a PNG of the whole window with the tracked labels in it."""

import importlib.util
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "make_screenshot.py"


def test_screenshot_script(make_napari_viewer, tmp_path):
    import imageio.v3 as iio

    spec = importlib.util.spec_from_file_location("make_screenshot", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    viewer = make_napari_viewer(show=True)
    out = module.main(tmp_path / "shot.png", frame=7, size=(1200, 800), viewer=viewer)
    shot = iio.imread(out)
    assert shot.ndim == 3 and shot.shape[0] >= 600 and shot.shape[1] >= 900
    labels = viewer.layers["SAM2 labels (nuclei time-lapse)"].data
    assert len(np.unique(np.asarray(labels[7]))) >= 5  # several nuclei tracked to the frame shown
    assert tuple(viewer.dims.axis_labels) == ("t", "y", "x")
