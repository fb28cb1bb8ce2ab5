"""PromptSet: files (JSON with RLE masks, CSV), seed labels, napari layer data, validation and clear errors."""

import json

import numpy as np
import pytest

from napari_sam2.preprocess import InputError
from napari_sam2.prompts import PromptError, PromptSet, rle_decode, rle_encode


def _mixed():
    prompts = PromptSet()
    prompts.add(0, 1, points=[[10, 12], [20.5, 30]], labels=[1, 0])
    prompts.add(2, 2, box=[5, 6, 25, 40])
    prompts.add(2, 3, points=[[40, 50]], box=[30, 40, 60, 70])
    mask = np.zeros((64, 96), bool)
    mask[10:20, 30:45] = True
    prompts.add(4, 4, mask=mask)
    return prompts


@pytest.mark.parametrize("first", [False, True])
def test_rle_roundtrip(first):
    rng = np.random.default_rng(1)
    mask = rng.random((17, 23)) > 0.6
    mask[0, 0] = first
    runs = rle_encode(mask)
    assert (runs[0] == 0) == first  # a mask that starts with foreground begins with an empty background run
    np.testing.assert_array_equal(rle_decode(runs, mask.shape), mask)
    with pytest.raises(ValueError, match="add up to"):
        rle_decode(runs[:-1], mask.shape)


def test_json_roundtrip_keeps_everything(tmp_path):
    prompts = _mixed()
    path = prompts.save(tmp_path / "p.json")
    data = json.loads(path.read_text())
    assert data["format"] == "napari-sam2-prompts" and data["version"] == 1
    assert isinstance(data["prompts"][3]["mask"]["rle"], list)
    back = PromptSet.load(path)
    assert back == prompts
    assert back.obj_ids == [1, 2, 3, 4] and back.frames == [0, 2, 4]
    np.testing.assert_array_equal(back[3].mask, prompts[3].mask)
    np.testing.assert_array_equal(back[0].labels, [1, 0])
    assert PromptSet.from_dict(prompts.to_dict()) == prompts


def test_csv_roundtrip_points_and_boxes(tmp_path):
    prompts = PromptSet(list(_mixed())[:3])
    path = prompts.save(tmp_path / "p.csv")
    header = path.read_text().splitlines()[0]
    assert header == "obj_id,frame,kind,y,x,label,y0,x0,y1,x1"
    assert PromptSet.load(path) == prompts
    with pytest.raises(PromptError, match="mask prompts cannot be written to CSV"):
        _mixed().save(tmp_path / "m.csv")


def test_minimal_csv_and_grouping(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("obj_id,frame,y,x\n1,0,10,20\n2,0,30,40\n1,0,12,22\n\n")
    prompts = PromptSet.load(path)
    assert len(prompts) == 2  # rows of the same object and frame are one prompt
    np.testing.assert_array_equal(prompts[0].points, [[10, 20], [12, 22]])
    np.testing.assert_array_equal(prompts[0].labels, [1, 1])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("obj_id,frame,y,x,colour\n1,0,1,2,red\n", r"p\.csv:1: unknown column 'colour'"),
        ("obj_id,y,x\n1,1,2\n", r"p\.csv:1: column 'frame' is missing"),
        ("obj_id,frame,y,x\n1,0,1,2\n1,0,abc,2\n", r"p\.csv:3: column 'y' must be a number; got 'abc'"),
        ("obj_id,frame,y,x,label\n1,0,1,2,2\n", r"p\.csv:2: column 'label' must be 1"),
        ("obj_id,frame,y,x\n0,0,1,2\n", r"p\.csv:2: column 'obj_id' must be a positive integer"),
        ("obj_id,frame,y,x\n1,-1,1,2\n", r"p\.csv:2: column 'frame' must be a non-negative integer"),
        ("obj_id,frame,y,x\n1,0,1\n", r"p\.csv:2: 3 values but the header has 4"),
        ("obj_id,frame,kind,y0,x0,y1,x1\n1,0,circle,1,2,3,4\n", r"p\.csv:2: column 'kind' must be 'point' or 'box'"),
        ("obj_id,frame,y,x\n", r"holds no prompts"),
    ],
)
def test_csv_errors_name_file_line_and_field(tmp_path, text, expected):
    path = tmp_path / "p.csv"
    path.write_text(text)
    with pytest.raises(PromptError, match=expected):
        PromptSet.load(path)


