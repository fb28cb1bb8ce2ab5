"""An optional border refiner for the mask of a first click: the "mask refiner".

SAM 2's decoder writes mask logits at a quarter of the model input (4h × 4w for an input of 16h × 16w), from features
of a frozen encoder. A small nucleus (radius ~8 px at the model input, two logit pixels) then costs ~0.2 IoU per
pixel of border, and measured failures of the click decoder on dim and crowded nuclei were mostly such border
errors (model/README.md, "The mask refiner"). This module reads the frame itself at the model input's resolution
next to the mask and corrects the logits where the border lies: a few 3×3 convolutions at the logits' resolution
over (the logits, the frame folded 4 × 4 into channels, the frame relative to the mask's own brightness, the
stride-4 high-resolution map). Its last layer starts at zero, so a new refiner changes nothing.

It is part of a model only when a checkpoint carries its keys (`mask_refiner.*`; see `attach_from_state_dict`):
official checkpoints have none and run exactly as without this file. Where present, every face
(`napari_sam2.first_click`: a session, the single-image predictor) applies it to the mask of a first single positive click on a frame without memory (`SAM2Model.refine_click_mask`: the click
decoder's mask, or the shared decoder's for a large nucleus handed back to it), after the click rule's steps; every
other mask (boxes, several points, corrections, tracked frames, segment everything, discovery, `--auto`) is the
network's without it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: The state-dict prefix of the refiner inside SAM2Model (its attribute name).
PREFIX = "mask_refiner."
#: Logits are clipped to ±LOGIT_CLIP and divided by it before they are read (the click rule writes -1024 where it
#: cuts; the refiner's correction is added to the unclipped logits, so a cut stays cut).
LOGIT_CLIP = 16.0


class MaskRefiner(nn.Module):
    """logits [B, 1, 4h, 4w], grey [B, 1, 16h, 16w] (the frame the mask was decoded from, in [0, 1]), s0 [B, C, 4h,
    4w] (the projected stride-4 map, `ImageFeatures.high_res[0]`) → refined logits [B, 1, 4h, 4w]."""

    def __init__(self, s0_channels: int, hidden: int = 32, depth: int = 2, fold: int = 4):
        super().__init__()
        self.fold = fold
        inputs = 1 + 2 * fold * fold + s0_channels
        # 3×3 convolutions, every second one dilated: a border is read over ~(4 depth + 3) logit pixels around it
        self.layers = nn.ModuleList(
            nn.Conv2d(inputs if i == 0 else hidden, hidden, 3, padding=1 + i % 2, dilation=1 + i % 2)
            for i in range(depth)
        )
        self.out = nn.Conv2d(hidden, 1, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, logits: torch.Tensor, grey: torch.Tensor, s0: torch.Tensor) -> torch.Tensor:
        grey = grey.float()
        clipped = logits.float().clamp(-LOGIT_CLIP, LOGIT_CLIP) / LOGIT_CLIP
        # the frame relative to the mask's own brightness: a border lies where a nucleus falls to a fraction of its
        # level, whatever that level (dim nuclei are dim after any gain)
        inside = (F.interpolate(logits.float(), size=grey.shape[-2:], mode="bilinear", align_corners=False) > 0).float()
        area = inside.flatten(1).sum(1)
        level = (grey * inside).flatten(1).sum(1) / area.clamp(min=1.0)
        level = torch.where(area > 0, level, grey.flatten(1).amax(1)).clamp(min=1e-3)
        relative = (grey / level[:, None, None, None]).clamp(max=4.0)
        x = torch.cat([clipped, F.pixel_unshuffle(grey, self.fold), F.pixel_unshuffle(relative, self.fold),
                       s0.float()], dim=1)  # fmt: skip
        for layer in self.layers:
            x = F.gelu(layer(x))
        return logits.float() + self.out(x)


def carries_mask_refiner(state_dict: dict) -> bool:
    """Whether a state dict holds a mask refiner's weights."""
    return any(key.startswith(PREFIX) for key in state_dict)


def attach_from_state_dict(model, state_dict: dict) -> bool:
    """Give `model` (a SAM2Model) a mask refiner shaped as the keys of `state_dict` say, so that a strict
    `load_state_dict` then loads it. Returns whether one was attached; without keys nothing is changed."""
    if not carries_mask_refiner(state_dict):
        return False
    first = state_dict[PREFIX + "layers.0.weight"]
    depth = len({key.split(".")[2] for key in state_dict if key.startswith(PREFIX + "layers.")})
    fold = 4
    s0_channels = first.shape[1] - 1 - 2 * fold * fold
    model.mask_refiner = MaskRefiner(s0_channels, hidden=first.shape[0], depth=depth, fold=fold)
    return True
