"""Parity of the SAM heads (prompt encoder + two-way transformer + mask decoder) with the official sam2 code.

Both sides are built with the arguments of the official `SAM2Base._build_sam_heads` (embed 256, 64×64
embedding, 1024 input, mask_in_chans 16; TwoWayTransformer depth 2, 8 heads, MLP 2048; IoU head 3×256;
high-res features, object-score MLP, multimask token for the pointer, sigmoid IoU), with the dynamic
multimask rule on (as `build_sam2` sets it) and off, get the same random weights, and are fed the same
random image embeddings / high-res maps and prompts.
"""

import pytest
import torch
from official import assert_close, same_random_weights
from sam2.modeling.sam.mask_decoder import MaskDecoder as OfficialMaskDecoder
from sam2.modeling.sam.prompt_encoder import PromptEncoder as OfficialPromptEncoder
from sam2.modeling.sam.transformer import TwoWayTransformer as OfficialTwoWayTransformer

from napari_sam2.model.mask_decoder import MaskDecoder, stability_score
from napari_sam2.model.prompt_encoder import PromptEncoder
from napari_sam2.model.transformer import TwoWayTransformer

DIM = 256


def build_pair(emb: int, image_size: int, dynamic: bool, seed: int):
    """(ours, official) as (prompt encoder, mask decoder) pairs with identical random weights."""
    prompt_args = {
        "embed_dim": DIM,
        "image_embedding_size": (emb, emb),
        "input_image_size": (image_size, image_size),
        "mask_in_chans": 16,
    }
    ours_prompt, official_prompt = PromptEncoder(**prompt_args), OfficialPromptEncoder(**prompt_args)
    decoder_args = {
        "transformer_dim": DIM,
        "num_multimask_outputs": 3,
        "iou_head_depth": 3,
        "iou_head_hidden_dim": 256,
        "use_high_res_features": True,
        "iou_prediction_use_sigmoid": True,
        "pred_obj_scores": True,
        "pred_obj_scores_mlp": True,
        "use_multimask_token_for_obj_ptr": True,
        "dynamic_multimask_via_stability": dynamic,
        "dynamic_multimask_stability_delta": 0.05,
        "dynamic_multimask_stability_thresh": 0.98,
    }
    transformer_args = {"depth": 2, "embedding_dim": DIM, "mlp_dim": 2048, "num_heads": 8}
    ours_decoder = MaskDecoder(transformer=TwoWayTransformer(**transformer_args), **decoder_args)
    official_decoder = OfficialMaskDecoder(transformer=OfficialTwoWayTransformer(**transformer_args), **decoder_args)
    same_random_weights(ours_prompt, official_prompt, seed=seed)
    same_random_weights(ours_decoder, official_decoder, seed=seed + 1)
    return (ours_prompt, ours_decoder), (official_prompt, official_decoder)


@pytest.fixture(scope="module")
def heads():
    """Official size; the two decoders (dynamic multimask on / off) share their weights."""
    return {dynamic: build_pair(64, 1024, dynamic, seed=0) for dynamic in (True, False)}


