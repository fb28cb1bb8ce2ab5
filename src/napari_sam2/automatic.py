"""Segment everything on one frame: SAM 2's automatic mask generator, in our own code.

The algorithm and the parameter names are those of the official `SAM2AutomaticMaskGenerator`:

1. a regular grid of `points_per_side`² single-click prompts over the image (and over each crop, see 5);
2. the clicks are decoded `points_per_batch` at a time by the SAM heads on the (once) encoded image, each giving
   3 candidate masks with `multimask_output` (1 without); `use_m2m` decodes each candidate once more with its own
   low-res logits as a mask prompt;
3. candidates are kept when their predicted IoU is > `pred_iou_thresh` and their stability score (the IoU of the
   mask thresholded at `mask_threshold` ± `stability_score_offset`) is ≥ `stability_score_thresh`;
4. duplicates go by greedy non-maximum suppression of the masks' boxes (IoU > `box_nms_thresh`), best predicted
   IoU first;
5. with `crop_n_layers` = n > 0 the image is also cut into (2^i)² overlapping crops for i = 1…n (overlap
   `crop_overlap_ratio` of the short side, halved per layer), each re-encoded and prompted with a grid of
   `points_per_side / crop_n_points_downscale_factor^i` points; masks touching a crop's inner border are dropped,
   and duplicates across crops go by box NMS (`crop_nms_thresh`) preferring the smaller crop;
6. `min_mask_region_area` > 0 fills holes and removes islands of at most that many pixels in each candidate's
   low-res logits (the model's `image_size / 4` grid, as the official predictor does), before the upsampling.

Then, beyond the official generator, the surviving masks become one label image with no overlaps:
7. `recenter` (default for nano-fluo): each mask is prompted again with one click at its deepest pixel, and
   repeats of an object (mask IoU > 0.5) are dropped — a small model answers centred clicks best;
8. `resolve_parts`: a mask lying inside a larger one is a piece of it (dropped), unless ≥ 2 such non-overlapping
   masks cover most of the larger one, which then spans a cluster of objects (dropped instead);
9. `labels_from_masks`: where masks still overlap the smaller one wins, and an object left with less than
   `min_kept_fraction` of its mask, or fewer than `min_area` pixels, is dropped.

Defaults are the official ones except for models listed in `MODEL_DEFAULTS` (nano-fluo, whose IoU head is
uncalibrated); benchmarks/bench_automatic.py measures them.

Coordinates are napari's: points (y, x), boxes (y0, x0, y1, x1) with exclusive ends (`mask[y0:y1, x0:x1]` is the
box), in pixels of the image.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import product

import numpy as np
import torch
from scipy import ndimage

from .errors import InputError
from .postprocess import fill_holes, remove_sprinkles

# ---------------------------------------------------------------------------------------------- results


@dataclass
class AutoObject:
    """One object found by `segment_everything`.

    mask: (Y, X) bool at the image's size. box: (y0, x0, y1, x1) in pixels, ends exclusive. area: pixels in mask.
    predicted_iou: the model's own quality estimate of the mask. stability_score: IoU of the mask thresholded at
    mask_threshold ± stability_score_offset. point: (y, x) of the grid click that produced it.
    crop_box: (y0, x0, y1, x1) of the image crop it was found in (the whole image without crops).
    """

    mask: np.ndarray
    box: tuple[int, int, int, int]
    area: int
    predicted_iou: float
    stability_score: float
    point: tuple[float, float]
    crop_box: tuple[int, int, int, int]


@dataclass
class AutoMasks:
    """Result of `segment_everything`.

    labels: (Y, X) uint32, 0 = background, object k (1-based) is `objects[k - 1]`; no overlaps.
    objects: the objects of `labels`, most confident (highest predicted IoU) first; their masks are exactly
        `labels == k` (overlaps resolved).
    candidates: the generator's masks before the overlaps were resolved (they may overlap), in the order the
        official generator returns them.
    """

    labels: np.ndarray
    objects: list[AutoObject]
    candidates: list[AutoObject] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.objects)

    def __iter__(self):
        return iter(self.objects)


# ---------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class AutoMaskSettings:
    """The generator's parameters (names and defaults of the official SAM2AutomaticMaskGenerator, plus the last
    four, ours, for the label image). See the module docstring for what each does."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.8
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    mask_threshold: float = 0.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0
    use_m2m: bool = False
    multimask_output: bool = True
    # ours: turning the candidates into one label image
    recenter: bool = False
    min_area: int = 0
    min_kept_fraction: float = 0.5

    def __post_init__(self):
        def need(ok, what):
            if not ok:
                raise InputError(what)

        need(int(self.points_per_side) >= 1, f"points_per_side must be ≥ 1; got {self.points_per_side}")
        need(int(self.points_per_batch) >= 1, f"points_per_batch must be ≥ 1; got {self.points_per_batch}")
        need(int(self.crop_n_layers) >= 0, f"crop_n_layers must be ≥ 0; got {self.crop_n_layers}")
        need(
            int(self.crop_n_points_downscale_factor) >= 1,
            f"crop_n_points_downscale_factor must be ≥ 1; got {self.crop_n_points_downscale_factor}",
        )
        for name in ("box_nms_thresh", "crop_nms_thresh", "min_kept_fraction"):
            value = getattr(self, name)
            need(0.0 <= value <= 1.0, f"{name} must be between 0 and 1; got {value}")
        need(self.stability_score_offset >= 0, f"stability_score_offset must be ≥ 0; got {self.stability_score_offset}")
        need(
            0.0 <= self.crop_overlap_ratio < 1.0, f"crop_overlap_ratio must be in [0, 1); got {self.crop_overlap_ratio}"
        )


