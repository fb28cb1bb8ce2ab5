"""Memory attention: condition the current frame's features on the memory bank, with 2-D axial RoPE.

The current frame is a square grid of side×side tokens (row-major: token n sits at row n // side,
column n % side). The memory bank is a sequence of spatial memory frames, each a grid of the same size,
followed by object-pointer tokens. Each layer is pre-norm:

    x = x + SelfAttn(LN1(x))                          RoPE on queries and keys
    x = x + CrossAttn(q=LN2(x), k=mem + mem_pos, v=mem) RoPE on queries and on the spatial memory keys
    x = x + Linear2(ReLU(Linear1(LN3(x))))

and a final LayerNorm follows the last layer. The input is x = curr + 0.1·curr_pos; position encodings
are otherwise only added to the cross-attention keys. Every spatial memory frame gets the same rotations
as the query grid (the table is repeated frame by frame), so a memory token at (row, col) of any frame
"looks" as if it sat at (row, col) of the current frame; pointer tokens carry no position and are not
rotated. Parameter names follow the official checkpoints (`memory_attention.*` keys).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from .precision import autocast_dtype
from .transformer import Attention


@functools.lru_cache(maxsize=16)
def axial_rope_table(
    head_dim: int, side: int, theta: float = 10000.0, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles of a side×side grid, each [side², head_dim / 2] (fp32).

    Channel pair j (channels 2j, 2j+1) of token n = row·side + col turns by
    col·f_j for j < head_dim/4 and by row·f_(j − head_dim/4) otherwise, f_i = theta^(−4i / head_dim).
    """
    if head_dim % 4:
        raise ValueError(f"axial RoPE needs a head dim divisible by 4, got {head_dim}")
    # Normal (not inference) tensors, so a table first built under inference_mode stays usable with autograd.
    with torch.inference_mode(False), torch.no_grad():
        exponents = torch.arange(0, head_dim, 4, dtype=torch.float32, device=device) / head_dim
        freqs = 1.0 / (theta**exponents)  # [head_dim / 4]
        token = torch.arange(side * side, dtype=torch.float32, device=device)
        col = token % side
        row = torch.div(token, side, rounding_mode="floor")
        angles = torch.cat([torch.outer(col, freqs), torch.outer(row, freqs)], dim=-1)  # [side², head_dim / 2]
        return angles.cos(), angles.sin()


@functools.lru_cache(maxsize=16)
def axial_rope_rotations(
    head_dim: int, side: int, theta: float = 10000.0, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The rotations of `axial_rope_table` as unit complex numbers cos + i·sin, [side², head_dim / 2] complex64."""
    cos, sin = axial_rope_table(head_dim, side, theta, device)
    with torch.inference_mode(False), torch.no_grad():
        return torch.complex(cos, sin)


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs (x[..., 2j], x[..., 2j+1]) of x [..., N, D] by the angles of
    cos/sin [N, D/2]. Computed in fp32 (as the official, whatever x's dtype), returned in x's dtype."""
    turned = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)).contiguous()) * torch.complex(cos, sin)
    return torch.view_as_real(turned).flatten(-2).to(x.dtype)


