"""docs/make_screenshot.py (the README's screenshots) runs: the built-in model on the shipped sample, in a real
viewer, and writes a PNG of the whole window with the tracked labels in it; an automatic (`auto=True`) result
opens in napari with the lineage graph of its division drawn."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "make_screenshot.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("make_screenshot", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_screenshot_script(script, make_napari_viewer, tmp_path):
    import imageio.v3 as iio

    viewer = make_napari_viewer(show=True)
    out = script.main(tmp_path / "shot.png", frame=7, size=(1200, 800), viewer=viewer)
    shot = iio.imread(out)
    assert shot.ndim == 3 and shot.shape[0] >= 600 and shot.shape[1] >= 900
    labels = viewer.layers["SAM2 labels (nuclei time-lapse)"].data
    assert len(np.unique(np.asarray(labels[7]))) >= 5  # several nuclei tracked to the frame shown
    assert tuple(viewer.dims.axis_labels) == ("t", "y", "x")


def test_an_auto_result_opens_with_its_lineage_graph(script, make_napari_viewer, tmp_path):
    """track(auto=True) (no prompts: the first frame segmented, then discovery) → the store opens in napari with a
    Tracks layer whose graph holds the division; the README's lineage figure is made from such a store. The
    generator's true masks stand in for segment everything (fast and sure to find the division; the command
    line's real `--auto` runs in tests/test_lineage.py)."""
    import imageio.v3 as iio

    from napari_sam2 import load_model, track
    from napari_sam2.discovery import DiscoveryOptions
    from napari_sam2.sample_data import nuclei_timelapse

    movie = nuclei_timelapse(n_frames=6, shape=(128, 128), n_nuclei=3, seed=11)  # a nucleus divides on frame 3

    def oracle(session, frame):
        truth = movie.labels[frame]
        return [truth == o for o in np.unique(truth)[1:]]

    store = tmp_path / "auto.ome.zarr"
    options = DiscoveryOptions(detector=oracle, division_gap=0)
    result = track(movie.image, model=load_model("nano-fluo", device="cpu"), auto=True, discover=options, out=store,
                   direction="forward", tables=False)  # fmt: skip
    divisions = [e for e in result.events if e["kind"] == "division"]
    assert [e["frame"] for e in divisions] == [movie.events["division"]["frame"]]
    mother, daughters = divisions[0]["mother"], divisions[0]["daughters"]

    viewer = make_napari_viewer(show=True)
    out = script.lineage(tmp_path / "lineage.png", store=store, size=(1000, 700), viewer=viewer)
    kinds = [type(layer).__name__ for layer in viewer.layers]
    assert kinds == ["Image", "Labels", "Tracks"]
    tracks = viewer.layers[2]
    assert {d: tracks.graph[d] for d in daughters} == {d: [mother] for d in daughters}
    assert viewer.dims.current_step[0] == 5 and tracks.tail_length >= 6  # the last frame, the whole history
    shot = iio.imread(out)
    assert shot.ndim == 3 and shot.shape[0] >= 500
