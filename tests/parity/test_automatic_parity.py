"""segment_everything's candidates against the official SAM2AutomaticMaskGenerator (fp32, CPU, same random weights).

Same settings on both sides (crop_n_layers = 0), compared record by record in the official order: the click, the
predicted IoU, the stability score, the box and the binary mask. torchvision (batched NMS, box_area, transforms)
is replaced by stand-ins written from its documentation (torchvision_ops_standin.py, torchvision_standin.py).
SAM 2.1 tiny runs at an input size of 512 (the network unchanged; the official image predictor is told the
feature sizes that go with it) to keep CI minutes small.
"""

import numpy as np
import pytest
import torch
import torchvision_ops_standin
import torchvision_standin
from video_scenario import _config_for

torchvision_standin.install()
torchvision_ops_standin.install()  # before sam2.automatic_mask_generator imports torchvision.ops.boxes

from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
from sam2.build_sam import build_sam2

from napari_sam2 import load_model, segment_everything

SIZE = 512
H, W = 96, 128

# settings under which, with these random weights, the filters keep some candidates and remove others
CASES = {
    "multimask": {
        "points_per_side": 6,
        "points_per_batch": 16,
        "pred_iou_thresh": 0.51,
        "stability_score_thresh": 0.1,
        "box_nms_thresh": 0.7,
    },
    "m2m_single": {
        "points_per_side": 4,
        "points_per_batch": 5,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.05,
        "stability_score_offset": 0.5,
        "box_nms_thresh": 0.5,
        "use_m2m": True,
        "multimask_output": False,
    },
}


def make_image():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 70, size=(H, W, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:H, 0:W]
    img[(yy - 40) ** 2 + (xx - 50) ** 2 < 20**2] = (230, 210, 190)
    img[60:90, 80:120] = (120, 180, 60)
    return img


@pytest.fixture(scope="module")
def models(make_checkpoint):
    torch.set_num_threads(2)
    ckpt = make_checkpoint("sam2.1_hiera_t", seed=3)
    official = build_sam2(
        "configs/sam2.1/sam2.1_hiera_t.yaml",
        str(ckpt),
        device="cpu",
        hydra_overrides_extra=[f"++model.image_size={SIZE}"],
    )
    ours = load_model(ckpt, device="cpu", config=_config_for(ckpt, SIZE))
    return official, ours


@pytest.mark.parametrize("case", list(CASES))
def test_segment_everything_matches_official_generator(case, models):
    official_model, ours = models
    settings = CASES[case]
    img = make_image()
    generator = SAM2AutomaticMaskGenerator(official_model, **settings)
    # the official image predictor hard-codes the backbone feature sizes of a 1024 input
    generator.predictor._bb_feat_sizes = [(SIZE // 4,) * 2, (SIZE // 8,) * 2, (SIZE // 16,) * 2]
    with torch.inference_mode():
        theirs = generator.generate(img)
    # fp32, the official's CPU precision ("auto" picks bf16 for SAM 2-sized networks on a CPU with native bf16)
    got = segment_everything(ours, img, intensity_range=(0, 255), precision="fp32", **settings).candidates

    clicks = settings["points_per_side"] ** 2 * (3 if settings.get("multimask_output", True) else 1)
    assert 0 < len(theirs) < clicks, "the settings must keep some candidates and drop others to mean anything"
    assert [c.point for c in got] == [(r["point_coords"][0][1], r["point_coords"][0][0]) for r in theirs]
    for k, (c, r) in enumerate(zip(got, theirs)):
        where = f"{case} record {k}"
        assert c.predicted_iou == pytest.approx(r["predicted_iou"], abs=1e-4, rel=1e-4), where
        assert c.stability_score == pytest.approx(r["stability_score"], abs=1e-4), where
        assert np.array_equal(c.mask, r["segmentation"]), (
            f"{where}: masks differ in {(c.mask != r['segmentation']).sum()} px"
        )
        assert c.area == r["area"], where
        x, y, w, h = r["bbox"]  # official: x0, y0 and the inclusive extent
        assert c.box == ((y, x, y + h + 1, x + w + 1) if c.area else (0, 0, 0, 0)), where
        assert c.crop_box == (0, 0, H, W), where
