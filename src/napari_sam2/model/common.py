"""Small building blocks shared by several parts of the network."""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn


class InferenceCache:
    """One value derived from some parameters / buffers, computed once and reused at inference.

    `get(compute, *tensors)` returns `compute()`, recomputing it whenever anything it may depend on
    changed: each tensor's storage and in-place version (`load_state_dict` copies in place, `.to()` makes
    new storage), device, dtype, the inference-mode / autocast state and `extra`. The storages of the
    tensors last used are kept alive, so a new tensor cannot reuse their address and look unchanged.
    Under autograd nothing is cached (the value must be part of the graph). Treat the value as read-only.
    """

    def __init__(self) -> None:
        self._entry: tuple | None = None  # (key, value, kept-alive tensors), replaced as a whole

    def get(self, compute, *tensors: torch.Tensor, extra: tuple = ()):
        if torch.is_grad_enabled():
            return compute()
        device_type = tensors[0].device.type
        try:  # torch >= 2.4
            autocast = (torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))
        except (TypeError, AttributeError):
            autocast = (torch.is_autocast_enabled(), torch.is_autocast_cpu_enabled(), torch.get_autocast_gpu_dtype())
        # weights made under inference mode (a model loaded inside `torch.inference_mode()`) have no version
        # counter; they cannot be changed in place outside inference mode, so their storage identifies them
        key = tuple((t.data_ptr(), -1 if t.is_inference() else t._version, t.device, t.dtype) for t in tensors)
        key += (torch.is_inference_mode_enabled(), autocast) + tuple(extra)
        entry = self._entry
        if entry is None or entry[0] != key:
            entry = (key, compute(), tuple(t.detach() for t in tensors))
            self._entry = entry
        return entry[1]


class MLP(nn.Module):
    """`num_layers` linear layers with an activation between them (none after the last).

    The layers are kept in `self.layers` so checkpoint keys read `<name>.layers.<i>.weight`.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        activation: type[nn.Module] = nn.ReLU,
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__()
        widths = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))
        self.act = activation()
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = self.act(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a [B, C, H, W] tensor."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Statistics in fp32 whatever the input's dtype: under bf16 autocast the convolutions around it give
        # bf16, and a variance of bf16 squares (8-bit mantissa) is off by percents. The result goes back to
        # the input's dtype so the next convolution takes it as it would (fp32 inputs are unchanged).
        dtype = x.dtype
        x = x.float()
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return (self.weight[:, None, None] * x + self.bias[:, None, None]).to(dtype)


def sine_frequencies(num_feats: int, temperature: float, device=None) -> torch.Tensor:
    """Frequencies of the transformer sine encoding: temperature^(2·⌊i/2⌋ / num_feats), i < num_feats."""
    i = torch.arange(num_feats, dtype=torch.float32, device=device)
    return temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / num_feats)


class PositionEmbeddingSine(nn.Module):
    """2-D sine position encoding of a feature map (DETR style), `num_pos_feats` channels.

    The first half of the channels encodes the row (y), the second half the column (x); within each
    half, even channels carry sin and odd channels cos. Positions are normalised to (0, 2π].
    Results are cached per (H, W) since they depend on the shape only.
    """

    def __init__(self, num_pos_feats: int, temperature: float = 10000.0) -> None:
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError("the sine position encoding needs an even number of channels")
        self.half = num_pos_feats // 2
        self.temperature = temperature
        self.scale = 2 * math.pi
        self._cache: dict[tuple, torch.Tensor] = {}

    @torch.no_grad()
    def encoding(self, height: int, width: int, device) -> torch.Tensor:
        """The encoding of an H×W grid, shape [C, H, W]."""
        key = (height, width, str(device))
        if key not in self._cache:
            eps = 1e-6
            ys = torch.arange(1, height + 1, dtype=torch.float32, device=device)
            xs = torch.arange(1, width + 1, dtype=torch.float32, device=device)
            ys = ys / (ys[-1] + eps) * self.scale
            xs = xs / (xs[-1] + eps) * self.scale
            freqs = sine_frequencies(self.half, self.temperature, device)
            pos_y = _interleave_sin_cos(ys[:, None] / freqs)  # [H, half]
            pos_x = _interleave_sin_cos(xs[:, None] / freqs)  # [W, half]
            pe = torch.cat(
                [pos_y[:, None, :].expand(height, width, -1), pos_x[None, :, :].expand(height, width, -1)],
                dim=-1,
            )
            self._cache[key] = pe.permute(2, 0, 1).contiguous()
        return self._cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encoding for a feature map x [B, *, H, W] → [B, C, H, W] (in x's dtype)."""
        pe = self.encoding(x.shape[-2], x.shape[-1], x.device)
        return pe.to(x.dtype)[None].expand(x.shape[0], -1, -1, -1)


def _interleave_sin_cos(angles: torch.Tensor) -> torch.Tensor:
    """[..., F] angles → [..., F]: sin of the even columns and cos of the odd ones, interleaved."""
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)


def sine_encoding_1d(positions: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """1-D sine encoding of (fractional) positions [...] → [..., dim]: all sines first, then all cosines."""
    freqs = sine_frequencies(dim // 2, temperature, positions.device)
    angles = positions.unsqueeze(-1) / freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)