def rotate_pairs_(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """In place: rotate the channel pairs of x [..., N, D] by `rotations` [N, D/2] (complex, see
    `axial_rope_rotations`). One complex multiply in fp32 (the official's arithmetic; bf16 inputs are widened
    first and rounded back once), instead of separate cos/sin products, a stack and a concatenation: on a CPU
    the elementwise passes over the memory keys cost more than the bf16 attention itself did. Returns x.
    Needs x's last dimension contiguous (true of a projection's output split into heads) and no autograd."""
    if x.dtype == torch.float32:
        torch.view_as_complex(x.unflatten(-1, (-1, 2))).mul_(rotations)
    else:
        wide = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
        wide.mul_(rotations)
        x.copy_(torch.view_as_real(wide).flatten(-2))
    return x


def grid_side(num_tokens: int) -> int:
    """Side of the square grid with `num_tokens` tokens; raises if there is none."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"RoPE attention needs a square grid of queries, got {num_tokens} tokens")
    return side


class RoPEAttention(Attention):
    """Multi-head attention with 2-D axial rotary position encoding on queries and (spatial) keys.

    q_proj: embedding_dim → inner (= embedding_dim // downsample_rate), k_proj / v_proj: kv_in_dim → inner,
    out_proj: inner → embedding_dim; RoPE acts per head (head dim = inner / num_heads, a multiple of 4).
    `feat_size` is the side of the expected query grid; other square grids work too (their table is
    built on first use). With `rope_k_repeat` (cross-attention to memory) the keys may be several frames
    of the query grid, each rotated like the queries; otherwise keys must match the queries one to one.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        downsample_rate: int = 1,
        dropout: float = 0.0,
        kv_in_dim: int | None = None,
        *,
        feat_size: int,
        rope_theta: float = 10000.0,
        rope_k_repeat: bool = False,
    ) -> None:
        super().__init__(embedding_dim, num_heads, downsample_rate, dropout, kv_in_dim)
        self.head_dim = self.internal_dim // num_heads
        if self.head_dim % 4:
            raise ValueError(f"axial RoPE needs a head dim divisible by 4, got {self.head_dim}")
        self.feat_size = feat_size
        self.rope_theta = float(rope_theta)
        self.rope_k_repeat = rope_k_repeat

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_k_exclude_rope: int = 0) -> torch.Tensor:
        """q [B, Lq, embedding_dim] (Lq = side², row-major grid), k and v [B, Lk, kv_in_dim]
        → [B, Lq, embedding_dim].

        The last `num_k_exclude_rope` keys (object pointers) are not rotated; the others must be whole
        frames of the query grid (exactly one frame without `rope_k_repeat`).
        """
        q = self.split_heads(self.q_proj(q))
        k = self.split_heads(self.k_proj(k))
        v = self.split_heads(self.v_proj(v))

        num_queries, num_keys = q.shape[-2], k.shape[-2]
        num_rope_keys = num_keys - num_k_exclude_rope
        if num_rope_keys < 0:
            raise ValueError(f"cannot exclude {num_k_exclude_rope} of {num_keys} keys from RoPE")
        frames, leftover = divmod(num_rope_keys, num_queries)
        if leftover or (not self.rope_k_repeat and (num_keys != num_queries or frames != 1)):
            raise ValueError(
                f"{num_rope_keys} rotated keys are not whole {num_queries}-token frames"
                + ("" if self.rope_k_repeat else " (exactly one frame expected without rope_k_repeat)")
            )
        side = self.feat_size if num_queries == self.feat_size**2 else grid_side(num_queries)
        if torch.is_grad_enabled():  # training: out of place, so autograd sees plain functions
            cos, sin = axial_rope_table(self.head_dim, side, self.rope_theta, q.device)
            q = rotate_pairs(q, cos, sin)
            if frames:
                spatial = k[:, :, :num_rope_keys].unflatten(2, (frames, num_queries))  # [B, heads, frames, Lq, hd]
                spatial = rotate_pairs(spatial, cos, sin).flatten(2, 3)
                k = torch.cat([spatial, k[:, :, num_rope_keys:]], dim=2)
        else:  # inference: q and k are fresh projections, rotated where they lie (no copies)
            rotations = axial_rope_rotations(self.head_dim, side, self.rope_theta, q.device)
            rotate_pairs_(q, rotations)
            if frames:
                rotate_pairs_(k[:, :, :num_rope_keys].unflatten(2, (frames, num_queries)), rotations)

        dropout_p = self.dropout_p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        return self.out_proj(self.merge_heads(out))


_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


