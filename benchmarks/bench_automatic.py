"""Segment everything on single frames: instance F1 against the ground truth, and the cost per frame.

    python benchmarks/bench_automatic.py                    # nano-fluo, its defaults, held-out seeds
    python benchmarks/bench_automatic.py --dev              # the seeds the nano-fluo defaults were chosen on
    python benchmarks/bench_automatic.py --set pred_iou_thresh=0.8 --set stability_score_thresh=0.95
    python benchmarks/bench_automatic.py --speed            # seconds per 256² frame, alternating with tracking

Frames: `nuclei_timelapse` movies of 256² (the four conditions of bench_nano.py: sample defaults, small crowded
nuclei, large nuclei, a dim 12-bit camera), frames 0, 15 and 30 of a 31-frame movie, `--seeds` movies per
condition. Held-out seeds start at 2,000,000 (as bench_nano.py; training draws its seeds elsewhere); the nano-fluo
defaults in automatic.MODEL_DEFAULTS were chosen on seeds from 2,500,000 (`--dev`), never on the held-out ones.

Instance F1 at IoU 0.5: a predicted object and a true one match when their IoU is > 0.5 (such a match is unique);
F1 = 2·TP / (2·TP + FP + FN), summed over all frames; every true object counts, however small or dim.

Speed: the cost of `segment_everything` on one 256² frame (image encoder included) against one frame of plain
tracking of the same frame's objects (encoder + memory attention + heads for each object, `TrackingSession`),
timed in turns (A, B, A, B, …) with torch's default threads; the machine may be shared, so read the ratio.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from napari_sam2 import TrackingSession, load_model, segment_everything
from napari_sam2.automatic import default_settings
from napari_sam2.sample_data import nuclei_timelapse

HELD_OUT = 2_000_000
DEV = 2_500_000
CONDITIONS = {
    "default": {},
    "small_crowded": {"nucleus_radius": 6.0, "n_nuclei": 24},
    "large": {"nucleus_radius": 15.0, "n_nuclei": 6},
    "dim_12bit": {"dtype": np.uint16, "photons": 25.0, "read_noise": 3.0},
}
FRAMES = (0, 15, 30)


def frames(base: int, seeds: int, size: int = 256):
    """(condition, seed, t, image, labels) of the benchmark frames."""
    for c, (name, options) in enumerate(CONDITIONS.items()):
        for k in range(seeds):
            seed = base + 100 * c + k
            movie = nuclei_timelapse(
                n_frames=max(FRAMES) + 1, shape=(size, size), seed=seed, **{"n_nuclei": 8, **options}
            )
            for t in FRAMES:
                yield name, seed, t, movie.image[t], movie.labels[t]


def match_counts(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int]:
    """(TP, FP, FN) of instance matching at IoU > 0.5 between two label images."""
    p_ids, t_ids = np.unique(pred)[1:], np.unique(truth)[1:]
    if len(p_ids) == 0 or len(t_ids) == 0:
        return 0, len(p_ids), len(t_ids)
    both = pred.astype(np.int64) * (int(truth.max()) + 1) + truth
    table = np.bincount(both.ravel(), minlength=(int(pred.max()) + 1) * (int(truth.max()) + 1))
    table = table.reshape(int(pred.max()) + 1, int(truth.max()) + 1)
    p_area, t_area = table.sum(1), table.sum(0)
    tp = 0
    for p in p_ids:
        for t in np.nonzero(table[p])[0]:
            if t and table[p, t] / (p_area[p] + t_area[t] - table[p, t]) > 0.5:
                tp += 1
    return tp, len(p_ids) - tp, len(t_ids) - tp


def f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / max(2 * tp + fp + fn, 1)


def quality(model, base: int, seeds: int, settings: dict, verbose: bool = False) -> dict:
    totals: dict[str, list[int]] = {}
    for name, seed, t, image, truth in frames(base, seeds):
        found = segment_everything(model, image, **settings)
        tp, fp, fn = match_counts(found.labels, truth)
        if verbose:
            print(f"  {name:14s} seed {seed} t {t:2d}: TP {tp} FP {fp} FN {fn}", flush=True)
        for key in (name, "all"):
            row = totals.setdefault(key, [0, 0, 0])
            row[0] += tp
            row[1] += fp
            row[2] += fn
    return {key: {"f1": round(f1(*row), 3), "tp": row[0], "fp": row[1], "fn": row[2]} for key, row in totals.items()}


def speed(model, settings: dict, rounds: int = 3) -> dict:
    movie = nuclei_timelapse(n_frames=rounds + 2, shape=(256, 256), seed=HELD_OUT + 999)
    auto, tracking = [], []
    for r in range(rounds):
        ids = [int(i) for i in np.unique(movie.labels[r])[1:]]  # the objects present on the prompted frame
        t0 = time.perf_counter()
        segment_everything(model, movie.image[r + 1], **settings)
        auto.append(time.perf_counter() - t0)
        # one tracked frame: the frame's encoder pass plus every object's memory attention and heads
        session = TrackingSession(model, movie.image[: r + 2])
        for obj in ids:
            session.add_prompt(r, obj, mask=movie.labels[r] == obj)
        session.encode_frames([r])
        t0 = time.perf_counter()
        for _ in session.propagate("forward", start=r):
            pass
        tracking.append(time.perf_counter() - t0)
        session.close()
    a, b = float(np.median(auto)), float(np.median(tracking))
    return {
        "segment_everything_s": round(a, 3),
        "tracking_frame_s": round(b, 3),
        "ratio": round(a / b, 2),
        "objects": len(ids),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nano-fluo")
    parser.add_argument("--seeds", type=int, default=3, help="movies per condition")
    parser.add_argument("--dev", action="store_true", help="the seeds the defaults were chosen on")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a generator parameter")
    parser.add_argument("--speed", action="store_true", help="also time a frame against a tracked frame")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    model = load_model(args.model)
    settings = {}
    for item in args.set:
        key, value = item.split("=", 1)
        settings[key] = value.lower() == "true" if value.lower() in ("true", "false") else float(value)
        if key in ("points_per_side", "points_per_batch", "crop_n_layers", "min_area", "min_mask_region_area"):
            settings[key] = int(settings[key])
    effective = {**default_settings(model).__dict__, **settings}
    result = {"model": args.model, "settings": effective, "seeds": "dev" if args.dev else "held-out"}
    with torch.inference_mode():
        result["f1"] = quality(model, DEV if args.dev else HELD_OUT, args.seeds, settings, args.verbose)
        if args.speed:
            result["speed"] = speed(model, settings)
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
