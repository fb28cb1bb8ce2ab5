"""torchvision.ops.boxes.batched_nms and box_area, for the official SAM2AutomaticMaskGenerator without torchvision.

Written from torchvision's documented behaviour (>= 0.17, CPU kernel): boxes are (x1, y1, x2, y2) with area
(x2 − x1)(y2 − y1); `nms` visits boxes by score, highest first (stable sort), and drops every later box whose
IoU with a kept one is > iou_threshold; `batched_nms` runs it per category by offsetting each category's boxes
so that boxes of different categories never overlap. Kept indices come back by decreasing score.
This file is the reference side of the parity test: it deliberately shares no code with napari_sam2.
"""

import sys
import types

import torch


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    order = torch.sort(scores, stable=True, descending=True).indices
    areas = box_area(boxes)
    suppressed = torch.zeros(boxes.shape[0], dtype=torch.bool)
    keep = []
    for a in order.tolist():
        if suppressed[a]:
            continue
        keep.append(a)
        w = torch.clamp(torch.minimum(boxes[:, 2], boxes[a, 2]) - torch.maximum(boxes[:, 0], boxes[a, 0]), min=0)
        h = torch.clamp(torch.minimum(boxes[:, 3], boxes[a, 3]) - torch.maximum(boxes[:, 1], boxes[a, 1]), min=0)
        inter = w * h
        over = inter / (areas[a] + areas - inter) > iou_threshold
        over[a] = False
        suppressed |= over
    return torch.tensor(keep, dtype=torch.int64)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def install() -> None:
    """Register `torchvision.ops.boxes` (beside the transforms stand-in), unless a real torchvision imports."""
    try:
        import torchvision.ops.boxes  # noqa: F401 (imported to see that it imports)

        return
    except ImportError:
        pass
    package = sys.modules.get("torchvision") or types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    boxes = types.ModuleType("torchvision.ops.boxes")
    boxes.batched_nms, boxes.box_area, boxes.nms = batched_nms, box_area, nms
    ops.boxes, ops.batched_nms, ops.box_area, ops.nms = boxes, batched_nms, box_area, nms
    package.ops = ops
    sys.modules["torchvision"] = package
    sys.modules["torchvision.ops"] = ops
    sys.modules["torchvision.ops.boxes"] = boxes
