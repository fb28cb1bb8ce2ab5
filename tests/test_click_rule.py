"""The click rule (napari_sam2.click_rule): a dim clicked object brought up before the network, the clicked part kept
after it, a large one extended, a brighter neighbour cut off; the model's default, the parity preset, and the rule
recorded, replayed and resumed through the faces."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import ndimage
from test_contrast_track import clicks, dim_and_bright_movie

from napari_sam2 import cli, load_model, track
from napari_sam2.click_rule import (
    CLICK_RULE_FLUORESCENCE,
    CLICK_RULE_OFF,
    REMOVED_LOGIT,
    ClickRule,
    click_rule,
    click_rule_from_record,
    resolve_click_rule,
)
from napari_sam2.errors import InputError
from napari_sam2.frames import FrameSource
from napari_sam2.io.ome_zarr import LabelStore
from napari_sam2.io.results import open_result
from napari_sam2.preprocess import to_model_input
from napari_sam2.prompts import PromptSet
from napari_sam2.replay import replay
from napari_sam2.session import TrackingSession
from napari_sam2.synthetic_hard import hard_condition


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_the_gain_brings_the_dimmest_positive_click_to_the_level():
    grey = np.full((32, 32), 0.05, np.float32)
    grey[4:12, 4:12] = 0.14  # a dim object
    grey[20:28, 20:28] = 0.9  # a bright one
    rule = ClickRule(level=0.7, radius=2.0)
    assert rule.gain(grey, np.array([[8.0, 8.0]]), np.array([1])) == pytest.approx(0.7 / 0.14)
    assert rule.gain(grey, np.array([[24.0, 24.0]]), np.array([1])) == 1.0  # already bright enough: unchanged
    # several positive clicks: the dimmest sets the gain; negative clicks and box corners do not count
    both = np.array([[8.0, 8.0], [24.0, 24.0], [30.0, 2.0]])
    assert rule.gain(grey, both, np.array([1, 1, 0])) == pytest.approx(0.7 / 0.14)
    assert rule.gain(grey, np.array([[2.0, 30.0]]), np.array([0])) == 1.0
    assert rule.gain(np.zeros((32, 32), np.float32), np.array([[8.0, 8.0]]), np.array([1])) == pytest.approx(70.0)
    assert CLICK_RULE_OFF.gain(grey, np.array([[8.0, 8.0]]), np.array([1])) == 1.0
    x = to_model_input(np.repeat(grey[..., None], 3, axis=-1), 32)
    raised = ClickRule.grey(ClickRule.apply_gain(x, 0.7 / 0.14))
    np.testing.assert_allclose(ClickRule.grey(x), grey, atol=1e-5)
    np.testing.assert_allclose(raised[8, 8], 0.7, atol=1e-5)
    np.testing.assert_allclose(raised[24, 24], 1.0, atol=1e-6)  # the bright one saturates


def test_the_component_step_keeps_the_clicked_parts_only():
    logits = torch.full((1, 1, 16, 16), -5.0)
    logits[0, 0, 2:6, 2:6] = 3.0  # the clicked part
    logits[0, 0, 10:14, 10:14] = 4.0  # a neighbour the mask also took
    logits[0, 0, 2:4, 12:15] = 2.0  # another
    coords = np.array([[4 * 4.0, 4 * 4.0]])  # (x, y) at a 64-px model input: logit cell (4, 4)
    kept, changed = CLICK_RULE_FLUORESCENCE.keep_clicked(logits, coords, np.array([1]), 64)
    assert changed
    assert (kept[0, 0, 2:6, 2:6] == 3.0).all() and (kept[0, 0, 10:14, 10:14] == REMOVED_LOGIT).all()
    assert (kept[0, 0, 2:4, 12:15] == REMOVED_LOGIT).all() and (kept[logits <= 0] == -5.0).all()
    # a click just outside the mask keeps the nearest part; two positive clicks keep both of theirs
    near, _ = CLICK_RULE_FLUORESCENCE.keep_clicked(logits, np.array([[4 * 9.0, 4 * 9.0]]), np.array([1]), 64)
    assert (near[0, 0, 10:14, 10:14] == 4.0).all() and (near[0, 0, 2:6, 2:6] == REMOVED_LOGIT).all()
    two, _ = CLICK_RULE_FLUORESCENCE.keep_clicked(logits, np.array([[16.0, 16.0], [48.0, 48.0]]), np.array([1, 1]), 64)
    assert (two[0, 0, 2:4, 12:15] == REMOVED_LOGIT).all() and (two > 0).sum() == 32
    # a negative click alone, a single part, or the rule off: nothing removed
    assert not CLICK_RULE_FLUORESCENCE.keep_clicked(logits, coords, np.array([0]), 64)[1]
    assert not CLICK_RULE_OFF.keep_clicked(logits, coords, np.array([1]), 64)[1]
    single = torch.where(torch.arange(16)[None, None, :, None] < 8, logits, torch.tensor(-5.0))
    single[0, 0, :, 10:] = -5.0
    assert not CLICK_RULE_FLUORESCENCE.keep_clicked(single, coords, np.array([1]), 64)[1]


def test_the_extent_step_grows_a_large_core_to_its_object_only():
    """A large nucleus answered by its bright core (model/README.md, "The click rule") is grown over the pixels
    around it that are bright enough and connected to the click; a neighbour across dark background, the far side
    of the reach and a small mask are left alone."""
    import torch.nn.functional as F

    size, low = 64, 16
    yy, xx = np.mgrid[:size, :size]
    grey = np.full((size, size), 0.05, np.float32)
    grey[(yy - 30) ** 2 + (xx - 28) ** 2 <= 18**2] = 0.8  # the clicked nucleus, radius 18
    grey[(yy - 30) ** 2 + (xx - 58) ** 2 <= 5**2] = 0.9  # a neighbour beyond a dark gap
    cy, cx = (np.mgrid[:low, :low] + 0.5) * (size / low)
    core = torch.from_numpy(np.where((cy - 30) ** 2 + (cx - 28) ** 2 <= 13**2, 4.0, -4.0).astype(np.float32))[
        None, None
    ]
    rule = ClickRule(level=0.7, component=True, extent=0.6, extent_radius=12.0, extent_reach=0.5)
    click = np.array([[28.0, 30.0]])  # (x, y)

    def area(logits):
        return int((F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)[0, 0] > 0).sum())

    grown, changed = rule.extend(core, grey, click, np.array([1]))
    truth = (yy - 30) ** 2 + (xx - 28) ** 2 <= 18**2
    up = F.interpolate(grown, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy() > 0
    before = F.interpolate(core, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy() > 0
    assert changed and area(grown) > area(core)
    assert (up & truth).sum() / (up | truth).sum() > (before & truth).sum() / (before | truth).sum() + 0.1
    assert not up[(yy - 30) ** 2 + (xx - 58) ** 2 <= 4**2].any()  # the neighbour stays out
    assert (grown[core > 0] == core[core > 0]).all()  # what was foreground stays as it was
    # off, a small mask, a dim surrounding (below extent × the clicked brightness), no positive click: unchanged
    assert not ClickRule(level=0.7).extend(core, grey, click, np.array([1]))[1]
    small = torch.from_numpy(np.where((cy - 30) ** 2 + (cx - 28) ** 2 <= 6**2, 4.0, -4.0).astype(np.float32))[
        None, None
    ]
    assert not rule.extend(small, grey, click, np.array([1]))[1]
    dim = np.where((yy - 30) ** 2 + (xx - 28) ** 2 <= 10**2, 0.8, 0.3).astype(np.float32)  # all inside the core
    assert not rule.extend(core, dim, click, np.array([1]))[1]
    assert not rule.extend(core, grey, click, np.array([0]))[1]


def test_the_ceiling_step_cuts_a_brighter_neighbour_off_a_dim_clicked_nucleus():
    """After the gain a dim nucleus and a brighter neighbour look alike and one mask covers both; on the frame as it
    is the neighbour is brighter than ceiling × the clicked brightness, and the step cuts it off. A bright spot inside
    the clicked nucleus stays, and a click on the bright neighbour itself keeps the whole mask."""
    import torch.nn.functional as F

    size, low = 64, 16
    yy, xx = np.mgrid[:size, :size]
    grey = np.full((size, size), 0.02, np.float32)
    dim_disk = (yy - 32) ** 2 + (xx - 22) ** 2 <= 12**2
    bright_disk = (yy - 32) ** 2 + (xx - 44) ** 2 <= 10**2
    grey[dim_disk] = 0.1
    grey[(yy - 30) ** 2 + (xx - 20) ** 2 <= 2**2] = 0.4  # a bright spot inside the dim nucleus
    grey[bright_disk] = 0.6
    cy, cx = (np.mgrid[:low, :low] + 0.5) * (size / low)
    both = ((cy - 32) ** 2 + (cx - 22) ** 2 <= 13**2) | ((cy - 32) ** 2 + (cx - 44) ** 2 <= 11**2)  # one part
    logits = torch.from_numpy(np.where(both, 4.0, -4.0).astype(np.float32))[None, None]
    assert ndimage.label(both)[1] == 1
    rule = ClickRule(ceiling=1.5)
    click = np.array([[14.0, 36.0]])  # (x, y) on the dim nucleus, away from its bright spot

    cut, changed = rule.cap(logits, grey, click, np.array([1]))
    up = F.interpolate(cut, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy() > 0
    assert changed
    assert up[dim_disk].mean() > 0.85 and up[bright_disk].mean() < 0.15, (up[dim_disk].mean(), up[bright_disk].mean())
    assert up[30, 20]  # the bright spot inside stays
    assert (cut[0, 0][torch.from_numpy(~both)] == -4.0).all()  # the background is not touched
    # a click on the bright neighbour, the step off, no positive click: unchanged
    assert not rule.cap(logits, grey, np.array([[44.0, 32.0]]), np.array([1]))[1]
    assert not CLICK_RULE_OFF.cap(logits, grey, click, np.array([1]))[1]
    assert not rule.cap(logits, grey, click, np.array([0]))[1]


def test_rule_options_and_records():
    assert click_rule("fluorescence") is CLICK_RULE_FLUORESCENCE and click_rule(" OFF ") is CLICK_RULE_OFF
    assert resolve_click_rule(None, "nano-fluo") == CLICK_RULE_FLUORESCENCE  # the registry's default for nano-fluo
    assert resolve_click_rule(None, "sam2.1_hiera_tiny") == CLICK_RULE_OFF
    assert resolve_click_rule(None, "nano-fluo", preset="parity") == CLICK_RULE_OFF  # the official predictor
    assert resolve_click_rule("fluorescence", "nano-fluo", preset="parity") == CLICK_RULE_FLUORESCENCE  # asked for
    with pytest.raises(InputError, match="click_rule must be one of 'off', 'fluorescence'"):
        click_rule("bright")
    with pytest.raises(InputError, match="level is a brightness in"):
        ClickRule(level=1.5)
    with pytest.raises(InputError, match="radius is a positive number"):
        ClickRule(level=0.5, radius=0)
    assert click_rule_from_record(CLICK_RULE_FLUORESCENCE.record()) == CLICK_RULE_FLUORESCENCE
    assert click_rule_from_record({"contrast": "global"}) == CLICK_RULE_OFF  # a store made before the rule
    custom = ClickRule(level=0.5, radius=3.0, component=False, extent=0.4)
    assert click_rule_from_record(custom.record()) == custom
    # a rule recorded before the extent step existed had none
    first = {"click_rule": {"level": 0.7, "radius": 2.0, "component": True}}
    assert click_rule_from_record(first) == ClickRule(level=0.7, radius=2.0, component=True, extent=None)
    with pytest.raises(InputError, match="extent is a fraction"):
        ClickRule(extent=1.2)
    with pytest.raises(InputError, match="ceiling is a multiple of the clicked brightness above 1"):
        ClickRule(ceiling=0.9)
    # a rule recorded before the ceiling step existed (session 11's stores) had none
    second = {"click_rule": {k: v for k, v in CLICK_RULE_FLUORESCENCE.record()["click_rule"].items() if k != "ceiling"}}
    assert click_rule_from_record(second) == ClickRule(**{**second["click_rule"], "ceiling": None})
    assert CLICK_RULE_FLUORESCENCE.ceiling == 1.5 and click_rule_from_record(second) != CLICK_RULE_FLUORESCENCE
    # a rule recorded before the local view and through_z (sessions 11-15's stores): every click read on the frame as
    # it is, tracked masks as the network drew them
    new = ("local_view", "through_z")
    third = {"click_rule": {k: v for k, v in CLICK_RULE_FLUORESCENCE.record()["click_rule"].items() if k not in new}}
    assert CLICK_RULE_FLUORESCENCE.local_view and not click_rule_from_record(third).local_view
    assert CLICK_RULE_FLUORESCENCE.through_z and not click_rule_from_record(third).through_z
    with pytest.raises(InputError, match="local_view is True or False"):
        ClickRule(local_view="yes")
    # a rule recorded before across_border (sessions 16-17's stores): no alternatives offered
    fourth = {
        "click_rule": {k: v for k, v in CLICK_RULE_FLUORESCENCE.record()["click_rule"].items() if k != "across_border"}
    }
    assert CLICK_RULE_FLUORESCENCE.across_border and not click_rule_from_record(fourth).across_border
    assert not ClickRule(across_border=True).off  # a rule with only this field still reads first clicks
    with pytest.raises(InputError, match="across_border is True or False"):
        ClickRule(across_border=1)


def _disc(shape, centre, radius):
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def test_what_lies_across_the_border_of_a_click():
    """`across_border`'s geometry on hand-made masks: two touching discs, a click on their seam, the answers of first
    clicks around it. The disc across the seam is picked; a part of the clicked disc, a disc that does not touch it,
    or a neighbour whose border passes far from the click (a click deep inside its own disc) is not."""
    shape = (64, 64)
    left, right = _disc(shape, (32, 22), 8), _disc(shape, (32, 38), 8) & ~_disc(shape, (32, 22), 8)
    seam = np.array([30.0, 32.0])  # (x, y): the touching point of the two discs
    rule = CLICK_RULE_FLUORESCENCE
    seeds = rule.across_seeds(left, seam)
    assert len(seeds) and not any(left[int(np.rint(y)), int(np.rint(x))] for x, y in seeds)  # none inside the mask
    assert {round(float(r)) for r in np.hypot(*(seeds - seam).T)} <= {4, 8}
    assert not len(replace(rule, across_border=False).across_seeds(left, seam))

    far = _disc(shape, (8, 56), 5)  # touches nothing
    part = left & _disc(shape, (32, 26), 4)  # a piece of the clicked disc
    answers = np.stack([far, part, right])
    deep_seeds = np.array([[56.0, 8.0], [26.0, 32.0], [40.0, 32.0]])  # each answer's own seed (x, y)
    assert ClickRule.pick_across(left, seam, deep_seeds, answers) == 2
    assert ClickRule.pick_across(left, seam, deep_seeds[:2], answers[:2]) is None
    # the same neighbour, but the click deep inside the left disc: its border passes 8 px from the click
    assert ClickRule.pick_across(left, np.array([22.0, 32.0]), deep_seeds, answers) is None
    # of two readings of the disc across, the one whose seed lies deepest inside it
    shallow = right & _disc(shape, (32, 34), 6)
    two = np.stack([shallow, right])
    assert ClickRule.pick_across(left, seam, np.array([[35.0, 32.0], [38.0, 32.0]]), two) == 1


def test_a_dim_click_is_read_under_local_contrast():
    """`local_view`: a first click on a dim nucleus beside a bright one is decoded from the frame under local contrast
    (the stack's `FrameSource.local_view_input`: what contrast="local" makes), times the gain still needed there; a
    bright click, a correction and a rule without the view read the frame as it is (the view is not even made)."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:64, :64]
    frame = rng.normal(100, 4, (64, 64)).astype(np.float32)
    frame[(yy - 16) ** 2 + (xx - 16) ** 2 <= 36] += 150  # a dim nucleus
    frame[(yy - 40) ** 2 + (xx - 44) ** 2 <= 36] += 3000  # a bright one, 20x brighter
    stack = np.stack([frame, frame])
    source = FrameSource(stack, 64, read_ahead=0)
    local = source.local_view_input(0)
    as_local = FrameSource(stack, 64, read_ahead=0, contrast="local")
    np.testing.assert_array_equal(local.numpy(), as_local.model_input(0).numpy())
    assert as_local.local_view_input(0) is None  # its frames are that view already
    x, made = source.model_input(0), []

    def view():
        made.append(True)
        return local

    dim, bright, one = np.array([[16.0, 16.0]]), np.array([[44.0, 40.0]]), np.ones(1)
    rule = CLICK_RULE_FLUORESCENCE
    assert rule.gain(ClickRule.grey(x), dim, one) > 5  # near black under the stack's range
    seen, grey, own = rule.clicked_input(x, dim, one, raise_level=True, local_view=view)
    local_gain = rule.gain(ClickRule.grey(local), dim, one)
    expected = local if local_gain == 1.0 else ClickRule.apply_gain(local, local_gain)
    assert made and torch.equal(seen, expected)
    np.testing.assert_array_equal(own, ClickRule.grey(local))  # the ceiling step reads the view before its gain
    np.testing.assert_allclose(grey, ClickRule.grey(seen))
    # each nucleus at its own level: under the stack's range the dim one is under a tenth of the bright one
    for view_grey, low, high in ((ClickRule.grey(x), 0.0, 0.1), (ClickRule.grey(local), 0.5, 1.01)):
        assert low < view_grey[16, 16] / view_grey[40, 44] < high
    gained = ClickRule.apply_gain(x, rule.gain(ClickRule.grey(x), dim, one))
    made.clear()
    assert rule.clicked_input(x, bright, one, raise_level=True, local_view=view)[0] is None and not made
    assert rule.clicked_input(x, dim, one, raise_level=False, local_view=view)[0] is None and not made
    plain, _, own = replace(rule, local_view=False).clicked_input(x, dim, one, raise_level=True, local_view=view)
    assert not made and torch.equal(plain, gained)
    np.testing.assert_array_equal(own, ClickRule.grey(x))


@pytest.fixture(scope="module")
def nano():
    return load_model("nano-fluo", device="cpu")


def test_the_rule_finds_dim_nuclei_beside_bright_ones(nano):
    """Issue 16's failure: with one stack-wide range a click on a dim nucleus beside bright ones returns a bright
    neighbour or nothing. Under nano-fluo's default rule the same clicks find the dim nuclei (a test seed, neither
    tuning nor held-out)."""
    stack = hard_condition("brightness_spread", 77, n=2)
    truth = stack.labels[0]
    objects = [int(o) for o in np.unique(truth)[1:] if (truth == o).sum() >= 20]
    dim = sorted(objects, key=lambda o: stack.events["brightness"][o])[: len(objects) // 2]

    def clicked(rule):
        ious = []
        with TrackingSession(nano, stack.image, click_rule=rule) as session:
            assert session.click_rule == (CLICK_RULE_FLUORESCENCE if rule is None else click_rule(rule))
            for obj in dim:
                mask = truth == obj
                depth = ndimage.distance_transform_edt(mask)  # the click: the deepest pixel, as the benchmarks'
                y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
                result = session.add_prompt(0, obj, points=[(y, x)], labels=[1])
                got = result.masks[result.obj_ids.index(obj)]
                ious.append((got & mask).sum() / max((got | mask).sum(), 1))
                session.remove_object(obj)
        return np.median(ious)

    off, default = clicked("off"), clicked(None)
    assert len(dim) >= 8
    assert off < 0.3 and default > 0.55 and default > off + 0.3, (off, default)


def test_track_records_the_click_rule_replays_and_resumes_it(tmp_path, capsys):
    stack = dim_and_bright_movie()
    np.save(tmp_path / "stack.npy", stack)
    out = tmp_path / "nano.ome.zarr"
    made = track(tmp_path / "stack.npy", clicks(), model="nano-fluo", device="cpu", out=out, tables=False)
    assert made.provenance["settings"]["click_rule"] == CLICK_RULE_FLUORESCENCE.record()["click_rule"]
    assert replay(out, device="cpu").identical
    assert cli.main(["info", str(out)]) == 0
    assert "click_rule=fluorescence" in capsys.readouterr().out
    off = track(stack, clicks(), model="nano-fluo", device="cpu", tables=False, click_rule="off")
    assert off.provenance["settings"]["click_rule"]["level"] is None
    # the dim disk's first frame: another mask under the rule (else this test shows nothing about what is replayed)
    assert not np.array_equal(np.asarray(made.labels[0]) == 1, np.asarray(off.labels[0]) == 1)

    LabelStore.open(out, mode="r+").update_provenance({"status": "interrupted"})
    with pytest.raises(InputError, match="a resumed run replays it, so click_rule="):
        track(tmp_path / "stack.npy", None, model="nano-fluo", device="cpu", out=out, resume=True, tables=False,
              click_rule="off")  # fmt: skip
    resumed = track(tmp_path / "stack.npy", None, model="nano-fluo", device="cpu", out=out, resume=True, tables=False)
    np.testing.assert_array_equal(np.asarray(resumed.labels[:]), np.asarray(made.labels[:]))

    # a store made before the rule existed records none: it was made without it, and replays and resumes so
    old = tmp_path / "old.ome.zarr"
    track(tmp_path / "stack.npy", clicks(), model="nano-fluo", device="cpu", out=old, tables=False, click_rule="off")
    store = LabelStore.open(old, mode="r+")
    settings = {k: v for k, v in store.provenance["settings"].items() if k != "click_rule"}
    store.update_provenance({"settings": settings})
    assert "click_rule" not in open_result(old).record.settings
    assert replay(old, device="cpu").identical
    assert cli.main(["info", str(old)]) == 0
    assert "click_rule=off" in capsys.readouterr().out

    # a store made by the rule before its ceiling step (session 11) records no ceiling: replayed without one, and
    # `info` shows its constants (it is not today's fluorescence rule)
    from dataclasses import replace as replaced

    earlier = replaced(CLICK_RULE_FLUORESCENCE, ceiling=None)
    before = tmp_path / "before_ceiling.ome.zarr"
    track(tmp_path / "stack.npy", clicks(), model="nano-fluo", device="cpu", out=before, tables=False,
          click_rule=earlier)  # fmt: skip
    store = LabelStore.open(before, mode="r+")
    recorded = {k: v for k, v in store.provenance["settings"]["click_rule"].items() if k != "ceiling"}
    store.update_provenance({"settings": {**store.provenance["settings"], "click_rule": recorded}})
    assert replay(before, device="cpu").identical
    assert cli.main(["info", str(before)]) == 0
    assert "click_rule=(level=0.7, radius=2.0, component=True, extent=0.5" in capsys.readouterr().out

    argv = ["track", str(tmp_path / "stack.npy"), "--out", str(tmp_path / "cli.ome.zarr"), "--model", "nano-fluo",
            "--device", "cpu", "-q", "--click-rule", "off"]  # fmt: skip
    clicks().save(tmp_path / "p.json")
    assert cli.main([*argv, "--prompts", str(tmp_path / "p.json")]) == 0
    np.testing.assert_array_equal(open_result(tmp_path / "cli.ome.zarr").labels[:], np.asarray(off.labels))


def test_a_store_made_before_the_local_view_replays_without_it(tmp_path):
    """Stores of sessions 11-15 record the fluorescence rule without `local_view`: they replay reading the dim click
    on the frame as it is (times the gain), not under local contrast, so their labels come back as they were made."""
    stack = tmp_path / "stack.npy"
    np.save(stack, hard_condition("brightness_spread", 77, n=2).image)  # a test seed, neither tuning nor held-out
    prompts = PromptSet()
    prompts.add(0, 1, points=[[181, 40]])  # a dim nucleus (brightness 0.46 of the brightest interphase ones)
    _made_before_the_field("local_view", tmp_path, stack, prompts)


def _made_before_the_field(field: str, tmp_path, stack, prompts, **options) -> None:
    """A store made by the fluorescence rule without `field` (the rule as it was before the field existed), its record
    stripped of it as an older store's is: replayed identically, as the store made with today's rule is; the two
    rules' labels differ (else the replay would show nothing)."""
    made = {}
    for name, rule in (
        ("now", CLICK_RULE_FLUORESCENCE),
        ("before", replace(CLICK_RULE_FLUORESCENCE, **{field: False})),
    ):
        made[name] = tmp_path / f"{name}.ome.zarr"
        track(stack, prompts, model="nano-fluo", device="cpu", out=made[name], tables=False, click_rule=rule,
              **options)  # fmt: skip
    assert not np.array_equal(open_result(made["now"]).labels[:], open_result(made["before"]).labels[:])
    store = LabelStore.open(made["before"], mode="r+")
    recorded = {k: v for k, v in store.provenance["settings"]["click_rule"].items() if k != field}
    store.update_provenance({"settings": {**store.provenance["settings"], "click_rule": recorded}})
    assert not getattr(click_rule_from_record(open_result(made["before"]).record.settings), field)
    assert replay(made["before"], device="cpu").identical
    assert replay(made["now"], device="cpu").identical


def test_masks_tracked_through_z_are_mended_and_what_is_tracked_is_not(nano):
    """`through_z`: in a z stream a large nucleus's tracked masks get the extent step and the mask refiner (the network
    answers it with its core); their memory is the network's own, so every tracked slice's object score and IoU are
    unchanged; a time stream is left as it is."""
    stack = hard_condition("large_anisotropic", 78, n=16)  # a test seed, neither tuning nor held-out
    truth, middle, slices = stack.labels, 8, range(16)
    # three large nuclei the network follows through z (most others of this stack it loses on the next slice: an
    # object score below zero there, mended or not; model/README.md, session 16)
    objects = [7, 8, 9]
    assert all((truth[middle] == o).sum() > 1500 for o in objects)
    runs = {}
    for name, rule, z_stream in (
        ("mended", CLICK_RULE_FLUORESCENCE, True),
        ("not mended", replace(CLICK_RULE_FLUORESCENCE, through_z=False), True),
        ("time", CLICK_RULE_FLUORESCENCE, False),
    ):
        # (one contrast for all three: a z stream's default would be local, `registry.ModelInfo.z_contrast`)
        with TrackingSession(nano, stack.image, click_rule=rule, z_stream=z_stream, contrast="global") as session:
            assert session.z_stream is z_stream
            for obj in objects:
                depth = ndimage.distance_transform_edt(truth[middle] == obj)
                y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
                session.add_prompt(middle, obj, points=[(y, x)], labels=[1])
            by_slice = {r.frame: r.labels for r in session.propagate("both")}
            labels = np.stack([by_slice[z] for z in slices])
            tracked = {(o, f): (out.score.item(), out.iou) for o in objects
                       for f, out in session.objects[o].tracked.items()}  # fmt: skip
        runs[name] = labels, tracked
    mended, plain, time = runs["mended"], runs["not mended"], runs["time"]
    np.testing.assert_array_equal(mended[0][middle], plain[0][middle])  # the clicked slice: a first click's mask
    np.testing.assert_array_equal(plain[0], time[0])  # a time stream: not mended
    assert mended[1].keys() == plain[1].keys() and len(mended[1]) == len(objects) * 15
    for key, (score, iou_token) in plain[1].items():  # what was tracked is the same
        assert mended[1][key][0] == pytest.approx(score, abs=1e-5) and mended[1][key][1] == pytest.approx(iou_token)

    def mean_iou(labels):
        return np.mean([_iou(labels[z] == o, truth[z] == o) for o in objects for z in slices if z != middle
                        if (truth[z] == o).sum() > 30])  # fmt: skip

    assert not np.array_equal(mended[0], plain[0])
    assert mean_iou(mended[0]) > mean_iou(plain[0]), (mean_iou(mended[0]), mean_iou(plain[0]))


def test_a_z_stack_made_before_through_z_replays_without_it(tmp_path):
    """Stores of sessions 11-15 record the fluorescence rule without `through_z`: their tracked z masks are replayed
    as the network drew them."""
    stack = hard_condition("large_anisotropic", 78, n=16)
    np.save(tmp_path / "stack.npy", stack.image)
    depth = ndimage.distance_transform_edt(stack.labels[8] == 9)  # a nucleus the network follows through z
    prompts = PromptSet()
    prompts.add(8, 9, points=[np.unravel_index(int(np.argmax(depth)), depth.shape)])
    _made_before_the_field("through_z", tmp_path, tmp_path / "stack.npy", prompts, axis="z")  # a z stream


def test_track_many_takes_the_click_rule():
    from napari_sam2.scale_out import _TRACK_OPTIONS

    assert "click_rule" in _TRACK_OPTIONS
    many = cli._parser().parse_args(["track-many", "a.tif", "--auto", "--out-dir", "o", "--click-rule", "off"])
    assert many.click_rule == "off"
