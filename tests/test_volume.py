"""The axial edge rule on a plain z-stack (ZYX tracked along z; `napari_sam2.volume`): the same caps as 3D+t, recorded
for resume and replay, never on a time axis, and stores made before it replayed and resumed as they were made."""

import numpy as np
import pytest
from run_helpers import stop_at_call
from scipy import ndimage

from napari_sam2 import PromptSet, cli, load_model, track
from napari_sam2.errors import InputError
from napari_sam2.io.ome_zarr import LabelStore
from napari_sam2.io.results import open_result
from napari_sam2.replay import replay
from napari_sam2.sample_data import synthetic_nuclei_4d
from napari_sam2.session import TrackingSession
from napari_sam2.volume import Z_EDGE
from napari_sam2.volume_time import Z_EDGE_BACKGROUND


@pytest.fixture(scope="module")
def nano():
    return load_model("nano-fluo", device="cpu")


@pytest.fixture(scope="module")
def zstack():
    """(image [12, 64, 64], labels, z of the widest slice, the nuclei cut by it): a one-time-point 4-D movie."""
    s = synthetic_nuclei_4d(n_frames=1, n_slices=12, shape=(64, 64), n_nuclei=3, seed=5)
    image, labels = s.image[0], s.labels[0]
    z = int(np.argmax((labels > 0).sum(axis=(1, 2))))
    return image, labels, z


def _clicks(labels, z, with_t=False):
    """One click per nucleus on slice z (its deepest pixel there): every object prompted on the same slice."""
    prompts = PromptSet()
    for obj in np.unique(labels[z])[1:]:
        depth = ndimage.distance_transform_edt(labels[z] == obj)
        y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
        prompts.add(z, int(obj), points=[[float(y), float(x)]], **({"t": 0} if with_t else {}))
    return prompts


def _window(image):
    return float(image.min()), float(image.max())


def test_a_z_stack_tracked_as_zyx_and_as_one_time_point_tzyx_gives_the_same_labels(nano, zstack):
    """Same stack, same clicks (all on one slice), same window and contrast: ZYX along z and [1, Z, Y, X] through the
    3D+t engine give identical labels, the axial edge rule and the click rule's through_z included; along t (a
    time-lapse) the rule is off. (Left to the model, their contrast differs: nano-fluo's z-stream default, local, is a
    plain z-stack's; 3D+t keeps global.)"""
    image, labels, z = zstack
    as_zyx = track(image, _clicks(labels, z), model=nano, axis="z", window=_window(image), tables=False,
                   contrast="global")  # fmt: skip
    as_tzyx = track(image[None], _clicks(labels, z, True), model=nano, window=_window(image), tables=False)
    assert as_tzyx.provenance["settings"]["contrast"] == "global"
    zyx, tzyx = np.asarray(as_zyx.labels), np.asarray(as_tzyx.labels)[0]
    assert len(np.unique(zyx)) == 4  # three nuclei
    np.testing.assert_array_equal(zyx, tzyx)
    assert as_zyx.provenance["settings"]["z_edge"] == as_tzyx.provenance["settings"]["z_edge"] == Z_EDGE
    assert [e["op"] for e in as_zyx.provenance["edit_log"]][-1] == "edge"
    along_t = track(image, _clicks(labels, z), model=nano, axis="t", window=_window(image), tables=False)
    assert along_t.provenance["settings"]["z_edge"] is None
    assert "edge" not in [e["op"] for e in along_t.provenance["edit_log"]]
    # the same z stream without the rule (its masks mended as the click rule's through_z mends a z stream's)
    unedged = track(image, _clicks(labels, z), model=nano, axis="z", window=_window(image), tables=False,
                    z_edge="off", contrast="global")  # fmt: skip
    plain = np.asarray(unedged.labels)
    trimmed = (plain > 0) & (zyx == 0)
    assert trimmed.any() and not ((zyx > 0) & (plain == 0)).any()  # the rule only takes voxels away (here 20)
    assert set(np.nonzero(trimmed.any(axis=(1, 2)))[0]) <= set(range(z)) | set(range(z + 1, 12))
    # confidence rows count the written (trimmed) voxels
    rows = {(r["frame"], r["obj_id"]): r["area"] for r in as_zyx.confidence}
    assert all(area == int((zyx[f] == o).sum()) for (f, o), area in rows.items())


