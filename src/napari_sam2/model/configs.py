"""Model configurations: the eight official SAM 2 / 2.1 sizes, plus room for small custom ones.

Every number the network needs lives here, so that a model at another input size or width (e.g. 512 px
for speed, or a tiny config for tests) is a config, never a code change. Official values are those of
facebookresearch/sam2's yaml configs (sam2/configs/sam2 and sam2/configs/sam2.1) plus the class defaults they
rely on; tests/parity checks them against the official models.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class HieraConfig:
    """The Hiera trunk of the image encoder."""

    embed_dim: int = 96
    num_heads: int = 1
    stages: tuple[int, ...] = (1, 2, 7, 2)
    global_att_blocks: tuple[int, ...] = (5, 7, 9)
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (7, 7)
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    q_pool: int = 3  # number of stage transitions that pool the query
    q_stride: tuple[int, int] = (2, 2)
    dim_mul: float = 2.0
    head_mul: float = 2.0
    mlp_ratio: float = 4.0
    patch_kernel: int = 7
    patch_stride: int = 4
    patch_padding: int = 3
    window_pos_embed_size: int = 8  # pos_embed_window is [1, C, 8, 8] in every official checkpoint

    @property
    def stage_dims(self) -> tuple[int, ...]:
        """Channel width of each stage, e.g. (96, 192, 384, 768) for tiny."""
        return tuple(int(self.embed_dim * self.dim_mul**i) for i in range(len(self.stages)))

    @property
    def depth(self) -> int:
        return sum(self.stages)


@dataclass(frozen=True)
class SAM2Config:
    """Everything needed to build a SAM 2 network (`SAM2Model`).

    `image_size` must be a multiple of 16 × the patch stride structure (a multiple of 32 in practice);
    features come out at `image_size // backbone_stride` (64 for 1024) and masks at 4 × that (256).
    """

    name: str
    version: str  # "2.0" or "2.1"
    trunk: HieraConfig = field(default_factory=HieraConfig)
    image_size: int = 1024
    backbone_stride: int = 16
    # FPN neck
    d_model: int = 256  # the width of every module after the trunk
    fpn_top_down_levels: tuple[int, ...] = (2, 3)
    scalp: int = 1  # lowest-resolution FPN levels dropped
    # memory
    mem_dim: int = 64
    num_maskmem: int = 7
    mem_attention_layers: int = 4
    mem_attention_heads: int = 1
    mem_attention_ffn: int = 2048
    rope_theta: float = 10000.0
    mask_downsampler_stride: int = 2
    mask_downsampler_kernel: int = 3
    mask_downsampler_padding: int = 1
    mask_downsampler_in_chans: int = 1
    mask_downsampler_stride_step: int = 4  # channels multiply by stride² per layer: 1→4→16→64→256
    fuser_layers: int = 2
    fuser_kernel: int = 7
    sigmoid_scale_for_mem_enc: float = 20.0
    sigmoid_bias_for_mem_enc: float = -10.0
    max_obj_ptrs_in_encoder: int = 16
    # SAM heads
    prompt_mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    decoder_attention_downsample: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    # the 2.0 / 2.1 differences: the 2.1 configs set these four to true, 2.0 leaves them false
    no_obj_embed_spatial: bool = True
    add_tpos_enc_to_obj_ptrs: bool = True
    proj_tpos_enc_in_obj_ptrs: bool = True
    use_signed_tpos_enc_to_obj_ptrs: bool = True

    @property
    def feat_size(self) -> int:
        """Side of the lowest-resolution feature map used by the heads (64 for 1024 input)."""
        return self.image_size // self.backbone_stride

    @property
    def low_res_mask_size(self) -> int:
        """Side of the decoder's mask logits (256 for 1024 input)."""
        return 4 * self.feat_size

    @property
    def backbone_channel_list(self) -> tuple[int, ...]:
        """Trunk widths, lowest resolution first (the neck's convention)."""
        return tuple(reversed(self.trunk.stage_dims))

    def replace(self, **changes) -> SAM2Config:
        """A copy with some fields changed (e.g. `cfg.replace(image_size=512)`)."""
        return dataclasses.replace(self, **changes)


