"""Train `nano-fluo`, our small SAM 2 for fluorescence microscopy, from scratch on synthetic time-lapses and z-stacks.

    python model/train_nano.py --out runs/nano --steps 1500          # CPU or CUDA ("auto")
    python model/train_nano.py --out runs/nano --steps 1500 --resume # continues from runs/nano/last.pt

The shipped nano-fluo was trained in three legs (the middle one on prompted frames only; see model/README.md):

    python model/train_nano.py --out runs/nano --until 300
    python model/train_nano.py --out runs/nano --resume --clips 16 --frames 1 --until 807
    python model/train_nano.py --out runs/nano --resume
    python model/train_nano.py --out runs/nano --export src/napari_sam2/weights/nano_fluo.pt

v2 (issue 16): fine-tuning from the shipped weights on a 50/50 mix with `napari_sam2.synthetic_hard` movies (10×
brightness spread, mitotic figures, clusters, haze, debris, radius 3–40 px, anisotropic z-stacks, 8/12/16-bit),
hard negatives, ambiguous clicks, SAM's best-candidate mask loss and a 3× IoU loss (the CPU leg of model/README.md):

    python model/train_nano.py --out runs/v2 --init src/napari_sam2/weights/nano_fluo.pt --seed 16 \
        --steps 1200 --clips 4 --frames 2 --threads 1 --hard-fraction 0.5 --hard-negatives 0.5 --ambiguous 0.3 \
        --multimask-min --iou-weight 3 --balanced-end 0 --lr 3e-4 --warmup 50 --lr-min 0.1 --val-every 200 \
        --save-every 50 --pool 12 --stop-after 64        # then: --resume with the same arguments for the next leg

Calibration stage (`--iou-head-only`): only the mask decoder's IoU prediction head learns, on the IoU loss alone,
every other weight frozen — the three candidate masks, the object score and the pointers of a given input stay
exactly as they were; what can change is the predicted IoU and so which candidate is picked (the highest). For a
short last leg from a finished run (ambiguous clicks off: a deep click asks for the nucleus), e.g.

    python model/train_nano.py --out runs/cal --init runs/v2/export.pt --iou-head-only --seed 18 --steps 200 \
        --clips 8 --frames 3 --threads 1 --hard-fraction 0.5 --hard-negatives 0.5 --lr 1e-3 --warmup 10 \
        --lr-min 0.1 --val-every 100 --save-every 50

Decoder-only calibration legs (`--decoder-only`, `--click-images`, `--refine-pass`, `--click-odds`; measured, not
used: held-out calibration 0.22 → 0.24, see model/README.md), e.g. from a training state:

    python model/train_nano.py --out runs/calA --init runs/v2/last.pt --decoder-only --seed 21 --steps 400 \
        --clips 2 --frames 3 --click-images 2 --clicks-per-image 12 --threads 1 --hard-fraction 0.5 \
        --hard-negatives 0.5 --ambiguous 0.3 --multimask-min --iou-weight 10 --balanced-end 0 --lr 3e-4 --warmup 20 \
        --lr-min 0.1 --val-every 100 --save-every 50 --pool 12

Mask-quality head (`--quality-head`, issue 16): the optional `MaskQualityHead` (src/napari_sam2/model/mask_quality.py)
learns to predict each candidate mask's actual IoU from the mask, the frame's high-resolution features and the
prompt; the network of --init is frozen (its masks do not change), only the head's ~21k weights learn (L1 to the IoU
of each of the 3 candidates of single clicks: deep, off-centre, dim beside a brighter nucleus, ambiguous, anywhere;
`--quality-odds`). A 3-frame movie per clicked frame, movie k seeded --seed × 10,000,000 + k, e.g.

    python model/train_nano.py --out runs/qa --quality-head --init src/napari_sam2/weights/nano_fluo.pt \
        --steps 2400 --click-images 2 --clicks-per-image 12 --threads 1 --hard-fraction 0.6 --lr 1e-3 --warmup 50 \
        --lr-min 0.1 --val-every 200 --save-every 100 --seed 26      # --resume with the same arguments continues
    python model/train_nano.py --out runs/qa --export runs/qa/nano_fluo.pt   # the checkpoint carries the head

The shipped head (v1 network + head, model/README.md) is the two legs above to step 800 (`--steps 2400 --until
400`, then `--resume --steps 1000 --until 800`), exported, then a leg on a fixed set of frames of bench_hard's kinds
(`--quality-data conditions`: `condition_set`, training seeds from 700,000, tuning from 800,000), scored exactly as
a fresh session's click is:

    python model/train_nano.py --out runs/qd --quality-head --quality-data conditions --init runs/qa/nano_fluo.pt \
        --quality-groups 80 --quality-tune-groups 12 --steps 1700 --clicks-per-image 64 --threads 1 --lr 3e-4 \
        --warmup 0 --lr-min 0.1 --val-every 340 --save-every 100 --seed 16
    python model/train_nano.py --out runs/qd --export src/napari_sam2/weights/nano_fluo.pt

Click decoder (`--click-decoder`, issue 16, session 13): a second copy of the mask decoder that draws only first
single clicks on frames without memory (src/napari_sam2/model/click_decoder.py); the network of --init is frozen, so
tracking, boxes, corrections, segment everything and `--auto` stay exactly as they were. It learns on a fixed set of
clicks of bench_hard's kinds and issue-7 frames built as `--quality-data conditions` builds the head's (through the
click rule's gain, both contrast steps), every condition drawn equally often, all three candidates on the clicked
nucleus; then the head is retrained on its masks (the qy command with `--init` the exported file). The shipped one
started from session 12's file (sha256 9a8eb4ef…, `git show ee8a90a:src/napari_sam2/weights/nano_fluo.pt >
nano_s12.pt`; from a file that carries a click decoder, a leg trains that one on):

    python model/train_nano.py --out runs/cd --click-decoder --init nano_s12.pt \
        --click-data runs/cd_set.pt --quality-groups 60 --quality-tune-groups 12 --quality-contrast both \
        --quality-click-rule fluorescence --all-candidates --balance-conditions --steps 3000 --clicks-per-image 32 \
        --threads 1 --lr 3e-4 --warmup 50 --lr-min 0.1 --val-every 500 --save-every 100 --seed 13
    python model/train_nano.py --out runs/cd --export runs/cd/cd13.pt
    python model/train_nano.py --out runs/qz --quality-head --quality-data conditions --quality-contrast both \
        --quality-click-rule fluorescence --init runs/cd/cd13.pt --quality-groups 60 --quality-tune-groups 12 \
        --steps 2600 --clicks-per-image 64 --threads 1 --lr 1e-3 --warmup 100 --lr-min 0.05 --val-every 325 \
        --save-every 100 --seed 16
    python model/train_nano.py --out runs/qz --export src/napari_sam2/weights/nano_fluo.pt

Ambiguous clicks for the click decoder (`--cluster-candidates`, `--border-clicks`; issue 16, session 17; measured,
not shipped: model/README.md, "Session 17"): the click set also holds, with odds --border-clicks per touching nucleus,
a click on its shared border with a neighbour (the tuning set: each touching nucleus once, at the middle of the border,
as bench_hard's probe clicks), and the three candidates are trained on the clicked nucleus, it with the touching
neighbour nearest the click, and its touching cluster (`candidate_targets`); the validation adds the border clicks'
mean pairwise IoU of the candidates and the share offering both the nucleus and the pair (`ambiguity`). From the
shipped file (a leg trains its click decoder on), e.g.

    python model/train_nano.py --out runs/cc1 --click-decoder --init src/napari_sam2/weights/nano_fluo.pt \
        --click-data runs/set60b.pt --quality-groups 60 --quality-tune-groups 12 --quality-contrast both \
        --quality-click-rule fluorescence --cluster-candidates --border-clicks 0.5 --balance-conditions --steps 2000 \
        --clicks-per-image 32 --threads 2 --lr 3e-4 --warmup 50 --lr-min 0.1 --val-every 500 --save-every 100 --seed 17

Mask refiner (`--mask-refiner`, issue 16, session 14): a few 3×3 convolutions that correct the border of a first
click's mask from the frame at the model input's resolution (src/napari_sam2/model/mask_refiner.py); the network,
head and click decoder of --init are frozen. It learns on the chosen masks of the click decoder's kind of set (built
without a refiner, the frames kept), on crops of 32 × 32 logit pixels around the clicks. The shipped file is leg r4's
refiner with head h2, fitted to the refined masks of the shorter leg r2 (first 40 groups, 3,000 steps), all from
session 13's file (sha256 012816cd…, `git show 04ca976:src/napari_sam2/weights/nano_fluo.pt > nano_s13.pt`):

    python model/train_nano.py --out runs/r2 --mask-refiner --init nano_s13.pt --click-data runs/set40.pt \
        --quality-groups 40 --quality-tune-groups 12 --quality-contrast both --quality-click-rule fluorescence \
        --balance-conditions --refiner-width 64 --refiner-depth 2 --steps 3000 --clicks-per-image 48 --threads 2 \
        --lr 2e-3 --warmup 50 --lr-min 0.1 --val-every 500 --save-every 100 --seed 21
    python model/train_nano.py --out runs/r2 --export runs/r2.pt
    python model/train_nano.py --out runs/h2 --quality-head --quality-data conditions --quality-contrast both \
        --quality-click-rule fluorescence --init runs/r2.pt --quality-groups 60 --quality-tune-groups 12 \
        --steps 2600 --clicks-per-image 64 --threads 1 --lr 1e-3 --warmup 100 --lr-min 0.05 --val-every 325 \
        --save-every 100 --seed 16
    python model/train_nano.py --out runs/h2 --export runs/h2.pt
    python model/train_nano.py --out runs/r4 --mask-refiner --init nano_s13.pt --click-data runs/set60.pt \
        --quality-groups 60 --quality-tune-groups 12 --quality-contrast both --quality-click-rule fluorescence \
        --balance-conditions --refiner-width 64 --refiner-depth 2 --steps 4500 --clicks-per-image 48 --threads 2 \
        --lr 2e-3 --warmup 50 --lr-min 0.1 --val-every 750 --save-every 100 --seed 21
    python model/train_nano.py --out runs/r4 --export src/napari_sam2/weights/nano_fluo.pt --head-from runs/h2.pt

GPU recipe (NOT run: no GPU was lent while this was written; sized from the CPU timings, to stop by itself within
15 minutes on one H200 with 16 CPU cores — `--stop-after 13` saves a resumable state whatever the speed; making
movies, not the network, limits a GPU, hence the 12 worker processes):

    python model/train_nano.py --out runs/v2gpu --init src/napari_sam2/weights/nano_fluo.pt --seed 16 \
        --device cuda --workers 12 --contrast both --steps 3000 --clips 16 --frames 3 --hard-fraction 0.6 \
        --lineage-fraction 0.5 --hard-negatives 0.5 --ambiguous 0.1 --multimask-min --tracked-all-candidates \
        --click-images 4 --clicks-per-image 8 --click-odds 0.55 0.1 0.25 0.1 --iou-weight 3 --balanced-end 0 \
        --lr 3e-4 --warmup 100 --lr-min 0.1 --val-every 500 --save-every 100 --pool 24 --stop-after 13
    python model/train_nano.py --out runs/v2gpu --export runs/v2gpu/export.pt
    python benchmarks/bench_hard.py --model runs/v2gpu/export.pt --defaults-of nano-fluo
    python model/train_nano.py --out runs/v2q --quality-head --quality-data conditions --quality-contrast both \
        --init runs/v2gpu/export.pt --quality-init src/napari_sam2/weights/nano_fluo.pt --quality-groups 80 \
        --quality-tune-groups 12 --steps 1700 --clicks-per-image 64 --lr 3e-4 --warmup 0 --lr-min 0.1 \
        --val-every 340 --save-every 100 --seed 16 --device cuda

It is the CPU leg "lc31" of the model card (model/README.md: closest yet on the hard conditions, not shipped: after
fine-tuning, its first candidate swells onto touching nuclei, so `--auto` merges pairs of them) with 4 times its clips
and click batches, and lineage movies in half the non-hard movies (lc35's lead); a network from it must pass the
lineage gate (`val_touching_merge` in its log, then `benchmarks/bench_auto.py auto --dev`) before the held-out
benchmarks.
Session 10 (model/README.md) found the hard movies themselves cause that regression (600-step legs: 40 % or
even 15 % of them lose links, none keeps `--auto` above v1): run a leg with `--hard-fraction 0` beside it as
the control.

Data (made on the fly, never stored): movies from `napari_sam2.sample_data` (moving, touching, dividing, vanishing
and returning nuclei; z-stacks of ellipsoids), with random nucleus size (4–18 px radius at the model input), density,
8/16-bit camera, PSF, photon count and read noise; 256² or another size resized as the preprocessing does. Each
movie goes through the same preprocessing as at inference (stack percentiles → [0, 1] → grey as RGB → ImageNet
normalisation). Clips of `--frames` consecutive frames (stride 1–2, forwards or backwards, flipped/rotated).

Objective (SAM 2's video objective, on our network's own inference steps — `SAM2Model.decode`, `encode_memory`,
`condition_on_memory` — so what is trained is what runs): one object per clip, prompted on its first frame as a user
would (one click inside, a box, a mask, or a click followed by 1–2 corrective clicks placed in the largest error);
the following frames are tracked with the memory bank laid out as `TrackingSession` lays it out, by the same functions
(src/napari_sam2/model/memory_bank.py: the prompted frame, the previous num_maskmem − 1 frames, object pointers),
memories rounded to bf16 as stored at inference.
Losses per frame (SAM 2's weights): focal ×20 + dice on every candidate mask (all three candidates are supervised:
a click on a nucleus is not ambiguous, so the IoU head's choice cannot go wrong), L1 between predicted and actual IoU,
and binary cross-entropy of the object-presence score; mask and IoU losses only where the object is present. For
the first half of training a class-balanced cross-entropy is added (weight 1 → 0): without it the from-scratch
network settled on empty masks (IoU 0 after 425 steps of 4 × 6 frames).

Reproducible: the data of step k depends only on (--seed, k); `--resume` restores weights, optimiser and schedule
from `<out>/last.pt` (written every --save-every steps), so an interrupted run continues where it stopped.
Held-out seeds (≥ 1,000,000) are used only by --val-every and benchmarks/bench_nano.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from napari_sam2.automatic import deepest_point
from napari_sam2.click_rule import CLICK_RULE_OFF, CLICK_RULES, ClickRule
from napari_sam2.first_click import decode_first_click
from napari_sam2.frames import FrameSource
from napari_sam2.model import click_decoder as click_decoder_module
from napari_sam2.model import mask_refiner as mask_refiner_module
from napari_sam2.model import memory_bank
from napari_sam2.model.build import build_model, config_from_dict, resolve_device
from napari_sam2.model.configs import NANO_FLUO
from napari_sam2.model.mask_quality import MaskQualityHead, attach_from_state_dict
from napari_sam2.model.sam2 import NO_OBJECT_LOGIT, Memory, Pointer
from napari_sam2.postprocess import fill_holes
from napari_sam2.preprocess import (
    CONTRAST_FIT_PLANES,
    IntensityRange,
    LocalContrast,
    evenly_spaced,
    points_to_model,
    scale_frame,
    to_model_input,
)
from napari_sam2.sample_data import nuclei_lineage_timelapse, nuclei_timelapse, nuclei_zstack
from napari_sam2.session import PROMPT_LOGIT_CLAMP  # previous logits given back as a mask prompt, as at inference
from napari_sam2.synthetic_hard import HARD_CONDITIONS, hard_condition, random_hard_stack

HELD_OUT_SEED = 1_000_000  # training movies use seeds below this
# lineage movies of `validate_touching`: outside the benchmarks' ranges (bench_auto 4,000,001 + / 4,100,000 +, tests
# 3,000,000 +, bench_hard 4,000,000 + 100 c + k, 4,900,000 +, 4,950,000 +) and the training seeds
# (seed x 10,000,000 + k)
VAL_LINEAGE_SEED = 4_200_000
SAM2_LOSS_WEIGHTS = {"focal": 20.0, "dice": 1.0, "iou": 1.0, "presence": 1.0}
LOSS_WEIGHTS = dict(SAM2_LOSS_WEIGHTS)  # this run's (main sets them from its arguments)


# ---------------------------------------------------------------------- data
@dataclasses.dataclass
class Movie:
    """A preprocessed synthetic movie: frames [T, 3, S, S] (model input), labels [T, S, S] int64 at model size,
    image [T, Y, X] the camera frames they came from."""

    frames: torch.Tensor
    labels: torch.Tensor
    special: tuple[int, ...]  # ids with staged events (division, leaving/returning, vanishing)
    image: np.ndarray
    brightness: dict = dataclasses.field(default_factory=dict)  # hard movies: {id: relative brightness}


def model_frames(image: np.ndarray, image_size: int, contrast: str = "global") -> torch.Tensor:
    """Camera frames [T, Y, X] → model input [T, 3, S, S], as `FrameSource` makes it at inference: one intensity
    range for the movie from its 1st and 99.8th percentiles (here of every other pixel), then the contrast step
    ("global": clipped to [0, 1]; "local": `preprocess.LocalContrast` with its window fitted once to three evenly
    spaced frames, as `FrameSource` fits it), grey → RGB, ImageNet-normalised, resized with antialiasing."""
    intensity = IntensityRange.from_percentiles(image[:, ::2, ::2])
    if contrast == "global":  # the original expression, so that runs made before the option stay bit-identical
        return torch.stack(
            [to_model_input(np.repeat(intensity.apply(f)[..., None], 3, axis=-1), image_size) for f in image]
        )
    if contrast != "local":
        raise ValueError(f"contrast is 'global' or 'local'; got {contrast!r}")
    rgb = [np.repeat(f[..., None], 3, axis=-1) for f in image]
    picks = evenly_spaced(len(rgb), CONTRAST_FIT_PLANES)  # as FrameSource fits it
    step = LocalContrast().fitted((intensity.scale(rgb[i]) for i in picks), image_size)
    return torch.stack([to_model_input(scale_frame(f, intensity, step, image_size), image_size) for f in rgb])


def make_movie(
    seed: int, image_size: int, n_frames: int = 12, contrast: str = "global", lineage: bool = False
) -> Movie:
    """One random synthetic movie, preprocessed as at inference (`model_frames`, with the contrast step
    `contrast`). lineage: always a time-lapse, with `nuclei_lineage_timelapse`'s events (3 more divisions, 2 nuclei
    arriving from the border): fresh sisters touching, as `--auto` meets them; the other settings drawn alike."""
    rng = np.random.default_rng(seed)
    radius = float(np.exp(rng.uniform(math.log(4.0), math.log(18.0))))  # at the model input
    side = int(rng.choice([image_size] * 3 + [192, 320, 384]))
    radius_here = radius * side / image_size
    fill = rng.uniform(0.08, 0.35)
    n_nuclei = int(np.clip(round(fill * side * side / (math.pi * radius_here**2)), 3, 40))
    dtype = np.uint8 if rng.random() < 0.5 else np.uint16
    common = {
        "shape": (side, side),
        "n_nuclei": n_nuclei,
        "seed": int(rng.integers(2**31)),
        "dtype": dtype,
        "psf_sigma": float(rng.uniform(0.6, 2.0)),
        "photons": float(np.exp(rng.uniform(math.log(15.0), math.log(400.0)))),
        "read_noise": float(rng.uniform(1.0, 4.0)),
        "nucleus_radius": radius_here,
    }
    if rng.random() < 0.25 and not lineage:
        stack = nuclei_zstack(n_slices=n_frames, z_step=float(rng.uniform(1.0, 3.0)), **common)
        special = ()
    else:
        events = {"arrivals": 2, "extra_divisions": 3} if lineage else {}
        stack = nuclei_timelapse(n_frames=n_frames, **common, **events)
        special = tuple(i for i in (1, 2, 5) if i <= n_nuclei)
    image = stack.image
    frames = model_frames(image, image_size, contrast)
    labels = torch.from_numpy(stack.labels.astype(np.int64))
    if side != image_size:
        labels = F.interpolate(labels[:, None].float(), size=(image_size, image_size), mode="nearest")[:, 0].long()
    return Movie(frames, labels, special, image)


def make_hard_movie(seed: int, image_size: int, n_frames: int = 12, contrast: str = "global") -> Movie:
    """One domain-randomised hard movie or z-stack (`napari_sam2.synthetic_hard.random_hard_stack`: brightness
    spread up to 10×, mitotic figures, clusters, haze, debris, radius 3–40 px at the model input, 8/12/16-bit),
    preprocessed exactly as `make_movie` does."""
    stack, _ = random_hard_stack(seed, n_frames, image_size)
    image = stack.image
    frames = model_frames(image, image_size, contrast)
    labels = torch.from_numpy(stack.labels.astype(np.int64))
    if labels.shape[-1] != image_size:
        labels = F.interpolate(labels[:, None].float(), size=(image_size, image_size), mode="nearest")[:, 0].long()
    return Movie(frames, labels, tuple(stack.events["mitotic"]), image, dict(stack.events["brightness"]))


@dataclasses.dataclass
class Clip:
    """frames [T, 3, S, S]; masks [T, S, S] bool of the target object (empty where it is absent); labels0 [S, S]
    every object's id on the first frame (for ambiguous prompts), transformed like the frames."""

    frames: torch.Tensor
    masks: torch.Tensor
    labels0: torch.Tensor | None = None