# ---------------------------------------------------------------------------------------------- geometry


def point_grid(n_per_side: int) -> np.ndarray:
    """[n², 2] (x, y) cell centres of an n × n grid over the unit square, row by row (the official order)."""
    step = 1.0 / n_per_side
    centres = np.linspace(step / 2, 1 - step / 2, n_per_side)
    xs, ys = np.meshgrid(centres, centres)  # xs varies along a row, ys down the rows
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def crop_boxes(image_shape: tuple[int, int], n_layers: int, overlap_ratio: float) -> list[tuple[list[int], int]]:
    """The crops as ([x0, y0, x1, y1], layer): the whole image (layer 0), then (2^i)² crops for layers i = 1…n.

    Layer i's crops overlap by `overlap_ratio` × the short side × 2 / 2^i pixels; all columns of crops for the
    first row... in the official order (x outer, y inner).
    """
    h, w = image_shape
    out = [([0, 0, w, h], 0)]
    for layer in range(1, n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * min(h, w) * 2 / per_side)
        # each crop's length: the image plus the (per_side − 1) overlaps, shared out evenly, rounded up
        crop_w = math.ceil((overlap * (per_side - 1) + w) / per_side)
        crop_h = math.ceil((overlap * (per_side - 1) + h) / per_side)
        starts_x = [int((crop_w - overlap) * i) for i in range(per_side)]
        starts_y = [int((crop_h - overlap) * i) for i in range(per_side)]
        for x0, y0 in product(starts_x, starts_y):
            out.append(([x0, y0, min(x0 + crop_w, w), min(y0 + crop_h, h)], layer))
    return out


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """[N, H, W] bool → [N, 4] (x0, y0, x1, y1) with inclusive ends; an empty mask gives (0, 0, 0, 0)."""
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros(0, 4, dtype=torch.int64, device=masks.device)
    rows = masks.any(dim=2)  # [N, H]
    cols = masks.any(dim=1)  # [N, W]
    ys = torch.arange(h, device=masks.device)
    xs = torch.arange(w, device=masks.device)
    big = max(h, w)
    y0 = torch.where(rows, ys, big).min(dim=1).values
    y1 = torch.where(rows, ys, -1).max(dim=1).values
    x0 = torch.where(cols, xs, big).min(dim=1).values
    x1 = torch.where(cols, xs, -1).max(dim=1).values
    boxes = torch.stack([x0, y0, x1, y1], dim=1)
    empty = ~rows.any(dim=1)
    boxes[empty] = 0
    return boxes


