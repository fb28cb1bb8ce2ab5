"""track() on 3D+t stacks [T, Z, Y, X] with the real tiny model: stream axes, the (t, z, y, x) store written per
time point, tables with z, CTC 3-D, and a killed run resumed to the labels of an uninterrupted one."""

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from run_helpers import stop_at_call

from napari_sam2 import PromptSet, track
from napari_sam2._volume_job import stream_axes
from napari_sam2.io.identity import InputMismatchError
from napari_sam2.io.ome_zarr import LabelStore
from napari_sam2.io.readers import OpenedStack
from napari_sam2.io.results import open_result
from napari_sam2.preprocess import InputError
from napari_sam2.prompts import PromptError

T, Z, H, W = 4, 8, 64, 64


def _stack(seed=0):
    """[4, 8, 64, 64] uint8: two bright ellipsoids moving in opposite directions through x (and object 2 in z)."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[:Z, :H, :W]
    image = rng.normal(20, 4, (T, Z, H, W))
    for t in range(T):
        for cz, cy, cx in ((3.5, 20, 16 + 3 * t), (3 + 0.5 * t, 44, 46 - 3 * t)):
            image[t][(zz - cz) ** 2 / 6 + (yy - cy) ** 2 / 64 + (xx - cx) ** 2 / 64 <= 1] += 150
    return np.clip(image, 0, 255).astype(np.uint8)


def _prompts():
    """Object 1 clicked at (t=0, z=3); object 2 first at (t=2, z=4): "both" runs forward from t=0, then backward
    from t=2, so time points 0..2 are yielded twice (object 2 added the second time)."""
    prompts = PromptSet()
    prompts.add(3, 1, points=[[20, 16]], t=0)
    prompts.add(4, 2, points=[[44, 40]], t=2)
    return prompts


class Stop(Exception):
    pass


def _stop_at(n):
    """A progress callback that stops the run (Ctrl-C) at the n-th time point written."""

    def progress(done, total):
        if done >= n:
            raise KeyboardInterrupt

    return progress


def test_tzyx_track_writes_every_time_point_and_tables_with_z(tmp_path, tiny_checkpoint):
    stack = _stack()
    out = tmp_path / "embryo.ome.zarr"
    done = []
    result = track(
        stack,
        _prompts(),
        model=tiny_checkpoint,
        out=out,
        device="cpu",
        ctc=tmp_path / "01_RES",
        scale=(30, 2, 0.5, 0.5),
        units=("second", "micrometer", "micrometer", "micrometer"),
        progress=lambda d, n: done.append((d, n)),
    )
    assert result.axes == "tzyx" and result.labels.shape == (T, Z, H, W)
    store = LabelStore.open(out)
    assert store.axes == "tzyx" and store.done.all() and store.read_labels().chunks == (1, 1, H, W)
    assert store.scale == [30, 2, 0.5, 0.5] and store.units["t"] == "second"
    assert done[-1] == (T, T)  # progress counts time points
    labels = np.asarray(result.labels[:])
    assert set(np.unique(labels)) <= {0, 1, 2} and all(labels[t].any() for t in range(T))

    settings = result.provenance["settings"]
    assert settings["axis_name"] == "tz" and settings["stream_axes"] == {"t": 0, "z": 1}
    assert open_result(out).prompts == _prompts()  # prompts with their (t, z) in the provenance
    assert result.provenance["status"] == "complete"

    rows = [r for r in result.regions if r["label"] == 1]
    assert [r["frame"] for r in rows] == list(range(T))
    assert {"centroid_z", "volume", "volume_um3", "centroid_z_um", "t_s"} <= set(rows[0])
    assert rows[0]["volume"] == int((labels[0] == 1).sum())
    assert result.tracks.shape[1] == 5  # track id, t, z, y, x
    mask = tifffile.imread(tmp_path / "01_RES" / "mask002.tif")
    assert mask.shape == (Z, H, W) and mask.dtype == np.uint16
    assert (result.csv_path).read_text().splitlines()[0].count("centroid_z") == 2
    # per-object confidence per time point, as a 3-D run reports per frame: rows, confidence.csv, region scores
    conf = {(c["frame"], c["obj_id"]): c for c in result.confidence}
    assert set(conf) == {(t, o) for t in range(T) for o in (1, 2)}
    for (t, o), c in conf.items():
        assert c["area"] == int((labels[t] == o).sum()) and c["present"] == (c["score"] > 0)
        assert isinstance(c["iou"], float)
    assert (out.parent / "embryo_confidence.csv").read_text().splitlines()[0].startswith("frame,obj_id,score,iou")
    assert rows[0]["score"] == conf[(0, 1)]["score"]


def test_tzyx_killed_run_resumes_to_the_uninterrupted_labels(tmp_path, tiny_checkpoint):
    stack = _stack()
    reference = track(stack, _prompts(), model=tiny_checkpoint, device="cpu", tables=False)  # in memory
    for stop_at in (5,):  # the 5th write: in the backward pass (time points 0..2 are written a second time)
        out = tmp_path / f"cut{stop_at}.ome.zarr"
        calls = []

        def progress(done, total, calls=calls, stop_at=stop_at):
            calls.append(done)
            if len(calls) >= stop_at:
                raise KeyboardInterrupt  # Ctrl-C

        with pytest.raises(KeyboardInterrupt):
            track(stack, _prompts(), model=tiny_checkpoint, out=out, device="cpu", progress=progress, tables=False)
        store = LabelStore.open(out)
        assert store.provenance["status"] == "interrupted" and store.finished_frames() == list(range(T))
        assert not np.array_equal(store.read_labels()[:], reference.labels)  # t = 1 and 0 miss object 2 yet
        resumed = track(stack, None, model=tiny_checkpoint, out=out, device="cpu", resume=True, tables=False)
        np.testing.assert_array_equal(np.asarray(resumed.labels[:]), reference.labels)
        assert open_result(out).complete and resumed.provenance["status"] == "complete"
        assert resumed.provenance["settings"]["z_edge"] == 0.5  # the axial edge rule, recorded for resume / replay
        assert resumed.provenance["settings"]["z_edge_background"] == 10.0  # and its background percentile
    # every (t, z) slice read has its digest in the store; resuming with another image of the same shape stops at
    # the first slice that differs, naming it
    digests = zarr.open_group(out / "labels" / LabelStore.open(out).name, mode="r")["input_digest"][...]
    assert digests.shape == (T * Z, 16) and digests.any(axis=1).all()
    out2 = tmp_path / "cut_again.ome.zarr"
    with pytest.raises(KeyboardInterrupt):
        track(stack, _prompts(), model=tiny_checkpoint, out=out2, device="cpu", progress=_stop_at(2), tables=False)
    other_image = stack.copy()
    other_image[0, 5] = 255 - other_image[0, 5]
    with pytest.raises(InputMismatchError, match=r"slice \(t=0, z=5\) of .* differs"):
        track(other_image, None, model=tiny_checkpoint, out=out2, device="cpu", resume=True, tables=False)
    with pytest.raises(InputError, match="differ from those recorded"):
        other = PromptSet()
        other.add(3, 1, points=[[20, 17]], t=0)
        track(stack, other, model=tiny_checkpoint, out=out, device="cpu", resume=True)


def test_tzyx_seed_volume_and_prompt_errors(tmp_path, tiny_checkpoint):
    stack = _stack()
    seeds = np.zeros((Z, H, W), np.uint16)
    seeds[2:6, 14:27, 10:23] = 7  # object 7 on four slices at t = 1
    result = track(stack, seeds, model=tiny_checkpoint, device="cpu", seed_frame=1, tables=False, direction="forward")
    assert result.prompts.slices == [(1, z) for z in range(2, 6)] and result.prompts.obj_ids == [7]
    assert (np.asarray(result.labels[1]) == 7).any()

    old = PromptSet()
    old.add(3, 1, points=[[20, 16]])
    with pytest.raises(PromptError, match="needs a time point t as well as its z slice"):
        track(stack, old, model=tiny_checkpoint, out=tmp_path / "x.ome.zarr")
    late = PromptSet()
    late.add(3, 1, points=[[20, 16]], t=9)
    with pytest.raises(PromptError, match="t=9 is outside the stack"):
        track(stack, late, model=tiny_checkpoint, out=tmp_path / "x.ome.zarr")
    with pytest.raises(InputError, match=r"auto \(segment everything on the first frame\) is for 2-D frames"):
        track(stack, None, model=tiny_checkpoint, auto=True)
    from napari_sam2.discovery import DiscoveryOptions

    with pytest.raises(InputError, match="discover's detector is for 2-D frames"):
        track(stack, _prompts(), model=tiny_checkpoint, discover=DiscoveryOptions(detector=lambda s, f: []))
    assert not (tmp_path / "x.ome.zarr").exists()


def _opened(shape, axes, known=True):
    return OpenedStack(np.zeros(shape, np.uint8), axes, Path("."), "array", known)


def test_stream_axes_defaults_and_refusals():
    # named axes: t and z wherever they are
    assert stream_axes(None, _opened((8, 4, 16, 16), "ztyx")) == (1, 0)
    assert stream_axes("tz", _opened((4, 8, 2, 16, 16), "tzcyx")) == (0, 1)
    assert stream_axes("tz", _opened((4, 8, 2, 16, 16), "tzcyx")).channel == 2
    # nothing names them: napari's [T, Z, Y, X]; a short last axis is channels
    assert stream_axes(None, _opened((4, 8, 64, 64), "tzyx", known=False)) == (0, 1)
    assert stream_axes(None, _opened((4, 8, 64, 64, 3), "tzyxc", known=False)).channel == 4
    assert stream_axes((1, 0), _opened((4, 8, 64, 64), "qqyx")) == (1, 0)
    assert stream_axes("1,0", _opened((4, 8, 64, 64), "qqyx")) == (1, 0)
    # 3-D stacks keep one stream axis
    assert stream_axes(None, _opened((6, 64, 64), "tyx")) is None
    assert stream_axes("z", _opened((6, 64, 64, 3), "tyxc", known=False)) is None
    with pytest.raises(InputError, match="cannot tell which of 'q' \\(axis 0\\) and 'q' \\(axis 1\\) is time"):
        stream_axes(None, _opened((4, 8, 64, 64), "qqyx"))
    with pytest.raises(InputError, match="is 3D\\+t: it has two stream axes; track them together with axis='tz'"):
        stream_axes("t", _opened((4, 8, 64, 64), "tzyx"))
    with pytest.raises(InputError, match="asks for two stream axes"):
        stream_axes("tz", _opened((6, 64, 64), "tyx"))
    with pytest.raises(InputError, match="other than its last two"):
        stream_axes((0, 3), _opened((4, 8, 64, 64), "tzyx"))


def test_cli_tracks_a_tzyx_tiff_and_refuses_one_stream_axis(tmp_path, tiny_checkpoint, capsys):
    from napari_sam2 import cli

    stack = _stack()[:2, :4]  # 2 time points x 4 slices
    image = tmp_path / "embryo.tif"
    tifffile.imwrite(image, stack, metadata={"axes": "TZYX"})
    prompts = PromptSet()
    prompts.add(3, 1, points=[[20, 16]], t=0)
    prompts.save(tmp_path / "clicks.csv")
    out = tmp_path / "embryo.ome.zarr"
    args = ["track", str(image), "--prompts", str(tmp_path / "clicks.csv"), "--out", str(out)]
    code = cli.main([*args, "--model", str(tiny_checkpoint), "--device", "cpu", "--direction", "forward"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "tracked 1 object(s) over 2 time points x 4 z slices" in captured.out
    assert open_result(out).axes == "tzyx" and open_result(out).complete
    assert cli.main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "prompts: 1 on time points 0 (t, z slices (0, 3))" in info and "z_edge=0.5" in info
    # the recorded edit log of the 3D+t engine reruns to the same labels
    assert cli.main(["replay", str(out), "--image", str(image), "--device", "cpu"]) == 0
    assert "identical labels on all 2 frames" in capsys.readouterr().out

    code = cli.main([*args[:-1], str(tmp_path / "other.ome.zarr"), "--axis", "z", "--model", str(tiny_checkpoint)])
    err = capsys.readouterr().err
    assert code == 1 and "is 3D+t: it has two stream axes; track them together with axis='tz'" in err
    assert "Traceback" not in err and not (tmp_path / "other.ome.zarr").exists()


def test_channel_axis_tczyx_tiff_cli_and_tzyxc_array_track_one_channel(tmp_path, tiny_checkpoint, capsys):
    """A channel axis end to end: a TCZYX OME-TIFF through the CLI (--channel 1) and a TZYXC array through track()
    (channel=1) give the labels of that channel's TZYX stack alone; no channel named on a 2-channel stack is
    refused with the fix."""
    from napari_sam2 import cli

    nuclei = _stack()[:2, :4]  # [T=2, Z=4, Y, X]: the channel tracked
    other = np.ascontiguousarray(nuclei[:, :, ::-1])  # a different second channel: picking the wrong one shows
    prompts = PromptSet()
    prompts.add(3, 1, points=[[20, 16]], t=0)
    options = {"model": tiny_checkpoint, "device": "cpu", "direction": "forward", "tables": False}
    alone = track(nuclei, prompts, **options).labels

    tczyx = np.stack([other, nuclei], axis=1)  # [T, C, Z, Y, X]
    image = tmp_path / "two_channels.ome.tif"
    tifffile.imwrite(image, tczyx, metadata={"axes": "TCZYX"})
    prompts.save(tmp_path / "clicks.csv")
    out = tmp_path / "two.ome.zarr"
    args = ["track", str(image), "--prompts", str(tmp_path / "clicks.csv"), "--model", str(tiny_checkpoint)]
    args += ["--device", "cpu", "--direction", "forward"]
    code = cli.main([*args, "--out", str(out), "--channel", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    saved = open_result(out)
    assert saved.axes == "tzyx" and saved.labels.shape == nuclei.shape
    assert saved.record.settings["channel"] == 1 and saved.record.settings["stream_axes"] == {"t": 0, "z": 2}
    np.testing.assert_array_equal(np.asarray(saved.labels), alone)
    code = cli.main([*args, "--out", str(tmp_path / "refused.ome.zarr")])
    err = capsys.readouterr().err
    assert code == 1 and "pick one with channel=N (CLI: --channel N)" in err and "Traceback" not in err

    tzyxc = np.stack([other, nuclei], axis=-1)  # [T, Z, Y, X, C]: a short last axis is channels
    result = track(tzyxc, prompts, channel=1, **options)
    np.testing.assert_array_equal(np.asarray(result.labels), alone)


def test_tzyx_discovery_division_lineage_in_every_output_resume_and_replay(tmp_path, capsys):
    """discover on a 3D+t stack (built-in nano-fluo; one nucleus dividing at t = 3): the pieces show at t = 4 and
    the mother's mask at t = 3 has a neck, so the division is dated t = 3: the mother ends on t = 2, two daughters
    start on t = 3 with her as parent in the result, the provenance, the regions CSV and res_track.txt (read by
    traccuracy's CTC loader); a run killed between the re-writes of t = 3 and t = 4 resumes to the labels of the
    uninterrupted run, and the recorded edit log replays to them."""
    import traccuracy.loaders

    from napari_sam2 import cli
    from napari_sam2.sample_data import synthetic_nuclei_4d

    # seed 0: the neck shows at t = 3 (with seed 1 the pieces show at t = 4 and no neck at t = 3 since the axial edge
    # rule: the division is then dated t = 4, one late; this test is about the outputs of a dated-back division)
    movie = synthetic_nuclei_4d(n_frames=6, n_slices=8, shape=(64, 64), n_nuclei=1, seed=0)
    image = tmp_path / "dividing.tif"
    tifffile.imwrite(image, movie.image, metadata={"axes": "TZYX"})
    mask = movie.labels[0] == 1
    z = int(np.argmax(mask.sum(axis=(1, 2))))
    ys, xs = np.nonzero(mask[z])
    prompts = PromptSet()
    prompts.add(z, 1, points=[[float(ys.mean()), float(xs.mean())]], t=0)
    options = {"model": "nano-fluo", "device": "cpu", "discover": 1}
    out = tmp_path / "ref.ome.zarr"
    ref = track(image, prompts, out=out, ctc=tmp_path / "01_RES", **options)
    assert [(e["frame"], e["kind"], e["mother"], e["daughters"]) for e in ref.events] == [(3, "division", 1, [2, 3])]
    assert "neck" in ref.events[0]["sign"]
    assert ref.parents == {2: 1, 3: 1} and ref.provenance["parents"] == {"2": 1, "3": 1}
    labels = np.asarray(ref.labels)
    assert 1 in labels[2] and 1 not in labels[3:] and {2, 3} <= set(np.unique(labels[3])) and 2 not in labels[:3]
    assert ref.provenance["settings"]["discover"]["every"] == 1
    rows = [r for r in ref.regions if r["label"] in (2, 3)]
    assert rows and all(r["parent_label"] == 1 for r in rows) and min(r["frame"] for r in rows) == 3
    header = ref.csv_path.read_text().splitlines()[0].split(",")
    assert "parent_label" in header and "parent_track_id" in header
    tracks = {int(r[0]): [int(v) for v in r[1:]] for r in (line.split() for line in (tmp_path / "01_RES" /
              "res_track.txt").read_text().splitlines())}  # fmt: skip
    mother = [label for label, (b, e, p) in tracks.items() if e == 2 and p == 0]
    assert len(mother) == 1 and sorted(p for b, e, p in tracks.values() if b == 3) == [mother[0]] * 2
    graph = traccuracy.loaders.load_ctc_data(str(tmp_path / "01_RES"), str(tmp_path / "01_RES" / "res_track.txt"))
    assert graph.graph.number_of_edges() > 0
    # the writes: t = 0..4, t = 3 and 4 again with the daughters, t = 5; killed after the 6th (t = 3 re-written,
    # t = 4 not yet)
    for stop_at in (6,):
        cut = tmp_path / f"cut{stop_at}.ome.zarr"
        with pytest.raises(KeyboardInterrupt):
            track(image, prompts, out=cut, progress=stop_at_call(stop_at), tables=False, **options)
        resumed = track(image, None, out=cut, resume=True, tables=False, model="nano-fluo", device="cpu")
        np.testing.assert_array_equal(np.asarray(resumed.labels), labels)
        assert resumed.parents == {2: 1, 3: 1}
    assert cli.main(["replay", str(out), "--image", str(image), "--device", "cpu"]) == 0
    assert "identical labels on all 6 frames" in capsys.readouterr().out


def test_tzyx_store_made_before_the_axial_edge_rule_resumes_without_it(tmp_path, tiny_checkpoint):
    """A store whose settings name no z_edge predates the axial edge rule: its resume runs without the rule (as it
    began), a new run and a store that records the rule run with it."""
    import inspect

    from napari_sam2.api import _job

    stack, out = _stack(), tmp_path / "old.ome.zarr"
    with pytest.raises(KeyboardInterrupt):
        track(stack, _prompts(), model=tiny_checkpoint, out=out, device="cpu", progress=_stop_at(2), tables=False)

    def resumed_session_z_edge():
        ask = inspect.signature(track).bind(stack, None, model=tiny_checkpoint, out=out, device="cpu", resume=True)
        ask.apply_defaults()
        job = _job(dict(ask.arguments))
        job.open()
        job.plan()
        job.start()
        try:
            return job.session.z_edge
        finally:
            job.session.close()

    assert resumed_session_z_edge() == 0.5
    store = LabelStore.open(out, mode="r+")
    settings = {k: v for k, v in store.provenance["settings"].items() if k != "z_edge"}
    store.update_provenance({"settings": settings})
    assert resumed_session_z_edge() is None