_SIZES = {
    "t": HieraConfig(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9)),
    "s": HieraConfig(embed_dim=96, num_heads=1, stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13)),
    "b+": HieraConfig(
        embed_dim=112,
        num_heads=2,
        stages=(2, 3, 16, 3),
        global_att_blocks=(12, 16, 20),
        window_pos_embed_bkg_spatial_size=(14, 14),
    ),
    "l": HieraConfig(
        embed_dim=144,
        num_heads=2,
        stages=(2, 6, 36, 4),
        global_att_blocks=(23, 33, 43),
        window_spec=(8, 4, 16, 8),
    ),
}

_SIZE_NAMES = {"t": "tiny", "s": "small", "b+": "base_plus", "l": "large"}


def _official(version: str, size: str) -> SAM2Config:
    prefix = "sam2.1_hiera_" if version == "2.1" else "sam2_hiera_"
    v21 = version == "2.1"
    return SAM2Config(
        name=prefix + size,
        version=version,
        trunk=_SIZES[size],
        no_obj_embed_spatial=v21,
        add_tpos_enc_to_obj_ptrs=v21,
        proj_tpos_enc_in_obj_ptrs=v21,
        use_signed_tpos_enc_to_obj_ptrs=v21,
    )


#: The eight official configurations by name (`sam2_hiera_t` … `sam2.1_hiera_l`).
CONFIGS: dict[str, SAM2Config] = {
    cfg.name: cfg for version in ("2.0", "2.1") for size in _SIZES for cfg in [_official(version, size)]
}


#: Our small SAM 2 for fluorescence microscopy (model/train_nano.py; model card: model/README.md). Same
#: architecture as the official models, shrunk consistently: input 256 (features 16 × 16, masks 64 × 64); a
#: five-block Hiera whose windows tile the 64/32/16/8 token grids; every later module 64 wide (the decoder: 2 heads
#: of 32); memories 32 wide (dividing 64, so a pointer is two memory tokens); 4 memories.
NANO_FLUO = SAM2Config(
    name="nano-fluo",
    version="2.1",
    trunk=HieraConfig(
        embed_dim=16,
        num_heads=1,
        stages=(1, 1, 2, 1),
        global_att_blocks=(3,),
        window_pos_embed_bkg_spatial_size=(4, 4),
        window_spec=(8, 4, 8, 8),
    ),
    image_size=256,
    d_model=64,
    mem_dim=32,
    num_maskmem=4,
    mem_attention_layers=1,
    mem_attention_heads=1,
    mem_attention_ffn=256,
    max_obj_ptrs_in_encoder=8,
    decoder_mlp_dim=256,
    decoder_heads=2,  # 8 heads of width 4 did not learn which nucleus was clicked (IoU 0.02 after 250 steps);
    decoder_attention_downsample=1,  # 2 heads of width 32 began to (0.11 after 200 steps, same data and seed)
    iou_head_hidden_dim=64,
)

#: Small configurations of our own, by name (loaded from checkpoints that carry their config).
CUSTOM_CONFIGS: dict[str, SAM2Config] = {NANO_FLUO.name: NANO_FLUO}


#: sane ranges of the sizes a config may ask for (the official large model is far inside them); a checkpoint's
#: stored config is checked against them before any tensor is built, so a few bytes cannot ask for terabytes
_LIMITS = {
    "image_size": (32, 4096),
    "backbone_stride": (1, 64),
    "d_model": (1, 4096),
    "mem_dim": (1, 4096),
    "num_maskmem": (1, 64),
    "mem_attention_layers": (0, 64),
    "mem_attention_heads": (1, 64),
    "mem_attention_ffn": (1, 65536),
    "decoder_depth": (1, 64),
    "decoder_heads": (1, 64),
    "decoder_mlp_dim": (1, 65536),
    "num_multimask_outputs": (1, 16),
    "iou_head_depth": (1, 64),
    "iou_head_hidden_dim": (1, 65536),
    "max_obj_ptrs_in_encoder": (1, 1024),
    "prompt_mask_in_chans": (1, 4096),
    "fuser_layers": (0, 64),
    "fuser_kernel": (1, 31),
    "trunk.embed_dim": (1, 4096),
    "trunk.num_heads": (1, 64),
    "trunk.patch_kernel": (1, 64),
    "trunk.patch_stride": (1, 64),
    "trunk.window_pos_embed_size": (1, 256),
}


