"""Image-predictor speed: ours beside the official SAM 2 in the same run, plus GFLOP/s against this machine's
measured matmul rate.

usage: python benchmarks/bench_image.py [--config sam2.1_hiera_t] [--size 1024] [--reps 3] [--device cpu|cuda]

Both models get the same seeded random weights (speed does not depend on the values). The official package
(`pip install --no-deps sam2==1.1.0` + hydra-core iopath) is optional: without it only our numbers print.
Times are the median of `reps` runs after one warm-up. Ours and the official model are timed in turns (ours,
official, ours, official, …), never one block after the other: on a shared machine the load drifts over a
minute, and timing the two in separate blocks once showed ours "1.3–1.5× slower" where turns show parity.
The ratio printed is the median of the per-turn ratios.
"""

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from napari_sam2 import ImagePredictor, load_model
from napari_sam2.model.random_weights import write_random_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "parity"))


def once(fn, device):
    """Seconds one call of fn takes (synchronised on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def timed(fn, reps, device):
    fn()
    return statistics.median(once(fn, device) for _ in range(reps))


def timed_in_turns(fns: dict, reps, device) -> dict:
    """{name: [seconds per rep]}: one warm-up each, then every rep runs all fns in turn."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            times[name].append(once(fn, device))
    return times


def matmul_rate(device, dtype=torch.float32, n=2048, reps=5):
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = timed(lambda: a @ b, reps, device)
    return 2 * n**3 / t / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="sam2.1_hiera_t")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    from napari_sam2.model import get_config

    cfg = get_config(args.config).replace(image_size=args.size)
    tmp = Path(tempfile.mkdtemp())
    ckpt = write_random_checkpoint(cfg if args.size != 1024 else cfg.name, tmp / "rand.pt", seed=0)
    img = (np.random.default_rng(0).random((768, 1024, 3)) * 255).astype(np.uint8)
    x = torch.randn(1, 3, args.size, args.size, device=device)
    precision = "bf16" if device.type == "cuda" else "fp32"
    print(
        f"config {cfg.name} input {args.size} device {device} precision {precision} threads {torch.get_num_threads()}"
    )

    ours = ImagePredictor(load_model(ckpt, device=device, config=cfg), precision=precision)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            ours.model.encode_image(x)
        gflop = counter.get_total_flops() / 1e9
    ours.set_image(img, intensity=(0, 255))
    set_fns = {"ours": lambda: ours.set_image(img, intensity=(0, 255))}
    predict_fns = {"ours": lambda: ours.predict(points=[[300, 400]], labels=[1])}
    try:
        import torchvision_standin

        torchvision_standin.install()
        from sam2.build_sam import build_sam2
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        yaml = f"configs/{'sam2.1' if cfg.version == '2.1' else 'sam2'}/{args.config}.yaml"
        over = [] if args.size == 1024 else [f"++model.image_size={args.size}"]
        official = SAM2ImagePredictor(build_sam2(yaml, str(ckpt), device=str(device), hydra_overrides_extra=over))
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

        def in_official_context(fn):
            def run():
                with autocast, torch.inference_mode():
                    return fn()

            return run

        set_fns["official"] = in_official_context(lambda: official.set_image(img))
        predict_fns["official"] = in_official_context(
            lambda: official.predict(point_coords=np.array([[400, 300]]), point_labels=np.array([1]))
        )
        set_fns["official"]()  # an image must be set before its predict runs
    except ImportError as exc:
        print(f"(official sam2 not importable: {exc})")
    set_times = timed_in_turns(set_fns, args.reps, device)
    predict_times = timed_in_turns(predict_fns, args.reps * 3, device)
    rows = {name: (statistics.median(set_times[name]), statistics.median(predict_times[name])) for name in set_fns}
    rate = matmul_rate(device, torch.bfloat16 if precision == "bf16" else torch.float32)
    print(f"measured matmul rate: {rate:.1f} GFLOP/s; image encoder: {gflop:.1f} GFLOP")
    print(f"{'':10} {'set_image s':>12} {'predict ms':>11} {'total s':>8} {'GFLOP/s':>8} {'% of matmul':>12}")
    for name, (enc, dec) in rows.items():
        print(
            f"{name:10} {enc:12.3f} {dec * 1000:11.1f} {enc + dec:8.3f} {gflop / enc:8.1f} {100 * gflop / enc / rate:11.0f}%"
        )
    if "official" in rows:

        def turn_ratio(times):
            return statistics.median(a / b for a, b in zip(times["ours"], times["official"]))

        print(
            f"ratio ours/official (median of per-turn ratios): set_image {turn_ratio(set_times):.2f}, "
            f"predict {turn_ratio(predict_times):.2f}"
        )


if __name__ == "__main__":
    main()
