"""A first click: one positive point on a frame without memory, decoded the same way by every face.

The mask of a user's first click on a frame is what they judge the plugin by. `TrackingSession` (the widget,
`track()`, the CLI), `ImagePredictor` (single images) and the click sets `model/train_nano.py` trains on all decode
it here, so one click on one model input gives one mask:

    the frame at the click rule's level          (the caller encodes it: `ClickRule.gain`, `ClickRule.apply_gain`)
    → three candidates of the click decoder      (`SAM2Model.decode_click`; the shared decoder's without one)
    → a large nucleus handed back                (`ClickRule.reaches_extent`: to the shared decoder and the extent step)
    → the click rule's steps                     (`ClickRule.steps`: keep the clicked part, extend, cap)
    → the mask refiner                           (`SAM2Model.refine_click_mask`, where the checkpoint carries one)
    → the mask-quality head's estimate           (of the mask as returned, where the checkpoint carries a head)

The IoU token chooses among the three, as in SAM 2. A checkpoint without click decoder, refiner and head under the
rule "off" (every official one) gets `SAM2Model.decode`'s answer unchanged.

A face that shows the three candidates (the single-image API) asks `across_border` what else a click on the border
of two touching objects may mean: the object across the border, and the two together (the rule's `across_border`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .click_rule import ClickRule


@dataclass
class FirstClick:
    """The answer to B first clicks on one frame (logits at the decoder's 4h × 4w, before any resize)."""

    logits: torch.Tensor  # [B, 3, 4h, 4w] the candidates as returned, each as if it were the chosen one
    unrefined: torch.Tensor  # [B, 3, 4h, 4w] the same before the mask refiner (an object's memory is encoded from it)
    token_ious: torch.Tensor  # [B, 3] the IoU token's estimates; `choice` is their argmax
    reported: torch.Tensor  # [B, 3] the IoU to show: the head's estimate of each as returned (else the token's)
    choice: torch.Tensor  # [B] (long) the candidate a face keeps
    object_score: torch.Tensor  # [B, 1] > 0: the object is there
    object_pointer: torch.Tensor  # [B, C] the pointer of the chosen candidate's decoder (gated with `object_gate`)

    def chosen(self, name: str) -> torch.Tensor:
        """The chosen candidate's `logits` / `unrefined` [B, 1, 4h, 4w] or `token_ious` / `reported` [B, 1]."""
        values = getattr(self, name)
        rows = torch.arange(len(self.choice), device=values.device)
        return values[rows, self.choice.to(values.device)].unsqueeze(1)


@torch.no_grad()
def decode_first_click(
    model,
    rule: ClickRule,
    embedding: torch.Tensor,
    high_res: list[torch.Tensor],
    coords: torch.Tensor,
    grey: np.ndarray | None,
    own_grey: np.ndarray | None,
    object_gate: bool = True,
    every_candidate: bool = True,
    quality: bool = True,
) -> FirstClick:
    """B single positive clicks on one frame without memory, each decoded as a first click.

    embedding [1 or B, d, h, w] (`SAM2Model.image_embedding`) and high_res (batch 1 or B) of the frame at the click
    rule's level; coords [B, 1, 2]: the clicks as (x, y) model-input pixels. grey [S, S]: that model input in [0, 1]
    (`ClickRule.grey`; what the extent step and the refiner read), own_grey [S, S]: the frame before the rule's gain
    (the ceiling step's); either None where the rule reads no image (grey is needed with a mask refiner).
    object_gate: absent objects' masks cut and pointers the no-object pointer (the video path; the official image
    predictor does not gate). every_candidate False: only the chosen candidate goes through the rule's steps and
    the refiner (a session's cost), the others are the decoder's. quality False: no head runs (`reported` is the
    token's)."""
    size = model.image_size
    batch = coords.shape[0]
    ones = torch.ones(batch, 1, dtype=torch.int32, device=coords.device)
    out = model.decode_click(embedding, high_res, coords, ones, object_gate=object_gate, quality=quality)
    logits, token_ious = out.multi_logits.float().clone(), out.multi_ious.float().clone()
    reported = out.reported_multi_ious.float().clone()
    score, pointer = out.object_score.clone(), out.object_pointer.clone()
    choice = token_ious.argmax(1)
    by_click_decoder = [model.click_decoder is not None] * batch
    if model.click_decoder is not None:
        # a large nucleus: the shared decoder's core and the extent step (the click decoder saw few)
        large = [rule.reaches_extent(logits[j, choice[j]][None, None], size) for j in range(batch)]
        back = [j for j in range(batch) if score[j, 0] > 0 and large[j]]
        if back:
            rows = torch.tensor(back, device=coords.device)
            shared = model.decode(
                embedding if embedding.shape[0] == 1 else embedding[rows],
                high_res if high_res[0].shape[0] == 1 else [h[rows] for h in high_res],
                coords[rows], ones[rows], multimask=True, object_gate=object_gate, quality=quality,
            )  # fmt: skip
            logits[rows], token_ious[rows] = shared.multi_logits.float(), shared.multi_ious.float()
            reported[rows] = shared.reported_multi_ious.float()
            score[rows], pointer[rows] = shared.object_score, shared.object_pointer
            choice[rows] = shared.multi_ious.float().argmax(1)
            for j in back:
                by_click_decoder[j] = False
    unrefined = logits.clone()
    changed = torch.zeros(logits.shape[:2], dtype=torch.bool)
    grey_t = None if grey is None else ClickRule.grey_tensor(grey)
    if model.mask_refiner is not None and grey_t is None:
        raise ValueError("a model with a mask refiner needs the frame's grey (ClickRule.grey of the model input)")
    labels = np.ones(1)
    for j in range(batch):
        point = coords[j].cpu().numpy()
        frame_maps = [h[:1] if h.shape[0] == 1 else h[j : j + 1] for h in high_res]
        for m in range(logits.shape[1]) if every_candidate else [int(choice[j])]:
            # the extent step mends the shared decoder's large nuclei, not a click decoder's masks (extended, they
            # spill: model/README.md, "The click decoder")
            kept, moved = rule.steps(
                logits[j : j + 1, m : m + 1], grey, own_grey, point, labels, size, extend=not by_click_decoder[j]
            )
            unrefined[j, m] = kept[0, 0]
            if model.mask_refiner is not None:  # its borders, read on the frame the mask was decoded from
                kept, moved = model.refine_click_mask(kept, grey_t, frame_maps), True
            logits[j, m], changed[j, m] = kept[0, 0], moved
    if quality and model.mask_quality is not None and changed.any():
        # the head's estimate is of the mask as returned, read on the frame it was decoded from (on the frame as it
        # is, the dim nucleus a good mask covers is near black: tuning |error| 0.13 -> 0.34)
        rescored = model.mask_quality(logits, high_res, coords, ones, size).float()
        reported = torch.where(changed.to(reported.device), rescored, reported)
    return FirstClick(logits, unrefined, token_ious, reported, choice, score, pointer)


@torch.no_grad()
def across_border(model, rule: ClickRule, coords: torch.Tensor, first: FirstClick, decode) -> tuple | None:
    """The candidates of one first click on the border of two touching objects → (logits [1, 3, 4h, 4w], reported
    IoUs [1, 3]): the click's own mask (the chosen one, first), the object across the border, the two together (the
    larger logit of the two); None where the rule's `across_border` is off or the click is not on such a border
    (`ClickRule.pick_across`).

    coords [1, 1, 2]: the click, (x, y) model-input pixels; first: its `decode_first_click` answer; decode(coords,
    every_candidate) → `FirstClick`: how the face decodes a first click at other coords (its level, view and
    encoding), which reads the object across from a ring of clicks around this one (`ClickRule.across_seeds`); an
    answer the network scores as no object (object score ≤ 0) is not one. The reported IoU of the pair is the lower of
    its two masks'."""
    if not rule.across_border:
        return None

    def at_input(logits):  # [1, 1, 4h, 4w] → [S, S] bool, the mask at the model input
        return (model.upsample_logits(logits.float())[0, 0] > 0).cpu().numpy()

    own = first.chosen("logits")
    mask = at_input(own)
    click = coords[0, 0].cpu().numpy()
    seeds = rule.across_seeds(mask, click)
    if not len(seeds) or not mask.any():
        return None
    answers = [
        decode(torch.tensor(seed, dtype=coords.dtype, device=coords.device).view(1, 1, 2), False) for seed in seeds
    ]
    # an answer the network scores as no object is none (the single-image API does not gate its masks; of the 46
    # answers picked on the tuning border clicks, none was)
    found = [at_input(a.chosen("logits")) & bool(a.object_score[0, 0] > 0) for a in answers]
    k = rule.pick_across(mask, click, seeds, np.stack(found))
    if k is None:
        return None
    other_logits = answers[k].chosen("logits").to(own.device)
    logits = torch.cat([own, other_logits, torch.maximum(own, other_logits)], dim=1)
    own_iou = first.chosen("reported")
    other_iou = answers[k].chosen("reported").to(own_iou.device)
    return logits, torch.cat([own_iou, other_iou, torch.minimum(own_iou, other_iou)], dim=1)
