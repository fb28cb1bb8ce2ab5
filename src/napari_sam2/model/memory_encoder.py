"""The memory encoder: turns a frame's features and its predicted mask into a memory for later frames.

    pix_feat [B, d_model, h, w] ─ pix_feat_proj (1×1) ─┐
                                                      + ─ fuser (CXBlocks) ─ out_proj (1×1) → [B, mem_dim, h, w]
    mask [B, 1, S·h, S·w] ─ (sigmoid) ─ mask_downsampler ┘

S is the total stride of the mask downsampler (16: the mask comes at the model's input resolution).
The memory's position encoding is the 2-D sine encoding with `mem_dim` channels (no parameters).
Parameter names follow the official checkpoints (`memory_encoder.*` keys).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d, PositionEmbeddingSine


class MaskDownSampler(nn.Module):
    """Shrink a 1-channel mask by `total_stride` with repeated strided convs, then project to `embed_dim`.

    Each of the log_stride(total_stride) steps is conv(stride) → LayerNorm2d → GELU and multiplies the
    channels by stride² (1 → 4 → 16 → 64 → 256 for stride 2, total 16), so no information is thrown away
    by the downsampling; a final 1×1 conv maps to `embed_dim`. In `encoder` (an nn.Sequential, keys
    `encoder.<i>`) the convs sit at indices 0, 3, 6, …, the norms at 1, 4, 7, … and the 1×1 conv last.
    """

    def __init__(
        self,
        embed_dim: int,
        kernel_size: int = 3,
        stride: int = 2,
        padding: int = 1,
        total_stride: int = 16,
    ) -> None:
        super().__init__()
        num_steps = round(math.log(total_stride, stride)) if stride > 1 else 0
        if stride < 2 or stride**num_steps != total_stride:
            raise ValueError(f"total_stride={total_stride} is not a power of stride={stride}")
        layers: list[nn.Module] = []
        channels = 1
        for _ in range(num_steps):
            grown = channels * stride * stride
            layers += [
                nn.Conv2d(channels, grown, kernel_size=kernel_size, stride=stride, padding=padding),
                LayerNorm2d(grown),
                nn.GELU(),
            ]
            channels = grown
        layers.append(nn.Conv2d(channels, embed_dim, kernel_size=1))
        self.encoder = nn.Sequential(*layers)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        """[B, 1, H, W] → [B, embed_dim, H / total_stride, W / total_stride]."""
        return self.encoder(mask)


class CXBlock(nn.Module):
    """A ConvNeXt block: depthwise k×k conv → LayerNorm2d → Linear(4×) → GELU → Linear → ×gamma, residual.

    The pointwise layers are nn.Linear applied channels-last (as in the checkpoints: `pwconv1.weight` is
    [4·dim, dim], not a conv kernel). `gamma` is the per-channel layer scale; with
    `layer_scale_init_value <= 0` there is none (and no `gamma` key).
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int = 7,
        padding: int = 3,
        layer_scale_init_value: float = 1e-6,
        use_dwconv: bool = True,
    ) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=kernel_size, padding=padding, groups=dim if use_dwconv else 1)
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        if layer_scale_init_value > 0:
            self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init_value)))
        else:
            self.gamma = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, dim, H, W] → [B, dim, H, W]."""
        y = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)  # channels last for the Linear layers
        y = self.pwconv2(F.gelu(self.pwconv1(y)))
        if self.gamma is not None:
            y = y * self.gamma
        return x + y.permute(0, 3, 1, 2)


class Fuser(nn.Module):
    """`num_layers` CXBlocks in a row (keys `layers.<i>.*`), mixing the projected features with the mask."""

    def __init__(
        self,
        dim: int,
        num_layers: int,
        kernel_size: int = 7,
        padding: int | None = None,
        layer_scale_init_value: float = 1e-6,
    ) -> None:
        super().__init__()
        padding = kernel_size // 2 if padding is None else padding
        self.layers = nn.ModuleList(
            CXBlock(dim, kernel_size=kernel_size, padding=padding, layer_scale_init_value=layer_scale_init_value)
            for _ in range(num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    """Frame features + mask → memory features [B, mem_dim, h, w] and their sine position encoding.

    Arguments: `d_model` is the width of the backbone features (256), `mem_dim` the memory width (64);
    `kernel_size`, `stride`, `padding`, `total_stride` configure the MaskDownSampler (3, 2, 1, 16),
    `fuser_layers` / `fuser_kernel` the Fuser (2 CXBlocks with 7×7 depthwise convs). When
    `mem_dim == d_model` there is no output projection (Identity, no `out_proj` keys), as in the official.
    """

    def __init__(
        self,
        d_model: int,
        mem_dim: int,
        kernel_size: int = 3,
        stride: int = 2,
        padding: int = 1,
        total_stride: int = 16,
        fuser_layers: int = 2,
        fuser_kernel: int = 7,
        layer_scale_init_value: float = 1e-6,
    ) -> None:
        super().__init__()
        self.mask_downsampler = MaskDownSampler(d_model, kernel_size, stride, padding, total_stride)
        self.pix_feat_proj = nn.Conv2d(d_model, d_model, kernel_size=1)
        self.fuser = Fuser(
            d_model, fuser_layers, kernel_size=fuser_kernel, layer_scale_init_value=layer_scale_init_value
        )
        self.out_proj = nn.Conv2d(d_model, mem_dim, kernel_size=1) if mem_dim != d_model else nn.Identity()
        self.position_encoding = PositionEmbeddingSine(mem_dim)

    def forward(
        self, pix_feat: torch.Tensor, masks: torch.Tensor, skip_mask_sigmoid: bool = False
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """pix_feat [B, d_model, h, w], masks [B, 1, S·h, S·w] (S = total_stride).

        `masks` are logits passed through a sigmoid first, unless `skip_mask_sigmoid` (the tracker feeds
        its own scaled values, sigmoid(logits)·20 − 10 or binarised masks, and skips it).
        Returns {"vision_features": [B, mem_dim, h, w], "vision_pos_enc": [pos [B, mem_dim, h, w]]}.
        """
        if not skip_mask_sigmoid:
            masks = torch.sigmoid(masks)
        mask_feat = self.mask_downsampler(masks)
        pix_feat = pix_feat.to(mask_feat.device)
        if pix_feat.shape[-2:] != mask_feat.shape[-2:]:
            raise ValueError(
                f"mask {tuple(masks.shape[-2:])} downsampled to {tuple(mask_feat.shape[-2:])} does not match "
                f"the features {tuple(pix_feat.shape[-2:])}"
            )
        x = self.out_proj(self.fuser(self.pix_feat_proj(pix_feat) + mask_feat))
        return {"vision_features": x, "vision_pos_enc": [self.position_encoding(x)]}
