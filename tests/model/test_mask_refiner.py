"""The optional mask refiner: built only from checkpoints that carry it; it corrects the border of a first click's
mask and nothing else (official checkpoints, and every other mask, are unaffected)."""

import numpy as np
import torch

from napari_sam2 import load_model
from napari_sam2.model.mask_refiner import MaskRefiner, carries_mask_refiner


def _refiner_for(model, seed: int = 3, scale: float = 0.3) -> MaskRefiner:
    refiner = MaskRefiner(model.sam_mask_decoder.conv_s0.out_channels)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in refiner.parameters():
            p.add_(scale * torch.randn_like(p))
    return refiner


def _checkpoints(tiny_checkpoint, tmp_path, click_decoder):
    """The tiny random checkpoint with a click decoder (`click_decoder_weights`), without and with a (random,
    non-zero) mask refiner."""
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    model = load_model(tiny_checkpoint, device="cpu")
    with_decoder = {**ckpt["model"], **{f"click_decoder.{k}": v for k, v in click_decoder.items()}}
    refiner = {f"mask_refiner.{k}": v for k, v in _refiner_for(model).state_dict().items()}
    paths = tmp_path / "click.pt", tmp_path / "click_refined.pt"
    torch.save({**ckpt, "model": with_decoder}, paths[0])
    torch.save({**ckpt, "model": {**with_decoder, **refiner}}, paths[1])
    return paths


@torch.no_grad()
def test_a_new_refiner_changes_nothing_and_official_checkpoints_have_none(tiny_checkpoint):
    model = load_model(tiny_checkpoint, device="cpu")
    assert model.mask_refiner is None and not carries_mask_refiner(model.state_dict())
    torch.manual_seed(0)
    size = model.image_size
    logits = 4 * torch.randn(2, 1, size // 4, size // 4)
    channels = model.sam_mask_decoder.conv_s0.out_channels
    grey, s0 = torch.rand(2, 1, size, size), torch.randn(2, channels, size // 4, size // 4)
    assert torch.equal(model.refine_click_mask(logits, grey, [s0]), logits)  # no refiner: unchanged
    assert torch.equal(MaskRefiner(s0.shape[1])(logits, grey, s0), logits)  # a new one: its last layer is zero
    refined = _refiner_for(model)(logits, grey, s0)
    assert refined.shape == logits.shape and not torch.allclose(refined, logits)
    cut = logits.clone()
    cut[:, :, :4] = -1024.0  # the click rule's cut: stays cut (the correction is bounded, the input clipped)
    assert (_refiner_for(model)(cut, grey, s0)[:, :, :4] < 0).all()


def test_a_session_refines_only_a_first_single_click(tiny_checkpoint, tmp_path, click_decoder_weights):
    """With the refiner the first click's mask differs; a box, two clicks, every tracked frame (the clicked object's
    too: its memory is the unrefined mask's) and a correction are the same as without it, and only the first click
    runs it; the file loads it."""
    from napari_sam2.session import TrackingSession

    plain, refined = _checkpoints(tiny_checkpoint, tmp_path, click_decoder_weights)
    assert load_model(refined, device="cpu").mask_refiner is not None
    assert load_model(plain, device="cpu").mask_refiner is None
    stack = np.random.default_rng(0).random((3, 128, 128)).astype(np.float32)
    got, runs = {}, []
    for name, path in (("plain", plain), ("refined", refined)):
        model = load_model(path, device="cpu")
        if model.mask_refiner is not None:
            model.mask_refiner.register_forward_hook(lambda *_: runs.append(1))
        with TrackingSession(model, stack) as session:
            session.add_prompt(0, 1, points=[(60.0, 64.0)], labels=[1])
            session.add_prompt(0, 2, box=(30.0, 30.0, 90.0, 100.0))
            result = session.add_prompt(0, 3, points=[(64.0, 70.0), (20.0, 20.0)], labels=[1, 0])
            masks = dict(zip(result.obj_ids, result.masks))
            frames = {r.frame: dict(zip(r.obj_ids, r.masks)) for r in session.propagate()}
            session.add_prompt(2, 2, points=[(40.0, 40.0)], labels=[1])
            masks["corrected"] = session.result(2).masks[session.result(2).obj_ids.index(2)]
            got[name] = (masks, frames)
    assert len(runs) == 1  # the first click only
    (plain_masks, plain_frames), (refined_masks, refined_frames) = got["plain"], got["refined"]
    assert not np.array_equal(plain_masks[1], refined_masks[1])
    assert np.array_equal(plain_masks[2], refined_masks[2])  # the box
    assert np.array_equal(plain_masks[3], refined_masks[3])  # two clicks
    assert np.array_equal(plain_frames[1][3], refined_frames[1][3])  # object 3 tracked: no refined mask in its memory
    # object 1's memory is encoded from the network's own mask, not the refined one: its tracked frames are the same
    assert all(np.array_equal(plain_frames[f][1], refined_frames[f][1]) for f in (1, 2))
    assert np.array_equal(plain_masks["corrected"], refined_masks["corrected"])  # a click on a tracked frame
