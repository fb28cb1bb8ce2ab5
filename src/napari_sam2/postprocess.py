"""Mask post-processing on the CPU: small holes and sprinkles, by connected components.

The official SAM 2 does this with a CUDA-only kernel (8-connected components) and silently skips it on the
CPU; ours runs everywhere with scipy.ndimage using the same 8-connectivity and the same rule: a background
(logit ≤ threshold) component of area ≤ N pixels becomes foreground, and (sprinkles) a foreground component
of area ≤ N becomes background. Components touching the border count too, as in the official kernel.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _small_components(binary: np.ndarray, max_area: int) -> np.ndarray:
    """Boolean map of the pixels of `binary` [H, W] in 8-connected components of area ≤ max_area."""
    labels, count = ndimage.label(binary, structure=_EIGHT_CONNECTED)
    if count == 0:
        return np.zeros_like(binary)
    areas = np.bincount(labels.ravel())
    small = areas <= max_area
    small[0] = False  # label 0 is the other class, never a component
    return small[labels]


def _apply_per_map(logits: torch.Tensor, select, value: float) -> torch.Tensor:
    flat = logits.detach().float().cpu().reshape(-1, *logits.shape[-2:]).numpy()
    out = flat.copy()
    for i, plane in enumerate(flat):
        out[i][select(plane)] = value
    return torch.from_numpy(out).reshape(logits.shape).to(device=logits.device, dtype=logits.dtype)


def fill_holes(logits: torch.Tensor, max_area: int, threshold: float = 0.0, fill_value: float = 0.1) -> torch.Tensor:
    """Set background components (logit ≤ threshold) of area ≤ max_area to `fill_value`.

    logits: [..., H, W]; each trailing H × W map is processed on its own. The video predictor uses
    fill_value 0.1 (just above 0), the image predictor threshold + 10.
    """
    if max_area <= 0:
        return logits
    return _apply_per_map(logits, lambda p: _small_components(p <= threshold, max_area), fill_value)


def remove_sprinkles(logits: torch.Tensor, max_area: int, threshold: float = 0.0) -> torch.Tensor:
    """Set foreground components (logit > threshold) of area ≤ max_area to threshold − 10."""
    if max_area <= 0:
        return logits
    return _apply_per_map(logits, lambda p: _small_components(p > threshold, max_area), threshold - 10.0)
