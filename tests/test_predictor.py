"""ImagePredictor with the real tiny network: dtypes, channels, coordinates, prompts and clear errors."""

import numpy as np
import pytest

from napari_sam2 import ImagePredictor
from napari_sam2.preprocess import InputError, IntensityRange, points_to_model


@pytest.fixture
def predictor(tiny_model):
    return ImagePredictor(tiny_model)


def test_uint16_grey_image_any_size(predictor, blob_stack):
    img = blob_stack(n_frames=1, shape=(70, 150))[0]
    predictor.set_image(img)
    p = predictor.predict(points=[[30, 30]], labels=[1])
    assert p.masks.shape == (3, 70, 150) and p.masks.dtype == bool
    assert p.iou.shape == (3,) and p.low_res_logits.shape == (3, 32, 32)
    single = predictor.predict(points=[[30, 30], [60, 100]], labels=[1, 0], multimask=False)
    assert single.masks.shape == (1, 70, 150)
    refined = predictor.predict(points=[[30, 30]], mask=p.low_res_logits[p.best], multimask=False)
    assert refined.masks.shape == (1, 70, 150)
    boxed = predictor.predict(box=[10, 10, 50, 60])
    assert boxed.masks.shape[1:] == (70, 150)


def test_percentiles_not_dtype_range():
    # a 12-bit camera in a uint16 file: mapped by its data, not by 0..65535
    img = np.full((32, 32), 100, np.uint16)
    img[8:16, 8:16] = 4000
    r = IntensityRange.from_percentiles(img, (1, 99.8))
    assert r.low == 100 and r.high == 4000
    assert IntensityRange.window(40, 400) == IntensityRange(-160, 240)


def test_channels(predictor):
    rgb = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    predictor.set_image(rgb)
    five = np.random.default_rng(0).random((40, 50, 5)).astype(np.float32)
    with pytest.raises(InputError, match="5 channels"):
        predictor.set_image(five)
    predictor.set_image(five, channel=2)
    assert predictor.image_shape == (40, 50)


def test_coordinates_are_row_col():
    # (y, x) = (10, 40) in a 100 x 200 image → SAM's (x, y) in a 1024 input
    np.testing.assert_allclose(points_to_model([[10, 40]], (100, 200), 1024), [[40 / 200 * 1024, 10 / 100 * 1024]])


def test_clicks_move_the_mask(predictor, blob_stack):
    predictor.set_image(blob_stack(n_frames=1)[0])
    a = predictor.predict(points=[[30, 30]], multimask=False, return_logits=True)
    b = predictor.predict(points=[[65, 95]], multimask=False, return_logits=True)
    assert not np.allclose(a.masks, b.masks)


def test_bad_inputs(predictor):
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict(points=[[1, 1]])
    with pytest.raises(InputError, match="2-D image"):
        predictor.set_image(np.zeros(5))
    with pytest.raises(InputError, match="constant"):
        predictor.set_image(np.zeros((20, 20)))
    with pytest.raises(InputError, match="NaN"):
        predictor.set_image(np.full((20, 20), np.nan))
    predictor.set_image(np.arange(400, dtype=np.float32).reshape(20, 20))
    with pytest.raises(InputError, match="outside the 20×20 frame"):
        predictor.predict(points=[[25, 3]])
    with pytest.raises(InputError, match="zero area"):
        predictor.predict(box=[2, 2, 2, 9])
    with pytest.raises(InputError, match="labels must be 1"):
        predictor.predict(points=[[2, 2]], labels=[3])
    with pytest.raises(InputError, match="low_res_logits"):
        predictor.predict(mask=np.zeros((20, 20)))
    with pytest.raises(InputError, match="no prompt"):
        predictor.predict()


def test_a_first_click_is_read_by_the_click_rule_and_other_prompts_are_not(tiny_model, blob_stack):
    """An official checkpoint answers every prompt as `SAM2Model.decode` under the rule "off" (its default); with a
    rule, one positive click alone is decoded as a session's first click (the IoU token's `choice`, the session's
    mask), and boxes, several clicks and mask prompts stay the official predictor's."""
    from napari_sam2.session import TrackingSession

    image = blob_stack(n_frames=1)[0]
    official, ruled = ImagePredictor(tiny_model), ImagePredictor(tiny_model, click_rule="fluorescence")
    assert official.click_rule.off and not ruled.click_rule.off
    for p in (official, ruled):
        p.set_image(image)
    plain = official.predict(points=[[30, 30]])
    assert plain.choice is None and plain.best == int(np.argmax(plain.iou))
    first = ruled.predict(points=[[30, 30]])
    assert first.choice is not None and first.masks.shape == plain.masks.shape
    with TrackingSession(tiny_model, image[None], click_rule="fluorescence", fill_hole_area=0) as session:
        result = session.add_prompt(0, 1, points=[[30, 30]], labels=[1])
    assert result.masks[0].any()  # (a session gates an absent object; the image predictor, as the official, does not)
    assert np.array_equal(first.masks[first.best], result.masks[0])
    for prompt in ({"box": [10, 10, 50, 60]}, {"points": [[30, 30], [60, 90]], "labels": [1, 0]},
                   {"points": [[30, 30]], "mask": plain.low_res_logits[plain.best]}):  # fmt: skip
        a, b = official.predict(**prompt), ruled.predict(**prompt)
        assert a.choice is None and b.choice is None
        np.testing.assert_array_equal(a.low_res_logits, b.low_res_logits)
