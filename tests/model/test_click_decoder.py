"""The optional click decoder: built only from checkpoints that carry it; it draws the mask of a first single click
on a frame without memory, and nothing else (official checkpoints are unaffected)."""

import numpy as np
import torch

from napari_sam2 import load_model
from napari_sam2.model.click_decoder import SHARED, carries_click_decoder


def _with_click_decoder(tiny_checkpoint, tmp_path, state):
    """The tiny random checkpoint plus the click decoder `state` (`click_decoder_weights`) → (path, swapped path):
    swapped is the plain checkpoint whose shared decoder *is* that click decoder (its high-res projections kept)."""
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    with_decoder = {**ckpt, "model": {**ckpt["model"], **{f"click_decoder.{k}": v for k, v in state.items()}}}
    swapped = {**ckpt, "model": {**ckpt["model"], **{f"sam_mask_decoder.{k}": v for k, v in state.items()}}}
    paths = tmp_path / "with_click_decoder.pt", tmp_path / "swapped.pt"
    torch.save(with_decoder, paths[0])
    torch.save(swapped, paths[1])
    return paths


def _click(model):
    size = model.image_size
    torch.manual_seed(1)
    feats = model.encode_image(torch.randn(1, 3, size, size))
    return model.image_embedding(feats), feats.high_res, torch.rand(1, 1, 2) * size, torch.ones(1, 1, dtype=torch.int32)


@torch.no_grad()
def test_official_format_checkpoints_have_none_and_a_first_click_decodes_as_before(tiny_checkpoint, make_checkpoint):
    for path in (tiny_checkpoint, make_checkpoint("sam2_hiera_t", seed=1)):
        model = load_model(path, device="cpu")
        assert model.click_decoder is None
        assert not carries_click_decoder(model.state_dict())
    model = load_model(tiny_checkpoint, device="cpu")
    click = _click(model)
    a, b = model.decode_click(*click), model.decode(*click, multimask=True)
    for field in ("multi_logits", "multi_ious", "object_pointer", "object_score"):
        assert torch.equal(getattr(a, field), getattr(b, field))


@torch.no_grad()
def test_a_checkpoint_with_a_click_decoder_loads_it_and_keeps_the_shared_pointer(
    tiny_checkpoint, tmp_path, click_decoder_weights
):
    path, _ = _with_click_decoder(tiny_checkpoint, tmp_path, click_decoder_weights)
    model = load_model(path, device="cpu")
    assert model.click_decoder is not None
    assert not any(hasattr(model.click_decoder, name) for name in SHARED)  # projected once, by the shared decoder
    click = _click(model)
    got = model.decode_click(*click)
    own = model.decode(*click, multimask=True, decoder=model.click_decoder)
    shared = model.decode(*click, multimask=True, object_gate=False)
    assert torch.equal(got.multi_logits, own.multi_logits) and torch.equal(got.object_score, own.object_score)
    assert not torch.allclose(got.multi_logits, shared.multi_logits)
    present = (own.object_score > 0).float()
    assert torch.equal(got.object_pointer, present * shared.object_pointer + (1 - present) * model.no_obj_ptr)


def test_a_session_draws_only_a_first_single_click_with_it(tiny_checkpoint, tmp_path, click_decoder_weights):
    """The first click's mask is the click decoder's (the checkpoint whose shared decoder is that decoder gives the
    same mask); a box and two clicks are the shared decoder's; tracking and a correction on a tracked frame never
    run the click decoder."""
    from napari_sam2.session import TrackingSession

    path, swapped = _with_click_decoder(tiny_checkpoint, tmp_path, click_decoder_weights)
    stack = np.random.default_rng(0).random((3, 128, 128)).astype(np.float32)
    got = {}
    for name, p in (("plain", tiny_checkpoint), ("click", path), ("swapped", swapped)):
        model, runs = load_model(p, device="cpu"), []
        if model.click_decoder is not None:
            model.click_decoder.register_forward_hook(lambda *_, seen=runs: seen.append(1))
        with TrackingSession(model, stack) as session:
            session.add_prompt(0, 1, points=[(60.0, 64.0)], labels=[1])
            session.add_prompt(0, 2, box=(30.0, 30.0, 90.0, 100.0))
            result = session.add_prompt(0, 3, points=[(64.0, 70.0), (20.0, 20.0)], labels=[1, 0])
            got[name] = dict(zip(result.obj_ids, result.masks))
            assert len(runs) == (1 if name == "click" else 0)
            list(session.propagate())
            session.add_prompt(2, 1, points=[(40.0, 40.0)], labels=[1])
            assert len(runs) == (1 if name == "click" else 0)
    assert np.array_equal(got["click"][1], got["swapped"][1])
    assert not np.array_equal(got["click"][1], got["plain"][1])
    assert np.array_equal(got["click"][2], got["plain"][2])  # the box: the shared decoder's
    assert np.array_equal(got["click"][3], got["plain"][3])  # two clicks: the shared decoder's


def test_the_click_rules_extent_step_skips_the_click_decoders_masks_and_a_large_one_goes_back(
    tiny_checkpoint, tmp_path, monkeypatch, click_decoder_weights
):
    """The extent step mends the shared decoder's under-segmented large nuclei. A click decoder's first-click mask
    skips it while it is smaller than the step's radius (extent_radius); one that reaches it is handed back to the
    shared decoder and the step (the mask is then the plain checkpoint's). A second click always gets the step."""
    import dataclasses

    from napari_sam2.click_rule import CLICK_RULE_FLUORESCENCE, ClickRule
    from napari_sam2.session import TrackingSession

    path, _ = _with_click_decoder(tiny_checkpoint, tmp_path, click_decoder_weights)
    calls = {"extend": 0, "cap": 0}
    for name in calls:
        real = getattr(ClickRule, name)

        def spy(self, *args, _real=real, _name=name):
            calls[_name] += 1
            return _real(self, *args)

        monkeypatch.setattr(ClickRule, name, spy)
    stack = np.random.default_rng(0).random((2, 128, 128)).astype(np.float32)
    for radius, handed_back in ((1e6, False), (1e-6, True)):  # no mask / any mask is that large
        rule = dataclasses.replace(CLICK_RULE_FLUORESCENCE, extent_radius=radius)
        firsts = {}
        for p in (tiny_checkpoint, path):
            calls.update(extend=0, cap=0)
            with TrackingSession(load_model(p, device="cpu"), stack, click_rule=rule) as session:
                result = session.add_prompt(0, 1, points=[(60.0, 64.0)], labels=[1])
                firsts[p] = result.masks[0]
                first = 1 if p == tiny_checkpoint or handed_back else 0
                assert calls == {"extend": first, "cap": 1}
                session.add_prompt(0, 1, points=[(70.0, 64.0)], labels=[1])
                assert calls == {"extend": first + 1, "cap": 2}
        assert np.array_equal(firsts[tiny_checkpoint], firsts[path]) == handed_back
