"""Scale-out on Dask (a real LocalCluster of 2 process workers): track_many equals serial track() per stack, survives
a worker killed mid-stack, fails a corrupt file alone, does no work on a second run; encode fills the embedding
cache in parallel so that track() runs the image encoder on no frame."""

import os
import signal
from contextlib import contextmanager
from pathlib import Path

import distributed
import numpy as np
import pytest
import tifffile
import torch

from napari_sam2 import encode, track, track_many
from napari_sam2.cli import main
from napari_sam2.io.ome_zarr import LabelStore
from napari_sam2.io.outputs import OutputExistsError
from napari_sam2.sample_data import nuclei_timelapse
from napari_sam2.scale_out import SUMMARY_NAME, local_cluster, stack_name

THREADS = 1  # torch threads, equal in the serial reference and in the workers (results may depend on them)
N_FRAMES, SIZE = 6, 64
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@pytest.fixture(scope="module")
def client():
    env = dict(os.environ)
    cluster = local_cluster(2)
    assert {k: os.environ.get(k) for k in THREAD_VARS} == {k: env.get(k) for k in THREAD_VARS}  # left alone
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    """Three 6-frame 64² nuclei movies with first-frame seed labels: plate/P{k}.tif, seeds/P{k}_seeds.tif."""
    root = tmp_path_factory.mktemp("plate")
    (root / "plate").mkdir()
    (root / "seeds").mkdir()
    for k in range(3):
        sample = nuclei_timelapse(n_frames=N_FRAMES, shape=(SIZE, SIZE), n_nuclei=3, seed=k)
        tifffile.imwrite(root / "plate" / f"P{k}.tif", sample.image, metadata={"axes": "TYX"})
        tifffile.imwrite(root / "seeds" / f"P{k}_seeds.tif", sample.labels[0])
    return root


@contextmanager
def pinned_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def serial(plate, tiny_checkpoint, tmp_path_factory):
    """Labels of each stack tracked serially by track() in this process (the reference)."""
    out = tmp_path_factory.mktemp("serial")
    labels = {}
    with pinned_threads():
        for p in sorted((plate / "plate").glob("*.tif")):
            seeds = plate / "seeds" / f"{stack_name(p)}_seeds.tif"
            labels[p.name] = np.asarray(track(p, seeds, model=tiny_checkpoint, out=out / p.name).labels[...])
    return labels


def _labels(row) -> np.ndarray:
    return np.asarray(LabelStore.open(row.output).read_labels()[...])


def test_track_many_equals_serial_and_second_run_does_no_work(client, plate, serial, tiny_checkpoint, tmp_path):
    args = (str(plate / "plate" / "*.tif"), str(plate / "seeds" / "{name}_seeds.tif"), tmp_path)
    run = track_many(*args, client=client, torch_threads=THREADS, model=tiny_checkpoint, progress=False)
    assert [r.status for r in run.rows] == ["done"] * 3, run.table()
    assert len({r.worker for r in run.rows}) == 2  # both workers took stacks
    for row in run.rows:
        assert row.frames == N_FRAMES and row.objects >= 2 and row.error == ""
        np.testing.assert_array_equal(_labels(row), serial[Path(row.input).name])
    summary = (tmp_path / SUMMARY_NAME).read_text().splitlines()
    assert summary[0].startswith("input,output,status,frames,objects,seconds") and len(summary) == 4

    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file() and p.name != SUMMARY_NAME}
    # never contacted: nothing is left to do, so no cluster is needed
    again = track_many(*args, scheduler="tcp://127.0.0.1:1", model=tiny_checkpoint, progress=False)
    assert [r.status for r in again.rows] == ["skipped"] * 3
    assert [r.frames for r in again.rows] == [N_FRAMES] * 3 and again.dashboard is None
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # not one file rewritten


def test_worker_killed_mid_stack_resumes_with_identical_labels(client, plate, serial, tiny_checkpoint, tmp_path):
    marker = str(tmp_path / "killed")

    def kill_worker_at_frame_3(done, total):
        # runs inside the worker: SIGKILL its own process at frame 3 of the first stack that gets there (the marker
        # file makes it happen once), as an out-of-memory kill or a lost node would
        if done == 3 and not os.path.exists(marker):
            with open(marker, "w") as f:
                f.write(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)

    pids = set(client.run(os.getpid).values())
    run = track_many(
        sorted((plate / "plate").glob("*.tif")),
        str(plate / "seeds" / "{name}_seeds.tif"),
        tmp_path / "out",
        client=client,
        torch_threads=THREADS,
        model=tiny_checkpoint,
        progress=False,
        frame_progress=kill_worker_at_frame_3,
    )
    assert int(Path(marker).read_text()) in pids  # a worker process really died mid-stack
    assert [r.status for r in run.rows] == ["done"] * 3, run.table()
    assert max(r.resumed_frames for r in run.rows) == 3  # the retried task started from the frames on disk
    for row in run.rows:
        np.testing.assert_array_equal(_labels(row), serial[Path(row.input).name])


