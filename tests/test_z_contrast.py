"""A z-stack tracked along z under the model's z-stream contrast (`registry.ModelInfo.z_contrast`: nano-fluo's is
"local"): under the stack's one intensity range the network loses a dim large nucleus on the slice after the
click; time-lapses, 3D+t and the parity preset keep the model's contrast; the choice is recorded and replayed."""

import numpy as np
import pytest
from scipy import ndimage

from napari_sam2 import load_model, track
from napari_sam2.io.ome_zarr import LabelStore
from napari_sam2.io.results import open_result
from napari_sam2.preprocess import default_contrast, resolve_contrast
from napari_sam2.prompts import PromptSet
from napari_sam2.replay import replay
from napari_sam2.session import TrackingSession
from napari_sam2.synthetic_hard import hard_condition


@pytest.fixture(scope="module")
def nano():
    return load_model("nano-fluo", device="cpu")


@pytest.fixture(scope="module")
def stack():
    return hard_condition("large_anisotropic", 78, n=6)  # a test seed, neither tuning nor held-out


def _deepest(mask: np.ndarray) -> tuple[int, int]:
    depth = ndimage.distance_transform_edt(mask)
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(depth)), depth.shape))


def test_the_z_stream_default_is_the_models_z_contrast(nano, stack):
    assert default_contrast("nano-fluo") == "global" and default_contrast("nano-fluo", z_stream=True) == "local"
    assert default_contrast("sam2.1_hiera_tiny", z_stream=True) == "global"  # official checkpoints: no z default
    assert resolve_contrast("global", nano, z_stream=True).name == "global"  # asked for: as asked
    # the parity preset keeps the model's own contrast on a z stream too (one rule for the session and track())
    assert resolve_contrast(None, nano, z_stream=True, preset="parity").name == "global"
    assert resolve_contrast("local", nano, z_stream=True, preset="parity").name == "local"
    image = stack.image
    assert TrackingSession(nano, image, z_edge=0.5).frames.contrast.name == "local"
    assert TrackingSession(nano, image, z_stream=True).frames.contrast.name == "local"
    assert TrackingSession(nano, image).frames.contrast.name == "global"  # the session cannot tell z from t
    assert TrackingSession(nano, image, z_edge=0.5, contrast="global").frames.contrast.name == "global"
    assert TrackingSession(nano, image, z_edge=0.5, preset="parity").frames.contrast.name == "global"


def test_dim_large_nuclei_are_followed_through_z(nano, stack):
    """Five dim nuclei (0.40-0.58 of the brightest interphase one, beside a mitotic figure at 3.3) clicked on the
    middle slice: under the stack's range the network answers every other slice with nothing; under the z-stream
    default it follows them."""
    truth, middle = stack.labels, 3
    dim = [o for o in (1, 2, 3, 4, 5) if stack.events["brightness"][o] < 0.6]
    assert len(dim) == 5
    found = {}
    for contrast in ("global", None):
        with TrackingSession(nano, stack.image, z_edge=0.5, contrast=contrast) as session:
            for obj in dim:
                session.add_prompt(middle, obj, points=[_deepest(truth[middle] == obj)], labels=[1])
            slices = {r.frame: r.labels for r in session.propagate("both")}
        present = [(slices[z] == o).any() for o in dim for z in range(6) if z != middle]
        ious = [
            ((slices[z] == o) & (truth[z] == o)).sum() / ((slices[z] == o) | (truth[z] == o)).sum()
            for o in dim
            for z in range(6)
            if z != middle
        ]
        found[contrast] = float(np.mean(present)), float(np.mean(ious))
    assert found["global"][0] < 0.2 and found[None][0] >= 0.7, found  # (one of the five is lost under both)
    assert found[None][1] > found["global"][1] + 0.3, found


def test_track_records_the_z_contrast_and_replays_it(nano, stack, tmp_path):
    np.save(tmp_path / "stack.npy", stack.image)
    prompts = PromptSet()
    prompts.add(3, 2, points=[_deepest(stack.labels[3] == 2)])
    along_z = track(tmp_path / "stack.npy", prompts, model="nano-fluo", device="cpu", axis="z",
                    out=tmp_path / "z.ome.zarr", tables=False)  # fmt: skip
    assert along_z.provenance["settings"]["contrast"] == "local"
    assert replay(tmp_path / "z.ome.zarr", device="cpu").identical
    along_t = track(stack.image, prompts, model="nano-fluo", device="cpu", axis="t", tables=False)
    assert along_t.provenance["settings"]["contrast"] == "global"
    # a z-stack store made before the z default recorded "global": replayed and resumed under it, as it was made
    before = tmp_path / "before.ome.zarr"
    track(tmp_path / "stack.npy", prompts, model="nano-fluo", device="cpu", axis="z", out=before, tables=False,
          contrast="global")  # fmt: skip
    assert not np.array_equal(open_result(before).labels[:], open_result(tmp_path / "z.ome.zarr").labels[:])
    LabelStore.open(before, mode="r+").update_provenance({"status": "interrupted"})
    resumed = track(tmp_path / "stack.npy", None, model="nano-fluo", device="cpu", axis="z", out=before,
                    resume=True, tables=False)  # fmt: skip
    assert resumed.provenance["settings"]["contrast"] == "global"
    assert replay(before, device="cpu").identical
