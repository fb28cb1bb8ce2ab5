"""Segment everything (automatic.py): the generator's pieces on hand-made inputs, then the faces on tiny models."""

import numpy as np
import pytest
import torch

import napari_sam2
from napari_sam2 import ImagePredictor, TrackingSession, segment_everything
from napari_sam2.automatic import (
    AutoObject,
    box_iou_matrix,
    box_nms,
    crop_boxes,
    deepest_point,
    default_settings,
    labels_from_masks,
    masks_to_boxes,
    point_grid,
    resolve_parts,
    segment_features,
    stability_scores,
)
from napari_sam2.errors import InputError

# thresholds that let a random-weight model's masks through (its IoU head and logits mean nothing)
LENIENT = {"points_per_side": 4, "points_per_batch": 6, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


def blob_image(h=48, w=64):
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w), np.uint16)
    img[(yy - 15) ** 2 + (xx - 18) ** 2 < 8**2] = 3000
    img[(yy - 32) ** 2 + (xx - 45) ** 2 < 10**2] = 2000
    return img


# ------------------------------------------------------------------ pieces


def test_point_grid_is_cell_centres_row_by_row():
    g = point_grid(4)
    assert g.shape == (16, 2)
    np.testing.assert_allclose(g[:4, 0], [0.125, 0.375, 0.625, 0.875])  # x runs along the first row
    np.testing.assert_allclose(g[:4, 1], 0.125)
    np.testing.assert_allclose(g[4:8, 1], 0.375)


def test_crop_boxes_cover_the_image_with_overlap():
    boxes = crop_boxes((100, 200), 1, 0.25)
    assert boxes[0] == ([0, 0, 200, 100], 0)
    layer1 = [b for b, layer in boxes if layer == 1]
    assert len(layer1) == 4
    covered = np.zeros((100, 200), int)
    for x0, y0, x1, y1 in layer1:
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1 and covered.max() == 4  # everything covered, the centre by all four crops
    assert len(crop_boxes((100, 200), 2, 0.25)) == 1 + 4 + 16


def test_masks_to_boxes_inclusive_and_empty():
    masks = torch.zeros(2, 10, 12, dtype=torch.bool)
    masks[0, 2:5, 3:9] = True
    assert masks_to_boxes(masks).tolist() == [[3, 2, 8, 4], [0, 0, 0, 0]]


def test_box_nms_keeps_best_and_drops_overlaps_above_threshold():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 5]], dtype=torch.float32)
    scores = torch.tensor([0.5, 0.9, 0.3, 0.8])
    iou = box_iou_matrix(boxes)
    assert iou[0, 1] == pytest.approx(90 / 110) and iou[0, 3] == pytest.approx(0.5)
    assert box_nms(boxes, scores, 0.7).tolist() == [1, 3, 2]  # 0 overlaps the better 1 by 0.82
    assert box_nms(boxes, scores, 0.5).tolist() == [1, 3, 2]
    assert box_nms(boxes, scores, 0.9).tolist() == [1, 3, 0, 2]  # IoU must exceed the threshold
    assert box_nms(torch.zeros(0, 4), torch.zeros(0), 0.5).tolist() == []


def test_stability_score_is_iou_of_shifted_thresholds():
    logits = torch.tensor([[[3.0, 0.5, -0.3, -3.0]]])
    assert stability_scores(logits, 0.0, 1.0).tolist() == pytest.approx([1 / 3])  # > 1: one pixel; > −1: three
    assert stability_scores(logits, 0.0, 0.4).tolist() == pytest.approx([2 / 3])
    assert stability_scores(logits, 1.0, 1.0).tolist() == pytest.approx([1 / 2])


def _obj(mask, iou):
    ys, xs = np.nonzero(mask)
    box = (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)
    return AutoObject(mask, box, int(mask.sum()), iou, 0.9, (float(ys.mean()), float(xs.mean())), (0, 0, 20, 30))