def sample_clip(
    movie: Movie, rng: np.random.Generator, length: int, min_area: int = 12, hard_negative: bool = False
) -> Clip | None:
    """A clip of `length` frames of one object present (≥ min_area pixels) on its first frame.

    hard_negative: (movies with known brightness) pick a nucleus that has a brighter object (≥ 1.5×) within
    three of its radii — the dim nucleus beside a bright or mitotic cell that the first nano-fluo confused."""
    n = movie.frames.shape[0]
    stride = int(rng.integers(1, 3)) if n >= 2 * length else 1
    span = (length - 1) * stride + 1
    start = int(rng.integers(0, n - span + 1))
    idx = list(range(start, start + span, stride))
    if rng.random() < 0.5:
        idx = idx[::-1]
    labels = movie.labels[idx]
    ids, counts = torch.unique(labels[0], return_counts=True)
    candidates = [int(i) for i, c in zip(ids, counts) if i > 0 and c >= min_area]
    if not candidates:
        return None
    special = [i for i in candidates if i in movie.special]
    dim = hard_negative_targets(labels[0], candidates, movie.brightness) if hard_negative else []
    if dim:
        obj = int(rng.choice(dim))
    else:
        obj = int(rng.choice(special)) if special and rng.random() < 0.3 else int(rng.choice(candidates))
    frames, masks = movie.frames[idx], labels == obj
    labels0 = labels[0]
    k = int(rng.integers(4))
    frames, masks = torch.rot90(frames, k, dims=(-2, -1)), torch.rot90(masks, k, dims=(-2, -1))
    labels0 = torch.rot90(labels0, k, dims=(-2, -1))
    if rng.random() < 0.5:
        frames, masks, labels0 = frames.flip(-1), masks.flip(-1), labels0.flip(-1)
    return Clip(frames.contiguous(), masks.contiguous(), labels0.contiguous())


def hard_negative_targets(labels: torch.Tensor, candidates: list[int], brightness: dict) -> list[int]:
    """Candidates (ids on labels [S, S]) with an object ≥ 1.5× brighter whose centre lies within 3 radii."""
    if not brightness:
        return []
    ids = [int(i) for i in torch.unique(labels) if i > 0 and int(i) in brightness]
    if len(ids) < 2:
        return []
    lab = labels.numpy()
    centres = np.array(ndimage.center_of_mass(np.ones_like(lab), lab, ids))
    radii = np.sqrt(np.array(ndimage.sum(np.ones_like(lab), lab, ids)) / math.pi)
    where = {obj: k for k, obj in enumerate(ids)}
    chosen = []
    for obj in candidates:
        if obj not in where:
            continue
        k = where[obj]
        near = np.hypot(*(centres - centres[k]).T) <= 3 * radii[k]
        brighter = np.array([brightness[o] >= 1.5 * brightness[obj] for o in ids])
        near[k] = False
        if (near & brighter).any():
            chosen.append(obj)
    return chosen


def touching_neighbours(labels: np.ndarray, obj: int) -> list[int]:
    """The labels of the objects touching `obj` in labels [Y, X] (within 2 px of it), sorted."""
    mask = labels == obj
    ring = ndimage.binary_dilation(mask, iterations=2) & ~mask & (labels > 0)
    return [int(i) for i in np.unique(labels[ring])]


def touching_cluster(labels: np.ndarray, obj: int, depth: int = 3) -> list[int]:
    """The labels of the touching cluster around `obj` (itself included), up to `depth` neighbours deep."""
    cluster = labels == obj
    for _ in range(depth):
        ring = ndimage.binary_dilation(cluster, iterations=2) & ~cluster & (labels > 0)
        cluster |= np.isin(labels, np.unique(labels[ring]))
    return [int(i) for i in np.unique(labels[cluster])]


def contact_pixels(labels: np.ndarray, obj: int, other: int) -> np.ndarray:
    """(y, x) rows of the pixels of `obj` within 2 px of `other`: their shared border, on obj's side."""
    return np.argwhere((labels == obj) & ndimage.binary_dilation(labels == other, iterations=2))


def ambiguous_click(
    labels0: np.ndarray, obj: int, rng: np.random.Generator
) -> tuple[tuple[float, float], np.ndarray] | None:
    """An ambiguous click and the answer it asks for: (x, y) on the object's side of its border with a touching
    neighbour, and a target drawn among the three a user could mean — the nucleus, the nucleus with that
    neighbour, the whole touching cluster. None when the object touches nothing."""
    mask = labels0 == obj
    neighbours = touching_neighbours(labels0, obj)
    if not neighbours:
        return None
    other = int(rng.choice(neighbours))
    contact = contact_pixels(labels0, obj, other)
    y, x = contact[int(rng.integers(len(contact)))]
    cluster = np.isin(labels0, touching_cluster(labels0, obj))
    choice = int(rng.integers(3))
    target = [mask, mask | (labels0 == other), cluster][choice]
    return (float(x), float(y)), target


