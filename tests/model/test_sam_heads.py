"""SAM heads (prompt encoder, two-way transformer, mask decoder) at a small size, without the official code.

Small config: embed 64, image embedding 16×16, model input 256 → masks 64×64.
"""

import itertools
import math
import re

import pytest
import torch

from napari_sam2.model.mask_decoder import MaskDecoder, stability_score
from napari_sam2.model.prompt_encoder import PromptEncoder
from napari_sam2.model.random_weights import randomize_state_dict
from napari_sam2.model.transformer import Attention, TwoWayTransformer

C, EMB, INPUT = 64, 16, 256


def _randomize(module, seed=0):
    module.load_state_dict(randomize_state_dict(module.state_dict(), seed=seed, object_score_bias=None))
    return module.eval()


def make_heads(embed=C, emb_hw=(EMB, EMB), input_hw=(INPUT, INPUT), seed=0, **decoder_kwargs):
    prompt = _randomize(PromptEncoder(embed, emb_hw, input_hw, mask_in_chans=16), seed)
    transformer = TwoWayTransformer(depth=2, embedding_dim=embed, num_heads=4, mlp_dim=128)
    decoder = _randomize(MaskDecoder(embed, transformer, iou_head_hidden_dim=32, **decoder_kwargs), seed + 1)
    return prompt, decoder


