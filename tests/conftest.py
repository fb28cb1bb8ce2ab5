"""Shared fixtures: small random-weight SAM 2 checkpoints made on the fly (nothing heavy is committed)."""

import numpy as np
import pytest
import torch

from napari_sam2.model.random_weights import write_random_checkpoint


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="session")
def make_checkpoint(checkpoint_dir):
    """make_checkpoint(config_or_name, seed=0, object_score_bias=4.0) -> path of a cached random .pt"""
    made = {}

    def _make(config, seed=0, object_score_bias=4.0):
        name = config if isinstance(config, str) else config.name
        key = (name, seed, object_score_bias, None if isinstance(config, str) else config)
        if key not in made:
            path = checkpoint_dir / f"{name}_s{seed}_b{object_score_bias}_{len(made)}.pt"
            made[key] = write_random_checkpoint(config, path, seed=seed, object_score_bias=object_score_bias)
        return made[key]

    return _make


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


def build_tiny_config(image_size=128, version="2.1", name=None):
    """A SAM 2 config small enough to track a stack in well under a second per frame on 2 CPU cores.

    Same architecture as the official models (every part and flag), only narrower and shallower.
    """
    from napari_sam2.model.configs import HieraConfig, SAM2Config

    v21 = version == "2.1"
    return SAM2Config(
        name=name or f"test-tiny-{version}-{image_size}",
        version=version,
        trunk=HieraConfig(
            embed_dim=16,
            num_heads=1,
            stages=(1, 1, 2, 1),
            global_att_blocks=(3,),
            window_pos_embed_bkg_spatial_size=(4, 4),
            window_spec=(8, 4, 4, 2),
        ),
        image_size=image_size,
        d_model=32,
        mem_dim=16,
        mem_attention_layers=1,
        mem_attention_ffn=64,
        decoder_mlp_dim=64,
        iou_head_hidden_dim=32,
        no_obj_embed_spatial=v21,
        add_tpos_enc_to_obj_ptrs=v21,
        proj_tpos_enc_in_obj_ptrs=v21,
        use_signed_tpos_enc_to_obj_ptrs=v21,
    )


@pytest.fixture(scope="session")
def tiny_checkpoint(make_checkpoint):
    """Path of a random-weight checkpoint of the tiny test config (object present: score bias +4)."""
    return make_checkpoint(build_tiny_config(), seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    from napari_sam2 import load_model

    return load_model(tiny_checkpoint, device="cpu")


def build_moving_blobs(n_frames=8, shape=(96, 128), dtype=np.uint16, seed=0):
    """A small 16-bit stack: two bright disks moving in opposite directions on a noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    stack = np.empty((n_frames, *shape), dtype=dtype)
    for t in range(n_frames):
        frame = rng.normal(200, 20, size=shape)
        frame[(yy - 30) ** 2 + (xx - (30 + 3 * t)) ** 2 < 12**2] += 2000
        frame[(yy - 65) ** 2 + (xx - (95 - 3 * t)) ** 2 < 10**2] += 1500
        stack[t] = np.clip(frame, 0, np.iinfo(dtype).max).astype(dtype)
    return stack


@pytest.fixture(scope="session")
def tiny_config():
    """tiny_config(image_size=128, version="2.1") -> a small SAM2Config (see build_tiny_config)."""
    return build_tiny_config


@pytest.fixture
def blob_stack():
    """blob_stack(n_frames=8, shape=(96, 128), dtype=np.uint16) -> a small moving-disks stack."""
    return build_moving_blobs


@pytest.fixture(scope="session")
def click_decoder_weights(tiny_checkpoint):
    """A click decoder for the tiny checkpoint that differs from its shared decoder (seeded): its state dict, without
    the "click_decoder." prefix."""
    from napari_sam2 import load_model
    from napari_sam2.model.click_decoder import make_click_decoder

    decoder = make_click_decoder(load_model(tiny_checkpoint, device="cpu"))
    torch.manual_seed(5)
    with torch.no_grad():
        for p in decoder.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return decoder.state_dict()
