"""The optional mask-quality head: built only from checkpoints that carry it; official checkpoints are unaffected."""

import numpy as np
import pytest
import torch

from napari_sam2 import CheckpointError, load_model
from napari_sam2.model.mask_quality import MaskQualityHead, head_settings


def _with_head(tiny_checkpoint, tmp_path, width=8, hidden=16, d=None):
    """The tiny random checkpoint plus a random mask-quality head (widths given) → path."""
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    d = d or ckpt["config"]["d_model"]
    torch.manual_seed(3)
    head = MaskQualityHead(d, width, hidden)
    ckpt["model"].update({f"mask_quality.{k}": v for k, v in head.state_dict().items()})
    path = tmp_path / f"with_head_{width}_{hidden}_{d}.pt"
    torch.save(ckpt, path)
    return path, head


def _click(model, n=1, shared=False):
    size = model.image_size
    torch.manual_seed(1)
    feats = model.encode_image(torch.randn(1 if shared else n, 3, size, size))
    embedding = model.image_embedding(feats)
    coords = torch.rand(n, 1, 2) * size
    labels = torch.ones(n, 1, dtype=torch.int32)
    return embedding, feats.high_res, coords, labels


@torch.no_grad()
def test_official_format_checkpoints_have_no_head_and_decode_as_before(tiny_checkpoint, make_checkpoint):
    for path in (tiny_checkpoint, make_checkpoint("sam2_hiera_t", seed=1)):
        model = load_model(path, device="cpu")
        assert model.mask_quality is None
        assert not [k for k in model.state_dict() if k.startswith("mask_quality")]
        assert head_settings(torch.load(path, weights_only=True)["model"]) is None
    model = load_model(tiny_checkpoint, device="cpu")
    embedding, high_res, coords, labels = _click(model)
    out = model.decode(embedding, high_res, coords, labels, multimask=True)
    # the IoU is the decoder's own IoU token (candidates 1…3)
    sparse, dense = model.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    _, own, _, _ = model.sam_mask_decoder.predict_masks(
        embedding, model.sam_prompt_encoder.get_dense_pe(), sparse, dense, False, high_res
    )
    assert torch.equal(out.multi_ious, own[:, 1:])


@torch.no_grad()
def test_checkpoint_with_head_loads_it_and_reports_its_prediction_with_the_same_masks(tiny_checkpoint, tmp_path):
    path, head = _with_head(tiny_checkpoint, tmp_path)
    plain = load_model(tiny_checkpoint, device="cpu")
    model = load_model(path, device="cpu")
    assert isinstance(model.mask_quality, MaskQualityHead)
    assert (model.mask_quality.width, model.mask_quality.hidden) == (8, 16)  # sized from the keys' shapes
    for key, value in head.state_dict().items():
        assert torch.equal(model.state_dict()[f"mask_quality.{key}"], value)

    embedding, high_res, coords, labels = _click(model, n=3)
    out = model.decode(embedding, high_res, coords, labels, multimask=True)
    ref = plain.decode(embedding, high_res, coords, labels, multimask=True)
    assert torch.equal(out.multi_logits, ref.multi_logits)  # the candidates are the network's, unchanged
    assert torch.equal(out.object_score, ref.object_score)
    # the choice, the chosen mask, its pointer and the token's IoU are the network's without the head
    for name in ("multi_ious", "logits", "iou", "object_pointer"):
        assert torch.equal(getattr(out, name), getattr(ref, name)), name
    assert ref.quality is None and torch.equal(ref.reported_iou, ref.iou)
    q = out.multi_quality
    assert q.shape == (3, 3) and ((q >= 0) & (q <= 1)).all() and not torch.allclose(q, ref.multi_ious)
    raw = plain.decode(embedding, high_res, coords, labels, multimask=True, object_gate=False).multi_logits
    assert torch.allclose(q, model.mask_quality(raw, high_res, coords, labels, model.image_size))
    best = out.multi_ious.argmax(1)  # the head's number for the chosen candidate is what is reported
    assert torch.equal(out.quality[:, 0], q[torch.arange(3), best])
    assert torch.equal(out.reported_iou, out.quality) and torch.equal(out.reported_multi_ious, q)

    # one frame shared by many clicks (segment everything): the same numbers as one frame per click
    embedding, high_res, coords, labels = _click(model, n=4, shared=True)
    shared = model.decode(embedding, high_res, coords, labels, multimask=True).multi_quality
    each = model.decode(
        embedding.expand(4, -1, -1, -1), [h.expand(4, -1, -1, -1) for h in high_res], coords, labels, multimask=True
    ).multi_quality
    assert shared.shape == (4, 3)
    assert torch.allclose(shared, each, atol=1e-5)
    # no points (a tracked frame), and a box
    assert model.decode(embedding, high_res, multimask=True).multi_quality.shape == (1, 3)
    box = torch.tensor([[[10.0, 12.0], [60.0, 70.0]]])
    single = model.decode(embedding, high_res, box, torch.tensor([[2, 3]], dtype=torch.int32), multimask=False)
    assert single.multi_quality.shape == (1, 1) and single.quality.shape == (1, 1)


