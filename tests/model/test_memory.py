"""Memory encoder and memory attention (with 2-D axial RoPE) at a small size, without the official code.

Small config: d_model 64, mem_dim 32, 16×16 feature grid (masks 256×256), 2 heads.
"""

import math

import pytest
import torch

from napari_sam2.model.memory_attention import (
    MemoryAttention,
    RoPEAttention,
    axial_rope_table,
    rotate_pairs,
)
from napari_sam2.model.memory_encoder import CXBlock, MaskDownSampler, MemoryEncoder
from napari_sam2.model.random_weights import randomize_state_dict

D, MEM, FEAT, HEADS = 64, 32, 16, 2
L = FEAT * FEAT


def _randomize(module, seed=0):
    module.load_state_dict(randomize_state_dict(module.state_dict(), seed=seed, object_score_bias=None))
    return module.eval()


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- RoPE


def _token(row, col, side):
    return row * side + col


@pytest.mark.parametrize("shift", [(0, 1), (1, 0), (3, -1), (-2, 4)])
def test_rope_scores_depend_only_on_relative_position(shift):
    head_dim, side = 16, 8
    cos, sin = axial_rope_table(head_dim, side)
    q, k = _randn(1, head_dim, seed=1), _randn(1, head_dim, seed=2)

    def score(q_rc, k_rc):
        qi, ki = _token(*q_rc, side), _token(*k_rc, side)
        q_rot = rotate_pairs(q, cos[qi : qi + 1], sin[qi : qi + 1])
        k_rot = rotate_pairs(k, cos[ki : ki + 1], sin[ki : ki + 1])
        return (q_rot * k_rot).sum()

    dy, dx = shift
    base = score((2, 3), (4, 1))
    torch.testing.assert_close(score((2 + dy, 3 + dx), (4 + dy, 1 + dx)), base, rtol=1e-5, atol=1e-5)
    # …but the score does see the relative offset, along both axes.
    assert not torch.allclose(score((2, 3), (4, 2)), base, atol=1e-3)
    assert not torch.allclose(score((2, 3), (5, 1)), base, atol=1e-3)