def test_labels_smaller_masks_win_and_spanning_masks_go():
    shape = (20, 30)
    a = np.zeros(shape, bool)
    a[2:8, 2:8] = True
    b = np.zeros(shape, bool)
    b[2:8, 12:18] = True
    both = np.zeros(shape, bool)
    both[1:8, 1:19] = True  # spans a and b: keeps only their surroundings (< half of itself)
    c = np.zeros(shape, bool)
    c[12:18, 20:28] = True
    part = np.zeros(shape, bool)
    part[12:18, 20:22] = True  # a sliver of c: c keeps most of itself and stays, the sliver wins its pixels
    labels, objects = labels_from_masks(
        [_obj(both, 0.99), _obj(a, 0.8), _obj(b, 0.9), _obj(c, 0.7), _obj(part, 0.6)], shape
    )
    assert labels.dtype == np.uint32 and labels.shape == shape
    assert [o.predicted_iou for o in objects] == [0.9, 0.8, 0.7, 0.6]  # most confident first, spanning mask gone
    for k, o in enumerate(objects, start=1):
        assert np.array_equal(o.mask, labels == k)
        assert o.area == int(o.mask.sum())
    assert np.array_equal(labels == 1, b) and np.array_equal(labels == 2, a)
    assert (labels[both & ~a & ~b] == 0).all()  # what the dropped mask held is background
    assert np.array_equal(labels == 4, part) and np.array_equal(labels == 3, c & ~part)
    labels, objects = labels_from_masks([_obj(a, 0.8), _obj(part, 0.6)], shape, min_area=13)
    assert len(objects) == 1 and objects[0].area == 36  # the 12-pixel sliver is below min_area


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r**2


def test_resolve_parts_drops_pieces_of_a_cell_and_masks_spanning_cells():
    shape = (40, 80)
    cell = _disc(shape, 20, 15, 10)
    piece = cell & (np.mgrid[0:40, 0:80][1] < 12)  # the left part of the cell
    left, right = _disc(shape, 20, 45, 8), _disc(shape, 20, 60, 8)  # two touching cells
    pair = left | right | (_disc(shape, 20, 52, 4))  # a mask spanning both
    kept = resolve_parts([_obj(piece, 0.9), _obj(pair, 0.9), _obj(cell, 0.8), _obj(left, 0.7), _obj(right, 0.7)])
    assert [o.predicted_iou for o in kept] == [0.8, 0.7, 0.7]  # the piece and the spanning mask are gone, order kept
    assert np.array_equal(kept[0].mask, cell) and np.array_equal(kept[1].mask, left)
    # one cell inside a larger mask is not a cluster: the larger mask stays, the cell inside it is its part
    kept = resolve_parts([_obj(pair, 0.9), _obj(left, 0.7)])
    assert len(kept) == 1 and np.array_equal(kept[0].mask, pair)


def test_deepest_point_is_the_centre_of_a_disc():
    mask = _disc((40, 80), 22, 31, 9)
    ys, xs = np.nonzero(mask)
    assert deepest_point(mask, (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)) == (22, 31)


# ------------------------------------------------------------------ faces on a tiny random model


def _check_result(res, shape):
    assert res.labels.shape == shape and res.labels.dtype == np.uint32
    assert set(np.unique(res.labels)) - {0} == set(range(1, len(res.objects) + 1))
    ious = [o.predicted_iou for o in res.objects]
    assert ious == sorted(ious, reverse=True)
    for k, o in enumerate(res.objects, start=1):
        assert o.mask.shape == shape and np.array_equal(o.mask, res.labels == k)
        y0, x0, y1, x1 = o.box
        assert o.mask[y0:y1, x0:x1].sum() == o.area > 0
        assert 0 <= o.point[0] < shape[0] and 0 <= o.point[1] < shape[1]


