"""Automatic tracking with lineage (issue 14): the bars, measured with the built-in nano-fluo on this CPU.

    /work/bin/py benchmarks/bench_auto.py auto   [--movies N] [--frames T]   # --auto on held-out lineage movies
    /work/bin/py benchmarks/bench_auto.py demo   [--every K]                 # seeds + discovery on the demo movie
    /work/bin/py benchmarks/bench_auto.py cost   [--frames T]                # discovery every frame vs plain tracking

auto: `nuclei_lineage_timelapse` movies (256², 4 divisions, 3 arrivals) with held-out seeds (4,000,000 + k; the
    model trained on seeds below 3,000,000 and the tests use 3,000,000…), tracked by `track(auto=True)` exactly as
    `napari-sam2 track movie.tif --auto` does, scored with traccuracy (CTC TRA, DET, LNK; division F1 with frame
    buffer 1) and arrivals found (an arrival counts as found when some track starts within 2 frames of the
    arrival's first frame on a mask with IoU ≥ 0.5 against it).
demo: the `napari-sam2 demo` movie (nuclei_timelapse(), seed 0) with its first-frame ground truth as seeds and
    discovery every K frames; TRA/DET from py-ctcmetrics (as the demo prints) and traccuracy, and whether the two
    daughters were found with the right parent.
cost: seconds per frame of plain tracking vs tracking with discovery on every frame, alternated in turns (A, B,
    A, B) on the same movie, because the machine is shared: report the ratio, not the absolute numbers.
The default segment-everything settings of discovery (DiscoveryOptions.generator) were chosen by looking at the
candidates on frames of the demo movie (seed 0), so the demo numbers are not held out; the auto numbers are.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_sam2 import load_model, track
from napari_sam2.discovery import DiscoveryOptions
from napari_sam2.sample_data import nuclei_lineage_timelapse, nuclei_timelapse, write_ctc_ground_truth

HELD_OUT = 4_000_000


def traccuracy_scores(gt_dir: Path, res_dir: Path) -> dict:
    """TRA, DET, LNK (CTC matcher) and division recall / precision / F1 with frame buffer 1 (IoU ≥ 0.5
    one-to-one matcher, which traccuracy's division metrics require)."""
    from traccuracy import run_metrics
    from traccuracy.loaders import load_ctc_data
    from traccuracy.matchers import CTCMatcher, IOUMatcher
    from traccuracy.metrics import CTCMetrics, DivisionMetrics

    def load():
        gt = load_ctc_data(str(gt_dir / "TRA"), str(gt_dir / "TRA" / "man_track.txt"))
        pred = load_ctc_data(str(res_dir), str(res_dir / "res_track.txt"))
        return gt, pred

    out = {}
    results, _ = run_metrics(*load(), CTCMatcher(), [CTCMetrics()])
    for key in ("TRA", "DET", "LNK"):
        out[key] = round(float(results[0]["results"][key]), 4)
    results, _ = run_metrics(*load(), IOUMatcher(iou_threshold=0.5, one_to_one=True), [DivisionMetrics(1)])
    buffer1 = results[0]["results"].get("Frame Buffer 1", results[0]["results"])
    for key in ("Division Recall", "Division Precision", "Division F1"):
        if key in buffer1:
            out[f"{key} (buffer 1)"] = round(float(buffer1[key]), 4)
    return out


def arrivals_found(movie, labels, parents_ok=None) -> tuple[int, int]:
    labels = np.asarray(labels)
    found = 0
    arrivals = movie.events.get("arrivals", [])
    for arrival in arrivals:
        t0 = arrival["frame"]
        hit = False
        for t in range(t0, min(t0 + 3, labels.shape[0])):
            truth = movie.labels[t] == arrival["id"]
            ids, counts = np.unique(labels[t][truth], return_counts=True)
            for obj, c in zip(ids, counts, strict=True):
                if obj == 0:
                    continue
                mask = labels[t] == obj
                iou = (mask & truth).sum() / (mask | truth).sum()
                first = int(np.argmax((labels == obj).reshape(labels.shape[0], -1).any(axis=1)))
                if iou >= 0.5 and first >= t0 - 2:
                    hit = True
        found += hit
    return found, len(arrivals)


def run_auto(args) -> list[dict]:
    model = load_model("nano-fluo", device="cpu")
    rows = []
    for k in range(args.movies):
        movie = nuclei_lineage_timelapse(n_frames=args.frames, seed=HELD_OUT + k)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            write_ctc_ground_truth(movie, tmp / "GT")
            start = time.perf_counter()
            result = track(movie.image, model=model, auto=True, discover=args.every, ctc=tmp / "RES")
            seconds = time.perf_counter() - start
            scores = traccuracy_scores(tmp / "GT", tmp / "RES")
            found, total = arrivals_found(movie, result.labels)
        row = {
            "seed": HELD_OUT + k,
            "frames": args.frames,
            "seconds": round(seconds, 1),
            **scores,
            "arrivals_found": f"{found}/{total}",
            "events": {kind: sum(e["kind"] == kind for e in result.events) for kind in ("arrival", "division")},
            "true_divisions": len(movie.events.get("divisions", [])),
        }
        print(json.dumps(row, default=str), flush=True)
        rows.append(row)
    return rows


def run_demo(args) -> dict:
    from ctc_metrics import evaluate_sequence

    model = load_model("nano-fluo", device="cpu")
    movie = nuclei_timelapse()
    div = movie.events["division"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_ctc_ground_truth(movie, tmp / "01_GT")
        rows = {}
        for name, discover in (("seeds only", None), (f"seeds + discovery every {args.every}", args.every)):
            res = tmp / f"RES_{len(rows)}"
            start = time.perf_counter()
            result = track(movie.image, movie.labels[0], model=model, direction="forward", discover=discover, ctc=res)
            seconds = time.perf_counter() - start
            ctc = evaluate_sequence(str(res), str(tmp / "01_GT"), ["Valid", "DET", "TRA"], threads=1)
            labels = np.asarray(result.labels)
            # the daughters: tracks that start near the true division and sit on a true daughter, with parent 1
            t = div["frame"]
            daughters_ok = []
            for child in div["children"]:
                ok = False
                for obj, mother in result.parents.items():
                    first = int(np.argmax((labels == obj).reshape(labels.shape[0], -1).any(axis=1)))
                    if abs(first - t) <= 1 and mother == div["parent"]:
                        overlap = (labels[first] == obj) & (movie.labels[first] == child)
                        ok = ok or overlap.sum() > 0.5 * (labels[first] == obj).sum()
                daughters_ok.append(ok)
            rows[name] = {
                "seconds": round(seconds, 1),
                "TRA (py-ctcmetrics)": round(float(ctc["TRA"]), 4),
                "DET (py-ctcmetrics)": round(float(ctc["DET"]), 4),
                **traccuracy_scores(tmp / "01_GT", res),
                "daughters with the right parent": daughters_ok,
                "events": result.events,
            }
            print(name, json.dumps(rows[name], default=str), flush=True)
    return rows


def run_cost(args) -> dict:
    """Seconds per frame, image encoder included (both modes encode every frame once: discovery reuses it)."""
    from napari_sam2.discovery import propagate_with_discovery
    from napari_sam2.session import TrackingSession

    model = load_model("nano-fluo", device="cpu")
    movie = nuclei_timelapse(n_frames=args.frames, seed=HELD_OUT + 500)
    times: dict[str, list[float]] = {"plain": [], "discovery": []}
    for turn in range(2):
        for mode in ("plain", "discovery"):
            session = TrackingSession(model, movie.image)
            for obj in np.unique(movie.labels[0])[1:]:
                session.add_prompt(0, int(obj), mask=movie.labels[0] == obj)
            start = time.perf_counter()
            if mode == "plain":
                n = sum(1 for _ in session.propagate("forward"))
            else:
                n = sum(1 for _ in propagate_with_discovery(session, DiscoveryOptions(every=1)))
            times[mode].append((time.perf_counter() - start) / args.frames)
            session.close()
            print(turn, mode, f"{times[mode][-1]:.2f} s/frame ({n} results)", flush=True)
    plain = float(np.median(times["plain"]))
    disc = float(np.median(times["discovery"]))
    out = {"plain s/frame": round(plain, 2), "discovery s/frame": round(disc, 2), "ratio": round(disc / plain, 2)}
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["auto", "demo", "cost"])
    parser.add_argument("--movies", type=int, default=2)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--every", type=int, default=1)
    args = parser.parse_args()
    {"auto": run_auto, "demo": run_demo, "cost": run_cost}[args.what](args)


if __name__ == "__main__":
    main()
