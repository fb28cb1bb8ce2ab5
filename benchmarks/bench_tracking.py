"""Tracking: seconds per frame (ours beside the official video predictor), a second propagation after a
correction, and peak memory against stack length.

usage:
  python benchmarks/bench_tracking.py speed  [--config sam2.1_hiera_t] [--size 1024] [--frames 6] [--objects 1 4]
  python benchmarks/bench_tracking.py memory [--lengths 50 200 1000] [--size 128] [--impl ours official]
  python benchmarks/bench_tracking.py rerun  [--config sam2.1_hiera_t] [--size 1024] [--frames 8]

speed   mean s/frame over frames 1…N−1 of a forward pass (frame 0 is prompted), N objects clicked on frame 0.
memory  peak RSS of a fresh process tracking one object through L frames (a 50-frame synthetic clip, cycled;
        ours reads them lazily, the official predictor is handed all of them as its loader would), at --size
        (default 128) so that 1,000 frames run in minutes; our caches sized to hold 32 frames.
rerun   first pass, then a correction on frame 2 and a second pass: encoder runs, and the second pass's time
        against the first pass's time minus its encoder time on the same frames.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "parity"))
sys.path.insert(0, str(ROOT / "tests"))


def _frames(n, size):
    from video_scenario import official_preprocess, synthetic_frames

    return official_preprocess(synthetic_frames(n), size)


def _ckpt(config, size, tmp):
    from napari_sam2.model import get_config
    from napari_sam2.model.random_weights import write_random_checkpoint

    cfg = get_config(config)
    if size != 1024:
        cfg = cfg.replace(image_size=size)
    return cfg, write_random_checkpoint(cfg if size != 1024 else cfg.name, tmp / "r.pt", seed=0)


def _points(k):
    return [[60 + 12 * (i // 4), 40 + 60 * (i % 4)] for i in range(k)]  # (y, x) in the 240 × 320 frames


def speed(args):
    tmp = Path(tempfile.mkdtemp())
    cfg, ckpt = _ckpt(args.config, args.size, tmp)
    images = _frames(args.frames, args.size)
    from napari_sam2 import TrackingSession, load_model

    model = load_model(ckpt, device="cpu", config=cfg)
    for k in args.objects:
        s = TrackingSession(model, images, preset="parity", preprocessed=True, frame_shape=(240, 320))
        for i, p in enumerate(_points(k)):
            s.add_prompt(0, i + 1, points=[p])
        times, t0 = [], time.perf_counter()
        for r in s.propagate("forward"):
            times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
        ours = float(np.mean(times[1:]))
        line = f"{k:3d} objects  ours {ours:7.2f} s/frame"
        try:
            official = _official_speed(args, ckpt, images, k)
            line += f"  official {official:7.2f} s/frame  ratio ours/official {ours / official:.2f}"
        except ImportError as exc:
            line += f"  (official not importable: {exc})"
        print(line, flush=True)


def _official_speed(args, ckpt, images, k):
    import sam2.sam2_video_predictor as svp
    from sam2.build_sam import build_sam2_video_predictor

    svp.load_video_frames = lambda *a, **kw: (images, 240, 320)
    yaml = f"configs/{'sam2.1' if args.config.startswith('sam2.1') else 'sam2'}/{args.config}.yaml"
    over = [] if args.size == 1024 else [f"++model.image_size={args.size}"]
    vp = build_sam2_video_predictor(yaml, str(ckpt), device="cpu", hydra_overrides_extra=over)
    with torch.inference_mode():
        state = vp.init_state("<in-memory>")
        for i, (y, x) in enumerate(_points(k)):
            vp.add_new_points_or_box(
                state, 0, i + 1, points=np.array([[x, y]], np.float32), labels=np.array([1], np.int32)
            )
        times, t0 = [], time.perf_counter()
        for _ in vp.propagate_in_video(state):
            times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
    return float(np.mean(times[1:]))


def rerun(args):
    tmp = Path(tempfile.mkdtemp())
    cfg, ckpt = _ckpt(args.config, args.size, tmp)
    images = _frames(args.frames, args.size)
    from napari_sam2 import TrackingSession, load_model

    model = load_model(ckpt, device="cpu", config=cfg)
    # time every encoder call inside the passes (not one separate call): the ratio then compares like with like
    encoder_times = []
    encode = model.encode_image

    def timed_encode(x):
        t = time.perf_counter()
        out = encode(x)
        encoder_times.append(time.perf_counter() - t)
        return out

    model.encode_image = timed_encode
    s = TrackingSession(model, images, preprocessed=True, frame_shape=(240, 320))
    s.add_prompt(0, 1, points=_points(1))
    encoder_times.clear()  # frame 0's encoding belongs to the prompt, not to the pass
    first_times = {}
    t0 = time.perf_counter()
    for r in s.propagate("forward"):
        first_times[r.frame] = time.perf_counter() - t0
        t0 = time.perf_counter()
    runs = s.encoder_runs
    encoder_by_frame = dict(zip(sorted(first_times)[1:], encoder_times))  # frames 1… were encoded in order
    s.add_prompt(2, 1, points=[[120, 130]], labels=[0])  # a correction on a tracked frame
    t0 = time.perf_counter()
    again = [r.frame for r in s.propagate("forward") if r.computed]
    second_s = time.perf_counter() - t0
    # the same frames in both passes (a frame's cost grows with its memory bank, so compare like with like)
    first_same = sum(first_times[f] - encoder_by_frame[f] for f in again)
    print(
        json.dumps(
            {
                "first_pass_s_per_frame": round(float(np.mean([first_times[f] for f in again])), 3),
                "encoder_s_per_frame": round(float(np.mean([encoder_by_frame[f] for f in again])), 3),
                "second_pass_s_per_recomputed_frame": round(second_s / len(again), 3),
                "ratio_second/(first-encoder)": round(second_s / first_same, 3),
                "encoder_runs_second_pass": s.encoder_runs - runs,
                "frames_recomputed": again,
            }
        )
    )


def memory(args):
    for impl in args.impl:
        for length in args.lengths:
            out = subprocess.run(
                [sys.executable, __file__, "_memory_child", impl, str(length), str(args.size), args.config],
                capture_output=True,
                text=True,
                check=False,
            )
            print(out.stdout.strip() or out.stderr.strip()[-800:], flush=True)


def _memory_child(impl, length, size, config):
    """One object clicked on frame 0 of a cycled 50-frame synthetic video, tracked forward through `length`."""
    from video_scenario import H, W, official_preprocess, synthetic_frames

    tmp = Path(tempfile.mkdtemp())
    cfg, ckpt = _ckpt(config, size, tmp)
    clip = synthetic_frames(50)
    point = [120, 90]  # (y, x) on the moving disk
    t0 = time.perf_counter()
    if impl == "ours":
        from napari_sam2 import TrackingSession, load_model

        class SyntheticStack:
            """Frames made on request (a memory-mapped file would add its page cache to the RSS)."""

            shape, dtype = (length, H, W, 3), np.uint8

            def __getitem__(self, key):
                return clip[key[0] % len(clip)][key[1:]]

        model = load_model(ckpt, device="cpu", config=cfg)
        s = TrackingSession(model, SyntheticStack(), intensity=(0, 255))
        s.add_prompt(0, 1, points=[point])
        # Budgets that hold 32 frames (the default 1 GiB of features holds 64 frames of tiny at 1024²): the
        # caches are full long before 1,000 frames, so what is measured is what grows beyond them.
        s.features.max_bytes = 32 * s.features._bytes
        s.result_cache_bytes = 32 * s.objects[1].cond[0].logits.nbytes
        n = sum(1 for _ in s.propagate("forward"))
    else:
        import sam2.sam2_video_predictor as svp
        from sam2.build_sam import build_sam2_video_predictor

        handed = [official_preprocess([clip[i % len(clip)] for i in range(length)], size)]
        svp.load_video_frames = lambda *a, **kw: (handed.pop(), H, W)
        yaml = f"configs/{'sam2.1' if config.startswith('sam2.1') else 'sam2'}/{config}.yaml"
        over = [] if size == 1024 else [f"++model.image_size={size}"]
        vp = build_sam2_video_predictor(yaml, str(ckpt), device="cpu", hydra_overrides_extra=over)
        with torch.inference_mode():
            state = vp.init_state("<in-memory>")
            vp.add_new_points_or_box(
                state, 0, 1, points=np.array([point[::-1]], np.float32), labels=np.array([1], np.int32)
            )
            n = sum(1 for _ in vp.propagate_in_video(state))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{impl:8s} {length:5d} frames: peak RSS {rss:7.1f} MiB, {n} frames in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_memory_child":
        _memory_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
        sys.exit()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["speed", "memory", "rerun"])
    ap.add_argument("--config", default="sam2.1_hiera_t")
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--objects", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--lengths", type=int, nargs="+", default=[50, 200, 1000])
    ap.add_argument("--impl", nargs="+", default=["ours", "official"], choices=["ours", "official"])
    a = ap.parse_args()
    a.size = a.size or (128 if a.mode == "memory" else 1024)
    {"speed": speed, "memory": memory, "rerun": rerun}[a.mode](a)
