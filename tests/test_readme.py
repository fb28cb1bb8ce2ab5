"""The README's commands run verbatim on the sample data that ships in sample_data/, and that data is what
sample_data/make_sample_data.py makes."""

import csv
import json
import re
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_sam2 import cli
from napari_sam2.io.results import open_result

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SAMPLE = ROOT / "sample_data"
REMAKE = "the generators changed: run `python sample_data/make_sample_data.py` and commit sample_data/"
NEEDS_DOWNLOAD = "--model sam2.1_hiera_tiny"  # an official checkpoint: not fetched in tests


def readme_commands() -> list[str]:
    """Every `napari-sam2 …` line of the README's ```bash blocks, in order."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)
    return [line.strip() for block in blocks for line in block.splitlines() if line.startswith("napari-sam2 ")]


def test_readme_commands_run_verbatim_on_the_sample_data(tmp_path, monkeypatch, capsys):
    commands = readme_commands()
    assert any("sample_data/" in c for c in commands) and any(c.split()[1] == "demo" for c in commands)
    skipped = [c for c in commands if NEEDS_DOWNLOAD in c]
    assert all(c.split()[1] == "demo" for c in skipped), skipped  # the only commands not run here
    work = tmp_path / "clone"
    work.mkdir()
    shutil.copytree(SAMPLE, work / "sample_data")
    monkeypatch.chdir(work)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # `demo` without --out: a temp folder, here
    for command in commands:
        if command in skipped:
            continue
        code = cli.main(shlex.split(command, comments=True)[1:])
        captured = capsys.readouterr()
        assert code == 0, f"{command}\n{captured.err}"
        assert "Traceback" not in captured.err
    result = open_result(work / "nuclei.ome.zarr")
    assert result.complete and sorted(result.colors) == [1, 2, 3, 4, 5, 6]
    assert (work / "nuclei_RES" / "res_track.txt").is_file()
    assert open_result(work / "zstack.ome.zarr").axes == "zyx"
    four_d = open_result(work / "nuclei_4d.ome.zarr")  # the 3D+t section's command
    assert four_d.axes == "tzyx" and four_d.complete and four_d.labels.shape == (4, 8, 64, 64)
    assert tifffile.imread(work / "nuclei_4d_RES" / "mask003.tif").shape == (8, 64, 64)
    with open(work / "nuclei_regions.csv", newline="") as f:
        header = next(csv.reader(f))
    assert "area" in header
    assert not (work / "demo").exists()  # the README's offline demo writes into a temp folder


def test_sample_data_is_what_the_script_makes(tmp_path):
    sys.path.insert(0, str(SAMPLE))
    try:
        import make_sample_data
    finally:
        sys.path.remove(str(SAMPLE))
    for made in make_sample_data.make(tmp_path):
        shipped = SAMPLE / made.name
        assert shipped.is_file(), f"{shipped.name} is made by the script but not committed"
        if made.suffix == ".tif":  # OME-XML carries a fresh UUID: compare pixels and shapes
            np.testing.assert_array_equal(
                tifffile.imread(made), tifffile.imread(shipped), err_msg=f"{made.name}; {REMAKE}"
            )
        else:
            assert made.read_text() == shipped.read_text(), f"{made.name}; {REMAKE}"
    seeds = tifffile.imread(SAMPLE / "nuclei_seeds.tif")
    truth = tifffile.imread(SAMPLE / "nuclei_ground_truth.tif")
    np.testing.assert_array_equal(seeds, truth[0])
    assert json.loads((SAMPLE / "nuclei_lineage.json").read_text())  # the division is recorded
    assert sum(f.stat().st_size for f in SAMPLE.iterdir()) < 1_000_000  # small enough to ship


@pytest.mark.parametrize("name", ["nuclei_prompts.csv", "nuclei_zstack_prompts.csv", "nuclei_4d_prompts.csv"])
def test_sample_clicks_lie_inside_their_nuclei(name):
    from napari_sam2.prompts import PromptSet

    truth = tifffile.imread(SAMPLE / name.replace("prompts.csv", "ground_truth.tif"))
    prompts = PromptSet.load(SAMPLE / name)
    assert len(prompts) >= 3
    for prompt in prompts:
        for y, x in prompt.points:
            assert truth[(*prompt.slice_index, int(y), int(x))] == prompt.obj_id