class MemoryAttentionLayer(nn.Module):
    """One pre-norm layer: RoPE self-attention, RoPE cross-attention to the memory, MLP (batch first).

    The memory position encoding is added to the cross-attention keys only (not to queries, not to the
    self-attention) — the configuration of every official SAM 2 / 2.1 model. Dropout acts in training only.
    """

    def __init__(
        self,
        d_model: int,
        dim_feedforward: int,
        num_heads: int,
        mem_dim: int,
        feat_size: int,
        dropout: float = 0.0,
        rope_theta: float = 10000.0,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.self_attn = RoPEAttention(d_model, num_heads, dropout=dropout, feat_size=feat_size, rope_theta=rope_theta)
        self.cross_attn_image = RoPEAttention(
            d_model,
            num_heads,
            dropout=dropout,
            kv_in_dim=mem_dim,
            feat_size=feat_size,
            rope_theta=rope_theta,
            rope_k_repeat=True,
        )
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.activation = _ACTIVATIONS[activation]

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor | None,
        num_obj_ptr_tokens: int = 0,
        memory_keys: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [B, L, d_model], memory and memory_pos [B, M, mem_dim] → [B, L, d_model].

        `memory_keys` = memory + memory_pos, when the caller has it already (then memory_pos is not used).
        """
        h = self.norm1(x)
        x = x + self.dropout(self.self_attn(h, h, h))
        h = self.norm2(x)
        keys = memory + memory_pos if memory_keys is None else memory_keys
        attended = self.cross_attn_image(h, keys, memory, num_k_exclude_rope=num_obj_ptr_tokens)
        x = x + self.dropout(attended)
        h = self.norm3(x)
        x = x + self.dropout(self.linear2(self.dropout(self.activation(self.linear1(h)))))
        return x


class MemoryAttention(nn.Module):
    """`num_layers` MemoryAttentionLayers (keys `layers.<i>.*`) and a final LayerNorm (`norm`).

    Sequence-first at the interface, like the official module: the caller flattens the feature maps
    row-major into tokens.
    """

    def __init__(
        self,
        d_model: int,
        num_layers: int,
        dim_feedforward: int,
        num_heads: int,
        mem_dim: int,
        feat_size: int,
        dropout: float = 0.0,
        rope_theta: float = 10000.0,
        activation: str = "relu",
        pos_enc_at_input: bool = True,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.layers = nn.ModuleList(
            MemoryAttentionLayer(
                d_model, dim_feedforward, num_heads, mem_dim, feat_size, dropout, rope_theta, activation
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.pos_enc_at_input = pos_enc_at_input

    def forward(
        self,
        curr: torch.Tensor,
        memory: torch.Tensor,
        curr_pos: torch.Tensor,
        memory_pos: torch.Tensor,
        num_obj_ptr_tokens: int = 0,
    ) -> torch.Tensor:
        """curr, curr_pos [L, B, d_model] (L = side², row-major); memory, memory_pos [M, B, mem_dim]
        (spatial frames of L tokens each, then `num_obj_ptr_tokens` pointer tokens) → [L, B, d_model]."""
        if curr.shape[1] != memory.shape[1]:
            raise ValueError(f"batch sizes differ: curr {curr.shape[1]}, memory {memory.shape[1]}")
        x = curr + 0.1 * curr_pos if self.pos_enc_at_input else curr
        x = x.transpose(0, 1)
        # The keys' input memory + memory_pos is the same in every layer: summed once (in the memory's dtype,
        # fp32 as in the official, which sums in each layer). Under autocast the k/v projections of every layer
        # would cast these [M, mem_dim] tensors to bf16 again; cast once here instead (the same values), and
        # batch first and contiguous, so no layer copies them either.
        keys = (memory + memory_pos).transpose(0, 1)
        values = memory.transpose(0, 1)
        dtype = autocast_dtype(x.device)
        keys = keys.to(dtype or keys.dtype, memory_format=torch.contiguous_format)
        values = values.to(dtype or values.dtype, memory_format=torch.contiguous_format)
        for layer in self.layers:
            x = layer(x, values, None, num_obj_ptr_tokens, memory_keys=keys)
        return self.norm(x).transpose(0, 1)