def features(batch=1, embed=C, emb_hw=(EMB, EMB), seed=3):
    g = torch.Generator().manual_seed(seed)
    h, w = emb_hw
    image = torch.randn(batch, embed, h, w, generator=g)
    high_res = [
        torch.randn(batch, embed // 8, 4 * h, 4 * w, generator=g),
        torch.randn(batch, embed // 4, 2 * h, 2 * w, generator=g),
    ]
    return image, high_res


def run(prompt, decoder, points=None, boxes=None, masks=None, multimask=True, batch=1, **feat_kwargs):
    image, high_res = features(batch, **feat_kwargs)
    with torch.no_grad():
        sparse, dense = prompt(points=points, boxes=boxes, masks=masks)
        return decoder(image, prompt.get_dense_pe(), sparse, dense, multimask, False, high_res)


def click(xy, label, batch=1):
    coords = torch.tensor([xy], dtype=torch.float32).reshape(1, -1, 2).expand(batch, -1, -1)
    labels = torch.tensor([label], dtype=torch.int32).reshape(1, -1).expand(batch, -1)
    return coords, labels


# ----------------------------------------------------------------------------- checkpoint keys
def _expand(spec):
    """'a.{0..2}.b' / 'a.{0,1}.b' → the list of concrete names."""
    parts = re.split(r"\{([^}]*)\}", spec)
    choices = []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            choices.append([part])
        elif ".." in part:
            lo, hi = part.split("..")
            choices.append([str(k) for k in range(int(lo), int(hi) + 1)])
        else:
            choices.append(part.split(","))
    return ["".join(c) for c in itertools.product(*choices)]


# Official key groups of the SAM heads (as in the official checkpoints' state dicts), at the official size.
OFFICIAL_PROMPT_KEYS = {
    "pe_layer.positional_encoding_gaussian_matrix": (2, 128),
    "point_embeddings.{0..3}.weight": (1, 256),
    "not_a_point_embed.weight": (1, 256),
    "mask_downscaling.0.weight": (4, 1, 2, 2),
    "mask_downscaling.{0,1}.bias": (4,),
    "mask_downscaling.1.weight": (4,),
    "mask_downscaling.3.weight": (16, 4, 2, 2),
    "mask_downscaling.{3,4}.bias": (16,),
    "mask_downscaling.4.weight": (16,),
    "mask_downscaling.6.weight": (256, 16, 1, 1),
    "mask_downscaling.6.bias": (256,),
    "no_mask_embed.weight": (1, 256),
}
_ATT = {"self_attn": 256, "cross_attn_token_to_image": 128, "cross_attn_image_to_token": 128}
OFFICIAL_DECODER_KEYS = {
    **{
        f"transformer.layers.{{0,1}}.{name}.{p}_proj.weight": (inner, 256)
        for name, inner in _ATT.items()
        for p in "qkv"
    },
    **{f"transformer.layers.{{0,1}}.{name}.{p}_proj.bias": (inner,) for name, inner in _ATT.items() for p in "qkv"},
    **{f"transformer.layers.{{0,1}}.{name}.out_proj.weight": (256, inner) for name, inner in _ATT.items()},
    **{f"transformer.layers.{{0,1}}.{name}.out_proj.bias": (256,) for name in _ATT},
    "transformer.layers.{0,1}.norm{1..4}.weight": (256,),
    "transformer.layers.{0,1}.norm{1..4}.bias": (256,),
    "transformer.layers.{0,1}.mlp.layers.0.weight": (2048, 256),
    "transformer.layers.{0,1}.mlp.layers.0.bias": (2048,),
    "transformer.layers.{0,1}.mlp.layers.1.weight": (256, 2048),
    "transformer.layers.{0,1}.mlp.layers.1.bias": (256,),
    "transformer.final_attn_token_to_image.{q,k,v}_proj.weight": (128, 256),
    "transformer.final_attn_token_to_image.{q,k,v}_proj.bias": (128,),
    "transformer.final_attn_token_to_image.out_proj.weight": (256, 128),
    "transformer.final_attn_token_to_image.out_proj.bias": (256,),
    "transformer.norm_final_attn.{weight,bias}": (256,),
    "iou_token.weight": (1, 256),
    "mask_tokens.weight": (4, 256),
    "obj_score_token.weight": (1, 256),
    "output_upscaling.0.weight": (256, 64, 2, 2),
    "output_upscaling.{0,1}.bias": (64,),
    "output_upscaling.1.weight": (64,),
    "output_upscaling.3.weight": (64, 32, 2, 2),
    "output_upscaling.3.bias": (32,),
    "conv_s0.weight": (32, 256, 1, 1),
    "conv_s0.bias": (32,),
    "conv_s1.weight": (64, 256, 1, 1),
    "conv_s1.bias": (64,),
    "output_hypernetworks_mlps.{0..3}.layers.{0,1}.weight": (256, 256),
    "output_hypernetworks_mlps.{0..3}.layers.{0,1}.bias": (256,),
    "output_hypernetworks_mlps.{0..3}.layers.2.weight": (32, 256),
    "output_hypernetworks_mlps.{0..3}.layers.2.bias": (32,),
    "{iou_prediction_head,pred_obj_score_head}.layers.{0,1}.weight": (256, 256),
    "{iou_prediction_head,pred_obj_score_head}.layers.{0,1}.bias": (256,),
    "iou_prediction_head.layers.2.weight": (4, 256),
    "iou_prediction_head.layers.2.bias": (4,),
    "pred_obj_score_head.layers.2.weight": (1, 256),
    "pred_obj_score_head.layers.2.bias": (1,),
}


def _shapes(spec):
    return {name: shape for group, shape in spec.items() for name in _expand(group)}


def test_official_size_keys_and_shapes():
    with torch.device("meta"):
        prompt = PromptEncoder(256, (64, 64), (1024, 1024), 16)
        decoder = MaskDecoder(256, TwoWayTransformer(depth=2, embedding_dim=256, num_heads=8, mlp_dim=2048))
    ours_prompt = {k: tuple(v.shape) for k, v in prompt.state_dict().items()}
    ours_decoder = {k: tuple(v.shape) for k, v in decoder.state_dict().items()}
    assert ours_prompt == _shapes(OFFICIAL_PROMPT_KEYS)
    assert ours_decoder == _shapes(OFFICIAL_DECODER_KEYS)
    assert len(ours_decoder) == 131 and len(ours_prompt) == 17  # as the official modules
    # The Gaussian matrix is a buffer (stored in the checkpoint, never trained).
    assert "pe_layer.positional_encoding_gaussian_matrix" not in dict(prompt.named_parameters())
    assert "pe_layer.positional_encoding_gaussian_matrix" in dict(prompt.named_buffers())


# ----------------------------------------------------------------------------- prompt encoder
def test_prompt_encoder_shapes():
    prompt, _ = make_heads()
    coords, labels = click([(10, 20), (100, 30), (200, 250)], [1, 0, 1], batch=2)
    with torch.no_grad():
        sparse, dense = prompt((coords, labels), None, None)
        assert sparse.shape == (2, 4, C)  # 3 clicks + the padding point
        assert dense.shape == (2, C, EMB, EMB)
        assert prompt.get_dense_pe().shape == (1, C, EMB, EMB)
        sparse, dense = prompt((coords, labels), torch.tensor([[5.0, 6, 70, 80]] * 2), torch.randn(2, 1, 64, 64))
        assert sparse.shape == (2, 5, C)  # 3 clicks + 2 box corners, no padding
        assert dense.shape == (2, C, EMB, EMB)
        sparse, dense = prompt(None, None, None)
        assert sparse.shape == (1, 0, C) and dense.shape == (1, C, EMB, EMB)
    assert prompt.mask_input_size == (64, 64)


def test_point_encoding_is_x_then_y_in_input_pixels():
    """A click (x, y) is encoded at ((x+0.5)/W, (y+0.5)/H) — checked on a non-square input to catch swaps."""
    prompt = _randomize(PromptEncoder(C, (16, 8), (256, 128), 16))
    x, y = 30.0, 200.0
    coords, labels = click([(x, y)], [1])
    g = prompt.pe_layer.positional_encoding_gaussian_matrix
    unit = torch.tensor([(x + 0.5) / 128, (y + 0.5) / 256])
    angles = 2 * math.pi * ((2 * unit - 1) @ g)
    expected = torch.cat([angles.sin(), angles.cos()]) + prompt.point_embeddings[1].weight[0]
    with torch.no_grad():
        sparse, _ = prompt((coords, labels), None, None)
    torch.testing.assert_close(sparse[0, 0], expected, rtol=1e-5, atol=1e-5)


def test_dense_pe_is_the_encoding_of_cell_centres():
    prompt = _randomize(PromptEncoder(C, (6, 10), (96, 160), 16))  # h=6, w=10: a transpose would fail
    pe = prompt.get_dense_pe()
    assert pe.shape == (1, C, 6, 10)
    row, col = 4, 7
    # The centre of cell (row, col) in input pixels, as a click would give it (a click adds 0.5 itself).
    centre = torch.tensor([[[(col + 0.5) * 16 - 0.5, (row + 0.5) * 16 - 0.5]]])
    token = prompt.pe_layer.encode_pixels(centre + 0.5, prompt.input_image_size)
    torch.testing.assert_close(pe[0, :, row, col], token[0, 0], rtol=1e-5, atol=1e-5)


def test_label_semantics():
    prompt, _ = make_heads()
    weights = {i: prompt.point_embeddings[i].weight[0] for i in range(4)}
    coords, _ = click([(40, 50)], [1])
    with torch.no_grad():
        tokens = {lab: prompt((coords, torch.tensor([[lab]])), None, None)[0] for lab in (-1, 0, 1, 2, 3)}
        # Labels 0..3 add their own learned embedding to the same position encoding.
        for a, b in itertools.combinations(range(4), 2):
            torch.testing.assert_close(tokens[a][0, 0] - tokens[b][0, 0], weights[a] - weights[b])
        # The padding point is appended last and carries only `not_a_point_embed`, wherever it "is".
        for lab in (0, 1):
            torch.testing.assert_close(tokens[lab][0, 1], prompt.not_a_point_embed.weight[0])
        far, _ = click([(250, 3)], [1])
        padded_here = prompt((coords, torch.tensor([[-1]])), None, None)[0]
        padded_far = prompt((far, torch.tensor([[-1]])), None, None)[0]
        assert torch.equal(padded_here, padded_far)
        torch.testing.assert_close(tokens[-1][0, 0], prompt.not_a_point_embed.weight[0])


def test_negative_click_changes_the_masks():
    prompt, decoder = make_heads()
    pos = run(prompt, decoder, points=click([(100, 120)], [1]))
    neg = run(prompt, decoder, points=click([(100, 120)], [0]))
    assert (pos[0] - neg[0]).abs().max() > 1e-2
    both = run(prompt, decoder, points=click([(100, 120), (30, 40)], [1, 0]))
    assert (pos[0] - both[0]).abs().max() > 1e-2


def test_box_equals_two_corner_points():
    """A box gives the same corner tokens as points labelled 2 / 3 (the official predictor's route),
    and with a click the decoder output agrees once the points route's padding token is left out."""
    prompt, decoder = make_heads()
    box = torch.tensor([[30.0, 40.0, 150.0, 200.0]])
    corners = click([(30, 40), (150, 200)], [2, 3])
    with torch.no_grad():
        box_tokens, _ = prompt(None, box, None)
        corner_tokens, _ = prompt(corners, None, None)
        assert box_tokens.shape == (1, 2, C) and corner_tokens.shape == (1, 3, C)
        torch.testing.assert_close(box_tokens, corner_tokens[:, :2], rtol=0, atol=1e-6)

        # Box + click: boxes route → [click, corner, corner]; points route → [corner, corner, click, pad].
        clk = click([(90, 100)], [1])
        via_box, dense = prompt(clk, box, None)
        pts = (torch.cat([corners[0], clk[0]], 1), torch.cat([corners[1], clk[1]], 1))
        via_points, _ = prompt(pts, None, None)
        torch.testing.assert_close(via_points[:, :3], via_box[:, [1, 2, 0]], rtol=0, atol=1e-6)
        image, high_res = features()
        pe = prompt.get_dense_pe()
        out_box = decoder(image, pe, via_box, dense, True, False, high_res)
        out_pts = decoder(image, pe, via_points[:, :3], dense, True, False, high_res)
        for a, b in zip(out_box, out_pts):  # prompt-token order does not matter to the decoder
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        with_pad = decoder(image, pe, via_points, dense, True, False, high_res)
        assert (with_pad[0] - out_box[0]).abs().max() > 1e-3  # but the padding token does


def test_mask_prompt_changes_dense_embedding():
    prompt, decoder = make_heads()
    mask = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        _, no_mask = prompt(None, None, None)
        _, with_mask = prompt(None, None, mask)
    assert torch.equal(no_mask[0, :, 3, 5], prompt.no_mask_embed.weight[0])
    assert torch.equal(no_mask, prompt.no_mask_embed.weight[0].reshape(1, C, 1, 1).expand(1, C, EMB, EMB))
    assert with_mask.shape == no_mask.shape and (with_mask - no_mask).abs().max() > 0.1
    clk = click([(100, 120)], [1])
    a = run(prompt, decoder, points=clk)
    b = run(prompt, decoder, points=clk, masks=mask)
    assert (a[0] - b[0]).abs().max() > 1e-2


# ----------------------------------------------------------------------------- transformer
def test_attention_with_kv_in_dim_matches_the_formula():
    torch.manual_seed(0)
    att = Attention(32, 2, downsample_rate=2, kv_in_dim=12).eval()
    q, kv = torch.randn(3, 5, 32), torch.randn(3, 7, 12)
    with torch.no_grad():
        out = att(q, kv, kv)
        qh = att.split_heads(att.q_proj(q))
        kh = att.split_heads(att.k_proj(kv))
        vh = att.split_heads(att.v_proj(kv))
        weights = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(8), dim=-1)
        expected = att.out_proj(att.merge_heads(weights @ vh))
    assert out.shape == (3, 5, 32) and qh.shape == (3, 2, 5, 8)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_two_way_transformer_shapes_and_first_layer():
    transformer = TwoWayTransformer(depth=3, embedding_dim=C, num_heads=4, mlp_dim=96).eval()
    assert [layer.skip_first_layer_pe for layer in transformer.layers] == [True, False, False]
    image, _ = features(batch=2, emb_hw=(8, 12))
    pe = torch.randn(1, C, 8, 12)
    tokens = torch.randn(2, 9, C)
    with torch.no_grad():
        queries, keys = transformer(image, pe, tokens)
        # The batch-1 PE broadcasts: same as giving it per batch entry.
        queries2, keys2 = transformer(image, pe.expand(2, -1, -1, -1), tokens)
    assert queries.shape == (2, 9, C) and keys.shape == (2, 96, C)
    torch.testing.assert_close(queries, queries2)
    torch.testing.assert_close(keys, keys2)


# ----------------------------------------------------------------------------- mask decoder
def test_decoder_shapes_and_tokens():
    prompt, decoder = make_heads()
    clk = click([(100, 120)], [1])
    masks, iou, tokens, score = run(prompt, decoder, points=clk, multimask=True)
    assert masks.shape == (1, 3, 64, 64) and iou.shape == (1, 3) and tokens.shape == (1, 3, C)
    assert score.shape == (1, 1)
    assert ((iou > 0) & (iou < 1)).all()  # sigmoid output
    single = run(prompt, decoder, points=clk, multimask=False)
    assert single[0].shape == (1, 1, 64, 64) and single[1].shape == (1, 1) and single[2].shape == (1, 1, C)
    # The single-mask token is token 0, the multimask tokens 1..3: different vectors.
    assert not torch.allclose(single[2][:, 0], tokens[:, 0])
    torch.testing.assert_close(single[3], score)


def test_decoder_batch_of_objects_is_per_object():
    """B image embeddings (one per object) with B prompt sets = B independent single-object runs."""
    prompt, decoder = make_heads()
    image, high_res = features(batch=2)
    coords, labels = click([(100, 120), (10, 10)], [1, 0])
    coords = torch.stack([coords[0], coords[0].flip(0)])  # two different prompt sets
    labels = labels.expand(2, -1)
    with torch.no_grad():
        sparse, dense = prompt((coords, labels), None, None)
        pe = prompt.get_dense_pe()
        batched = decoder(image, pe, sparse, dense, True, False, high_res)
        for i in range(2):
            alone = decoder(
                image[i : i + 1], pe, sparse[i : i + 1], dense[i : i + 1], True, False, [x[i : i + 1] for x in high_res]
            )
            for a, b in zip(batched, alone):
                torch.testing.assert_close(a[i : i + 1], b, rtol=1e-4, atol=1e-4)
        # repeat_image: one embedding shared by two prompt sets.
        shared = decoder(image[:1], pe, sparse, dense, True, True, [x[:1].expand(2, -1, -1, -1) for x in high_res])
        assert shared[0].shape == (2, 3, 64, 64)
        with pytest.raises(ValueError):
            decoder(image[:1], pe, sparse, dense, True, False, high_res)


def test_stability_score():
    logits = torch.tensor([[[[1.0, 0.03, -0.03, -1.0]]]])  # > 0.05: 1 pixel; > -0.05: 3 pixels
    torch.testing.assert_close(stability_score(logits, 0.05), torch.tensor([[1 / 3]]))
    assert stability_score(torch.full((1, 1, 2, 2), -1.0), 0.05).item() == 1.0  # empty mask counts as stable


def test_dynamic_multimask_fallback_rule():
    _, decoder = make_heads(dynamic_multimask_via_stability=True)
    stable0 = torch.where(torch.arange(16).reshape(4, 4) < 8, 5.0, -5.0)
    unstable0 = torch.full((4, 4), 0.01)
    candidates = torch.stack([torch.full((4, 4), float(k)) for k in (1, 2, 3)])
    all_masks = torch.stack([torch.cat([m[None], candidates]) for m in (stable0, unstable0)])  # [2, 4, 4, 4]
    all_ious = torch.tensor([[0.1, 0.2, 0.9, 0.3], [0.1, 0.2, 0.3, 0.9]])
    masks, ious = decoder.select_stable_single_mask(all_masks, all_ious)
    assert masks.shape == (2, 1, 4, 4) and ious.shape == (2, 1)
    assert torch.equal(masks[0, 0], stable0) and ious[0, 0] == 0.1  # stable → mask 0 even with lower IoU
    assert torch.equal(masks[1, 0], candidates[2]) and ious[1, 0] == 0.9  # unstable → best of 1..3


def test_dynamic_multimask_picks_another_mask_when_mask0_is_unstable():
    prompt, decoder = make_heads(dynamic_multimask_via_stability=True)
    # Make mask 0 all-zero logits (stability 0): its hypernetwork outputs zeros.
    last = decoder.output_hypernetworks_mlps[0].layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    clk = click([(100, 120)], [1])
    dynamic = run(prompt, decoder, points=clk, multimask=False)
    multi = run(prompt, decoder, points=clk, multimask=True)
    decoder.dynamic_multimask_via_stability = False
    plain = run(prompt, decoder, points=clk, multimask=False)
    assert torch.equal(plain[0], torch.zeros_like(plain[0]))
    best = multi[1].argmax(-1).item()
    torch.testing.assert_close(dynamic[0][:, 0], multi[0][:, best])
    torch.testing.assert_close(dynamic[1][:, 0], multi[1][:, best])
    # The pointer token stays the single-mask token 0 even when another mask is returned.
    torch.testing.assert_close(dynamic[2], plain[2])
    # In training mode the rule is off.
    decoder.dynamic_multimask_via_stability = True
    decoder.train()
    image, high_res = features()
    with torch.no_grad():
        sparse, dense = prompt(clk, None, None)
        trained = decoder(image, prompt.get_dense_pe(), sparse, dense, False, False, high_res)
    assert torch.equal(trained[0], plain[0])


def test_decoder_variants_without_high_res_or_object_head():
    prompt, decoder = make_heads(
        use_high_res_features=False,
        pred_obj_scores=False,
        iou_prediction_use_sigmoid=False,
        use_multimask_token_for_obj_ptr=False,
    )
    assert not hasattr(decoder, "conv_s0") and not hasattr(decoder, "obj_score_token")
    clk = click([(100, 120)], [1])
    image, _ = features()
    with torch.no_grad():
        sparse, dense = prompt(clk, None, None)
        masks, _, tokens, score = decoder(image, prompt.get_dense_pe(), sparse, dense, True, False, None)
    assert masks.shape == (1, 3, 64, 64) and tokens.shape == (1, 1, C)  # token 0 for the pointer
    assert torch.equal(score, torch.full((1, 1), 10.0))


def test_other_sizes():
    """Nothing is tied to 1024 / 64 / 256: a non-square embedding and another width run."""
    prompt, decoder = make_heads(embed=32, emb_hw=(8, 12), input_hw=(128, 192))
    out = run(
        prompt, decoder, points=click([(150, 20)], [1]), embed=32, emb_hw=(8, 12), masks=torch.zeros(1, 1, 32, 48)
    )
    assert out[0].shape == (1, 3, 32, 48) and out[2].shape == (1, 3, 32)
