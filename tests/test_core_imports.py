"""The tracking core runs without the I/O stack: the parity environment (official SAM 2 beside ours) has no zarr."""

import subprocess
import sys


def test_tracking_core_imports_no_zarr():
    code = (
        "import sys; from napari_sam2 import TrackingSession, ImagePredictor; "
        "from napari_sam2.frames import FrameSource; "
        "print(sorted(m for m in ('zarr', 'tifffile', 'napari') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