def check_config(cfg: SAM2Config) -> None:
    """Raise ValueError (naming the field) if a config has a value of the wrong type or outside a sane range."""
    for prefix, obj in (("", cfg), ("trunk.", cfg.trunk)):
        for f in dataclasses.fields(obj):
            if prefix == "" and f.name == "trunk":
                if not isinstance(cfg.trunk, HieraConfig):
                    raise ValueError("'trunk' must be a Hiera trunk configuration")
                continue
            value, default = getattr(obj, f.name), f.default
            if f.name in ("name", "version"):
                if not isinstance(value, str):
                    raise ValueError(f"{prefix}{f.name} must be a string; got {value!r}")
                continue
            kinds = (
                (bool,) if isinstance(default, bool)
                else (int,) if isinstance(default, int)
                else (int, float) if isinstance(default, float)
                else (tuple,)
            )  # fmt: skip
            if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
                raise ValueError(f"{prefix}{f.name} must be {kinds[0].__name__}; got {value!r}")
            if isinstance(value, tuple) and (
                len(value) > 64 or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 4096
                                           for v in value)
            ):  # fmt: skip
                raise ValueError(f"{prefix}{f.name} must be up to 64 integers in 0…4096; got {value!r}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{prefix}{f.name} must be a finite number; got {value!r}")
            limits = _LIMITS.get(prefix + f.name)
            if limits and not limits[0] <= value <= limits[1]:
                raise ValueError(f"{prefix}{f.name} = {value} is outside the sane range {limits[0]}…{limits[1]}")
    if cfg.image_size % 32:
        raise ValueError(f"image_size must be a multiple of 32; got {cfg.image_size}")
    if not 1 <= len(cfg.trunk.stages) <= 8 or not all(1 <= s <= 64 for s in cfg.trunk.stages):
        raise ValueError(f"trunk.stages must be 1…8 stages of 1…64 blocks; got {cfg.trunk.stages}")
    if max(cfg.trunk.stage_dims) > 16384:
        raise ValueError(f"trunk widths {cfg.trunk.stage_dims} exceed 16384 channels")


def get_config(name: str) -> SAM2Config:
    """Look up a configuration by name; accepts `sam2.1_hiera_t`, `sam2.1_hiera_tiny` and `sam2.1-tiny`."""
    key = name.strip().lower().replace("-", "_")
    for custom in CUSTOM_CONFIGS.values():
        if key == custom.name.replace("-", "_"):
            return custom
    for short, long in _SIZE_NAMES.items():
        for prefix in ("sam2.1_hiera_", "sam2_hiera_", "sam2.1_", "sam2_"):
            if key in (prefix + long, prefix + short):
                version_prefix = "sam2.1_hiera_" if prefix.startswith("sam2.1") else "sam2_hiera_"
                return CONFIGS[version_prefix + short]
    raise KeyError(f"unknown SAM 2 configuration {name!r}; known: {', '.join(CONFIGS)}")


def config_from_state_dict(sd) -> SAM2Config:
    """Detect the official configuration of a state dict from its keys and shapes.

    Version: 2.1 checkpoints have `no_obj_embed_spatial` and `obj_ptr_tpos_proj.*`, 2.0 ones do not.
    Size: channel count of `image_encoder.trunk.pos_embed` and the number of trunk blocks.
    Raises ValueError when the state dict is not one of the eight official models.
    """
    if "image_encoder.trunk.pos_embed" not in sd:
        raise ValueError("the state dict has no 'image_encoder.trunk.pos_embed': it is not a SAM 2 model")
    version = "2.1" if "no_obj_embed_spatial" in sd else "2.0"
    embed_dim = int(sd["image_encoder.trunk.pos_embed"].shape[1])
    blocks = {int(k.split(".")[3]) for k in sd if k.startswith("image_encoder.trunk.blocks.")}
    depth = max(blocks) + 1 if blocks else 0
    for size, trunk in _SIZES.items():
        if trunk.embed_dim == embed_dim and trunk.depth == depth:
            return _official(version, size)
    raise ValueError(
        f"the state dict's image encoder (embed_dim {embed_dim}, {depth} blocks) matches no official SAM 2 size"
    )
