"""Image encoder (Hiera trunk + FPN neck) without the official code: shapes, sizes, layout, keys, locality.

The small config (`SMALL`) has the official architecture at a fraction of the width and depth, so every test
runs in well under a second. The official configs are only *built* here, on the meta device (no memory, no
weights), to check their layout, state-dict keys and parameter counts.
"""

import pytest
import torch
import torch.nn.functional as F

from napari_sam2.model.common import PositionEmbeddingSine
from napari_sam2.model.configs import CONFIGS, HieraConfig, SAM2Config, get_config
from napari_sam2.model.hiera import MultiScaleBlock, merge_windows, partition_windows
from napari_sam2.model.image_encoder import FpnNeck, ImageEncoder
from napari_sam2.model.random_weights import randomize_state_dict

SMALL_TRUNK = HieraConfig(
    embed_dim=16,
    num_heads=1,
    stages=(1, 1, 2, 1),
    global_att_blocks=(3,),
    window_pos_embed_bkg_spatial_size=(4, 4),
    window_spec=(8, 4, 4, 2),
)
SMALL = SAM2Config(name="test-small-encoder", version="2.1", trunk=SMALL_TRUNK, image_size=256, d_model=32)


def _random(module, seed=0):
    module.load_state_dict(randomize_state_dict(module.state_dict(), seed=seed, object_score_bias=None))
    return module.eval()