def test_the_session_rule_keeps_prompted_slices_and_refuses_bad_fractions(nano, zstack):
    image, labels, z = zstack
    with pytest.raises(InputError, match="z_edge is a fraction"):
        TrackingSession(nano, image, z_edge=1.5)
    with TrackingSession(nano, image) as off, pytest.raises(InputError, match="needs a session made with z_edge"):
        off.axial_edge()
    with TrackingSession(nano, image, z_edge=Z_EDGE) as session:
        _clicks(labels, z).apply(session)
        # a mask prompt on a cap slice of object 1: the rule leaves it as drawn
        cap = int(np.nonzero((labels == 1).any(axis=(1, 2)))[0].max())
        drawn = ndimage.binary_dilation(labels[cap] == 1, iterations=3)
        session.add_prompt(cap, 1, mask=drawn)
        plain = {r.frame: r for r in session.propagate("both")}
        edged = {r.frame: r for r in session.axial_edge()}
        assert sorted(edged) == list(range(len(image)))
        kept, drawn_now = (r.masks[r.obj_ids.index(1)] for r in (edged[cap], plain[cap]))
        np.testing.assert_array_equal(kept, drawn_now)
        assert drawn_now.sum() > (labels[cap] == 1).sum()  # drawn wider than the nucleus there
        for f, r in edged.items():
            assert (r.masks <= (r.logits > 0)).all() and ((r.labels > 0) <= r.masks.any(axis=0)).all()
            assert ((r.labels > 0) <= (session.result(f).labels > 0)).all()
        assert session.edit_log[-1] == {"op": "edge", "z_edge": Z_EDGE, "background": Z_EDGE_BACKGROUND}
        # the session shows what the rule left (until the model recomputes an object there): a prompt on one object
        # does not bring back another's halo on that slice
        for f, r in edged.items():
            np.testing.assert_array_equal(session.result(f).labels, r.labels)
        other = next(f for f, r in edged.items() if f != cap and (r.labels != plain[f].labels).any())
        changed = [
            o for o in edged[other].obj_ids if (edged[other].labels == o).sum() < (plain[other].labels == o).sum()
        ]
        clicked = next(o for o in session.obj_ids if o not in changed[:1])
        again = session.add_prompt(other, clicked, points=[[0.0, 0.0]], labels=[0])  # a background click
        held = [o for o in again.obj_ids if o != clicked]
        np.testing.assert_array_equal(np.isin(again.labels, held), np.isin(edged[other].labels, held))


def test_a_z_stack_store_resumes_and_replays_with_the_rule_it_was_made_with(tmp_path, nano, zstack, capsys):
    image, labels, z = zstack
    np.save(tmp_path / "stack.npy", image)
    reference = track(image, _clicks(labels, z), model=nano, axis="z", tables=False)
    n = len(image)
    # killed in the backward pass, and killed while the rule's writes were being made
    for stop_at in (n - z + 2, n + z + 3):
        out = tmp_path / f"cut{stop_at}.ome.zarr"
        with pytest.raises(KeyboardInterrupt):
            track(tmp_path / "stack.npy", _clicks(labels, z), model=nano, axis="z", out=out,
                  progress=stop_at_call(stop_at), tables=False)  # fmt: skip
        resumed = track(tmp_path / "stack.npy", None, model=nano, axis="z", out=out, resume=True, tables=False)
        np.testing.assert_array_equal(np.asarray(resumed.labels[:]), np.asarray(reference.labels))
        assert resumed.provenance["settings"]["z_edge"] == Z_EDGE
        assert resumed.provenance["settings"]["z_edge_background"] == Z_EDGE_BACKGROUND
    capsys.readouterr()
    assert cli.main(["replay", str(out), "--device", "cpu"]) == 0
    assert f"identical labels on all {n} frames" in capsys.readouterr().out
    assert cli.main(["info", str(out)]) == 0
    assert "z_edge=0.5 (background: ring percentile 10)" in capsys.readouterr().out
    store = LabelStore.open(out, mode="r+")  # as a store made before session 12 records it: the median
    store.update_provenance({"settings": {k: v for k, v in store.provenance["settings"].items()
                                          if k != "z_edge_background"}})  # fmt: skip
    assert cli.main(["info", str(out)]) == 0
    assert "z_edge=0.5 (background: ring percentile 10)" in capsys.readouterr().out  # its log's edge entries say 10
    log = [{k: v for k, v in e.items() if k != "background"} for e in store.provenance["edit_log"]]
    store.update_provenance({"edit_log": log})
    assert cli.main(["info", str(out)]) == 0
    assert "z_edge=0.5 (background: ring percentile 50)" in capsys.readouterr().out