def test_segment_everything_on_a_tiny_model(tiny_model):
    img = blob_image()
    res = segment_everything(tiny_model, img, **LENIENT)
    assert len(res.candidates) > 0 and len(res.objects) > 0
    _check_result(res, img.shape)
    for c in res.candidates:
        assert c.crop_box == (0, 0, 48, 64)
    # the official IoU filter is strict (>): above every predicted IoU nothing is left
    top = max(c.predicted_iou for c in res.candidates)
    none = segment_everything(tiny_model, img, **{**LENIENT, "pred_iou_thresh": top})
    assert len(none.objects) == 0 and not none.labels.any()
    # NMS at 0 keeps only boxes that do not overlap at all: fewer candidates
    strict = segment_everything(tiny_model, img, **{**LENIENT, "box_nms_thresh": 0.0})
    assert len(strict.candidates) < len(res.candidates)


def test_predictor_features_are_reused(tiny_model):
    img = blob_image()
    calls = []
    hook = tiny_model.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        predictor = ImagePredictor(tiny_model)
        predictor.set_image(img)
        assert len(calls) == 1
        from_predictor = segment_everything(predictor, **LENIENT)
        assert len(calls) == 1  # no second encoder pass
    finally:
        hook.remove()
    direct = segment_everything(tiny_model, img, **LENIENT)
    assert np.array_equal(from_predictor.labels, direct.labels)
    assert [o.predicted_iou for o in from_predictor] == [o.predicted_iou for o in direct]


def test_session_features_give_the_same_masks(tiny_model):
    stack = np.stack([blob_image(), np.roll(blob_image(), 3, axis=1)])
    session = TrackingSession(tiny_model, stack)
    res = session.segment_everything(1, **LENIENT)
    runs = session.encoder_runs
    again = segment_features(tiny_model, session._features(1), session.frame_shape, **LENIENT)
    assert session.encoder_runs == runs == 1
    direct = segment_everything(tiny_model, stack[1], intensity_range=session.frames.intensity, **LENIENT)
    assert np.array_equal(res.labels, direct.labels) and np.array_equal(again.labels, direct.labels)
    assert len(res.objects) > 0


def test_crops_m2m_and_small_region_options_run(tiny_model):
    img = blob_image(64, 64)
    res = segment_everything(
        tiny_model,
        img,
        **{**LENIENT, "crop_n_layers": 1, "crop_overlap_ratio": 0.25},
        use_m2m=True,
        multimask_output=False,
        min_mask_region_area=4,
    )
    _check_result(res, img.shape)
    crops = {c.crop_box for c in res.candidates}
    assert crops <= {(0, 0, 64, 64)} | {(y0, x0, y1, x1) for (x0, y0, x1, y1), _ in crop_boxes((64, 64), 1, 0.25)}


def test_recenter_and_model_defaults(tiny_model):
    img = blob_image()
    res = segment_everything(tiny_model, img, recenter=True, **LENIENT)
    _check_result(res, img.shape)
    assert len(res.objects) > 0
    for o in res.objects:  # each object comes from a click on a pixel of a candidate
        y, x = (int(v) for v in o.point)
        assert any(c.mask[y, x] for c in res.candidates)
    # official defaults for any model but nano-fluo; None means "the model's default"
    assert default_settings(tiny_model).pred_iou_thresh == 0.8 and not default_settings(tiny_model).recenter
    nano = default_settings(napari_sam2.load_model("nano-fluo", device="cpu"))
    assert nano.recenter and nano.pred_iou_thresh == 0.0 and nano.stability_score_thresh == 0.8


def test_exported_and_bad_input_is_one_clear_message(tiny_model):
    assert napari_sam2.segment_everything is segment_everything
    with pytest.raises(InputError, match="one 2-D frame"):
        segment_everything(tiny_model, np.zeros((3, 32, 32, 2)))
    with pytest.raises(InputError, match="points_per_side"):
        segment_everything(tiny_model, blob_image(), points_per_side=0)
    with pytest.raises(InputError, match="no image"):
        segment_everything(tiny_model)
    with pytest.raises(InputError, match="unknown segment_everything parameter"):
        segment_features(tiny_model, None, (4, 4), point_per_side=3)
