"""Synthetic nuclei stacks: determinism, camera ranges, and the staged events that the ground truth must contain."""

import numpy as np
import pytest
from scipy import ndimage

from napari_sam2.sample_data import (
    SampleStack,
    as_layer_data,
    nuclei_timelapse,
    nuclei_zstack,
    write_ctc_ground_truth,
)


@pytest.fixture(scope="module")
def movie() -> SampleStack:
    return nuclei_timelapse()  # the defaults: 30 frames of 256 x 256, 8 nuclei, uint8


@pytest.fixture(scope="module")
def volume() -> SampleStack:
    return nuclei_zstack()


def _frames_present(labels, obj_id):
    return [t for t in range(labels.shape[0]) if (labels[t] == obj_id).any()]


def _touch(labels2d, a, b):
    return bool((ndimage.binary_dilation(labels2d == a) & (labels2d == b)).any())


# ---------------------------------------------------------------------- basics
def test_shapes_and_types(movie, volume):
    assert movie.image.shape == movie.labels.shape == (30, 256, 256)
    assert movie.image.dtype == np.uint8 and movie.labels.dtype == np.uint32
    assert movie.axes == "TYX"
    assert volume.image.shape == volume.labels.shape == (24, 256, 256)
    assert volume.image.dtype == np.uint8 and volume.labels.dtype == np.uint32
    assert volume.axes == "ZYX" and volume.scale == (2.0, 1.0, 1.0)
    assert set(np.unique(volume.labels)) == set(range(11))
    small = nuclei_zstack(n_slices=7, shape=(40, 50), n_nuclei=3, seed=1)
    assert small.image.shape == small.labels.shape == (7, 40, 50)


@pytest.mark.parametrize("make", [nuclei_timelapse, nuclei_zstack])
def test_same_seed_same_stack_other_seed_other_stack(make):
    kwargs = {"shape": (64, 72), "seed": 7}
    kwargs["n_frames" if make is nuclei_timelapse else "n_slices"] = 6
    a, b = make(**kwargs), make(**kwargs)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.lineage == b.lineage
    c = make(**{**kwargs, "seed": 8})
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.labels, c.labels)


@pytest.mark.parametrize("make", [nuclei_timelapse, nuclei_zstack])
def test_camera_ranges(make):
    kwargs = {"shape": (64, 64), "seed": 2}
    kwargs["n_frames" if make is nuclei_timelapse else "n_slices"] = 5
    eight = make(**kwargs, dtype=np.uint8)
    twelve = make(**kwargs, dtype=np.uint16)
    assert eight.image.dtype == np.uint8 and twelve.image.dtype == np.uint16
    assert 0 < eight.image.min() and eight.image.max() < 255  # an offset, and no saturation
    assert 255 < twelve.image.max() <= 4095  # 12 bits used, stored in 16
    np.testing.assert_array_equal(eight.labels, twelve.labels)
    with pytest.raises(ValueError, match="uint8"):
        make(**kwargs, dtype=np.float32)


def test_labels_are_the_bright_regions(movie, volume):
    for stack in (movie, volume):
        img = stack.image.astype(np.float64)
        inside, outside = img[stack.labels > 0].mean(), img[stack.labels == 0].mean()
        assert inside > 2.5 * outside
    for t in range(movie.labels.shape[0]):  # on every frame, not only on average
        frame, lab = movie.image[t].astype(float), movie.labels[t]
        assert frame[lab > 0].mean() > 2 * frame[lab == 0].mean()


def test_every_object_is_one_connected_region_per_frame(movie):
    for t in range(movie.labels.shape[0]):
        lab = movie.labels[t]
        for obj_id, box in enumerate(ndimage.find_objects(lab), start=1):
            if box is not None:
                assert ndimage.label(lab[box] == obj_id)[1] == 1, (t, obj_id)