def test_the_rule_takes_a_low_percentile_of_the_ring_as_background_beside_touching_neighbours():
    """A dim nucleus wrapped by a brighter neighbour on some slices: most of the ring around its mask lies on the
    neighbour there. The ring's median (the rule before session 12) took the neighbour for background and cut the
    nucleus's own slices; its 10th percentile (`Z_EDGE_BACKGROUND`) reads the true background and keeps them."""
    from napari_sam2.volume_time import Z_EDGE_BACKGROUND_BEFORE, axial_trim

    yy, xx = np.mgrid[:48, :48]
    r = np.hypot(yy - 24, xx - 24)
    angle = np.arctan2(yy - 24, xx - 24)
    image = np.full((8, 48, 48), 10.0, np.float32)
    nucleus = r <= 6
    image[1:7][:, nucleus] = 100.0  # the dim nucleus, slices 1-6
    wrap = (r > 6) & (r <= 14) & (angle > -1.2)  # a neighbour around 70 % of it, slices 3-6
    image[3:7][:, wrap] = 1000.0
    mask = np.zeros(image.shape, bool)
    mask[1:7] = nucleus
    before = axial_trim(mask, lambda z: image[z], Z_EDGE, background=Z_EDGE_BACKGROUND_BEFORE)
    now = axial_trim(mask, lambda z: image[z], Z_EDGE)
    core = r <= 4  # away from the edge the neighbour's blur reaches
    assert before[3:7][:, core].mean() < 0.5  # the median: the nucleus cut where the neighbour wraps it
    assert now[1:7][:, core].all() and (now <= mask).all()  # the 10th percentile: all of it kept
    assert Z_EDGE_BACKGROUND == 10.0 and Z_EDGE_BACKGROUND_BEFORE == 50.0


def test_an_edit_log_from_before_the_background_percentile_replays_with_the_median(nano, zstack):
    """The "edge" entries of a z-stack's edit log name the background percentile they applied; an entry without
    one (written before session 12) is replayed with the median, as it was made."""
    from napari_sam2.replay import replay_log
    from napari_sam2.volume_time import Z_EDGE_BACKGROUND_BEFORE

    image, labels, z = zstack
    with TrackingSession(nano, image, z_edge=Z_EDGE, z_edge_background=Z_EDGE_BACKGROUND_BEFORE) as made:
        assert made.z_edge_background == Z_EDGE_BACKGROUND_BEFORE
        _clicks(labels, z).apply(made)
        list(made.propagate("both"))
        edged = {r.frame: r.labels for r in made.axial_edge()}
        log = made.edit_log
    assert log[-1] == {"op": "edge", "z_edge": Z_EDGE, "background": Z_EDGE_BACKGROUND_BEFORE}
    old = [{k: v for k, v in e.items() if k != "background"} for e in log]  # as written before session 12
    with TrackingSession(nano, image, z_edge=Z_EDGE) as again:  # a session of today (the 10th percentile)
        assert again.z_edge_background == Z_EDGE_BACKGROUND
        replayed = replay_log(again, old)
    for f, expected in edged.items():
        np.testing.assert_array_equal(replayed[f], expected, err_msg=f"slice {f}")


