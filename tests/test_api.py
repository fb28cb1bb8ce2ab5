"""napari_sam2.track with the real tiny model: streaming store, provenance, interruption + exact resume, seeds."""

import csv

import numpy as np
import pytest

from napari_sam2 import PromptSet, registry, track
from napari_sam2.api import ModelNameError, TrackResult
from napari_sam2.io.ome_zarr import LabelStore, StoreExistsError
from napari_sam2.io.results import open_result
from napari_sam2.preprocess import InputError
from napari_sam2.prompts import PromptError
from napari_sam2.session import TrackingSession


class Stop(Exception):
    pass


def _prompts(frame=0):
    prompts = PromptSet()
    prompts.add(frame, 1, points=[[30, 30 + 3 * frame]])
    prompts.add(frame, 2, box=[55, 75 - 3 * frame, 76, 96 - 3 * frame])
    return prompts


def _stop_after(n):
    def progress(done, total):
        if done >= n:
            raise Stop

    return progress


@pytest.fixture
def stack(blob_stack):
    return blob_stack(n_frames=6, shape=(64, 96))


def test_track_matches_a_session_run_and_writes_a_complete_store(tmp_path, stack, tiny_checkpoint, tiny_model):
    prompts = _prompts(frame=2)
    # what the widget does: prompts on a session, then propagate both ways
    with TrackingSession(tiny_model, stack) as session:
        prompts.apply(session)
        expected = np.zeros(stack.shape, np.uint32)
        for result in session.propagate("both"):
            expected[result.frame] = result.labels

    in_memory = track(stack, prompts, model=tiny_model, device="cpu")
    assert isinstance(in_memory, TrackResult) and isinstance(in_memory.labels, np.ndarray)
    np.testing.assert_array_equal(in_memory.labels, expected)
    assert expected.max() > 0

    out = tmp_path / "run.ome.zarr"
    seen = []
    result = track(stack, prompts, model=tiny_checkpoint, out=out, device="cpu", progress=lambda d, t: seen.append(d))
    np.testing.assert_array_equal(result.labels[:], expected)
    assert seen[-1] == 6 and seen == sorted(seen)
    assert sorted(result.frames_written) == list(range(6))

    saved = open_result(out)
    assert saved.complete and saved.prompts == prompts and saved.axes == "tyx"
    np.testing.assert_array_equal(saved.image[:], stack)
    prov = saved.provenance
    assert prov["status"] == "complete"
    assert prov["model"]["checkpoint_sha256"] == registry.file_sha256(tiny_checkpoint)
    assert prov["model"]["source"] == str(tiny_checkpoint)
    assert prov["settings"]["direction"] == "both" and prov["settings"]["window"] is None
    assert prov["package_version"] and prov["created"]

    # tables: confidence per (frame, object), regionprops CSV next to the store, napari tracks
    assert {(r["frame"], r["obj_id"]) for r in result.confidence} == {(f, o) for f in range(6) for o in (1, 2)}
    for row in result.confidence:
        assert row["area"] == int((expected[row["frame"]] == row["obj_id"]).sum())
    assert result.csv_path == tmp_path / "run_regions.csv" and (tmp_path / "run_confidence.csv").is_file()
    with open(result.csv_path) as f:
        rows = list(csv.DictReader(f))
    assert {"frame", "label", "area", "centroid_y", "centroid_x", "mean_intensity", "score", "iou"} <= set(rows[0])
    assert len(rows) == len(result.regions)
    assert result.tracks.shape[1] == 4 and set(result.tracks[:, 0].astype(int)) >= {1, 2}


def test_interrupted_run_leaves_valid_store_and_resume_is_exact(tmp_path, stack, tiny_checkpoint):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    prompts = _prompts(frame=2)  # forward 2..5, then backward 2..0
    full = track(stack, prompts, model=tiny_checkpoint, device="cpu", tables=False)

    for stop_at, preset in [(3, "default"), (5, "parity")]:  # 5: during the backward pass
        out = tmp_path / f"cut{stop_at}.ome.zarr"
        with pytest.raises(Stop):
            track(
                stack,
                prompts,
                model=tiny_checkpoint,
                out=out,
                device="cpu",
                preset=preset,
                progress=_stop_after(stop_at),
            )
        store = LabelStore.open(out)
        before = set(store.finished_frames())
        assert len(before) == stop_at
        assert store.provenance["status"] == "interrupted"
        # an independent reader opens the partial store
        nodes = list(Reader(parse_url(str(out)))())
        label_node = nodes[-1]
        np.testing.assert_array_equal(np.asarray(label_node.data[0]), store.read_labels()[:])

        reference = track(stack, prompts, model=tiny_checkpoint, device="cpu", preset=preset, tables=False)
        resumed = track(stack, None, model=tiny_checkpoint, out=out, device="cpu", resume=True, preset="default")
        np.testing.assert_array_equal(resumed.labels[:], reference.labels)
        # finished frames are not rewritten — except the prompted start frame, which the run itself writes twice
        # (forward and backward pass) when the second write came after the interruption
        assert set(resumed.frames_written) - set(prompts.frames) == set(range(6)) - before
        assert open_result(out).complete and open_result(out).provenance["status"] == "complete"
        assert {(r["frame"], r["obj_id"]) for r in resumed.confidence} == {(f, o) for f in range(6) for o in (1, 2)}
    np.testing.assert_array_equal(full.labels, track(stack, prompts, model=tiny_checkpoint, device="cpu").labels)

    # resuming a finished store writes nothing; different prompts are refused
    again = track(stack, None, model=tiny_checkpoint, out=tmp_path / "cut3.ome.zarr", resume=True, device="cpu")
    assert again.frames_written == []
    with pytest.raises(InputError, match="differ from those recorded"):
        track(stack, _prompts(0), model=tiny_checkpoint, out=tmp_path / "cut3.ome.zarr", resume=True, device="cpu")


