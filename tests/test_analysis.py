"""Region table, napari tracks and Cell Tracking Challenge export, scored by an independent package."""

import csv
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
from skimage.draw import disk

from napari_sam2.analysis import (
    TrackSegment,
    export_ctc,
    region_table,
    scores_from_results,
    track_segments,
    tracks_from_labels,
    write_csv,
)


def _boxes():
    """[4, 20, 30]: object 2 a 4x6 box moving right; object 5 a 3x3 box on frames 0, 1 and 3 (gap at 2)."""
    stack = np.zeros((4, 20, 30), np.uint32)
    for t in range(4):
        stack[t, 2:6, 1 + 2 * t : 7 + 2 * t] = 2
        if t != 2:
            stack[t, 10:13, 20:23] = 5
    return stack


def test_region_table_values(tmp_path):
    stack = _boxes()
    intensity = np.where(stack == 2, 10.0, 0.0) + np.where(stack == 5, 4.0, 0.0) + 1.0
    rows = region_table(stack, intensity=intensity, scores={(0, 2): (5.5, 0.91), (3, 5): (-0.5, 0.2)})
    assert [(r["frame"], r["label"]) for r in rows] == [(0, 2), (0, 5), (1, 2), (1, 5), (2, 2), (3, 2), (3, 5)]
    r = rows[0]
    assert r["area"] == 24 and r["centroid_y"] == 3.5 and r["centroid_x"] == 3.5
    assert (r["bbox_y0"], r["bbox_x0"], r["bbox_y1"], r["bbox_x1"]) == (2, 1, 6, 7)  # half-open
    assert r["mean_intensity"] == 11.0 and (r["score"], r["iou"]) == (5.5, 0.91)
    assert rows[4]["centroid_x"] == 3.5 + 4 and rows[4]["score"] is None
    last = rows[-1]
    assert last["area"] == 9 and (last["centroid_y"], last["centroid_x"]) == (11.0, 21.0)
    assert last["mean_intensity"] == 5.0 and last["score"] == -0.5
    # object 5 reappears after its gap as a new track (ids above the largest object id)
    assert [r["track_id"] for r in rows if r["label"] == 5] == [5, 5, 6]

    path = write_csv(rows, tmp_path / "regions.csv")
    with path.open() as f:
        back = list(csv.DictReader(f))
    assert len(back) == 7 and back[0]["area"] == "24" and float(back[0]["score"]) == 5.5
    assert back[1]["score"] == ""  # no score given for (0, 5)


def test_region_table_volumes_and_channels():
    stack = np.zeros((2, 6, 10, 10), np.uint8)
    stack[1, 1:3, 2:6, 4:9] = 1  # z 1..2, y 2..5, x 4..8
    image = np.zeros(stack.shape + (2,), np.float32)
    image[..., 0] = 3.0
    image[..., 1] = 7.0
    (row,) = region_table(stack, intensity=image)
    assert row["frame"] == 1 and row["area"] == 2 * 4 * 5
    assert (row["centroid_z"], row["centroid_y"], row["centroid_x"]) == (1.5, 3.5, 6.0)
    assert (row["bbox_z0"], row["bbox_z1"]) == (1, 3)
    assert (row["mean_intensity_0"], row["mean_intensity_1"]) == (3.0, 7.0)
    with pytest.raises(ValueError, match="intensity shape"):
        region_table(stack, intensity=image[:, :, :5])


def test_tracks_with_a_gap():
    data, graph = tracks_from_labels(_boxes())
    assert data.shape == (7, 4)
    np.testing.assert_array_equal(data[:, :2], [[2, 0], [2, 1], [2, 2], [2, 3], [5, 0], [5, 1], [6, 3]])
    np.testing.assert_allclose(data[:4, 2:], [[3.5, 3.5 + 2 * t] for t in range(4)])
    np.testing.assert_allclose(data[6, 2:], [11.0, 21.0])
    assert graph == {6: [5]}  # the reappearance is a child of the track before the gap
    assert track_segments(_boxes()) == [
        TrackSegment(2, 2, 0, 3, 0),
        TrackSegment(5, 5, 0, 1, 0),
        TrackSegment(6, 5, 3, 3, 5),
    ]

    volume = np.zeros((2, 3, 8, 8), np.uint16)
    volume[:, 1, 2:4, 2:4] = 1
    data, graph = tracks_from_labels(volume)
    assert data.shape == (2, 5) and graph == {}
    np.testing.assert_allclose(data, [[1, 0, 1, 2.5, 2.5], [1, 1, 1, 2.5, 2.5]])
    assert tracks_from_labels(np.zeros((3, 4, 4), np.uint8))[0].shape == (0, 4)