def test_a_z_stack_store_made_before_the_rule_replays_and_resumes_without_it(tmp_path, nano, zstack):
    """A store whose settings name no z_edge (and whose log applies no rule) was made before the rule: its replay
    and its resume run without it, giving the labels it holds."""
    image, labels, z = zstack
    np.save(tmp_path / "stack.npy", image)
    out = tmp_path / "old.ome.zarr"
    # made without the rule (along an unnamed axis), then recorded as an older z-stack store would be
    made = track(tmp_path / "stack.npy", _clicks(labels, z), model=nano, axis=0, out=out, tables=False)
    store = LabelStore.open(out, mode="r+")
    settings = {k: v for k, v in store.provenance["settings"].items() if k != "z_edge"}
    store.update_provenance({"settings": {**settings, "axis_name": "z"}})
    assert "z_edge" not in open_result(out).record.settings
    assert replay(out, device="cpu").identical
    store.update_provenance({"status": "interrupted"})
    resumed = track(tmp_path / "stack.npy", None, model=nano, axis="z", out=out, resume=True, tables=False)
    assert resumed.provenance["settings"].get("z_edge") is None
    assert "edge" not in [e["op"] for e in resumed.provenance["edit_log"]]
    np.testing.assert_array_equal(np.asarray(resumed.labels[:]), np.asarray(made.labels[:]))


def test_z_edge_is_an_option_of_track_and_the_cli_and_a_resume_refuses_a_changed_one(tmp_path, nano, zstack, capsys):
    """track(z_edge=...) / --z-edge: "off" gives the z stream's masks without the rule (as 3D+t gives them with it
    off; a z stream's masks are read under the model's z-stream contrast and mended by the click rule's through_z,
    so they are not a time-lapse's), a fraction is recorded and used, a fraction on a time stream or out of (0, 1) is refused before anything
    is written, and a resumed run refuses a z_edge other than the one it was made with."""
    image, labels, z = zstack
    window = _window(image)
    off = track(
        image, _clicks(labels, z), model=nano, axis="z", window=window, tables=False, z_edge="off", contrast="global"
    )  # (3D+t's below: the model's plain default)
    assert off.provenance["settings"]["z_edge"] is None and off.provenance["settings"]["z_stream"]
    assert "edge" not in [e["op"] for e in off.provenance["edit_log"]]
    off_4d = track(image[None], _clicks(labels, z, True), model=nano, window=window, tables=False, z_edge=None)
    assert off_4d.provenance["settings"]["z_edge"] is None  # 3D+t takes the option too
    np.testing.assert_array_equal(np.asarray(off_4d.labels)[0], np.asarray(off.labels))
    for bad, words in ((0.5, "followed along time"), ("1.5", "between 0 and 1"), ("half", "between 0 and 1")):
        with pytest.raises(InputError, match=words):
            track(image, _clicks(labels, z), model=nano, axis="t" if bad == 0.5 else "z", z_edge=bad, tables=False)

    np.save(tmp_path / "stack.npy", image)
    out = tmp_path / "edge.ome.zarr"
    argv = [
        "track",
        str(tmp_path / "stack.npy"),
        "--axis",
        "z",
        "--out",
        str(out),
        "--window",
        f"{window[0]},{window[1]}",
    ]
    _clicks(labels, z).save(tmp_path / "p.json")
    assert cli.main([*argv, "--prompts", str(tmp_path / "p.json"), "--z-edge", "0.3", "-q"]) == 0
    made = open_result(out)
    assert made.record.settings["z_edge"] == 0.3
    assert cli.main(["info", str(out)]) == 0
    assert "z_edge=0.3" in capsys.readouterr().out
    strict = track(image, _clicks(labels, z), model=nano, axis="z", window=window, tables=False)  # 0.5
    assert ((np.asarray(made.labels[:]) > 0).sum()) > (np.asarray(strict.labels) > 0).sum()  # 0.3 keeps more
    LabelStore.open(out, mode="r+").update_provenance({"status": "interrupted"})
    assert cli.main([*argv, "--resume", "--z-edge", "0.5", "-q"]) == 1
    assert "was made with z_edge=0.3" in capsys.readouterr().err
    assert cli.main([*argv, "--resume", "-q"]) == 0  # auto: the recorded 0.3
    assert open_result(out).record.settings["z_edge"] == 0.3