# ---------------------------------------------------------------------- staged events
def test_a_division_with_its_lineage(movie):
    assert len(movie.lineage) == 2
    (c1, p1), (c2, p2) = sorted(movie.lineage.items())
    parent = p1
    assert p1 == p2 and c1 != c2 and parent not in movie.lineage
    parent_frames = _frames_present(movie.labels, parent)
    for child in (c1, c2):
        frames = _frames_present(movie.labels, child)
        assert frames[0] == parent_frames[-1] + 1  # daughters appear on the frame after the mother's last
        assert frames == list(range(frames[0], movie.labels.shape[0]))
    first = parent_frames[-1] + 1
    assert _touch(movie.labels[first], c1, c2)  # born side by side
    assert movie.events["division"] == {"parent": parent, "children": (c1, c2), "frame": first}


def test_an_object_leaves_and_comes_back(movie):
    n = movie.labels.shape[0]
    returning = []
    for obj_id in np.unique(movie.labels)[1:]:
        frames = _frames_present(movie.labels, obj_id)
        if frames[-1] - frames[0] + 1 > len(frames):  # a gap inside its life
            returning.append(obj_id)
    assert returning == [movie.events["leaves_and_returns"]["id"]]
    absent = movie.events["leaves_and_returns"]["absent_frames"]
    assert 0 < absent[0] and absent[-1] < n - 1 and len(absent) >= 2


def test_an_object_disappears_for_good(movie):
    vanished = movie.events["vanishes"]["id"]
    frames = _frames_present(movie.labels, vanished)
    assert frames == list(range(movie.events["vanishes"]["last_frame"] + 1))
    assert frames[-1] < movie.labels.shape[0] - 3
    assert vanished not in movie.lineage.values()


def test_a_touching_pair_shares_a_border_on_every_frame(movie, volume):
    a, b = movie.events["touching"]
    assert all(_touch(movie.labels[t], a, b) for t in range(movie.labels.shape[0]))
    a, b = volume.events["touching"]
    assert any(_touch(volume.labels[z], a, b) for z in range(volume.labels.shape[0]))


def test_objects_move(movie):
    wanderers = [i for i in range(1, 9) if i not in (1, 2, 3, 4, 5)]
    shifts = []
    for obj_id in wanderers:
        c0 = ndimage.center_of_mass(movie.labels[0] == obj_id)
        c1 = ndimage.center_of_mass(movie.labels[-1] == obj_id)
        shifts.append(np.hypot(c1[0] - c0[0], c1[1] - c0[1]))
    assert max(shifts) > 3


# ---------------------------------------------------------------------- z-stack optics
def test_zstack_nuclei_span_several_slices_and_dim_with_depth():
    kwargs = {"n_slices": 12, "shape": (128, 128), "n_nuclei": 4, "seed": 5}
    clear = nuclei_zstack(**kwargs, depth_attenuation=1.0)
    murky = nuclei_zstack(**kwargs, depth_attenuation=0.3)
    np.testing.assert_array_equal(clear.labels, murky.labels)
    extents = [len({z for z in range(12) if (clear.labels[z] == obj_id).any()}) for obj_id in range(1, 5)]
    assert min(extents) >= 2 and max(extents) >= 3
    top = slice(0, 3)
    bottom = slice(9, 12)
    ratio_clear = clear.image[bottom].mean() / clear.image[top].mean()
    ratio_murky = murky.image[bottom].mean() / murky.image[top].mean()
    assert ratio_murky < 0.8 * ratio_clear


def test_axial_blur_is_stronger_than_lateral():
    """Outside a nucleus, light leaks further along z (2 px per slice) than sideways at the same distance."""
    s = nuclei_zstack(n_slices=20, shape=(96, 96), n_nuclei=1, seed=4, photons=1e5, read_noise=0.0)
    mask = s.labels == 1
    z_idx = np.nonzero(mask.any(axis=(1, 2)))[0]
    z_below = z_idx[-1] + 2  # 4 px of depth past the nucleus' last slice
    assert z_below < s.labels.shape[0]
    zc = int(np.round(z_idx.mean()))
    _, yc, xc = (round(v) for v in ndimage.center_of_mass(mask))
    x_edge = np.nonzero(mask[zc, yc])[0].max()
    centre_col = mask[:, yc, xc]
    assert centre_col[z_idx[-1]]
    img = s.image.astype(float)
    beyond_z = img[z_below, yc, xc]
    beyond_x = img[zc, yc, x_edge + 4]
    assert beyond_z > beyond_x