def inputs(batch: int, emb: int, seed: int = 7):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, DIM, emb, emb, generator=g)
    high_res = [
        torch.randn(batch, DIM // 8, 4 * emb, 4 * emb, generator=g),
        torch.randn(batch, DIM // 4, 2 * emb, 2 * emb, generator=g),
    ]
    return image, high_res


def compare(ours, official, image, high_res, points=None, boxes=None, masks=None, multimask=True, repeat_image=False):
    """Run both (prompt encoder, decoder) pairs on the same inputs and assert every output matches."""
    results = []
    with torch.no_grad():
        for prompt, decoder in (ours, official):
            sparse, dense = prompt(points=points, boxes=boxes, masks=masks)
            pe = prompt.get_dense_pe()
            out = decoder(
                image_embeddings=image,
                image_pe=pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
                repeat_image=repeat_image,
                high_res_features=high_res,
            )
            results.append((sparse, dense, pe, *out))
    names = ("sparse", "dense", "dense_pe", "masks", "iou", "sam_tokens", "object_score")
    for name, a, b in zip(names, *results):
        assert_close(a, b, name)
    return results[0]


def points(xy, labels, batch=1):
    coords = torch.tensor(xy, dtype=torch.float32).reshape(1, -1, 2).repeat(batch, 1, 1)
    return coords, torch.tensor(labels, dtype=torch.int32).reshape(1, -1).repeat(batch, 1)


def box_as_points(box, clicks=None, labels=None):
    """What the official image predictor passes for a box: its corners (labels 2, 3) before the clicks."""
    xy = [box[:2], box[2:]] + list(clicks or [])
    return points(xy, [2, 3] + list(labels or []))


BOX = [210.0, 180.0, 700.0, 820.0]
CASES = {
    "click": {"points": points([(400, 300)], [1])},
    "pos_and_neg_clicks": {"points": points([(400, 300), (620, 710), (100, 900)], [1, 0, 1])},
    "box_as_predictor": {"points": box_as_points(BOX)},
    "box_plus_clicks_as_predictor": {"points": box_as_points(BOX, [(450, 500), (300, 260)], [1, 0])},
    "box_argument": {"boxes": torch.tensor([BOX])},
    "box_argument_plus_click": {"points": points([(450, 500)], [0]), "boxes": torch.tensor([BOX])},
    "click_and_mask": {"points": points([(400, 300)], [1]), "masks": "random"},
    "mask_only": {"masks": "random"},
    "no_prompt_padding_point": {"points": (torch.zeros(1, 1, 2), -torch.ones(1, 1, dtype=torch.int32))},
    "no_prompt_at_all": {},
}


# (dynamic rule, multimask): with multimask output the rule does not apply, so one decoder suffices there.
MODES = {"multimask": (True, True), "single_dynamic": (True, False), "single_static": (False, False)}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("case", list(CASES))
def test_single_object(heads, case, mode):
    dynamic, multimask = MODES[mode]
    ours, official = heads[dynamic]
    prompts = dict(CASES[case])
    if prompts.get("masks") == "random":
        prompts["masks"] = 3 * torch.randn(1, 1, 256, 256, generator=torch.Generator().manual_seed(11))
    image, high_res = inputs(1, 64)
    compare(ours, official, image, high_res, multimask=multimask, **prompts)


@pytest.mark.parametrize("multimask", [True, False], ids=["multimask", "single"])
def test_batch_of_two_objects(heads, multimask):
    """Two objects on one frame: one image embedding per object (repeat_image=False), as in tracking."""
    ours, official = heads[True]
    image, high_res = inputs(2, 64, seed=8)
    coords = torch.tensor([[(400.0, 300.0), (620.0, 710.0)], [(820.0, 120.0), (30.0, 40.0)]])
    labels = torch.tensor([[1, 0], [1, 1]], dtype=torch.int32)
    masks = 3 * torch.randn(2, 1, 256, 256, generator=torch.Generator().manual_seed(12))
    out = compare(ours, official, image, high_res, points=(coords, labels), masks=masks, multimask=multimask)
    assert out[3].shape == (2, 3 if multimask else 1, 256, 256)


def test_repeat_image(heads):
    """One image embedding shared by two prompt sets (the official image predictor's batched boxes)."""
    ours, official = heads[False]
    image, high_res = inputs(1, 64, seed=9)
    boxes = torch.tensor([BOX, [10.0, 20.0, 300.0, 400.0]])
    compare(ours, official, image, [x.expand(2, -1, -1, -1) for x in high_res], boxes=boxes, repeat_image=True)


def test_dynamic_rule_is_exercised(heads):
    """With random weights mask 0 is unstable here, so the parity cases above really took the fallback."""
    ours, _ = heads[True]
    image, high_res = inputs(1, 64)
    prompt, decoder = ours
    with torch.no_grad():
        sparse, dense = prompt(points=points([(400, 300)], [1]), boxes=None, masks=None)
        all_masks, _all_ious, _, _ = decoder.predict_masks(image, prompt.get_dense_pe(), sparse, dense, False, high_res)
        single, _, _, _ = decoder(image, prompt.get_dense_pe(), sparse, dense, False, False, high_res)
    assert stability_score(all_masks[:, :1], 0.05).item() < 0.98
    assert not torch.equal(single[:, 0], all_masks[:, 0])


def test_dynamic_selection_both_branches(heads):
    """The selection rule alone on crafted logits: one prompt set stable (keeps mask 0), one unstable."""
    (_, ours), (_, official) = heads[True]
    g = torch.Generator().manual_seed(3)
    all_masks = torch.randn(2, 4, 256, 256, generator=g)
    all_masks[0, 0] = torch.where(all_masks[0, 0] > 0, 4.0, -4.0)  # no logit within ±0.05 → stability 1
    all_ious = torch.rand(2, 4, generator=g)
    ours_out = ours.select_stable_single_mask(all_masks, all_ious)
    official_out = official._dynamic_multimask_via_stability(all_masks, all_ious)
    for a, b, name in zip(ours_out, official_out, ("masks", "iou")):
        assert torch.equal(a, b), name
    assert torch.equal(ours_out[0][0, 0], all_masks[0, 0])
    assert not torch.equal(ours_out[0][1, 0], all_masks[1, 0])


@pytest.mark.parametrize("multimask", [True, False], ids=["multimask", "single"])
def test_non_default_size(multimask):
    """A 512 input with a 32×32 embedding (128×128 masks): nothing is tied to 1024 / 64."""
    ours, official = build_pair(32, 512, dynamic=True, seed=5)
    image, high_res = inputs(2, 32, seed=10)
    coords = torch.tensor([[(100.0, 300.0), (400.0, 20.0)], [(500.0, 500.0), (7.0, 9.0)]])
    labels = torch.tensor([[2, 3], [1, 0]], dtype=torch.int32)
    masks = torch.randn(2, 1, 128, 128, generator=torch.Generator().manual_seed(13))
    out = compare(ours, official, image, high_res, points=(coords, labels), masks=masks, multimask=multimask)
    assert out[3].shape == (2, 3 if multimask else 1, 128, 128)