def test_rope_table_layout():
    head_dim, side = 16, 8
    cos, sin = axial_rope_table(head_dim, side)
    assert cos.shape == sin.shape == (side * side, head_dim // 2)
    # Token 0 is not rotated; rotations are orthogonal (norm preserved).
    torch.testing.assert_close(cos[0], torch.ones(head_dim // 2))
    torch.testing.assert_close(sin[0], torch.zeros(head_dim // 2))
    x = _randn(side * side, head_dim)
    torch.testing.assert_close(rotate_pairs(x, cos, sin).norm(dim=-1), x.norm(dim=-1))
    # First half of the pairs follows the column, second half the row; frequency 1 on pair 0.
    angles = torch.atan2(sin, cos)
    col_tok, row_tok = _token(0, 1, side), _token(1, 0, side)
    torch.testing.assert_close(angles[col_tok, 0], torch.tensor(1.0))
    torch.testing.assert_close(angles[col_tok, head_dim // 4 :], torch.zeros(head_dim // 4))
    torch.testing.assert_close(angles[row_tok, head_dim // 4], torch.tensor(1.0))
    torch.testing.assert_close(angles[row_tok, : head_dim // 4], torch.zeros(head_dim // 4))
    with pytest.raises(ValueError):
        axial_rope_table(18, side)


def _cross_attn(feat=FEAT):
    return _randomize(RoPEAttention(D, HEADS, kv_in_dim=MEM, feat_size=feat, rope_k_repeat=True), seed=5)


def _cross_inputs(frames, pointers, side=FEAT, batch=2):
    q = _randn(batch, side * side, D, seed=11)
    mem = _randn(batch, frames * side * side + pointers, MEM, seed=12)
    return q, mem


@torch.no_grad()
def test_pointer_tokens_are_not_rotated():
    attn = _cross_attn()
    q, mem = _cross_inputs(frames=1, pointers=6)
    out = attn(q, mem, mem, num_k_exclude_rope=6)
    # Pointer keys carry no position: reordering them (keys and values together) changes nothing.
    perm = torch.cat([torch.arange(L), L + torch.tensor([3, 0, 5, 1, 4, 2])])
    torch.testing.assert_close(attn(q, mem[:, perm], mem[:, perm], num_k_exclude_rope=6), out)
    # Spatial keys do: the same reordering among spatial tokens changes the result.
    perm_spatial = torch.cat([torch.tensor([3, 0, 5, 1, 4, 2]), torch.arange(6, L + 6)])
    assert not torch.allclose(attn(q, mem[:, perm_spatial], mem[:, perm_spatial], num_k_exclude_rope=6), out, atol=1e-4)
    # Counting the pointers as spatial would need whole frames → error rather than silently wrong rotations.
    with pytest.raises(ValueError):
        attn(q, mem, mem, num_k_exclude_rope=0)


@torch.no_grad()
def test_memory_frames_share_the_query_grid_rotations():
    """Each memory frame is rotated like the query grid (table repeated per frame): swapping frames is a no-op."""
    attn = _cross_attn()
    q, mem = _cross_inputs(frames=2, pointers=4)
    out = attn(q, mem, mem, num_k_exclude_rope=4)
    swapped = torch.cat([mem[:, L : 2 * L], mem[:, :L], mem[:, 2 * L :]], dim=1)
    torch.testing.assert_close(attn(q, swapped, swapped, num_k_exclude_rope=4), out)
    # One frame attended twice is the same as attended once (softmax over duplicated keys).
    one = mem[:, :L]
    torch.testing.assert_close(attn(q, torch.cat([one, one], 1), torch.cat([one, one], 1)), attn(q, one, one))


@torch.no_grad()
def test_rope_attention_grid_checks_and_other_square_grids():
    attn = _cross_attn(feat=FEAT)
    # A different square grid works and equals a module built for that grid.
    small = _cross_attn(feat=8)
    q, mem = _cross_inputs(frames=2, pointers=4, side=8)
    torch.testing.assert_close(attn(q, mem, mem, 4), small(q, mem, mem, 4))
    with pytest.raises(ValueError, match="square"):
        attn(q[:, :60], mem[:, :124], mem[:, :124], 4)
    self_attn = _randomize(RoPEAttention(D, HEADS, feat_size=FEAT), seed=6)
    x = _randn(1, L, D)
    assert self_attn(x, x, x).shape == (1, L, D)
    with pytest.raises(ValueError, match="whole"):
        self_attn(x, torch.cat([x, x], 1), torch.cat([x, x], 1))
    with pytest.raises(ValueError, match="divisible by 4"):
        RoPEAttention(D, 32, feat_size=FEAT)  # head dim 64 / 32 = 2


# ---------------------------------------------------------------- memory attention


def _memory_attention(num_layers):
    return _randomize(MemoryAttention(D, num_layers, 128, HEADS, MEM, FEAT), seed=num_layers)


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("frames,pointers", [(1, 4), (2, 8), (2, 0), (0, 4)])
@torch.no_grad()
def test_memory_attention_shapes(num_layers, frames, pointers):
    model = _memory_attention(num_layers)
    batch = 2
    curr, curr_pos = _randn(L, batch, D, seed=1), _randn(L, batch, D, seed=2)
    m = frames * L + pointers
    memory, memory_pos = _randn(m, batch, MEM, seed=3), _randn(m, batch, MEM, seed=4)
    out = model(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens=pointers)
    assert out.shape == (L, batch, D)
    assert torch.isfinite(out).all()
    # Final LayerNorm: per token, (out - bias) / weight has zero mean and unit variance.
    normed = (out - model.norm.bias) / model.norm.weight
    torch.testing.assert_close(normed.mean(-1), torch.zeros(L, batch), atol=1e-4, rtol=0)
    # Batch items are independent and the sequence-first layout is respected.
    single = model(curr[:, 1:], memory[:, 1:], curr_pos[:, 1:], memory_pos[:, 1:], num_obj_ptr_tokens=pointers)
    torch.testing.assert_close(single, out[:, 1:], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_memory_attention_uses_memory_and_positions():
    model = _memory_attention(2)
    curr, curr_pos = _randn(L, 1, D, seed=1), _randn(L, 1, D, seed=2)
    memory, memory_pos = _randn(L + 4, 1, MEM, seed=3), _randn(L + 4, 1, MEM, seed=4)
    out = model(curr, memory, curr_pos, memory_pos, 4)
    assert not torch.allclose(model(curr, memory, curr_pos, memory_pos * 0, 4), out, atol=1e-4)
    assert not torch.allclose(model(curr, memory * 0.5, curr_pos, memory_pos, 4), out, atol=1e-4)
    assert not torch.allclose(model(curr, memory, curr_pos * 0, memory_pos, 4), out, atol=1e-4)
    # The pointer tokens matter too.
    changed = memory.clone()
    changed[-4:] += 1.0
    assert not torch.allclose(model(curr, changed, curr_pos, memory_pos, 4), out, atol=1e-4)
    with pytest.raises(ValueError, match="batch"):
        model(curr, memory.expand(-1, 2, -1), curr_pos, memory_pos.expand(-1, 2, -1), 4)


def test_memory_attention_keys():
    sd = MemoryAttention(D, 2, 128, HEADS, MEM, FEAT).state_dict()
    layer = {
        f"{attn}.{proj}.{p}"
        for attn in ("self_attn", "cross_attn_image")
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj")
        for p in ("weight", "bias")
    } | {f"{m}.{p}" for m in ("linear1", "linear2", "norm1", "norm2", "norm3") for p in ("weight", "bias")}
    expected = {f"layers.{i}.{k}" for i in range(2) for k in layer} | {"norm.weight", "norm.bias"}
    assert set(sd) == expected
    assert sd["layers.0.cross_attn_image.k_proj.weight"].shape == (D, MEM)
    assert sd["layers.1.cross_attn_image.v_proj.weight"].shape == (D, MEM)
    assert sd["layers.0.linear1.weight"].shape == (128, D)


# ---------------------------------------------------------------- memory encoder


def test_mask_downsampler_layout():
    keys = MaskDownSampler(D, total_stride=16).state_dict()
    assert {k.rsplit(".", 1)[0] for k in keys} == {f"encoder.{i}" for i in (0, 1, 3, 4, 6, 7, 9, 10, 12)}
    assert keys["encoder.0.weight"].shape == (4, 1, 3, 3)
    assert keys["encoder.9.weight"].shape == (256, 64, 3, 3)
    assert keys["encoder.12.weight"].shape == (D, 256, 1, 1)
    small = MaskDownSampler(D, total_stride=4)
    assert {k.rsplit(".", 1)[0] for k in small.state_dict()} == {f"encoder.{i}" for i in (0, 1, 3, 4, 6)}
    assert small(torch.zeros(1, 1, 32, 32)).shape == (1, D, 8, 8)
    with pytest.raises(ValueError):
        MaskDownSampler(D, stride=2, total_stride=12)


@torch.no_grad()
def test_memory_encoder_shapes_and_sigmoid():
    enc = _randomize(MemoryEncoder(D, MEM), seed=3)
    pix = _randn(2, D, FEAT, FEAT, seed=1)
    logits = 4 * _randn(2, 1, 16 * FEAT, 16 * FEAT, seed=2)
    out = enc(pix, logits, skip_mask_sigmoid=False)
    feats, (pos,) = out["vision_features"], out["vision_pos_enc"]
    assert feats.shape == pos.shape == (2, MEM, FEAT, FEAT)
    torch.testing.assert_close(pos, enc.position_encoding(feats))
    # skip_mask_sigmoid=True takes the values as they are.
    torch.testing.assert_close(enc(pix, torch.sigmoid(logits), skip_mask_sigmoid=True)["vision_features"], feats)
    assert not torch.allclose(enc(pix, logits, skip_mask_sigmoid=True)["vision_features"], feats, atol=1e-4)
    # The mask and the features both reach the output.
    assert not torch.allclose(enc(pix, -logits)["vision_features"], feats, atol=1e-4)
    assert not torch.allclose(enc(pix * 0.5, logits)["vision_features"], feats, atol=1e-4)
    with pytest.raises(ValueError, match="does not match"):
        enc(pix, logits[..., :128, :128])


def test_memory_encoder_keys_and_identity_out_proj():
    keys = set(MemoryEncoder(D, MEM).state_dict())
    prefixes = {k.split(".")[0] for k in keys}
    assert prefixes == {"mask_downsampler", "pix_feat_proj", "fuser", "out_proj"}
    block_keys = ("gamma", "dwconv.weight", "norm.weight", "pwconv1.weight", "pwconv2.bias")
    assert {f"fuser.layers.{i}.{m}" for i in (0, 1) for m in block_keys} <= keys
    same = MemoryEncoder(D, D)
    assert isinstance(same.out_proj, torch.nn.Identity)
    assert not any(k.startswith("out_proj") for k in same.state_dict())
    with torch.no_grad():
        out = same(_randn(1, D, 4, 4), _randn(1, 1, 64, 64))
    assert out["vision_features"].shape == out["vision_pos_enc"][0].shape == (1, D, 4, 4)


def test_cx_block_residual_and_layer_scale():
    block = CXBlock(8)
    x = _randn(1, 8, 5, 5)
    with torch.no_grad():
        block.gamma.zero_()
        torch.testing.assert_close(block(x), x)  # zero layer scale → identity
        block.gamma.fill_(1.0)
        assert not torch.allclose(block(x), x)
    assert "gamma" not in CXBlock(8, layer_scale_init_value=0).state_dict()
    assert math.prod(CXBlock(8).dwconv.weight.shape) == 8 * 7 * 7  # depthwise
