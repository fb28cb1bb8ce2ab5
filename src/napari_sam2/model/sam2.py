"""The SAM 2 network assembled from its parts, with one method per step of the algorithm.

`SAM2Model` holds the modules under the attribute names of the official checkpoints (so a `.pt` from
Meta loads unchanged) and exposes the steps that a predictor or tracking session strings together:

    encode_image          frame [B,3,S,S]           → ImageFeatures (backbone, position, high-res maps)
    condition_on_memory   features + memories/ptrs  → memory-conditioned features [B,d,h,w]
    decode                features + prompts        → DecoderOutput (mask logits, IoU, pointer, object score)
    mask_as_output        a given binary mask       → DecoderOutput (the mask itself, a pointer for it)
    encode_memory         features + mask logits    → memory features [B,mem_dim,h,w]

It holds no state between calls: *which* memories a frame attends to is the tracking session's decision
(`napari_sam2.session`), which keeps this module a plain function of its inputs. Coordinates handed to
`decode` are (x, y) in pixels of the square model input (0 … image_size), the convention inside SAM.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLP, sine_encoding_1d
from .configs import SAM2Config
from .image_encoder import ImageEncoder
from .mask_decoder import MaskDecoder
from .memory_attention import MemoryAttention
from .memory_encoder import MemoryEncoder
from .prompt_encoder import PromptEncoder
from .transformer import TwoWayTransformer

#: Mask logit written where the object-score head says the object is absent (official value).
NO_OBJECT_LOGIT = -1024.0
#: Logits used when a given binary mask is taken as the output: sigmoid(±10) ≈ 1 / 0.
MASK_AS_OUTPUT_SCALE, MASK_AS_OUTPUT_BIAS = 20.0, -10.0


@dataclass
class ImageFeatures:
    """Image-encoder output for a batch of frames.

    vision: [B, d, h, w] lowest-resolution backbone features (h = w = image_size / 16), *without* the
        no-memory embedding; vision_pos: [B, d, h, w] its sine position encoding;
    high_res: two maps [B, d/8, 4h, 4w] and [B, d/4, 2h, 2w], already projected by the decoder's
        conv_s0 / conv_s1 (done once per frame instead of once per click).
    """

    vision: torch.Tensor
    vision_pos: torch.Tensor
    high_res: list[torch.Tensor]

    def select(self, index) -> ImageFeatures:
        """Features of some batch entries (e.g. `[0, 0, 0]` to repeat one frame for three objects)."""
        return ImageFeatures(self.vision[index], self.vision_pos[index], [x[index] for x in self.high_res])

    def to(self, *args, **kwargs) -> ImageFeatures:
        return ImageFeatures(
            self.vision.to(*args, **kwargs),
            self.vision_pos.to(*args, **kwargs),
            [x.to(*args, **kwargs) for x in self.high_res],
        )

    @property
    def nbytes(self) -> int:
        """Bytes held for this frame (the position encoding is one shared, cached tensor: not counted)."""
        return sum(t.numel() * t.element_size() for t in [self.vision, *self.high_res])


@dataclass
class DecoderOutput:
    """What the SAM heads give for a batch of B objects.

    multi_logits: [B, M, 4h, 4w] all candidate low-res mask logits (M = 3 with multimask, else 1);
    multi_ious: [B, M] the decoder's IoU token's estimate for each candidate (what the multimask choice and segment
        everything's filters use, as in SAM 2);
    logits: [B, 1, 4h, 4w] the chosen mask (highest multi_ious with multimask);
    iou: [B, 1] its multi_ious;
    object_pointer: [B, d]; object_score: [B, 1] logit of "the object is present";
    multi_quality / quality: [B, M] / [B, 1] the optional mask-quality head's IoU prediction for the same candidates
        / the chosen mask (None without a head). `reported_iou` / `reported_multi_ious`: the IoU to show a user.
    """

    multi_logits: torch.Tensor
    multi_ious: torch.Tensor
    logits: torch.Tensor
    iou: torch.Tensor
    object_pointer: torch.Tensor
    object_score: torch.Tensor
    multi_quality: torch.Tensor | None = None
    quality: torch.Tensor | None = None

    @property
    def reported_iou(self) -> torch.Tensor:
        """[B, 1] the chosen mask's predicted IoU as reported: the mask-quality head's where there is one."""
        return self.iou if self.quality is None else self.quality

    @property
    def reported_multi_ious(self) -> torch.Tensor:
        """[B, M] every candidate's predicted IoU as reported: the mask-quality head's where there is one."""
        return self.multi_ious if self.multi_quality is None else self.multi_quality


@dataclass
class Memory:
    """One memory frame as the memory attention sees it.

    features: [B, mem_dim, h, w] output of the memory encoder; temporal_index: which row of
    `maskmem_tpos_enc` marks its distance (num_maskmem − 1 for conditioning frames, 0 for the previous
    frame, k − 1 for the frame k steps back).
    """

    features: torch.Tensor
    temporal_index: int


@dataclass
class Pointer:
    """An object pointer [B, d] and its signed frame distance from the current frame."""

    vector: torch.Tensor
    distance: int


class SAM2Model(nn.Module):
    """SAM 2 / 2.1 (all sizes, and small custom configs) with official parameter names."""

    def __init__(self, cfg: SAM2Config) -> None:
        super().__init__()
        self.cfg = cfg
        d, mem_dim, feat = cfg.d_model, cfg.mem_dim, cfg.feat_size
        self.image_encoder = ImageEncoder(cfg)
        self.memory_attention = MemoryAttention(
            d_model=d,
            num_layers=cfg.mem_attention_layers,
            dim_feedforward=cfg.mem_attention_ffn,
            num_heads=cfg.mem_attention_heads,
            mem_dim=mem_dim,
            feat_size=feat,
            rope_theta=cfg.rope_theta,
        )
        self.memory_encoder = MemoryEncoder(
            d_model=d,
            mem_dim=mem_dim,
            kernel_size=cfg.mask_downsampler_kernel,
            stride=cfg.mask_downsampler_stride,
            padding=cfg.mask_downsampler_padding,
            total_stride=cfg.backbone_stride,
            fuser_layers=cfg.fuser_layers,
            fuser_kernel=cfg.fuser_kernel,
        )
        self.sam_prompt_encoder = PromptEncoder(
            embed_dim=d,
            image_embedding_size=(feat, feat),
            input_image_size=(cfg.image_size, cfg.image_size),
            mask_in_chans=cfg.prompt_mask_in_chans,
        )
        self.sam_mask_decoder = MaskDecoder(
            transformer_dim=d,
            transformer=TwoWayTransformer(
                depth=cfg.decoder_depth,
                embedding_dim=d,
                num_heads=cfg.decoder_heads,
                mlp_dim=cfg.decoder_mlp_dim,
                attention_downsample_rate=cfg.decoder_attention_downsample,
            ),
            num_multimask_outputs=cfg.num_multimask_outputs,
            iou_head_depth=cfg.iou_head_depth,
            iou_head_hidden_dim=cfg.iou_head_hidden_dim,
            dynamic_multimask_via_stability=True,  # what build_sam2 switches on (official post-processing)
        )
        self.obj_ptr_proj = MLP(d, d, d, 3)
        self.obj_ptr_tpos_proj = nn.Linear(d, mem_dim) if cfg.proj_tpos_enc_in_obj_ptrs else nn.Identity()
        self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(cfg.num_maskmem, 1, 1, mem_dim))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, d))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, d))  # unused at inference; kept for the key
        self.no_obj_ptr = nn.Parameter(torch.zeros(1, d))
        if cfg.no_obj_embed_spatial:
            self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, mem_dim))
        else:
            self.no_obj_embed_spatial = None
        # optional learned mask-aware IoU head (`mask_quality.MaskQualityHead`): only where a checkpoint carries its
        # keys (`mask_quality.attach_from_state_dict`); official checkpoints never do, and then nothing changes
        self.mask_quality = None
        # optional second decoder for clicks on frames without memory (`click_decoder`): only where a checkpoint
        # carries its keys (`click_decoder.attach_from_state_dict`)
        self.click_decoder = None
        # optional border refiner of a first click's mask (`mask_refiner`): only where a checkpoint carries its
        # keys (`mask_refiner.attach_from_state_dict`)
        self.mask_refiner = None
        self._init_embeddings()

    def _init_embeddings(self) -> None:
        for p in (self.maskmem_tpos_enc, self.no_mem_embed, self.no_mem_pos_enc, self.no_obj_ptr):
            nn.init.trunc_normal_(p, std=0.02)
        if self.no_obj_embed_spatial is not None:
            nn.init.trunc_normal_(self.no_obj_embed_spatial, std=0.02)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    # ------------------------------------------------------------------ image
    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        """Run the image encoder on preprocessed frames [B, 3, S, S] (ImageNet-normalised)."""
        out = self.image_encoder(images)
        fpn, pos = out["backbone_fpn"], out["vision_pos_enc"]
        decoder = self.sam_mask_decoder
        high_res = [decoder.conv_s0(fpn[0]), decoder.conv_s1(fpn[1])]
        return ImageFeatures(vision=fpn[-1], vision_pos=pos[-1], high_res=high_res)

    def image_embedding(self, features: ImageFeatures) -> torch.Tensor:
        """Features of a frame with no memory: backbone + the learned no-memory embedding, [B, d, h, w]."""
        return features.vision + self.no_mem_embed.view(1, -1, 1, 1)

    # ------------------------------------------------------------------ SAM heads
    def decode(
        self,
        embedding: torch.Tensor,
        high_res: list[torch.Tensor],
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        mask_prompt: torch.Tensor | None = None,
        multimask: bool = False,
        object_gate: bool = True,
        pad_when_empty: bool = True,
        quality: bool = True,
        decoder: nn.Module | None = None,
    ) -> DecoderOutput:
        """Prompt encoder + mask decoder on an embedding [B, d, h, w], or [1, d, h, w] (with high_res of batch 1)
        shared by B point prompt sets (segment everything's clicks on one frame; computed once where it can be).

        point_coords [B, P, 2] are (x, y) in model-input pixels, point_labels [B, P] (1 positive, 0 negative,
        2/3 box corners, −1 padding); without points the video path uses a single padding point
        (`pad_when_empty`), while the official image predictor passes no sparse token at all. mask_prompt: [B, 1, H', W'] logits, resized to the prompt encoder's 4h × 4w.
        `object_gate` (video path) replaces the masks of absent objects by NO_OBJECT_LOGIT and their pointer
        by the learned no-object pointer; the official image predictor does not gate. `quality` False skips the
        optional mask-quality head (multi_quality / quality None) where its number would not be used. `decoder`: a mask
        decoder to use instead of `sam_mask_decoder` (the click decoder of a checkpoint that carries one).
        """
        batch = embedding.shape[0]
        if point_coords is not None:
            batch = point_coords.shape[0]
        elif mask_prompt is not None:
            batch = mask_prompt.shape[0]
        points = None
        if point_coords is not None:
            points = (point_coords, point_labels)
        elif pad_when_empty:
            points = (
                embedding.new_zeros(batch, 1, 2),
                -torch.ones(batch, 1, dtype=torch.int32, device=embedding.device),
            )
        if mask_prompt is not None:
            size = self.sam_prompt_encoder.mask_input_size
            if tuple(mask_prompt.shape[-2:]) != tuple(size):
                mask_prompt = F.interpolate(
                    mask_prompt.float(), size=size, mode="bilinear", align_corners=False, antialias=True
                )
        sparse, dense = self.sam_prompt_encoder(points=points, boxes=None, masks=mask_prompt)
        multi_logits, multi_ious, tokens, object_score = (decoder or self.sam_mask_decoder)(
            image_embeddings=embedding,
            image_pe=self.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
            repeat_image=embedding.shape[0] == 1 and batch > 1,
            high_res_features=high_res,
        )
        multi_quality = None
        if self.mask_quality is not None and quality:
            # the mask-aware head's estimate is what is *reported* (the IoU token cannot see where the mask landed);
            # the choice among candidates stays the token's, so masks, tracking and discovery are those of the
            # network without the head (measured: letting the head choose changed --auto's arrivals; model/README.md)
            multi_quality = self.mask_quality(multi_logits, high_res, point_coords, point_labels, self.image_size)
            multi_quality = multi_quality.to(multi_ious.dtype)
        present = object_score > 0
        if object_gate:
            multi_logits = torch.where(present[:, :, None, None], multi_logits, NO_OBJECT_LOGIT)
        multi_logits = multi_logits.float()
        token = tokens[:, 0]
        if multimask:
            best = torch.argmax(multi_ious, dim=-1)
            rows = torch.arange(batch, device=embedding.device)
            logits = multi_logits[rows, best].unsqueeze(1)
            iou = multi_ious[rows, best].unsqueeze(1)
            quality = None if multi_quality is None else multi_quality[rows, best].unsqueeze(1)
            if tokens.shape[1] > 1:  # one output token per candidate mask: the pointer follows the choice
                token = tokens[rows, best]
        else:
            logits, iou, quality = multi_logits, multi_ious, multi_quality
        pointer = self.obj_ptr_proj(token)
        if object_gate:
            pointer = self._gate_pointer(pointer, present.float())
        return DecoderOutput(multi_logits, multi_ious, logits, iou, pointer, object_score, multi_quality, quality)

    def decode_click(self, embedding: torch.Tensor, high_res: list[torch.Tensor], point_coords: torch.Tensor,
                     point_labels: torch.Tensor, object_gate: bool = True, quality: bool = True) -> DecoderOutput:  # fmt: skip
        """One positive click [B, 1, 2] ((x, y), model-input pixels) on a frame without memory (`image_embedding`),
        three candidates, as a session decodes a first click. With a click decoder (`click_decoder`, where the
        checkpoint carries one) the candidates, IoUs, object score and mask-quality estimates are its; the object
        pointer stays the shared decoder's (the one memory attention learned to read), switched by the click
        decoder's object score. Without one, `decode`'s answer. `object_gate`, `quality`: as in `decode`."""
        out = self.decode(embedding, high_res, point_coords, point_labels, multimask=True, object_gate=object_gate,
                          quality=quality, decoder=self.click_decoder)  # fmt: skip
        if self.click_decoder is None:
            return out
        shared = self.decode(embedding, high_res, point_coords, point_labels, multimask=True, object_gate=False,
                             quality=False)  # fmt: skip
        pointer = shared.object_pointer
        if object_gate:
            pointer = self._gate_pointer(pointer, (out.object_score > 0).float())
        return replace(out, object_pointer=pointer)

    def refine_click_mask(self, logits: torch.Tensor, grey: torch.Tensor, high_res: list[torch.Tensor]) -> torch.Tensor:
        """A first click's mask logits [B, 1, 4h, 4w] with their borders corrected by the mask refiner
        (`mask_refiner`, where the checkpoint carries one) from grey [B, 1, S, S] (the frame they were decoded from, in
        [0, 1]) and the stride-4 map high_res[0]; without one, the logits unchanged."""
        if self.mask_refiner is None:
            return logits
        return self.mask_refiner(logits, grey.to(logits.device), high_res[0])

    def _gate_pointer(self, pointer: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Hard switch to the learned no-object pointer where present [B, 1] is 0."""
        return present * pointer + (1 - present) * self.no_obj_ptr

    def mask_as_output(self, features: ImageFeatures, mask: torch.Tensor) -> DecoderOutput:
        """Take a given binary mask [B, 1, S, S] (model-input size) as the prediction itself.

        The logits are ±10, the IoU 1, the object score ±10 from whether the mask is empty, and the pointer
        comes from the decoder run on the raw (memory-free) features with the downsampled mask as prompt.
        """
        mask = mask.float()
        high = mask * MASK_AS_OUTPUT_SCALE + MASK_AS_OUTPUT_BIAS
        low = F.interpolate(
            high, size=(high.shape[-2] // 4, high.shape[-1] // 4), mode="bilinear", align_corners=False, antialias=True
        )
        iou = mask.new_ones(mask.shape[0], 1)
        # only the pointer is read: the optional mask-quality head would run for nothing
        prompt = self.mask_downsample(mask)
        pointer = self.decode(features.vision, features.high_res, mask_prompt=prompt, quality=False).object_pointer
        present = (mask.flatten(1) > 0).any(dim=1, keepdim=True).float()
        object_score = MASK_AS_OUTPUT_SCALE * present + MASK_AS_OUTPUT_BIAS
        pointer = self._gate_pointer(pointer, present)
        return DecoderOutput(low, iou, low, iou, pointer, object_score)

    def upsample_logits(self, logits: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Bilinear resize of mask logits [B, M, 4h, 4w] to `size` (default: the model input size)."""
        size = size or (self.image_size, self.image_size)
        return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)

    # ------------------------------------------------------------------ memory
    def condition_on_memory(
        self,
        features: ImageFeatures,
        memories: list[Memory],
        pointers: list[Pointer],
        max_pointer_distance: int,
    ) -> torch.Tensor:
        """Cross-attend the frame's features to the memory bank → [B, d, h, w].

        memories: spatial memories (each a whole h × w map); pointers: object pointers with their frame
        distance, whose sine encoding is normalised by `max_pointer_distance` (official: min(N, 16) − 1 for a
        stack of N frames). With no memory at all, the no-memory embedding is added instead (first frame).
        """
        if not memories and not pointers:
            return self.image_embedding(features)
        batch, d, h, w = features.vision.shape
        mem_dim = self.cfg.mem_dim
        tokens, token_pos = [], []
        if memories:
            spatial_pos = self.memory_encoder.position_encoding(features.vision[:, :1]).flatten(2).permute(2, 0, 1)
            spatial_pos = spatial_pos.expand(-1, batch, -1)
        for memory in memories:
            tokens.append(memory.features.to(features.vision.device).float().flatten(2).permute(2, 0, 1))
            token_pos.append(spatial_pos + self.maskmem_tpos_enc[memory.temporal_index])
        num_pointer_tokens = 0
        if pointers:
            vectors = torch.stack([p.vector for p in pointers], dim=0)  # [P, B, d]
            if self.cfg.add_tpos_enc_to_obj_ptrs:
                distances = torch.tensor([p.distance for p in pointers], device=vectors.device, dtype=torch.float32)
                enc_dim = d if self.cfg.proj_tpos_enc_in_obj_ptrs else mem_dim
                scale = max(max_pointer_distance, 1)  # one-frame stacks: official divides by zero here
                pos = self.obj_ptr_tpos_proj(sine_encoding_1d(distances / scale, enc_dim))
                pos = pos.unsqueeze(1).expand(-1, batch, mem_dim)
            else:
                pos = vectors.new_zeros(len(pointers), batch, mem_dim)
            if mem_dim < d:
                # a d-wide pointer becomes d / mem_dim tokens of width mem_dim
                split = d // mem_dim
                vectors = vectors.reshape(-1, batch, split, mem_dim).permute(0, 2, 1, 3).flatten(0, 1)
                pos = pos.repeat_interleave(split, dim=0)
            tokens.append(vectors)
            token_pos.append(pos)
            num_pointer_tokens = vectors.shape[0]
        memory = torch.cat(tokens, dim=0)
        memory_pos = torch.cat(token_pos, dim=0)
        curr = features.vision.flatten(2).permute(2, 0, 1)
        curr_pos = features.vision_pos.flatten(2).permute(2, 0, 1)
        out = self.memory_attention(
            curr=curr, memory=memory, curr_pos=curr_pos, memory_pos=memory_pos, num_obj_ptr_tokens=num_pointer_tokens
        )
        return out.permute(1, 2, 0).reshape(batch, d, h, w)

    def encode_memory(
        self,
        features: ImageFeatures,
        mask_logits: torch.Tensor,
        object_score: torch.Tensor,
        binarize: bool,
    ) -> torch.Tensor:
        """Memory of a frame from its raw features and mask logits [B, 1, S, S] → [B, mem_dim, h, w].

        `binarize` (frames whose mask came from clicks or a given mask) thresholds the logits at 0; otherwise
        the sigmoid probability is used. Both are mapped to ±10-scaled inputs of the mask downsampler. In 2.1
        an absent object (score ≤ 0) adds the learned no-object embedding everywhere.
        """
        mask = (mask_logits > 0).float() if binarize else torch.sigmoid(mask_logits)
        mask = mask * self.cfg.sigmoid_scale_for_mem_enc + self.cfg.sigmoid_bias_for_mem_enc
        out = self.memory_encoder(features.vision, mask, skip_mask_sigmoid=True)
        memory = out["vision_features"]
        if self.no_obj_embed_spatial is not None:
            absent = 1.0 - (object_score > 0).float()
            memory = memory + absent[..., None, None] * self.no_obj_embed_spatial[..., None, None]
        return memory