def test_head_of_another_width_is_refused(tiny_checkpoint, tmp_path):
    path, _ = _with_head(tiny_checkpoint, tmp_path, d=64)  # the tiny decoder is 32 wide
    with pytest.raises(CheckpointError, match="mask-quality head is for a decoder 64 wide"):
        load_model(path, device="cpu")


def test_shape_features_see_the_click_and_the_box():
    logits = torch.full((1, 2, 16, 16), -10.0)
    logits[0, 0, 2:6, 2:6] = 10.0  # a square under the click
    logits[0, 1, 10:14, 10:14] = 10.0  # a square elsewhere
    prob = torch.sigmoid(logits)
    coords = torch.tensor([[[4 / 16, 4 / 16], [0.0, 0.0], [0.5, 0.5]]])  # (x, y) in 0…1: click, box corners
    labels = torch.tensor([[1, 2, 3]])
    grid = (coords * 2 - 1)[:, None]
    prob_at = torch.nn.functional.grid_sample(prob, grid, align_corners=False)[:, :, 0]
    pos, neg = (labels == 1).float(), (labels == 0).float()
    f = MaskQualityHead.shape_features(logits, prob, coords, labels, prob_at, pos, neg)
    at_click, distance, in_box = f[0, :, 3], f[0, :, 8], f[0, :, 9]
    assert at_click[0] > 0.9 and at_click[1] < 0.1
    assert distance[0] < distance[1]
    assert in_box[0] > 0.99 and in_box[1] < 0.01


def test_session_reports_the_heads_iou_on_prompted_frames_for_the_same_masks(tiny_checkpoint, tmp_path):
    from napari_sam2.session import TrackingSession

    path, _ = _with_head(tiny_checkpoint, tmp_path)
    rng = np.random.default_rng(0)
    stack = rng.random((3, 128, 128)).astype(np.float32)
    got = {}
    for name, model in (("plain", load_model(tiny_checkpoint, device="cpu")), ("head", load_model(path, device="cpu"))):
        calls = []
        if model.mask_quality is not None:  # count the head's runs: tracked frames must not pay for it
            model.mask_quality.register_forward_hook(lambda *_, seen=calls: seen.append(1))
        with TrackingSession(model, stack) as session:
            first = session.add_prompt(0, 1, points=[(60.0, 64.0)], labels=[1])
            later = list(session.propagate())
        got[name] = (first, later)
        assert len(calls) == (1 if name == "head" else 0)  # the prompted frame only
    (plain, plain_later), (head, head_later) = got["plain"], got["head"]
    assert np.array_equal(plain.masks, head.masks)
    assert not np.allclose(plain.ious, head.ious)  # the head's number, not the token's
    assert len(plain_later) == len(head_later) >= 2
    for a, b in zip(plain_later, head_later):
        assert np.array_equal(a.masks, b.masks) and np.array_equal(a.scores, b.scores)
        if a.frame != 0:  # tracked frames report the IoU token's number (the head learned on prompted frames)
            assert np.array_equal(a.ious, b.ious)
