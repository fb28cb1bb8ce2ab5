"""SAM's prompt encoder: clicks and boxes → sparse tokens, a mask prompt → a dense map.

Coordinates here are SAM's internal ones: (x, y) in pixels of the square model input
(0 … input_image_size), *not* napari's (row, col). The callers convert.

Point labels:
    -1  padding ("not a point"): its position encoding is dropped, only `not_a_point_embed` remains
     0  negative click          → + point_embeddings[0]
     1  positive click          → + point_embeddings[1]
     2  top-left box corner     → + point_embeddings[2]
     3  bottom-right box corner → + point_embeddings[3]
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .common import InferenceCache, LayerNorm2d

NUM_POINT_LABELS = 4  # negative, positive, box corner 1, box corner 2
PAD_LABEL = -1


class RandomFourierPositionEncoding(nn.Module):
    """Position encoding with random spatial frequencies (Tancik et al. 2020), 2·num_feats channels.

    A point (x, y) normalised to [0, 1]² is mapped to [-1, 1]², projected by a fixed Gaussian matrix
    G [2, num_feats] and encoded as [sin(2π·p@G), cos(2π·p@G)]. G is a buffer stored in the checkpoint
    (`positional_encoding_gaussian_matrix`), so the encoding is reproduced exactly on load.
    """

    def __init__(self, num_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_feats))

    def encode_unit(self, coords: torch.Tensor) -> torch.Tensor:
        """coords [..., 2] as (x, y) in [0, 1] → [..., 2·num_feats]."""
        projected = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix
        angles = projected * (2 * math.pi)
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    def encode_pixels(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """coords [..., 2] as (x, y) in pixels of an image of size (H, W) → [..., 2·num_feats]."""
        height, width = image_size
        unit = torch.stack([coords[..., 0] / width, coords[..., 1] / height], dim=-1)
        return self.encode_unit(unit.float())

    def grid(self, size: tuple[int, int]) -> torch.Tensor:
        """The encoding at the centre of every cell of an (h, w) grid → [2·num_feats, h, w]."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        unit = torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], dim=-1)  # (x, y) per cell
        return self.encode_unit(unit).permute(2, 0, 1)


class PromptEncoder(nn.Module):
    """Encodes points, boxes and a mask prompt for the mask decoder.

    embed_dim: token width C; image_embedding_size: (h, w) of the image embedding the decoder works on;
    input_image_size: (H, W) of the model input in pixels (point coordinates refer to it);
    mask_in_chans: hidden width of the mask-prompt downscaler. A mask prompt must be [B, 1, 4h, 4w].
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = tuple(image_embedding_size)
        self.input_image_size = tuple(input_image_size)
        self.pe_layer = RandomFourierPositionEncoding(embed_dim // 2)
        self.num_point_embeddings = NUM_POINT_LABELS
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(NUM_POINT_LABELS))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * self.image_embedding_size[0], 4 * self.image_embedding_size[1])
        # Two stride-2 convolutions bring the 4h × 4w mask down to the h × w embedding grid.
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)
        self._dense_pe_cache = InferenceCache()

    def get_dense_pe(self) -> torch.Tensor:
        """Position encoding of every cell of the image embedding, [1, C, h, w] (treat it as read-only).

        It depends only on the Gaussian matrix, yet costs an h·w·C sin + cos: at inference (no autograd)
        it is computed once and reused while the matrix (identity, in-place version), the device and the
        inference / autocast state stay the same.
        """
        return self._dense_pe_cache.get(
            lambda: self.pe_layer.grid(self.image_embedding_size).unsqueeze(0),
            self.pe_layer.positional_encoding_gaussian_matrix,
        )

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """coords [B, N, 2] (x, y) in input pixels, labels [B, N] → tokens [B, N (+1 if pad), C]."""
        coords = coords + 0.5  # a pixel index refers to the pixel's centre
        if pad:
            # A padding token stands in for the missing box (the decoder was trained with one).
            batch = coords.shape[0]
            coords = torch.cat([coords, coords.new_zeros(batch, 1, 2)], dim=1)
            labels = torch.cat([labels, torch.full((batch, 1), PAD_LABEL, dtype=labels.dtype, device=labels.device)], 1)
        tokens = self.pe_layer.encode_pixels(coords, self.input_image_size)
        labels = labels.unsqueeze(-1)
        tokens = torch.where(labels == PAD_LABEL, self.not_a_point_embed.weight.expand_as(tokens), tokens)
        for label, embedding in enumerate(self.point_embeddings):
            tokens = torch.where(labels == label, tokens + embedding.weight, tokens)
        return tokens

    def embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """boxes [B, 4] as (x0, y0, x1, y1) in input pixels → two corner tokens [B, 2, C]."""
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        tokens = self.pe_layer.encode_pixels(corners, self.input_image_size)
        corner_embeddings = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight])  # [2, C]
        return tokens + corner_embeddings

    def embed_mask(self, masks: torch.Tensor) -> torch.Tensor:
        """Mask logits [B, 1, 4h, 4w] → [B, C, h, w]."""
        return self.mask_downscaling(masks)

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode the prompts.

        points: (coords [B, N, 2] as (x, y) in input pixels, labels [B, N]) or None; a padding point is
        appended when `boxes` is None. boxes: [B, 4] (x0, y0, x1, y1) or None. masks: [B, 1, 4h, 4w] or None.
        Returns sparse tokens [B, N', C] (points first, then box corners; N' = 0 without points and boxes)
        and dense embeddings [B, C, h, w] (the encoded mask, or `no_mask_embed` everywhere).
        """
        if points is not None:
            batch = points[0].shape[0]
        elif boxes is not None:
            batch = boxes.shape[0]
        elif masks is not None:
            batch = masks.shape[0]
        else:
            batch = 1
        weight = self.no_mask_embed.weight
        sparse = [weight.new_empty(batch, 0, self.embed_dim)]
        if points is not None:
            sparse.append(self.embed_points(points[0], points[1], pad=boxes is None))
        if boxes is not None:
            sparse.append(self.embed_boxes(boxes))
        sparse = torch.cat(sparse, dim=1)

        if masks is not None:
            dense = self.embed_mask(masks)
        else:
            h, w = self.image_embedding_size
            dense = weight.reshape(1, -1, 1, 1).expand(batch, -1, h, w)
        return sparse, dense