def test_division_lineage():
    # Object 1 divides at t=2: one daughter keeps id 1, the other is the new object 4.
    stack = np.zeros((4, 10, 10), np.uint32)
    stack[:, 1:3, 1:3] = 1
    stack[2:, 6:8, 6:8] = 4
    segments = track_segments(stack, parents={4: 1})
    assert segments == [
        TrackSegment(1, 1, 0, 1, 0),  # the mother, cut at the division
        TrackSegment(4, 4, 2, 3, 1),
        TrackSegment(5, 1, 2, 3, 1),  # the daughter that kept id 1
    ]
    assert tracks_from_labels(stack, parents={4: 1})[1] == {4: [1], 5: [1]}
    with pytest.raises(ValueError, match="not present before"):
        track_segments(stack, parents={1: 4})
    with pytest.raises(ValueError, match="never appears"):
        track_segments(stack, parents={4: 9})


def test_scores_from_results():
    results = [
        SimpleNamespace(frame=0, obj_ids=[1, 2], scores=np.array([3.0, -1.0]), ious=np.array([0.9, 0.1])),
        SimpleNamespace(frame=1, obj_ids=[1], scores=np.array([2.5], np.float32), ious=np.array([0.8])),
    ]
    scores = scores_from_results(results)
    assert scores == {(0, 1): (3.0, 0.9), (0, 2): (-1.0, 0.1), (1, 1): (2.5, pytest.approx(0.8))}


def test_ctc_layout(tmp_path):
    mapping = export_ctc(_boxes(), tmp_path / "01_RES")
    assert mapping == {2: [2], 5: [5, 6]}
    assert (tmp_path / "01_RES" / "res_track.txt").read_text() == "2 0 3 0\n5 0 1 0\n6 3 3 5\n"
    mask = tifffile.imread(tmp_path / "01_RES" / "mask003.tif")
    assert mask.dtype == np.uint16 and set(np.unique(mask)) == {0, 2, 6}
    assert sorted(p.name for p in (tmp_path / "01_RES").glob("mask*.tif")) == [f"mask{t:03d}.tif" for t in range(4)]

    export_ctc(_boxes(), tmp_path / "01_GT", ground_truth=True)
    assert (tmp_path / "01_GT" / "TRA" / "man_track.txt").read_text() == "2 0 3 0\n5 0 1 0\n6 3 3 5\n"
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "01_GT" / "TRA" / "man_track003.tif"), mask)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "01_GT" / "SEG" / "man_seg003.tif"), mask)

    # An earlier export is refused, and replaced (stale frames included) only on request.
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_ctc(_boxes()[:2], tmp_path / "01_RES")
    export_ctc(_boxes()[:2], tmp_path / "01_RES", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "01_RES").glob("*")) == ["mask000.tif", "mask001.tif", "res_track.txt"]


def test_ctc_four_digits_and_large_ids(tmp_path):
    stack = np.zeros((1000, 4, 4), np.uint32)
    stack[:, 0, 0] = 70_000  # beyond uint16: renumbered
    stack[500:, 3, 3] = 100_000
    mapping = export_ctc(stack, tmp_path)
    assert mapping == {70_000: [1], 100_000: [2]}
    assert (tmp_path / "mask0999.tif").exists() and not (tmp_path / "mask999.tif").exists()
    assert (tmp_path / "res_track.txt").read_text() == "1 0 999 0\n2 500 999 0\n"
    assert tifffile.imread(tmp_path / "mask0700.tif")[3, 3] == 2