def click_inside(mask: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """(x, y) of a click a user would give: a pixel well inside the object (distance ≥ 40 % of its deepest)."""
    depth = ndimage.distance_transform_edt(mask)
    ys, xs = np.nonzero(depth >= 0.4 * depth.max())
    k = int(rng.integers(len(ys)))
    return float(xs[k]), float(ys[k])


def correction_click(pred: np.ndarray, mask: np.ndarray) -> tuple[float, float, int] | None:
    """(x, y, label) at the centre of the largest error: positive in a missed region, negative in a false one."""
    missed, false = mask & ~pred, pred & ~mask
    if not missed.any() and not false.any():
        return None
    depth_missed = ndimage.distance_transform_edt(np.pad(missed, 1))[1:-1, 1:-1]
    depth_false = ndimage.distance_transform_edt(np.pad(false, 1))[1:-1, 1:-1]
    positive = depth_missed.max() >= depth_false.max()
    depth = depth_missed if positive else depth_false
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return float(x), float(y), int(positive)


def box_around(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The two corners [[x0, y0], [x1, y1]] of the object's box, each side jittered by ≤ 10 % (max 20 px)."""
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    w, h = x1 - x0, y1 - y0
    noise = np.clip(rng.normal(0, 0.1, 4) * np.array([w, h, w, h]), -20, 20)
    box = np.array([x0, y0, x1, y1], dtype=np.float32) + noise.astype(np.float32)
    size = mask.shape[0]
    return np.clip(box, 0, size).reshape(2, 2)


CLICK_KINDS, CLICK_ODDS = ["deep", "offcentre", "dim", "ambiguous"], [0.3, 0.3, 0.2, 0.2]


def calibration_clicks(
    labels: np.ndarray,
    brightness: dict,
    rng: np.random.Generator,
    k: int,
    min_area: int = 12,
    odds: tuple[float, ...] | None = None,
) -> list[tuple[str, tuple[float, float], np.ndarray]]:
    """k single clicks on one frame (labels [S, S]) whose answers really differ in quality, so that the IoU the
    decoder should predict spreads from 0 to 1: [(kind, (x, y), target [S, S] bool)] — kinds (CLICK_ODDS):
    deep (≥ 40 % of the deepest distance inside), offcentre (1 px to 40 % of it: near the edge), dim (a deep click on
    a nucleus with a ≥ 1.5× brighter one within three radii, the confusion of issue 16) and ambiguous (on the border
    with a touching neighbour, asking for the nucleus, the pair or the cluster: `ambiguous_click`). A kind that the
    frame cannot give (no dim nucleus, nothing touching) falls back to a deep click. Empty: no object ≥ min_area.
    odds: of the four kinds (default CLICK_ODDS). The IoU a head can predict is an average over the clicks it was
    trained on that it cannot tell apart, so odds far from a user's clicks (mostly deep) bias it on theirs."""
    ids, counts = np.unique(labels, return_counts=True)
    candidates = [int(i) for i, c in zip(ids, counts) if i > 0 and c >= min_area]
    if not candidates:
        return []
    dim = hard_negative_targets(torch.from_numpy(labels), candidates, brightness)
    clicks = []
    for _ in range(k):
        kind = str(rng.choice(CLICK_KINDS, p=odds or CLICK_ODDS))
        obj = int(rng.choice(dim)) if kind == "dim" and dim else int(rng.choice(candidates))
        mask = labels == obj
        if kind == "ambiguous":
            unclear = ambiguous_click(labels, obj, rng)
            if unclear is not None:
                clicks.append((kind, unclear[0], unclear[1]))
                continue
            kind = "deep"
        if kind == "offcentre":
            depth = ndimage.distance_transform_edt(mask)
            ys, xs = np.nonzero((depth >= 1) & (depth < 0.4 * depth.max()))
            if len(ys):
                j = int(rng.integers(len(ys)))
                clicks.append((kind, (float(xs[j]), float(ys[j])), mask))
                continue
        clicks.append(("dim" if kind == "dim" and dim else "deep", click_inside(mask, rng), mask))
    return clicks


def random_view(movie: Movie, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One random frame of `movie`, turned by a random multiple of 90° and flipped left-right half of the time
    (nuclei have no up or left) → (frame [1, C, H, W], labels [H, W])."""
    t = int(rng.integers(movie.frames.shape[0]))
    frame, labels = movie.frames[t : t + 1], movie.labels[t]
    turns = int(rng.integers(4))
    frame, labels = torch.rot90(frame, turns, dims=(-2, -1)), torch.rot90(labels, turns, dims=(-2, -1))
    if rng.random() < 0.5:
        frame, labels = frame.flip(-1), labels.flip(-1)
    return frame, labels


def click_batch_loss(
    model,
    movie: Movie,
    rng: np.random.Generator,
    stats: dict,
    k: int,
    refine: bool = False,
    odds=None,
    nucleus_first: bool = False,
) -> torch.Tensor:
    """The calibration objective on one frame of `movie`: k single clicks (`calibration_clicks`) decoded together
    on one image encoding, each with SAM's best-candidate mask loss and the L1 loss of all three predicted IoUs
    (LOSS_WEIGHTS["iou"]); returns the mean over clicks (0.0 when the frame has no object). refine: add the second
    pass of `refine_pass_loss` (the chosen mask shown back to the decoder). nucleus_first: candidate 0 learns the
    clicked nucleus and the best of the others the click's target (`frame_loss`'s `nucleus`)."""
    frame, labels = random_view(movie, rng)
    clicks = calibration_clicks(labels.numpy(), movie.brightness, rng, k, odds=odds)
    if not clicks:
        return 0.0
    device = model.device
    frozen_encoder = not any(p.requires_grad for p in model.image_encoder.parameters())
    with torch.set_grad_enabled(not frozen_encoder and torch.is_grad_enabled()):
        feats = model.encode_image(frame.contiguous().to(device))
        embedding = model.image_embedding(feats)
    n = len(clicks)
    coords = torch.tensor([[c[1]] for c in clicks], dtype=torch.float32, device=device)  # [n, 1, 2]
    out = model.decode(
        embedding.expand(n, -1, -1, -1),
        [h.expand(n, -1, -1, -1) for h in feats.high_res],
        coords,
        torch.ones(n, 1, dtype=torch.int32, device=device),
        multimask=True,
        object_gate=False,
    )
    logits = model.upsample_logits(out.multi_logits)  # [n, 3, S, S]
    presence = F.binary_cross_entropy_with_logits(out.object_score.flatten(), torch.ones(n, device=device))
    loss = LOSS_WEIGHTS["presence"] * presence
    for i, (kind, (x, y), target) in enumerate(clicks):
        target = torch.from_numpy(target).to(device)
        nucleus = None
        if nucleus_first:  # the nucleus under the click (an ambiguous click sits on its side of the border)
            nucleus = target if kind != "ambiguous" else (labels == labels[int(y), int(x)]).to(device)
        focal, dice, _ = mask_losses(logits[i], target)
        mask_loss = LOSS_WEIGHTS["focal"] * focal + LOSS_WEIGHTS["dice"] * dice
        with torch.no_grad():
            pred = logits[i] > 0
            actual = (pred & target).flatten(1).sum(1).float() / (pred | target).flatten(1).sum(1).float().clamp(min=1)
        predicted = out.multi_ious[i].float()
        if nucleus is None:
            best = int(torch.argmin(mask_loss.detach()))
            masks_loss = mask_loss[best]
        else:  # candidate 0 on the nucleus (its loss is already there when the target is the nucleus)
            own = mask_loss[0] if nucleus is target else nucleus_candidate_loss(logits[i][:1], nucleus)
            masks_loss = own + mask_loss[1 + int(torch.argmin(mask_loss[1:].detach()))]
        loss = loss + (masks_loss + LOSS_WEIGHTS["iou"] * (predicted - actual).abs().mean()) / n
        chosen = int(torch.argmax(predicted.detach()))
        stats.setdefault("click_actual", []).append(float(actual[chosen]))
        stats.setdefault("click_predicted", []).append(float(predicted[chosen].detach()))
    if refine:
        loss = loss + refine_pass_loss(model, embedding, feats, coords, out, clicks, stats)
    return loss


def refine_pass_loss(model, embedding, feats, coords, first, clicks, stats) -> torch.Tensor:
    """The second pass of `click_batch_loss`: each click again, now with the first pass's chosen logits as a mask
    prompt (clamped, as the session gives previous logits back), one mask (token 0). The decoder's IoU token sees
    only the prompts and the low-resolution image tokens; the mask a first pass drew (which the high-resolution path
    decides) reaches it only this way — trained here on its mask and its IoU, so that the IoU it predicts for a
    mask it was shown can tell a mask on the clicked nucleus from one on its neighbour. Ambiguous clicks are left
    out (their target is one of three answers drawn at random; the shown mask may rightly be another)."""
    keep = [i for i, c in enumerate(clicks) if c[0] != "ambiguous"]
    if not keep:
        return 0.0
    n, device = len(keep), model.device
    previous = first.logits[keep].detach().float().clamp(-PROMPT_LOGIT_CLAMP, PROMPT_LOGIT_CLAMP)
    out = model.decode(
        embedding.expand(n, -1, -1, -1),
        [h.expand(n, -1, -1, -1) for h in feats.high_res],
        coords[keep],
        torch.ones(n, 1, dtype=torch.int32, device=device),
        mask_prompt=previous,
        multimask=False,
        object_gate=False,
    )
    logits = model.upsample_logits(out.multi_logits)[:, 0]  # [n, S, S]
    loss = 0.0
    for j, i in enumerate(keep):
        target = torch.from_numpy(clicks[i][2]).to(device)
        focal, dice, _ = mask_losses(logits[j : j + 1], target)
        with torch.no_grad():
            pred = logits[j] > 0
            actual = (pred & target).sum().float() / (pred | target).sum().float().clamp(min=1)
        predicted = out.multi_ious[j, 0].float()
        mask_loss = LOSS_WEIGHTS["focal"] * focal[0] + LOSS_WEIGHTS["dice"] * dice[0]
        loss = loss + (mask_loss + LOSS_WEIGHTS["iou"] * (predicted - actual).abs()) / n
        stats.setdefault("refine_actual", []).append(float(actual))
        stats.setdefault("refine_predicted", []).append(float(predicted.detach()))
    return loss


# ---------------------------------------------------------------------- losses
def mask_losses(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per candidate (logits [M, S, S], target [S, S] or [M, S, S]): sigmoid focal loss (γ 2, object pixels weighted
    `alpha`, SAM's 0.25, mean over pixels), dice loss, and class-balanced cross-entropy (mean over object pixels +
    mean over background pixels, halved)."""
    target = target.float().expand_as(logits)
    prob = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    alpha = alpha * target + (1 - alpha) * (1 - target)
    focal = (alpha * ce * (1 - p_t) ** 2).flatten(1).mean(1)
    inter = (prob * target).flatten(1).sum(1)
    dice = 1 - (2 * inter + 1) / (prob.flatten(1).sum(1) + target.flatten(1).sum(1) + 1)
    positives = target.flatten(1).sum(1).clamp(min=1)
    negatives = (1 - target).flatten(1).sum(1).clamp(min=1)
    balanced = 0.5 * ((ce * target).flatten(1).sum(1) / positives + (ce * (1 - target)).flatten(1).sum(1) / negatives)
    return focal, dice, balanced


def nucleus_candidate_loss(logits: torch.Tensor, nucleus: torch.Tensor, balanced_weight: float = 0.0) -> torch.Tensor:
    """The mask loss of candidate 0 (logits [1, S, S]) against the clicked nucleus (`--nucleus-first`)."""
    focal, dice, balanced = mask_losses(logits, nucleus)
    return (LOSS_WEIGHTS["focal"] * focal + LOSS_WEIGHTS["dice"] * dice + balanced_weight * balanced)[0]


def frame_loss(
    model,
    out,
    target: torch.Tensor,
    stats: dict,
    balanced_weight: float = 0.0,
    multimask_min: bool = False,
    nucleus: torch.Tensor | None = None,
) -> torch.Tensor:
    """SAM 2's per-frame loss for one object: out is a DecoderOutput (batch 1, ungated), target [S, S] bool.

    `balanced_weight` adds the class-balanced cross-entropy: from scratch, nuclei cover ~0.5 % of the pixels and the
    official focal + dice losses alone let the network settle on empty masks (measured: IoU 0 after 425 steps);
    weighting object pixels as much as background lifts it out, and the weight decays to 0 (see `balanced_weight`).

    `multimask_min` (SAM's rule for ambiguous prompts): of several candidates only the one with the lowest mask loss
    is trained on the mask; every candidate's predicted IoU is trained on its actual IoU, so the IoU head learns to
    tell a good candidate from a poor one (calibration) and the candidates are free to differ. Without it all three
    candidates learn the same target (the first nano-fluo: nearly identical candidates, IoU head uninformative).

    `nucleus` ([S, S] bool, with `multimask_min`; `--nucleus-first`): candidate 0 always learns this mask — the
    clicked nucleus itself, also when an ambiguous click asks for the pair or the cluster — and the best of the
    other candidates learns the target. Under the plain rule the nucleus candidate of a deep click drifted towards
    the pairs that ambiguous clicks asked of it, and the token, which picks it, merged touching nuclei (the lc31 legs
    of model/README.md); every candidate's IoU is still trained against the target.
    """
    present = bool(target.any())
    presence = F.binary_cross_entropy_with_logits(out.object_score.flatten(), target.any().float().view(1))
    loss = LOSS_WEIGHTS["presence"] * presence
    stats["presence"].append(float(presence.detach()))
    stats["presence_acc"].append(float((out.object_score.flatten()[0] > 0) == present))
    if present:
        logits = model.upsample_logits(out.multi_logits)[0]  # [M, S, S]
        focal, dice, balanced = mask_losses(logits, target)
        with torch.no_grad():
            pred = logits > 0
            inter = (pred & target).flatten(1).sum(1).float()
            union = (pred | target).flatten(1).sum(1).float()
            actual_iou = inter / union.clamp(min=1)
        iou_loss = (out.multi_ious[0].float() - actual_iou).abs()
        mask_loss = LOSS_WEIGHTS["focal"] * focal + LOSS_WEIGHTS["dice"] * dice + balanced_weight * balanced
        if multimask_min and mask_loss.shape[0] > 1:
            if nucleus is None:
                masks_loss = mask_loss[int(torch.argmin(mask_loss.detach()))]
            else:  # candidate 0 on the nucleus (its loss is already there when the target is the nucleus)
                own = (
                    mask_loss[0] if nucleus is target else nucleus_candidate_loss(logits[:1], nucleus, balanced_weight)
                )
                masks_loss = own + mask_loss[1 + int(torch.argmin(mask_loss[1:].detach()))]
            loss = loss + masks_loss + LOSS_WEIGHTS["iou"] * iou_loss.mean()
        else:
            loss = loss + (mask_loss + LOSS_WEIGHTS["iou"] * iou_loss).mean()
        chosen = int(torch.argmax(out.multi_ious[0]))
        stats["iou"].append(float(actual_iou[chosen]))
        stats.setdefault("iou_err", []).append(float(iou_loss[chosen].detach()))
    return loss


# ---------------------------------------------------------------------- one clip, as TrackingSession runs it
def bf16_round(x: torch.Tensor) -> torch.Tensor:
    """Round to bf16 in the forward pass (memories are stored so at inference), identity for the gradient."""
    return x + (x.to(torch.bfloat16).float() - x).detach()


PROMPT_KINDS, PROMPT_ODDS = ["click", "box", "mask", "corrections"], [0.45, 0.2, 0.1, 0.25]


def run_clip(
    model,
    clip: Clip,
    rng: np.random.Generator,
    stats: dict,
    max_pointer_distance: int,
    prompt: str | None = None,
    balanced_weight: float = 0.0,
    multimask_min: bool = False,
    ambiguous: bool = False,
    tracked_multimask_min: bool | None = None,
    nucleus_first: bool = False,
) -> torch.Tensor:
    """Prompt the first frame (`prompt`: one of PROMPT_KINDS, default drawn at random), track the rest with the
    memory bank; returns the summed loss of the clip (`balanced_weight`, `multimask_min`: see `frame_loss`).

    tracked_multimask_min: the rule on the tracked frames (default: as `multimask_min`). False there trains all
    three candidates of a tracked frame on the tracked object: the memory already says which object is meant, and
    candidates free to differ leave the choice to the IoU head (v2b's touching-pair losses: it picked the pair).

    ambiguous: a click prompt becomes an ambiguous one where the object touches another (`ambiguous_click`: on
    the shared border, asking for the nucleus, the pair or the cluster); such a clip stops at its prompted frame.
    nucleus_first: a single click's candidate 0 learns the clicked nucleus (`frame_loss`'s `nucleus`)."""
    cfg = model.cfg
    device = model.device
    feats_all = model.encode_image(clip.frames.to(device))
    masks = clip.masks.to(device)
    first = clip.masks[0].numpy()
    loss = 0.0

    # --- the prompted (conditioning) frame
    feats0 = feats_all.select(slice(0, 1))
    kind = prompt or str(rng.choice(PROMPT_KINDS, p=PROMPT_ODDS))
    if kind == "mask":
        out = model.mask_as_output(feats0, masks[0][None, None].float())
    else:
        embedding = model.image_embedding(feats0)
        if kind == "box":
            coords = torch.from_numpy(box_around(first, rng))[None].to(device)
            labels = torch.tensor([[2, 3]], dtype=torch.int32, device=device)
        else:
            unclear = None
            if ambiguous and kind == "click" and clip.labels0 is not None:
                lab0 = clip.labels0.numpy()
                unclear = ambiguous_click(lab0, int(lab0[first].max()), rng)
            if unclear is not None:
                (x, y), target0 = unclear
                coords = torch.tensor([[[x, y]]], dtype=torch.float32, device=device)
                labels = torch.ones(1, 1, dtype=torch.int32, device=device)
                out = model.decode(embedding, feats0.high_res, coords, labels, multimask=True, object_gate=False)
                own = masks[0] if nucleus_first else None
                return frame_loss(model, out, torch.from_numpy(target0).to(device), stats, balanced_weight, True, own)
            x, y = click_inside(first, rng)
            coords = torch.tensor([[[x, y]]], dtype=torch.float32, device=device)
            labels = torch.ones(1, 1, dtype=torch.int32, device=device)
        out = model.decode(
            embedding, feats0.high_res, coords, labels, multimask=coords.shape[1] <= 1, object_gate=False
        )
        own = masks[0] if nucleus_first else None
        loss = loss + frame_loss(model, out, masks[0], stats, balanced_weight, multimask_min, own)
        if kind == "corrections":
            for _ in range(int(rng.integers(1, 3))):
                pred = (model.upsample_logits(out.logits)[0, 0] > 0).cpu().numpy()
                click = correction_click(pred, first)
                if click is None:
                    break
                coords = torch.cat([coords, torch.tensor([[[click[0], click[1]]]], device=device)], dim=1)
                labels = torch.cat([labels, torch.tensor([[click[2]]], dtype=torch.int32, device=device)], dim=1)
                previous = out.logits.detach().clamp(-PROMPT_LOGIT_CLAMP, PROMPT_LOGIT_CLAMP)
                out = model.decode(
                    embedding, feats0.high_res, coords, labels, mask_prompt=previous, multimask=False, object_gate=False
                )
                loss = loss + frame_loss(model, out, masks[0], stats, balanced_weight)
        out = gated(model, out)
    cond_memory = bf16_round(
        model.encode_memory(feats0, model.upsample_logits(out.logits), out.object_score, binarize=True)
    )
    cond_pointer = out.object_pointer

    # --- the tracked frames
    # the memory bank laid out by the functions TrackingSession uses (napari_sam2/model/memory_bank.py): a forward
    # pass from the prompted frame 0 through a stack longer than the pointer reach
    nmem, num_frames = cfg.num_maskmem, clip.frames.shape[0]
    signed = cfg.use_signed_tpos_enc_to_obj_ptrs
    tracked: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # frame → (memory, pointer)
    for t in range(1, num_frames):
        feats = feats_all.select(slice(t, t + 1))
        memories = [Memory(cond_memory, memory_bank.conditioning_memory_index(nmem))]
        for index, source in memory_bank.recent_memory_frames(t, False, nmem):
            if source in tracked:
                memories.append(Memory(tracked[source][0], index))
        pointers = [Pointer(cond_pointer, memory_bank.conditioning_pointer_distance(t, 0, False, signed))]
        for distance, source in memory_bank.recent_pointer_frames(t, False, cfg.max_obj_ptrs_in_encoder, num_frames):
            if source in tracked:
                pointers.append(Pointer(tracked[source][1], distance))
        embedding = model.condition_on_memory(feats, memories, pointers, max_pointer_distance)
        out = model.decode(embedding, feats.high_res, multimask=True, object_gate=False)
        tracked_min = multimask_min if tracked_multimask_min is None else tracked_multimask_min
        loss = loss + frame_loss(model, out, masks[t], stats, balanced_weight, tracked_min)
        out = gated(model, out)
        memory = model.encode_memory(feats, model.upsample_logits(out.logits), out.object_score, binarize=False)
        tracked[t] = (bf16_round(memory), out.object_pointer)
    return loss


def gated(model, out):
    """What the decoder's object gate does at inference: absent → NO_OBJECT_LOGIT masks and the no-object pointer."""
    present = out.object_score > 0
    logits = torch.where(present[:, :, None, None], out.logits, torch.full_like(out.logits, NO_OBJECT_LOGIT))
    pointer = model._gate_pointer(out.object_pointer, present.float())
    return dataclasses.replace(out, logits=logits, object_pointer=pointer)


# ---------------------------------------------------------------------- schedule, checkpoints
def learning_rate(step: int, total: int, peak: float, warmup: int, floor: float = 0.05) -> float:
    """Linear warm-up to `peak`, then a cosine down to `floor` × peak at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def balanced_weight(step: int, total: int, end: float = 0.5) -> float:
    """Weight of the class-balanced cross-entropy: 1 for the first `end`/2 of training, falling linearly to 0 at
    `end` (default: the half; the second half optimises SAM 2's own objective only). end 0: never (fine-tuning)."""
    if end <= 0:
        return 0.0
    return float(np.clip(2.0 - 2.0 * step / (end * max(1, total)), 0.0, 1.0))


def save_training_state(path: Path, model, optimizer, step: int, args) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "config": dataclasses.asdict(model.cfg),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "torch_rng": torch.get_rng_state(),
            "args": {
                **{k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))},
                # the lists (--click-odds, --quality-odds) too: a shipped file must say every argument it came from
                **{k: list(v) for k, v in vars(args).items() if isinstance(v, (list, tuple)) and v},
                **({"init": Path(args.init).name} if args.init else {}),
            },
        },
        tmp,
    )
    tmp.replace(path)


