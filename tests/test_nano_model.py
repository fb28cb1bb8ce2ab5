"""The built-in nano-fluo model does the job: a click on a nucleus gives that nucleus, the track follows it.

Held-out synthetic movies (seeds the training never drew; see model/train_nano.py), run through the public
engine exactly as a user would. The bars are below what benchmarks/bench_nano.py measured (model/README.md),
with a margin for a different machine's float rounding; they fail for a random or untrained model.
"""

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from napari_sam2 import load_model, track
from napari_sam2.prompts import PromptSet
from napari_sam2.sample_data import nuclei_timelapse, nuclei_zstack
from napari_sam2.session import TrackingSession

HELD_OUT = 3_000_000


@pytest.fixture(scope="module")
def nano():
    return load_model("nano-fluo", device="cpu")


def deepest_point(mask):
    depth = ndimage.distance_transform_edt(mask)
    return np.unravel_index(int(np.argmax(depth)), depth.shape)


def iou(a, b):
    union = np.logical_or(a, b).sum()
    return np.logical_and(a, b).sum() / union if union else 1.0


def test_a_click_on_a_nucleus_gives_that_nucleus(nano):
    movie = nuclei_timelapse(n_frames=1, n_nuclei=10, seed=HELD_OUT)
    truth = movie.labels[0]
    ious = []
    with TrackingSession(nano, movie.image) as session:
        for obj in np.unique(truth)[1:]:
            result = session.add_prompt(0, int(obj), points=[deepest_point(truth == obj)], labels=[1])
            mask = result.masks[result.obj_ids.index(int(obj))]
            ious.append(iou(mask, truth == obj))
            # the clicked nucleus, not its neighbours: most of the mask lies on it (measured: worst 0.686; the
            # touching pair's nucleus 3: 0.786)
            assert (truth[mask] == obj).mean() > 0.6, f"the mask for nucleus {obj} spills onto others"
    assert np.median(ious) >= CLICK_MEDIAN_BAR, ious


def test_one_click_per_nucleus_tracks_them_through_the_movie(nano, tmp_path):
    movie = nuclei_timelapse(n_frames=30, n_nuclei=8, seed=HELD_OUT + 1)
    truth = movie.labels
    prompts = PromptSet()
    for obj in np.unique(truth[0])[1:]:
        prompts.add(0, int(obj), points=[deepest_point(truth[0] == obj)], labels=[1])
    result = track(movie.image, prompts, model=nano, axis=0, direction="forward", tables=False)
    labels = np.asarray(result.labels)
    ious = [
        iou(labels[t] == obj, truth[t] == obj)
        for obj in prompts.obj_ids
        for t in range(1, 30)
        if (truth[t] == obj).any()
    ]
    assert np.mean(ious) >= TRACK_MEAN_BAR
    # the nucleus that swims out is reported absent while it is away
    gap = movie.events["leaves_and_returns"]["absent_frames"]
    rows = {(r["frame"], r["obj_id"]): r for r in result.confidence}
    absent = [rows[(t, 2)]["score"] <= 0 for t in gap if (t, 2) in rows]
    assert np.mean(absent) >= ABSENT_BAR


def test_zstack_click_follows_the_nucleus_through_z(nano):
    stack = nuclei_zstack(n_slices=16, n_nuclei=8, seed=HELD_OUT + 2)
    truth = stack.labels
    z = 8
    obj = int(np.bincount(truth[z].ravel())[1:].argmax() + 1)  # the largest cross-section on slice 8
    with TrackingSession(nano, stack.image) as session:
        session.add_prompt(z, obj, points=[deepest_point(truth[z] == obj)], labels=[1])
        masks = {r.frame: r.masks[r.obj_ids.index(obj)] for r in session.propagate("both") if obj in r.obj_ids}
    ious = [iou(masks[k], truth[k] == obj) for k in masks if (truth[k] == obj).sum() > 30]
    assert np.mean(ious) >= ZSTACK_MEAN_BAR


