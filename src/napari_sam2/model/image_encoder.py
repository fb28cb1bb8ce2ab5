"""The image encoder: the Hiera trunk + a feature-pyramid neck that brings every level to `d_model` channels.

Parameter names follow the official checkpoints (`image_encoder.trunk.*`, `image_encoder.neck.convs.N.conv.*`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import PositionEmbeddingSine
from .configs import SAM2Config
from .hiera import Hiera


class FpnNeck(nn.Module):
    """1×1 lateral convolutions to `d_model` channels plus a nearest-neighbour top-down path on some levels.

    `backbone_channel_list` lists the trunk widths coarsest first, so `convs.0` takes the coarsest (widest)
    map. Levels are numbered finest first (0 = stride 4); a level in `fpn_top_down_levels` adds the 2×
    upsampled output of the next coarser level, the others are lateral only (SAM 2: (2, 3), i.e. only the
    two coarsest levels are fused). Every output level gets a sine position encoding.
    """

    def __init__(
        self,
        d_model: int,
        backbone_channel_list: tuple[int, ...],
        fpn_top_down_levels: tuple[int, ...] = (2, 3),
        position_encoding: nn.Module | None = None,
    ):
        super().__init__()
        self.d_model = d_model
        self.backbone_channel_list = tuple(backbone_channel_list)
        self.fpn_top_down_levels = tuple(fpn_top_down_levels)
        self.position_encoding = PositionEmbeddingSine(d_model) if position_encoding is None else position_encoding
        self.convs = nn.ModuleList()
        for channels in self.backbone_channel_list:
            lateral = nn.Sequential()  # a Sequential only so that the key reads `convs.N.conv.weight`
            lateral.add_module("conv", nn.Conv2d(channels, d_model, kernel_size=1))
            self.convs.append(lateral)

    def forward(self, trunk_maps: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Trunk maps [B, C_i, H_i, W_i] (finest first) → (features, position encodings).

        Both lists are finest first, each entry [B, d_model, H_i, W_i].
        """
        if len(trunk_maps) != len(self.convs):
            raise ValueError(f"FpnNeck expects {len(self.convs)} trunk levels, got {len(trunk_maps)}")
        coarsest = len(trunk_maps) - 1
        features: list[torch.Tensor] = [None] * len(trunk_maps)  # type: ignore[list-item]
        coarser = None
        for level in range(coarsest, -1, -1):  # coarse to fine
            lateral = self.convs[coarsest - level](trunk_maps[level])
            if coarser is not None and level in self.fpn_top_down_levels:
                # upsampled in fp32 as the official code does (under bf16 autocast the sum becomes fp32 too)
                coarser = lateral + F.interpolate(coarser.float(), scale_factor=2.0, mode="nearest")
            else:
                coarser = lateral
            features[level] = coarser
        positions = [self.position_encoding(f).to(f.dtype) for f in features]
        return features, positions


class ImageEncoder(nn.Module):
    """Trunk + neck. forward(images [B, 3, S, S]) → dict (see `forward`)."""

    def __init__(self, cfg: SAM2Config):
        super().__init__()
        self.trunk = Hiera(cfg.trunk)
        self.neck = FpnNeck(cfg.d_model, cfg.backbone_channel_list, cfg.fpn_top_down_levels)
        self.scalp = cfg.scalp
        if self.trunk.channel_list != self.neck.backbone_channel_list:
            raise ValueError(
                f"trunk widths {self.trunk.channel_list} do not match the neck's {self.neck.backbone_channel_list}"
            )

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """images [B, 3, S, S] (ImageNet-normalised) →

        * "backbone_fpn": kept FPN levels, finest first, [B, d_model, S/4/2^i, S/4/2^i] (SAM 2: strides
          4, 8, 16; `scalp` = 1 drops the stride-32 level);
        * "vision_pos_enc": their sine position encodings, same shapes;
        * "vision_features": the coarsest kept level (= backbone_fpn[-1]), [B, d_model, S/16, S/16] for SAM 2.
        """
        features, positions = self.neck(self.trunk(images))
        if self.scalp > 0:
            features, positions = features[: -self.scalp], positions[: -self.scalp]
        return {"vision_features": features[-1], "vision_pos_enc": positions, "backbone_fpn": features}