def export(state_path: Path, target: Path, head_from: Path | None = None) -> None:
    """Write the shipped checkpoint {"model": fp32 state dict, "config": ...} (tensors and plain values only, loadable
    with weights_only=True) and, beside it, the JSON record the registry checks it against (hash, size, params).
    `head_from` (--head-from): a checkpoint whose mask-quality head replaces the state's (the same network, a head
    fitted later), recorded by name and hash."""
    from napari_sam2.registry import file_sha256

    state = torch.load(state_path, map_location="cpu", weights_only=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    # "steps": the step the weights are at (the run's --steps, the schedule's length, is "schedule_steps")
    training = {**state["args"], "schedule_steps": state["args"].get("steps"), "steps": state["step"]}
    if head_from is not None:
        other = torch.load(head_from, map_location="cpu", weights_only=True)["model"]
        head = {k: v for k, v in other.items() if k.startswith("mask_quality.")}
        if not head:
            raise SystemExit(f"--head-from {head_from} carries no mask-quality head")
        state["model"] = {**{k: v for k, v in state["model"].items() if not k.startswith("mask_quality.")}, **head}
        training["head_from"] = f"{Path(head_from).name} (sha256 {file_sha256(Path(head_from))})"
    torch.save({"model": state["model"], "config": state["config"], "training": training}, target)
    record = {
        "sha256": file_sha256(target),
        "file_size": target.stat().st_size,
        "params": sum(p.numel() for p in _model_for(state["model"], config_from_dict(state["config"])).parameters()),
        "training": training,
    }
    target.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"exported step {state['step']} to {target} ({record['file_size'] / 1e6:.2f} MB)")


def start_frozen_leg(args, option: str) -> tuple:
    """The start of a leg that trains one optional part on a frozen network (`option`: --quality-head, --click-decoder):
    torch threads and seed, the output folder, and the state to start from (<out>/last.pt with --resume, else --init)
    → (that state, its config, a network of it with the optional parts its keys carry, its path, whether resumed,
    the device)."""
    state_path = args.out / "last.pt"
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    resume = args.resume and state_path.exists()
    source = state_path if resume else args.init
    if source is None:
        raise SystemExit(f"{option} needs --init (the frozen network's weights) or --resume")
    state = torch.load(source, map_location="cpu", weights_only=True)
    cfg = config_from_dict(state["config"])
    return state, cfg, _model_for(state["model"], cfg), source, resume, device


def part_optimizer(args, params: list, state: dict, resume: bool, name: str) -> tuple:
    """AdamW over one optional part's `params` (made trainable), with its moments, the torch rng and the step restored
    from `state` when resumed → (optimizer, first step, the run's log file)."""
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    start = 0
    if resume:
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        start = int(state["step"])
        print(f"resumed at step {start}", flush=True)
    print(f"{name}: {sum(p.numel() for p in params):,} parameters; steps {start}..{args.steps}", flush=True)
    return optimizer, start, (args.out / "log.jsonl").open("a")


def run_part_leg(
    args,
    model,
    part,
    optimizer,
    start: int,
    log,
    pool: torch.Tensor,
    step_loss,
    validation,
    began: float,
    log_every: int = 50,
) -> int:
    """The steps of a leg that trains one optional part (`part`: the head, the click decoder, the mask refiner) on a
    frozen network: minibatches of --clicks-per-image rows of `pool` drawn without replacement (a new order per pass,
    seeded by (--seed, pass)), `learning_rate`'s schedule, gradients clipped to norm 1. `step_loss(rows)` → (loss,
    {name: values}, logged as the median "train_<name>"); `validation()` (None: none) every --val-every steps,
    logged as "tune_<key>"; a record every `log_every` steps; the state saved as `end_of_step` says."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    n, batch = len(pool), args.clicks_per_image
    per_pass = (n + batch - 1) // batch
    window: dict = {"loss": []}
    for step in range(start, args.steps):
        order = pool[torch.from_numpy(np.random.default_rng([args.seed, step // per_pass]).permutation(n))]
        rows = order[(step % per_pass) * batch : (step % per_pass + 1) * batch]
        lr = learning_rate(step, args.steps, args.lr, args.warmup, args.lr_min)
        for group in optimizer.param_groups:
            group["lr"] = lr
        part.train()
        loss, extra = step_loss(rows)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        window["loss"].append(float(loss.detach()))
        for name, values in extra.items():
            window.setdefault(name, []).extend(values)
        done = step + 1
        validate = validation is not None and args.val_every and (done % args.val_every == 0 or done == args.steps)
        if done % log_every == 0 or done == args.steps or validate:
            record = {"step": done, "pass": done / per_pass, "lr": lr, "minutes": (time.time() - began) / 60,
                      "loss": float(np.mean(window.pop("loss")))}  # fmt: skip
            record.update({f"train_{name}": float(np.median(values)) for name, values in window.items()})
            window = {"loss": []}
            if validate:
                part.eval()
                record.update({"tune_" + k: v for k, v in validation().items()})
            write_record(log, record)
        if end_of_step(args, done, began, args.out / "last.pt", model, optimizer):
            break
    return 0


def _model_for(state_dict: dict, cfg):
    """A fresh network of `cfg` with the optional mask-quality head and click decoder where `state_dict` carries their
    keys."""
    model = build_model(cfg)
    attach_from_state_dict(model, state_dict)
    click_decoder_module.attach_from_state_dict(model, state_dict)
    mask_refiner_module.attach_from_state_dict(model, state_dict)
    return model


# ---------------------------------------------------------------------- the mask-quality head (--quality-head)
QUALITY_KINDS = ["deep", "offcentre", "dim", "ambiguous", "grid"]
QUALITY_ODDS = [0.45, 0.15, 0.2, 0.1, 0.1]


def quality_movie(seed: int, k: int, hard_fraction: float, image_size: int) -> Movie:
    """Movie k of a --quality-head run: 3 frames (only single frames are clicked), hard with odds hard_fraction."""
    hard = np.random.default_rng([seed, k, 16]).random() < hard_fraction
    return (make_hard_movie if hard else make_movie)(seed * 10_000_000 + k, image_size, n_frames=3)


def quality_clicks(labels: np.ndarray, brightness: dict, rng: np.random.Generator, k: int, odds) -> list:
    """k single clicks on one frame with the answer each asks for: [(kind, (x, y), target [S, S] bool or None)].
    The kinds of `calibration_clicks` (deep / offcentre / dim / ambiguous) plus "grid": a pixel anywhere, as segment
    everything's grid clicks (target None: a candidate is scored by its best IoU with any object)."""
    odds = np.array(odds, float) / np.sum(odds)
    n_grid = int((rng.random(k) < odds[4]).sum()) if odds[4] > 0 else 0
    clicks = []
    if k - n_grid > 0 and odds[:4].sum() > 0:
        clicks = calibration_clicks(labels, brightness, rng, k - n_grid, odds=tuple(odds[:4] / odds[:4].sum()))
    size = labels.shape[0]
    for _ in range(n_grid):
        clicks.append(("grid", (float(rng.uniform(0, size)), float(rng.uniform(0, size))), None))
    return clicks