def test_cli_corrupt_file_fails_alone(client, plate, serial, tiny_checkpoint, tmp_path, capsys):
    good = plate / "plate" / "P1.tif"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "P1.tif").symlink_to(good)
    data = good.read_bytes()
    (tmp_path / "in" / "bad.tif").write_bytes(data[: len(data) // 2])  # a truncated copy
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    for name in ("P1", "bad"):
        (seeds / f"{name}.tif").symlink_to(plate / "seeds" / "P1_seeds.tif")
    argv = [str(tmp_path / "in" / "*.tif"), "--seeds-pattern", str(seeds / "{name}.tif")]
    argv += ["--out-dir", str(tmp_path / "out"), "--model", str(tiny_checkpoint), "--threads-per-worker", str(THREADS)]
    address = client.scheduler.address
    assert main(["track-many", *argv, "--scheduler", address]) == 1
    captured = capsys.readouterr()
    assert "1 of 2 stacks failed" in captured.err and "Traceback" not in captured.err
    rows = {line.split(",")[0]: line for line in (tmp_path / "out" / SUMMARY_NAME).read_text().splitlines()[1:]}
    bad_row = rows[str(tmp_path / "in" / "bad.tif")]
    error = bad_row.split(",failed,")[1]
    assert "cannot be read" in error and ("damaged" in error or "truncated" in error)  # why, and what to do
    assert ",done," in rows[str(tmp_path / "in" / "P1.tif")]
    store = LabelStore.open(tmp_path / "out" / "P1.ome.zarr")
    np.testing.assert_array_equal(store.read_labels()[...], serial["P1.tif"])
    assert "P1.tif" in captured.out and "failed" in captured.out  # the table


def test_parallel_encode_then_track_runs_no_encoder(client, plate, tiny_checkpoint, tmp_path):
    movie = plate / "plate" / "P2.tif"
    cache = tmp_path / "features"
    res = encode(movie, cache, model=tiny_checkpoint, client=client, chunk_frames=2, torch_threads=THREADS)
    assert res.frames == N_FRAMES and res.encoded == N_FRAMES and res.tasks == 4  # frame 0, then 1-2, 3-4, 5
    assert len({t["worker"] for t in res.per_task}) == 2
    seeds = plate / "seeds" / "P2_seeds.tif"
    with pinned_threads():  # the workers encoded with THREADS torch threads: results may depend on them
        result = track(movie, seeds, model=tiny_checkpoint, embedding_cache=cache)
        fresh = track(movie, seeds, model=tiny_checkpoint)
    assert result.encoder_runs == 0  # every frame's features came from the cache the workers filled
    assert fresh.encoder_runs == N_FRAMES
    np.testing.assert_array_equal(result.labels, fresh.labels)
    again = encode(movie, cache, model=tiny_checkpoint, client=client, chunk_frames=2, torch_threads=THREADS)
    assert again.encoded == 0 and again.cached == N_FRAMES


def test_cli_auto_tracks_each_stack_as_track_auto_does(client, plate, tmp_path):
    movie = plate / "plate" / "P0.tif"
    argv = ["track-many", str(movie), "--auto", "--points-per-side", "8", "--discover-every", "3"]
    argv += ["--out-dir", str(tmp_path), "--scheduler", client.scheduler.address, "--threads-per-worker", str(THREADS)]
    assert main([*argv, "--quiet"]) == 0
    store = LabelStore.open(tmp_path / "P0.ome.zarr")
    assert store.provenance["settings"]["auto"] is True and store.provenance["status"] == "complete"
    from napari_sam2.discovery import DiscoveryOptions

    options = DiscoveryOptions(every=3, on_start_frame=False)
    options.generator["points_per_side"] = 8
    with pinned_threads():
        serial = track(movie, auto=True, discover=options)
    assert len(np.unique(serial.labels)) > 1  # it found something to compare
    np.testing.assert_array_equal(store.read_labels()[...], serial.labels)


def test_summary_not_written_by_track_many_is_refused_before_any_work(plate, tmp_path, capsys):
    """OUT/track_many_summary.csv follows the side-file rule: a file track-many did not write is never replaced
    without --overwrite, and the refusal comes before any stack is touched; its own summary is replaced freely."""
    out = tmp_path / "out"
    out.mkdir()
    theirs = out / SUMMARY_NAME
    theirs.write_text("plate,well,notes\nA1,1,keep me\n")
    inputs = str(plate / "plate" / "*.tif")
    never = "tcp://127.0.0.1:1"  # never contacted: every stack fails (no prompts, no store) without cluster work
    with pytest.raises(OutputExistsError, match="not written by track-many"):
        track_many(inputs, None, out, scheduler=never, progress=False)
    assert theirs.read_text() == "plate,well,notes\nA1,1,keep me\n" and sorted(os.listdir(out)) == [SUMMARY_NAME]

    argv = ["track-many", inputs, "--prompts", str(plate / "none.json"), "--out-dir", str(out), "--scheduler", never]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "not written by track-many" in err and "--overwrite" in err and "Traceback" not in err
    assert theirs.read_text() == "plate,well,notes\nA1,1,keep me\n"

    run = track_many(inputs, None, out, scheduler=never, progress=False, overwrite=True)
    assert [r.status for r in run.rows] == ["failed"] * 3
    assert theirs.read_text().startswith("input,output,status,")  # replaced, as asked
    again = track_many(inputs, None, out, scheduler=never, progress=False)  # ours now: replaced without asking
    assert again.summary_path == theirs and len(theirs.read_text().splitlines()) == 4
