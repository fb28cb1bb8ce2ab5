"""The click rule: how a prompted frame is read around a user's click, before and after the network.

A click on a dim fluorescent nucleus beside bright ones is the built-in model's worst case on real images (issue 16):
a stack-wide intensity range leaves the dim nucleus near black, and the network answers with a bright neighbour,
a blob beside the nucleus, or nothing. Two steps, on the frame a user prompts with clicks only:

* level (before the network): the clicked object's brightness at the model input — the 90th percentile of the
  pixels within `radius` model-input pixels of the click, the dimmest positive click when there are several — is
  brought up to `level` by a gain (the frame times level / brightness, clipped to [0, 1]) and that frame is encoded
  once more for the decoder. A click already at or above `level` leaves the frame as it is. Brighter neighbours
  saturate; they stay apart by shape, which the network reads well on the issue-7 data.
* component (after the network): of the returned mask only the 8-connected parts that hold a positive click are
  kept (the part nearest to a click where none holds it). One click means one object; the rest are bright
  neighbours the gain made look alike.

Tracked frames and discovery are not touched: memory attention reads the frame's own features, and the prompted
frame's memory is encoded from those features with the rule's mask. Corrections on frames a propagation has
visited keep the frame's own features (their embedding is memory-conditioned); the component step applies there
too. A box or mask prompt uses neither step.

`level` 0.7, `radius` 2 and the component step were chosen on tuning seeds only (model/README.md, "The click rule"):
synthetic_hard stacks 4,000,050 + 100 c + k and issue-7 frames 4,950,000 + k.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np
import torch
from scipy import ndimage

from .preprocess import IMAGENET_MEAN, IMAGENET_STD, InputError

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
#: logit given to the parts the component step removes (remove_sprinkles' threshold − 10)
REMOVED_LOGIT = -10.0


@dataclass(frozen=True)
class ClickRule:
    """level: the brightness (0…1 at the model input) a dim clicked object is raised to, None: off; radius: in
    model-input pixels, the disk around a click its brightness is read from; component: keep only the clicked
    parts of the mask."""

    level: float | None = None
    radius: float = 2.0
    component: bool = False

    name: ClassVar[str] = "click_rule"

    def __post_init__(self):
        if self.level is not None and not (isinstance(self.level, (int, float)) and 0 < float(self.level) <= 1):
            raise InputError(f"the click rule's level is a brightness in (0, 1] (or None: off); got {self.level!r}")
        if not (isinstance(self.radius, (int, float)) and float(self.radius) > 0):
            raise InputError(f"the click rule's radius is a positive number of model-input pixels; got {self.radius!r}")

    @property
    def off(self) -> bool:
        return self.level is None and not self.component

    # ------------------------------------------------------------------ before the network
    def gain(self, grey: np.ndarray, coords_xy: np.ndarray, labels: np.ndarray) -> float:
        """The factor the prompted frame is multiplied by (1.0: unchanged).

        grey: [S, S] float, the model input in [0, 1] (the mean of its channels); coords_xy: [P, 2] (x, y) in
        model-input pixels; labels: [P] (1 positive, 0 negative, 2 / 3 box corners)."""
        if self.level is None:
            return 1.0
        positive = np.asarray(coords_xy, dtype=np.float64)[np.asarray(labels) == 1]
        if not len(positive):
            return 1.0
        size = grey.shape[-1]
        rows, cols = np.ogrid[: grey.shape[0], :size]
        values = []
        for x, y in positive:
            disk = (rows - y) ** 2 + (cols - x) ** 2 <= self.radius**2
            if not disk.any():  # a click on the edge of the input: its nearest pixel
                disk = np.zeros(grey.shape, dtype=bool)
                disk[int(np.clip(y, 0, grey.shape[0] - 1)), int(np.clip(x, 0, size - 1))] = True
            values.append(float(np.percentile(grey[disk], 90)))
        brightness = min(values)
        if brightness >= self.level:
            return 1.0
        # an empty spot (a click on pure background) is not blown up without bound: at most 1 / 1 % of the range
        return float(self.level / max(brightness, 0.01))

    @staticmethod
    def grey(model_input: torch.Tensor) -> np.ndarray:
        """A normalised model input [3, S, S] (ImageNet mean / std) → [S, S] float32 in [0, 1]: the mean of its
        channels (what `gain` reads)."""
        mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
        return (model_input.detach().float().cpu() * std + mean).mean(0).numpy()

    @staticmethod
    def apply_gain(model_input: torch.Tensor, gain: float) -> torch.Tensor:
        """A normalised model input [3, S, S] (ImageNet mean / std) → the same frame times `gain`, clipped to
        [0, 1] before normalising again."""
        mean = torch.tensor(IMAGENET_MEAN, dtype=model_input.dtype, device=model_input.device).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=model_input.dtype, device=model_input.device).view(3, 1, 1)
        x01 = ((model_input * std + mean) * gain).clamp(0.0, 1.0)
        return (x01 - mean) / std

    # ------------------------------------------------------------------ after the network
    def keep_clicked(self, logits: torch.Tensor, coords_xy: np.ndarray, labels: np.ndarray, image_size: int):
        """logits [1, 1, h, w] (low-res) → (the same with every 8-connected part of the mask (logit > 0) that holds
        no positive click set to REMOVED_LOGIT, whether anything was removed). A click outside the mask keeps the
        part nearest to it."""
        positive = np.asarray(coords_xy, dtype=np.float64)[np.asarray(labels) == 1]
        if not self.component or not len(positive):
            return logits, False
        plane = logits.detach().float().cpu().numpy()[0, 0]
        parts, count = ndimage.label(plane > 0, structure=_EIGHT_CONNECTED)
        if count <= 1:
            return logits, False
        h, w = plane.shape
        keep = set()
        nearest = None
        for x, y in positive:
            r = int(np.clip(np.floor(y / image_size * h), 0, h - 1))
            c = int(np.clip(np.floor(x / image_size * w), 0, w - 1))
            if parts[r, c]:
                keep.add(int(parts[r, c]))
                continue
            if nearest is None:
                nearest = ndimage.distance_transform_edt(parts == 0, return_indices=True)[1]
            keep.add(int(parts[nearest[0][r, c], nearest[1][r, c]]))
        drop = np.isin(parts, [i for i in range(1, count + 1) if i not in keep])
        if not drop.any():
            return logits, False
        out = logits.clone()
        out[0, 0][torch.from_numpy(drop).to(out.device)] = REMOVED_LOGIT
        return out, True

    # ------------------------------------------------------------------ provenance
    def record(self) -> dict:
        """settings["click_rule"]: what a replay or a resumed run re-applies."""
        return {self.name: asdict(self)}


#: no click rule: the network's answer as it is (the official SAM 2; `preset="parity"`)
CLICK_RULE_OFF = ClickRule()
#: the rule for fluorescence nuclei (nano-fluo's default)
CLICK_RULE_FLUORESCENCE = ClickRule(level=0.7, radius=2.0, component=True)
#: the values a face's `click_rule` option takes by name (None: the model's default)
CLICK_RULES = {"off": CLICK_RULE_OFF, "fluorescence": CLICK_RULE_FLUORESCENCE}


def click_rule(rule) -> ClickRule:
    """A resolved option ("off", "fluorescence" or a ClickRule) → its ClickRule; anything else one InputError."""
    if isinstance(rule, ClickRule):
        return rule
    if isinstance(rule, str) and rule.strip().lower() in CLICK_RULES:
        return CLICK_RULES[rule.strip().lower()]
    raise InputError(
        f"click_rule must be one of {', '.join(repr(k) for k in CLICK_RULES)} (or None: the model's default); "
        f"got {rule!r}"
    )


def default_click_rule(model) -> str:
    """`registry.ModelInfo.click_rule` of the registry model `model` names (a name, a checkpoint path or a loaded
    model's `checkpoint_path`); "off" for any other checkpoint or an in-memory model."""
    from . import registry

    source = model if isinstance(model, (str, os.PathLike)) else getattr(model, "checkpoint_path", None)
    return "off" if source is None else registry.default_click_rule(source)


def resolve_click_rule(rule, model, preset: str = "default") -> ClickRule:
    """A face's option → the rule: None → the model's default (off under preset "parity", which reproduces the
    official predictor), else `click_rule`."""
    if rule is None:
        rule = "off" if preset == "parity" else default_click_rule(model)
    return click_rule(rule)


def click_rule_from_record(settings: dict | None) -> ClickRule:
    """The rule a store's settings record; a store made before the rule existed records none: off, as it was made."""
    recorded = (settings or {}).get(ClickRule.name)
    if not isinstance(recorded, dict):
        return CLICK_RULE_OFF
    try:
        return ClickRule(**{k: recorded[k] for k in ("level", "radius", "component") if k in recorded})
    except TypeError as exc:
        raise InputError(f"the recorded click rule {recorded!r} cannot be read ({exc})") from None