# ---------------------------------------------------------------------- scored by py-ctcmetrics
# AOGM weights of the CTC's TRA measure: false negative vertex 10, edge to add 1.5, edge to delete 1;
# TRA = 1 - AOGM / AOGM_0 with AOGM_0 = 10 * |V_gt| + 1.5 * |E_gt| (building the ground truth from nothing).
W_FN, W_EA, W_ED = 10.0, 1.5, 1.0


def _two_cells(t_max=6):
    """[6, 48, 64]: two discs moving right side by side for the whole sequence (12 vertices, 10 edges)."""
    stack = np.zeros((t_max, 48, 64), np.uint32)
    for t in range(t_max):
        stack[t][disk((14, 8 + 8 * t), 5, shape=(48, 64))] = 1
        stack[t][disk((34, 8 + 8 * t), 5, shape=(48, 64))] = 2
    return stack


def _tra(tmp_path, gt, res, gt_parents=None, res_parents=None):
    from ctc_metrics import evaluate_sequence

    export_ctc(gt, tmp_path / "01_GT", ground_truth=True, parents=gt_parents, overwrite=True)
    export_ctc(res, tmp_path / "01_RES", parents=res_parents, overwrite=True)
    return evaluate_sequence(str(tmp_path / "01_RES"), str(tmp_path / "01_GT"), ["Valid", "DET", "TRA"], threads=1)


def test_ctc_identity_scores_perfectly(tmp_path):
    # A gap (object 2 missing on frame 2) and a division (object 1 -> 1 and 3 at frame 4) exercise both rules.
    gt = _two_cells()
    gt[2][gt[2] == 2] = 0
    gt[4:][gt[4:] == 1] = 0
    for t in (4, 5):
        gt[t][disk((8, 8 + 8 * t), 4, shape=(48, 64))] = 1
        gt[t][disk((20, 8 + 8 * t), 4, shape=(48, 64))] = 3
    scores = _tra(tmp_path, gt, gt, {3: 1}, {3: 1})
    assert scores["Valid"] == 1 and scores["DET"] == 1.0 and scores["TRA"] == 1.0


def test_ctc_swapped_ids_lower_tra(tmp_path):
    gt = _two_cells()
    res = gt.copy()
    res[3:][gt[3:] == 1] = 2  # the ids swap halfway: every detection right, two links wrong
    res[3:][gt[3:] == 2] = 1
    scores = _tra(tmp_path, gt, res)
    aogm = 2 * W_ED + 2 * W_EA  # 2 false links to delete, 2 true links missing
    assert scores["Valid"] == 1 and scores["DET"] == 1.0
    assert scores["TRA"] == pytest.approx(1 - aogm / (W_FN * 12 + W_EA * 10))


def test_ctc_dropped_detections_lower_tra(tmp_path):
    gt = _two_cells()
    res = gt.copy()
    res[2:4][gt[2:4] == 2] = 0  # object 2 lost on frames 2 and 3, found again on 4
    scores = _tra(tmp_path, gt, res)
    # 2 missed vertices, the 3 true links around them missing, and the gap link (1 -> 4) is not a true link.
    aogm = 2 * W_FN + 3 * W_EA + 1 * W_ED
    assert scores["Valid"] == 1 and scores["DET"] == pytest.approx(1 - 2 * W_FN / (W_FN * 12))
    assert scores["TRA"] == pytest.approx(1 - aogm / (W_FN * 12 + W_EA * 10))


# ---------------------------------------------------------------------- 3D+t: [T, Z, Y, X] label stacks
def _balls(t_max=4):
    """[4, 8, 32, 40]: two ellipsoids (z radius 2, y/x radius 4) moving right through 3-D, ids 1 and 2."""
    stack = np.zeros((t_max, 8, 32, 40), np.uint32)
    zz, yy, xx = np.mgrid[:8, :32, :40]
    for t in range(t_max):
        stack[t][(zz - 3) ** 2 / 4 + (yy - 10) ** 2 / 16 + (xx - 6 - 5 * t) ** 2 / 16 <= 1] = 1
        stack[t][(zz - 4) ** 2 / 4 + (yy - 22) ** 2 / 16 + (xx - 6 - 5 * t) ** 2 / 16 <= 1] = 2
    return stack