def test_json_errors_name_line_or_field(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"prompts": [\n  {"obj_id": 1, "frame": 0, "points": [[1, 2]]},\n  {"obj_id": 2,, }\n]}')
    with pytest.raises(PromptError, match=r"p\.json:3: not valid JSON"):
        PromptSet.load(path)
    data = _mixed().to_dict()
    data["prompts"][1]["box"] = [1, 2, 3]
    path.write_text(json.dumps(data))
    with pytest.raises(PromptError, match=r"prompts\[1\]: box must be \[y0, x0, y1, x1\]"):
        PromptSet.load(path)
    data = _mixed().to_dict()
    data["prompts"][3]["mask"]["rle"] = [5, 5]
    path.write_text(json.dumps(data))
    with pytest.raises(PromptError, match=r"prompts\[3\]\.mask: not a valid run-length mask"):
        PromptSet.load(path)
    data["prompts"][3] = {"obj_id": 4, "frame": 1, "size": 3}
    path.write_text(json.dumps(data))
    with pytest.raises(PromptError, match=r"prompts\[3\]: unknown field\(s\) \['size'\]"):
        PromptSet.load(path)
    with pytest.raises(PromptError, match="does not exist"):
        PromptSet.load(tmp_path / "missing.json")
    (tmp_path / "p.txt").write_text("x")
    with pytest.raises(PromptError, match="are .json or .csv"):
        PromptSet.load(tmp_path / "p.txt")


def test_add_validates_at_once():
    prompts = PromptSet()
    with pytest.raises(PromptError, match="no points, box or mask"):
        prompts.add(0, 1)
    with pytest.raises(PromptError, match="either a mask or points/box"):
        prompts.add(0, 1, points=[[1, 2]], mask=np.ones((4, 4), bool))
    with pytest.raises(PromptError, match="2 points but 1 labels"):
        prompts.add(0, 1, points=[[1, 2], [3, 4]], labels=[1])
    with pytest.raises(PromptError, match="NaN"):
        prompts.add(0, 1, points=[[np.nan, 2]])
    with pytest.raises(PromptError, match="mask of object 1 on frame 0 is empty"):
        prompts.add(0, 1, mask=np.zeros((4, 4), bool))
    assert len(prompts) == 0
    assert issubclass(PromptError, InputError)


def test_validate_against_a_stack():
    prompts = PromptSet()
    prompts.add(5, 1, points=[[10, 200]])
    with pytest.raises(PromptError, match=r"frame 5 is outside the stack \(frames 0…3\)"):
        prompts.validate(4, (64, 96))
    with pytest.raises(PromptError, match=r"point \(y=10, x=200\) lies outside the 64×96 frame"):
        prompts.validate(8, (64, 96))
    masks = PromptSet()
    masks.add(0, 1, mask=np.ones((10, 10), bool))
    with pytest.raises(PromptError, match=r"mask shape \(10, 10\) does not match the frame size \(64, 96\)"):
        masks.validate(8, (64, 96))


def test_seed_labels_become_mask_prompts():
    seeds = np.zeros((32, 40), np.uint16)
    seeds[2:8, 3:9] = 7
    seeds[20:30, 10:20] = 3
    prompts = PromptSet.from_seed_labels(seeds, frame=2)
    assert prompts.obj_ids == [3, 7] and prompts.frames == [2]
    np.testing.assert_array_equal(prompts[1].mask, seeds == 7)
    with pytest.raises(PromptError, match="one 2-D frame"):
        PromptSet.from_seed_labels(np.zeros((2, 4, 4), int))
    with pytest.raises(PromptError, match="hold no objects"):
        PromptSet.from_seed_labels(np.zeros((4, 4), int))
    with pytest.raises(PromptError, match="integer object ids"):
        PromptSet.from_seed_labels(np.full((4, 4), 0.5))
    with pytest.raises(PromptError, match=">= 0"):
        PromptSet.from_seed_labels(np.full((4, 4), -1))


def test_apply_gives_the_same_results_as_direct_prompts(tiny_model, blob_stack):
    from napari_sam2.session import TrackingSession

    stack = blob_stack(n_frames=4, shape=(64, 96))
    prompts = PromptSet()
    prompts.add(0, 1, points=[[30, 30]])
    prompts.add(0, 2, box=[55, 80, 75, 100])
    with TrackingSession(tiny_model, stack) as a, TrackingSession(tiny_model, stack) as b:
        via_set = prompts.apply(a)
        b.add_prompt(0, 1, points=[[30, 30]])
        direct = b.add_prompt(0, 2, box=[55, 80, 75, 100])
        assert len(via_set) == 2
        np.testing.assert_array_equal(via_set[-1].labels, direct.labels)
        np.testing.assert_allclose(via_set[-1].logits, direct.logits)


def test_one_set_of_rules_for_every_face(tmp_path, tiny_model, blob_stack):
    """A point at y == height (or a zero-area box) is refused alike by PromptSet, the session and track(), and
    track() refuses it before any output store exists."""
    from napari_sam2 import track
    from napari_sam2.session import TrackingSession

    stack = blob_stack(n_frames=3, shape=(32, 48))
    for bad, message in [({"points": [[32, 10]]}, "outside the 32×48 frame"), ({"box": [4, 4, 4, 20]}, "zero area")]:
        prompts = PromptSet()
        prompts.add(1, 1, **bad)
        with pytest.raises(PromptError, match=message):
            prompts.validate(3, (32, 48))
        with TrackingSession(tiny_model, stack) as session:
            with pytest.raises(PromptError, match=message):
                prompts.apply(session)
            with pytest.raises(PromptError, match=message):
                session.add_prompt(1, 1, **bad)
            assert session.obj_ids == []
        out = tmp_path / "never.ome.zarr"
        with pytest.raises(PromptError, match=message):
            track(stack, prompts, model=tiny_model, out=out, device="cpu")
        assert not out.exists()
    inside = PromptSet()
    inside.add(1, 1, points=[[31.9, 47.9]])
    inside.validate(3, (32, 48))
    with TrackingSession(tiny_model, stack) as session:
        assert inside.apply(session)[0].obj_ids == [1]