# ---------------------------------------------------------------------- exports
def test_ctc_ground_truth(movie, tmp_path):
    tifffile = pytest.importorskip("tifffile")
    gt = tmp_path / "01_GT"
    mapping = write_ctc_ground_truth(movie, gt, image_dir=tmp_path / "01")
    rows = [tuple(map(int, line.split())) for line in (gt / "TRA" / "man_track.txt").read_text().splitlines()]
    tracks = {label: (begin, end, parent) for label, begin, end, parent in rows}
    parent = movie.events["division"]["parent"]
    for child in movie.events["division"]["children"]:
        (label,) = mapping[child]
        assert tracks[label][2] == parent
        assert tracks[label][0] == tracks[parent][1] + 1
    before, after = mapping[movie.events["leaves_and_returns"]["id"]]  # the gap splits it into two linked tracks
    assert tracks[after][2] == before and tracks[after][0] > tracks[before][1] + 1
    assert len(list((gt / "SEG").glob("man_seg*.tif"))) == 30
    frame = tifffile.imread(gt / "TRA" / "man_track000.tif")
    assert frame.shape == (256, 256) and frame.max() > 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "01" / "t007.tif"), movie.image[7])
    with pytest.raises(ValueError, match="TYX"):
        write_ctc_ground_truth(nuclei_zstack(n_slices=3, shape=(32, 32), n_nuclei=1), tmp_path / "z")


def test_layer_data(movie):
    (img, img_meta, img_kind), (lab, lab_meta, lab_kind) = as_layer_data(movie)
    assert img is movie.image and lab is movie.labels
    assert (img_kind, lab_kind) == ("image", "labels")
    assert img_meta["scale"] == lab_meta["scale"] == (1.0, 1.0, 1.0)
    assert img_meta["axis_labels"] == lab_meta["axis_labels"] == ("t", "y", "x")
    assert as_layer_data(nuclei_zstack(n_slices=3, shape=(32, 32), n_nuclei=1))[0][1]["axis_labels"] == ("z", "y", "x")


# ---------------------------------------------------------------------- lineage events (opt-in)
def test_arrivals_and_extra_divisions_leave_the_default_movie_untouched():
    plain = nuclei_timelapse(n_frames=12, shape=(96, 96), seed=3)
    richer = nuclei_timelapse(n_frames=12, shape=(96, 96), seed=3, arrivals=0, extra_divisions=0)
    np.testing.assert_array_equal(plain.image, richer.image)
    np.testing.assert_array_equal(plain.labels, richer.labels)


def test_lineage_preset_has_arrivals_from_the_border_and_several_divisions():
    from napari_sam2.sample_data import nuclei_lineage_timelapse

    movie = nuclei_lineage_timelapse(n_frames=24, shape=(160, 160), seed=2)
    labels = movie.labels
    n = labels.shape[0]
    divisions = movie.events["divisions"]
    assert len(divisions) == 4
    for div in divisions:
        mother, (a, b), t = div["parent"], div["children"], div["frame"]
        assert movie.lineage[a] == movie.lineage[b] == mother
        assert _frames_present(labels, mother)[-1] == t - 1  # the mother ends the frame before
        assert _frames_present(labels, a)[0] == _frames_present(labels, b)[0] == t
    arrivals = movie.events["arrivals"]
    assert len(arrivals) == 3
    for arrival in arrivals:
        frames = _frames_present(labels, arrival["id"])
        assert frames[0] == arrival["frame"] and 0.2 * n <= frames[0] <= 0.65 * n
        first = labels[frames[0]] == arrival["id"]
        edge = np.zeros_like(first)
        edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = True
        assert (first & edge).any()  # it enters through the border
        assert frames == list(range(frames[0], n))  # and stays
    assert arrivals[0]["id"] not in movie.lineage


