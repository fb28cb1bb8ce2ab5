"""Parity of the image encoder (Hiera trunk + FPN neck) with the official sam2 code.

The official encoders are instantiated from the official yaml files (`configs/sam2.1/sam2.1_hiera_t.yaml` …,
node `model.image_encoder`, through hydra exactly as `build_sam2` does), ours from `get_config(name)`.

* Keys and shapes: all 8 configs, plus the per-block layout (dims, heads, window, q-pool).
* Numbers: both get the same random weights and the same random images; every trunk level (also the stride-32
  one that `scalp` drops), every FPN level and every position encoding must agree (fp32, CPU). To keep CI
  cheap (the 1024 px forward of tiny alone takes ~10 s per side on 2 busy cores), the official sizes run at
  smaller inputs, which the official Hiera accepts as well: tiny at 512 (proves nothing assumes 1024) and
  160 (token grids 40/20/10/5 do not tile with the stage-3/4 windows 14/7: exercises the padding), small,
  base_plus and large at 256. The 2.0 configs are checked to have the very same image-encoder yaml node as
  their 2.1 twins, so their numbers are covered by the 2.1 runs.
* A small custom config (official classes built with the same arguments) at several sizes, batch 2, another
  top-down level set, and under bf16 autocast.

Measured (torch 2.13 CPU): every comparison is bitwise equal (max abs diff 0) in fp32, also at 1024 px for
tiny and small (run by hand).
"""

import pytest
import torch
from hydra import compose
from hydra.utils import instantiate
from official import assert_close, same_random_weights
from omegaconf import OmegaConf
from sam2.modeling.backbones.hieradet import Hiera as OfficialHiera
from sam2.modeling.backbones.image_encoder import FpnNeck as OfficialFpnNeck
from sam2.modeling.backbones.image_encoder import ImageEncoder as OfficialImageEncoder
from sam2.modeling.position_encoding import PositionEmbeddingSine as OfficialPositionEmbeddingSine
from torch import nn

from napari_sam2.model.configs import CONFIGS, HieraConfig, SAM2Config, get_config
from napari_sam2.model.image_encoder import ImageEncoder

NUMERIC_SIZES = {
    "sam2.1_hiera_t": (512, 160),
    "sam2.1_hiera_s": (256,),
    "sam2.1_hiera_b+": (256,),
    "sam2.1_hiera_l": (256,),
}


def _yaml(name: str) -> str:
    return f"configs/{'sam2.1' if name.startswith('sam2.1') else 'sam2'}/{name}.yaml"


def _official_node(name: str):
    return compose(config_name=_yaml(name)).model.image_encoder


@pytest.fixture
def skip_init(monkeypatch):
    """Construct Linear / Conv / LayerNorm without filling their weights: every value used here is
    overwritten (same_random_weights) or never read (keys, shapes), and the init of 200 M parameters
    would cost seconds."""
    for cls in (nn.Linear, nn.modules.conv._ConvNd, nn.LayerNorm):
        monkeypatch.setattr(cls, "reset_parameters", lambda self: None)


def _run(encoder, images):
    """(trunk maps, encoder output dict) of one forward pass."""
    captured = {}
    handle = encoder.trunk.register_forward_hook(lambda _m, _i, out: captured.setdefault("trunk", out))
    try:
        with torch.no_grad():
            out = encoder(images)
    finally:
        handle.remove()
    return captured["trunk"], out


def _compare(ours, theirs, images, tag, rtol=1e-4, atol=1e-4):
    our_trunk, our_out = _run(ours, images)
    their_trunk, their_out = _run(theirs, images)
    assert len(our_trunk) == len(their_trunk) == 4
    for i, (a, b) in enumerate(zip(our_trunk, their_trunk)):
        assert_close(a, b, f"{tag} trunk[{i}]", rtol, atol)
    for key in ("backbone_fpn", "vision_pos_enc"):
        assert len(our_out[key]) == len(their_out[key]) == 3
        for i, (a, b) in enumerate(zip(our_out[key], their_out[key])):
            assert a.dtype == b.dtype, f"{tag} {key}[{i}] dtype {a.dtype} != {b.dtype}"
            assert_close(a, b, f"{tag} {key}[{i}]", rtol, atol)
    assert_close(our_out["vision_features"], their_out["vision_features"], f"{tag} vision_features", rtol, atol)
    return our_out


