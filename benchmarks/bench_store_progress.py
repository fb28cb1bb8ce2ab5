"""Per-frame cost of recording track()'s progress in its store: a run-wide counter in the attribute JSON (what
track() did before the TrackJob: the JSON, prompts and seed masks included, rewritten after every frame) against
the per-frame write record (`LabelStore.record_write`, one small chunk) that replaced it.

    /work/bin/py benchmarks/bench_store_progress.py [--objects N] [--frames F] [--turns K]

N seed masks (20×20 squares on a 1024² frame, as `track(..., seeds)` records them) make the attribute JSON large;
each turn writes F 64² frames with either way (A, B, A, B, ...: the machine may be shared, compare the ratio of
the medians, not the absolute numbers). Prints milliseconds per frame per turn and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_sam2 import PromptSet
from napari_sam2.io.ome_zarr import LabelStore


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--objects", type=int, default=200)
    p.add_argument("--frames", type=int, default=50)
    p.add_argument("--turns", type=int, default=4)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    seeds = np.zeros((1024, 1024), np.uint32)
    for i in range(1, args.objects + 1):
        y, x = rng.integers(20, 1000, 2)
        seeds[y - 10 : y + 10, x - 10 : x + 10] = i
    prompts = PromptSet.from_seed_labels(seeds, 0).to_dict()
    n = args.frames * args.turns
    with tempfile.TemporaryDirectory() as tmp:
        store = LabelStore.create(Path(tmp) / "s.ome.zarr", (n, 64, 64), provenance={"prompts": prompts})
        size = (Path(tmp) / "s.ome.zarr" / "labels" / "sam2" / "zarr.json").stat().st_size
        frame = np.zeros((64, 64), np.uint32)

        def counter_in_attributes(k: int) -> None:
            store.write_frame(k, frame)
            store.update_provenance({"writes": k + 1})

        def per_frame_record(k: int) -> None:
            store.write_frame(k, frame, colors=False)
            store.record_write(k, 1)

        ways = {"attribute counter": counter_in_attributes, "per-frame record": per_frame_record}
        times: dict[str, list[float]] = {name: [] for name in ways}
        k = 0
        for _ in range(args.turns):
            for name, write in ways.items():
                start = time.perf_counter()
                for _ in range(args.frames):
                    write(k % n)
                    k += 1
                times[name].append((time.perf_counter() - start) / args.frames * 1000)
    print(f"attribute JSON: {size / 1024:.0f} KiB ({args.objects} seed masks); ms per frame written, per turn:")
    for name, values in times.items():
        print(f"  {name:18s} " + "  ".join(f"{v:6.2f}" for v in values) + f"   median {statistics.median(values):.2f}")
    a, b = (statistics.median(v) for v in times.values())
    print(f"ratio attribute counter / per-frame record: {a / b:.1f}")


if __name__ == "__main__":
    main()
