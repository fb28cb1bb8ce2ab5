"""The README's 3D+t figure (docs/images/tracked_4d.png): the sample's 3D+t result in napari, in 3-D.

    napari-sam2 track sample_data/nuclei_4d.ome.tif --prompts sample_data/nuclei_4d_prompts.csv --out nuclei_4d.ome.zarr
    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_figure_4d.py nuclei_4d.ome.zarr [--out docs/images/tracked_4d.png]

It opens the store with napari-sam2's reader (image, labels and tracks at their physical scale, axes t, z, y, x),
shows time point `--t` in napari's 3-D view and saves a screenshot of the canvas.
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(store: Path, out: Path, t: int = 2, size: tuple[int, int] = (900, 700)) -> Path:
    import napari

    viewer = napari.Viewer(title="napari-sam2 3D+t", show=True)
    viewer.window._qt_window.resize(*size)
    layers = viewer.open(str(store), plugin="napari-sam2")
    for layer in layers:
        if layer._type_string == "image":
            layer.colormap = "gray"
            layer.rendering = "mip"
        if layer._type_string == "labels":
            layer.opacity = 0.55
    viewer.dims.ndisplay = 3
    viewer.dims.set_current_step(0, t)
    viewer.reset_view()
    viewer.camera.angles = (0, -20, 60)
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out), canvas_only=True)
    viewer.close()
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store", type=Path, help="a 3D+t result store of napari-sam2 track")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "tracked_4d.png")
    parser.add_argument("--t", type=int, default=2, help="the time point shown (2)")
    args = parser.parse_args()
    print(main(args.store, args.out, args.t))
