"""The image predictor, end to end, against the official SAM2ImagePredictor (fp32, CPU, same random weights).

Compared: the image embedding and high-res features, and for every prompt kind the upsampled mask logits,
the predicted IoU and the low-res logits; binary masks must be identical (except pixels whose logit is
within the tolerance of 0). Configs: SAM 2.1 tiny, SAM 2.0 tiny and SAM 2.1 small, at the official 1024².
"""

import numpy as np
import pytest
import torch
import torchvision_standin
from official import assert_close

torchvision_standin.install()  # before sam2.sam2_image_predictor imports torchvision.transforms

from sam2.build_sam import build_sam2
from sam2.sam2_image_predictor import SAM2ImagePredictor

from napari_sam2 import ImagePredictor, load_model

YAML = {
    "sam2.1_hiera_t": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2_hiera_t": "configs/sam2/sam2_hiera_t.yaml",
    "sam2.1_hiera_s": "configs/sam2.1/sam2.1_hiera_s.yaml",
}

H, W = 300, 400


def sample_image():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 70, size=(H, W, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:H, 0:W]
    img[(yy - 150) ** 2 + (xx - 160) ** 2 < 60**2] = (230, 210, 190)
    img[40:110, 280:370] = (120, 180, 60)
    return img


# (name, our kwargs (y, x), official kwargs (x, y))
CASES = [
    (
        "point",
        {"points": [[150, 160]], "labels": [1], "multimask": True},
        {"point_coords": [[160, 150]], "point_labels": [1], "multimask_output": True},
    ),
    (
        "points_negative",
        {"points": [[150, 160], [75, 320]], "labels": [1, 0], "multimask": False},
        {"point_coords": [[160, 150], [320, 75]], "point_labels": [1, 0], "multimask_output": False},
    ),
    ("box", {"box": [40, 280, 110, 370], "multimask": False}, {"box": [280, 40, 370, 110], "multimask_output": False}),
    (
        "box_and_point",
        {"box": [80, 90, 220, 240], "points": [[150, 160]], "labels": [1], "multimask": True},
        {"box": [90, 80, 240, 220], "point_coords": [[160, 150]], "point_labels": [1], "multimask_output": True},
    ),
]


def _official_predict(pred, kwargs):
    kwargs = {
        k: (
            np.asarray(v, dtype=np.float32)
            if k in ("point_coords", "box")
            else np.asarray(v, dtype=np.int32)
            if k == "point_labels"
            else v
        )
        for k, v in kwargs.items()
    }
    return pred.predict(return_logits=True, **kwargs)


@pytest.mark.parametrize("name", list(YAML))
def test_image_predictor_matches_official(name, make_checkpoint):
    torch.set_num_threads(2)
    ckpt = make_checkpoint(name, seed=3)
    img = sample_image()

    official = SAM2ImagePredictor(build_sam2(YAML[name], str(ckpt), device="cpu"))
    # fp32, the official's CPU precision ("auto" picks bf16 for SAM 2-sized networks on a CPU with native bf16)
    ours = ImagePredictor(load_model(ckpt, device="cpu"), precision="fp32")
    with torch.inference_mode():
        official.set_image(img)
    ours.set_image(img, intensity=(0, 255))  # the official maps uint8 by /255

    assert_close(ours._embedding, official._features["image_embed"], "image embedding")
    for level in range(2):
        assert_close(ours._features.high_res[level], official._features["high_res_feats"][level], f"high-res {level}")

    with torch.inference_mode():
        for case, our_kwargs, their_kwargs in CASES:
            masks, iou, low = _official_predict(official, their_kwargs)
            got = ours.predict(return_logits=True, **our_kwargs)
            _compare(case, got, masks, iou, low)

        # a mask prompt: the best low-res logits of the single-click case fed back with the click
        masks, iou, low = _official_predict(official, CASES[0][2])
        best = low[np.argmax(iou)][None]
        masks2, iou2, low2 = official.predict(
            point_coords=np.array([[160, 150]], np.float32),
            point_labels=np.array([1], np.int32),
            mask_input=best,
            multimask_output=False,
            return_logits=True,
        )
        got = ours.predict(points=[[150, 160]], labels=[1], mask=best, multimask=False, return_logits=True)
        _compare("mask_prompt", got, masks2, iou2, low2)
        # and a mask prompt alone (no sparse token at all on the official side)
        masks3, iou3, low3 = official.predict(mask_input=best, multimask_output=True, return_logits=True)
        got = ours.predict(mask=best, multimask=True, return_logits=True)
        _compare("mask_only", got, masks3, iou3, low3)


def _compare(case, got, masks, iou, low):
    assert_close(got.masks, masks, f"{case}: mask logits")
    assert_close(got.iou, iou, f"{case}: predicted IoU")
    assert_close(got.low_res_logits, low, f"{case}: low-res logits")
    decided = np.abs(masks) > 1e-4 + 1e-4 * np.abs(masks)  # pixels not within tolerance of the threshold
    assert np.array_equal((got.masks > 0)[decided], (masks > 0)[decided]), f"{case}: binary masks differ"
