"""`ImagePredictor`: segment one 2-D image from clicks, a box or a previous mask.

    set_image(image)  → the image encoder runs once (features cached)
    predict(points=[[y, x], …], labels=[1, 0, …], box=[y0, x0, y1, x1], mask=low_res_logits)
                      → masks at the image's own size, predicted IoU, 4h × 4w low-res logits

One positive click alone is a first click and is decoded as a `TrackingSession` decodes it
(`napari_sam2.first_click`: the click rule, and the click decoder and mask refiner of a checkpoint that carries them),
so a click gives the same mask here as in the widget; with an official checkpoint under the click rule "off" every
prompt is the official predictor's. Its three candidates (`multimask=True`) are the network's, except on the border of
two touching objects under a rule with `across_border` (nano-fluo's): there they are the click's mask, the object
across the border and the two together (`click_rule.ClickRule.pick_across`).

Coordinates are napari's: (row, column) = (y, x) in pixels of the original image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .click_rule import ClickRule, resolve_click_rule
from .first_click import FirstClick, across_border, decode_first_click
from .model.precision import autocast_context, resolve_precision
from .postprocess import fill_holes, remove_sprinkles
from .preprocess import (
    DEFAULT_PERCENTILES,
    InputError,
    IntensityRange,
    LocalContrast,
    as_rgb,
    box_to_model,
    check_finite,
    points_to_model,
    resolve_contrast,
    to_model_input,
)

#: the official predictor clamps low-res logits to this range before handing them back as mask prompts
LOW_RES_CLAMP = 32.0


@dataclass
class Prediction:
    """Result of `ImagePredictor.predict`.

    masks: [M, H, W] bool (or float logits with `return_logits=True`) at the image's size;
    iou: [M] predicted IoU; low_res_logits: [M, 4h, 4w] (256 × 256 for 1024 input), clamped to ±32, to be
    passed back as `mask=` for refinement. M = 3 with multimask, else 1. choice: the mask a session keeps for a
    first click (the IoU token's choice, which the reported `iou` of a mask-quality head need not rank first; 0 where
    the click rule's `across_border` offers the object across the border and the pair as masks 1 and 2); None for
    other prompts.
    """

    masks: np.ndarray
    iou: np.ndarray
    low_res_logits: np.ndarray
    choice: int | None = None

    @property
    def best(self) -> int:
        """Index of the mask to keep: a first click's `choice`, else the highest predicted IoU."""
        return int(np.argmax(self.iou)) if self.choice is None else self.choice


def validate_points(points, labels, frame_shape) -> tuple[np.ndarray, np.ndarray]:
    """Check clicks: [N, 2] (y, x) inside the frame, labels 0/1 of the same length (the rules of
    `prompts.ObjectPrompt.check`) → (points float64 [N, 2], labels int32 [N])."""
    from .prompts import check_points, make_prompt

    prompt = make_prompt(0, 1, points=points, labels=labels, where="prompt")
    check_points(prompt.points, frame_shape, "prompt")
    return prompt.points.astype(np.float64), prompt.labels.astype(np.int32)


def validate_box(box, frame_shape) -> np.ndarray:
    """Check a box [y0, x0, y1, x1]: four numbers, non-zero area, overlapping the frame."""
    from .prompts import check_box, make_prompt

    prompt = make_prompt(0, 1, box=box, where="prompt")
    check_box(prompt.box, frame_shape, "prompt")
    return prompt.box.astype(np.float64)


class ImagePredictor:
    """Single-image SAM 2 segmentation with napari coordinates.

    precision: "auto" = bf16 autocast on CUDA, and for SAM 2-sized networks on CPUs with native bf16; fp32 elsewhere;
    or "fp32" / "bf16" (see `napari_sam2.model.precision`).
    max_hole_area / max_sprinkle_area: optional post-processing on the low-res logits (CPU; off by default as
    in the official predictor). click_rule: how a first click is read ("off", "fluorescence", a
    `click_rule.ClickRule`, or None: the model's default, as a session's; "off" with an official checkpoint is the
    official predictor).
    """

    def __init__(
        self, model, precision: str = "auto", max_hole_area: int = 0, max_sprinkle_area: int = 0, click_rule=None
    ):
        self.model = model
        self.device = model.device
        self.precision = resolve_precision(self.device, precision, model=model)
        self.click_rule = resolve_click_rule(click_rule, model)
        self.max_hole_area = max_hole_area
        self.max_sprinkle_area = max_sprinkle_area
        self._features = None
        self._embedding = None
        self._model_input = None  # [3, S, S] on the CPU: what the click rule reads
        self._local_view = None  # [3, S, S]: the image under local contrast (`ClickRule.local_view`)
        self.image_shape: tuple[int, int] | None = None
        self.contrast = None  # the contrast step of the image set last (`set_image`)

    @torch.inference_mode()
    def set_image(
        self,
        image,
        channel: int | None = None,
        channel_axis: int | None = None,
        intensity: IntensityRange | tuple[float, float] | None = None,
        percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
        contrast=None,
    ) -> None:
        """Encode a 2-D image (any numeric dtype, grey [Y, X] or with channels [Y, X, C]).

        intensity: a fixed (low, high) range or IntensityRange; default: `percentiles` of the image.
        contrast: the contrast step after the intensity range: "global", "local", a `preprocess.LocalContrast`, or
        None: the model's default (`preprocess.resolve_contrast`). The step used is `self.contrast`.
        """
        array = np.asarray(image)
        if array.ndim < 2:
            raise InputError(f"expected a 2-D image; got an array of shape {array.shape}")
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
            raise InputError(f"the image has dtype {array.dtype}; a numeric array is needed")
        rgb = as_rgb(array, channel=channel, channel_axis=channel_axis)
        check_finite(rgb)
        if intensity is None:
            intensity = IntensityRange.from_percentiles(rgb, percentiles)
        elif not isinstance(intensity, IntensityRange):
            intensity = IntensityRange(*intensity)
        size = self.model.image_size
        scaled = intensity.scale(rgb)  # the linear map, read once by the window fit and the step
        # a local window fitted to this image's objects (when none is given)
        step = resolve_contrast(contrast, self.model).fitted([scaled], size)
        self.contrast = step
        local_view = None
        if self.click_rule.local_view and not isinstance(step, LocalContrast):
            # a first click's view (`ClickRule.local_view`), as a session's: local contrast fitted to this image (made
            # first: the global step clips `scaled` in place, and local contrast reads it unclipped)
            local_view = to_model_input(LocalContrast().fitted([scaled], size).apply(scaled, size), size)
        x = to_model_input(step.apply(scaled, size), size)[None].to(self.device)
        self.set_preprocessed(x, rgb.shape[:2])
        self._local_view = local_view

    @torch.inference_mode()
    def set_preprocessed(self, model_input: torch.Tensor, image_shape: tuple[int, int]) -> None:
        """Encode an already preprocessed input [1, 3, S, S]; `image_shape` (H, W) is what masks come back at."""
        with autocast_context(self.device, self.precision):
            self._features = self.model.encode_image(model_input.to(self.device))
            self._embedding = self.model.image_embedding(self._features)
        self._model_input = model_input[0].detach().cpu()
        self._local_view = None  # (set_image makes it; a preprocessed input has no pixels to make it from)
        self.image_shape = (int(image_shape[0]), int(image_shape[1]))

    @property
    def is_image_set(self) -> bool:
        return self._features is not None

    @torch.inference_mode()
    def predict(
        self,
        points=None,
        labels=None,
        box=None,
        mask=None,
        multimask: bool = True,
        return_logits: bool = False,
    ) -> Prediction:
        """Masks for prompts on the current image.

        points: [[y, x], …] (row, col) pixels; labels: 1 object / 0 background per point (default all 1);
        box: [y0, x0, y1, x1]; mask: low-res logits [4h, 4w] or [1, 4h, 4w] from an earlier prediction.
        """
        if self._features is None:
            raise RuntimeError("no image is set: call set_image(image) before predict()")
        size = self.model.image_size
        coords, point_labels = [], []
        if box is not None:
            b = validate_box(box, self.image_shape)
            coords.append(box_to_model(b, self.image_shape, size))
            point_labels.append(np.array([2, 3], dtype=np.int32))
        if points is not None and len(points):
            pts, lab = validate_points(points, labels, self.image_shape)
            coords.append(points_to_model(pts, self.image_shape, size))
            point_labels.append(lab)
        mask_prompt = None
        if mask is not None:
            m = torch.as_tensor(np.asarray(mask), dtype=torch.float32)
            low = self.model.cfg.low_res_mask_size
            if m.shape[-2:] != (low, low):
                raise InputError(
                    f"mask prompt has shape {tuple(m.shape)}; pass the {low} × {low} low_res_logits of an earlier "
                    "prediction"
                )
            mask_prompt = m.reshape(1, 1, low, low).to(self.device)
        if not coords and mask_prompt is None:
            raise InputError("no prompt: give points, a box or a mask")
        point_coords = point_lab = None
        first_click = box is None and mask_prompt is None and len(point_labels) == 1 and point_labels[0].tolist() == [1]
        if first_click and self._reads_first_clicks:
            return self._first_click(torch.from_numpy(coords[0])[None].to(self.device), multimask, return_logits)
        if coords:
            point_coords = torch.from_numpy(np.concatenate(coords))[None].to(self.device)
            point_lab = torch.from_numpy(np.concatenate(point_labels))[None].to(self.device)
        with autocast_context(self.device, self.precision):
            out = self.model.decode(
                self._embedding,
                self._features.high_res,
                point_coords,
                point_lab,
                mask_prompt=mask_prompt,
                multimask=multimask,
                object_gate=False,
                pad_when_empty=False,
            )
        return self._prediction(out.multi_logits, out.reported_multi_ious, return_logits)

    @property
    def _reads_first_clicks(self) -> bool:
        """Whether a first click is decoded otherwise than by `SAM2Model.decode` (the rule or the model's parts)."""
        model = self.model
        return not self.click_rule.off or model.click_decoder is not None or model.mask_refiner is not None

    def _first_click(self, coords: torch.Tensor, multimask: bool, return_logits: bool) -> Prediction:
        """One positive click (coords [1, 1, 2], (x, y) model-input pixels), as a session decodes a first click:
        three candidates each as returned were it the chosen one, or (not `multimask`) the chosen one. On the border
        of two touching objects the rule's `across_border` makes the second and third the object across and the two
        together (`first_click.across_border`)."""
        first = self._decode_first_click(coords, every_candidate=multimask)
        if not multimask:
            return self._prediction(first.chosen("logits"), first.chosen("reported"), return_logits, 0)
        across = across_border(self.model, self.click_rule, coords, first, self._decode_first_click)
        if across is not None:
            return self._prediction(*across, return_logits, 0)
        return self._prediction(first.logits, first.reported, return_logits, int(first.choice[0]))

    def _decode_first_click(self, coords: torch.Tensor, every_candidate: bool) -> FirstClick:
        """`first_click.decode_first_click` of one click coords [1, 1, 2] on this image, at the click's level."""
        features, embedding, rule = self._features, self._embedding, self.click_rule
        point = coords[0].cpu().numpy()
        raised, grey, own_grey = rule.clicked_input(
            self._model_input, point, np.ones(1), raise_level=True, local_view=lambda: self._local_view
        )
        if grey is None and self.model.mask_refiner is not None:  # (a rule that reads no image: the frame as it is)
            grey = ClickRule.grey(self._model_input)
        with autocast_context(self.device, self.precision):
            if raised is not None:  # the frame at the clicked object's level, encoded for this click
                features = self.model.encode_image(raised[None].to(self.device))
                embedding = self.model.image_embedding(features)
            return decode_first_click(self.model, rule, embedding, features.high_res, coords, grey, own_grey,
                                      object_gate=False, every_candidate=every_candidate)  # fmt: skip

    def _prediction(self, logits, ious, return_logits: bool, choice: int | None = None) -> Prediction:
        """Logits [1, M, 4h, 4w] and their reported IoUs [1, M] → the `Prediction` at the image's size."""
        raw = logits.float()
        cleaned = remove_sprinkles(fill_holes(raw, self.max_hole_area, fill_value=10.0), self.max_sprinkle_area)
        masks = self.model.upsample_logits(cleaned, self.image_shape)[0]
        if not return_logits:
            masks = masks > 0.0
        return Prediction(
            masks=masks.cpu().numpy(),
            iou=ious[0].float().cpu().numpy(),
            low_res_logits=torch.clamp(raw[0], -LOW_RES_CLAMP, LOW_RES_CLAMP).cpu().numpy(),
            choice=choice,
        )
