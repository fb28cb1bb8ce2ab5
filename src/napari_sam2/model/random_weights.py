"""Seeded random weights in the official checkpoint format, for tests and benchmarks.

No real SAM 2 weights can be downloaded in CI, so every test runs on a checkpoint written here: the exact
keys and shapes of an official `.pt` (`{"model": state_dict}`), with every float tensor random so that
no part of the network hides behind zeros, ones or 1e-6 layer scales.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

# Parameters that are embeddings or tokens rather than layer weights: small normal noise.
_SMALL_NOISE = {
    "pos_embed",
    "pos_embed_window",
    "maskmem_tpos_enc",
    "no_mem_embed",
    "no_mem_pos_enc",
    "no_obj_ptr",
    "no_obj_embed_spatial",
}
OBJECT_SCORE_BIAS_KEY = "sam_mask_decoder.pred_obj_score_head.layers.2.bias"


def randomize_state_dict(state_dict: dict, seed: int = 0, object_score_bias: float | None = 4.0) -> dict:
    """A copy of `state_dict` with every float tensor replaced by seeded random values.

    Laws: layer weights N(0, 1)/sqrt(fan_in); 1-D weights (LayerNorms) 1 + 0.1·N; layer scales `gamma`
    0.1·N; biases 0.02·N; embeddings/tokens 0.1·N; the prompt encoder's Gaussian matrix N(0, 1).
    `object_score_bias` is written into the object-score head's last bias: random weights can make the
    object score negative, which would blank every tracked mask; +4 keeps the object "present", a negative
    value exercises the occlusion path. The same seed and key order give identical tensors.
    """
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in state_dict.items():
        if not torch.is_floating_point(value):
            out[key] = value.clone()
            continue
        leaf = key.rsplit(".", 1)[-1]
        shape = value.shape
        if leaf in _SMALL_NOISE:
            tensor = 0.1 * torch.randn(shape, generator=gen)
        elif leaf == "positional_encoding_gaussian_matrix":
            tensor = torch.randn(shape, generator=gen)
        elif value.dim() >= 2:
            tensor = torch.randn(shape, generator=gen) / math.sqrt(value[0].numel())
        elif leaf == "weight":
            tensor = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif leaf == "gamma":
            tensor = 0.1 * torch.randn(shape, generator=gen)
        else:
            tensor = 0.02 * torch.randn(shape, generator=gen)
        out[key] = tensor.to(value.dtype)
    if object_score_bias is not None and OBJECT_SCORE_BIAS_KEY in out:
        out[OBJECT_SCORE_BIAS_KEY].fill_(object_score_bias)
    return out


def random_checkpoint(config, seed: int = 0, object_score_bias: float | None = 4.0) -> dict:
    """`{"model": state_dict}` for a config (a `SAM2Config` or an official config name)."""
    from .build import build_model
    from .configs import SAM2Config, get_config

    cfg = config if isinstance(config, SAM2Config) else get_config(config)
    model = build_model(cfg)
    ckpt = {"model": randomize_state_dict(model.state_dict(), seed, object_score_bias)}
    if cfg.name not in _official_names():
        ckpt["config"] = config_to_dict(cfg)
    return ckpt


def write_random_checkpoint(config, path, seed: int = 0, object_score_bias: float | None = 4.0) -> Path:
    """Write a random checkpoint to `path` (official format; plain tensors only, loads with weights_only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(random_checkpoint(config, seed, object_score_bias), path)
    return path


def _official_names():
    from .configs import CONFIGS

    return set(CONFIGS)


def config_to_dict(cfg) -> dict:
    """A config as plain Python values (storable inside a weights_only checkpoint)."""
    import dataclasses

    return dataclasses.asdict(cfg)