def test_seed_labels_track_every_object(tmp_path, stack, tiny_checkpoint):
    seeds = np.zeros(stack.shape[1:], np.uint16)
    yy, xx = np.mgrid[:64, :96]
    seeds[(yy - 30) ** 2 + (xx - 30) ** 2 < 144] = 4
    seeds[(yy - 65 + 10) ** 2 + (xx - 95 + 10) ** 2 < 64] = 11
    seeds[5:12, 70:80] = 7
    np.save(tmp_path / "seeds.npy", seeds)
    for prompts in (seeds, tmp_path / "seeds.npy", np.stack([seeds] * 6)):
        result = track(stack, prompts, model=tiny_checkpoint, device="cpu", seed_frame=1, direction="forward")
        assert result.prompts.obj_ids == [4, 7, 11] and result.prompts.frames == [1]
        assert {r["obj_id"] for r in result.confidence} == {4, 7, 11}
        assert {r["frame"] for r in result.confidence} == {1, 2, 3, 4, 5}
        assert not result.labels[0].any()  # before the seed frame, forward only: written empty
    with pytest.raises(InputError, match=r"seed labels have shape \(10, 10\)"):
        track(stack, np.ones((10, 10), int), model=tiny_checkpoint, device="cpu")


def test_other_axis_window_and_in_memory_model(tmp_path, stack, tiny_checkpoint, tiny_config):
    from napari_sam2.model.build import build_model

    prompts = _prompts()
    reference = track(stack, prompts, model=tiny_checkpoint, device="cpu", tables=False)
    moved = np.ascontiguousarray(np.moveaxis(stack, 0, 2))  # (Y, X, T)
    out = tmp_path / "moved.ome.zarr"
    result = track(moved, prompts, model=tiny_checkpoint, axis=2, out=out, device="cpu")
    np.testing.assert_array_equal(result.labels[:], reference.labels)
    np.testing.assert_array_equal(open_result(out).image[:], stack)

    windowed = track(stack, prompts, model=tiny_checkpoint, device="cpu", window="0,2500", tables=False)
    assert windowed.provenance["settings"]["window"] == [0.0, 2500.0]

    net = build_model(tiny_config())
    assert getattr(net, "checkpoint_path", None) is None
    anonymous = track(stack, prompts, model=net, device="cpu", axis="t", tables=False)
    assert anonymous.provenance["model"]["checkpoint_sha256"] is None
    assert "in-memory" in anonymous.provenance["model"]["note"]


def test_bad_inputs_fail_before_anything_is_written(tmp_path, stack, tiny_checkpoint):
    out = tmp_path / "x.ome.zarr"
    with pytest.raises(InputError, match="direction must be one of"):
        track(stack, _prompts(), model=tiny_checkpoint, direction="sideways")
    bad = PromptSet()
    bad.add(9, 1, points=[[1, 1]])
    with pytest.raises(PromptError, match="frame 9 is outside the stack"):
        track(stack, bad, model=tiny_checkpoint, out=out, device="cpu")
    assert not out.exists()
    with pytest.raises(ModelNameError, match="unknown SAM 2 model 'sam7_giant'"):
        track(stack, _prompts(), model="sam7_giant", out=out)
    assert not out.exists()
    with pytest.raises(InputError, match="no prompts"):
        track(stack, None, model=tiny_checkpoint)
    with pytest.raises(InputError, match="exactly \\(Y, X\\)"):
        track(np.zeros((2, 3, 4, 32, 32)), _prompts(), model=tiny_checkpoint)
    out.mkdir()
    with pytest.raises(StoreExistsError, match="overwrite=True"):
        track(stack, _prompts(), model=tiny_checkpoint, out=out)


def test_resume_with_an_embedding_cache_encodes_only_the_unfinished_frames(tmp_path, stack, tiny_checkpoint):
    prompts = _prompts(frame=0)
    cache = tmp_path / "features"
    out = tmp_path / "cut.ome.zarr"
    with pytest.raises(Stop):
        track(
            stack,
            prompts,
            model=tiny_checkpoint,
            out=out,
            device="cpu",
            direction="forward",
            progress=_stop_after(3),
            embedding_cache=cache,
        )
    resumed = track(stack, None, model=tiny_checkpoint, out=out, device="cpu", resume=True, embedding_cache=cache)
    assert resumed.encoder_runs == len(stack) - 3  # the replayed frames 0-2 came from disk
    reference = track(stack, prompts, model=tiny_checkpoint, device="cpu", direction="forward", tables=False)
    np.testing.assert_array_equal(resumed.labels[:], reference.labels)
