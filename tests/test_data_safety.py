"""Fault injection: nothing lost, nothing mixed, no traceback under hostile use (issue 13's numbered cases).

Each test reproduces one way a careless or hostile user broke a run before and asserts the exit code, one clear
message without a traceback, that no byte that existed before was changed (digests of every file before and
after) and that no wrong label was written. Runs go through the command line in-process (`cli.main`) with the
built-in nano-fluo on 64² stacks; subprocesses only where another live process is the point.
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_sam2 import cli, track
from napari_sam2.io.ome_zarr import LabelStore
from napari_sam2.sample_data import nuclei_timelapse

SRC = str(Path(__file__).resolve().parents[1] / "src")


# ---------------------------------------------------------------------- helpers
def tree_digest(*paths) -> dict[str, str]:
    """{file: sha256} of every file under `paths` (files or folders); missing paths give nothing."""
    out = {}
    for root in map(Path, paths):
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def run_cli(capsys, *args) -> tuple[int, str]:
    """cli.main(args) → (exit code, stderr); asserts the failure (if any) is one message line, no traceback."""
    code = cli.main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    if code != 0:
        messages = [line for line in err.splitlines() if line.startswith("napari-sam2: error:")]
        assert len(messages) == 1, err
    return code, err


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = str(__import__("torch").get_num_threads())  # bit-identical labels across processes
    return env


@pytest.fixture(scope="module")
def movie(tmp_path_factory):
    """Two 6-frame 64² nuclei movies of the same shape and dtype (A, B), A's first-frame seeds, and A's labels
    from one uninterrupted run (the reference every resumed run must equal)."""
    folder = tmp_path_factory.mktemp("movie")
    a = nuclei_timelapse(n_frames=6, shape=(64, 64), n_nuclei=3, seed=3)
    b = nuclei_timelapse(n_frames=6, shape=(64, 64), n_nuclei=3, seed=4)
    tifffile.imwrite(folder / "a.tif", a.image, metadata={"axes": "TYX"})
    tifffile.imwrite(folder / "b.tif", b.image, metadata={"axes": "TYX"})
    tifffile.imwrite(folder / "seeds.tif", a.labels[0].astype(np.uint16))
    ref = track(folder / "a.tif", folder / "seeds.tif", model="nano-fluo", axis="t", device="cpu", tables=False)
    return {"a": folder / "a.tif", "b": folder / "b.tif", "seeds": folder / "seeds.tif", "ref": np.asarray(ref.labels)}


def _interrupted(movie, out, after: int = 3):
    """A run of movie A into `out` stopped (KeyboardInterrupt) after `after` frames."""

    def stop(done, total):
        if done >= after:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        track(movie["a"], movie["seeds"], model="nano-fluo", axis="t", device="cpu", out=out, progress=stop)
    assert len(LabelStore.open(out).finished_frames()) == after


def _track_args(movie, out, *extra, image=None):
    image = movie["a"] if image is None else image
    return ["track", image, "--seeds", movie["seeds"], "--out", out, "--model", "nano-fluo", "--device", "cpu",
            "-q", *extra]  # fmt: skip


# ---------------------------------------------------------------------- 1. identity of a resumed run
def test_1_resume_with_another_image_of_the_same_shape_is_refused(movie, tmp_path, capsys):
    out = tmp_path / "run.ome.zarr"
    _interrupted(movie, out)
    before = tree_digest(out)
    code, err = run_cli(capsys, "track", movie["b"], "--out", out, "--resume", "--device", "cpu", "-q")
    assert code == cli.EXIT_INPUT
    assert "differs from frame" in err and "another image" in err
    assert tree_digest(out) == before  # not one byte of the store changed
    # the right input finishes it, bit-identical to an uninterrupted run
    code, err = run_cli(capsys, "track", movie["a"], "--out", out, "--resume", "--device", "cpu", "-q")
    assert code == 0, err
    np.testing.assert_array_equal(LabelStore.open(out).read_labels()[:], movie["ref"])
    assert LabelStore.open(out).provenance["status"] == "complete"


def test_1_resume_of_a_complete_store_with_another_image_keeps_it_complete(movie, tmp_path, capsys):
    out = tmp_path / "run.ome.zarr"
    assert run_cli(capsys, *_track_args(movie, out))[0] == 0
    before = tree_digest(out)
    code, err = run_cli(capsys, "track", movie["b"], "--out", out, "--resume", "--device", "cpu", "-q")
    assert code == cli.EXIT_INPUT and "another image" in err
    assert tree_digest(out) == before


# ---------------------------------------------------------------------- 2. two writers on one store
def _hold_lock(path: Path) -> subprocess.Popen:
    code = (
        "import sys, time\nfrom napari_sam2.io.lock import StoreLock\n"
        f"StoreLock({str(path)!r}).acquire()\nprint('locked', flush=True)\ntime.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=_env())
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_2_overwrite_beside_a_live_writer_is_refused_and_a_dead_writers_lock_is_taken_over(movie, tmp_path, capsys):
    out = tmp_path / "run.ome.zarr"
    assert run_cli(capsys, *_track_args(movie, out))[0] == 0
    before = tree_digest(tmp_path)
    holder = _hold_lock(out)  # another live process writes this store
    try:
        code, err = run_cli(capsys, *_track_args(movie, out, "--overwrite"))
        assert code == cli.EXIT_INPUT
        assert f"process {holder.pid}" in err and "being written" in err
        code, err = run_cli(capsys, *_track_args(movie, tmp_path / "run.ome.zarr", "--resume"))
        assert code == cli.EXIT_INPUT and f"process {holder.pid}" in err
        assert tree_digest(tmp_path) == {**before, **tree_digest(tmp_path / "run.ome.zarr.lock")}
    finally:
        holder.kill()  # kill -9: its lock file stays behind, stale
        holder.wait()
    assert (tmp_path / "run.ome.zarr.lock").exists()
    code, err = run_cli(capsys, *_track_args(movie, out, "--overwrite"))
    assert code == 0, err
    assert not (tmp_path / "run.ome.zarr.lock").exists()  # released at the end
    np.testing.assert_array_equal(LabelStore.open(out).read_labels()[:], movie["ref"])


# ---------------------------------------------------------------------- 3. the output is the input
def test_3_overwrite_of_the_input_store_is_refused(movie, tmp_path, capsys):
    store = tmp_path / "input.ome.zarr"
    assert run_cli(capsys, *_track_args(movie, store))[0] == 0  # a store holding the image
    before = tree_digest(tmp_path)
    code, err = run_cli(capsys, *_track_args(movie, store, "--overwrite", image=store))
    assert code == cli.EXIT_INPUT and "input image's own store" in err
    assert tree_digest(tmp_path) == before


# ---------------------------------------------------------------------- 4. side files are owned
def test_4_existing_side_files_are_refused_without_overwrite(movie, tmp_path, capsys):
    user_csv = tmp_path / "run_regions.csv"
    user_csv.write_text("my own table\n")
    before = tree_digest(tmp_path)
    code, err = run_cli(capsys, *_track_args(movie, tmp_path / "run.ome.zarr"))
    assert code == cli.EXIT_INPUT and "run_regions.csv already exists" in err
    assert tree_digest(tmp_path) == before and not (tmp_path / "run.ome.zarr").exists()
    # --overwrite does not make it ours either
    code, err = run_cli(capsys, *_track_args(movie, tmp_path / "run.ome.zarr", "--overwrite"))
    assert code == cli.EXIT_INPUT and "not written by napari-sam2" in err
    assert tree_digest(tmp_path) == before


def test_4_ctc_overwrite_removes_only_files_the_run_wrote(movie, tmp_path, capsys):
    out, ctc = tmp_path / "run.ome.zarr", tmp_path / "RES"
    assert run_cli(capsys, *_track_args(movie, out, "--ctc", ctc))[0] == 0
    written = sorted(p.name for p in ctc.iterdir())
    assert written == [f"mask{t:03d}.tif" for t in range(6)] + ["res_track.txt"]
    user = ctc / "mask050.tif"
    tifffile.imwrite(user, np.full((8, 8), 7, np.uint16))
    user_digest = tree_digest(user)
    before = tree_digest(tmp_path)
    code, err = run_cli(capsys, *_track_args(movie, out, "--ctc", ctc, "--overwrite"))
    assert code == cli.EXIT_INPUT and "mask050.tif exists and was not written by napari-sam2" in err
    assert tree_digest(tmp_path) == before
    user.rename(tmp_path / "mask050.tif")  # the user moves their file away: now the overwrite runs
    code, err = run_cli(capsys, *_track_args(movie, out, "--ctc", ctc, "--overwrite"))
    assert code == 0, err
    assert sorted(p.name for p in ctc.iterdir()) == written
    assert tree_digest(tmp_path / "mask050.tif") == {str(tmp_path / "mask050.tif"): user_digest[str(user)]}


# ---------------------------------------------------------------------- 5. the embedding cache is verified
def test_5_damaged_embedding_cache_chunks_are_recomputed_never_used(movie, tmp_path):
    cache = tmp_path / "features"
    first = track(movie["a"], movie["seeds"], model="nano-fluo", axis="t", device="cpu", tables=False,
                  embedding_cache=cache)  # fmt: skip
    np.testing.assert_array_equal(first.labels, movie["ref"])
    (store,) = cache.glob("*.zarr")
    rng = np.random.default_rng(0)
    for t in range(2, 6):  # frames 2-5: chunks replaced by random bytes of the same size
        chunk = next((store / "vision" / "c" / str(t)).rglob("*"), None)
        while chunk.is_dir():
            chunk = next(chunk.iterdir())
        chunk.write_bytes(rng.integers(0, 256, chunk.stat().st_size, dtype=np.uint8).tobytes())
    chunk = next(p for p in (store / "high_res_0" / "c" / "1").rglob("*") if p.is_file())
    chunk.write_bytes(chunk.read_bytes()[:100])  # frame 1: truncated
    again = track(movie["a"], movie["seeds"], model="nano-fluo", axis="t", device="cpu", tables=False,
                  embedding_cache=cache)  # fmt: skip
    assert again.encoder_runs == 5  # the five damaged frames, and only those
    np.testing.assert_array_equal(again.labels, movie["ref"])  # no wrong label
    third = track(movie["a"], movie["seeds"], model="nano-fluo", axis="t", device="cpu", tables=False,
                  embedding_cache=cache)  # fmt: skip
    assert third.encoder_runs == 0  # rewritten: whole again
    np.testing.assert_array_equal(third.labels, movie["ref"])
