"""The click rule: how a prompted frame is read around a user's click, before and after the network.

A click on a dim fluorescent nucleus beside bright ones is the built-in model's worst case on real images (issue 16):
a stack-wide intensity range leaves the dim nucleus near black, and the network answers with a bright neighbour,
a blob beside the nucleus, or nothing; a large nucleus comes back as its bright core. Four steps, on the frame a
user prompts with clicks only:

* level (before the network): the clicked object's brightness at the model input — the 90th percentile of the
  pixels within `radius` model-input pixels of the click, the dimmest positive click when there are several — is
  brought up to `level` by a gain (the frame times level / brightness, clipped to [0, 1]) and that frame is encoded
  once more for the decoder. A click already at or above `level` leaves the frame as it is. Brighter neighbours
  saturate; they stay apart by shape, which the network reads well on the issue-7 data. With `local_view` the
  frame a dim click is decoded from is the frame under local contrast (`preprocess.LocalContrast`, its window fitted
  to the stack) instead, times the gain that still brings the clicked object to `level` there: each nucleus at its
  own level, so a bright neighbour keeps its shape instead of saturating beside the dim one.
* component (after the network): of the returned mask only the 8-connected parts that hold a positive click are
  kept (the part nearest to a click where none holds it). One click means one object; the rest are bright
  neighbours the gain made look alike.
* extent (after the network): a large mask (equivalent radius ≥ `extent_radius` model-input pixels) takes in the
  pixels around it, within `extent_reach` × its radius, where the frame reaches `extent` × the clicked brightness
  and that connect to the click. The network answers a large nucleus with its bright core (its attention windows
  are 32 input pixels wide).
* ceiling (after the network): of the mask only the pixels, connected to the click, where the frame as it is (before
  the gain; under `local_view` the frame under local contrast) is at most `ceiling` × the clicked brightness are
  kept, holes filled. After the gain a dim nucleus and a brighter neighbour touching it look alike and the mask
  often covers both; before the gain they still differ.

Tracked frames and discovery are not touched: memory attention reads the frame's own features, and the prompted
frame's memory is encoded from those features with the rule's mask. Corrections on frames a propagation has
visited keep the frame's own features (their embedding is memory-conditioned); the component, extent and ceiling
steps apply there too. A box or mask prompt uses none of the steps. One exception, `through_z`: in a z stream (a
session given the axial edge rule, or a 3D+t z-stream) a large nucleus tracked from slice to slice comes back as its
core as it does on the clicked slice, so each tracked mask gets the extent step (read at the mask's deepest point)
and the mask refiner before it is shown and saved; its memory is still encoded from the network's own mask, so what
is tracked is unchanged. On time-lapses the refiner lowered TRA (model/README.md, "Refining tracked masks"): time
streams are left as they are.

`across_border` does not change the mask a click gives; it changes what else is offered. A click on the border of two
touching nuclei is ambiguous (this one, that one, or both), but the network's three candidates answer it with one
mask three times. Where the click lies within `ACROSS_REACH` pixels of the border between its mask and a touching
object, the single-image API's three candidates (`ImagePredictor.predict(multimask=True)`) become: the click's mask
(still the one chosen), the object across the border, and the two together. The object across is found by
decoding first clicks at `across_seeds`, a ring of points around the click outside its mask, and keeping the answer
`pick_across` accepts.

`level` 0.7, `radius` 2, the component step, the extent step's 0.5 / 16 / 0.5, `ceiling` 1.5, `local_view` and
`through_z` and `across_border`'s numbers were chosen on tuning seeds only (model/README.md, "The click rule",
"Session 16: a dim click under local contrast; tracked z masks mended", "Session 18: what lies across the border of
an ambiguous click"): synthetic_hard stacks 4,000,050 + 100 c + k, issue-7 frames 4,950,000 + k and
`bench_4d` z-stacks 2,990,000 + k.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

import numpy as np
import torch
from scipy import ndimage

from .preprocess import IMAGENET_MEAN, IMAGENET_STD, InputError

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
#: logit given to the parts the component step removes (remove_sprinkles' threshold − 10)
REMOVED_LOGIT = -10.0
#: the extent step's logits per unit of relative brightness above its threshold (a cell twice as bright: +10)
EXTENT_LOGIT_SCALE = 10.0
#: `across_border`: the ring of first clicks around an ambiguous click, model-input pixels from it × directions
ACROSS_RADII = (4.0, 8.0)
ACROSS_DIRECTIONS = 8
#: … the border an answer shares with the click's mask passes within this many model-input pixels of the click
ACROSS_REACH = 2.0
#: … an answer lying more than this share inside the click's mask is a part of it, not the object across
ACROSS_INSIDE = 0.3
#: … an answer touches the click's mask where it comes within this many model-input pixels of it
ACROSS_TOUCH = 2
#: … answers smaller than this (model-input pixels) are noise
ACROSS_MIN_AREA = 10


def _positive(coords_xy: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The positive clicks [K, 2] (x, y) of a prompt's points coords_xy [P, 2] with labels [P]."""
    return np.asarray(coords_xy, dtype=np.float64)[np.asarray(labels) == 1]


