"""Files a tracking run writes beside its store are owned: refused if they exist, replaced only if recorded.

A run with `out=cells.ome.zarr` writes `cells_regions.csv`, `cells_confidence.csv` and, with `ctc=DIR`, the Cell
Tracking Challenge files `DIR/maskTTT.tif` + `DIR/res_track.txt`. The store's provenance records them under
"outputs" (`planned_outputs`), so that a later `--overwrite` (or `--resume`) of that store may replace exactly
those files and no other: `check_outputs` runs before anything is created and refuses

* any of them that exists, without overwrite/resume ("exists; --overwrite replaces it");
* with overwrite/resume, an existing file the store did not record (a user's own `mask050.tif` in the CTC
  folder, a CSV from elsewhere), naming it and the way out.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import InputError

__all__ = ["OutputExistsError", "check_outputs", "owned_files", "planned_outputs"]

_CTC_NAME = re.compile(r"^(mask\d+\.tif|res_track\.txt)$")


class OutputExistsError(InputError, FileExistsError):
    """A file the run would write exists and may not be replaced."""


def _abs(path) -> str:
    return os.path.abspath(os.fspath(path))


def ctc_names(n_frames: int) -> list[str]:
    """The file names of a CTC result export of `n_frames` frames (as `analysis.export_ctc` writes them)."""
    digits = 3 if n_frames < 1000 else max(4, len(str(n_frames - 1)))
    return [f"mask{t:0{digits}d}.tif" for t in range(n_frames)] + ["res_track.txt"]


def planned_outputs(csv_paths, ctc, n_frames: int) -> dict:
    """What a run will write beside its store, as recorded in provenance["outputs"] (absolute paths)."""
    return {
        "files": [_abs(p) for p in csv_paths],
        "ctc": None if ctc is None else {"dir": _abs(ctc), "frames": int(n_frames)},
    }


def owned_files(outputs: dict | None) -> set[str]:
    """Absolute paths of every file an "outputs" record names."""
    if not isinstance(outputs, dict):
        return set()
    owned = {str(p) for p in outputs.get("files") or [] if isinstance(p, str)}
    ctc = outputs.get("ctc")
    if isinstance(ctc, dict) and isinstance(ctc.get("dir"), str) and isinstance(ctc.get("frames"), int):
        frames = min(max(ctc["frames"], 0), 10**6)
        owned |= {os.path.join(ctc["dir"], name) for name in ctc_names(frames)}
    return owned


def merge_outputs(old: dict | None, new: dict) -> dict:
    """The record of a resumed run: what the store owned before plus what this run writes."""
    if not isinstance(old, dict):
        return new
    files = list(dict.fromkeys([*(old.get("files") or []), *new["files"]]))
    return {"files": files, "ctc": new["ctc"] or old.get("ctc")}


def check_outputs(planned: dict, owned: set[str], replace: bool, store) -> None:
    """Refuse (OutputExistsError) before anything is written if a file of `planned` exists and may not be
    replaced, or if the CTC folder holds CTC-named files that are not `owned` (the export clears those).

    replace: overwrite or resume was asked for; owned: absolute paths recorded by the store being replaced or
    resumed (see `owned_files`); store: its path, for the messages.
    """
    existing = [p for p in planned["files"] if os.path.lexists(p)]
    ctc = planned.get("ctc")
    if ctc is not None:
        folder = Path(ctc["dir"])
        if folder.exists() and not folder.is_dir():
            raise OutputExistsError(f"--ctc {folder} exists and is not a folder; choose a folder for the CTC export")
        if folder.is_dir():
            existing += [_abs(p) for p in sorted(folder.iterdir()) if _CTC_NAME.match(p.name)]
    for path in existing:
        if not replace:
            raise OutputExistsError(
                f"{path} already exists; pass --overwrite (overwrite=True) to replace the files napari-sam2 wrote "
                "for this store, or choose another --out / --ctc"
            )
        if path not in owned:
            raise OutputExistsError(
                f"{path} exists and was not written by napari-sam2 for {store}, so it is never replaced or deleted; "
                "move it away, or choose another --out / --ctc"
            )
