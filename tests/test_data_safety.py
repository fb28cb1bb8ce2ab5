"""Fault injection: nothing lost, nothing mixed, no traceback under hostile use (issue 13's numbered cases).

Each test reproduces one way a careless or hostile user broke a run before and asserts the exit code, one clear
message without a traceback, that no byte that existed before was changed (digests of every file before and
after) and that no wrong label was written. Runs go through the command line in-process (`cli.main`) with the
built-in nano-fluo on 64² stacks; subprocesses only where another live process is the point.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
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


# ---------------------------------------------------------------------- 6. limits before allocation
def test_6_a_tiny_prompts_file_declaring_a_huge_mask_is_refused_before_decoding(movie, tmp_path, capsys):
    prompts = tmp_path / "p.json"
    prompts.write_text(
        '{"prompts": [{"obj_id": 1, "frame": 0, "mask": {"shape": [50000, 50000], "rle": [2500000000]}}]}'
    )
    assert prompts.stat().st_size < 130
    out = tmp_path / "run.ome.zarr"
    code, err = run_cli(capsys, "track", movie["a"], "--prompts", prompts, "--out", out, "--device", "cpu", "-q")
    assert code == cli.EXIT_INPUT and "does not match the frame size (64, 64)" in err
    assert not out.exists()
    # the same mask inside a result's provenance: `info` refuses it without decoding it
    assert run_cli(capsys, *_track_args(movie, out))[0] == 0
    record = LabelStore.open(out).provenance
    record["prompts"] = json.loads(prompts.read_text())
    LabelStore.open(out, mode="r+").update_provenance(record)
    code, err = run_cli(capsys, "info", out)
    assert code == cli.EXIT_INPUT and "does not match the frame size" in err


def test_6_object_ids_up_to_the_uint32_limit_work_and_beyond_it_are_refused(movie, tmp_path, capsys):
    prompts = tmp_path / "p.csv"
    prompts.write_text("obj_id,frame,y,x\n4294967295,0,20,20\n")
    y, x = np.argwhere(tifffile.imread(movie["seeds"]) > 0)[0]
    prompts.write_text(f"obj_id,frame,y,x\n4294967295,0,{y},{x}\n")
    out = tmp_path / "run.ome.zarr"
    code, err = run_cli(capsys, "track", movie["a"], "--prompts", prompts, "--out", out, "--device", "cpu", "-q")
    assert code == 0, err
    assert set(np.unique(LabelStore.open(out).read_labels()[:])) <= {0, 4294967295}
    prompts.write_text(f"obj_id,frame,y,x\n4294967296,0,{y},{x}\n")
    code, err = run_cli(capsys, "track", movie["a"], "--prompts", prompts, "--out", tmp_path / "b.ome.zarr", "-q")
    assert code == cli.EXIT_INPUT and "at most 4294967295" in err and not (tmp_path / "b.ome.zarr").exists()


def _nano_with_config(tmp_path, name, change=None, nan=False):
    import torch

    from napari_sam2 import registry

    saved = torch.load(registry.BUILTIN_DIR / registry.model_info("nano-fluo").filename, weights_only=True)
    config, weights = json.loads(json.dumps(saved["config"])), dict(saved["model"])
    if change is not None:
        change(config)
    if nan:
        key = next(k for k, t in weights.items() if t.is_floating_point())
        weights[key] = weights[key].clone()
        weights[key].view(-1)[0] = float("nan")
    path = tmp_path / f"{name}.pt"
    torch.save({"model": weights, "config": config}, path)
    return path


@pytest.mark.parametrize(
    ("name", "change", "nan", "message"),
    [
        ("huge", lambda c: c["trunk"].update(embed_dim=2**20), False, "trunk.embed_dim = 1048576 is outside"),
        ("unknown_field", lambda c: c.update(bogus=1), False, "unknown field(s) ['bogus']"),
        ("string_size", lambda c: c.update(image_size="256"), False, "image_size must be int"),
        ("no_trunk", lambda c: c.pop("trunk"), False, "has no 'trunk'"),
        ("nan_weights", None, True, "NaN or infinite weights"),
    ],
)
def test_6_8_9_checkpoint_configs_are_checked_before_any_tensor(movie, tmp_path, capsys, name, change, nan, message):
    checkpoint = _nano_with_config(tmp_path, name, change, nan)
    out = tmp_path / "run.ome.zarr"
    code, err = run_cli(capsys, "track", movie["a"], "--seeds", movie["seeds"], "--out", out, "--model", checkpoint,
                        "--device", "cpu", "-q")  # fmt: skip
    assert code == cli.EXIT_MODEL and message in err
    assert not out.exists()


# ---------------------------------------------------------------------- 7. a failed call leaves the session as it was
def test_7_a_failed_add_prompt_leaves_the_session_unchanged(movie):
    from napari_sam2 import TrackingSession, load_model
    from napari_sam2.errors import InputError

    image = tifffile.imread(movie["a"])
    seeds = tifffile.imread(movie["seeds"])
    y, x = np.argwhere(seeds > 0)[0]
    with TrackingSession(load_model("nano-fluo", device="cpu"), image) as session:
        session.add_prompt(0, 1, points=[[y, x]])
        for bad in (
            {"frame": 0, "obj_id": 2**32, "points": [[y, x]]},
            {"frame": 0, "obj_id": 2, "mask": np.zeros((64, 64), bool)},
            {"frame": 0, "obj_id": 2, "mask": np.full((64, 64), np.nan)},
            {"frame": 1.5, "obj_id": 2, "points": [[y, x]]},
        ):
            with pytest.raises(InputError) as info:
                session.add_prompt(**bad)
            assert session.obj_ids == [1]
        assert "integer" in str(info.value)  # frame=1.5: not "outside the stack"
        assert session.add_prompt(0, 1, points=[[y, x]], replace=True).obj_ids == [1]  # the session still works
        results = list(session.propagate("forward"))
        assert len(results) == 6


# ---------------------------------------------------------------------- 8. tracebacks → one message
def _damaged_inputs(folder: Path, image: np.ndarray) -> dict[str, Path]:
    import gzip

    import zarr

    paths = {}
    np.save(folder / "empty.npy", np.zeros((0,), np.uint8))
    paths["empty npy"] = folder / "empty.npy"
    np.save(folder / "complex.npy", image.astype(np.complex64))
    paths["complex"] = folder / "complex.npy"
    tifffile.imwrite(folder / "zlib.tif", image, compression="zlib", metadata={"axes": "TYX"})
    with tifffile.TiffFile(folder / "zlib.tif") as tif:
        strips = [(o, c) for page in tif.pages for o, c in zip(page.dataoffsets, page.databytecounts, strict=True)]
    offset, count = strips[len(strips) // 2]
    data = bytearray((folder / "zlib.tif").read_bytes())
    data[offset + 4 : offset + count - 4] = bytes(count - 8)  # a frame's deflate stream destroyed
    (folder / "zlib.tif").write_bytes(bytes(data))
    paths["corrupt zlib frame"] = folder / "zlib.tif"
    array = zarr.open_array(folder / "c.zarr", mode="w", shape=image.shape, chunks=(1, 64, 64), dtype=image.dtype)
    array[:] = image
    chunk = folder / "c.zarr" / "c" / "2" / "0" / "0"
    chunk.write_bytes(bytes(chunk.stat().st_size))
    paths["corrupt zarr chunk"] = folder / "c.zarr"
    for name, multiscales in (("not a list", {"a": 1}), ("no datasets", [{"axes": ["t", "y", "x"]}])):
        group = zarr.open_group(folder / f"{name}.zarr", mode="w", zarr_format=3)
        group.create_array("0", data=image)
        group.attrs["ome"] = {"version": "0.5", "multiscales": multiscales}
        paths[f"multiscales {name}"] = folder / f"{name}.zarr"
    try:
        import nibabel
    except ImportError:
        return paths
    nibabel.save(nibabel.Nifti1Image(np.transpose(image, (2, 1, 0)).astype(np.int16), np.eye(4)), folder / "v.nii")
    raw = gzip.compress((folder / "v.nii").read_bytes())
    (folder / "t.nii.gz").write_bytes(raw[: len(raw) * 2 // 3])
    paths["truncated nii.gz"] = folder / "t.nii.gz"
    return paths


def test_8_damaged_or_malformed_inputs_give_one_message(movie, tmp_path, capsys):
    inputs = _damaged_inputs(tmp_path, tifffile.imread(movie["a"]))
    for what, path in inputs.items():
        out = tmp_path / f"{what}.ome.zarr"
        code, err = run_cli(capsys, "track", path, "--seeds", movie["seeds"], "--out", out, "--axis", "0",
                            "--device", "cpu", "-q")  # fmt: skip
        assert code == cli.EXIT_INPUT, (what, err)
        assert not out.exists() or LabelStore.open(out).provenance["status"] == "interrupted", what
    assert len(inputs) >= 6


def test_8_prompt_files_and_options_that_crashed_give_one_message(movie, tmp_path, capsys):
    long_field = tmp_path / "long.csv"
    long_field.write_text("obj_id,frame,y,x\n1,0,10," + "1" * 140_000 + "\n")
    seeds = tifffile.imread(movie["seeds"]).astype(np.int64)
    seeds[seeds == seeds.max()] = 2**40
    tifffile.imwrite(tmp_path / "big_seeds.tif", seeds)
    cases = [
        (["--prompts", long_field], "not a valid CSV row"),
        (["--seeds", tmp_path / "big_seeds.tif"], "does not fit the uint32 label store"),
        (["--prompts", tmp_path / "x.txt"], "prompts files are .json or .csv"),
    ]
    for extra, message in cases:
        out = tmp_path / "run.ome.zarr"
        code, err = run_cli(capsys, "track", movie["a"], *extra, "--out", out, "--device", "cpu", "-q")
        assert code == cli.EXIT_INPUT and message in err, err
        assert not out.exists()
    code, err = run_cli(capsys, "demo", "--size", "100000", "--out", tmp_path / "demo", "-q")
    assert code == cli.EXIT_INPUT and "--size must be" in err and not (tmp_path / "demo").exists()


def test_8_9_silent_acceptances_now_work_or_are_refused(movie, tmp_path, capsys):
    image = tifffile.imread(movie["a"])
    np.save(tmp_path / "bool.npy", image > np.percentile(image, 90))  # a bool stack tracks
    code, err = run_cli(capsys, "track", tmp_path / "bool.npy", "--seeds", movie["seeds"],
                        "--out", tmp_path / "bool.ome.zarr", "--device", "cpu", "-q")  # fmt: skip
    assert code == 0, err
    np.save(tmp_path / "rgb.npy", np.stack([image // 2, image // 3, image], -1))  # --channel -1: the last channel
    code, err = run_cli(capsys, "track", tmp_path / "rgb.npy", "--seeds", movie["seeds"], "--channel", "-1",
                        "--out", tmp_path / "rgb.ome.zarr", "--device", "cpu", "-q")  # fmt: skip
    assert code == 0, err
    np.testing.assert_array_equal(LabelStore.open(tmp_path / "rgb.ome.zarr").read_labels()[:], movie["ref"])
    from napari_sam2.errors import InputError

    for axis in (1.5, True):
        with pytest.raises(InputError, match="axis must be an integer"):
            track(image, tmp_path / "x.csv", model="nano-fluo", axis=axis)
    # --direction / --window given to --resume are refused, not ignored
    out = tmp_path / "run.ome.zarr"
    _interrupted(movie, out)
    before = tree_digest(out)
    for option in (["--direction", "forward"], ["--window", "0,100"]):
        code, err = run_cli(capsys, "track", movie["a"], "--out", out, "--resume", *option, "--device", "cpu", "-q")
        assert code == cli.EXIT_INPUT and "a resumed run replays it" in err
    assert tree_digest(out) == before


def test_8_a_damaged_finished_chunk_is_rewritten_on_resume(movie, tmp_path, capsys):
    out = tmp_path / "run.ome.zarr"
    _interrupted(movie, out, after=4)
    finished = LabelStore.open(out).finished_frames()
    chunk = next(p for p in (out / "labels" / "sam2" / "0" / "c" / str(finished[1])).rglob("*") if p.is_file())
    chunk.write_bytes(chunk.read_bytes()[:7])
    code, err = run_cli(capsys, "track", movie["a"], "--out", out, "--resume", "--device", "cpu", "-q")
    assert code == 0, err
    np.testing.assert_array_equal(LabelStore.open(out).read_labels()[:], movie["ref"])


# ---------------------------------------------------------------------- 9. failures that left debris or lied
def test_9_a_prompt_that_fails_leaves_no_store(movie, tmp_path, capsys):
    image = tifffile.imread(movie["a"]).copy()
    image[0] = 7  # the prompted frame is constant: the prompt fails when applied
    tifffile.imwrite(tmp_path / "flat.tif", image, metadata={"axes": "TYX"})
    out = tmp_path / "run.ome.zarr"
    code, err = run_cli(capsys, *_track_args(movie, out, image=tmp_path / "flat.tif"))
    assert code == cli.EXIT_INPUT and "constant" in err
    assert not out.exists()  # no 0-frame "interrupted" store that would need --overwrite


def _wait_for(predicate, timeout=120.0):
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_9_sigterm_leaves_an_interrupted_store_that_resumes_bit_identically(tmp_path):
    long = nuclei_timelapse(n_frames=30, shape=(64, 64), n_nuclei=2, seed=5)
    tifffile.imwrite(tmp_path / "m.tif", long.image, metadata={"axes": "TYX"})
    tifffile.imwrite(tmp_path / "s.tif", long.labels[0].astype(np.uint16))
    out = tmp_path / "run.ome.zarr"
    args = [sys.executable, "-m", "napari_sam2.cli", "track", str(tmp_path / "m.tif"), "--seeds", str(tmp_path / "s.tif"),
            "--out", str(out), "--device", "cpu", "--direction", "forward", "-q"]  # fmt: skip

    def some_frames_done():
        try:
            return 2 <= len(LabelStore.open(out).finished_frames()) < 30
        except Exception:  # noqa: BLE001  (not created yet)
            return False

    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=_env())
    assert _wait_for(some_frames_done)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == cli.EXIT_TERMINATED, err
    assert "Traceback" not in err and "terminated; frames finished so far are kept" in err
    assert LabelStore.open(out).provenance["status"] == "interrupted"
    resumed = subprocess.run([*args, "--resume"], capture_output=True, text=True, env=_env(), check=False)
    assert resumed.returncode == 0, resumed.stderr
    ref = track(long.image, long.labels[0], model="nano-fluo", axis=0, device="cpu", direction="forward", tables=False)
    np.testing.assert_array_equal(LabelStore.open(out).read_labels()[:], ref.labels)


def test_9_ctrl_c_while_starting_up_gives_one_message(movie, tmp_path):
    out = tmp_path / "run.ome.zarr"
    args = [sys.executable, "-m", "napari_sam2.cli", *map(str, _track_args(movie, out))]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=_env())

    def importing_numpy():  # the moment a KeyboardInterrupt used to break half-imported modules
        try:
            return "_multiarray_umath" in Path(f"/proc/{proc.pid}/maps").read_text()
        except OSError:
            return True

    if not Path("/proc/self/maps").exists():
        proc.kill()
        pytest.skip("needs /proc to see when the process imports numpy")
    assert _wait_for(importing_numpy, timeout=60)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == cli.EXIT_INTERRUPTED, err
    assert "Traceback" not in err and "interrupted; nothing was written" in err
    assert not out.exists()
