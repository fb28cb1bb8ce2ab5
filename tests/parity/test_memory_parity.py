"""Parity of our memory encoder and memory attention with the official modules (same random weights).

The official modules are built with the arguments of the SAM 2.1 yamls (d_model 256, mem_dim 64, 4 layers,
1 head, ffn 2048, RoPE theta 1e4, MaskDownSampler 3/2/1, 2 CXBlocks 7×7). Most memory-attention cases use
a 32×32 grid (the official classes accept feat_sizes [32, 32]) to stay fast on a CPU; one case runs at the
full 64×64 grid, and one at a non-default size (d_model 64, mem_dim 32, 16×16, 2 heads).
"""

import pytest
import torch
from official import assert_close, same_random_weights

from napari_sam2.model.memory_attention import MemoryAttention
from napari_sam2.model.memory_encoder import MemoryEncoder

YAML = {"d_model": 256, "mem_dim": 64, "num_layers": 4, "num_heads": 1, "ffn": 2048}
SMALL = {"d_model": 64, "mem_dim": 32, "num_layers": 2, "num_heads": 2, "ffn": 128}


def _report(name, ours, ref):
    """Print max abs diff and max rel diff (over entries with |ref| > 1e-2), then apply the parity bar."""
    err = (ours - ref).abs()
    big = ref.abs() > 1e-2
    rel = (err[big] / ref.abs()[big]).max().item() if big.any() else 0.0
    print(f"{name}: max abs {err.max().item():.3g}, max rel (|ref|>1e-2) {rel:.3g}")
    assert_close(ours, ref, name)


# ---------------------------------------------------------------- memory attention


def official_memory_attention(d_model, mem_dim, num_layers, num_heads, ffn, feat):
    from sam2.modeling.memory_attention import MemoryAttention as OfficialMA
    from sam2.modeling.memory_attention import MemoryAttentionLayer
    from sam2.modeling.sam.transformer import RoPEAttention

    common = {
        "rope_theta": 10000.0,
        "feat_sizes": [feat, feat],
        "embedding_dim": d_model,
        "num_heads": num_heads,
        "downsample_rate": 1,
        "dropout": 0.1,
    }
    layer = MemoryAttentionLayer(
        activation="relu",
        cross_attention=RoPEAttention(rope_k_repeat=True, kv_in_dim=mem_dim, **common),
        d_model=d_model,
        dim_feedforward=ffn,
        dropout=0.1,
        pos_enc_at_attn=False,
        pos_enc_at_cross_attn_keys=True,
        pos_enc_at_cross_attn_queries=False,
        self_attention=RoPEAttention(**common),
    )
    return OfficialMA(d_model=d_model, pos_enc_at_input=True, layer=layer, num_layers=num_layers)


def memory_attention_pair(cfg, feat, seed=0):
    ours = MemoryAttention(
        cfg["d_model"], cfg["num_layers"], cfg["ffn"], cfg["num_heads"], cfg["mem_dim"], feat, dropout=0.1
    )
    ref = official_memory_attention(**cfg, feat=feat)
    same_random_weights(ours, ref, seed=seed)
    return ours, ref


