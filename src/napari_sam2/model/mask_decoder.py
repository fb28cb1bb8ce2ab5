"""SAM 2's mask decoder: prompt tokens + image embedding → mask logits, IoU estimates, object score.

Output tokens learned by the decoder are prepended to the prompt tokens, in this order:
    [obj_score_token (if pred_obj_scores), iou_token, mask_tokens 0 … num_multimask_outputs]
After the two-way transformer, each mask token becomes (through its own "hypernetwork" MLP) a set of
per-channel weights that is dotted with the upscaled image embedding to give one mask [4h, 4w];
token 0 is the single-mask answer, tokens 1… the multimask candidates.
"""

from __future__ import annotations

import torch
from torch import nn

from .common import MLP, LayerNorm2d


def stability_score(mask_logits: torch.Tensor, delta: float) -> torch.Tensor:
    """area(logit > delta) / area(logit > −delta) over the last two axes (1.0 where both are empty).

    A mask whose outline barely moves when the threshold shifts by ±delta is "stable".
    """
    flat = mask_logits.flatten(-2)
    inner = (flat > delta).sum(-1).float()
    outer = (flat > -delta).sum(-1).float()
    return torch.where(outer > 0, inner / outer, 1.0)


class MaskDecoder(nn.Module):
    """Predicts masks from an image embedding and prompt embeddings with a two-way transformer.

    transformer_dim: width C of the tokens and of the image embedding; transformer: a TwoWayTransformer of
    that width. With `use_high_res_features` the stride-4 and stride-8 backbone maps (projected by
    conv_s0 / conv_s1, which live here for the checkpoint keys but are applied by the caller) are added
    during upscaling. `dynamic_multimask_via_stability`: when a single mask is asked for and mask 0 is
    unstable, the multimask candidate with the best predicted IoU is returned instead (eval mode only).
    """

    def __init__(
        self,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        use_high_res_features: bool = True,
        pred_obj_scores: bool = True,
        pred_obj_scores_mlp: bool = True,
        use_multimask_token_for_obj_ptr: bool = True,
        iou_prediction_use_sigmoid: bool = True,
        dynamic_multimask_via_stability: bool = False,
        dynamic_multimask_stability_delta: float = 0.05,
        dynamic_multimask_stability_thresh: float = 0.98,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        c = transformer_dim
        self.transformer_dim = c
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.num_mask_tokens = num_multimask_outputs + 1

        self.iou_token = nn.Embedding(1, c)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, c)
        self.pred_obj_scores = pred_obj_scores
        if pred_obj_scores:
            self.obj_score_token = nn.Embedding(1, c)
        self.use_multimask_token_for_obj_ptr = use_multimask_token_for_obj_ptr

        # Two transposed convolutions: h×w×C → 2h×2w×C/4 → 4h×4w×C/8 (keys 0, 1, 3).
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(c, c // 4, kernel_size=2, stride=2),
            LayerNorm2d(c // 4),
            activation(),
            nn.ConvTranspose2d(c // 4, c // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.use_high_res_features = use_high_res_features
        if use_high_res_features:
            self.conv_s0 = nn.Conv2d(c, c // 8, kernel_size=1)  # stride-4 backbone map → C/8 at 4h×4w
            self.conv_s1 = nn.Conv2d(c, c // 4, kernel_size=1)  # stride-8 backbone map → C/4 at 2h×2w

        self.output_hypernetworks_mlps = nn.ModuleList(MLP(c, c, c // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(
            c, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth, sigmoid_output=iou_prediction_use_sigmoid
        )
        if pred_obj_scores:
            self.pred_obj_score_head = MLP(c, c, 1, 3) if pred_obj_scores_mlp else nn.Linear(c, 1)

        self.dynamic_multimask_via_stability = dynamic_multimask_via_stability
        self.dynamic_multimask_stability_delta = dynamic_multimask_stability_delta
        self.dynamic_multimask_stability_thresh = dynamic_multimask_stability_thresh

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        repeat_image: bool,
        high_res_features: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Predict masks for B prompt sets.

        image_embeddings [B, C, h, w] (or [1, C, h, w] with repeat_image=True, shared by all prompt sets);
        image_pe [1, C, h, w] from PromptEncoder.get_dense_pe(); sparse_prompt_embeddings [B, N, C];
        dense_prompt_embeddings [B, C, h, w]; high_res_features [B, C/8, 4h, 4w], [B, C/4, 2h, 2w]
        (needed when use_high_res_features).

        Returns
            masks [B, K, 4h, 4w] logits: K = num_multimask_outputs candidates (tokens 1…) when
                multimask_output, else 1 (token 0, or the stability fallback);
            iou_pred [B, K] predicted IoU of those masks;
            sam_tokens_out [B, K', C]: the decoder output token(s) for the object pointer — the multimask
                tokens when multimask_output and use_multimask_token_for_obj_ptr, else token 0 alone
                (also when the stability fallback picked another mask);
            object_score_logits [B, 1] (> 0: object present; 10.0 when pred_obj_scores is off).
        """
        masks, iou_pred, mask_tokens_out, object_score_logits = self.predict_masks(
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            repeat_image,
            high_res_features,
        )
        if multimask_output:
            masks, iou_pred = masks[:, 1:], iou_pred[:, 1:]
        elif self.dynamic_multimask_via_stability and not self.training:
            masks, iou_pred = self.select_stable_single_mask(masks, iou_pred)
        else:
            masks, iou_pred = masks[:, 0:1], iou_pred[:, 0:1]

        if multimask_output and self.use_multimask_token_for_obj_ptr:
            sam_tokens_out = mask_tokens_out[:, 1:]
        else:
            sam_tokens_out = mask_tokens_out[:, 0:1]
        return masks, iou_pred, sam_tokens_out, object_score_logits

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        repeat_image: bool,
        high_res_features: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """All masks before selection: masks [B, T, 4h, 4w], iou [B, T], mask tokens [B, T, C],
        object score [B, 1], with T = num_mask_tokens (single-mask token first)."""
        batch = sparse_prompt_embeddings.shape[0]
        learned = [self.iou_token.weight, self.mask_tokens.weight]
        if self.pred_obj_scores:
            learned.insert(0, self.obj_score_token.weight)
        first_mask_token = len(learned) - 1  # index of mask token 0 among the output tokens
        output_tokens = torch.cat(learned, dim=0).unsqueeze(0).expand(batch, -1, -1)
        tokens = torch.cat([output_tokens, sparse_prompt_embeddings], dim=1)

        if repeat_image and dense_prompt_embeddings.stride(0) == 0:
            # one image and one dense prompt (no mask prompts: `no_mask_embed` broadcast) for every prompt set, as
            # segment everything's clicks on a frame: the image enters the transformer once, and its first layer
            # projects it once for all of them (the same numbers as repeating it, a fraction of the work)
            src = image_embeddings[:1] + dense_prompt_embeddings[:1]
        elif repeat_image:  # one image, several prompt sets
            src = torch.repeat_interleave(image_embeddings, batch, dim=0) + dense_prompt_embeddings
        else:
            if image_embeddings.shape[0] != batch:
                raise ValueError(
                    f"{image_embeddings.shape[0]} image embeddings for {batch} prompt sets (use repeat_image)"
                )
            src = image_embeddings + dense_prompt_embeddings
        if image_pe.shape[0] != 1:
            raise ValueError("image_pe must have batch size 1 (PromptEncoder.get_dense_pe())")
        _, c, h, w = src.shape

        hs, src = self.transformer(src, image_pe, tokens)  # src: [batch, h·w, C] (one per prompt set from here)
        iou_token_out = hs[:, first_mask_token - 1]
        mask_tokens_out = hs[:, first_mask_token : first_mask_token + self.num_mask_tokens]

        src = src.transpose(1, 2).reshape(batch, c, h, w)
        if self.use_high_res_features:
            deconv1, norm1, act1, deconv2, act2 = self.output_upscaling
            feat_s0, feat_s1 = high_res_features
            upscaled = act1(norm1(deconv1(src) + feat_s1))
            upscaled = act2(deconv2(upscaled) + feat_s0)
        else:
            upscaled = self.output_upscaling(src)

        # Each mask token → channel weights [C/8]; a mask is their dot product with the upscaled map.
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )  # [B, T, C/8]
        b, c_up, h_up, w_up = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c_up, h_up * w_up)).reshape(b, -1, h_up, w_up)

        iou_pred = self.iou_prediction_head(iou_token_out)
        if self.pred_obj_scores:
            object_score_logits = self.pred_obj_score_head(hs[:, 0])
        else:  # no head: "object present" (sigmoid(10) ≈ 1)
            object_score_logits = iou_pred.new_full((iou_pred.shape[0], 1), 10.0)
        return masks, iou_pred, mask_tokens_out, object_score_logits

    def select_stable_single_mask(
        self, all_masks: torch.Tensor, all_ious: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per prompt set: mask 0 if its stability score ≥ the threshold, else the multimask candidate
        (1…) with the highest predicted IoU. all_masks [B, T, H, W], all_ious [B, T] → [B, 1, H, W], [B, 1]."""
        rows = torch.arange(all_ious.shape[0], device=all_ious.device)
        best = torch.argmax(all_ious[:, 1:], dim=-1) + 1
        best_masks = all_masks[rows, best].unsqueeze(1)
        best_ious = all_ious[rows, best].unsqueeze(1)

        single_masks, single_ious = all_masks[:, 0:1], all_ious[:, 0:1]
        stable = stability_score(single_masks, self.dynamic_multimask_stability_delta)  # [B, 1]
        stable = stable >= self.dynamic_multimask_stability_thresh
        masks = torch.where(stable[..., None, None], single_masks, best_masks)
        ious = torch.where(stable, single_ious, best_ious)
        return masks, ious