@pytest.mark.parametrize("n_frames", [1, 2, 3])
def test_a_lineage_movie_too_short_for_arrivals_leaves_them_out(n_frames):
    """An arrival whose entry frame would lie past the last frame is left out (it crashed the generator), and every
    arrival listed is in the movie from its frame on."""
    from napari_sam2.sample_data import nuclei_lineage_timelapse

    movie = nuclei_lineage_timelapse(n_frames=n_frames, shape=(96, 96), seed=4)
    assert movie.labels.shape[0] == n_frames
    for arrival in movie.events.get("arrivals", []):
        assert _frames_present(movie.labels, arrival["id"])[0] == arrival["frame"] < n_frames


@pytest.mark.parametrize(
    "generator", ["nuclei_timelapse", "nuclei_lineage_timelapse", "nuclei_zstack", "synthetic_nuclei_4d"]
)
def test_nuclei_too_large_to_keep_clear_of_the_border_are_cut_by_it(generator):
    """A nucleus radius close to the field's size (train_nano draws up to 18 px at its input size, tests train at
    64²) left no room between the margins and numpy raised "high - low < 0"; the nucleus is now centred and cut by
    the border instead (three such nuclei in 48² overlap, so only two are asked to show)."""
    import napari_sam2.sample_data as sd

    make = getattr(sd, generator)
    kwargs = {"n_frames": 4} if generator != "nuclei_zstack" else {"n_slices": 6}
    if generator == "synthetic_nuclei_4d":
        kwargs["n_slices"] = 6
    stack = make(shape=(48, 48), nucleus_radius=24.0, n_nuclei=3, seed=2, **kwargs)
    labels = stack.labels
    assert stack.image.shape[-2:] == (48, 48) and stack.image.max() > stack.image.min()
    assert len(set(np.unique(labels).tolist()) - {0}) >= 2
    assert labels[..., [0, -1], :].any() or labels[..., :, [0, -1]].any()  # a nucleus reaches the border


# ---------------------------------------------------------------------- 3-D time-lapse
def test_4d_nuclei_move_in_3d_divide_and_are_deterministic():
    from napari_sam2.sample_data import synthetic_nuclei_4d

    s = synthetic_nuclei_4d()  # the sample-menu defaults: 8 t x 16 z x 96², 5 nuclei
    assert s.image.shape == s.labels.shape == (8, 16, 96, 96)
    assert s.image.dtype == np.uint8 and s.labels.dtype == np.uint32
    assert s.axes == "TZYX" and s.scale == (1.0, 2.0, 1.0, 1.0)
    div = s.events["division"]
    assert div == {"parent": 1, "children": (6, 7), "frame": 4} and s.lineage == {6: 1, 7: 1}
    present = lambda obj: [t for t in range(8) if (s.labels[t] == obj).any()]
    assert present(1) == [0, 1, 2, 3] and present(6) == present(7) == [4, 5, 6, 7]
    # the daughters touch when they appear (a shared border in 3-D) and move apart
    assert (ndimage.binary_dilation(s.labels[4] == 6) & (s.labels[4] == 7)).any()
    assert not (ndimage.binary_dilation(s.labels[7] == 6) & (s.labels[7] == 7)).any()
    # nucleus 2 dives: its widest slice moves through z over the movie (a fixed slice would lose it)
    widest = [int(np.argmax((s.labels[t] == 2).sum(axis=(1, 2)))) for t in range(8)]
    assert widest[-1] - widest[0] >= 3 and widest == sorted(widest)
    # a nucleus spans several slices, each nucleus is one connected 3-D blob
    for t in (0, 7):
        for obj in np.unique(s.labels[t])[1:]:
            assert (s.labels[t] == obj).any(axis=(1, 2)).sum() >= 4
            assert ndimage.label(s.labels[t] == obj)[1] == 1
    again = synthetic_nuclei_4d()
    np.testing.assert_array_equal(again.image, s.image)
    np.testing.assert_array_equal(again.labels, s.labels)
    other = synthetic_nuclei_4d(seed=1)
    assert not np.array_equal(other.labels, s.labels)
    big = synthetic_nuclei_4d(n_frames=3, n_slices=5, shape=(40, 48), n_nuclei=2, seed=2, dtype=np.uint16)
    assert big.image.shape == (3, 5, 40, 48) and big.image.dtype == np.uint16 and big.image.max() <= 4095
    assert "division" not in big.events  # T < 4: no room for a division