def test_tzyx_regions_have_z_and_volumes_in_physical_units(tmp_path):
    stack = _balls()
    voxels = int((stack[0] == 1).sum())
    rows = region_table(
        stack,
        scale=[60.0, 2.0, 0.5, 0.5],
        units={"t": "second", "z": "micrometer", "y": "micrometer", "x": "micrometer"},
    )
    assert len(rows) == 8
    r = rows[2]  # object 1 on t = 1
    assert (r["frame"], r["label"], r["track_id"]) == (1, 1, 1)
    assert r["volume"] == r["area"] == voxels
    assert (r["centroid_z"], r["centroid_y"], r["centroid_x"]) == (3.0, 10.0, 11.0)
    assert r["t_s"] == 60.0 and r["volume_um3"] == pytest.approx(voxels * 2.0 * 0.25)
    assert (r["centroid_z_um"], r["centroid_y_um"], r["centroid_x_um"]) == (6.0, 5.0, 5.5)
    assert "area_um3" not in r
    back = list(csv.DictReader(write_csv(rows, tmp_path / "r.csv").open()))
    assert float(back[2]["centroid_z"]) == 3.0 and int(back[2]["volume"]) == voxels


def test_tzyx_tracks_carry_z():
    data, graph = tracks_from_labels(_balls())
    assert data.shape == (8, 5) and graph == {}
    np.testing.assert_array_equal(data[:4], [[1, t, 3.0, 10.0, 6 + 5 * t] for t in range(4)])
    np.testing.assert_array_equal(data[4:, 2], [4.0] * 4)


def test_ctc_3d_export_read_by_traccuracy_and_scored_by_py_ctcmetrics(tmp_path):
    from ctc_metrics import evaluate_sequence
    from traccuracy.loaders import load_ctc_data

    gt = _balls()
    gt[3][gt[3] == 2] = 0  # object 2 leaves before the last time point
    assert export_ctc(gt, tmp_path / "01_RES") == {1: [1], 2: [2]}
    mask = tifffile.imread(tmp_path / "01_RES" / "mask002.tif")
    assert mask.shape == (8, 32, 40) and mask.dtype == np.uint16  # CTC 3-D: one [Z, Y, X] TIFF per time point
    np.testing.assert_array_equal(mask, gt[2])
    assert (tmp_path / "01_RES" / "res_track.txt").read_text() == "1 0 3 0\n2 0 2 0\n"

    graph = load_ctc_data(str(tmp_path / "01_RES"), str(tmp_path / "01_RES" / "res_track.txt"))
    assert graph.segmentation.shape == gt.shape
    nodes = sorted((a["t"], a["segmentation_id"], a["z"]) for _, a in graph.graph.nodes(data=True))
    assert nodes == [(0, 1, 3.0), (0, 2, 4.0), (1, 1, 3.0), (1, 2, 4.0), (2, 1, 3.0), (2, 2, 4.0), (3, 1, 3.0)]

    export_ctc(gt, tmp_path / "01_GT", ground_truth=True)
    metrics = ["Valid", "DET", "SEG", "TRA"]
    scores = evaluate_sequence(str(tmp_path / "01_RES"), str(tmp_path / "01_GT"), metrics, threads=1)
    assert scores["Valid"] == 1 and scores["SEG"] == 1.0 and scores["TRA"] == 1.0
    res = gt.copy()
    res[1][gt[1] == 2] = 0  # object 2 missed at t = 1: one vertex and two links lost, one gap link wrong
    export_ctc(res, tmp_path / "01_RES", overwrite=True)
    scores = evaluate_sequence(str(tmp_path / "01_RES"), str(tmp_path / "01_GT"), metrics, threads=1)
    assert scores["Valid"] == 1
    assert scores["TRA"] == pytest.approx(1 - (W_FN + 2 * W_EA + W_ED) / (W_FN * 7 + W_EA * 5))