def test_demo_runs_offline_with_the_builtin_model_and_scores_tra(tmp_path, capsys):
    pytest.importorskip("ctc_metrics")
    from napari_sam2 import cli

    code = cli.main(["demo", "--out", str(tmp_path / "demo"), "--device", "cpu", "--quiet"])  # default model, 30 frames
    text = capsys.readouterr().out
    assert code == 0
    tra = float(text.split("TRA: ")[1].split()[0])
    assert tra >= DEMO_TRA_BAR


CLICK_MEDIAN_BAR = 0.8  # measured 0.916
TRACK_MEAN_BAR = 0.75  # measured 0.844
ABSENT_BAR = 0.8  # measured 1.0
ZSTACK_MEAN_BAR = 0.75  # measured 0.835
DEMO_TRA_BAR = 0.75  # measured 0.847


def test_the_reported_iou_says_how_good_the_clicked_mask_is(nano):
    """The shipped mask-quality head (issue 16): on hard held-out frames, where many clicks land on another nucleus,
    the IoU a click reports is close to the mask's actual IoU and lower for the wrong masks (the IoU token alone
    said 0.7 whatever the mask: mean |error| 0.34 on bench_hard)."""
    from napari_sam2.synthetic_hard import hard_condition

    assert nano.mask_quality is not None
    predicted, actual = [], []
    for name in ("brightness_spread", "mitotic_neighbours"):
        stack = hard_condition(name, HELD_OUT + 16, n=2)
        truth = stack.labels[0]
        with TrackingSession(nano, stack.image) as session:
            for obj in np.unique(truth)[1:]:
                if (truth == obj).sum() < 20:
                    continue
                result = session.add_prompt(0, int(obj), points=[deepest_point(truth == obj)], labels=[1])
                k = result.obj_ids.index(int(obj))
                predicted.append(float(result.ious[k]))
                actual.append(iou(result.masks[k], truth == obj))
                session.remove_object(int(obj))
    predicted, actual = np.array(predicted), np.array(actual)
    # the condition is hard: some clicks go wrong ("wrong": IoU < 0.6; with the refiner of session 14 only 3 of 94 are
    # below 0.5, 8 below 0.6)
    assert len(actual) >= 30 and (actual < 0.6).sum() >= 5
    assert np.abs(predicted - actual).mean() <= 0.12
    # (0.73 with the click decoder of session 13, 0.8+ before it: with fewer masks on the wrong nucleus the actual
    # IoUs spread less, and a correlation with them is lower for the same error)
    assert np.corrcoef(predicted, actual)[0, 1] >= 0.65
    # (measured with session 14's file: 0.60 on the wrong masks against 0.82 on the good ones; |err| 0.059, correlation
    # 0.80; the gap asked was 0.2 with "wrong" at IoU < 0.5, which too few clicks now reach)
    assert predicted[actual < 0.6].mean() < predicted[actual > 0.7].mean() - 0.15


def test_the_click_decoder_and_refiner_put_clicks_on_dim_nuclei_on_them(nano):
    """Issue 16, sessions 13–14: the shipped click decoder draws first clicks and the mask refiner corrects their
    borders; on hard held-out frames (a 10× brightness spread, dim nuclei beside mitotic figures) the click decoder's
    masks are better than the shared decoder's and rarely lie on another nucleus, and the refiner's are better still
    (measured, median / share on another nucleus: refined 0.81 / 2 % and 0.79 / 5 %, the click decoder alone
    0.71 / 3 % and 0.72 / 10 %, the shared decoder 0.68 / 19 % and 0.67 / 16 %)."""
    from napari_sam2.synthetic_hard import hard_condition

    assert nano.click_decoder is not None and nano.mask_refiner is not None
    unrefined = load_model("nano-fluo", device="cpu")
    unrefined.mask_refiner = None  # the click decoder's masks as they were
    shared = load_model("nano-fluo", device="cpu")
    shared.click_decoder = shared.mask_refiner = None  # the same network drawing first clicks with its shared decoder
    for name, at_least in (("brightness_spread", BRIGHT), ("mitotic_neighbours", MITOTIC)):
        got = {}
        for label, model in (("refined", nano), ("click decoder", unrefined), ("shared", shared)):
            ious, wrong = [], []
            for seed in (HELD_OUT + 16, HELD_OUT + 17):
                stack = hard_condition(name, seed, n=2)
                truth = stack.labels[0]
                with TrackingSession(model, stack.image) as session:
                    for obj in (int(o) for o in np.unique(truth)[1:] if (truth == o).sum() >= 20):
                        result = session.add_prompt(0, obj, points=[deepest_point(truth == obj)], labels=[1])
                        mask = result.masks[result.obj_ids.index(obj)]
                        ious.append(iou(mask, truth == obj))
                        wrong.append(bool(mask.any()) and (truth[mask] != obj).mean() > 0.5)
                        session.remove_object(obj)
            got[label] = float(np.median(ious)), float(np.mean(wrong))
        print(name, got)
        assert got["click decoder"][0] >= got["shared"][0] + 0.03, got
        assert got["click decoder"][1] <= 0.12 and got["click decoder"][1] < got["shared"][1], got
        assert got["refined"][0] >= at_least and got["refined"][0] >= got["click decoder"][0] + 0.03, got
        assert got["refined"][1] <= 0.12, got


