"""Hiera, the hierarchical vision transformer that SAM 2 uses as its image trunk.

Token grids are channels-last, [B, H, W, C], inside the trunk. A 7×7 stride-4 convolution makes the first grid
(S/4 × S/4 for an S × S image); each following stage halves the grid and (by default) doubles the width and the
number of heads. Most blocks attend inside non-overlapping windows; the blocks listed in `global_att_blocks`
attend over the whole grid.

The grid shrinks inside the first block of stages 2, 3, 4 (the "q-pool" block): its queries are max-pooled
2×2, so attention returns one token per 2×2 group, and its residual branch is projected to the new width and
pooled the same way. Window sizes lag one block behind the stages: that q-pool block still partitions its
(un-pooled) input with the previous stage's window, so its output windows are half that size.

Everything is taken from `HieraConfig` and the input shape: any input whose side is a multiple of
32 (patch stride 4 × window 8 of the first stage, for the official configs) works.
Parameter names follow the official checkpoints (`image_encoder.trunk.*`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLP, InferenceCache
from .configs import HieraConfig


# ---------------------------------------------------------------------------------------------- windows
def partition_windows(grid: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Cut a grid [B, H, W, C] into windows [B·nh·nw, window, window, C] (row-major window order).

    H and W are zero-padded at the bottom / right up to multiples of `window`; returns the windows and the
    padded size (Hp, Wp).
    """
    b, h, w, c = grid.shape
    pad_h, pad_w = (-h) % window, (-w) % window
    if pad_h or pad_w:
        grid = F.pad(grid, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    windows = grid.view(b, hp // window, window, wp // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return windows.reshape(-1, window, window, c), (hp, wp)


def add_merged_windows(
    grid: torch.Tensor, windows: torch.Tensor, window: int, padded_hw: tuple[int, int]
) -> torch.Tensor:
    """`grid` [B, H, W, C] + `merge_windows(windows, …)`, without materialising the merged grid.

    Without padding ((H, W) == padded_hw) the windows are read through a strided view, which saves one full
    copy of the grid; the sum is elementwise, so the values are exactly those of merge-then-add.
    """
    b, h, w, c = grid.shape
    if (h, w) != tuple(padded_hw):
        return grid + merge_windows(windows, window, padded_hw, (h, w))
    nh, nw = h // window, w // window
    # [B·nh·nw, win, win, C] → [B, nh, win(row), nw, win(col), C]: the grid's own index order
    merged_view = windows.reshape(b, nh, nw, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return (grid.reshape(b, nh, window, nw, window, c) + merged_view).reshape(b, h, w, c)


def merge_windows(windows: torch.Tensor, window: int, padded_hw: tuple[int, int], hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of `partition_windows`: windows [B·nh·nw, window, window, C] → grid [B, H, W, C].

    `padded_hw` is the padded grid the windows tile, `hw` the size kept (the padding is cut off).
    """
    hp, wp = padded_hw
    h, w = hw
    nh, nw = hp // window, wp // window
    grid = windows.reshape(-1, nh, nw, window, window, windows.shape[-1]).permute(0, 1, 3, 2, 4, 5)
    grid = grid.reshape(-1, hp, wp, windows.shape[-1])
    return grid[:, :h, :w, :] if (hp, wp) != (h, w) else grid


def max_pool_grid(grid: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """Max pooling (kernel = stride, no padding, floor) of a channels-last grid [B, H, W, C]."""
    pooled = F.max_pool2d(grid.permute(0, 3, 1, 2), kernel_size=stride, stride=stride)
    return pooled.permute(0, 2, 3, 1)


# ---------------------------------------------------------------------------------------------- modules
class PatchEmbed(nn.Module):
    """Pixels [B, 3, S, S] → token grid [B, S/stride, S/stride, C] by one strided convolution (`proj`)."""

    def __init__(self, embed_dim: int, kernel: int = 7, stride: int = 4, padding: int = 3, in_chans: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel, stride=stride, padding=padding)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images).permute(0, 2, 3, 1)


class MultiScaleAttention(nn.Module):
    """Multi-head self-attention over a grid, optionally with max-pooled queries (the grid then shrinks).

    `qkv` maps `dim` → 3·`dim_out`: a q-pool block already attends at the new width.
    """

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_stride: tuple[int, int] | None = None):
        super().__init__()
        if dim_out % num_heads:
            raise ValueError(f"width {dim_out} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q_stride = q_stride
        self.qkv = nn.Linear(dim, 3 * dim_out)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, H, W, dim] (N = batch × windows) → [N, H', W', dim_out]; H' = H / stride with q-pooling."""
        n, h, w, _ = x.shape
        # [N, H·W, 3, heads, head_dim] → three [N, H·W, heads, head_dim]
        q, k, v = self.qkv(x).reshape(n, h * w, 3, self.num_heads, -1).unbind(2)
        if self.q_stride is not None:
            q = max_pool_grid(q.reshape(n, h, w, -1), self.q_stride)  # pools every head's channels alike
            h, w = q.shape[1:3]
            q = q.reshape(n, h * w, self.num_heads, -1)
        # SDPA wants [N, heads, tokens, head_dim]; default scale 1/sqrt(head_dim)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(n, h, w, -1))


class MultiScaleBlock(nn.Module):
    """Pre-norm transformer block: (windowed, maybe q-pooled) attention, then a GELU MLP; both residual.

    `window` = 0 means global attention. When the width changes, the residual is `proj(norm1(x))`.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        window: int,
        q_stride: tuple[int, int] | None = None,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.window = window
        self.q_stride = q_stride
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, q_stride)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP(dim_out, int(dim_out * mlp_ratio), dim_out, num_layers=2, activation=nn.GELU)
        if dim != dim_out:  # the key `blocks.N.proj` exists only on width-changing blocks
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, H, W, dim] → [B, H', W', dim_out] (H' = H / stride in a q-pool block)."""
        normed = self.norm1(x)
        residual = self.proj(normed) if self.dim != self.dim_out else x
        if self.q_stride is not None:
            residual = max_pool_grid(residual, self.q_stride)

        if self.window == 0:
            x = residual + self.attn(normed)
        else:
            windows, padded_hw = partition_windows(normed, self.window)
            windows = self.attn(windows)
            out_window = self.window
            if self.q_stride is not None:
                # every window (padding included) was pooled: smaller windows tiling a smaller padded grid
                out_window = self.window // self.q_stride[0]
                out_h, out_w = residual.shape[1:3]
                padded_hw = (out_h + (-out_h) % out_window, out_w + (-out_w) % out_window)
            x = add_merged_windows(residual, windows, out_window, padded_hw)
        return x + self.mlp(self.norm2(x))


class Hiera(nn.Module):
    """The Hiera trunk: images [B, 3, S, S] → one map per stage, [B, C_i, S/4/2^i, S/4/2^i], finest first.

    Attributes: `stage_ends` (index of each stage's last block), `channel_list` (stage widths, coarsest
    first, as the neck lists them), `blocks`, `patch_embed`, `pos_embed` (the background position
    embedding, resized to the grid) and `pos_embed_window` (tiled over the grid, one copy per first-stage
    window).
    """

    def __init__(self, cfg: HieraConfig):
        super().__init__()
        n_stages = len(cfg.stages)
        if len(cfg.window_spec) != n_stages:
            raise ValueError("HieraConfig: window_spec needs one window size per stage")
        if not 0 <= cfg.q_pool < n_stages:
            raise ValueError(f"HieraConfig: q_pool must be in [0, {n_stages - 1}]")
        self.cfg = cfg
        self.stage_ends = [sum(cfg.stages[: i + 1]) - 1 for i in range(n_stages)]
        q_pool_blocks = {end + 1 for end in self.stage_ends[:-1][: cfg.q_pool]}

        self.patch_embed = PatchEmbed(cfg.embed_dim, cfg.patch_kernel, cfg.patch_stride, cfg.patch_padding)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.embed_dim, *cfg.window_pos_embed_bkg_spatial_size))
        # as in the official code, the window embedding has the first stage's window size (8 in all 8 configs)
        first_window = cfg.window_spec[0]
        self.pos_embed_window = nn.Parameter(torch.zeros(1, cfg.embed_dim, first_window, first_window))

        self.blocks = nn.ModuleList()
        dim, heads, stage = cfg.embed_dim, cfg.num_heads, 0
        for i in range(cfg.depth):
            # read the window before stepping to the next stage: the "lag by one block" rule
            window = 0 if i in cfg.global_att_blocks else cfg.window_spec[stage]
            dim_out = dim
            if i - 1 in self.stage_ends:  # first block of a new stage
                dim_out = int(dim * cfg.dim_mul)
                heads = int(heads * cfg.head_mul)
                stage += 1
            q_stride = tuple(cfg.q_stride) if i in q_pool_blocks else None
            self.blocks.append(MultiScaleBlock(dim, dim_out, heads, window, q_stride, cfg.mlp_ratio))
            dim = dim_out
        self.channel_list = tuple(self.blocks[end].dim_out for end in reversed(self.stage_ends))
        self._pos_cache = InferenceCache()  # the last position embedding computed at inference

    def position_embedding(self, height: int, width: int) -> torch.Tensor:
        """[1, H, W, C]: the background embedding resized bicubically to H × W + the window embedding tiled.

        H and W must be multiples of the window embedding's size.
        """
        wh, ww = self.pos_embed_window.shape[-2:]
        if height % wh or width % ww:
            stride = self.cfg.patch_stride
            raise ValueError(
                f"Hiera: the {height}×{width} token grid does not tile with the {wh}×{ww} window position "
                f"embedding; the input side must be a multiple of {stride * wh} pixels "
                f"(got {height * stride}×{width * stride})"
            )
        # The bicubic resize (single-threaded, ~0.1 s at 1024 px) depends only on the two parameters: at
        # inference it is computed once per grid size and reused until the weights, device or precision
        # change (see InferenceCache).
        return self._pos_cache.get(
            lambda: self._compute_position_embedding(height, width),
            self.pos_embed,
            self.pos_embed_window,
            extra=(height, width),
        )

    def _compute_position_embedding(self, height: int, width: int) -> torch.Tensor:
        wh, ww = self.pos_embed_window.shape[-2:]
        background = F.interpolate(self.pos_embed, size=(height, width), mode="bicubic")
        tiled = self.pos_embed_window.tile(1, 1, height // wh, width // ww)
        # channels-last and contiguous: the trunk's token grid takes this layout from it (see forward)
        return (background + tiled).permute(0, 2, 3, 1).contiguous()

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images [B, 3, S, S] → [B, C_i, S/4/2^i, S/4/2^i] for each stage i, highest resolution first."""
        x = self.patch_embed(images)  # a channels-first conv output seen as [B, H, W, C] (strided)
        # The sum takes the memory layout of its first operand: with the contiguous embedding first, the
        # grid becomes contiguous channels-last here, once, instead of every LayerNorm of stage 1 copying
        # it (the values are the same: addition is commutative).
        x = self.position_embedding(x.shape[1], x.shape[2]) + x
        # The official trunk keeps the conv's channels-first layout until the first width-changing block
        # (whose residual is a fresh projection). The neck's 1×1 convolutions choose their kernel by layout,
        # and a different kernel rounds differently: maps from that stretch are handed on channels-first
        # contiguous, as the official trunk hands them, so that the outputs stay bitwise equal.
        channels_first = True
        stage_maps = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            channels_first = channels_first and block.dim == block.dim_out
            if i in self.stage_ends:
                stage_map = x.permute(0, 3, 1, 2)
                stage_maps.append(stage_map.contiguous() if channels_first else stage_map)
        return stage_maps
