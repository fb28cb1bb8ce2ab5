"""Values cached at inference (Hiera's position embedding, the prompt encoder's dense PE) follow the weights."""

import torch

from napari_sam2 import load_model
from napari_sam2.model.common import InferenceCache


def test_cache_recomputes_when_its_inputs_change():
    calls = []
    w = torch.ones(3)
    cache = InferenceCache()

    def compute():
        calls.append(1)
        return w * 2

    with torch.inference_mode():
        assert torch.equal(cache.get(compute, w), torch.full((3,), 2.0))
        cache.get(compute, w)
        assert len(calls) == 1  # reused
    w.add_(1)  # in place, as load_state_dict does
    with torch.inference_mode():
        assert torch.equal(cache.get(compute, w), torch.full((3,), 4.0)) and len(calls) == 2
        cache.get(compute, w, extra=(64,))
        assert len(calls) == 3  # another grid size
    cache.get(compute, w)
    cache.get(compute, w)
    assert len(calls) == 5  # with autograd on, nothing is cached


def test_model_with_new_weights_gives_the_new_models_features(make_checkpoint, tiny_config):
    first = load_model(make_checkpoint(tiny_config(), seed=0), device="cpu")
    second = load_model(make_checkpoint(tiny_config(), seed=1), device="cpu")
    x = torch.randn(1, 3, first.image_size, first.image_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        first.encode_image(x)  # fills the caches with the first weights
        dense_before = first.sam_prompt_encoder.get_dense_pe().clone()
    first.load_state_dict(second.state_dict())
    with torch.inference_mode():
        ours, ref = first.encode_image(x), second.encode_image(x)
        assert torch.equal(ours.vision, ref.vision) and torch.equal(ours.high_res[0], ref.high_res[0])
        assert torch.equal(first.sam_prompt_encoder.get_dense_pe(), second.sam_prompt_encoder.get_dense_pe())
        assert not torch.equal(first.sam_prompt_encoder.get_dense_pe(), dense_before)


def test_a_model_loaded_inside_inference_mode_runs_outside_it(tiny_checkpoint):
    """Weights made under inference mode have no version counter: the cache keys them by storage alone."""
    with torch.inference_mode():
        model = load_model(tiny_checkpoint, device="cpu")
    x = torch.randn(1, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        first = model.sam_prompt_encoder.get_dense_pe()
        assert model.sam_prompt_encoder.get_dense_pe() is first  # cached, not recomputed
        model.encode_image(x)
    with torch.inference_mode():
        assert torch.equal(model.sam_prompt_encoder.get_dense_pe(), first)
