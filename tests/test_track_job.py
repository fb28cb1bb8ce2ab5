"""track() as a job: progress lives in the store's per-frame records, not in its attributes, and a run killed at
any write resumes to the labels of an uninterrupted run — also where discovery writes a frame twice."""

import hashlib

import numpy as np
import pytest
from run_helpers import stop_at_call

from napari_sam2 import PromptSet, load_model, track
from napari_sam2.discovery import DiscoveryOptions
from napari_sam2.io.ome_zarr import LabelStore
from napari_sam2.sample_data import nuclei_timelapse

ATTRS = "labels/sam2/zarr.json"  # the label image's attributes: provenance, colours, NGFF metadata


@pytest.fixture(scope="module")
def division_movie():
    """A 6-frame 128² nuclei movie with a division (frame 3) and an arrival (frame 5), nano-fluo, and the oracle
    detector that makes discovery find both and write frames 3 and 5 twice (tests/test_lineage.py)."""
    movie = nuclei_timelapse(n_frames=6, shape=(128, 128), n_nuclei=3, seed=11)

    def oracle(session, frame):
        truth = movie.labels[frame]
        return [truth == o for o in np.unique(truth)[1:]]

    # arrival_neighbours off: nucleus 2 comes back on frame 3 beside a tracked cell; with the rule on, discovery
    # takes it in on frame 4 instead of 5, and this test's frame-by-frame script is written for frame 5; relink
    # off for the same reason (gap closing gives it back to the seeded object 2 on frame 4)
    options = DiscoveryOptions(detector=oracle, arrivals=True, division_gap=0, arrival_neighbours=False, relink=False)
    return movie, load_model("nano-fluo", device="cpu"), options


def _run(movie, model, options, out, **kwargs):
    return track(movie.image, movie.labels[0], model=model, direction="forward", out=out, discover=options,
                 tables=False, **kwargs)  # fmt: skip


def test_attributes_are_not_rewritten_per_frame_and_kill_at_a_twice_written_frame_resumes_exactly(
    division_movie, tmp_path
):
    movie, model, options = division_movie
    out = tmp_path / "full.ome.zarr"
    seen = []  # per progress call: the attributes file (mtime, bytes digest) and the store's per-frame records

    def watch(done, total):
        attrs = out / ATTRS
        seen.append((attrs.stat().st_mtime_ns, hashlib.sha256(attrs.read_bytes()).hexdigest()))
        counts.append(LabelStore.open(out).write_counts().tolist())

    counts: list = []
    full = _run(movie, model, options, out, progress=watch)
    reference = np.asarray(full.labels[...])
    assert [e["kind"] for e in full.events] == ["division", "arrival"]  # new ids appeared on two frames
    # 8 writes for 6 frames (frames 3 and 5 twice), and the label attributes not rewritten once during them
    assert len(seen) == 8 and len(set(seen)) == 1
    assert counts[-1] == [1, 1, 1, 2, 1, 2] and counts[3] == [1, 1, 1, 1, 0, 0] and counts[4][3] == 2
    store = LabelStore.open(out)
    assert store.provenance["status"] == "complete" and "writes" not in store.provenance
    assert set(store.colors) == set(np.unique(reference).tolist()) - {0}  # the colours, recorded at the end

    # Ctrl-C right after frame 3's first write: the store holds its first version, the resume must write the second
    cut = tmp_path / "cut.ome.zarr"
    with pytest.raises(KeyboardInterrupt):
        _run(movie, model, options, cut, progress=stop_at_call(4))
    store = LabelStore.open(cut)
    assert store.provenance["status"] == "interrupted" and store.finished_frames() == [0, 1, 2, 3]
    assert not np.array_equal(store.read_labels()[3], reference[3])  # so a resume that skipped frame 3 would fail
    assert set(store.colors) >= set(np.unique(store.read_labels()[:4]).tolist()) - {0}  # colours at interruption
    # killed again during the resume, right after frame 5's first write, then resumed to the end
    with pytest.raises(KeyboardInterrupt):
        _run(movie, model, options, cut, resume=True, progress=stop_at_call(7))
    assert LabelStore.open(cut).write_counts().tolist() == [1, 1, 1, 2, 1, 1]
    resumed = _run(movie, model, options, cut, resume=True)
    np.testing.assert_array_equal(np.asarray(resumed.labels[...]), reference)
    assert resumed.frames_written == [5] and resumed.parents == full.parents
    assert LabelStore.open(cut).provenance["status"] == "complete"


