"""The two-way transformer of the SAM mask decoder, and the plain attention layer it is built from.

The decoder's prompt tokens ("queries", [B, N, C]) and the flattened image embedding ("keys", [B, h·w, C])
update each other: tokens attend to tokens, tokens attend to the image, and the image attends back to the
tokens. Positional encodings are added to queries/keys before every attention but never to the values,
so the residual streams stay free of position information.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLP


class Attention(nn.Module):
    """Multi-head attention whose inner width may be smaller than the token width.

    q_proj maps `embedding_dim` → `embedding_dim // downsample_rate`, k_proj/v_proj map `kv_in_dim`
    (default: `embedding_dim`) → the same inner width, which is split into `num_heads` heads;
    out_proj maps back to `embedding_dim`. Scaled dot-product attention with the usual 1/√head_dim scale.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        downsample_rate: int = 1,
        dropout: float = 0.0,
        kv_in_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.kv_in_dim = embedding_dim if kv_in_dim is None else kv_in_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the inner width {self.internal_dim}")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(self.kv_in_dim, self.internal_dim)
        self.v_proj = nn.Linear(self.kv_in_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)
        self.dropout_p = dropout

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, inner] → [B, heads, N, inner/heads]."""
        batch, tokens, width = x.shape
        return x.reshape(batch, tokens, self.num_heads, width // self.num_heads).transpose(1, 2)

    @staticmethod
    def merge_heads(x: torch.Tensor) -> torch.Tensor:
        """[B, heads, N, d] → [B, N, heads·d]."""
        batch, heads, tokens, head_dim = x.shape
        return x.transpose(1, 2).reshape(batch, tokens, heads * head_dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [B, Nq, embedding_dim], k and v [B, Nk, kv_in_dim] → [B, Nq, embedding_dim]. Either side may have
        batch 1 for all B (one image for several prompt sets): it is projected once, then broadcast."""
        batch = max(q.shape[0], k.shape[0])
        q = self.split_heads(self.q_proj(q)).expand(batch, -1, -1, -1)
        k = self.split_heads(self.k_proj(k)).expand(batch, -1, -1, -1)
        v = self.split_heads(self.v_proj(v)).expand(batch, -1, -1, -1)
        dropout_p = self.dropout_p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        return self.out_proj(self.merge_heads(out))


class TwoWayAttentionBlock(nn.Module):
    """One decoder layer: token self-attention, token→image attention, token MLP, image→token attention.

    Each step is residual and followed by a LayerNorm (norm1…norm4), except that the very first layer of
    the transformer (`skip_first_layer_pe`) runs its self-attention without positional encoding *and
    without the residual*: at that point the queries are the raw prompt embeddings, which already carry
    the positions, and the layer replaces them by their attended mix.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, downsample_rate=attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLP(embedding_dim, mlp_dim, embedding_dim, num_layers=2, activation=activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, downsample_rate=attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """queries [B, N, C] (query_pe the same shape), keys [B, h·w, C] (key_pe [1 or B, h·w, C])."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)

        q = queries + query_pe
        k = keys + key_pe  # the keys do not change before the image attends back: the same sum serves both
        queries = self.norm2(queries + self.cross_attn_token_to_image(q=q, k=k, v=keys))

        queries = self.norm3(queries + self.mlp(queries))

        # The image attends to the updated tokens (roles of q and k swapped).
        q = queries + query_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(q=k, k=q, v=queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """`depth` two-way blocks, then a last token→image attention with a final LayerNorm on the tokens."""

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                activation=activation,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, downsample_rate=attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        point_embedding: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the transformer.

        image_embedding [B or 1, C, h, w] (1: one image for all B prompt sets; the first layer's image-side
        projections then run once); image_pe [1 or B, C, h, w] (broadcast over the batch);
        point_embedding [B, N, C] — the tokens, which also serve as their own positional encoding.
        Returns (tokens [B, N, C], image tokens [B, h·w, C]).
        """
        keys = image_embedding.flatten(2).transpose(1, 2)  # [B, h·w, C]
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries=queries, keys=keys, query_pe=point_embedding, key_pe=key_pe)

        q = queries + point_embedding
        k = keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q=q, k=k, v=keys))
        return queries, keys