def _randn(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _on_meta(cfg):
    with torch.device("meta"):
        return ImageEncoder(cfg)


@pytest.fixture(scope="module")
def small_encoder():
    return _random(ImageEncoder(SMALL))


# ------------------------------------------------------------------------------------------ shapes / sizes
def test_small_config_shapes_at_256(small_encoder):
    images = _randn(2, 3, 256, 256)
    with torch.no_grad():
        trunk_maps = small_encoder.trunk(images)
        out = small_encoder(images)
    assert [tuple(m.shape) for m in trunk_maps] == [(2, 16, 64, 64), (2, 32, 32, 32), (2, 64, 16, 16), (2, 128, 8, 8)]
    assert [tuple(f.shape) for f in out["backbone_fpn"]] == [(2, 32, 64, 64), (2, 32, 32, 32), (2, 32, 16, 16)]
    assert [tuple(p.shape) for p in out["vision_pos_enc"]] == [(2, 32, 64, 64), (2, 32, 32, 32), (2, 32, 16, 16)]
    assert out["vision_features"] is out["backbone_fpn"][-1]
    assert all(torch.isfinite(f).all() for f in out["backbone_fpn"])


@pytest.mark.parametrize("size", [64, 96, 160, 224, 352])
def test_any_multiple_of_32_works(small_encoder, size):
    """Grids that do not tile with the later windows (e.g. 160 → 10×10 and 5×5 tokens) are padded inside."""
    with torch.no_grad():
        trunk_maps = small_encoder.trunk(_randn(1, 3, size, size))
    assert [tuple(m.shape[-2:]) for m in trunk_maps] == [(size // 4 // 2**i,) * 2 for i in range(4)]
    assert [m.shape[1] for m in trunk_maps] == [16, 32, 64, 128]
    assert all(torch.isfinite(m).all() for m in trunk_maps)


def test_input_size_not_a_multiple_of_32_is_rejected(small_encoder):
    with pytest.raises(ValueError, match="multiple of 32"):
        small_encoder(_randn(1, 3, 200, 200))


def test_batch_items_are_independent(small_encoder):
    images = _randn(2, 3, 128, 128)
    with torch.no_grad():
        both = small_encoder(images)["backbone_fpn"]
        second = small_encoder(images[1:])["backbone_fpn"]
    for level_both, level_second in zip(both, second):
        torch.testing.assert_close(level_both[1:], level_second, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ windows
def test_partition_and_merge_windows_with_padding():
    grid = _randn(2, 10, 13, 3)
    windows, padded = partition_windows(grid, 4)
    assert padded == (12, 16) and windows.shape == (2 * 3 * 4, 4, 4, 3)
    torch.testing.assert_close(windows[1], grid[0, 0:4, 4:8], rtol=0, atol=0)  # row-major window order
    torch.testing.assert_close(windows[4], grid[0, 4:8, 0:4], rtol=0, atol=0)
    assert (windows[3, :, 1:] == 0).all()  # right padding of the last window of the first row
    torch.testing.assert_close(merge_windows(windows, 4, padded, (10, 13)), grid, rtol=0, atol=0)


def _influence(block, grid, row, col):
    """Which output tokens change when input token (row, col) changes: bool [H', W']."""
    changed = grid.clone()
    changed[:, row, col] += _randn(grid.shape[-1], seed=9)  # not a constant: LayerNorm would remove it
    with torch.no_grad():
        return (block(changed) - block(grid)).abs().amax(dim=(0, 3)) > 0


def test_windowed_block_mixes_only_inside_its_window():
    block = _random(MultiScaleBlock(16, 16, num_heads=2, window=4))
    influence = _influence(block, _randn(1, 10, 10, 16), row=5, col=1)  # window (1, 0) of a padded 12×12 grid
    expected = torch.zeros(10, 10, dtype=torch.bool)
    expected[4:8, 0:4] = True
    assert torch.equal(influence, expected)


def test_global_block_mixes_everything():
    block = _random(MultiScaleBlock(16, 16, num_heads=2, window=0))
    assert _influence(block, _randn(1, 10, 10, 16), row=5, col=1).all()


def test_q_pool_block_halves_the_grid_and_keeps_windows():
    """Window 4 on the input (lag-by-one rule) → 2×2 output windows, padded grid 6×6 → 3×3 output."""
    block = _random(MultiScaleBlock(16, 32, num_heads=2, window=4, q_stride=(2, 2)))
    grid = _randn(1, 6, 6, 16)
    with torch.no_grad():
        assert block(grid).shape == (1, 3, 3, 32)
    influence = _influence(block, grid, row=1, col=1)  # input window (0, 0) = output window (0, 0)
    expected = torch.zeros(3, 3, dtype=torch.bool)
    expected[0:2, 0:2] = True
    assert torch.equal(influence, expected)


# ------------------------------------------------------------------------------------------ neck
def test_neck_fuses_only_the_top_down_levels(small_encoder):
    images = _randn(1, 3, 128, 128)
    with torch.no_grad():
        trunk_maps = small_encoder.trunk(images)
        features, positions = small_encoder.neck(trunk_maps)
        lateral = [small_encoder.neck.convs[3 - i](trunk_maps[i]) for i in range(4)]
    torch.testing.assert_close(features[3], lateral[3], rtol=0, atol=0)
    expected_2 = lateral[2] + lateral[3].repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    torch.testing.assert_close(features[2], expected_2, rtol=1e-6, atol=1e-6)
    for level in (0, 1):  # not in fpn_top_down_levels: lateral only
        torch.testing.assert_close(features[level], lateral[level], rtol=0, atol=0)
    sine = PositionEmbeddingSine(32)
    for feature, position in zip(features, positions):
        torch.testing.assert_close(position, sine(feature), rtol=0, atol=0)


def test_neck_with_top_down_on_every_level():
    neck = _random(FpnNeck(8, (32, 16), fpn_top_down_levels=(0, 1)))
    maps = [_randn(1, 16, 8, 8, seed=2), _randn(1, 32, 4, 4, seed=3)]
    with torch.no_grad():
        features, _ = neck(maps)
        coarse = neck.convs[0](maps[1])
        expected = neck.convs[1](maps[0]) + F.interpolate(coarse, scale_factor=2.0, mode="nearest")
    torch.testing.assert_close(features[0], expected, rtol=1e-6, atol=1e-6)


def test_trunk_and_neck_width_mismatch_is_rejected():
    """Hiera rounds the width stage by stage (10 → 13 → 16 → 20), the config's neck list does not (…→ 21)."""
    trunk = HieraConfig(**{**SMALL_TRUNK.__dict__, "embed_dim": 10, "dim_mul": 1.3, "head_mul": 1.0})
    with pytest.raises(ValueError, match="do not match"):
        ImageEncoder(SMALL.replace(trunk=trunk))


# ------------------------------------------------------------------------------------------ official configs
def _layout(name):
    trunk = _on_meta(get_config(name)).trunk
    return [(b.dim, b.dim_out, b.attn.num_heads, b.window, b.q_stride is not None) for b in trunk.blocks]


def test_tiny_block_layout_follows_the_lag_by_one_rule():
    """The official tiny trunk: 0:96 w8 | 1:96→192 q w8 | 2 w4 | 3:192→384 q w4 | 4 w14 | 5 global | …"""
    windows = [8, 8, 4, 4, 14, 0, 14, 0, 14, 0, 14, 7]
    dims = [96, 192, 192, 384, 384, 384, 384, 384, 384, 384, 768, 768]
    heads = [1, 2, 2, 4, 4, 4, 4, 4, 4, 4, 8, 8]
    pooled = [i in (1, 3, 10) for i in range(12)]
    assert _layout("sam2.1_hiera_t") == [
        (d_in, d_out, h, w, q) for d_in, d_out, h, w, q in zip([96] + dims[:-1], dims, heads, windows, pooled)
    ]


def test_large_block_layout():
    layout = _layout("sam2.1_hiera_l")
    assert len(layout) == 48
    assert [i for i, b in enumerate(layout) if b[4]] == [2, 8, 44]
    assert [i for i, b in enumerate(layout) if b[3] == 0] == [23, 33, 43]
    assert [b[3] for b in layout[:10]] == [8, 8, 8, 4, 4, 4, 4, 4, 4, 16]
    assert [b[3] for b in layout[44:]] == [16, 8, 8, 8]  # the q-pool block keeps stage 3's window
    assert layout[-1][:3] == (1152, 1152, 16)


# image-encoder parameter counts, measured on the official sam2 1.1.0 modules
IMAGE_ENCODER_PARAMS = {"t": 27_219_136, "s": 34_316_992, "b+": 69_106_816, "l": 212_703_280}
IMAGE_ENCODER_KEYS = {"t": 162, "s": 210, "b+": 306, "l": 594}
# total parameters of the 2.1 models (counted on the official models built from their configs)
TOTAL_PARAMS_21 = {"t": 38_962_498, "s": 46_060_354, "b+": 80_850_178, "l": 224_446_642}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_official_state_dict_keys_shapes_and_counts(name):
    cfg = get_config(name)
    size = name.rsplit("_", 1)[-1]
    encoder = _on_meta(cfg)
    sd = encoder.state_dict()
    assert len(sd) == IMAGE_ENCODER_KEYS[size]
    assert sum(p.numel() for p in encoder.parameters()) == IMAGE_ENCODER_PARAMS[size]
    c = cfg.trunk.embed_dim
    bkg = (14, 14) if size == "b+" else (7, 7)
    assert sd["trunk.pos_embed"].shape == (1, c, *bkg)
    assert sd["trunk.pos_embed_window"].shape == (1, c, 8, 8)
    assert sd["trunk.patch_embed.proj.weight"].shape == (c, 3, 7, 7)
    for k, width in enumerate(cfg.backbone_channel_list):
        assert sd[f"neck.convs.{k}.conv.weight"].shape == (256, width, 1, 1)
    for i, block in enumerate(encoder.trunk.blocks):  # Appendix A.1 per-block rules
        d_in, d_out = block.dim, block.dim_out
        assert sd[f"trunk.blocks.{i}.norm1.weight"].shape == (d_in,)
        assert sd[f"trunk.blocks.{i}.attn.qkv.weight"].shape == (3 * d_out, d_in)
        assert sd[f"trunk.blocks.{i}.attn.proj.weight"].shape == (d_out, d_out)
        assert sd[f"trunk.blocks.{i}.mlp.layers.0.weight"].shape == (4 * d_out, d_out)
        assert sd[f"trunk.blocks.{i}.mlp.layers.1.weight"].shape == (d_out, 4 * d_out)
        assert (f"trunk.blocks.{i}.proj.weight" in sd) == (d_in != d_out)
    assert not list(encoder.buffers())  # the sine encodings are computed, never stored


@pytest.mark.parametrize("size", list(TOTAL_PARAMS_21))
def test_whole_model_matches_the_documented_totals(size):
    """The whole SAM 2.1 model (built on the meta device: no memory) has the documented parameter count, and
    everything but the image encoder is the same for every size."""
    from napari_sam2.model.sam2 import SAM2Model

    cfg = get_config(f"sam2.1_hiera_{size}")
    with torch.device("meta"):
        model = SAM2Model(cfg)
    total = sum(p.numel() for p in model.parameters())
    assert total == TOTAL_PARAMS_21[size]
    encoder = sum(p.numel() for p in model.image_encoder.parameters())
    assert encoder == IMAGE_ENCODER_PARAMS[size]
    assert total - encoder == TOTAL_PARAMS_21["t"] - IMAGE_ENCODER_PARAMS["t"]