BRIGHT, MITOTIC = 0.78, 0.76  # the refined first clicks' medians (measured 0.813, 0.786)


def test_a_single_image_click_gives_the_mask_a_session_gives(nano):
    """The single-image API decodes a first click as a session does (click rule, click decoder, refiner, head): the
    same click on the same frame gives the same mask and the same reported IoU. Before, `ImagePredictor` gave
    nano-fluo's shared decoder on the frame as it is (tuning frames, median IoU: brightness spread 0.05 against a
    session's 0.83)."""
    from napari_sam2 import ImagePredictor
    from napari_sam2.synthetic_hard import hard_condition

    predictor = ImagePredictor(nano)
    assert not predictor.click_rule.off  # nano-fluo's default: fluorescence
    ious, raised = [], 0
    for seed in (HELD_OUT + 18, HELD_OUT + 19):
        stack = hard_condition("brightness_spread", seed, n=1)
        image, truth = stack.image[0], stack.labels[0]
        predictor.set_image(image)
        got, dim = single_image_clicks(nano, predictor, image, truth)
        ious, raised = ious + got, raised + dim
    print(f"{raised} of {len(ious)} clicks raised; median IoU {np.median(ious):.3f}")
    assert raised >= 3, "the test should click dim nuclei the rule raises"
    assert np.median(ious) >= 0.7, ious  # measured 0.83 (27 of 39 clicks raised)


def single_image_clicks(nano, predictor, image, truth):
    """(the IoUs of one click per nucleus through `predictor`, each asserted equal to a session's; the number of
    clicks whose frame the click rule raised)."""
    ious, raised = [], 0
    with TrackingSession(nano, image[None], fill_hole_area=0) as session:
        for obj in (int(o) for o in np.unique(truth)[1:] if (truth == o).sum() >= 20):
            click = deepest_point(truth == obj)
            runs = session.encoder_runs
            result = session.add_prompt(0, obj, points=[click], labels=[1])
            # a dim nucleus: the frame encoded again at its level (the first prompt also encodes the frame as it is)
            raised += session.encoder_runs - runs - (runs == 0)
            k = result.obj_ids.index(obj)
            got = predictor.predict(points=[click])
            assert got.masks.shape == (3, *truth.shape) and got.choice is not None
            assert np.array_equal(got.masks[got.best], result.masks[k]), obj
            assert got.iou[got.best] == pytest.approx(result.ious[k], abs=1e-5)
            single = predictor.predict(points=[click], multimask=False)
            assert single.masks.shape == (1, *truth.shape) and np.array_equal(single.masks[0], result.masks[k])
            ious.append(iou(got.masks[got.best], truth == obj))
            session.remove_object(obj)
    return ious, raised