def memory_inputs(cfg, side, frames, pointer_tokens, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    n, m = side * side, frames * side * side + pointer_tokens
    curr = torch.randn(n, batch, cfg["d_model"], generator=g)
    curr_pos = torch.randn(n, batch, cfg["d_model"], generator=g)
    memory = torch.randn(m, batch, cfg["mem_dim"], generator=g)
    memory_pos = torch.randn(m, batch, cfg["mem_dim"], generator=g)
    return curr, memory, curr_pos, memory_pos


def check_memory_attention(ours, ref, name, cfg, side, frames, pointer_tokens, batch=1):
    args = memory_inputs(cfg, side, frames, pointer_tokens, batch)
    with torch.no_grad():
        out = ours(*args, num_obj_ptr_tokens=pointer_tokens)
        expected = ref(*args, num_obj_ptr_tokens=pointer_tokens)
    _report(name, out, expected)


@pytest.fixture(scope="module")
def yaml_grid32():
    return memory_attention_pair(YAML, feat=32)


@pytest.mark.parametrize(
    "frames,pointer_tokens,batch",
    [(1, 4, 1), (2, 8, 1), (2, 0, 2)],
    ids=["1frame_1ptr", "2frames_2ptrs", "2frames_0ptrs_batch2"],
)
def test_memory_attention_yaml_grid32(yaml_grid32, frames, pointer_tokens, batch):
    ours, ref = yaml_grid32
    check_memory_attention(ours, ref, f"memattn32 {frames}f {pointer_tokens}p", YAML, 32, frames, pointer_tokens, batch)


def test_memory_attention_yaml_full_grid():
    """The exact tiny/small/base+/large configuration: 64×64 grid, 1 memory frame + 1 pointer (4 tokens)."""
    ours, ref = memory_attention_pair(YAML, feat=64, seed=1)
    check_memory_attention(ours, ref, "memattn64 1f 4p", YAML, 64, frames=1, pointer_tokens=4)


def test_memory_attention_small_config():
    ours, ref = memory_attention_pair(SMALL, feat=16, seed=2)
    check_memory_attention(ours, ref, "memattn small 16 2f 8p", SMALL, 16, frames=2, pointer_tokens=8, batch=2)
    # A query grid other than feat_size: the official rebuilds its RoPE table for the new square grid.
    check_memory_attention(ours, ref, "memattn small 8x8 3f 4p", SMALL, 8, frames=3, pointer_tokens=4)


# ---------------------------------------------------------------- memory encoder


def official_memory_encoder(d_model, mem_dim):
    from sam2.modeling.memory_encoder import CXBlock, Fuser, MaskDownSampler
    from sam2.modeling.memory_encoder import MemoryEncoder as OfficialME
    from sam2.modeling.position_encoding import PositionEmbeddingSine

    return OfficialME(
        out_dim=mem_dim,
        mask_downsampler=MaskDownSampler(embed_dim=d_model, kernel_size=3, stride=2, padding=1),
        fuser=Fuser(
            CXBlock(dim=d_model, kernel_size=7, padding=3, layer_scale_init_value=1e-6, use_dwconv=True), num_layers=2
        ),
        position_encoding=PositionEmbeddingSine(num_pos_feats=mem_dim, normalize=True, scale=None, temperature=10000),
        in_dim=d_model,
    )


@pytest.mark.parametrize(
    "d_model,mem_dim,side,batch",
    [(256, 64, 32, 1), (64, 32, 16, 2), (64, 64, 8, 1)],
    ids=["yaml", "small", "identity_out_proj"],
)
def test_memory_encoder(d_model, mem_dim, side, batch):
    ours = MemoryEncoder(d_model, mem_dim)
    ref = official_memory_encoder(d_model, mem_dim)
    same_random_weights(ours, ref, seed=3)
    g = torch.Generator().manual_seed(4)
    pix_feat = torch.randn(batch, d_model, side, side, generator=g)
    logits = 8 * torch.randn(batch, 1, 16 * side, 16 * side, generator=g)
    for skip_sigmoid, masks in [(False, logits), (True, torch.sigmoid(logits) * 20 - 10)]:
        with torch.no_grad():
            out = ours(pix_feat, masks, skip_mask_sigmoid=skip_sigmoid)
            expected = ref(pix_feat, masks, skip_mask_sigmoid=skip_sigmoid)
        name = f"memenc d{d_model} m{mem_dim} skip={skip_sigmoid}"
        _report(name + " features", out["vision_features"], expected["vision_features"])
        assert len(out["vision_pos_enc"]) == len(expected["vision_pos_enc"]) == 1
        _report(name + " pos", out["vision_pos_enc"][0], expected["vision_pos_enc"][0])
