"""The three torchvision transforms that the official SAM2ImagePredictor imports, for a test without torchvision.

torchvision's PyPI build does not import beside the CPU torch used in CI. On float tensors its transforms are
these calls (torchvision >= 0.17): ToTensor = HWC uint8 → CHW float / 255; Resize = bilinear interpolation
with antialiasing; Normalize = (x − mean) / std. The official code torch.jit.scripts Resize and Normalize,
so they are written script-compatible.
"""

import sys
import types
from typing import List  # noqa: UP035 (torch.jit.script reads these annotations: kept as written for it)

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class ToTensor:
    def __call__(self, picture):
        array = np.asarray(picture)
        if array.ndim == 2:
            array = array[:, :, None]
        tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous()
        return tensor.float().div(255) if tensor.dtype == torch.uint8 else tensor


class Resize(nn.Module):
    def __init__(self, size: List[int]):  # noqa: UP006
        super().__init__()
        self.size = [int(size[0]), int(size[1])]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batched = x.dim() == 4
        y = F.interpolate(
            x if batched else x[None], size=self.size, mode="bilinear", align_corners=False, antialias=True
        )
        return y if batched else y[0]


class Normalize(nn.Module):
    def __init__(self, mean: List[float], std: List[float]):  # noqa: UP006
        super().__init__()
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return (x - mean) / std


def install() -> None:
    """Register `torchvision.transforms` with these classes, unless a real torchvision is importable."""
    if "torchvision" in sys.modules:
        return
    package = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    transforms.ToTensor, transforms.Resize, transforms.Normalize = ToTensor, Resize, Normalize
    package.transforms = transforms
    sys.modules["torchvision"] = package
    sys.modules["torchvision.transforms"] = transforms