# ------------------------------------------------------------------------------------------ official configs
@pytest.mark.parametrize("name", list(CONFIGS))
def test_keys_shapes_and_layout_match_official(name, skip_init):
    theirs = instantiate(_official_node(name))
    ours = ImageEncoder(get_config(name))
    our_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    their_shapes = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert our_shapes.keys() == their_shapes.keys()
    assert our_shapes == their_shapes
    assert list(our_shapes) == list(their_shapes)  # same order too
    assert ours.scalp == theirs.scalp
    assert ours.trunk.channel_list == tuple(theirs.trunk.channel_list)
    assert ours.trunk.stage_ends == theirs.trunk.stage_ends
    assert ours.neck.fpn_top_down_levels == tuple(theirs.neck.fpn_top_down_levels)
    for i, (a, b) in enumerate(zip(ours.trunk.blocks, theirs.trunk.blocks, strict=True)):
        assert (a.dim, a.dim_out, a.attn.num_heads, a.window, a.q_stride) == (
            b.dim,
            b.dim_out,
            b.attn.num_heads,
            b.window_size,
            b.q_stride,
        ), f"block {i}"


@pytest.mark.parametrize("size", ["t", "s", "b+", "l"])
def test_sam2_0_and_2_1_image_encoders_are_identical(size):
    """The 2.0 configs need no numeric run of their own: their image_encoder node equals the 2.1 one."""
    node_20 = OmegaConf.to_container(_official_node(f"sam2_hiera_{size}"), resolve=True)
    node_21 = OmegaConf.to_container(_official_node(f"sam2.1_hiera_{size}"), resolve=True)
    assert node_20 == node_21
    assert get_config(f"sam2_hiera_{size}").trunk == get_config(f"sam2.1_hiera_{size}").trunk


@pytest.mark.parametrize("name", list(NUMERIC_SIZES))
def test_official_config_outputs_match(name, skip_init):
    theirs = instantiate(_official_node(name))
    ours = ImageEncoder(get_config(name))
    same_random_weights(ours, theirs, seed=0)
    for size in NUMERIC_SIZES[name]:
        images = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
        _compare(ours, theirs, images, f"{name}@{size}")


# ------------------------------------------------------------------------------------------ custom config
def _custom_pair(
    embed_dim=16,
    num_heads=1,
    stages=(1, 1, 2, 1),
    global_att_blocks=(3,),
    bkg=(4, 4),
    window_spec=(8, 4, 4, 2),
    d_model=32,
    top_down=(2, 3),
):
    trunk_args = {
        "embed_dim": embed_dim,
        "num_heads": num_heads,
        "stages": stages,
        "global_att_blocks": global_att_blocks,
        "window_pos_embed_bkg_spatial_size": bkg,
        "window_spec": window_spec,
    }
    cfg = SAM2Config(
        name="custom", version="2.1", trunk=HieraConfig(**trunk_args), d_model=d_model, fpn_top_down_levels=top_down
    )
    official_trunk = OfficialHiera(**trunk_args)
    official_neck = OfficialFpnNeck(
        position_encoding=OfficialPositionEmbeddingSine(num_pos_feats=d_model, normalize=True, temperature=10000),
        d_model=d_model,
        backbone_channel_list=list(cfg.backbone_channel_list),
        fpn_top_down_levels=list(top_down),
        fpn_interp_model="nearest",
    )
    theirs = OfficialImageEncoder(trunk=official_trunk, neck=official_neck, scalp=1)
    ours = ImageEncoder(cfg)
    same_random_weights(ours, theirs, seed=5)
    return ours, theirs


def test_custom_config_outputs_match_at_several_sizes():
    ours, theirs = _custom_pair()
    for size in (64, 96, 160, 256):
        images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
        _compare(ours, theirs, images, f"custom@{size}")


def test_custom_config_two_heads_deeper_stages_all_top_down_levels():
    ours, theirs = _custom_pair(
        embed_dim=24,
        num_heads=2,
        stages=(2, 2, 3, 2),
        global_att_blocks=(5, 8),
        bkg=(6, 6),
        window_spec=(4, 4, 6, 3),
        d_model=48,
        top_down=(0, 1, 2, 3),
    )
    images = torch.randn(1, 3, 192, 192, generator=torch.Generator().manual_seed(0))
    _compare(ours, theirs, images, "custom-2heads@192")


def test_custom_config_under_bf16_autocast():
    """Same dtypes per level (the neck's top-down sum is fp32) and the same values up to bf16 rounding."""
    ours, theirs = _custom_pair()
    images = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _compare(ours, theirs, images, "custom-bf16@128", rtol=1e-2, atol=1e-2)
    # autocast really ran in bf16; the fused (top-down) level came out of the fp32 upsampling
    assert [f.dtype for f in out["backbone_fpn"]] == [torch.bfloat16, torch.bfloat16, torch.float32]
