"""CPU precision: ours at precision "auto" (bf16 where the CPU has native bf16) against ours in fp32 and the official
SAM 2 (fp32, its only CPU precision); and how far bf16 results move from fp32 on the built-in nano-fluo.

usage (speed needs the official sam2 package: run it with the parity env's python):
  PYTHONPATH=src .tox/parity/bin/python benchmarks/bench_cpu_precision.py speed \
      [--configs sam2.1_hiera_t sam2.1_hiera_s] [--objects 1 4 16] [--frames 3] [--repeats 1]
  python benchmarks/bench_cpu_precision.py agreement [--seeds 1] [--frames 40]

speed      at 1024², random weights (the same checkpoint for both implementations): the image encoder on one
           frame, and seconds per tracked frame (mean over frames 1…N−1 of a forward pass; N objects clicked on
           frame 0; encoder included). The three runs alternate ("in turns") within every repeat; ratios are
           taken per repeat, their median printed. Measured: the process's CPU seconds (`time.process_time`)
           at --threads (default 1), besides wall seconds: on a CPU shared with other jobs, wall time mostly
           measures the wait for a core (it varied 3× between identical runs on the reference machine while
           the CPU seconds of one thread stayed within 10%); CPU seconds of one thread count the work alone.
agreement  nano-fluo on the held-out synthetic movies of bench_nano.py, run once in fp32 and once in bf16 (set
           explicitly: "auto" keeps a network this small in fp32, where it runs faster):
           click IoU (vs truth, and bf16 mask vs fp32 mask), tracking mask IoU of bf16 vs fp32 over every
           (object, frame) either run has, and CTC TRA of each run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "parity"))
sys.path.insert(0, str(ROOT / "benchmarks"))
H, W = 240, 320


def cpu_description() -> str:
    from napari_sam2.model.precision import cpu_has_native_bf16

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {torch.get_num_threads()} threads, native bf16: {cpu_has_native_bf16()}"


# ---------------------------------------------------------------------------------------------------- speed
def _points(k):
    return [[60 + 12 * (i // 4), 40 + 60 * (i % 4)] for i in range(k)]  # (y, x) in the 240 × 320 frames


class Clock:
    """Wall and CPU seconds between ticks."""

    def __init__(self):
        self.laps = []
        self.tick()

    def tick(self):
        self.t = (time.perf_counter(), time.process_time())

    def lap(self):
        now = (time.perf_counter(), time.process_time())
        self.laps.append((now[0] - self.t[0], now[1] - self.t[1]))
        self.t = now

    def mean(self, skip=0):
        laps = np.asarray(self.laps[skip:])
        return float(laps[:, 0].mean()), float(laps[:, 1].mean())


def _ours_tracking(model, images, k, precision):
    from napari_sam2 import TrackingSession

    s = TrackingSession(model, images, precision=precision, preprocessed=True, frame_shape=(H, W), read_ahead=0)
    for i, p in enumerate(_points(k)):
        s.add_prompt(0, i + 1, points=[p])
    clock = Clock()
    for _ in s.propagate("forward"):
        clock.lap()
    s.close()
    return clock.mean(skip=1)


def _official_predictor(config, ckpt, images):
    import sam2.sam2_video_predictor as svp
    from sam2.build_sam import build_sam2_video_predictor

    svp.load_video_frames = lambda *a, **kw: (images, H, W)
    yaml = f"configs/{'sam2.1' if config.startswith('sam2.1') else 'sam2'}/{config}.yaml"
    return build_sam2_video_predictor(yaml, str(ckpt), device="cpu")


def _official_tracking(vp, k):
    with torch.inference_mode():
        state = vp.init_state("<in-memory>")
        for i, (y, x) in enumerate(_points(k)):
            vp.add_new_points_or_box(
                state, 0, i + 1, points=np.array([[x, y]], np.float32), labels=np.array([1], np.int32)
            )
        clock = Clock()
        for _ in vp.propagate_in_video(state):
            clock.lap()
    return clock.mean(skip=1)


def _time(fn):
    clock = Clock()
    fn()
    clock.lap()
    return clock.mean()


def speed(args):
    from video_scenario import official_preprocess, synthetic_frames

    from napari_sam2 import load_model
    from napari_sam2.model.precision import autocast_context, resolve_precision
    from napari_sam2.model.random_weights import write_random_checkpoint

    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_description()}; auto resolves to {resolve_precision('cpu')}", flush=True)
    images = official_preprocess(synthetic_frames(args.frames), 1024)
    rows = []
    for config in args.configs:
        ckpt = write_random_checkpoint(config, Path(tempfile.mkdtemp()) / "r.pt", seed=0)
        model = load_model(ckpt, device="cpu")
        vp = _official_predictor(config, ckpt, images)
        one = images[:1]

        def ours_encoder(precision, model=model, one=one):
            with torch.inference_mode(), autocast_context("cpu", resolve_precision("cpu", precision, model=model)):
                return _time(lambda: model.encode_image(one))

        def official_encoder(vp=vp, one=one):
            with torch.inference_mode():
                return _time(lambda: vp.forward_image(one))

        jobs = {}
        if not args.no_encoder:
            jobs["encoder"] = {
                "ours_auto": lambda: ours_encoder("auto"),
                "ours_fp32": lambda: ours_encoder("fp32"),
                "official": official_encoder,
            }
        for k in args.objects:
            jobs[f"{k} obj"] = {
                "ours_auto": lambda k=k, m=model: _ours_tracking(m, images, k, "auto"),
                "ours_fp32": lambda k=k, m=model: _ours_tracking(m, images, k, "fp32"),
                "official": lambda k=k, vp=vp: _official_tracking(vp, k),
            }
        ours_encoder("auto"), ours_encoder("fp32"), official_encoder()  # warm-up (first-call allocations)
        for what, impls in jobs.items():
            runs = {name: [] for name in impls}
            for r in range(args.repeats):
                order = list(impls) if r % 2 == 0 else list(impls)[::-1]  # in turns, alternating who goes first
                for name in order:
                    runs[name].append(impls[name]())

            def ratio(a, b, i=1, runs=runs):  # i = 1: CPU seconds, 0: wall seconds
                return round(float(np.median([x[i] / y[i] for x, y in zip(runs[a], runs[b])])), 2)

            row = {
                "config": config,
                "what": what,
                **{name: round(float(np.median([x[1] for x in v])), 2) for name, v in runs.items()},
                "auto/official": ratio("ours_auto", "official"),
                "fp32/official": ratio("ours_fp32", "official"),
                "auto/fp32": ratio("ours_auto", "ours_fp32"),
                "wall": {name: [round(x[0], 1) for x in v] for name, v in runs.items()},
                "wall auto/official": ratio("ours_auto", "official", 0),
                "repeats": args.repeats,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\nCPU seconds at {args.threads} thread(s), median of {args.repeats} turn(s)")
    print("\n| model | step | ours (auto) s | ours (fp32) s | official (fp32) s | auto / official | fp32 / official |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['config']} | {r['what']} | {r['ours_auto']} | {r['ours_fp32']} | {r['official']} "
            f"| {r['auto/official']} | {r['fp32/official']} |"
        )


# ---------------------------------------------------------------------------------------------------- agreement
def agreement(args):
    import bench_nano
    from ctc_metrics import evaluate_sequence

    import napari_sam2.session as session_module
    from napari_sam2 import load_model, track
    from napari_sam2.sample_data import write_ctc_ground_truth

    model = load_model("nano-fluo", device="cpu")
    plain = session_module.TrackingSession
    chosen = {"precision": "fp32"}

    class Session(plain):  # track() builds its own session: hand it the precision under test
        def __init__(self, *a, **kw):
            kw.setdefault("precision", chosen["precision"])
            super().__init__(*a, **kw)

    session_module.TrackingSession = Session
    work = Path(tempfile.mkdtemp(prefix="bench_cpu_precision_"))
    precisions = ["fp32", "bf16"]  # explicit: "auto" keeps this small network in fp32 (faster there)
    click = {p: [] for p in precisions}
    click_vs = []
    track_vs = []
    tra = {p: [] for p in precisions}
    track_truth = {p: [] for p in precisions}
    t_run = {p: 0.0 for p in precisions}
    for m, (name, movie) in enumerate(bench_nano.held_out_movies(args.seeds, args.frames)):
        prompts = bench_nano.click_prompts(movie.labels[0])
        masks, labels = {}, {}
        for p in precisions:
            chosen["precision"] = p
            with Session(model, movie.image) as s:
                masks[p] = {}
                for pr in prompts:
                    res = s.add_prompt(0, pr.obj_id, points=pr.points, labels=pr.labels)
                    mask = res.masks[res.obj_ids.index(pr.obj_id)]
                    masks[p][pr.obj_id] = mask
                    click[p].append(bench_nano.iou(mask, movie.labels[0] == pr.obj_id))
            run = work / f"{m}_{p}"
            write_ctc_ground_truth(movie, run / "01_GT", overwrite=True)
            t0 = time.perf_counter()
            result = track(
                movie.image, prompts, model=model, axis=0, direction="forward", ctc=run / "01_RES", tables=False
            )
            t_run[p] += time.perf_counter() - t0
            labels[p] = np.asarray(result.labels)
            tra[p].append(evaluate_sequence(str(run / "01_RES"), str(run / "01_GT"), ["TRA"], threads=1)["TRA"])
            for pr in prompts:
                for t in range(1, args.frames):
                    truth = movie.labels[t] == pr.obj_id
                    if truth.any():
                        track_truth[p].append(bench_nano.iou(labels[p][t] == pr.obj_id, truth))
        click_vs.extend(bench_nano.iou(masks["bf16"][o], masks["fp32"][o]) for o in masks["fp32"])
        for pr in prompts:
            for t in range(args.frames):
                a, b = labels["bf16"][t] == pr.obj_id, labels["fp32"][t] == pr.obj_id
                if a.any() or b.any():
                    track_vs.append(bench_nano.iou(a, b))
        print(f"{name}: TRA fp32 {tra['fp32'][-1]:.4f} bf16 {tra['bf16'][-1]:.4f}", flush=True)
    from napari_sam2.model.precision import resolve_precision

    out = {
        "cpu": cpu_description(),
        "auto_is": resolve_precision("cpu", model=model),
        "movies": len(tra["fp32"]),
        "click_iou_median": {p: float(np.median(v)) for p, v in click.items()},
        "click_iou_bf16_vs_fp32_median": float(np.median(click_vs)),
        "track_iou_bf16_vs_fp32_median": float(np.median(track_vs)),
        "track_iou_bf16_vs_fp32_mean": float(np.mean(track_vs)),
        "track_iou_bf16_vs_fp32_p05": float(np.percentile(track_vs, 5)),
        "track_iou_vs_truth_mean": {p: float(np.mean(v)) for p, v in track_truth.items()},
        "tra_mean": {p: float(np.mean(v)) for p, v in tra.items()},
        "track_seconds": {p: round(v, 1) for p, v in t_run.items()},
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["speed", "agreement"])
    ap.add_argument("--configs", nargs="+", default=["sam2.1_hiera_t", "sam2.1_hiera_s"])
    ap.add_argument("--objects", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--frames", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-encoder", action="store_true", help="speed: tracking rows only")
    ap.add_argument("--seeds", type=int, default=1)
    a = ap.parse_args()
    if a.mode == "speed":
        speed(a)
    else:
        if a.frames == 3:
            a.frames = 40
        agreement(a)
