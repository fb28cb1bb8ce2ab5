"""An optional second mask decoder for clicks on frames without memory: the "click decoder".

Fine-tuning the whole network on hard fluorescence frames (issue 16, sessions 3–12; model/README.md) raised the click
IoU of dim and crowded nuclei, but every such network also made the shared decoder swell onto touching nuclei, and
`--auto` lineage, which discovers and tracks through that decoder, lost links. A click on a frame no propagation has
reached is decoded from the frame's own features without memory (`SAM2Model.image_embedding`), and that answer is
what a user judges the plugin by. This module lets a checkpoint carry a decoder for exactly that case: the same
architecture as `sam_mask_decoder` (a copy of it, trained with the encoder, prompt encoder and the shared decoder
frozen: `model/train_nano.py --click-decoder`), without its conv_s0 / conv_s1 (the high-resolution maps are projected
once by the shared decoder's and read by both).

It is part of a model only when a checkpoint carries its keys (`click_decoder.*`; see `attach_from_state_dict`):
official checkpoints have none and are built, loaded and run exactly as without this file. Where present, every face
(`napari_sam2.first_click`: a session, the single-image predictor) draws with it the mask of a single positive click
on a frame without memory (`SAM2Model.decode_click`), unless that mask is as large as the click rule's extent step treats
(`ClickRule.reaches_extent`: it is then the shared decoder's); boxes, several points, corrections, tracked frames,
segment everything and discovery keep the shared decoder, so their masks are the network's without the click decoder.
"""

from __future__ import annotations

import copy

from torch import nn

#: The state-dict prefix of the click decoder inside SAM2Model (its attribute name).
PREFIX = "click_decoder."
#: The shared decoder's projections of the high-resolution maps, applied once per frame by `SAM2Model.encode_image`
#: and not duplicated in the click decoder.
SHARED = ("conv_s0", "conv_s1")


def make_click_decoder(model) -> nn.Module:
    """A click decoder initialised as a copy of `model.sam_mask_decoder` (without its high-resolution projections)."""
    decoder = copy.deepcopy(model.sam_mask_decoder)
    for name in SHARED:
        if hasattr(decoder, name):
            delattr(decoder, name)
    return decoder


def carries_click_decoder(state_dict: dict) -> bool:
    """Whether a state dict holds a click decoder's weights."""
    return any(key.startswith(PREFIX) for key in state_dict)


def attach_from_state_dict(model, state_dict: dict) -> bool:
    """Give `model` (a SAM2Model) a click decoder when `state_dict` carries one, so that a strict `load_state_dict`
    then loads it. Returns whether one was attached; without keys nothing is changed."""
    if not carries_click_decoder(state_dict):
        return False
    model.click_decoder = make_click_decoder(model)
    return True