def test_a_click_on_the_border_of_two_nuclei_offers_them_apart_and_together(nano, monkeypatch):
    """Issue 16's "the three masks differ where the prompt is ambiguous". A click on the shared border of two touching
    nuclei could mean either or both; the network's three candidates are one mask three times (bench_hard: pairwise
    IoU 0.94). Under nano-fluo's rule (`across_border`) the single-image API offers the click's own mask (still the
    chosen one, the session's mask), the nucleus across the border and the two together (measured on these 19 clicks:
    pairwise IoU 0.98 → 0.48; a nucleus and the pair both offered, each at IoU ≥ 0.7, in 58 % of them)."""
    from dataclasses import replace

    from napari_sam2 import ImagePredictor
    from napari_sam2.synthetic_hard import hard_condition

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_hard import border_click, touching_pairs  # bench_hard's probe clicks

    with_rule = ImagePredictor(nano)
    assert with_rule.click_rule.across_border  # nano-fluo's default
    without = ImagePredictor(nano, click_rule=replace(with_rule.click_rule, across_border=False))
    pairwise = {"with": [], "without": []}
    both = []
    for seed in (HELD_OUT + 20, HELD_OUT + 21):
        stack = hard_condition("mitotic_neighbours", seed, n=1)
        image, truth = stack.image[0], stack.labels[0]
        with_rule.set_image(image)
        without.set_image(image)
        for a, b in touching_pairs(stack.events["neighbours"], set(np.unique(truth)[1:].tolist())):
            click = border_click(truth, a, b)
            if click is None:
                continue
            got, plain = with_rule.predict(points=[click]), without.predict(points=[click])
            single = with_rule.predict(points=[click], multimask=False)
            # the mask a session keeps is the same, offered first
            assert got.best == 0 and np.array_equal(got.masks[0], single.masks[0])
            assert np.array_equal(got.masks[0], plain.masks[plain.best])
            for key, masks in (("with", got.masks), ("without", plain.masks)):
                pairwise[key].append(np.mean([iou(masks[i], masks[j]) for i, j in ((0, 1), (0, 2), (1, 2))]))
            if not np.array_equal(got.masks, plain.masks):  # alternatives offered: across, and the two together
                assert iou(got.masks[0], got.masks[1]) < 0.2
                assert (got.masks[2] | got.masks[0] | got.masks[1]).sum() <= 1.05 * got.masks[2].sum()
            one = max(max(iou(m, truth == a), iou(m, truth == b)) for m in got.masks)
            pair = max(iou(m, (truth == a) | (truth == b)) for m in got.masks)
            both.append(one >= 0.7 and pair >= 0.7)
    print({k: (len(v), float(np.mean(v))) for k, v in pairwise.items()}, float(np.mean(both)))
    assert len(both) >= 15
    assert np.mean(pairwise["without"]) >= 0.85  # the network's candidates: one mask three times
    assert np.mean(pairwise["with"]) <= np.mean(pairwise["without"]) - 0.2
    assert np.mean(both) >= 0.25


def test_a_click_on_a_large_anisotropic_nucleus_gives_it_whole(nano):
    """Issue 16's third hard condition: nuclei of radius 20–40 px at the model input in an anisotropic z-stack (z step
    2–5× the pixel, axial blur), one click at the deepest pixel of each on the middle slice, fresh session: median IoU
    ≥ 0.80, the issue's bar (measured on these two test stacks: 0.905 over 12 nuclei, worst 0.80; bench_hard's
    held-out median 0.924). Before the click rule's extent step the network answered with the bright core (v1:
    0.607)."""
    from napari_sam2.synthetic_hard import hard_condition

    ious, areas = [], []
    for seed in (HELD_OUT + 22, HELD_OUT + 23):
        stack = hard_condition("large_anisotropic", seed, n=16)
        truth = stack.labels[8]
        with TrackingSession(nano, stack.image) as session:
            for obj in (int(o) for o in np.unique(truth)[1:] if (truth == o).sum() >= 20):
                result = session.add_prompt(8, obj, points=[deepest_point(truth == obj)], labels=[1])
                ious.append(iou(result.masks[result.obj_ids.index(obj)], truth == obj))
                areas.append(int((truth == obj).sum()))
                session.remove_object(obj)
    assert len(ious) >= 10 and np.median(areas) >= 1000  # (radius ≥ 18 px: large)
    assert np.median(ious) >= 0.80, ious