def test_a_store_with_the_older_run_wide_write_count_resumes_exactly(tmp_path, blob_stack, tiny_checkpoint):
    """Stores interrupted by an earlier version count writes in their attributes ("writes"), not per frame."""
    import shutil

    stack = blob_stack(n_frames=6, shape=(64, 96))
    prompts = PromptSet()
    prompts.add(2, 1, points=[[30, 36]])
    prompts.add(2, 2, box=[55, 69, 76, 90])  # "both" from frame 2: writes 2,3,4,5 then 2,1,0
    reference = track(stack, prompts, model=tiny_checkpoint, device="cpu", tables=False).labels
    out = tmp_path / "old.ome.zarr"
    with pytest.raises(KeyboardInterrupt):
        track(stack, prompts, model=tiny_checkpoint, device="cpu", out=out, tables=False, progress=stop_at_call(5))
    store = LabelStore.open(out, mode="r+")
    shutil.rmtree(out / "labels" / "sam2" / "writes")  # as an earlier version left it: 5 writes done, run-wide
    store.update_provenance({"writes": 5})
    resumed = track(stack, None, model=tiny_checkpoint, device="cpu", out=out, resume=True, tables=False)
    np.testing.assert_array_equal(np.asarray(resumed.labels[...]), reference)
    assert resumed.frames_written == [1, 0]  # frame 2's second write (backward) was the fifth: done before
    store = LabelStore.open(out)
    assert store.provenance["writes"] is None and store.write_counts().tolist() == [1, 1, 2, 1, 1, 1]


KILL_AFTER_3 = """
import os, signal, sys
import numpy as np
from napari_sam2 import track

def kill(done, total):
    if done == 3:  # right after frame 2's write, as an out-of-memory kill or a power cut would
        os.kill(os.getpid(), signal.SIGKILL)

track(np.load(sys.argv[1]), np.load(sys.argv[2]), model="nano-fluo", device="cpu", direction="forward",
      out=sys.argv[3], tables=False, progress=kill)
"""


def test_kill_9_mid_run_then_resume_gives_the_uninterrupted_labels_and_every_colour(tmp_path):
    """kill -9 runs no handler: the store keeps its frames and per-frame records but nothing else of the run; the
    resume must still end with the labels and the colours of an uninterrupted run — including those of an
    object that only the killed run's frames hold (object 3 is erased from the image from frame 3 on)."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import torch
    from scipy import ndimage

    movie = nuclei_timelapse(n_frames=6, shape=(64, 64), n_nuclei=3, seed=3)
    image = movie.image.copy()
    for t in range(3, 6):
        image[t][ndimage.binary_dilation(movie.labels[t] == 3, iterations=3)] = np.median(image[0])
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "seeds.npy", movie.labels[0])
    reference = track(image, movie.labels[0], model="nano-fluo", device="cpu", direction="forward", tables=False)
    present = [set(np.unique(reference.labels[t]).tolist()) - {0} for t in range(6)]
    assert 3 in present[0] and all(3 not in ids for ids in present[3:])  # only frames 0-2 hold object 3

    out = tmp_path / "run.ome.zarr"
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))  # bit-identical labels across processes
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src") + os.pathsep + env.get("PYTHONPATH", "")
    args = [sys.executable, "-c", KILL_AFTER_3, str(tmp_path / "image.npy"), str(tmp_path / "seeds.npy"), str(out)]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, check=False, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    store = LabelStore.open(out)
    assert store.finished_frames() == [0, 1, 2] and store.provenance["status"] == "running"  # no handler ran
    assert store.write_counts().tolist() == [1, 1, 1, 0, 0, 0] and store.colors == {}

    resumed = track(tmp_path / "image.npy", None, model="nano-fluo", device="cpu", out=out, resume=True, tables=False)
    np.testing.assert_array_equal(np.asarray(resumed.labels[...]), reference.labels)
    assert resumed.frames_written == [3, 4, 5]
    store = LabelStore.open(out)
    assert set(store.colors) == set().union(*present) and store.provenance["status"] == "complete"


def test_a_store_recorded_before_newer_discovery_fields_resumes_with_the_rules_it_began_with(tmp_path):
    """A store whose recorded discovery options predate a field (`discovery.RECORDED_BEFORE`) resumes with the
    value that reproduces its run, not today's default: labels equal to an uninterrupted run with those rules."""
    import inspect

    from napari_sam2.api import _job
    from napari_sam2.discovery import RECORDED_BEFORE

    movie = nuclei_timelapse(n_frames=5, shape=(96, 96), n_nuclei=3, seed=11)
    model = load_model("nano-fluo", device="cpu")
    old_rules = {"every": 1, **RECORDED_BEFORE}
    reference = _run(movie, model, old_rules, tmp_path / "old.ome.zarr")

    cut = tmp_path / "cut.ome.zarr"
    with pytest.raises(KeyboardInterrupt):
        _run(movie, model, 1, cut, progress=stop_at_call(2))  # today's rules, then made to look older
    store = LabelStore.open(cut, mode="r+")
    settings = dict(store.provenance["settings"])
    settings["discover"] = {k: v for k, v in settings["discover"].items() if k not in RECORDED_BEFORE}
    store.update_provenance({"settings": settings})

    ask = inspect.signature(track).bind(movie.image, movie.labels[0], model=model, direction="forward", out=cut,
                                        discover=1, tables=False, resume=True)  # fmt: skip
    ask.apply_defaults()
    job = _job(dict(ask.arguments))
    job.open()
    job.plan()
    assert {k: getattr(job.discovery, k) for k in RECORDED_BEFORE} == RECORDED_BEFORE
    assert DiscoveryOptions().object_clicks != RECORDED_BEFORE["object_clicks"]  # so the check above can fail

    resumed = _run(movie, model, 1, cut, resume=True)
    np.testing.assert_array_equal(np.asarray(resumed.labels[...]), np.asarray(reference.labels[...]))