@dataclass(frozen=True)
class ClickRule:
    """level: the brightness (0…1 at the model input) a dim clicked object is raised to, None: off; radius: in
    model-input pixels, the disk around a click its brightness is read from; component: keep only the clicked
    parts of the mask; extent: a large mask (equivalent radius ≥ extent_radius model-input pixels) takes in the
    pixels around it, within extent_reach × its radius, where the image is at least `extent` × the clicked
    brightness (None: off); ceiling: the mask keeps only the pixels, connected to the click, where the frame as it is
    is at most `ceiling` × the clicked brightness (None: off); local_view: a dim clicked object (one the level step
    raises) is read on the frame under local contrast, raised there (see `clicked_input`); through_z: in a z stream
    the masks tracked from the clicks get the extent step and the mask refiner too (`mend_tracked`); across_border:
    the single-image API offers, for a click on the border of two touching objects, the other object and the two
    together as the second and third candidates (`across_seeds`, `pick_across`)."""

    level: float | None = None
    radius: float = 2.0
    component: bool = False
    extent: float | None = None
    extent_radius: float = 12.0
    extent_reach: float = 0.5
    ceiling: float | None = None
    local_view: bool = False
    through_z: bool = False
    across_border: bool = False

    name: ClassVar[str] = "click_rule"

    def __post_init__(self):
        if self.level is not None and not (isinstance(self.level, (int, float)) and 0 < float(self.level) <= 1):
            raise InputError(f"the click rule's level is a brightness in (0, 1] (or None: off); got {self.level!r}")
        if not (isinstance(self.radius, (int, float)) and float(self.radius) > 0):
            raise InputError(f"the click rule's radius is a positive number of model-input pixels; got {self.radius!r}")
        if self.extent is not None and not (isinstance(self.extent, (int, float)) and 0 < float(self.extent) < 1):
            raise InputError(f"the click rule's extent is a fraction in (0, 1) (or None: off); got {self.extent!r}")
        if self.ceiling is not None and not (isinstance(self.ceiling, (int, float)) and float(self.ceiling) > 1):
            raise InputError(
                f"the click rule's ceiling is a multiple of the clicked brightness above 1 (or None: off); "
                f"got {self.ceiling!r}"
            )
        for name in ("local_view", "through_z", "across_border"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise InputError(f"the click rule's {name} is True or False; got {getattr(self, name)!r}")
        for name in ("extent_radius", "extent_reach"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and float(value) > 0):
                raise InputError(f"the click rule's {name} is a positive number; got {value!r}")

    @property
    def off(self) -> bool:
        return (
            self.level is None
            and not self.component
            and self.extent is None
            and self.ceiling is None
            and not self.across_border
        )

    @property
    def reads_image(self) -> bool:
        """Whether a step reads the frame (the level, extent or ceiling step)."""
        return self.level is not None or self.extent is not None or self.ceiling is not None

    def clicked_input(
        self, model_input: torch.Tensor, coords_xy: np.ndarray, labels: np.ndarray, raise_level: bool, local_view=None
    ):
        """What a click prompt on a frame (model input [3, S, S]) is decoded from → (the input to encode for it
        [3, S, S], or None where the frame as it is serves; the grey [S, S] of the input decoded from; the grey of
        the frame as the ceiling step reads it); (None, None, None) where the rule reads no image. `raise_level`: only
        a first prompt on a frame is raised (corrections read the frame's memory, encoded from the frame as it is).
        A first prompt on a dim clicked object (`gain` > 1) is decoded from the frame at the object's level: under
        `local_view` (a callable → the frame under local contrast [3, S, S], or None where there is none), where the
        rule's `local_view` is on, times its own gain; else the frame times `gain`."""
        if not self.reads_image:
            return None, None, None
        grey = self.grey(model_input)
        gain = self.gain(grey, coords_xy, labels) if raise_level else 1.0
        if gain == 1.0:
            return None, grey, grey
        local = local_view() if self.local_view and local_view is not None else None
        if local is not None:
            # each nucleus at its own level: a dim one beside bright ones keeps its shape and they keep theirs
            # (model/README.md, "A dim click read under local contrast")
            grey = self.grey(local)
            model_input, gain = local, self.gain(grey, coords_xy, labels)
            if gain == 1.0:
                return local, grey, grey
        raised = self.apply_gain(model_input, gain)
        return raised, self.grey(raised), grey

    # ------------------------------------------------------------------ before the network
    def gain(self, grey: np.ndarray, coords_xy: np.ndarray, labels: np.ndarray) -> float:
        """The factor the prompted frame is multiplied by (1.0: unchanged).

        grey: [S, S] float, the model input in [0, 1] (the mean of its channels); coords_xy: [P, 2] (x, y) in
        model-input pixels; labels: [P] (1 positive, 0 negative, 2 / 3 box corners)."""
        if self.level is None:
            return 1.0
        brightness = self.brightness(grey, coords_xy, labels)
        if brightness is None or brightness >= self.level:
            return 1.0
        # an empty spot (a click on pure background) is not blown up without bound: at most 1 / 1 % of the range
        return float(self.level / max(brightness, 0.01))

    def brightness(self, grey: np.ndarray, coords_xy: np.ndarray, labels: np.ndarray) -> float | None:
        """The clicked object's brightness in `grey` [S, S]: the 90th percentile within `radius` of each positive
        click, the dimmest of them; None without a positive click."""
        positive = _positive(coords_xy, labels)
        if not len(positive):
            return None
        size = grey.shape[-1]
        rows, cols = np.ogrid[: grey.shape[0], :size]
        values = []
        for x, y in positive:
            disk = (rows - y) ** 2 + (cols - x) ** 2 <= self.radius**2
            if not disk.any():  # a click on the edge of the input: its nearest pixel
                disk = np.zeros(grey.shape, dtype=bool)
                disk[int(np.clip(y, 0, grey.shape[0] - 1)), int(np.clip(x, 0, size - 1))] = True
            values.append(float(np.percentile(grey[disk], 90)))
        return min(values)

    @staticmethod
    def grey(model_input: torch.Tensor) -> np.ndarray:
        """A normalised model input [3, S, S] (ImageNet mean / std) → [S, S] float32 in [0, 1]: the mean of its
        channels (what `gain` reads)."""
        mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
        return (model_input.detach().float().cpu() * std + mean).mean(0).numpy()

    @staticmethod
    def grey_tensor(grey: np.ndarray) -> torch.Tensor:
        """`grey`'s [S, S] frame → the [1, 1, S, S] float32 tensor the mask refiner reads."""
        return torch.from_numpy(np.ascontiguousarray(grey, dtype=np.float32))[None, None]

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
        positive = _positive(coords_xy, labels)
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

    def steps(
        self,
        logits: torch.Tensor,
        grey: np.ndarray | None,
        own_grey: np.ndarray | None,
        coords_xy: np.ndarray,
        labels: np.ndarray,
        image_size: int,
        extend: bool = True,
    ):
        """The rule's steps after the network on one mask's logits [1, 1, h, w] (low-res) → (the logits, whether any
        step changed them): `keep_clicked`; `extend` on `grey` (the model input the mask was decoded from, in [0, 1];
        skipped when None or `extend` is False); `cap` on `own_grey` (the frame before any gain; skipped when None).
        coords_xy [P, 2] (x, y) model-input pixels, labels [P]."""
        logits, changed = self.keep_clicked(logits, coords_xy, labels, image_size)
        if grey is not None and extend:
            logits, extended = self.extend(logits, grey, coords_xy, labels)
            changed = changed or extended
        if own_grey is not None:
            logits, capped = self.cap(logits, own_grey, coords_xy, labels)
            changed = changed or capped
        return logits, changed

    def reaches_extent(self, logits: torch.Tensor, image_size: int) -> bool:
        """Whether the mask of logits [1, 1, h, w] is as large as the masks the extent step treats (equivalent radius
        ≥ extent_radius input pixels). A session hands such a click from a click decoder back to the shared decoder
        and this step (`model.click_decoder`: few large nuclei were in its training set)."""
        if self.extent is None:
            return False
        area = float((logits.detach() > 0).sum()) * (image_size / logits.shape[-1]) * (image_size / logits.shape[-2])
        return bool(np.sqrt(area / np.pi) >= self.extent_radius)

    def extend(self, logits: torch.Tensor, grey: np.ndarray, coords_xy: np.ndarray, labels: np.ndarray):
        """logits [1, 1, h, w] (low-res) of a mask decoded from `grey` [S, S] (the model input in [0, 1]) → (the
        logits with the mask extended, whether anything changed).

        Large nuclei come back as their bright core (model/README.md, "The click rule": recall 0.47-0.92 on the
        large anisotropic frames). A mask of equivalent radius ≥ extent_radius input pixels takes in the pixels
        within extent_reach × that radius of it where `grey` (smoothed over one input pixel) is at least extent ×
        the clicked brightness (`brightness`), as far as they connect to a positive click (all on the low-res cells
        of the logits: their block means of `grey`)."""
        read = None if self.extent is None else self._read_click(logits, grey, coords_xy, labels)
        if read is None:
            return logits, False
        brightness, plane, at = read
        h, w = plane.shape
        step = (grey.shape[0] // h, grey.shape[1] // w)  # input pixels per low-res cell
        mask = plane > 0
        radius = float(np.sqrt(mask.sum() * step[0] * step[1] / np.pi))  # input pixels
        if radius < self.extent_radius:
            return logits, False
        cells = _cell_means(grey, h, w)
        threshold = self.extent * brightness
        near = ndimage.binary_dilation(mask, iterations=max(1, round(self.extent_reach * radius / step[0])))
        parts, _ = ndimage.label(mask | (near & (cells >= threshold)), structure=_EIGHT_CONNECTED)
        region = np.isin(parts, list({int(parts[r, c]) for r, c in at} - {0}))
        added = region & ~mask
        if not added.any():
            return logits, False
        # the image, not a flat value, sets the new logits (EXTENT_LOGIT_SCALE × (cells − threshold) / threshold):
        # positive on the cells taken in and negative on their outer neighbours, so the bilinear resize of the
        # low-res logits puts the new edge where the image crosses the threshold, between cell centres
        soft = (EXTENT_LOGIT_SCALE * (cells - threshold) / threshold).astype(np.float32)
        ring = ndimage.binary_dilation(added, structure=_EIGHT_CONNECTED) & ~region & near & (soft < 0)
        out = plane.copy()
        out[added] = np.maximum(plane[added], soft[added])
        out[ring] = np.maximum(plane[ring], soft[ring])
        return torch.from_numpy(out)[None, None].to(device=logits.device, dtype=logits.dtype), True

    def _read_click(self, logits: torch.Tensor, grey: np.ndarray, coords_xy: np.ndarray, labels: np.ndarray):
        """What the extent and ceiling steps read: (the clicked brightness in `grey` [S, S], the logits [1, 1, h, w]
        as a numpy plane [h, w], the low-res cells [(row, col)] of the positive clicks), or None without a positive
        click or on a black spot."""
        brightness = self.brightness(grey, coords_xy, labels)
        if brightness is None or brightness <= 0:
            return None
        plane = logits.detach().float().cpu().numpy()[0, 0]
        h, w = plane.shape
        step = (grey.shape[0] // h, grey.shape[1] // w)  # input pixels per low-res cell
        at = [(int(np.clip(y / step[0], 0, h - 1)), int(np.clip(x / step[1], 0, w - 1)))
              for x, y in _positive(coords_xy, labels)]  # fmt: skip
        return brightness, plane, at

    def cap(self, logits: torch.Tensor, grey: np.ndarray, coords_xy: np.ndarray, labels: np.ndarray):
        """logits [1, 1, h, w] (low-res) and `grey` [S, S], the frame as it is (the model input in [0, 1], before
        any gain) → (the logits with the mask cut where the frame is brighter than ceiling × the clicked brightness,
        whether anything changed).

        After the gain a dim nucleus and its brighter neighbours look alike, and the mask often spreads over a
        neighbour. On the frame as it is they still differ: of the mask only the cells (block means of `grey`,
        smoothed over one input pixel) at most ceiling × the clicked brightness (`brightness`, read on `grey`) that
        connect to a positive click are kept, holes filled (a bright spot inside the nucleus stays). Nothing changes
        when a click's own cell is above the ceiling."""
        read = None if self.ceiling is None else self._read_click(logits, grey, coords_xy, labels)
        if read is None:
            return logits, False
        brightness, plane, at = read
        h, w = plane.shape
        mask = plane > 0
        if not mask.any():
            return logits, False
        # logits that follow the image, positive below the ceiling: the resized edge lies where the image crosses
        # it (as the extent step's)
        high = self.ceiling * brightness
        soft = (EXTENT_LOGIT_SCALE * (high - _cell_means(grey, h, w)) / high).astype(np.float32)
        parts, _ = ndimage.label(mask & (soft > 0), structure=_EIGHT_CONNECTED)
        if any(parts[r, c] == 0 for r, c in at):  # a click on a spot brighter than the ceiling: nothing to go by
            return logits, False
        kept = ndimage.binary_fill_holes(np.isin(parts, list({int(parts[r, c]) for r, c in at})))
        removed = mask & ~kept
        if not removed.any():
            return logits, False
        out = plane.copy()
        above = removed & (soft <= 0)  # brighter than the ceiling: the image sets how far below zero
        out[above] = np.minimum(plane[above], soft[above])
        out[removed & ~above] = REMOVED_LOGIT  # below the ceiling but cut off from the click by the brighter part
        edge = kept & ndimage.binary_dilation(above, structure=_EIGHT_CONNECTED)
        out[edge] = np.minimum(plane[edge], soft[edge])
        return torch.from_numpy(out)[None, None].to(device=logits.device, dtype=logits.dtype), True

    def mend_tracked(self, logits: torch.Tensor, grey: np.ndarray, refine=None) -> torch.Tensor:
        """A tracked mask's logits [1, 1, h, w] (low-res) on a frame whose model input has grey [S, S] (in [0, 1]) →
        the logits after the extent step, read at the mask's deepest point as if clicked there, and `refine`
        (the model's mask refiner as a callable logits → logits, or None). An empty mask is returned as it is."""
        plane = (logits[0, 0] > 0).detach().cpu().numpy()
        if not plane.any():
            return logits
        depth = ndimage.distance_transform_edt(plane)
        row, col = np.unravel_index(int(np.argmax(depth)), depth.shape)
        step = (grey.shape[0] / plane.shape[0], grey.shape[1] / plane.shape[1])  # input pixels per low-res cell
        point = np.array([[(col + 0.5) * step[1], (row + 0.5) * step[0]]])
        logits, _ = self.extend(logits, grey, point, np.ones(1))
        return logits if refine is None else refine(logits)

    # ------------------------------------------------------------------ what else an ambiguous click offers
    def across_seeds(self, mask: np.ndarray, click_xy) -> np.ndarray:
        """Where to look for an object across the border of a first click's mask: [K, 2] (x, y) model-input pixels,
        the points `ACROSS_RADII` from the click in `ACROSS_DIRECTIONS` directions that lie inside the input and
        outside the mask. mask [S, S] bool: the click's mask at the model input; click_xy (x, y). None of them where
        `across_border` is off."""
        if not self.across_border:
            return np.zeros((0, 2))
        x, y = float(click_xy[0]), float(click_xy[1])
        h, w = mask.shape
        seeds = []
        for radius in ACROSS_RADII:
            for k in range(ACROSS_DIRECTIONS):
                angle = 2 * np.pi * k / ACROSS_DIRECTIONS
                sx, sy = x + radius * np.cos(angle), y + radius * np.sin(angle)
                if 0 <= sx <= w - 1 and 0 <= sy <= h - 1 and not mask[int(np.rint(sy)), int(np.rint(sx))]:
                    seeds.append((sx, sy))
        return np.array(seeds, dtype=np.float64).reshape(-1, 2)

    @staticmethod
    def pick_across(mask: np.ndarray, click_xy, seeds: np.ndarray, answers: np.ndarray) -> int | None:
        """Which of `answers` [K, S, S] (bool: the masks of first clicks at `seeds` [K, 2] (x, y)) is the object across
        the border of the click's `mask` [S, S], or None: the click is not on such a border.

        An answer qualifies when it is an object (≥ `ACROSS_MIN_AREA` pixels), lies mostly outside the mask (at most
        `ACROSS_INSIDE` of it inside), touches it (within `ACROSS_TOUCH` pixels) and its border passes within
        `ACROSS_REACH` pixels of the click (inside or out): the click sits on the seam between the two. Of several,
        the one whose seed lies deepest inside its own answer (the most confident reading of that object)."""
        col = int(np.clip(round(float(click_xy[0])), 0, mask.shape[1] - 1))
        row = int(np.clip(round(float(click_xy[1])), 0, mask.shape[0] - 1))
        near = ndimage.binary_dilation(mask, iterations=ACROSS_TOUCH)
        best, best_depth = None, -1.0
        for k, (answer, (sx, sy)) in enumerate(zip(answers, seeds)):
            area = int(answer.sum())
            if area < ACROSS_MIN_AREA or (answer & mask).sum() > ACROSS_INSIDE * area or not (answer & near).any():
                continue
            inside = ndimage.distance_transform_edt(answer)
            outside = ndimage.distance_transform_edt(~answer)
            if abs(outside[row, col] - inside[row, col]) > ACROSS_REACH:
                continue
            depth = float(inside[int(np.rint(sy)), int(np.rint(sx))])
            if depth > best_depth:
                best, best_depth = k, depth
        return best

    # ------------------------------------------------------------------ provenance
    def record(self) -> dict:
        """settings["click_rule"]: what a replay or a resumed run re-applies."""
        return {self.name: asdict(self)}


def _cell_means(grey: np.ndarray, h: int, w: int) -> np.ndarray:
    """`grey` [S, S] smoothed over one input pixel → its means over the [h, w] low-res cells of the logits."""
    smooth = ndimage.gaussian_filter(grey.astype(np.float32), 1.0)
    step = (grey.shape[0] // h, grey.shape[1] // w)
    return smooth[: h * step[0], : w * step[1]].reshape(h, step[0], w, step[1]).mean(axis=(1, 3))


#: no click rule: the network's answer as it is (the official SAM 2; `preset="parity"`)
CLICK_RULE_OFF = ClickRule()
#: the rule for fluorescence nuclei (nano-fluo's default)
CLICK_RULE_FLUORESCENCE = ClickRule(
    level=0.7, radius=2.0, component=True, extent=0.5, extent_radius=16.0, extent_reach=0.5, ceiling=1.5,
    local_view=True, through_z=True, across_border=True,
)  # fmt: skip
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
        # a field a record lacks was not part of the rule when it was made: off (extent, local_view, through_z,
        # across_border), or its default
        return ClickRule(**{f.name: recorded[f.name] for f in fields(ClickRule) if f.name in recorded})
    except TypeError as exc:
        raise InputError(f"the recorded click rule {recorded!r} cannot be read ({exc})") from None
