"""Scale-out on Dask: a plate of small stacks serial vs `track_many` on N workers; one movie's image features
encoded serially vs by `encode` on N workers; the image encoder's time per frame for each model size (what
`encode` takes off the sequential `track`).

usage: python benchmarks/bench_scale_out.py [plate] [encode] [share]
           [--stacks 8] [--frames 16] [--size 128] [--workers 2] [--reps 2]
           [--encode-config sam2.1_hiera_t] [--encode-frames 8] [--share-configs sam2.1_hiera_t,sam2.1_hiera_s]

plate: `--stacks` synthetic nuclei movies (`--frames` × `--size`², 6 nuclei, seed labels of frame 0) tracked by the
  built-in nano-fluo. Serial = `track()` on each stack in this process with torch using every core; parallel =
  `track_many` on an already started LocalCluster of `--workers` process workers, torch threads = cores / workers
  (cluster start-up is reported apart: it is paid once per command, not per stack).
encode: one `--encode-frames`-frame movie at 1024² through `--encode-config` (seeded random weights: speed does
  not depend on the values). Serial = `TrackingSession.encode_frames` into an empty embedding cache in this
  process; parallel = `napari_sam2.encode` into an empty cache on the cluster.
share: the image encoder alone (`encode_image` on one 1024² frame) for each of `--share-configs`.

Every comparison is timed in turns (serial, parallel, serial, parallel, …) after one warm-up of each, and the
ratio printed is the median of the per-turn ratios: the reference machine (2 cores) is shared with other jobs,
so absolute seconds drift; the ratios are the result.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_sam2 import TrackingSession, encode, load_model, track, track_many
from napari_sam2.model.random_weights import write_random_checkpoint
from napari_sam2.sample_data import nuclei_timelapse
from napari_sam2.scale_out import _cores, local_cluster


def in_turns(fns: dict, reps: int) -> dict:
    """{name: [seconds per rep]}: one warm-up each, then every rep runs all fns in turn."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def report(title: str, times: dict, unit_count: int, unit: str) -> None:
    a, b = list(times)
    ratios = [x / y for x, y in zip(times[a], times[b])]
    print(f"\n{title}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(
            f"  {name:<28} {med:8.2f} s  ({med / unit_count:.3f} s per {unit}; reps {', '.join(f'{t:.2f}' for t in ts)})"
        )
    print(
        f"  speed-up {a} / {b}: {statistics.median(ratios):.2f}x (median of per-turn ratios {[round(r, 2) for r in ratios]})"
    )


def bench_plate(args, client, workers, work: Path) -> None:
    plate, seeds = work / "plate", work / "seeds"
    plate.mkdir()
    seeds.mkdir()
    for k in range(args.stacks):
        sample = nuclei_timelapse(n_frames=args.frames, shape=(args.size, args.size), n_nuclei=6, seed=100 + k)
        tifffile.imwrite(plate / f"S{k}.tif", sample.image, metadata={"axes": "TYX"})
        tifffile.imwrite(seeds / f"S{k}.tif", sample.labels[0])
    runs = iter(range(10**6))
    cores = _cores()

    def serial():
        out = work / f"serial{next(runs)}"
        torch.set_num_threads(cores)
        for k in range(args.stacks):
            track(plate / f"S{k}.tif", seeds / f"S{k}.tif", model="nano-fluo", out=out / f"S{k}.ome.zarr")

    def parallel():
        out = work / f"parallel{next(runs)}"
        run = track_many(
            str(plate / "*.tif"),
            str(seeds / "{name}.tif"),
            out,
            client=client,
            torch_threads=max(1, cores // workers),
            model="nano-fluo",
            progress=False,
        )
        assert not run.failed, run.table()

    times = in_turns({"serial track() x stacks": serial, f"track_many, {workers} workers": parallel}, args.reps)
    report(
        f"plate: {args.stacks} stacks of {args.frames} frames x {args.size}^2, nano-fluo, {cores} cores",
        times,
        args.stacks * args.frames,
        "frame",
    )


def bench_encode(args, client, workers, work: Path) -> None:
    from napari_sam2.model.configs import CONFIGS

    ckpt = write_random_checkpoint(CONFIGS[args.encode_config], work / f"{args.encode_config}.pt", seed=0)
    rng = np.random.default_rng(0)
    movie = work / "movie.tif"
    tifffile.imwrite(
        movie, rng.integers(0, 4000, (args.encode_frames, 1024, 1024), dtype=np.uint16), metadata={"axes": "TYX"}
    )
    runs = iter(range(10**6))
    cores = _cores()
    model = load_model(ckpt, device="cpu")

    def serial():
        torch.set_num_threads(cores)
        session = TrackingSession(
            model, tifffile.memmap(movie), embedding_cache=work / f"cache{next(runs)}", feature_cache_bytes=0
        )
        session.encode_frames()
        assert session.encoder_runs == args.encode_frames
        session.close()

    def parallel():
        res = encode(
            movie,
            work / f"cache{next(runs)}",
            model=ckpt,
            client=client,
            torch_threads=max(1, cores // workers),
            progress=False,
        )
        assert res.encoded == args.encode_frames

    times = in_turns({"serial encode_frames": serial, f"encode(), {workers} workers": parallel}, args.reps)
    report(f"encode: {args.encode_frames} frames at 1024^2, {args.encode_config}", times, args.encode_frames, "frame")


def bench_share(args) -> None:
    from napari_sam2.model.configs import CONFIGS

    torch.set_num_threads(_cores())
    x = torch.rand(1, 3, 1024, 1024)
    fns, models = {}, {}
    for name in args.share_configs.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            models[name] = load_model(write_random_checkpoint(CONFIGS[name], Path(tmp) / "m.pt", seed=0), device="cpu")

        def run(m=models[name]):
            with torch.inference_mode():
                m.encode_image(x)

        fns[name] = run
    times = in_turns(fns, args.reps)
    print(f"\nimage encoder alone, one 1024^2 frame, fp32, {_cores()} CPU threads (median of {args.reps})")
    for name, ts in times.items():
        print(f"  {name:<18} {statistics.median(ts):7.2f} s  (reps {', '.join(f'{t:.2f}' for t in ts)})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("parts", nargs="*", default=["plate", "encode", "share"], choices=["plate", "encode", "share"])
    p.add_argument("--stacks", type=int, default=8)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--encode-config", default="sam2.1_hiera_t")
    p.add_argument("--encode-frames", type=int, default=8)
    p.add_argument("--share-configs", default="sam2.1_hiera_t,sam2.1_hiera_s")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {_cores()} cores, load average {os.getloadavg()[0]:.1f} at start")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if {"plate", "encode"} & set(args.parts):
            import distributed

            t0 = time.perf_counter()
            cluster = local_cluster(args.workers)
            client = distributed.Client(cluster)
            client.run(lambda: __import__("napari_sam2.api") and __import__("torch"))  # what every task imports
            print(
                f"LocalCluster of {args.workers} process workers up, torch imported: {time.perf_counter() - t0:.1f} s"
            )
            try:
                if "plate" in args.parts:
                    bench_plate(args, client, args.workers, work)
                if "encode" in args.parts:
                    bench_encode(args, client, args.workers, work)
            finally:
                client.close()
                cluster.close()
        if "share" in args.parts:
            bench_share(args)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end (the machine is shared: compare ratios, not seconds)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