def boxes_and_areas(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[N, H, W] bool → boxes [N, 4] (y0, x0, y1, x1), ends exclusive (0, 0, 0, 0 for an empty mask), and areas
    [N]: one pass over all masks instead of `np.nonzero` on each (the masks are most of a discovery frame's numpy
    work)."""
    n, h, w = masks.shape
    rows, cols = masks.any(axis=2), masks.any(axis=1)  # [N, H], [N, W]
    areas = np.count_nonzero(masks.reshape(n, h * w), axis=1)
    boxes = np.zeros((n, 4), dtype=np.int64)
    full = areas > 0
    boxes[full, 0] = np.argmax(rows[full], axis=1)
    boxes[full, 1] = np.argmax(cols[full], axis=1)
    boxes[full, 2] = h - np.argmax(rows[full, ::-1], axis=1)
    boxes[full, 3] = w - np.argmax(cols[full, ::-1], axis=1)
    return boxes, areas


def box_iou_matrix(boxes: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of [N, 4] (x0, y0, x1, y1) boxes, areas (x1 − x0)(y1 − y0) as torchvision counts them."""
    b = boxes.double()
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lo = torch.maximum(b[:, None, :2], b[None, :, :2])
    hi = torch.minimum(b[:, None, 2:], b[None, :, 2:])
    inter = (hi - lo).clamp(min=0).prod(dim=2)
    return inter / (area[:, None] + area[None, :] - inter)


def box_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS: indices of the kept boxes, best score first; a box goes when its IoU with a kept, better one
    is > iou_threshold (a 0/0 IoU of two empty boxes suppresses nothing)."""
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64)
    order = torch.argsort(scores.cpu().double(), descending=True, stable=True).numpy()
    iou = box_iou_matrix(boxes.cpu()).numpy()
    suppressed = np.zeros(len(order), dtype=bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return torch.as_tensor(np.array(keep, dtype=np.int64))


def stability_scores(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """[N, H, W] logits → [N] IoU of (logits > threshold + offset) and (logits > threshold − offset).

    The first mask lies inside the second, so the IoU is a ratio of pixel counts (NaN for two empty masks).
    """
    if logits.device.type == "cpu" and logits.dtype == torch.float32:
        # numpy compares and counts several times faster than torch on a CPU (the same integer counts)
        flat = logits.detach().reshape(logits.shape[0], -1).numpy()
        inner = torch.from_numpy(np.count_nonzero(flat > threshold + offset, axis=1).astype(np.int32))
        outer = torch.from_numpy(np.count_nonzero(flat > threshold - offset, axis=1).astype(np.int32))
        return inner.float() / outer.float()
    # counting bytes in int32 is ~3× faster on a CPU than torch's default int64 sum of booleans
    inner = (logits > threshold + offset).flatten(1).view(torch.uint8).sum(1, dtype=torch.int32)
    outer = (logits > threshold - offset).flatten(1).view(torch.uint8).sum(1, dtype=torch.int32)
    return inner.float() / outer.float()


def above(logits: torch.Tensor, threshold: float) -> np.ndarray:
    """(logits > threshold) as a numpy bool array (compared by numpy for a float32 CPU tensor: several times
    faster than torch there, the same pixels)."""
    if logits.device.type == "cpu" and logits.dtype == torch.float32:
        return logits.detach().numpy() > threshold
    return (logits > threshold).cpu().numpy()


# ---------------------------------------------------------------------------------------------- candidates


@dataclass
class _Candidates:
    """Masks of one crop (or all crops): masks are cut to their boxes to save memory."""

    cutouts: list = field(default_factory=list)  # [h_i, w_i] bool, the mask inside its box
    boxes: list = field(default_factory=list)  # (x0, y0, x1, y1) inclusive, image coordinates
    ious: list = field(default_factory=list)
    stability: list = field(default_factory=list)
    points: list = field(default_factory=list)  # (x, y) image pixels
    crops: list = field(default_factory=list)  # (x0, y0, x1, y1) of the crop

    def take(self, keep) -> _Candidates:
        return _Candidates(*[[values[i] for i in keep] for values in self.__dict__.values()])

    def extend(self, other: _Candidates) -> None:
        for key, values in other.__dict__.items():
            getattr(self, key).extend(values)

    def __len__(self) -> int:
        return len(self.boxes)


def _postprocess_low_res(low: torch.Tensor, s: AutoMaskSettings) -> torch.Tensor:
    """Hole filling / island removal on low-res logits, as the official predictor does with
    max_hole_area = max_sprinkle_area = min_mask_region_area (holes become threshold + 10, islands − 10)."""
    area = int(s.min_mask_region_area)
    if area <= 0:
        return low
    low = fill_holes(low, area, threshold=s.mask_threshold, fill_value=s.mask_threshold + 10.0)
    return remove_sprinkles(low, area, threshold=s.mask_threshold)


def _decode_crop(
    model,
    features,
    crop_shape: tuple[int, int],
    crop_box: list[int],
    image_shape,
    layer: int,
    s: AutoMaskSettings,
    points_xy: np.ndarray | None = None,
) -> _Candidates:
    """Steps 2–4 on one encoded crop (or the whole image): candidates in image coordinates, NMS-filtered.
    points_xy: [N, 2] (x, y) crop pixels to click instead of the `points_per_side` grid."""
    h, w = crop_shape
    device = features.vision.device
    size = float(model.image_size)
    if points_xy is None:
        n_side = int(int(s.points_per_side) / (int(s.crop_n_points_downscale_factor) ** layer))
        grid = point_grid(max(n_side, 1)) * np.array([[w, h]], dtype=np.float64)
    else:
        grid = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    points_all = torch.as_tensor(grid, dtype=torch.float32, device=device)
    scale = torch.tensor([w, h], dtype=torch.float32, device=device)
    embedding = model.image_embedding(features)
    is_whole = crop_box == [0, 0, image_shape[1], image_shape[0]]
    out = _Candidates()

    def decode(points, mask_prompt=None, multimask=s.multimask_output):
        """[B, 2] clicks → raw low-res logits [B, M, 4h, 4w] and predicted IoUs [B, M]."""
        b = points.shape[0]
        coords = (points / scale * size)[:, None, :]  # (x, y) in model-input pixels
        labels = torch.ones(b, 1, dtype=torch.int32, device=device)
        res = model.decode(
            embedding.expand(b, -1, -1, -1),
            [x.expand(b, -1, -1, -1) for x in features.high_res],
            coords,
            labels,
            mask_prompt=mask_prompt,
            multimask=multimask,
            object_gate=False,
            pad_when_empty=False,
            quality=False,  # the filters read the IoU token (`predicted_iou`); the mask-quality head is not used
        )
        return res.multi_logits.float(), res.multi_ious.float()

    batch = int(s.points_per_batch)
    for start in range(0, points_all.shape[0], batch):
        points = points_all[start : start + batch]
        low, ious = decode(points)
        m = low.shape[1]
        low, ious = low.flatten(0, 1), ious.flatten(0, 1)
        points = points.repeat_interleave(m, dim=0)
        if s.use_m2m:
            # one more pass per candidate with its own (clamped) low-res logits as the mask prompt
            prompts = torch.clamp(low, -32.0, 32.0)
            refined = [
                decode(points[j : j + batch], prompts[j : j + batch, None], False) for j in range(0, len(low), batch)
            ]
            low = torch.cat([r[0][:, 0] for r in refined])
            ious = torch.cat([r[1][:, 0] for r in refined])
        # the IoU filter needs no mask: only its survivors are upsampled (the costly part on a CPU)
        idx = torch.arange(len(ious), device=device)
        if s.pred_iou_thresh > 0.0:
            idx = torch.nonzero(ious > s.pred_iou_thresh).flatten()
        if len(idx) == 0:
            continue
        logits = model.upsample_logits(_postprocess_low_res(low[idx][:, None], s), (h, w))[:, 0]
        stability = stability_scores(logits, s.mask_threshold, s.stability_score_offset)
        if s.stability_score_thresh > 0.0:
            stable = stability >= s.stability_score_thresh
            idx, logits, stability = idx[stable], logits[stable], stability[stable]
        if len(idx) == 0:
            continue
        stab_of = dict(zip(idx.tolist(), stability.tolist()))
        masks = logits > s.mask_threshold
        boxes = masks_to_boxes(masks)
        x0, y0 = crop_box[0], crop_box[1]
        image_boxes = boxes + torch.tensor([x0, y0, x0, y0], device=device)
        if not is_whole:
            # drop masks cut by the crop's border (within 20 px of an inner edge of the crop)
            near_crop = torch.isclose(
                image_boxes.float(), torch.tensor(crop_box, dtype=torch.float32, device=device), atol=20.0, rtol=0
            )
            whole = torch.tensor([0, 0, image_shape[1], image_shape[0]], dtype=torch.float32, device=device)
            near_image = torch.isclose(image_boxes.float(), whole, atol=20.0, rtol=0)
            inside = ~(near_crop & ~near_image).any(dim=1)
            masks, boxes, image_boxes, idx = masks[inside], boxes[inside], image_boxes[inside], idx[inside]
        masks_np = masks.cpu().numpy()
        for k, i in enumerate(idx.tolist()):
            bx0, by0, bx1, by1 = boxes[k].tolist()
            out.cutouts.append(masks_np[k, by0 : by1 + 1, bx0 : bx1 + 1].copy())
            out.boxes.append(tuple(image_boxes[k].tolist()))
            out.ious.append(float(ious[i]))
            out.stability.append(float(stab_of[i]))
            px, py = points[i].tolist()
            out.points.append((px + x0, py + y0))
            out.crops.append(tuple(crop_box))
    if len(out) == 0:
        return out
    keep = box_nms(torch.tensor(out.boxes, dtype=torch.float32), torch.tensor(out.ious), s.box_nms_thresh)
    return out.take(keep.tolist())


def _to_objects(c: _Candidates, image_shape) -> list[AutoObject]:
    objects = []
    for cut, (x0, y0, x1, y1), iou, stab, (px, py), (cx0, cy0, cx1, cy1) in zip(
        c.cutouts, c.boxes, c.ious, c.stability, c.points, c.crops
    ):
        mask = np.zeros(image_shape, dtype=bool)
        mask[y0 : y1 + 1, x0 : x1 + 1] = cut
        area = int(cut.sum())
        box = (int(y0), int(x0), int(y1) + 1, int(x1) + 1) if area else (0, 0, 0, 0)
        objects.append(AutoObject(mask, box, area, iou, stab, (float(py), float(px)), (cy0, cx0, cy1, cx1)))
    return objects


def generate_candidates(
    model, encode_crop: Callable[[list[int]], object], image_shape: tuple[int, int], settings: AutoMaskSettings
) -> list[AutoObject]:
    """Steps 1–6 of the module docstring: the official generator's masks (they may overlap), in its order.

    encode_crop([x0, y0, x1, y1]) → ImageFeatures of that crop of the image (the whole image first).
    """
    s = settings
    all_candidates = _Candidates()
    crops = crop_boxes(image_shape, int(s.crop_n_layers), float(s.crop_overlap_ratio))
    with torch.inference_mode():
        for box, layer in crops:
            feats = encode_crop(box)
            crop_shape = (box[3] - box[1], box[2] - box[0])
            all_candidates.extend(_decode_crop(model, feats, crop_shape, box, image_shape, layer, s))
        if len(crops) > 1 and len(all_candidates):
            # duplicates across crops: the mask from the smaller crop wins
            crop_area = torch.tensor([(c[2] - c[0]) * (c[3] - c[1]) for c in all_candidates.crops], dtype=torch.float32)
            keep = box_nms(torch.tensor(all_candidates.boxes, dtype=torch.float32), 1.0 / crop_area, s.crop_nms_thresh)
            all_candidates = all_candidates.take(keep.tolist())
    return _to_objects(all_candidates, image_shape)


# ---------------------------------------------------------------------------------------------- label image


#: a mask lying ≥ this fraction inside a larger one is one of its parts (or one cell of a cluster it spans)
PART_OF = 0.8
#: a larger mask is a cluster (dropped, its cells kept) when ≥ 2 of its parts that do not overlap, each at least
#: MIN_PART of its area, cover ≥ CLUSTER_COVER of it; otherwise it is one object and its parts go
CLUSTER_COVER = 0.7
MIN_PART = 0.2
#: recentred masks overlapping an earlier one by a mask IoU above this are the same object found twice
DUPLICATE_IOU = 0.5


def _box_slices(a: AutoObject, b: AutoObject):
    """Slices of the intersection of two objects' boxes, or None when the boxes do not meet."""
    y0, x0 = max(a.box[0], b.box[0]), max(a.box[1], b.box[1])
    y1, x1 = min(a.box[2], b.box[2]), min(a.box[3], b.box[3])
    return (slice(y0, y1), slice(x0, x1)) if y0 < y1 and x0 < x1 else None


def _overlap(a: AutoObject, b: AutoObject) -> int:
    where = _box_slices(a, b)
    return 0 if where is None else int(np.count_nonzero(a.mask[where] & b.mask[where]))


def resolve_parts(objects: list[AutoObject]) -> list[AutoObject]:
    """Drop the parts of whole objects and the masks that span a cluster of objects (see PART_OF, CLUSTER_COVER).

    SAM's grid clicks give, for one cell, the cell and pieces of it, and for touching cells each cell and their
    union; painting them as they come would split cells or merge neighbours. Largest first: a mask's parts are
    the smaller masks lying ≥ PART_OF inside it; if ≥ 2 of them (non-overlapping, each ≥ MIN_PART of it) cover
    ≥ CLUSTER_COVER of it, the mask is a cluster and goes, else its parts go. Order is kept.
    """
    n = len(objects)
    order = sorted(range(n), key=lambda i: (-objects[i].area, i))
    alive = [o.area > 0 for o in objects]
    for a in order:
        if not alive[a]:
            continue
        big = objects[a]
        parts = [
            b
            for b in order
            if b != a
            and alive[b]
            and objects[b].area < big.area
            and _overlap(big, objects[b]) >= PART_OF * objects[b].area
        ]
        if not parts:
            continue
        chosen: list[AutoObject] = []
        for b in parts:  # largest first
            part = objects[b]
            if part.area >= MIN_PART * big.area and all(_overlap(part, c) <= 0.2 * part.area for c in chosen):
                chosen.append(part)
        covered = np.zeros(big.mask.shape, dtype=bool)
        for c in chosen:
            covered |= c.mask
        if len(chosen) >= 2 and np.count_nonzero(covered & big.mask) >= CLUSTER_COVER * big.area:
            alive[a] = False
        else:
            for b in parts:
                alive[b] = False
    return [o for o, keep in zip(objects, alive) if keep]


def labels_from_masks(
    candidates: list[AutoObject], image_shape, min_area: int = 0, min_kept_fraction: float = 0.5
) -> tuple[np.ndarray, list[AutoObject]]:
    """One label image without overlaps from possibly overlapping masks.

    Where masks overlap the smaller one wins (painted last). An object keeping fewer than `min_kept_fraction`
    of its own pixels or fewer than `min_area` pixels (or nothing) is dropped, and the remaining objects are
    numbered 1… by decreasing predicted IoU (ties: larger first). Returns (labels (Y, X) uint32, objects) with
    each object's mask = its pixels in the label image.
    """
    owner = np.full(image_shape, -1, dtype=np.int64)
    by_area = sorted(range(len(candidates)), key=lambda i: (-candidates[i].area, i))
    for i in by_area:  # largest first, so the smaller masks painted later win the overlaps
        where = _box(candidates[i])  # a mask lies inside its box: only that part of the frame is touched
        owner[where][candidates[i].mask[where]] = i
    counts = np.bincount(owner[owner >= 0], minlength=len(candidates)) if len(candidates) else np.zeros(0, int)
    survivors = [
        i
        for i in range(len(candidates))
        if counts[i] > 0 and counts[i] >= min_area and counts[i] >= min_kept_fraction * candidates[i].area
    ]
    survivors.sort(key=lambda i: (-candidates[i].predicted_iou, -int(counts[i]), i))
    labels = np.zeros(image_shape, dtype=np.uint32)
    objects = []
    for k, i in enumerate(survivors, start=1):
        c = candidates[i]
        where = _box(c)  # what the object kept lies inside its own box
        kept = owner[where] == i
        labels[where][kept] = k
        mask = np.zeros(image_shape, dtype=bool)
        mask[where] = kept
        ys, xs = np.nonzero(kept)
        y0, x0 = where[0].start, where[1].start
        box = (int(ys.min()) + y0, int(xs.min()) + x0, int(ys.max()) + 1 + y0, int(xs.max()) + 1 + x0)
        objects.append(AutoObject(mask, box, int(counts[i]), c.predicted_iou, c.stability_score, c.point, c.crop_box))
    return labels, objects


def _box(obj: AutoObject) -> tuple[slice, slice]:
    y0, x0, y1, x1 = obj.box
    return slice(y0, y1), slice(x0, x1)


# ---------------------------------------------------------------------------------------------- recentring


def deepest_point(mask: np.ndarray, box) -> tuple[int, int]:
    """(y, x) of the mask's pixel farthest from its border (first in raster order on ties)."""
    y0, x0, y1, x1 = box
    depth = ndimage.distance_transform_edt(np.pad(mask[y0:y1, x0:x1], 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return int(y) + y0, int(x) + x0


def recenter(
    model, features, image_shape, objects: list[AutoObject], s: AutoMaskSettings, keep=None
) -> list[AutoObject]:
    """Prompt each object again with one click at its deepest pixel (best of 3 masks by predicted IoU).

    A grid click lands anywhere on a cell and a small model answers an off-centre click with a poorer mask than a
    centred one; the centred click is how a user prompts (and how nano-fluo was trained). Masks repeating an
    earlier one (mask IoU > DUPLICATE_IOU) and empty ones are dropped; order is kept. features: of the whole image.
    keep(object) → True keeps an object as it is, without a click (its answer is known: e.g. a mask that is a
    tracked cell already); it still takes part in the duplicate test.
    """
    if not objects:
        return []
    h, w = image_shape
    device = features.vision.device
    size = float(model.image_size)
    embedding = model.image_embedding(features)
    kept = [bool(keep(o)) if keep is not None else False for o in objects]
    centres = [None if k else deepest_point(o.mask, o.box) for o, k in zip(objects, kept)]
    # two masks of one cell often share their deepest pixel: that click is decoded once (its answer would only
    # repeat the first one's and be dropped as a duplicate, or be dropped like it)
    unique = list(dict.fromkeys(c for c in centres if c is not None))
    answers: dict[tuple[int, int], tuple] = {}
    batch = int(s.points_per_batch)
    for start in range(0, len(unique), batch):
        chunk = unique[start : start + batch]
        b = len(chunk)
        coords = torch.tensor([[[x / w * size, y / h * size]] for y, x in chunk], dtype=torch.float32, device=device)
        res = model.decode(
            embedding,  # one frame for all clicks: the decoder projects it once (SAM2Model.decode)
            features.high_res,
            coords,
            torch.ones(b, 1, dtype=torch.int32, device=device),
            multimask=True,
            object_gate=False,
            pad_when_empty=False,
            quality=False,  # the filters read the IoU token (`predicted_iou`); the mask-quality head is not used
        )
        ious = res.multi_ious.float()
        best = torch.argmax(ious, dim=1)
        rows = torch.arange(b, device=device)
        low = res.multi_logits.float()[rows, best][:, None]
        logits = model.upsample_logits(_postprocess_low_res(low, s), (h, w))[:, 0]
        stability = stability_scores(logits, s.mask_threshold, s.stability_score_offset).tolist()
        masks = above(logits, s.mask_threshold)
        boxes, areas = boxes_and_areas(masks)
        best_ious = ious[rows, best].tolist()
        for k, point in enumerate(chunk):
            answers[point] = (masks[k], tuple(int(v) for v in boxes[k]), int(areas[k]), best_ious[k], stability[k])
    found: list[AutoObject] = []
    for centre, candidate in zip(centres, objects):
        if centre is None:
            obj = candidate
        elif centre not in answers:
            continue  # a repeated click (see above)
        else:
            mask, box, area, iou, stability = answers.pop(centre)
            if area == 0:
                continue
            obj = AutoObject(mask, box, area, iou, stability, (float(centre[0]), float(centre[1])), candidate.crop_box)
        if all(_overlap(obj, f) <= DUPLICATE_IOU * (obj.area + f.area - _overlap(obj, f)) for f in found):
            found.append(obj)
    return found


# ---------------------------------------------------------------------------------------------- faces


#: Defaults that differ from the official ones, per model (`model.cfg.name`); every other model gets the official
#: generator's defaults. nano-fluo's IoU head is uncalibrated (it predicts ~0.7–0.8 for good and bad masks alike),
#: so the official pred_iou_thresh 0.8 / stability 0.95 keep almost nothing; these values were chosen on synthetic
#: frames of seeds 2,500,000+ (benchmarks/bench_automatic.py --dev) and reported on other, held-out seeds.
MODEL_DEFAULTS: dict[str, dict] = {
    "nano-fluo": {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.8, "recenter": True},
}


def default_settings(model) -> AutoMaskSettings:
    """The settings `segment_everything` uses for `model` when a parameter is not given (None)."""
    name = getattr(getattr(model, "cfg", None), "name", None)
    return AutoMaskSettings(**MODEL_DEFAULTS.get(name, {}))


def _settings(model, params: dict) -> AutoMaskSettings:
    """The model's defaults, overridden by the parameters given (None = not given)."""
    unknown = sorted(set(params) - set(AutoMaskSettings.__dataclass_fields__))
    if unknown:
        raise InputError(
            f"unknown segment_everything parameter(s) {unknown}; known: {sorted(AutoMaskSettings.__dataclass_fields__)}"
        )
    base = default_settings(model).__dict__
    return AutoMaskSettings(**{**base, **{k: v for k, v in params.items() if v is not None}})


def _finish(model, features, candidates: list[AutoObject], image_shape, s: AutoMaskSettings, keep=None) -> AutoMasks:
    """Candidates → label image: optional recentring (`keep`: see `recenter`), parts and clusters resolved,
    overlaps painted."""
    objects = candidates
    if s.recenter:
        with torch.inference_mode():
            objects = recenter(model, features, image_shape, objects, s, keep)
    objects = resolve_parts(objects)
    labels, objects = labels_from_masks(objects, image_shape, int(s.min_area), float(s.min_kept_fraction))
    return AutoMasks(labels=labels, objects=objects, candidates=candidates)


def segment_features(model, features, image_shape: tuple[int, int], *, precision: str = "auto", **params) -> AutoMasks:
    """Segment everything on a frame whose image features are already computed (no image-encoder pass).

    model: a SAM2Model; features: its `ImageFeatures` of one frame (batch 1, e.g. a TrackingSession's cached
    features); image_shape: (Y, X) of the frame the masks come back at. Parameters: as `segment_everything`;
    crops (`crop_n_layers` > 0) need the image itself, so they are refused here.
    """
    from .model.precision import autocast_context, resolve_precision

    s = _settings(model, params)
    if s.crop_n_layers:
        raise InputError("crop_n_layers > 0 re-encodes image crops; call segment_everything(model, image, ...) instead")
    if features.vision.shape[0] != 1:
        raise InputError(f"features of one frame are needed; got a batch of {features.vision.shape[0]}")
    image_shape = (int(image_shape[0]), int(image_shape[1]))
    device = features.vision.device
    precision = resolve_precision(device, precision, model=model)
    with autocast_context(device, precision):
        candidates = generate_candidates(model, lambda box: features, image_shape, s)
        return _finish(model, features, candidates, image_shape, s)


def segment_points(
    model,
    features,
    image_shape: tuple[int, int],
    points,
    *,
    precision: str = "auto",
    lowres: bool = True,
    settled: np.ndarray | None = None,
    **params,
) -> AutoMasks:
    """Like `segment_features`, but prompted with the given clicks instead of a regular grid (discovery's cheaper
    sampling: `napari_sam2.discovery` picks the clicks), and by default scored at the decoder's own resolution.

    points: [N, 2] (y, x) pixel coordinates of the frame (float). lowres: the stability score, the boxes for NMS
    and the "is it empty" test are computed on the decoder's low-res logits ([4h, 4w], a quarter of the model's
    input size per side) and only the masks that survive NMS are upsampled to the frame: the full-size upsampling
    and scoring of every candidate is most of the generator's cost on a CPU. With lowres=False the candidates go
    through exactly the official generator's steps 2-4. Parameters: as `segment_everything` (no crops, no m2m);
    `points_per_side` is ignored. Returns AutoMasks (the label image without overlaps, as `segment_everything`).
    settled: [Y, X] label image (0 = none) of objects known already (discovery: tracked cells that show no sign of
    change); a candidate lying ≥ SETTLED_INSIDE inside one of them is not recentred (its deepest pixel lies in that
    cell, and a centred click on a known cell answers with that cell) — it is kept as the grid click found it.
    """
    from .model.precision import autocast_context, resolve_precision

    s = _settings(model, params)
    if s.crop_n_layers or s.use_m2m:
        raise InputError("segment_points prompts the whole frame once: crop_n_layers and use_m2m are not supported")
    image_shape = (int(image_shape[0]), int(image_shape[1]))
    h, w = image_shape
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    device = features.vision.device
    precision = resolve_precision(device, precision, model=model)
    whole = [0, 0, w, h]
    with torch.inference_mode(), autocast_context(device, precision):
        if not lowres:
            xy = pts[:, ::-1].copy()
            cands = _decode_crop(model, features, image_shape, whole, image_shape, 0, s, points_xy=xy)
            return _finish(model, features, _to_objects(cands, image_shape), image_shape, s, _settled(settled))
        size = float(model.image_size)
        embedding = model.image_embedding(features)
        lows, ious, stabs, where = [], [], [], []
        batch = int(s.points_per_batch)
        for start in range(0, len(pts), batch):
            chunk = torch.as_tensor(pts[start : start + batch], dtype=torch.float32, device=device)
            b = chunk.shape[0]
            coords = torch.stack([chunk[:, 1] / w * size, chunk[:, 0] / h * size], dim=1)[:, None, :]
            res = model.decode(
                embedding,  # one frame for all clicks: the decoder projects it once (SAM2Model.decode)
                features.high_res,
                coords,
                torch.ones(b, 1, dtype=torch.int32, device=device),
                multimask=s.multimask_output,
                object_gate=False,
                pad_when_empty=False,
                quality=False,  # the filters read the IoU token (`predicted_iou`); the mask-quality head is not used
            )
            low, iou = res.multi_logits.float().flatten(0, 1), res.multi_ious.float().flatten(0, 1)
            m = res.multi_logits.shape[1]
            idx = torch.arange(len(iou), device=device)
            if s.pred_iou_thresh > 0.0:
                idx = torch.nonzero(iou > s.pred_iou_thresh).flatten()
            if len(idx) == 0:
                continue
            low = _postprocess_low_res(low[idx][:, None], s)[:, 0]
            stab = stability_scores(low, s.mask_threshold, s.stability_score_offset)
            keep = stab >= s.stability_score_thresh if s.stability_score_thresh > 0.0 else torch.isfinite(stab)
            keep &= (low > s.mask_threshold).flatten(1).any(1)
            idx, low, stab = idx[keep], low[keep], stab[keep]
            lows.append(low)
            ious.append(iou[idx])
            stabs.append(stab)
            where.extend((start + int(i) // m) for i in idx.tolist())
        if not lows:
            return _finish(model, features, [], image_shape, s)
        low, iou, stab = torch.cat(lows), torch.cat(ious), torch.cat(stabs)
        lh, lw = low.shape[-2:]
        yx, _ = boxes_and_areas(above(low, s.mask_threshold))  # (y0, x0, y1, x1), ends exclusive
        boxes = torch.from_numpy(yx[:, [1, 0, 3, 2]] - np.array([0, 0, 1, 1])).double()  # (x0, y0, x1, y1) inclusive
        boxes = boxes * torch.tensor([w / lw, h / lh, w / lw, h / lh], dtype=torch.float64)
        keep = box_nms(boxes, iou, s.box_nms_thresh).tolist()
        logits = model.upsample_logits(low[keep][:, None], image_shape)[:, 0]
        masks = above(logits, s.mask_threshold)
        boxes, areas = boxes_and_areas(masks)
        candidates = []
        for k, i in enumerate(keep):
            if areas[k] == 0:
                continue
            box = tuple(int(v) for v in boxes[k])
            py, px = pts[where[i]]
            candidates.append(
                AutoObject(
                    masks[k], box, int(areas[k]), float(iou[i]), float(stab[i]), (float(py), float(px)), (0, 0, h, w)
                )
            )
        return _finish(model, features, candidates, image_shape, s, _settled(settled))


#: a candidate lying this much (fraction of its pixels) inside a settled object is not recentred (`segment_points`)
SETTLED_INSIDE = 0.8


def _settled(labels: np.ndarray | None):
    """keep(candidate) for `recenter`: True when ≥ SETTLED_INSIDE of its mask lies in one object of `labels`."""
    if labels is None:
        return None
    labels = np.asarray(labels)

    def keep(obj: AutoObject) -> bool:
        if not obj.area:
            return False
        where = _box(obj)
        counts = np.bincount(labels[where][obj.mask[where]].astype(np.int64))
        counts[0] = 0
        return int(counts.max()) >= SETTLED_INSIDE * obj.area

    return keep


def segment_everything(
    model,
    image=None,
    *,
    points_per_side: int = 32,
    points_per_batch: int = 64,
    pred_iou_thresh: float | None = None,
    stability_score_thresh: float | None = None,
    stability_score_offset: float = 1.0,
    mask_threshold: float = 0.0,
    box_nms_thresh: float = 0.7,
    crop_n_layers: int = 0,
    crop_nms_thresh: float = 0.7,
    crop_overlap_ratio: float = 512 / 1500,
    crop_n_points_downscale_factor: int = 1,
    min_mask_region_area: int = 0,
    use_m2m: bool = False,
    multimask_output: bool = True,
    recenter: bool | None = None,
    min_area: int = 0,
    min_kept_fraction: float = 0.5,
    channel: int | None = None,
    channel_axis: int | None = None,
    intensity_range=None,
    percentiles: tuple[float, float] | None = None,
    device=None,
    precision: str = "auto",
    contrast=None,
) -> AutoMasks:
    """Find every object on one 2-D frame with a grid of point prompts (SAM 2's automatic mask generator).

    model: a SAM2Model, a registry name or checkpoint path (loaded on `device`), or an `ImagePredictor`; with a
        predictor whose image is set and `image=None`, its cached features are reused (no encoder pass; a contrast
        given then must be the one the image was set with).
    image: (Y, X) or (Y, X, C) array of any numeric dtype, preprocessed as `ImagePredictor.set_image` does
        (channel / channel_axis pick a channel; intensity_range (low, high) or the image's `percentiles`; contrast
        "global", "local", a `preprocess.LocalContrast` or None: the model's default). Intensity range and
        contrast step are computed once on the whole image; every crop is cut from that mapping.
    The generator's parameters keep the official names and defaults (see the module docstring):
    points_per_side, points_per_batch, pred_iou_thresh, stability_score_thresh, stability_score_offset,
    mask_threshold, box_nms_thresh, crop_n_layers, crop_nms_thresh, crop_overlap_ratio,
    crop_n_points_downscale_factor, min_mask_region_area (pixels of the model's low-res mask grid), use_m2m,
    multimask_output. Ours: recenter (prompt each found object again at its deepest pixel), min_area (pixels;
    smaller objects are dropped from the label image) and min_kept_fraction (an object that keeps less of its
    mask after overlaps are resolved is dropped). A parameter left at None takes the model's default
    (`MODEL_DEFAULTS`: the built-in nano-fluo uses pred_iou_thresh 0, stability_score_thresh 0.8, recenter; other
    models the official 0.8, 0.95, no recentring).
    precision: "auto", "fp32" or "bf16" (see `napari_sam2.model.precision`); a predictor's own is used.
    Returns AutoMasks: labels (Y, X) uint32 without overlaps, objects (mask, box (y0, x0, y1, x1), area,
    predicted_iou, stability_score, point (y, x)) most confident first, and the raw overlapping candidates.
    """
    from .model.build import load_model, resolve_device
    from .model.precision import resolve_precision
    from .predictor import ImagePredictor, autocast_context
    from .preprocess import (
        DEFAULT_PERCENTILES,
        IntensityRange,
        as_rgb,
        check_finite,
        contrast_step,
        resolve_contrast,
        scale_frame,
        to_model_input,
    )

    # the generator's parameters, picked by name from the arguments
    params = {k: v for k, v in locals().items() if k in AutoMaskSettings.__dataclass_fields__}
    predictor = model if isinstance(model, ImagePredictor) else None
    if predictor is not None:
        model = predictor.model
    elif isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        model = load_model(model, device=resolve_device(device or "auto"))
    if device is not None and torch.device(device) != model.device and resolve_device(device) != model.device:
        raise InputError(
            f"the model is on {model.device} but device={device!r} was asked; move it first (model.to(device)) or "
            "pass a model name to load it there"
        )
    if predictor is not None:
        precision = predictor.precision
    else:
        precision = resolve_precision(model.device, precision, model=model)
    s = _settings(model, params)

    if image is None:
        if predictor is None or not predictor.is_image_set:
            raise InputError("no image: pass image=<array>, or an ImagePredictor after set_image(image)")
        used = predictor.contrast
        if contrast is not None and used is not None and contrast_step(contrast).name != used.name:
            raise InputError(
                f"the predictor's image was encoded with contrast={used.name!r}, not {contrast!r}: set the image "
                f"again with set_image(image, contrast={contrast!r}), or leave contrast out"
            )
        return segment_features(model, predictor._features, predictor.image_shape, precision=precision, **s.__dict__)

    array = np.asarray(image)
    if array.ndim not in (2, 3):
        raise InputError(
            f"segment_everything takes one 2-D frame (Y, X) or (Y, X, C); got an array of shape {array.shape}: "
            "pick a frame, e.g. stack[t]"
        )
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise InputError(f"the image has dtype {array.dtype}; a numeric array is needed")
    rgb = as_rgb(array, channel=channel, channel_axis=channel_axis)
    check_finite(rgb)
    if intensity_range is None:
        intensity_range = IntensityRange.from_percentiles(rgb, percentiles or DEFAULT_PERCENTILES)
    elif not isinstance(intensity_range, IntensityRange):
        intensity_range = IntensityRange(*intensity_range)
    step = resolve_contrast(contrast, model)
    # one intensity mapping for the image and all its crops (a crop's local envelope is the whole image's)
    rgb01 = scale_frame(rgb, intensity_range, step, model.image_size)
    image_shape = rgb01.shape[:2]
    whole = [0, 0, image_shape[1], image_shape[0]]
    encoded = {}

    def encode_crop(box):
        if box == whole and predictor is not None:
            predictor.set_preprocessed(to_model_input(rgb01, model.image_size)[None], image_shape)
            feats = predictor._features
        else:
            x0, y0, x1, y1 = box
            feats = model.encode_image(to_model_input(rgb01[y0:y1, x0:x1], model.image_size)[None].to(model.device))
        if box == whole:
            encoded["whole"] = feats  # for recentring
        return feats

    with torch.inference_mode(), autocast_context(model.device, precision):
        candidates = generate_candidates(model, encode_crop, image_shape, s)
        return _finish(model, encoded["whole"], candidates, image_shape, s)
