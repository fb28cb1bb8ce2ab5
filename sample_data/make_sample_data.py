"""Write the small sample files that ship in sample_data/ (run from anywhere: `python sample_data/make_sample_data.py`).

Every file is made here from napari_sam2's seeded synthetic generators (no real images), so the README's commands
run verbatim on a fresh clone:

  nuclei_timelapse.ome.tif      [T=16, Y=128, X=128] uint8 OME-TIFF, 0.5 µm pixels, 30 s between frames
  nuclei_seeds.tif              [Y, X] uint16: the ground truth of frame 0 (seed labels for `track --seeds`)
  nuclei_prompts.csv            one click (y, x) inside every nucleus of frame 0 (for `track --prompts`)
  nuclei_ground_truth.tif       [T, Y, X] uint16 ground-truth labels of every frame
  nuclei_lineage.json           {daughter id: mother id} of the division in the ground truth
  nuclei_zstack.ome.tif         [Z=16, Y=112, X=112] uint8 OME-TIFF, 0.5 µm pixels, 0.6 µm z steps
  nuclei_zstack_prompts.csv     one click inside every nucleus on the slice that cuts them all (9)
  nuclei_zstack_ground_truth.tif  [Z, Y, X] uint16 ground-truth labels
  nuclei_4d.ome.tif             [T=4, Z=8, Y=64, X=64] uint8 OME-TIFF (3D+t), 0.5 µm pixels, 1 µm z steps, 60 s frames
  nuclei_4d_prompts.csv         one click per nucleus on its widest slice at t = 0 (columns obj_id, t, z, y, x, ...)
  nuclei_4d_ground_truth.tif    [T, Z, Y, X] uint16 ground-truth labels (nucleus 1 divides into 4 and 5 at t = 2)

The output is deterministic (seeded); tests/test_readme.py checks the committed files against a fresh run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

from napari_sam2.prompts import PromptSet
from napari_sam2.sample_data import nuclei_timelapse, nuclei_zstack, synthetic_nuclei_4d

HERE = Path(__file__).resolve().parent
PIXEL_UM = 0.5  # lateral pixel size, micrometres
FRAME_S = 30.0  # time between frames, seconds
Z_STEP_UM = 0.6  # z step of the z-stack, micrometres
Z_STEP_4D_UM = 1.0  # z step of the 3D+t sample, micrometres
FRAME_4D_S = 60.0  # time between its time points, seconds


def click_inside(labels: np.ndarray, frame: int) -> PromptSet:
    """One positive click per object of a 2-D label image: its most interior pixel (largest distance to the edge)."""
    prompts = PromptSet()
    for obj_id in (int(i) for i in np.unique(labels) if i):
        inside = np.pad(labels == obj_id, 1)
        depth = ndimage.distance_transform_edt(inside)[1:-1, 1:-1]
        y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
        prompts.add(frame, obj_id, points=[[int(y), int(x)]], labels=[1])
    return prompts


def write_ome(path: Path, image: np.ndarray, axes: str, **physical) -> None:
    """An uncompressed OME-TIFF (memory-mappable) with physical sizes in the OME-XML."""
    tifffile.imwrite(path, image, ome=True, photometric="minisblack", metadata={"axes": axes, **physical})


def write_labels(path: Path, labels: np.ndarray) -> None:
    tifffile.imwrite(path, labels.astype(np.uint16), photometric="minisblack", compression="zlib")


def make(out: Path) -> list[Path]:
    """Write every sample file into `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    lapse = nuclei_timelapse(n_frames=16, shape=(128, 128), n_nuclei=6, seed=3)
    lateral = {"PhysicalSizeX": PIXEL_UM, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": PIXEL_UM}
    lateral["PhysicalSizeYUnit"] = "µm"
    write_ome(out / "nuclei_timelapse.ome.tif", lapse.image, "TYX", TimeIncrement=FRAME_S, TimeIncrementUnit="s",
              **lateral)  # fmt: skip
    write_labels(out / "nuclei_seeds.tif", lapse.labels[0])
    click_inside(lapse.labels[0], 0).save(out / "nuclei_prompts.csv")
    write_labels(out / "nuclei_ground_truth.tif", lapse.labels)
    lineage = {str(k): int(v) for k, v in sorted(lapse.lineage.items())}
    (out / "nuclei_lineage.json").write_text(json.dumps(lineage, indent=1) + "\n")

    stack = nuclei_zstack(n_slices=16, shape=(112, 112), n_nuclei=6, seed=0, z_step=Z_STEP_UM / PIXEL_UM)
    write_ome(out / "nuclei_zstack.ome.tif", stack.image, "ZYX", PhysicalSizeZ=Z_STEP_UM, PhysicalSizeZUnit="µm",
              **lateral)  # fmt: skip
    middle = int(np.argmax([len(np.unique(plane)) for plane in stack.labels]))  # the slice with the most nuclei
    click_inside(stack.labels[middle], middle).save(out / "nuclei_zstack_prompts.csv")
    write_labels(out / "nuclei_zstack_ground_truth.tif", stack.labels)

    # 3D+t: small (the README's command tracks it with nano-fluo in the tests), one click per nucleus at t = 0
    lapse4d = synthetic_nuclei_4d(n_frames=4, n_slices=8, shape=(64, 64), n_nuclei=3, seed=1,
                                  z_step=Z_STEP_4D_UM / PIXEL_UM)  # fmt: skip
    write_ome(out / "nuclei_4d.ome.tif", lapse4d.image, "TZYX", PhysicalSizeZ=Z_STEP_4D_UM, PhysicalSizeZUnit="µm",
              TimeIncrement=FRAME_4D_S, TimeIncrementUnit="s", **lateral)  # fmt: skip
    clicks = PromptSet()
    first = lapse4d.labels[0]
    for obj_id in (int(i) for i in np.unique(first) if i):
        widest = int(np.argmax((first == obj_id).sum(axis=(1, 2))))  # the slice that cuts it widest
        for prompt in click_inside(np.where(first[widest] == obj_id, obj_id, 0), widest):
            clicks.add(widest, obj_id, points=prompt.points, labels=prompt.labels, t=0)
    clicks.save(out / "nuclei_4d_prompts.csv")
    write_labels(out / "nuclei_4d_ground_truth.tif", lapse4d.labels)
    names = ["nuclei_timelapse.ome.tif", "nuclei_seeds.tif", "nuclei_prompts.csv", "nuclei_ground_truth.tif",
             "nuclei_lineage.json", "nuclei_zstack.ome.tif", "nuclei_zstack_prompts.csv",
             "nuclei_zstack_ground_truth.tif", "nuclei_4d.ome.tif", "nuclei_4d_prompts.csv",
             "nuclei_4d_ground_truth.tif"]  # fmt: skip
    return [out / name for name in names]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write into (default: sample_data/)")
    for path in make(parser.parse_args().out):
        print(f"{path}  {path.stat().st_size / 1e3:.0f} kB")
