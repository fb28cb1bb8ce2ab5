"""napari_sam2.synthetic_hard: seeded, and the hard properties it claims are measurable in its pixels."""

import numpy as np
import pytest
from scipy import ndimage

from napari_sam2.preprocess import IntensityRange
from napari_sam2.synthetic_hard import (
    HARD_CONDITIONS,
    hard_condition,
    hard_nuclei_timelapse,
    hard_nuclei_zstack,
    random_hard_stack,
)


def object_medians(image, labels):
    ids = [int(i) for i in np.unique(labels)[1:]]
    return dict(zip(ids, ndimage.median(image.astype(float), labels, ids)))


def test_same_seed_same_arrays_other_seed_other_arrays():
    a = hard_nuclei_timelapse(3, (96, 96), seed=5, radius=8.0)
    b = hard_nuclei_timelapse(3, (96, 96), seed=5, radius=8.0)
    c = hard_nuclei_timelapse(3, (96, 96), seed=6, radius=8.0)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels) and a.events == b.events
    assert not np.array_equal(a.image, c.image)
    s1, f1 = random_hard_stack(11, n_frames=2, image_size=128)
    s2, f2 = random_hard_stack(11, n_frames=2, image_size=128)
    assert np.array_equal(s1.image, s2.image) and np.array_equal(s1.labels, s2.labels) and f1 == f2


def test_brightness_spread_is_in_the_pixels_and_leaves_most_nuclei_dim():
    stack = hard_nuclei_timelapse(
        1, (192, 192), seed=3, radius=8.0, brightness_spread=10.0, mitotic_fraction=0.0, haze=0.0, debris=0,
        background_structure=0.0, vignetting=0.0, photons=2000.0, read_noise=0.5, bits=16,
    )  # fmt: skip
    brightness = stack.events["brightness"]
    assert max(brightness.values()) / min(brightness.values()) > 5  # log-uniform over 10×: drawn near both ends
    medians = object_medians(stack.image[0], stack.labels[0])
    ids = sorted(medians)
    measured = np.array([medians[i] for i in ids]) - np.percentile(stack.image, 5)  # minus offset + background
    true = np.array([brightness[i] for i in ids])
    assert np.corrcoef(np.log(measured.clip(1)), np.log(true))[0, 1] > 0.9
    assert measured.max() / measured.min() > 4
    # the named condition (with bright mitotic figures and specks): percentile scaling leaves most nuclei dim
    hard = hard_condition("brightness_spread", seed=1, n=2)
    scaled = IntensityRange.from_percentiles(hard.image).apply(hard.image[0])
    interphase = {k: v for k, v in object_medians(scaled, hard.labels[0]).items() if k not in hard.events["mitotic"]}
    assert np.median(list(interphase.values())) < 0.4


def test_mitotic_figures_are_bright_compact_and_touch_dim_nuclei():
    stack = hard_nuclei_timelapse(1, (160, 160), seed=2, radius=10.0, fill=0.05, mitotic_neighbours=4, debris=0)
    mitotic = stack.events["mitotic"]
    assert len(mitotic) >= 3
    labels = stack.labels[0]
    medians = object_medians(stack.image[0], labels)
    areas = dict(zip(*np.unique(labels, return_counts=True)))
    interphase = [i for i in medians if i not in mitotic]
    for m in mitotic:
        partners = stack.events["neighbours"][m]
        assert partners, "a mitotic figure placed beside a nucleus touches it"
        p = partners[0]
        assert medians[m] > 1.5 * medians[p] and areas[m] < areas[p]
        touching = ndimage.binary_dilation(labels == m) & (labels == p)
        assert touching.any(), "they share a border"
    assert min(medians[m] for m in mitotic) > np.median([medians[i] for i in interphase])


@pytest.mark.parametrize("bits, dtype, top", [(8, np.uint8, 255), (12, np.uint16, 4095), (16, np.uint16, 65535)])
def test_camera_bit_depths(bits, dtype, top):
    stack = hard_nuclei_timelapse(1, (64, 64), seed=0, radius=6.0, bits=bits, fill_range=0.9)
    assert stack.image.dtype == dtype and stack.image.max() <= top
    assert stack.image.max() > top // 4  # uses its range
    if bits == 16:
        assert stack.image.max() > 4095


def test_zstack_is_anisotropic_with_touching_neighbours_in_3d_and_radius_3_to_40():
    stack = hard_nuclei_zstack(12, (160, 160), seed=4, radius=25.0, z_step=4.0, cluster_fraction=0.8)
    assert stack.axes == "ZYX" and stack.scale == (4.0, 1.0, 1.0)
    labels = stack.labels
    pairs = [(a, b) for a, bs in stack.events["neighbours"].items() for b in bs]
    assert pairs
    assert any((ndimage.binary_dilation(labels == a) & (labels == b)).any() for a, b in pairs)
    # large nuclei: lateral radius from the area of the biggest cross-section
    biggest = max(int((labels[z] == i).sum()) for i in np.unique(labels)[1:] for z in range(len(labels)))
    assert 18 <= np.sqrt(biggest / np.pi) <= 45
    small = hard_nuclei_timelapse(1, (64, 64), seed=1, radius=3.0, irregularity=0.0, elongation=0.0)
    areas = np.unique(small.labels, return_counts=True)[1][1:]
    assert 2 <= np.sqrt(np.median(areas) / np.pi) <= 4.5


def test_named_conditions_and_bad_settings():
    for name in HARD_CONDITIONS:
        stack = hard_condition(name, seed=0, n=2, shape=(96, 96))
        assert stack.labels.max() > 0 and stack.image.shape == (2, 96, 96)
    with pytest.raises(ValueError, match="unknown hard condition"):
        hard_condition("nope", 0)
    with pytest.raises(ValueError, match="unknown setting"):
        hard_nuclei_timelapse(1, (32, 32), brightness=3)
    with pytest.raises(ValueError, match="bits"):
        hard_nuclei_timelapse(1, (32, 32), bits=10)
