"""Quality and speed of a model on held-out synthetic fluorescence sequences (the bars of the nano-fluo model card).

    python benchmarks/bench_nano.py                       # the built-in nano-fluo
    python benchmarks/bench_nano.py --model PATH.pt --json out.json
    python benchmarks/bench_nano.py --model PATH.pt --seeds 2 --conditions default --threads 1 --no-speed
    python benchmarks/bench_nano.py --model runs/leg.pt --defaults-of nano-fluo   # a training candidate, run as shipped

Held-out data: `nuclei_timelapse` movies with seeds from 2,000,000 up (training draws its movie seeds from
another generator: see model/train_nano.py), in four conditions (the sample defaults; small crowded nuclei;
large nuclei; a dim 12-bit camera), 40 frames of 256², three seeds each. Everything runs through the public
engine (`TrackingSession`, `track`), as a user's run would.

Measured:
  click      one click per object (its deepest interior pixel, as a user clicks a nucleus) on frame 0 of each
             movie: IoU of the returned mask with the true mask; median and mean over all objects; and the mean
             |predicted − actual IoU| of those masks (calibration of the IoU the session returns).
  tracking   one click per object on frame 0, propagated forward over 40 frames: mean IoU over (object, frame)
             pairs where the object is present (an absent-reported frame counts as IoU 0), and the mean
             |predicted − actual IoU| where it is also reported present (the confidence strip); CTC TRA and DET
             against the ground truth (py-ctcmetrics; daughters of a division are new objects nobody prompted).
  occlusion  nucleus 2 swims out of the field and comes back: fraction of its absent frames reported absent
             (object score ≤ 0), and its IoU on the frames after it returns.
  speed      tracked frames per second for one object at the model's native input size (image encoder
             included), torch's default threads.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from napari_sam2 import load_model, registry, track
from napari_sam2.prompts import PromptSet
from napari_sam2.sample_data import nuclei_timelapse, write_ctc_ground_truth
from napari_sam2.session import TrackingSession

HELD_OUT = 2_000_000
CONDITIONS = {
    "default": {},
    "small_crowded": {"nucleus_radius": 6.0, "n_nuclei": 24},
    "large": {"nucleus_radius": 15.0, "n_nuclei": 6},
    "dim_12bit": {"dtype": np.uint16, "photons": 25.0, "read_noise": 3.0},
}


def held_out_movies(seeds: int, frames: int, size: int = 256, conditions=None):
    for name, options in CONDITIONS.items():
        if conditions and name not in conditions:
            continue
        for k in range(seeds):
            kwargs = {"n_frames": frames, "shape": (size, size), "n_nuclei": 8, **options}
            yield name, nuclei_timelapse(seed=HELD_OUT + 100 * list(CONDITIONS).index(name) + k, **kwargs)


def defaults_of(name: str | None, contrast=None, click_rule=None) -> tuple:
    """The contrast and click-rule options of a checkpoint file measured as registry model `name` would run it
    (`--defaults-of`) → (contrast, z-stream contrast, click rule): each the option given, else `name`'s default;
    without a name, the options as given (None: the file's own defaults). A training leg's export is a file the
    registry does not know, so on its own it runs with the click rule off and global contrast."""
    if name is None:
        return contrast, None, click_rule
    registry.model_info(name)  # (an unknown name fails here, naming the known ones)
    return (
        contrast or registry.default_contrast(name),
        contrast or registry.default_contrast(name, z_stream=True),
        click_rule or registry.default_click_rule(name),
    )


def deepest_point(mask: np.ndarray) -> tuple[float, float]:
    """(y, x) of the pixel farthest from the object's border."""
    depth = ndimage.distance_transform_edt(mask)
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return float(y), float(x)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def click_prompts(labels0: np.ndarray, min_area: int = 20) -> PromptSet:
    prompts = PromptSet()
    for obj in np.unique(labels0)[1:]:
        mask = labels0 == obj
        if mask.sum() >= min_area:
            prompts.add(0, int(obj), points=[deepest_point(mask)], labels=[1])
    return prompts


def evaluate(
    model,
    seeds: int = 3,
    frames: int = 40,
    workdir: Path | None = None,
    conditions=None,
    contrast=None,
    click_rule=None,
) -> dict:
    """The quality numbers of the module docstring; `conditions`: names of CONDITIONS to run (default all); contrast,
    click_rule: the sessions' and track()'s (None: the model's defaults)."""
    from ctc_metrics import evaluate_sequence

    workdir = Path(workdir or tempfile.mkdtemp(prefix="bench_nano_"))
    click, track_ious, tra, det, absent_ok, after_return, click_error, track_error = [], [], [], [], [], [], [], []
    per_condition: dict[str, dict] = {}
    for name, movie in held_out_movies(seeds, frames, conditions=conditions):
        labels = movie.labels
        prompts = click_prompts(labels[0])
        # --- one click per object, frame 0 (a fresh session: no memory)
        with TrackingSession(model, movie.image, contrast=contrast, click_rule=click_rule) as session:
            for p in prompts:
                result = session.add_prompt(0, p.obj_id, points=p.points, labels=p.labels)
                k = result.obj_ids.index(p.obj_id)
                click.append(iou(result.masks[k], labels[0] == p.obj_id))
                click_error.append(abs(float(result.ious[k]) - click[-1]))  # the returned IoU's calibration
                per_condition.setdefault(name, {"click": [], "track": [], "tra": []})["click"].append(click[-1])
        # --- tracking from those clicks, through the public track() with CTC output
        run = workdir / f"{name}_{len(tra)}"
        write_ctc_ground_truth(movie, run / "01_GT", overwrite=True)
        result = track(movie.image, prompts, model=model, axis=0, direction="forward", ctc=run / "01_RES", tables=False,
                       contrast=contrast, click_rule=click_rule)  # fmt: skip
        predicted = np.asarray(result.labels)
        said = {(r["frame"], r["obj_id"]): r for r in result.confidence}
        for p in prompts:
            for t in range(1, frames):
                truth = labels[t] == p.obj_id
                if truth.any():
                    track_ious.append(iou(predicted[t] == p.obj_id, truth))
                    per_condition[name]["track"].append(track_ious[-1])
                    row = said.get((t, p.obj_id))
                    if row is not None and row["present"]:  # the confidence strip's number on a tracked frame
                        track_error.append(abs(float(row["iou"]) - track_ious[-1]))
        scores = evaluate_sequence(str(run / "01_RES"), str(run / "01_GT"), ["Valid", "DET", "TRA"], threads=1)
        tra.append(scores["TRA"])
        det.append(scores["DET"])
        per_condition[name]["tra"].append(scores["TRA"])
        # --- occlusion: nucleus 2 leaves and returns
        gap = movie.events.get("leaves_and_returns", {}).get("absent_frames")
        if gap and 2 in prompts.obj_ids:
            rows = {(r["frame"], r["obj_id"]): r for r in result.confidence}
            absent_ok.extend(float(rows.get((t, 2), {"score": -1.0})["score"]) <= 0 for t in gap)
            after_return.extend(iou(predicted[t] == 2, labels[t] == 2) for t in range(max(gap) + 1, frames))
    summary = {
        "click_iou_median": float(np.median(click)),
        "click_iou_mean": float(np.mean(click)),
        "click_objects": len(click),
        "click_calibration_abs_err": float(np.mean(click_error)),  # mean |predicted − actual IoU| of those clicks
        "track_iou_mean": float(np.mean(track_ious)),
        "track_pairs": len(track_ious),
        # mean |predicted − actual IoU| on tracked frames where the object is present and reported present
        "track_calibration_abs_err": float(np.mean(track_error)) if track_error else None,
        "tra_mean": float(np.mean(tra)),
        "det_mean": float(np.mean(det)),
        "occlusion_absent_reported": float(np.mean(absent_ok)) if absent_ok else None,
        "occlusion_iou_after_return": float(np.mean(after_return)) if after_return else None,
        "per_condition": {
            name: {
                "click_iou_median": float(np.median(v["click"])),
                "track_iou_mean": float(np.mean(v["track"])),
                "tra_mean": float(np.mean(v["tra"])),
            }
            for name, v in per_condition.items()
        },
    }
    return summary


def speed(model, frames: int = 40, repeats: int = 2, contrast=None, click_rule=None) -> dict:
    """Seconds per tracked frame for one object at the model's input size (encoder included; best of repeats)."""
    size = model.image_size
    movie = nuclei_timelapse(n_frames=frames, shape=(size, size), seed=HELD_OUT + 999)
    prompts = click_prompts(movie.labels[0])
    first = prompts[0]
    best = float("inf")
    for _ in range(repeats):
        with TrackingSession(model, movie.image, contrast=contrast, click_rule=click_rule) as session:
            session.add_prompt(0, first.obj_id, points=first.points, labels=first.labels)
            start = time.perf_counter()
            n = sum(1 for _ in session.propagate("forward"))
            best = min(best, (time.perf_counter() - start) / n)
    return {"seconds_per_frame_1obj": best, "frames_per_second_1obj": 1.0 / best, "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="nano-fluo", help="registry name or checkpoint path (default nano-fluo)")
    parser.add_argument("--seeds", type=int, default=3, help="movies per condition")
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--conditions", nargs="+", choices=list(CONDITIONS), help="only these (default: all)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--no-speed", action="store_true", help="skip the speed measure")
    parser.add_argument("--defaults-of", metavar="NAME", help="a registry model whose defaults (contrast, click "
                        "rule) the --model file runs with (default: the file's own)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, device="cpu")
    contrast, _, rule = defaults_of(args.defaults_of)
    numbers = {"model": str(args.model), "defaults_of": args.defaults_of, "contrast": contrast, "click_rule": rule}
    numbers.update({} if args.no_speed else speed(model, contrast=contrast, click_rule=rule))
    numbers.update(
        {"threads": torch.get_num_threads(),
         **evaluate(model, args.seeds, args.frames, None, args.conditions, contrast, rule)}
    )  # fmt: skip
    print(json.dumps(numbers, indent=1))
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