def candidate_ious(masks: torch.Tensor, target: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
    """Actual IoU [M] of candidate masks [M, S, S] (bool) with target [S, S]; target None: with the object (id of
    labels [S, S]) each candidate overlaps best (0 where it overlaps none, or is empty)."""
    if target is not None:
        inter = (masks & target).flatten(1).sum(1).float()
        union = (masks | target).flatten(1).sum(1).float()
        return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    ious = torch.zeros(masks.shape[0])
    for obj in torch.unique(labels[masks.any(0)]):
        if obj <= 0:
            continue
        ious = torch.maximum(ious, candidate_ious(masks, labels == obj, labels))
    return ious


def quality_batch(model, movie: Movie, rng: np.random.Generator, k: int, odds) -> tuple | None:
    """One frame of `movie` (random rotation / flip), k clicks (`quality_clicks`) decoded together by the frozen
    network (multimask, no gate) → (head prediction [n, 3] with gradient, actual IoU [n, 3], kinds), or None."""
    frame, labels = random_view(movie, rng)
    clicks = quality_clicks(labels.numpy(), movie.brightness, rng, k, odds)
    if not clicks:
        return None
    device, n = model.device, len(clicks)
    coords = torch.tensor([[c[1]] for c in clicks], dtype=torch.float32, device=device)  # [n, 1, 2]
    point_labels = torch.ones(n, 1, dtype=torch.int32, device=device)
    head, model.mask_quality = model.mask_quality, None  # the frozen network alone, then the head with a gradient
    try:
        with torch.no_grad():
            feats = model.encode_image(frame.contiguous().to(device))
            embedding = model.image_embedding(feats)
            out = model.decode(embedding, feats.high_res, coords, point_labels, multimask=True, object_gate=False)
            masks = (model.upsample_logits(out.multi_logits) > 0).cpu()  # [n, 3, S, S]
    finally:
        model.mask_quality = head
    actual = torch.stack(
        [
            candidate_ious(masks[i], None if c[2] is None else torch.as_tensor(c[2]), labels)
            for i, c in enumerate(clicks)
        ]
    )
    predicted = head(out.multi_logits, feats.high_res, coords, point_labels, model.image_size)
    return predicted, actual.to(device), [c[0] for c in clicks]


@torch.no_grad()
def validate_quality(model, image_size: int, n_movies: int = 6) -> dict:
    """Held-out (seeds from HELD_OUT_SEED): one deep click per object of frame 0 of n_movies / 2 sample movies and
    n_movies / 2 hard movies, as a user clicks; the chosen candidate's |predicted − actual| IoU and correlation."""
    pairs = []
    model.eval()
    for k in range(n_movies):
        movie = (make_movie if k % 2 == 0 else make_hard_movie)(HELD_OUT_SEED + k, image_size, n_frames=2)
        labels = movie.labels[0]
        objs = [int(o) for o in torch.unique(labels) if o > 0 and int((labels == o).sum()) >= 20]
        if not objs:
            continue
        whole = (0, 0, *labels.shape)
        clicks = [deepest_point((labels == obj).numpy(), whole)[::-1] for obj in objs]  # (x, y)
        feats = model.encode_image(movie.frames[:1].to(model.device))
        coords = torch.tensor(clicks, dtype=torch.float32, device=model.device)[:, None]
        ones = torch.ones(len(clicks), 1, dtype=torch.int32, device=model.device)
        out = model.decode(model.image_embedding(feats), feats.high_res, coords, ones, multimask=True)
        masks = (model.upsample_logits(out.logits)[:, 0] > 0).cpu()
        for i, obj in enumerate(objs):
            actual = float(candidate_ious(masks[i : i + 1], labels == obj, labels)[0])
            pairs.append((float(out.reported_iou[i, 0]), actual))
    model.train()
    stats = click_calibration(pairs)
    return {"val_" + k: v for k, v in stats.items()}


# ---------------------------------------------------------------------- --quality-data conditions
#: seeds of `--quality-data conditions`: training groups from QUALITY_TRAIN_SEED, the tuning set (selection of the
#: leg / step) from QUALITY_TUNE_SEED; both below HELD_OUT_SEED, far from bench_hard's held-out 4,000,000+
QUALITY_TRAIN_SEED, QUALITY_TUNE_SEED = 700_000, 800_000
CONDITION_NAMES = [*HARD_CONDITIONS, "issue7", "random_hard"]  # the `condition` index of a conditions-set click


def deepest_click(mask: np.ndarray) -> tuple[float, float]:
    """(y, x) of the pixel farthest from the mask's border: the click bench_hard / bench_nano give each object."""
    depth = ndimage.distance_transform_edt(mask)
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return float(y), float(x)


def touching_targets(truth: np.ndarray, targets: list[int], clicks: list) -> dict:
    """What a click on a nucleus in a touching cluster may ask for besides the nucleus, per click: partner [n] (the
    touching neighbour nearest the click (y, x), −1: none) and cluster [n, 16] (`touching_cluster`'s labels, padded
    with −1). Targets of `--cluster-candidates`."""
    partner = torch.full((len(targets),), -1, dtype=torch.int16)
    cluster = torch.full((len(targets), 16), -1, dtype=torch.int16)
    known: dict[int, tuple] = {}  # per object (its neighbours' pixels, its cluster): an object is clicked 1–3 times
    for i, (obj, (y, x)) in enumerate(zip(targets, clicks)):
        if obj not in known:
            pixels = {n: np.argwhere(truth == n) for n in touching_neighbours(truth, obj)}
            known[obj] = pixels, touching_cluster(truth, obj)[:16]
        pixels, members = known[obj]
        if pixels:
            reach = [((where - (y, x)) ** 2).sum(1).min() for where in pixels.values()]
            partner[i] = list(pixels)[int(np.argmin(reach))]
        cluster[i, : len(members)] = torch.tensor(members)
    return {"partner": partner, "cluster": cluster}


@torch.no_grad()
def condition_clicks(
    model,
    image: np.ndarray,
    frame: int,
    truth: np.ndarray,
    condition: int,
    rng: np.random.Generator,
    extra: float,
    turns: int = 0,
    flip: bool = False,
    contrast: str = "global",
    rule: ClickRule = CLICK_RULE_OFF,
    inputs: bool = False,
    border: float | None = 0.0,
) -> dict | None:
    """The frozen network's answers to single clicks on one frame, as a fresh `TrackingSession` gives them.

    image [T, Y, X] (a stack, preprocessed by `FrameSource` as at inference), frame: the clicked index, truth
    [Y, X] its labels; the frame (and truth) turned by `turns` × 90° and flipped left-right with `flip`. One click at
    each object's deepest pixel (objects ≥ 20 px, as the benchmarks click), and with odds `extra` a second one
    anywhere ≥ 40 % deep; `border`: with these odds, an object that touches another is also clicked on their shared
    border (on its side; at a random pixel of it, or None: at the middle of its border with its first neighbour, as
    bench_hard's ambiguous-click probe clicks); contrast: the model input's contrast step (`preprocess`), rule: the click rule
    (`napari_sam2.click_rule`), as the session's; a model with a mask refiner refines each candidate as the session
    refines a first click's mask. → {s0 [G, d/8, 4h, 4w], s1 [G, d/4, 2h, 2w] (fp16 high-res maps of
    the G frames the clicks were decoded from: one per gain of the click rule), group [n] (each click's frame in s0 /
    s1), logits [n, 3, 4h, 4w] (fp16,
    before the object gate: what the head reads), coords [n, 1, 2] (x, y at the model input), token [n, 3] (the IoU
    token's estimates: the session's choice is their argmax), actual [n, 3] (each candidate's IoU with the object
    as the session returns it: gated, holes ≤ 8 px filled, resized to the frame), condition [n], deep [n]}; with
    `inputs` also what a decoder needs to be trained on these clicks (`--click-decoder`): embedding [G, d, h, w] (fp16,
    the no-memory embedding of each click's frame), grey [G, S, S] (fp16, that frame in [0, 1]: what the mask refiner
    reads, `--mask-refiner`), truth [1, Y, X] (int16, the view's labels), target [n] (the
    clicked object's label), view [n] (zeros: the view's index, offset by `condition_set`), border [n] (a click on a
    shared border), partner [n] (the touching neighbour nearest the click, −1: none), cluster [n, 16] (the labels of
    the clicked object's touching cluster, `touching_cluster`, padded with −1)."""
    size = model.image_size
    source = FrameSource(image, size, read_ahead=0, contrast=contrast)
    x = source.model_input(frame)[None]
    # the frame under local contrast, where the rule reads dim clicks there (`ClickRule.local_view`)
    local = source.local_view_input(frame) if rule.local_view else None
    truth = np.rot90(truth, turns)
    x = torch.rot90(x, turns, dims=(-2, -1))
    local = None if local is None else torch.rot90(local, turns, dims=(-2, -1))
    if flip:
        x, truth = x.flip(-1), truth[:, ::-1]
        local = None if local is None else local.flip(-1)
    truth = np.ascontiguousarray(truth)
    objs = [int(o) for o in np.unique(truth)[1:] if (truth == o).sum() >= 20]
    if not objs:
        return None
    clicks, deep, targets = [], [], []
    for obj in objs:
        mask = truth == obj
        clicks.append(deepest_click(mask))
        deep.append(True)
        targets.append(obj)
        if extra and rng.random() < extra:
            cx, cy = click_inside(mask, rng)
            clicks.append((cy, cx))
            deep.append(False)
            targets.append(obj)
    on_border = [False] * len(clicks)
    for obj in objs if border != 0.0 else ():
        neighbours = touching_neighbours(truth, obj)
        if not neighbours or (border is not None and rng.random() >= border):
            continue
        if border is None:  # the middle of the contact, as bench_hard's border_click
            contact = contact_pixels(truth, obj, neighbours[0])
            row, col = contact[int(np.argmin(((contact - contact.mean(0)) ** 2).sum(1)))]
        else:
            contact = contact_pixels(truth, obj, int(rng.choice(neighbours)))
            row, col = contact[int(rng.integers(len(contact)))]
        clicks.append((float(row), float(col)))
        deep.append(False)
        targets.append(obj)
        on_border.append(True)
    coords = torch.from_numpy(points_to_model(np.array(clicks), truth.shape, size))[:, None].to(model.device)
    # the click rule's level: each click is decoded from the frame as the rule reads it (`ClickRule.clicked_input`:
    # raised, or under local contrast and raised there); clicks read the same way share one encoding
    frame_grey = ClickRule.grey(x[0])
    local_grey = None if local is None else ClickRule.grey(local)

    def reading(i):  # what decides the input of click i: (its gain on the frame, its gain on the local view)
        point = coords[i].cpu().numpy()
        gain = rule.gain(frame_grey, point, np.ones(1))
        return gain, (rule.gain(local_grey, point, np.ones(1)) if gain != 1.0 and local is not None else None)

    gains = [reading(i) for i in range(len(clicks))]
    groups = sorted(set(gains), key=gains.index)
    s0, s1, embeddings, greys, logits, token = [], [], [], [], [None] * len(clicks), [None] * len(clicks)
    for gain in groups:
        rows = [i for i, g in enumerate(gains) if g == gain]
        view, grey, own_grey = rule.clicked_input(x[0], coords[rows[0]].cpu().numpy(), np.ones(1), True,
                                                  local_view=lambda: local)  # fmt: skip
        seen = x if view is None else view[None]
        feats = model.encode_image(seen.to(model.device))
        embedding = model.image_embedding(feats)
        s0.append(feats.high_res[0][0].half().cpu())
        s1.append(feats.high_res[1][0].half().cpu())
        if grey is None:  # a rule that reads no image
            grey = own_grey = ClickRule.grey(seen[0])
        if inputs:
            embeddings.append(embedding[0].half().cpu())
            greys.append(torch.from_numpy(np.ascontiguousarray(grey)).half())
        # as every face decodes a first click, each candidate as it would be returned were it the chosen one (the
        # frozen network's answers: no mask-quality head)
        first = decode_first_click(model, rule, embedding, feats.high_res, coords[rows], grey, own_grey,
                                   object_gate=False, quality=False)  # fmt: skip
        for j, i in enumerate(rows):
            logits[i] = (first.logits[j : j + 1], first.object_score[j : j + 1])
            token[i] = first.token_ious[j : j + 1]
    multi_logits = torch.cat([c for c, _ in logits])
    present = torch.cat([o for _, o in logits])[:, 0] > 0
    gated = torch.where(present[:, None, None, None], multi_logits, NO_OBJECT_LOGIT)
    masks = (model.upsample_logits(fill_holes(gated, 8), truth.shape) > 0).cpu()
    labels = torch.from_numpy(truth)
    actual = torch.stack([candidate_ious(masks[i], labels == obj, labels) for i, obj in enumerate(targets)])
    extras = {}
    if inputs:
        extras = {"embedding": torch.stack(embeddings), "grey": torch.stack(greys),
                  "truth": labels.to(torch.int16)[None],
                  "target": torch.tensor(targets), "view": torch.zeros(len(clicks), dtype=torch.long),
                  "border": torch.tensor(on_border), **touching_targets(truth, targets, clicks)}  # fmt: skip
    return {
        **extras,
        "s0": torch.stack(s0),
        "s1": torch.stack(s1),
        "group": torch.tensor([groups.index(g) for g in gains]),
        "logits": multi_logits.half().cpu(),
        "coords": coords.cpu(),
        "token": torch.cat(token).cpu(),
        "actual": actual,
        "condition": torch.full((len(clicks),), condition),
        "deep": torch.tensor(deep),
        "local": torch.full((len(clicks),), contrast == "local"),
    }


def condition_set(
    model,
    groups: int,
    tuning: bool,
    contrasts=("global",),
    rule: ClickRule = CLICK_RULE_OFF,
    inputs: bool = False,
    border: float = 0.0,
) -> dict:
    """The clicks of `--quality-data conditions`, stacked: `condition_clicks` of every frame (their "frame" index
    points into s0 / s1). Group k: one stack of each of bench_hard's hard conditions (`hard_condition`, seeds
    QUALITY_TRAIN_SEED + 1000 c + k), an issue-7 frame (`nuclei_timelapse`, 10 nuclei, + 900 + k) and, in training
    only, a `random_hard_stack` frame of 256² (+ 500,000 + k), for breadth. Tuning (QUALITY_TUNE_SEED): built like
    bench_hard — frame 0 (z-stacks: the middle slice), deepest clicks, no turning. Training: two random frames per
    stack, turned and flipped at random, half the objects clicked a second time anywhere deep inside. Each view is
    clicked once per contrast step of `contrasts` (the same clicks: the rng is drawn once per view), through the
    click rule `rule` (`napari_sam2.click_rule`); `inputs`: with the decoder's inputs and targets (`condition_clicks`),
    "view" pointing into "truth"; `border`: the odds of a shared-border click per touching object (training: at a
    random pixel of the border; tuning, where it is not 0: every touching object once, at the middle)."""
    base = QUALITY_TUNE_SEED if tuning else QUALITY_TRAIN_SEED
    extra = 0.0 if tuning else 0.5
    odds = None if tuning and border else border  # (None: each touching object once, at the middle)
    parts = []
    for k in range(groups):
        rng = np.random.default_rng([base, k])
        views = []  # (image, frame, truth, condition)
        for c, name in enumerate(HARD_CONDITIONS):
            stack = hard_condition(name, base + 1000 * c + k, n=16)
            zyx = stack.axes == "ZYX"
            frames = [8 if zyx else 0]
            if not tuning:
                frames = [int(rng.integers(5, 12)), 8] if zyx else [0, int(rng.integers(1, 16))]
            views += [(stack.image, f, stack.labels[f], c) for f in frames]
        movie = nuclei_timelapse(n_frames=1, n_nuclei=10, seed=base + 900 + k)
        views.append((movie.image, 0, movie.labels[0], len(HARD_CONDITIONS)))
        if not tuning:
            stack, _ = random_hard_stack(base + 500_000 + k, n_frames=4)
            if stack.image.shape[-1] == model.image_size:
                f = 2 if stack.axes == "ZYX" else 0
                views.append((stack.image, f, stack.labels[f], len(HARD_CONDITIONS) + 1))
        for image, frame, truth, condition in views:
            turns, flip = (0, False) if tuning else (int(rng.integers(4)), bool(rng.random() < 0.5))
            state = rng.bit_generator.state
            for contrast in contrasts:
                rng.bit_generator.state = state  # every contrast step gets the same second clicks
                got = condition_clicks(
                    model, image, frame, truth, condition, rng, extra, turns, flip, contrast, rule, inputs, odds
                )
                if got is not None:
                    parts.append(got)
    keys = ("logits", "coords", "token", "actual", "condition", "deep", "local")
    data = {key: torch.cat([p[key] for p in parts]) for key in keys}
    data["s0"] = torch.cat([p["s0"] for p in parts])
    data["s1"] = torch.cat([p["s1"] for p in parts])
    offsets = np.cumsum([0] + [len(p["s0"]) for p in parts])
    data["frame"] = torch.cat([p["group"] + int(offsets[i]) for i, p in enumerate(parts)])
    if inputs:
        data["embedding"] = torch.cat([p["embedding"] for p in parts])
        data["grey"] = torch.cat([p["grey"] for p in parts])
        data["truth"] = torch.cat([p["truth"] for p in parts])
        data["target"] = torch.cat([p["target"] for p in parts])
        data["view"] = torch.cat([p["view"] + i for i, p in enumerate(parts)])
        for key in ("border", "partner", "cluster"):
            data[key] = torch.cat([p[key] for p in parts])
    return data


def condition_predict(head, data: dict, rows: torch.Tensor) -> torch.Tensor:
    """The head's IoU [len(rows), 3] for clicks `rows` of a `condition_set`."""
    frames = data["frame"][rows]
    high_res = [data["s0"][frames].float(), data["s1"][frames].float()]
    ones = torch.ones(len(rows), 1, dtype=torch.int32)
    return head(data["logits"][rows].float(), high_res, data["coords"][rows], ones, NANO_FLUO.image_size)


@torch.no_grad()
def condition_calibration(head, data: dict, batch: int = 256) -> dict:
    """Mean |predicted − actual| IoU of the masks a session returns (the IoU token's choice) over a condition set,
    overall and per condition (bench_hard's calibration measure), and over all three candidates."""
    n = len(data["frame"])
    predicted = torch.cat(
        [condition_predict(head, data, torch.arange(i, min(n, i + batch))) for i in range(0, n, batch)]
    )
    rows, chosen = torch.arange(n), data["token"].argmax(1)
    err = (predicted[rows, chosen] - data["actual"][rows, chosen]).abs()
    stats = {"err": float(err.mean()), "err_candidates": float((predicted - data["actual"]).abs().mean()),
             "clicks": n}  # fmt: skip
    for c, name in enumerate(CONDITION_NAMES):
        if (data["condition"] == c).any():
            stats[f"err_{name}"] = float(err[data["condition"] == c].mean())
    for local, name in ((False, "global"), (True, "local")):
        if "local" in data and (data["local"] == local).any() and not (data["local"] == local).all():
            stats[f"err_{name}_contrast"] = float(err[data["local"] == local].mean())
    return stats


def train_quality_on_conditions(args, model, optimizer, start: int, log) -> int:
    """--quality-data conditions: minibatches of --clicks-per-image clicks drawn without replacement (a new order
    per pass, seeded by (--seed, pass)) from `condition_set(--quality-groups)`, L1 to each candidate's actual IoU;
    every --val-every steps the tuning set's calibration (`condition_calibration`, --quality-tune-groups groups)."""
    head = model.mask_quality
    began = time.time()
    contrasts = ("global", "local") if args.quality_contrast == "both" else (args.quality_contrast,)
    rule = CLICK_RULES[args.quality_click_rule]
    data = condition_set(model, args.quality_groups, tuning=False, contrasts=contrasts, rule=rule)
    tune = condition_set(model, args.quality_tune_groups, True, contrasts, rule) if args.quality_tune_groups else None
    n, batch = len(data["frame"]), args.clicks_per_image
    per_pass = (n + batch - 1) // batch
    print(f"conditions set: {n} training clicks ({len(data['s0'])} frames)"
          + (f", {len(tune['frame'])} tuning clicks" if tune else "")
          + f", {(time.time() - began) / 60:.1f} min; {per_pass} steps per pass", flush=True)  # fmt: skip

    def step_loss(rows):
        return (condition_predict(head, data, rows) - data["actual"][rows].to(model.device)).abs().mean(), {}

    validation = (lambda: condition_calibration(head, tune)) if tune is not None else None
    return run_part_leg(args, model, head, optimizer, start, log, torch.arange(n), step_loss, validation, began, 100)


def train_quality_head(args) -> int:
    """--quality-head: train only `SAM2Model.mask_quality` (a `MaskQualityHead`, new or from --init / the resumed
    state) to regress the actual IoU of each of the 3 candidates of single clicks (L1), every other weight frozen:
    the masks stay exactly those of the --init weights, only their predicted IoUs change."""
    state_path = args.out / "last.pt"
    state, cfg, model, source, resume, device = start_frozen_leg(args, "--quality-head")
    if model.mask_quality is None:
        model.mask_quality = MaskQualityHead(cfg.d_model, args.quality_width, args.quality_hidden)
    elif (model.mask_quality.width, model.mask_quality.hidden) != (args.quality_width, args.quality_hidden):
        # the head of --init (or of the resumed state) is trained on; its size wins (the shipped head's leg qw
        # was run with --quality-width 32 --quality-hidden 128 and kept the 16 / 64 head it started from)
        print(
            f"note: the head of {source.name} is {model.mask_quality.width} wide with a hidden width of "
            f"{model.mask_quality.hidden}; --quality-width {args.quality_width} --quality-hidden "
            f"{args.quality_hidden} do not apply",
            flush=True,
        )
    model.load_state_dict(state["model"], strict=model.mask_quality is not None and resume)
    if args.quality_init is not None and not resume:
        # a head fitted to an earlier network is a better start than a random one for the retrained network's head;
        # only its weights are taken (the network stays --init's)
        donor = torch.load(args.quality_init, map_location="cpu", weights_only=True)["model"]
        head_keys = {k[len("mask_quality.") :]: v for k, v in donor.items() if k.startswith("mask_quality.")}
        if not head_keys:
            raise SystemExit(f"--quality-init {args.quality_init} carries no mask-quality head")
        model.mask_quality.load_state_dict(head_keys)
        print(f"mask-quality head from {args.quality_init}", flush=True)
    model = model.to(device).eval()  # the frozen network in inference mode (no dropout / batch statistics anyway)
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(model.mask_quality.parameters())
    optimizer, start, log = part_optimizer(args, params, state, resume, "mask-quality head")
    if args.quality_data == "conditions":
        return train_quality_on_conditions(args, model, optimizer, start, log)
    odds = args.quality_odds or QUALITY_ODDS
    began = time.time()
    window: dict = {"loss": [], "pairs": [], "kinds": {}}
    for step in range(start, args.steps):
        rng = np.random.default_rng([args.seed, step])
        lr = learning_rate(step, args.steps, args.lr, args.warmup, args.lr_min)
        for group in optimizer.param_groups:
            group["lr"] = lr
        losses = []
        for j in range(args.click_images):  # a new movie per frame: data of step k depends on (seed, k) only
            movie = quality_movie(args.seed, step * args.click_images + j, args.hard_fraction, cfg.image_size)
            got = quality_batch(model, movie, rng, args.clicks_per_image, odds)
            if got is None:
                continue
            predicted, actual, kinds = got
            losses.append((predicted - actual).abs().mean())
            with torch.no_grad():
                chosen = predicted.argmax(1)
                rows = torch.arange(len(kinds))
                for kind, p, a in zip(kinds, predicted[rows, chosen].tolist(), actual[rows, chosen].tolist()):
                    window["pairs"].append((p, a))
                    window["kinds"].setdefault(kind, []).append(abs(p - a))
        if losses:
            loss = torch.stack(losses).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            window["loss"].append(float(loss.detach()))
        done = step + 1
        if done % 25 == 0 or done == args.steps:
            record = {
                "step": done,
                "lr": lr,
                "minutes": (time.time() - began) / 60,
                "loss": float(np.mean(window["loss"])) if window["loss"] else None,
                **click_calibration(window["pairs"]),
                **{f"err_{k}": float(np.mean(v)) for k, v in sorted(window["kinds"].items())},
            }
            window = {"loss": [], "pairs": [], "kinds": {}}
            if args.val_every and (done % args.val_every == 0 or done == args.steps):
                record.update(validate_quality(model, cfg.image_size))
            write_record(log, record)
        if end_of_step(args, done, began, state_path, model, optimizer):
            break
    return 0


# ---------------------------------------------------------------------- the click decoder (--click-decoder)
def candidate_targets(data: dict, rows: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """`--cluster-candidates`' targets of clicks `rows` (truth [B, Y, X]: their views' labels) → [B, 3, Y, X]: the
    clicked nucleus, it with the touching neighbour nearest the click, its touching cluster (both the nucleus alone
    where it touches nothing): SAM's part / whole / group for a click on a nucleus among touching ones."""
    device = truth.device
    nucleus = truth == data["target"][rows].to(device)[:, None, None]
    partner = data["partner"][rows].to(device)
    pair = nucleus | ((truth == partner[:, None, None]) & (partner >= 0)[:, None, None])
    members = data["cluster"][rows].to(device)  # [B, 16], −1 padded
    cluster = nucleus | ((truth[:, None] == members[:, :, None, None]) & (members >= 0)[:, :, None, None]).any(1)
    return torch.stack([nucleus, pair, cluster], 1).float()


def click_decoder_loss(
    model,
    decoder,
    data: dict,
    rows: torch.Tensor,
    all_candidates: bool,
    focal_alpha: float = 0.25,
    cluster_candidates: bool = False,
    masks: list | None = None,
) -> tuple:
    """The loss of `decoder` on clicks `rows` of a `condition_set(inputs=True)`, decoded as a session decodes a first
    click (no memory, three candidates): per candidate focal ×20 + dice against the clicked object at the frame's
    size (`focal_alpha`: the object pixels' weight, SAM's 0.25), the smallest of the three (SAM's rule;
    `all_candidates`: their mean; `cluster_candidates`: their mean, each against its own target of
    `candidate_targets`), plus L1 between each candidate's predicted and actual IoU (with the clicked object) and
    the object score's cross-entropy (the clicked object is there); `masks`, a list: the candidates' masks
    [B, 3, Y, X] are appended to it. → (loss, IoU of the IoU token's choice [B], IoU of the best candidate [B])."""
    device = model.device
    frames = data["frame"][rows]
    embedding = data["embedding"][frames].float().to(device)
    high_res = [data["s0"][frames].float().to(device), data["s1"][frames].float().to(device)]
    coords = data["coords"][rows].to(device)
    ones = torch.ones(len(rows), 1, dtype=torch.int32, device=device)
    out = model.decode(embedding, high_res, coords, ones, multimask=True, object_gate=False, quality=False,
                       decoder=decoder)  # fmt: skip
    truth = data["truth"][data["view"][rows]].to(device).long()
    target = (truth == data["target"][rows].to(device)[:, None, None]).float()[:, None]  # [B, 1, Y, X]
    logits = model.upsample_logits(out.multi_logits, tuple(target.shape[-2:]))  # [B, 3, Y, X]
    target = target.expand_as(logits)
    wanted = candidate_targets(data, rows, truth) if cluster_candidates else target
    focal, dice, _ = mask_losses(logits.flatten(0, 1), wanted.flatten(0, 1), focal_alpha)
    mask_loss = (SAM2_LOSS_WEIGHTS["focal"] * focal + SAM2_LOSS_WEIGHTS["dice"] * dice).view(len(rows), -1)  # [B, 3]
    with torch.no_grad():
        hit = (logits > 0).float()
        inter = (hit * target).flatten(2).sum(2)
        union = (hit + target).clamp(max=1).flatten(2).sum(2)
        actual = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    if masks is not None:
        masks.append(logits.detach() > 0)
    chosen_loss = mask_loss.mean(1) if all_candidates or cluster_candidates else mask_loss.min(1).values
    iou_loss = (out.multi_ious.float() - actual).abs().mean(1)
    presence = F.binary_cross_entropy_with_logits(out.object_score[:, 0].float(), torch.ones(len(rows), device=device))
    loss = chosen_loss.mean() + LOSS_WEIGHTS["iou"] * iou_loss.mean() + SAM2_LOSS_WEIGHTS["presence"] * presence
    rows_ = torch.arange(len(rows), device=device)
    return loss, actual[rows_, out.multi_ious.argmax(1)].cpu(), actual.max(1).values.cpu()


@torch.no_grad()
def click_decoder_validation(model, decoder, data: dict, batch: int = 128) -> dict:
    """Median IoU (before the click rule's steps) of the IoU token's choice and of the best candidate over a tuning
    `condition_set(inputs=True)`, overall and per condition."""
    n = len(data["frame"])
    chosen, best, pairwise, offered = [], [], [], []
    for i in range(0, n, batch):
        rows, masks = torch.arange(i, min(n, i + batch)), []
        _, c, b = click_decoder_loss(model, decoder, data, rows, False, masks=masks)
        chosen.append(c)
        best.append(b)
        if "border" in data and data["border"][rows].any():
            on = rows[data["border"][rows]]
            got = masks[0][data["border"][rows]].cpu()
            p, o = ambiguity(got, candidate_targets(data, on, data["truth"][data["view"][on]].long()).bool())
            pairwise.append(p)
            offered.append(o)
    chosen, best = torch.cat(chosen), torch.cat(best)
    plain = ~data["border"] if "border" in data else torch.ones(n, dtype=torch.bool)
    stats = {"chosen": float(chosen[plain].median()), "best": float(best[plain].median())}
    for c, name in enumerate(CONDITION_NAMES):
        where = (data["condition"] == c) & plain
        if where.any():
            stats[f"chosen_{name}"] = float(chosen[where].median())
    if pairwise:
        stats.update(border_clicks=int((~plain).sum()), border_pairwise=float(torch.cat(pairwise).mean()),
                     border_nucleus_and_pair=float(torch.cat(offered).float().mean()))  # fmt: skip
    return stats


def ambiguity(masks: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Of clicks on a shared border, masks [B, 3, Y, X] their candidates and targets [B, 3, Y, X]
    (`candidate_targets`) → (the candidates' mean pairwise IoU [B]; whether they offer both the nucleus and the pair,
    each at IoU ≥ 0.7 [B]) — bench_hard's ambiguous-click probe."""

    def iou(a, b):
        union = (a | b).flatten(1).sum(1)
        return torch.where(union > 0, (a & b).flatten(1).sum(1) / union.clamp(min=1), torch.ones_like(union).float())

    pairwise = torch.stack([iou(masks[:, i], masks[:, j]) for i, j in ((0, 1), (0, 2), (1, 2))]).mean(0)
    nucleus = torch.stack([iou(masks[:, k], targets[:, 0]) for k in range(3)]).max(0).values
    pair = torch.stack([iou(masks[:, k], targets[:, 1]) for k in range(3)]).max(0).values
    return pairwise, (nucleus >= 0.7) & (pair >= 0.7)


def balanced_rows(condition: torch.Tensor) -> torch.Tensor:
    """Row indices in which every condition of `condition` [n] is as frequent as the most frequent one: each
    condition's rows repeated in turn (--balance-conditions; the issue-7 frames hold ~6 % of a set's clicks)."""
    kinds, counts = torch.unique(condition, return_counts=True)
    most = int(counts.max())
    rows = [torch.nonzero(condition == kind)[:, 0] for kind in kinds]
    return torch.cat([r.repeat((most + len(r) - 1) // len(r))[:most] for r in rows])


def click_decoder_sets(args, model) -> tuple[dict, dict | None]:
    """The training and tuning `condition_set`s with the decoder's inputs, through --quality-click-rule's gain, under
    --quality-contrast; kept in --click-data (a file of this machine: built once, ~1 GB per 10,000 frames)."""
    if args.click_data is not None and args.click_data.exists():
        sets = torch.load(args.click_data, map_location="cpu", weights_only=True)
        return sets["train"], sets.get("tune")
    contrasts = ("global", "local") if args.quality_contrast == "both" else (args.quality_contrast,)
    rule = CLICK_RULES[args.quality_click_rule]
    began = time.time()
    data = condition_set(model, args.quality_groups, False, contrasts, rule, inputs=True, border=args.border_clicks)
    tune = None
    if args.quality_tune_groups:
        tune = condition_set(model, args.quality_tune_groups, True, contrasts, rule, True, args.border_clicks)
    print(f"click sets: {len(data['frame'])} training clicks ({len(data['s0'])} frames)"
          + (f", {len(tune['frame'])} tuning clicks" if tune else "")
          + f", {(time.time() - began) / 60:.1f} min", flush=True)  # fmt: skip
    if args.click_data is not None:
        torch.save({"train": data, "tune": tune}, args.click_data)
    return data, tune


def train_click_decoder(args) -> int:
    """--click-decoder: train only `SAM2Model.click_decoder` (a copy of the shared mask decoder, new from --init or
    the resumed state) on a fixed set of single clicks of bench_hard's kinds and issue-7 frames (`condition_set`,
    as `--quality-data conditions` builds it, through the click rule's gain), passed over in minibatches of
    --clicks-per-image clicks (`click_decoder_loss`); every other weight frozen, so tracked frames, segment everything
    and discovery are unchanged. Every --val-every steps the tuning set's `click_decoder_validation`."""
    state_path = args.out / "last.pt"
    state, _, model, _, resume, device = start_frozen_leg(args, "--click-decoder")
    model.load_state_dict(state["model"])
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    data, tune = click_decoder_sets(args, model)  # (the shared decoder's answers: `decode` without `decoder`)
    if model.click_decoder is None:  # a new one, else --init's (or the resumed state's) is trained on
        if resume:
            raise SystemExit(f"{state_path} carries no click decoder")
        model.click_decoder = click_decoder_module.make_click_decoder(model)
    decoder = model.click_decoder.to(device)
    params = list(decoder.parameters())
    optimizer, start, log = part_optimizer(args, params, state, resume, "click decoder")
    if tune is not None and start == 0:
        before = click_decoder_validation(model, model.sam_mask_decoder, tune)  # the shared decoder's
        write_record(log, {"step": 0, **{"before_" + k: v for k, v in before.items()}})
    LOSS_WEIGHTS.update(SAM2_LOSS_WEIGHTS, iou=args.iou_weight)
    pool = balanced_rows(data["condition"]) if args.balance_conditions else torch.arange(len(data["frame"]))

    def step_loss(rows):
        loss, chosen, best = click_decoder_loss(
            model, decoder, data, rows, args.all_candidates, args.focal_alpha, args.cluster_candidates
        )
        return loss, {"chosen": chosen.tolist(), "best": best.tolist()}

    validation = (lambda: click_decoder_validation(model, decoder, tune)) if tune is not None else None
    return run_part_leg(args, model, decoder, optimizer, start, log, pool, step_loss, validation, time.time())


# ---------------------------------------------------------------------- the mask refiner (--mask-refiner)
def refiner_inputs(data: dict, rows: torch.Tensor, crop: int = 0) -> tuple:
    """What the mask refiner reads for clicks `rows` of a `condition_set(inputs=True)`, as a session gives it the
    chosen candidate → (logits [B, 1, L, L]: the IoU token's choice after the click rule's steps; grey [B, 1, 4L, 4L]
    (the frame it was decoded from); s0 [B, C, L, L]; target [B, 1, 4L, 4L] (the clicked object; the view is the
    model input's size)). `crop` > 0: windows of crop × crop logit pixels around each click (training: 1/16 the
    work of a whole 256² frame for nuclei of radius ≤ 40 px), else the whole frame."""
    frames = data["frame"][rows]
    chosen = data["token"][rows].argmax(1)
    logits = data["logits"][rows, chosen][:, None].float()
    grey = data["grey"][frames][:, None].float()
    s0 = data["s0"][frames].float()
    truth = data["truth"][data["view"][rows]]
    if truth.shape[-1] != grey.shape[-1]:
        raise ValueError(f"the views are {tuple(truth.shape[-2:])}, not the model input's size {grey.shape[-1]}")
    target = (truth == data["target"][rows][:, None, None]).float()[:, None]
    if crop:
        side = logits.shape[-1]
        x0, y0 = ((data["coords"][rows][:, 0] / 4).long() - crop // 2).clamp(0, side - crop).unbind(1)
        pick = [(int(y), int(x)) for y, x in zip(y0, x0)]
        logits, s0 = ([t[i, :, y : y + crop, x : x + crop] for i, (y, x) in enumerate(pick)] for t in (logits, s0))
        grey, target = ([t[i, :, 4 * y : 4 * (y + crop), 4 * x : 4 * (x + crop)] for i, (y, x) in enumerate(pick)]
                        for t in (grey, target))  # fmt: skip
        logits, s0, grey, target = map(torch.stack, (logits, s0, grey, target))
    return logits, grey, s0, target


def mask_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU [B] of logits [B, 1, l, l] (bilinear to target's size, > 0) with target [B, 1, Y, X]."""
    hit = F.interpolate(logits.float(), size=target.shape[-2:], mode="bilinear", align_corners=False) > 0
    truth = target > 0.5
    return ((hit & truth).flatten(1).sum(1) / (hit | truth).flatten(1).sum(1).clamp(min=1)).float()


def mask_refiner_loss(refiner, data: dict, rows: torch.Tensor, crop: int) -> torch.Tensor:
    """SAM 2's mask loss (focal ×20 + dice) of the refined logits, bilinear to the model input's size, against the
    clicked object, on crops around the clicks."""
    logits, grey, s0, target = refiner_inputs(data, rows, crop)
    refined = refiner(logits, grey, s0)
    up = F.interpolate(refined, size=target.shape[-2:], mode="bilinear", align_corners=False)
    focal, dice, _ = mask_losses(up[:, 0], target[:, 0])
    return (SAM2_LOSS_WEIGHTS["focal"] * focal + SAM2_LOSS_WEIGHTS["dice"] * dice).mean()


@torch.no_grad()
def mask_refiner_validation(refiner, data: dict, batch: int = 64) -> dict:
    """Median IoU of the chosen masks of a tuning `condition_set(inputs=True)` without and with the refiner (whole
    frames), per condition and contrast step."""
    n = len(data["frame"])
    before, after = [], []
    for i in range(0, n, batch):
        logits, grey, s0, target = refiner_inputs(data, torch.arange(i, min(n, i + batch)))
        before.append(mask_iou(logits, target))
        after.append(mask_iou(refiner(logits, grey, s0), target))
    before, after = torch.cat(before), torch.cat(after)
    stats = {"before": float(before.median()), "after": float(after.median())}
    for c, name in enumerate(CONDITION_NAMES):
        for local in (False, True):
            where = (data["condition"] == c) & (data["local"] == local)
            if where.any():
                key = name + ("_local" if local else "")
                stats[f"before_{key}"] = float(before[where].median())
                stats[f"after_{key}"] = float(after[where].median())
    return stats


def train_mask_refiner(args) -> int:
    """--mask-refiner: train only `SAM2Model.mask_refiner` (`napari_sam2.model.mask_refiner`, new from --init or the
    resumed state) on the click decoder's chosen masks of a fixed set of single clicks (`condition_set`, as
    --click-decoder builds it, with the frames), in minibatches of --clicks-per-image crops (`mask_refiner_loss`);
    every other weight frozen. Every --val-every steps the tuning set's `mask_refiner_validation`."""
    from napari_sam2.model.mask_refiner import MaskRefiner

    state_path = args.out / "last.pt"
    state, _, model, _, resume, device = start_frozen_leg(args, "--mask-refiner")
    model.load_state_dict(state["model"])
    model = model.to(device).eval()
    if model.click_decoder is None:
        raise SystemExit("--mask-refiner refines a click decoder's masks: --init must carry one (--click-decoder)")
    for p in model.parameters():
        p.requires_grad_(False)
    refiner = model.mask_refiner
    model.mask_refiner = None  # the set holds the unrefined masks the refiner is given
    data, tune = click_decoder_sets(args, model)
    if refiner is None:
        if resume:
            raise SystemExit(f"{state_path} carries no mask refiner")
        refiner = MaskRefiner(data["s0"].shape[1], hidden=args.refiner_width, depth=args.refiner_depth)
    model.mask_refiner = refiner.to(device)
    params = list(refiner.parameters())
    optimizer, start, log = part_optimizer(args, params, state, resume, "mask refiner")
    if tune is not None and start == 0:
        write_record(log, {"step": 0, **mask_refiner_validation(refiner, tune)})
    pool = balanced_rows(data["condition"]) if args.balance_conditions else torch.arange(len(data["frame"]))

    def step_loss(rows):
        return mask_refiner_loss(refiner, data, rows, args.refiner_crop), {}

    validation = (lambda: mask_refiner_validation(refiner, tune)) if tune is not None else None
    return run_part_leg(args, model, refiner, optimizer, start, log, pool, step_loss, validation, time.time())


# ---------------------------------------------------------------------- validation (quick; the benchmark is thorough)
@torch.no_grad()
def validate(
    model, image_size: int, n_movies: int, length: int, max_pointer_distance: int, contrast: str = "global"
) -> dict:
    """Held-out movies (seeds from HELD_OUT_SEED): the old generator's click IoU over the first frame and tracking
    IoU over the rest, and, from `n_movies // 2` hard movies (`make_hard_movie`), the click IoU on a dim nucleus
    beside a brighter one where there is one, and the mean |predicted − actual| IoU of every chosen first-frame
    mask (calibration). contrast: the movies' contrast step (`model_frames`); under "local" the keys end in
    "_local"."""
    first_ious, later_ious, hard_ious, errors = [], [], [], []
    model.eval()
    for k in range(n_movies):
        movie = make_movie(HELD_OUT_SEED + k, image_size, contrast=contrast)
        rng = np.random.default_rng(HELD_OUT_SEED + k)
        clip = sample_clip(movie, rng, length)
        if clip is None:
            continue
        stats = {"presence": [], "presence_acc": [], "iou": [], "iou_err": []}
        run_clip(model, clip, rng, stats, max_pointer_distance, prompt="click")
        first_ious.append(stats["iou"][0])
        errors.append(stats["iou_err"][0])
        later_ious.extend(stats["iou"][1:])
    for k in range(n_movies // 2):
        movie = make_hard_movie(HELD_OUT_SEED + k, image_size, n_frames=2, contrast=contrast)
        rng = np.random.default_rng(HELD_OUT_SEED + k)
        clip = sample_clip(movie, rng, 1, hard_negative=True)
        if clip is None:
            continue
        stats = {"presence": [], "presence_acc": [], "iou": [], "iou_err": []}
        run_clip(model, clip, rng, stats, max_pointer_distance, prompt="click")
        hard_ious.append(stats["iou"][0])
        errors.append(stats["iou_err"][0])
    model.train()
    end = "" if contrast == "global" else f"_{contrast}"
    return {
        f"val_click_iou{end}": float(np.mean(first_ious)),
        f"val_track_iou{end}": float(np.mean(later_ious)) if later_ious else float("nan"),
        f"val_hard_click_iou{end}": float(np.mean(hard_ious)) if hard_ious else float("nan"),
        f"val_iou_abs_err{end}": float(np.mean(errors)),
    }


@torch.no_grad()
def validate_touching(
    model, image_size: int, contrast: str = "global", n_movies: int = 3, frames: tuple[int, ...] = (0, 20, 39)
) -> dict:
    """Touching nuclei and fresh sisters (`nuclei_lineage_timelapse`, seeds from VAL_LINEAGE_SEED, preprocessed as a
    session does): one click at the deepest pixel of every nucleus of `frames`, the candidate the IoU token picks (as
    discovery's grid clicks and tracked frames take it) → {val_touching_merge: share of clicks whose mask covers more
    than 30 % of a second nucleus, val_touching_area: median area of the mask / the nucleus's}; under "local" the
    keys end in "_local". Fine-tuned legs that raised the merge share (v1 0.14, the session-9 legs 0.21-0.24 on the
    tuning movies) merged touching nuclei under `--auto` (model/README.md): watch it beside the IoU numbers."""
    merged, area = [], []
    model.eval()
    for k in range(n_movies):
        movie = nuclei_lineage_timelapse(n_frames=max(frames) + 1, seed=VAL_LINEAGE_SEED + k)
        inputs = model_frames(movie.image, image_size, contrast)  # the movie's range, as a session scales it
        for t in frames:
            truth = movie.labels[t]
            sizes = np.bincount(truth.ravel())  # pixels of each nucleus (index: its id)
            ids = [int(i) for i in np.nonzero(sizes)[0] if i and sizes[i] >= 20]
            if not ids:
                continue
            whole = (0, 0, *truth.shape)
            clicks = np.stack([points_to_model([deepest_point(truth == i, whole)], truth.shape, image_size)[0]
                               for i in ids])  # fmt: skip
            feats = model.encode_image(inputs[t : t + 1].to(model.device))
            n = len(ids)
            out = model.decode(
                model.image_embedding(feats).expand(n, -1, -1, -1),
                [h.expand(n, -1, -1, -1) for h in feats.high_res],
                torch.from_numpy(clicks)[:, None].to(model.device),
                torch.ones(n, 1, dtype=torch.int32, device=model.device),
                multimask=True,
                object_gate=False,
                quality=False,
            )
            masks = (model.upsample_logits(out.logits, truth.shape)[:, 0] > 0).cpu().numpy()
            for obj, mask in zip(ids, masks):
                on = np.bincount(truth[mask].ravel(), minlength=len(sizes))
                others = [j for j in np.nonzero(on)[0] if j not in (0, obj)]
                merged.append(any(on[j] > 0.3 * sizes[j] for j in others))
                area.append(mask.sum() / sizes[obj])
    model.train()
    end = "" if contrast == "global" else f"_{contrast}"
    return {f"val_touching_merge{end}": float(np.mean(merged)), f"val_touching_area{end}": float(np.median(area))}


def click_calibration(pairs: list[tuple[float, float]]) -> dict:
    """Calibration of the training clicks' chosen masks, for the log: {click_iou: mean actual IoU, click_iou_err:
    mean |predicted − actual|, click_iou_corr: their correlation} ({} without clicks)."""
    if not pairs:
        return {}
    predicted, actual = np.array(pairs).T
    corr = float(np.corrcoef(predicted, actual)[0, 1]) if predicted.std() > 0 and actual.std() > 0 else None
    return {"click_iou": float(actual.mean()), "click_iou_err": float(np.abs(predicted - actual).mean()),
            "click_iou_corr": corr}  # fmt: skip


# ---------------------------------------------------------------------- data in worker processes (for a GPU)
def movie_for(
    seed: int, k: int, hard_fraction: float, image_size: int, contrast: str = "global", lineage_fraction: float = 0.0
) -> Movie:
    """Movie k of a run: a function of (seed, k) only, whichever process makes it (hard with odds hard_fraction).
    contrast "both": the local contrast step with odds 0.5 (its own draw, so the movies' content is the same as
    under one step). lineage_fraction: odds that a movie that is not hard is a lineage movie (`make_movie(...,
    lineage=True)`; its own draw too, so a run without it makes the movies it made before)."""
    hard = np.random.default_rng([seed, k, 16]).random() < hard_fraction
    if contrast == "both":
        contrast = "local" if np.random.default_rng([seed, k, 17]).random() < 0.5 else "global"
    if hard:
        return make_hard_movie(seed * 10_000_000 + k, image_size, contrast=contrast)
    lineage = lineage_fraction > 0 and np.random.default_rng([seed, k, 18]).random() < lineage_fraction
    return make_movie(seed * 10_000_000 + k, image_size, contrast=contrast, lineage=lineage)


class MovieMaker:
    """Movies of a run by index; with workers > 0 made ahead in that many processes (a GPU trains faster than one
    CPU core makes movies). The same movies either way: each is a function of (seed, k)."""

    def __init__(
        self,
        seed: int,
        hard_fraction: float,
        image_size: int,
        workers: int = 0,
        contrast: str = "global",
        lineage_fraction: float = 0.0,
    ):
        self.args = (hard_fraction, image_size, contrast, lineage_fraction)
        self.seed = seed
        self.pending: dict = {}
        self.executor = None
        if workers > 0:
            import concurrent.futures
            import multiprocessing

            context = multiprocessing.get_context("spawn")  # no fork of a process holding CUDA / OpenMP state
            self.executor = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context)

    def prefetch(self, indices) -> None:
        if self.executor is None:
            return
        for k in indices:
            if k not in self.pending:
                self.pending[k] = self.executor.submit(movie_for, self.seed, k, *self.args)

    def get(self, k: int) -> Movie:
        future = self.pending.pop(k, None)
        for old in [j for j in self.pending if j < k]:
            self.pending.pop(old).cancel()
        return future.result() if future is not None else movie_for(self.seed, k, *self.args)

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)


def write_record(log, record: dict) -> None:
    """One line of the learning curve: appended to log.jsonl (flushed, so a killed leg keeps it) and printed."""
    line = json.dumps(record)
    log.write(line + "\n")
    log.flush()
    print(line, flush=True)


def end_of_step(args, done: int, began: float, state_path, model, optimizer) -> bool:
    """After step `done` of a leg: save the training state when due (every --save-every steps, the last step, or
    a stop) and say whether the leg stops here (--stop-after minutes reached or step --until)."""
    stop = bool((args.stop_after and (time.time() - began) / 60 >= args.stop_after) or done == args.until)
    if done % args.save_every == 0 or done == args.steps or stop:
        save_training_state(state_path, model, optimizer, done, args)
    if stop:
        print(f"stopped at step {done}; --resume continues", flush=True)
    return stop


def with_windows(cfg, window_spec):
    """`cfg` with the Hiera trunk's attention windows per stage set to `window_spec` (None: unchanged)."""
    if not window_spec:
        return cfg
    trunk = dataclasses.replace(cfg.trunk, window_spec=tuple(int(w) for w in window_spec))
    return dataclasses.replace(cfg, trunk=trunk)


def tile_window_embedding(state_dict: dict, cfg) -> dict:
    """Weights of a trunk with narrower first-stage windows, for `cfg`'s wider ones (`--window-spec`): the window
    position embedding, tiled over the grid anyway, is tiled into the wider window, so every token gets the position
    signal it had and only what attention reaches changes (a multiple of the old window is required)."""
    key = "image_encoder.trunk.pos_embed_window"
    old, new = state_dict[key], cfg.trunk.window_spec[0]
    if old.shape[-1] == new:
        return state_dict
    if new % old.shape[-1]:
        raise SystemExit(f"--window-spec: the first stage's window {new} is not a multiple of the checkpoint's "
                         f"{old.shape[-1]}")  # fmt: skip
    k = new // old.shape[-1]
    return {**state_dict, key: old.tile(1, 1, k, k)}


def make_optimizer(model, args) -> torch.optim.Optimizer:
    """AdamW over every parameter, or (`--iou-head-only`) over the mask decoder's IoU prediction head alone with
    every other parameter frozen: the candidate masks, object scores and pointers of a given input are then
    unchanged, only which of the three candidates is picked (the highest predicted IoU) can change."""
    params = list(model.parameters())
    if getattr(args, "decoder_only", False):  # image features, memories and prompts' encodings stay as they are
        for p in params:
            p.requires_grad_(False)
        params = list(model.sam_mask_decoder.parameters())
        for p in params:
            p.requires_grad_(True)
    if getattr(args, "iou_head_only", False):
        for p in params:
            p.requires_grad_(False)
        params = list(model.sam_mask_decoder.iou_prediction_head.parameters())
        for p in params:
            p.requires_grad_(True)
    return torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)


# ---------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for last.pt and log.jsonl")
    parser.add_argument("--steps", type=int, default=1500, help="total optimiser steps (sets the schedule)")
    parser.add_argument("--clips", type=int, default=8, help="clips (objects) per step")
    parser.add_argument("--frames", type=int, default=3, help="frames per clip")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool", type=int, default=12, help="recent movies clips are drawn from")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--save-every", type=int, default=100)
    parser.add_argument("--val-every", type=int, default=500)
    parser.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    parser.add_argument("--export", type=Path, help="only write the shipped checkpoint from <out>/last.pt and exit")
    parser.add_argument("--head-from", type=Path, help="--export: take the mask-quality head from this checkpoint")
    parser.add_argument("--stop-after", type=float, default=0, help="stop (saving) after this many minutes")
    parser.add_argument("--until", type=int, default=0, help="stop (saving) after this step (to change settings)")
    parser.add_argument("--init", type=Path, help="start from these weights (a shipped checkpoint or a last.pt)")
    parser.add_argument(
        "--contrast",
        choices=["global", "local", "both"],
        default="global",
        help="the contrast step "
        "of the training movies (preprocess; both: local with odds 0.5 per movie); validation runs "
        "under global and, unless global, under local too",
    )
    parser.add_argument("--hard-fraction", type=float, default=0.0, help="share of movies from synthetic_hard")
    parser.add_argument("--lineage-fraction", type=float, default=0.0, help="share of the other movies with "
                        "nuclei_lineage_timelapse's events (divisions, arrivals: touching sisters)")  # fmt: skip
    parser.add_argument("--hard-negatives", type=float, default=0.0, help="odds a hard movie's clip targets a dim "
                        "nucleus beside a brighter one")  # fmt: skip
    parser.add_argument("--ambiguous", type=float, default=0.0, help="odds a click clip gets an ambiguous click")
    parser.add_argument("--multimask-min", action="store_true", help="train only the best of the 3 candidate masks")
    parser.add_argument("--tracked-all-candidates", action="store_true", help="with --multimask-min: tracked "
                        "frames still train all three candidates on the tracked object (only prompts are ambiguous)")  # fmt: skip
    parser.add_argument("--window-spec", type=int, nargs=4, metavar="W", help="attention window of each Hiera "
                        "stage, in tokens (nano-fluo: 8 4 8 8, i.e. 32 px in the first two stages at 256²); with "
                        "--init the first stage's window embedding is tiled to the new window")  # fmt: skip
    parser.add_argument("--nucleus-first", action="store_true", help="candidate 0 of a single click always learns "
                        "the clicked nucleus (also for ambiguous clicks), the best of the others the target: with "
                        "--multimask-min on clips, and in click batches")  # fmt: skip
    parser.add_argument("--iou-weight", type=float, default=1.0, help="weight of the L1 IoU-prediction loss")
    parser.add_argument("--balanced-end", type=float, default=0.5, help="fraction of training with the balanced "
                        "cross-entropy (0: none, as when fine-tuning)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=0, help="processes making movies ahead (0: in the loop)")
    parser.add_argument("--lr-min", type=float, default=0.05, help="the cosine's floor, a fraction of --lr")
    parser.add_argument("--iou-head-only", action="store_true", help="calibration stage: train only the mask "
                        "decoder's IoU prediction head on the IoU loss, everything else frozen")  # fmt: skip
    parser.add_argument("--decoder-only", action="store_true", help="train only the mask decoder (frozen image "
                        "encoder, memory, prompt encoder): masks, scores and IoUs of given features")  # fmt: skip
    parser.add_argument("--click-images", type=int, default=0, help="frames per step with --clicks-per-image "
                        "calibration clicks each (click_batch_loss), besides the --clips clips")  # fmt: skip
    parser.add_argument("--clicks-per-image", type=int, default=8)
    parser.add_argument("--click-odds", type=float, nargs=4, metavar=("DEEP", "OFFCENTRE", "DIM", "AMBIGUOUS"),
                        help=f"odds of the calibration click kinds (default {CLICK_ODDS})")  # fmt: skip
    parser.add_argument("--refine-pass", action="store_true", help="calibration clicks also train a second pass "
                        "with the first pass's mask as a mask prompt (refine_pass_loss)")  # fmt: skip
    parser.add_argument("--quality-head", action="store_true", help="train only the optional mask-quality head "
                        "(train_quality_head) on --click-images frames × --clicks-per-image clicks per step; the "
                        "network of --init stays frozen")  # fmt: skip
    parser.add_argument("--quality-width", type=int, default=16, help="--quality-head: channels of its image map")
    parser.add_argument("--quality-hidden", type=int, default=64, help="--quality-head: its MLP's hidden width")
    parser.add_argument("--quality-odds", type=float, nargs=5, metavar=tuple(k.upper() for k in QUALITY_KINDS),
                        help=f"--quality-head: odds of the click kinds (default {QUALITY_ODDS})")  # fmt: skip
    parser.add_argument("--quality-data", choices=["mixed", "conditions"], default="mixed", help="--quality-head: "
                        "mixed: a new movie per clicked frame, clicks of --quality-odds; conditions: a fixed set of "
                        "frames of bench_hard's kinds (condition_set), passed over in minibatches of "
                        "--clicks-per-image clicks")  # fmt: skip
    parser.add_argument("--quality-groups", type=int, default=80, help="--quality-data conditions: training groups")
    parser.add_argument("--quality-contrast", choices=["global", "local", "both"], default="global", help="--quality-"
                        "data conditions: the contrast step of the clicked frames (both: every view clicked under "
                        "each, so the head is calibrated for either)")  # fmt: skip
    parser.add_argument("--quality-click-rule", choices=sorted(CLICK_RULES), default="off", help="--quality-data "
                        "conditions: the click rule the clicks go through (napari_sam2.click_rule; fluorescence: "
                        "nano-fluo's default), so the head is calibrated for the masks a session returns")  # fmt: skip
    parser.add_argument("--quality-init", type=Path, help="--quality-head: start the head from this checkpoint's "
                        "head (the frozen network is --init's)")  # fmt: skip
    parser.add_argument("--quality-tune-groups", type=int, default=12, help="--quality-data conditions: tuning "
                        "groups validated every --val-every steps (0: none)")  # fmt: skip
    parser.add_argument("--click-decoder", action="store_true", help="train only the optional click decoder "
                        "(train_click_decoder) on --quality-data conditions' clicks (--quality-groups, "
                        "--quality-contrast, --quality-click-rule, --quality-tune-groups) in minibatches of "
                        "--clicks-per-image; the network of --init stays frozen")  # fmt: skip
    parser.add_argument("--click-data", type=Path, help="--click-decoder: a file keeping the click sets between runs")
    parser.add_argument("--balance-conditions", action="store_true", help="--click-decoder: draw every condition "
                        "of the set as often as the most frequent one (balanced_rows)")  # fmt: skip
    parser.add_argument("--focal-alpha", type=float, default=0.25, help="--click-decoder: the focal loss's weight "
                        "of object pixels (SAM's 0.25; background 1 − it)")  # fmt: skip
    parser.add_argument("--all-candidates", action="store_true", help="--click-decoder: train all three "
                        "candidates on the clicked object (default: the best of the three, SAM's rule)")  # fmt: skip
    parser.add_argument("--cluster-candidates", action="store_true", help="--click-decoder: train the three "
                        "candidates on the clicked nucleus, it with its touching neighbour nearest the click, and "
                        "its touching cluster (candidate_targets), so a click among touching nuclei offers each")  # fmt: skip
    parser.add_argument("--border-clicks", type=float, default=0.0, help="--click-decoder: the odds of a click on "
                        "the shared border of each touching nucleus in the click sets (the tuning set: each once)")  # fmt: skip
    parser.add_argument("--mask-refiner", action="store_true", help="train only the optional mask refiner "
                        "(train_mask_refiner) on the click decoder's masks of --quality-data conditions' clicks (the "
                        "options of --click-decoder); the network of --init, which must carry a click decoder, stays "
                        "frozen")  # fmt: skip
    parser.add_argument("--refiner-width", type=int, default=32, help="--mask-refiner: hidden channels")
    parser.add_argument("--refiner-depth", type=int, default=2, help="--mask-refiner: hidden convolutions")
    parser.add_argument("--refiner-crop", type=int, default=32, help="--mask-refiner: the training window around "
                        "each click, in logit pixels (4 input pixels each)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.mask_refiner and not args.export:
        return train_mask_refiner(args)
    if args.click_decoder and not args.export:
        return train_click_decoder(args)
    if args.quality_head and not args.export:
        return train_quality_head(args)
    LOSS_WEIGHTS.update(SAM2_LOSS_WEIGHTS, iou=args.iou_weight)
    if args.iou_head_only:  # the masks, scores and pointers stay as they are: only the IoU estimate learns
        LOSS_WEIGHTS.update(focal=0.0, dice=0.0, presence=0.0)
        args.balanced_end = 0.0

    state_path = args.out / "last.pt"
    if args.export:
        export(state_path, args.export, args.head_from)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    cfg = with_windows(NANO_FLUO, args.window_spec)
    model = build_model(cfg).to(device).train()
    optimizer = make_optimizer(model, args)
    start = 0
    if args.init and not (args.resume and state_path.exists()):
        init = torch.load(args.init, map_location="cpu", weights_only=True)
        cfg = with_windows(config_from_dict(init["config"]), args.window_spec)
        model = build_model(cfg).to(device).train()
        # a mask-quality head, click decoder or mask refiner learned on the network this leg changes would misjudge
        # its masks / read features it never saw: they are left out (retrain them afterwards on the new network)
        optional = ("mask_quality.", "click_decoder.", "mask_refiner.")
        network = {k: v for k, v in init["model"].items() if not k.startswith(optional)}
        model.load_state_dict(tile_window_embedding(network, cfg))
        optimizer = make_optimizer(model, args)
        dropped = " (its optional parts left out)" if len(network) < len(init["model"]) else ""
        print(f"initialised from {args.init}{dropped}", flush=True)
    if args.resume and state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        cfg = config_from_dict(state["config"])
        model = build_model(cfg).to(device).train()
        model.load_state_dict(state["model"])
        optimizer = make_optimizer(model, args)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        start = int(state["step"])
        print(f"resumed at step {start}", flush=True)
    # as on any stack longer than the pointer reach
    max_pointer_distance = memory_bank.max_pointer_distance(sys.maxsize, cfg.max_obj_ptrs_in_encoder)
    params = sum(p.numel() for p in model.parameters())
    print(f"nano-fluo: {params:,} parameters on {device}; steps {start}..{args.steps}", flush=True)

    pool: dict[int, Movie] = {}
    log = (args.out / "log.jsonl").open("a")
    began = time.time()
    window = {"loss": [], "presence": [], "presence_acc": [], "iou": [], "iou_err": []}
    clicked: list[tuple[float, float]] = []  # (predicted, actual) IoU of the calibration clicks' chosen masks
    refined: list[tuple[float, float]] = []  # the same for their second pass (--refine-pass)
    movies = MovieMaker(args.seed, args.hard_fraction, cfg.image_size, args.workers, args.contrast,
                        args.lineage_fraction)  # fmt: skip
    for step in range(start, args.steps):
        newest = step // 2  # a new movie every other step (making one costs ~0.3 s, a step ~1 s on 2 CPU cores)
        movies.prefetch(range(newest + 1, newest + 1 + 2 * args.workers))
        for k in range(max(0, newest - args.pool + 1), newest + 1):  # the pool is a function of the step: resumable
            if k not in pool:
                pool[k] = movies.get(k)
        for k in [k for k in pool if k <= newest - args.pool]:
            del pool[k]
        rng = np.random.default_rng([args.seed, step])
        lr = learning_rate(step, args.steps, args.lr, args.warmup, args.lr_min)
        for group in optimizer.param_groups:
            group["lr"] = lr
        stats = {"presence": [], "presence_acc": [], "iou": [], "iou_err": []}
        loss = 0.0
        clips = 0
        keys = sorted(pool)
        while clips < args.clips:
            # drawn only when asked for, so that the first nano-fluo's recipe still sees the same data stream
            hard_negative = args.hard_negatives > 0 and rng.random() < args.hard_negatives
            clip = sample_clip(pool[keys[int(rng.integers(len(keys)))]], rng, args.frames, hard_negative=hard_negative)
            if clip is None:
                continue
            ambiguous = args.ambiguous > 0 and rng.random() < args.ambiguous
            clip_loss = run_clip(
                model, clip, rng, stats, max_pointer_distance, None, balanced_weight(step, args.steps, args.balanced_end),
                args.multimask_min, ambiguous, False if args.tracked_all_candidates else None, args.nucleus_first,
            )  # fmt: skip
            loss = loss + clip_loss / (args.clips * args.frames)
            clips += 1
        for _ in range(args.click_images):  # drawn after the clips: a run without them sees the same stream
            movie = pool[keys[int(rng.integers(len(keys)))]]
            odds = tuple(np.array(args.click_odds) / sum(args.click_odds)) if args.click_odds else None
            batch_loss = click_batch_loss(
                model, movie, rng, stats, args.clicks_per_image, args.refine_pass, odds, args.nucleus_first
            )
            loss = loss + batch_loss / args.click_images
        optimizer.zero_grad(set_to_none=True)
        if torch.is_tensor(loss) and loss.requires_grad:  # (head only: no frame with the object has no IoU loss)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        window["loss"].append(float(loss.detach()) if torch.is_tensor(loss) else float(loss))
        for key in ("presence", "presence_acc", "iou", "iou_err"):
            window[key].extend(stats[key])
        clicked.extend(zip(stats.get("click_predicted", []), stats.get("click_actual", [])))
        refined.extend(zip(stats.get("refine_predicted", []), stats.get("refine_actual", [])))
        done = step + 1
        if done % 25 == 0 or done == args.steps:
            record = {
                "step": done,
                "lr": lr,
                "minutes": (time.time() - began) / 60,
                **{k: float(np.mean(v)) if v else None for k, v in window.items()},
                **click_calibration(clicked),
                **{k.replace("click", "refine"): v for k, v in click_calibration(refined).items()},
            }
            window, clicked, refined = {k: [] for k in window}, [], []
            if args.val_every and (done % args.val_every == 0 or done == args.steps):
                record.update(validate(model, cfg.image_size, 12, 8, max_pointer_distance))
                record.update(validate_touching(model, cfg.image_size))
                if args.contrast != "global":  # also on the inputs it now learns from
                    record.update(validate(model, cfg.image_size, 12, 8, max_pointer_distance, contrast="local"))
                    record.update(validate_touching(model, cfg.image_size, contrast="local"))
            write_record(log, record)
        if end_of_step(args, done, began, state_path, model, optimizer):
            break
    movies.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
