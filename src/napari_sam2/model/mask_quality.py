"""An optional, learned mask-aware quality head: predicts each decoded mask's IoU from the mask itself.

SAM 2's own IoU prediction is an MLP on the decoder's IoU token, which reads the prompt tokens and the
low-resolution (stride-16) image tokens. Which object a mask lands on is decided after that, in the decoder's
high-resolution path (the upscaled embedding plus the stride-4 / -8 backbone maps), so on our small model the token
cannot tell a mask on the clicked nucleus from one on its bright neighbour (issue 16: |predicted − actual| 0.22–0.34
on held-out synthetic clicks). This head looks where the decision is made: for every candidate mask it reads

- the low-res mask logits [4h, 4w] (as probabilities),
- the image at that resolution: the two high-resolution maps the decoder adds during upscaling (stride 4 and 8,
  already projected by conv_s0 / conv_s1), mixed by 1 × 1 convolutions into one `width`-channel map. These are the
  frame's own features, not the memory-conditioned embedding, so a click frame and a tracked frame look alike;
- the prompt: the positive / negative points and box corners (model-input pixels, (x, y) as inside SAM),

pools the image map inside the mask, in a ring around it, over the whole frame and at the click, runs two small
convolutions on the (mask, image, point maps) stack at stride 16, adds a few shape numbers (area, stability, how
much of the mask holds the click, the click's distance from the mask's centre, the mask's share inside the box)
and maps all of it through an MLP to an IoU in [0, 1].

It is part of a model only when a checkpoint carries its keys (`mask_quality.*`; see `attach_from_state_dict`):
official checkpoints have none and are built, loaded and run exactly as without this file. When present,
`SAM2Model.decode` returns its prediction beside the IoU token's (`DecoderOutput.multi_quality` / `quality`) and the
session (on prompted frames; tracked frames keep the token's number, on which the head was not trained) and the image
predictor report it; which candidate is chosen, and segment everything's and discovery's filters, stay on the token's
estimate (so the masks are those of the network without the head).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLP

#: The state-dict prefix of the head inside SAM2Model (its attribute name).
PREFIX = "mask_quality."
#: Number of scalar shape / prompt features (see `MaskQualityHead.shape_features`).
NUM_SCALARS = 10


class MaskQualityHead(nn.Module):
    """Predicts the IoU of candidate masks with the object their prompt asks for.

    embed_dim: the decoder's width d (high-res maps have d/8 and d/4 channels); width: channels of the head's image
    map; hidden: the MLP's hidden width. About 25k parameters at d = 64, width 16, hidden 64.
    """

    def __init__(self, embed_dim: int, width: int = 16, hidden: int = 64) -> None:
        super().__init__()
        self.embed_dim, self.width, self.hidden = embed_dim, width, hidden
        self.image_s0 = nn.Conv2d(embed_dim // 8, width, kernel_size=1)
        self.image_s1 = nn.Conv2d(embed_dim // 4, width, kernel_size=1)
        # on (mask, image map, positive points, negative points) at stride 16, then stride 32
        self.mask_conv = nn.Sequential(
            nn.Conv2d(width + 3, width, kernel_size=3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, 2 * width, kernel_size=3, stride=2, padding=1),
            nn.GELU(),
        )
        pooled = 4 * width + 2 * 2 * width  # inside, ring, frame, click; conv mean and max
        self.head = MLP(pooled + NUM_SCALARS, hidden, 1, 3, sigmoid_output=True)

    def image_map(self, high_res: list[torch.Tensor]) -> torch.Tensor:
        """The head's view of the frame: [b, width, 4h, 4w] from high_res ([b, d/8, 4h, 4w], [b, d/4, 2h, 2w])."""
        s0, s1 = high_res
        up = F.interpolate(self.image_s1(s1.float()), size=s0.shape[-2:], mode="bilinear", align_corners=False)
        return F.gelu(self.image_s0(s0.float()) + up)

    def forward(
        self,
        mask_logits: torch.Tensor,
        high_res: list[torch.Tensor],
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        image_size: int,
    ) -> torch.Tensor:
        """Predicted IoU [B, M] of candidate masks.

        mask_logits [B, M, 4h, 4w] (before any object gate); high_res maps of batch B, or 1 (one frame shared by
        B prompt sets); point_coords [B, P, 2] (x, y) in model-input pixels of size `image_size`, point_labels
        [B, P] (1 positive, 0 negative, 2 / 3 box corners, −1 padding), or None (no points: tracked frames).
        """
        batch, m, hh, ww = mask_logits.shape
        image = self.image_map(high_res)  # [b, C, H, W]
        c = image.shape[1]
        if point_coords is None:
            point_coords = mask_logits.new_zeros(batch, 1, 2)
            point_labels = -torch.ones(batch, 1, dtype=torch.int32, device=mask_logits.device)
        coords = point_coords.float() / image_size  # [B, P, 2] in 0 … 1, (x, y)
        labels = point_labels
        pos, neg = (labels == 1).float(), (labels == 0).float()  # [B, P]

        prob = torch.sigmoid(mask_logits.float())  # [B, M, H, W]
        flat_prob = prob.flatten(2)  # [B, M, HW]
        flat_image = image.flatten(2).transpose(1, 2)  # [b, HW, C]
        mass = flat_prob.sum(-1, keepdim=True)  # [B, M, 1]
        # the ring around the mask at half resolution (a 2-cell dilation there, ~4 px at 4h × 4w): a full-resolution
        # max filter over every candidate of segment everything's grid costs more than the rest of the head
        half = F.avg_pool2d(prob, 2)
        grown = F.max_pool2d(F.max_pool2d(half, (1, 5), stride=1, padding=(0, 2)), (5, 1), stride=1, padding=(2, 0))
        ring = (grown - half).clamp(min=0).flatten(2)  # [B, M, HW/4]
        ring_mass = ring.sum(-1, keepdim=True)
        half_image = F.avg_pool2d(image, 2).flatten(2).transpose(1, 2)  # [b, HW/4, C]
        if flat_image.shape[0] == 1 and batch > 1:
            inside = torch.matmul(flat_prob, flat_image[0])  # [B, M, C]
            around = torch.matmul(ring, half_image[0])
        else:
            inside = torch.bmm(flat_prob, flat_image)
            around = torch.bmm(ring, half_image)
        inside = inside / mass.clamp(min=1.0)
        around = around / ring_mass.clamp(min=1.0)
        frame = image.mean(dim=(2, 3))[:, None].expand(batch, m, c)  # [B, M, C]

        grid = (coords * 2 - 1)[:, None]  # [B, 1, P, 2] for grid_sample (x, y in −1 … 1)
        img_b = image.expand(batch, -1, -1, -1) if image.shape[0] == 1 else image
        at_points = F.grid_sample(img_b, grid, mode="bilinear", align_corners=False)[:, :, 0]  # [B, C, P]
        n_pos = pos.sum(-1, keepdim=True)  # [B, 1]
        click = (at_points * pos[:, None]).sum(-1) / n_pos.clamp(min=1)  # [B, C]
        click = click[:, None].expand(batch, m, c)
        prob_at = F.grid_sample(prob, grid, mode="bilinear", align_corners=False)[:, :, 0]  # [B, M, P]

        scalars = self.shape_features(mask_logits.float(), prob, coords, labels, prob_at, pos, neg)

        # the conv branch at stride 16: mask, image map and point maps pooled to h × w
        small = F.adaptive_avg_pool2d(prob.flatten(0, 1)[:, None], (hh // 4, ww // 4))  # [B·M, 1, h, w]
        small_image = F.adaptive_avg_pool2d(image, (hh // 4, ww // 4))  # [b, C, h, w]
        small_image = small_image.expand(batch, -1, -1, -1) if small_image.shape[0] == 1 else small_image
        points = self.point_maps(coords, pos, neg, hh // 4, ww // 4)  # [B, 2, h, w]
        stack = torch.cat(
            [
                small,
                small_image.repeat_interleave(m, dim=0),
                points.repeat_interleave(m, dim=0),
            ],
            dim=1,
        )
        conv = self.mask_conv(stack)  # [B·M, 2C, h/2, w/2]
        conv = torch.cat([conv.mean(dim=(2, 3)), conv.amax(dim=(2, 3))], dim=1).reshape(batch, m, -1)

        features = torch.cat([inside, around, frame, click, conv, scalars], dim=-1)
        return self.head(features)[..., 0]

    @staticmethod
    def point_maps(coords: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Gaussian blobs (σ one cell) at the positive and the negative points on an h × w grid → [B, 2, h, w]."""
        ys = (torch.arange(h, device=coords.device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=coords.device, dtype=torch.float32) + 0.5) / w
        dy = (ys[None, None, :, None] - coords[..., 1][..., None, None]) * h  # [B, P, h, 1]
        dx = (xs[None, None, None, :] - coords[..., 0][..., None, None]) * w  # [B, P, 1, w]
        blob = torch.exp(-0.5 * (dy**2 + dx**2))  # [B, P, h, w]
        positive = (blob * pos[..., None, None]).amax(dim=1, keepdim=True) if pos.shape[1] else blob[:, :1] * 0
        negative = (blob * neg[..., None, None]).amax(dim=1, keepdim=True) if neg.shape[1] else blob[:, :1] * 0
        return torch.cat([positive, negative], dim=1)

    @staticmethod
    def shape_features(logits, prob, coords, labels, prob_at, pos, neg) -> torch.Tensor:
        """NUM_SCALARS numbers per candidate [B, M, NUM_SCALARS]: log area share, stability (area above logit +1 /
        above −1), mean |logit| clipped at 10 (÷ 10), the mask's mean probability at the positive points and at the
        negative points, whether there are positive / negative points / a box, the click's distance from the mask's
        centre in mask radii (capped at 4, ÷ 4), and the mask's share inside the box (1 without a box)."""
        batch, m, hh, ww = logits.shape
        area = prob.flatten(2).mean(-1)  # [B, M]
        inner = (logits > 1).flatten(2).float().sum(-1)
        outer = (logits > -1).flatten(2).float().sum(-1)
        stability = torch.where(outer > 0, inner / outer.clamp(min=1), torch.ones_like(outer))
        confidence = logits.abs().clamp(max=10).flatten(2).mean(-1) / 10
        n_pos, n_neg = pos.sum(-1, keepdim=True), neg.sum(-1, keepdim=True)  # [B, 1]
        at_pos = (prob_at * pos[:, None]).sum(-1) / n_pos.clamp(min=1)  # [B, M]
        at_neg = (prob_at * neg[:, None]).sum(-1) / n_neg.clamp(min=1)
        has_pos = (n_pos > 0).float().expand(batch, m)
        has_neg = (n_neg > 0).float().expand(batch, m)
        corner = (labels == 2) | (labels == 3)
        has_box = corner.any(-1, keepdim=True).float().expand(batch, m)

        ys = (torch.arange(hh, device=prob.device, dtype=torch.float32) + 0.5) / hh
        xs = (torch.arange(ww, device=prob.device, dtype=torch.float32) + 0.5) / ww
        mass = prob.sum(dim=(2, 3)).clamp(min=1e-3)
        cy = (prob.sum(3) * ys).sum(-1) / mass  # [B, M]
        cx = (prob.sum(2) * xs).sum(-1) / mass
        click = (coords * pos[..., None]).sum(1) / n_pos.clamp(min=1)  # [B, 2] (x, y)
        radius = torch.sqrt(area / torch.pi).clamp(min=1.0 / hh)
        distance = torch.hypot(click[:, None, 0] - cx, click[:, None, 1] - cy) / radius
        distance = torch.where(has_pos > 0, distance.clamp(max=4) / 4, torch.zeros_like(distance))

        big = 1e4  # box corners: min / max over the corner points, the whole frame without one
        x0 = torch.where(corner, coords[..., 0], big).amin(-1)
        y0 = torch.where(corner, coords[..., 1], big).amin(-1)
        x1 = torch.where(corner, coords[..., 0], -big).amax(-1)
        y1 = torch.where(corner, coords[..., 1], -big).amax(-1)
        in_y = ((ys[None] >= y0[:, None]) & (ys[None] <= y1[:, None])).float()  # [B, H]
        in_x = ((xs[None] >= x0[:, None]) & (xs[None] <= x1[:, None])).float()  # [B, W]
        in_box = torch.einsum("bmhw,bh,bw->bm", prob, in_y, in_x) / mass
        in_box = torch.where(has_box > 0, in_box, torch.ones_like(in_box))
        log_area = torch.log(area + 1e-4) / 10
        return torch.stack(
            [log_area, stability, confidence, at_pos, at_neg, has_pos, has_neg, has_box, distance, in_box], dim=-1
        )


def head_settings(state_dict: dict) -> dict | None:
    """(embed_dim, width, hidden) of the head whose keys `state_dict` carries (`mask_quality.*`), read from the
    shapes; None when it carries none (every official checkpoint)."""
    s0 = state_dict.get(PREFIX + "image_s0.weight")
    if s0 is None:
        return None
    first = state_dict.get(PREFIX + "head.layers.0.weight")
    if s0.ndim != 4 or first is None or first.ndim != 2:
        raise ValueError("mask_quality.* weights of an unexpected layout")
    return {"embed_dim": int(s0.shape[1]) * 8, "width": int(s0.shape[0]), "hidden": int(first.shape[0])}


def attach_from_state_dict(model, state_dict: dict) -> bool:
    """Give `model` (a SAM2Model) a MaskQualityHead when `state_dict` carries one, sized from its shapes, so a
    strict `load_state_dict` then loads it. Returns whether a head was attached; without keys nothing is changed.
    A head that does not fit the model (another decoder width) raises ValueError."""
    settings = head_settings(state_dict)
    if settings is None:
        return False
    if settings["embed_dim"] != model.cfg.d_model:
        raise ValueError(
            f"its mask-quality head is for a decoder {settings['embed_dim']} wide, the model's is {model.cfg.d_model}"
        )
    model.mask_quality = MaskQualityHead(**settings).to(next(model.parameters()).device)
    return True