# ---------------------------------------------------------------------- 3D+t (TZYX) prompts: (t, z) slices
def _tz():
    prompts = PromptSet()
    prompts.add(3, 1, points=[[10, 12], [20.5, 30]], labels=[1, 0], t=0)
    prompts.add(5, 2, box=[5, 6, 25, 40], t=2)
    prompts.add(3, 1, points=[[11, 13]], t=2)  # the same object and z on another time point: a separate prompt
    return prompts


def test_tz_prompts_roundtrip_json_and_csv(tmp_path):
    prompts = _tz()
    assert prompts.is_4d and prompts.times == [0, 2] and prompts.slices == [(0, 3), (2, 3), (2, 5)]
    assert prompts[1].t == 2 and prompts[1].z == 5 and prompts[1].slice_index == (2, 5)
    data = json.loads(prompts.save(tmp_path / "p.json").read_text())
    assert data["prompts"][0]["t"] == 0 and data["prompts"][0]["z"] == 3 and "frame" not in data["prompts"][0]
    assert PromptSet.load(tmp_path / "p.json") == prompts

    path = prompts.save(tmp_path / "p.csv")
    assert path.read_text().splitlines()[0] == "obj_id,t,z,kind,y,x,label,y0,x0,y1,x1"
    back = PromptSet.load(path)
    assert back == prompts and [p.slice_index for p in back] == [(0, 3), (2, 5), (2, 3)]


def test_old_prompt_files_without_t_still_load(tmp_path):
    path = tmp_path / "old.csv"
    path.write_text("obj_id,frame,y,x\n1,0,5,6\n")
    back = PromptSet.load(path)
    assert back[0].t is None and back[0].frame == 0 and not back.is_4d and back.times == []
    assert back[0].to_dict().keys() == {"obj_id", "frame", "points", "labels", "box", "mask"}  # unchanged format
    old_json = {"prompts": [{"obj_id": 1, "frame": 2, "points": [[1, 2]], "labels": [1]}]}
    assert PromptSet.from_dict(old_json)[0].t is None


def test_tz_prompts_checked_against_a_tzyx_stack(tmp_path):
    prompts = _tz()
    prompts.validate(8, (64, 64), num_times=3)
    with pytest.raises(PromptError, match=r"t=2 is outside the stack \(t 0…1\)"):
        prompts.validate(8, (64, 64), num_times=2)
    with pytest.raises(PromptError, match=r"z slice 5 is outside the stack \(z 0…4\)"):
        prompts.validate(5, (64, 64), num_times=3)
    old = PromptSet()
    old.add(0, 1, points=[[1, 1]])
    with pytest.raises(PromptError, match="needs a time point t as well as its z slice"):
        old.validate(8, (64, 64), num_times=3)
    with pytest.raises(PromptError, match="has one stream axis"):
        prompts.validate(8, (64, 64))
    mixed = PromptSet([*_tz(), *old])
    with pytest.raises(PromptError, match="has no time point t while other prompts have one"):
        mixed.save(tmp_path / "m.csv")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("obj_id,t,y,x\n1,0,5,6\n", "column 'z' is missing"),
        ("obj_id,t,z,frame,y,x\n1,0,1,1,5,6\n", "unknown column 'frame'.*gives t and z instead of frame"),
        ("obj_id,t,z,y,x\n1,-1,1,5,6\n", ":2: column 't' must be"),
        ("obj_id,t,z,y,x\n1,0,1.5,5,6\n", ":2: column 'z' must be"),
    ],
)
def test_tz_csv_errors_name_line_and_field(tmp_path, text, expected):
    path = tmp_path / "p.csv"
    path.write_text(text)
    with pytest.raises(PromptError, match=expected):
        PromptSet.load(path)


def test_tz_json_errors():
    bad = {"prompts": [{"obj_id": 1, "z": 2, "points": [[1, 2]]}]}
    with pytest.raises(PromptError, match="'z' needs a time point 't'"):
        PromptSet.from_dict(bad)
    bad = {"prompts": [{"obj_id": 1, "t": 2, "points": [[1, 2]]}]}
    with pytest.raises(PromptError, match="field 'z' is missing"):
        PromptSet.from_dict(bad)
    bad = {"prompts": [{"obj_id": 1, "t": 0, "z": 2, "frame": 2, "points": [[1, 2]]}]}
    with pytest.raises(PromptError, match="not both"):
        PromptSet.from_dict(bad)
