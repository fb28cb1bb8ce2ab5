"""The one provenance record: round trips, the older forms still read, and every face reads what the others wrote."""

import numpy as np
import pytest

from napari_sam2 import PromptSet, cli, track
from napari_sam2.io.ome_zarr import LabelStore
from napari_sam2.io.provenance import PROVENANCE_VERSION, ModelRecord, Provenance
from napari_sam2.io.results import open_result, save_result


def _prompts():
    prompts = PromptSet()
    prompts.add(1, 1, points=[[30, 33]])
    prompts.add(1, 2, box=[40, 72, 62, 93])
    return prompts


def test_round_trip_keeps_every_field_and_unknown_keys():
    record = Provenance(
        model=ModelRecord(source="nano-fluo", config="nano", checkpoint="/x/nano.pt", checkpoint_sha256="cd" * 32),
        settings={"direction": "both", "preset": "default", "window": [0.0, 1.0]},
        prompts=_prompts(),
        parents={5: 2, 6: 2},
        input={"path": "movie.tif", "shape": [6, 64, 96]},
        tool="track",
        status="complete",
        extra={"writer_lock": {"host": "a"}},
    )
    data = record.to_dict()
    assert data["provenance_version"] == PROVENANCE_VERSION and data["parents"] == {"5": 2, "6": 2}
    assert data["model"]["checkpoint_sha256"] == "cd" * 32 and data["writer_lock"] == {"host": "a"}
    back = Provenance.from_dict(data)
    assert back == record
    assert back.to_dict() == data


def test_the_widgets_older_flat_record_is_read():
    old = {
        "tool": "napari-sam2 widget",
        "napari_sam2_version": "0.1",
        "napari_version": "0.5",
        "model": "/ckpt/tiny.pt",
        "model_config": "sam2.1_hiera_tiny",
        "checkpoint": "/ckpt/tiny.pt",
        "device": "cpu",
        "preset": "default",
        "image_layer": "blobs",
        "image_source": None,
        "stream_axis": 0,
        "channel_axis": None,
        "channel": None,
        "session_key": [],
        "prompts": _prompts().to_dict(),
        "status": "complete",
    }
    record = Provenance.from_dict(old)
    assert record.tool == "widget" and record.model.source == "/ckpt/tiny.pt"
    assert record.model.config == "sam2.1_hiera_tiny" and record.model.checkpoint == "/ckpt/tiny.pt"
    assert record.settings["stream_axis"] == 0 and record.settings["preset"] == "default"
    assert record.input == {"layer": "blobs"} and record.package_version == "0.1"
    assert record.prompts == _prompts() and record.extra == {"napari_version": "0.5"}


def test_older_track_and_napari_writer_records_are_read():
    track_old = {
        "model": {"source": "m.pt", "config": "c", "checkpoint": "m.pt", "checkpoint_sha256": "ab" * 32},
        "prompts": _prompts().to_dict(),
        "settings": {"direction": "forward", "input": "movie.tif", "input_shape": [6, 64, 96]},
        "status": "interrupted",
        "writes": 3,
    }
    record = Provenance.from_dict(track_old)
    assert record.tool == "track" and record.input == {"path": "movie.tif", "shape": [6, 64, 96]}
    assert record.settings == {"direction": "forward"} and record.extra == {"writes": 3}
    writer_old = {"source": "napari writer", "layer": "tracked", "original": track_old, "prompts": _prompts().to_dict()}
    record = Provenance.from_dict(writer_old)
    assert record.tool == "napari writer" and record.model.checkpoint_sha256 == "ab" * 32
    assert record.prompts == _prompts() and record.input["layer"] == "tracked"


def test_a_store_with_the_older_widget_record_opens_in_info_and_resume(tmp_path, blob_stack, tiny_checkpoint, capsys):
    """Stores saved by older widgets ("model" as a string) must open in every face without a traceback."""
    stack = blob_stack(n_frames=6, shape=(64, 96))
    np.save(tmp_path / "movie.npy", stack)
    prompts = _prompts()
    made = track(stack, prompts, model=tiny_checkpoint, device="cpu", tables=False)
    old = {"tool": "napari-sam2 widget", "model": str(tiny_checkpoint), "checkpoint": str(tiny_checkpoint),
           "preset": "default", "stream_axis": 0, "session_key": [], "prompts": prompts.to_dict(),
           "status": "complete"}  # fmt: skip
    out = tmp_path / "old.ome.zarr"
    store = LabelStore.create(out, stack.shape, provenance=old)
    for t in range(len(stack)):
        store.write_frame(t, made.labels[t])

    assert cli.main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert str(tiny_checkpoint) in text and "prompts: 2 on frames 1" in text and "widget" in text
    code = cli.main(["track", str(tmp_path / "movie.npy"), "--out", str(out), "--resume", "--device", "cpu", "-q"])
    err = capsys.readouterr().err
    assert code == 0, err
    back = open_result(out)
    assert back.complete and back.prompts == prompts
    np.testing.assert_array_equal(back.labels[:], made.labels)


def test_save_result_takes_a_provenance_and_prompts_override(tmp_path):
    labels = np.zeros((2, 8, 8), np.uint32)
    labels[:, 2:4, 2:4] = 1
    record = Provenance(model=ModelRecord(source="x"), tool="widget", prompts=None)
    save_result(tmp_path / "a.ome.zarr", labels, prompts=_prompts(), provenance=record)
    back = open_result(tmp_path / "a.ome.zarr")
    assert back.prompts == _prompts() and back.record.model.source == "x" and back.record.status == "complete"
    assert back.record.package_version and back.record.created


def test_bad_recorded_prompts_are_one_clear_error(tmp_path):
    from napari_sam2.io.ome_zarr import LabelStoreError

    LabelStore.create(tmp_path / "b.ome.zarr", (1, 4, 4), provenance={"prompts": {"prompts": [{"frame": 0}]}})
    with pytest.raises(LabelStoreError, match="recorded prompts cannot be read"):
        open_result(tmp_path / "b.ome.zarr")
