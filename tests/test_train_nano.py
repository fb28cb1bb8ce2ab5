"""model/train_nano.py: the real training loop, a few small steps (data, prompts, video objective, resume, export)."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_sam2 import load_model
from napari_sam2.registry import file_sha256

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def train_nano():
    spec = importlib.util.spec_from_file_location("train_nano", ROOT / "model" / "train_nano.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_nano"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


SMALL = ["--clips", "1", "--frames", "3", "--val-every", "0", "--save-every", "1", "--pool", "2", "--threads", "1"]


def test_resume_continues_exactly_and_export_loads(train_nano, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train_nano.main(["--out", str(straight), "--steps", "4", *SMALL]) == 0
    assert train_nano.main(["--out", str(split), "--steps", "4", "--stop-after", "1e-9", *SMALL]) == 0
    stopped = torch.load(split / "last.pt", weights_only=True)
    assert stopped["step"] == 1  # stopped after its first step, state saved
    assert train_nano.main(["--out", str(split), "--steps", "4", "--resume", "--until", "2", *SMALL]) == 0
    assert torch.load(split / "last.pt", weights_only=True)["step"] == 2
    assert train_nano.main(["--out", str(split), "--steps", "4", "--resume", *SMALL]) == 0
    a = torch.load(straight / "last.pt", weights_only=True)
    b = torch.load(split / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    initial = train_nano.build_model(train_nano.NANO_FLUO).state_dict()
    changed = [k for k in a["model"] if not torch.equal(a["model"][k], initial[k])]
    assert changed, "four optimiser steps left every weight at its initial value"
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), f"{key} differs after stop + resume"
    log = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 4 and np.isfinite(log[-1]["loss"])

    target = tmp_path / "weights" / "nano_fluo.pt"
    assert train_nano.main(["--out", str(straight), "--export", str(target)]) == 0
    record = json.loads(target.with_suffix(".json").read_text())
    assert record["sha256"] == file_sha256(target) and record["file_size"] == target.stat().st_size
    model = load_model(target, device="cpu")
    assert model.cfg == train_nano.NANO_FLUO and record["params"] == sum(p.numel() for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, a["model"][key])


def test_prompts_are_what_a_user_gives(train_nano):
    rng = np.random.default_rng(0)
    mask = np.zeros((64, 64), bool)
    mask[10:30, 20:50] = True
    for _ in range(20):
        x, y = train_nano.click_inside(mask, rng)
        assert mask[int(y), int(x)]
        assert 13 <= y <= 26 and 23 <= x <= 46  # well inside, not on the border
        (x0, y0), (x1, y1) = train_nano.box_around(mask, rng)
        # each side moved by a 10 %-of-size normal draw: within 4 sigma
        assert abs(x0 - 20) <= 12 and abs(y0 - 10) <= 8 and abs(x1 - 50) <= 12 and abs(y1 - 30) <= 8
        assert x0 < x1 and y0 < y1
    pred = mask.copy()
    pred[10:30, 35:50] = False  # missed the right part: a positive click there
    x, y, label = train_nano.correction_click(pred, mask)
    assert label == 1 and 35 <= x < 50 and 10 <= y < 30
    pred = mask.copy()
    pred[40:60, 40:60] = True  # a false region: a negative click there
    x, y, label = train_nano.correction_click(pred, mask)
    assert label == 0 and 40 <= x < 60 and 40 <= y < 60
    assert train_nano.correction_click(mask, mask) is None


def test_movies_are_preprocessed_as_at_inference(train_nano):
    from napari_sam2.frames import FrameSource

    for seed in range(6):  # some at 256², some made at another size and resized
        movie = train_nano.make_movie(seed, 256, n_frames=4)
        assert movie.frames.shape == (4, 3, 256, 256) and movie.labels.shape == (4, 256, 256)
        source = FrameSource(movie.image, 256, read_ahead=0)
        for t in range(4):  # same range, resize and normalisation as at inference (percentiles of a subsample)
            assert torch.allclose(source.model_input(t), movie.frames[t], atol=0.05)
    clip = train_nano.sample_clip(movie, np.random.default_rng(1), 3)
    assert clip.masks[0].sum() >= 12 and clip.frames.shape == (3, 3, 256, 256)


def test_local_contrast_movies_are_what_a_local_contrast_session_sees(train_nano):
    from napari_sam2.frames import FrameSource

    for seed, make in [(3, train_nano.make_movie), (5, train_nano.make_hard_movie)]:
        movie = make(seed, 256, n_frames=4, contrast="local")
        plain = make(seed, 256, n_frames=4)
        assert np.array_equal(movie.labels, plain.labels)  # the same movie, only its input step differs
        source = FrameSource(movie.image, 256, read_ahead=0, contrast="local")
        for t in range(4):  # same fitted window, range, resize and normalisation as at inference
            assert torch.allclose(source.model_input(t), movie.frames[t], atol=0.05)
        assert not torch.allclose(plain.frames, movie.frames, atol=0.05)
    # "both": about half the movies local; each movie's content is the one the plain run has
    picks = [train_nano.movie_for(7, k, 0.0, 256, contrast="both") for k in range(6)]
    plain = [train_nano.movie_for(7, k, 0.0, 256) for k in range(6)]
    local = [not torch.equal(a.frames, b.frames) for a, b in zip(picks, plain)]
    assert 0 < sum(local) < 6 and all(np.array_equal(a.image, b.image) for a, b in zip(picks, plain))
    with pytest.raises(ValueError, match="global' or 'local"):
        train_nano.model_frames(plain[0].image, 256, "both")


def test_a_leg_on_local_contrast_movies_records_its_step(train_nano, tmp_path):
    assert train_nano.main(["--out", str(tmp_path), "--steps", "1", "--contrast", "both", *SMALL]) == 0
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["step"] == 1 and state["args"]["contrast"] == "both"


NEW = ["--hard-fraction", "1", "--hard-negatives", "1", "--ambiguous", "1", "--multimask-min", "--iou-weight", "3"]


def test_fine_tune_from_shipped_weights_with_hard_data_resumes_exactly(train_nano, tmp_path):
    shipped = ROOT / "src" / "napari_sam2" / "weights" / "nano_fluo.pt"
    small = ["--clips", "1", "--frames", "2", "--val-every", "0", "--save-every", "1", "--pool", "2", "--threads", "1"]
    common = ["--steps", "3", "--init", str(shipped), "--balanced-end", "0", *NEW, *small]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train_nano.main(["--out", str(straight), *common]) == 0
    assert train_nano.main(["--out", str(split), *common, "--until", "1"]) == 0
    assert train_nano.main(["--out", str(split), *common, "--resume"]) == 0
    a = torch.load(straight / "last.pt", weights_only=True)
    b = torch.load(split / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 3 and a["args"]["init"] == "nano_fluo.pt"
    start = torch.load(shipped, weights_only=True)["model"]
    assert not any(k.startswith("mask_quality.") for k in a["model"])  # a head of --init is left out
    assert any(not torch.equal(a["model"][k], start[k]) for k in a["model"]), "fine-tuning changed nothing"
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), "stop + resume differs"
    log = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    assert np.isfinite(log[-1]["iou_err"])  # calibration is on the learning curve
    assert train_nano.LOSS_WEIGHTS["iou"] == 3.0
    train_nano.LOSS_WEIGHTS["iou"] = 1.0  # module state: later tests in this process use the default


def test_hard_negatives_pick_the_dim_nucleus_beside_a_bright_one(train_nano):
    labels = torch.zeros(64, 64, dtype=torch.int64)
    labels[10:20, 10:20] = 1  # dim, a bright neighbour at 12 px
    labels[10:20, 22:32] = 2  # bright
    labels[45:55, 45:55] = 3  # dim, alone
    brightness = {1: 0.2, 2: 1.0, 3: 0.2}
    assert train_nano.hard_negative_targets(labels, [1, 2, 3], brightness) == [1]
    assert train_nano.hard_negative_targets(labels, [1, 2, 3], {}) == []


def test_ambiguous_click_sits_on_the_shared_border_and_asks_for_nucleus_pair_or_cluster(train_nano):
    labels = np.zeros((64, 64), np.int64)
    labels[10:30, 10:30], labels[10:30, 30:50], labels[30:45, 35:50] = 1, 2, 3  # a chain of three
    labels[50:60, 5:15] = 4  # alone
    seen = set()
    for seed in range(30):
        (x, y), target = train_nano.ambiguous_click(labels, 1, np.random.default_rng(seed))
        assert labels[int(y), int(x)] == 1 and 27 <= x < 30  # on nucleus 1, at its border with 2
        ids = tuple(sorted(set(np.unique(labels[target])) - {0}))
        assert (labels[target] > 0).all() and target[labels == 1].all()
        seen.add(ids)
    assert seen == {(1,), (1, 2), (1, 2, 3)}
    assert train_nano.ambiguous_click(labels, 4, np.random.default_rng(0)) is None


def test_cluster_candidates_target_the_nucleus_the_pair_and_the_cluster(train_nano):
    """--cluster-candidates: a click among touching nuclei asks candidate 1 for the nucleus, 2 for it with the
    touching neighbour nearest the click, 3 for the touching cluster; an isolated nucleus is all three."""
    labels = np.zeros((64, 64), np.int64)
    labels[10:30, 10:30], labels[10:30, 30:50], labels[30:45, 35:50] = 1, 2, 3  # a chain of three
    labels[10:30, 8:10] = 5  # a thin neighbour of 1 on its left
    labels[50:60, 5:15] = 4  # alone
    targets, clicks = [1, 1, 2, 4], [(20.0, 28.0), (20.0, 11.0), (20.0, 40.0), (55.0, 10.0)]
    got = train_nano.touching_targets(labels, targets, clicks)
    assert got["partner"].tolist() == [2, 5, 3, -1]  # the touching neighbour nearest each click (y, x)
    assert [sorted(set(row.tolist()) - {-1}) for row in got["cluster"]] == [[1, 2, 3, 5]] * 3 + [[4]]
    data = {"target": torch.tensor(targets), **got}
    truth = torch.from_numpy(labels)[None].expand(4, -1, -1)
    wanted = train_nano.candidate_targets(data, torch.arange(4), truth).bool()
    assert wanted.shape == (4, 3, 64, 64)
    for row, (obj, partner) in enumerate(zip(targets, [2, 5, 3, None])):
        assert torch.equal(wanted[row, 0], truth[row] == obj)
        pair = (truth[row] == obj) | (truth[row] == partner) if partner else truth[row] == obj
        assert torch.equal(wanted[row, 1], pair)
    assert torch.equal(wanted[0, 2], truth[0] > 0) is False  # nucleus 4 is not in 1's cluster
    assert torch.equal(wanted[0, 2], torch.from_numpy(np.isin(labels, [1, 2, 3, 5])))
    assert torch.equal(wanted[3, 2], truth[3] == 4)

    # bench_hard's ambiguity measure on them: the targets themselves offer the nucleus and the pair and differ
    pairwise, offered = train_nano.ambiguity(wanted, wanted)
    assert offered.tolist() == [True, True, True, True] and pairwise[3] == 1 and (pairwise[:3] < 0.8).all()
    # the nucleus three times: one mask; it passes for the pair only beside a thin neighbour (IoU 400 / 440)
    pairwise, offered = train_nano.ambiguity(wanted[:, :1].expand(-1, 3, -1, -1), wanted)
    assert pairwise.tolist() == [1.0] * 4 and offered.tolist() == [False, True, False, True]


@pytest.mark.parametrize("odds", [None, 1.0])
def test_border_clicks_sit_on_a_shared_border_and_name_the_neighbour(train_nano, odds):
    """--border-clicks: each touching object of a view is also clicked on its border with a neighbour (the tuning
    set: at the middle of its border with its first neighbour, as bench_hard's probe clicks), flagged "border", its
    partner the neighbour beside the click; the other clicks are as before."""
    from napari_sam2.synthetic_hard import hard_condition

    model = load_model("nano-fluo", device="cpu")
    stack = hard_condition("mitotic_neighbours", 3_000_021, n=2)
    truth = stack.labels[0]
    plain = train_nano.condition_clicks(model, stack.image, 0, truth, 1, np.random.default_rng(0), 0.0, inputs=True)
    got = train_nano.condition_clicks(
        model, stack.image, 0, truth, 1, np.random.default_rng(0), 0.0, inputs=True, border=odds
    )
    n = len(plain["target"])
    touching = [int(t) for t in plain["target"] if train_nano.touching_neighbours(truth, int(t))]
    assert touching, "the frame must hold touching nuclei"
    assert not plain["border"].any() and got["border"][:n].sum() == 0
    assert torch.equal(got["target"][:n], plain["target"]) and torch.equal(got["coords"][:n], plain["coords"])
    assert got["target"][n:].tolist() == touching and got["border"][n:].all()
    scale = np.array(truth.shape, float) / model.image_size
    for obj, partner, (x, y) in zip(got["target"][n:], got["partner"][n:], got["coords"][n:, 0].numpy()):
        row, col = int(np.rint(y * scale[0])), int(np.rint(x * scale[1]))
        near = ndimage.binary_dilation(truth == int(partner), iterations=3)
        assert int(partner) in train_nano.touching_neighbours(truth, int(obj)) and near[row, col]
        if odds is None:
            assert int(partner) == train_nano.touching_neighbours(truth, int(obj))[0]

    # --cluster-candidates: the border clicks' second and third candidates answer for the pair and the cluster, so
    # their loss differs from all three on the nucleus; an isolated nucleus is the same target three times
    got["frame"] = got["group"]
    alone = [i for i, p in enumerate(got["partner"].tolist()) if p < 0]
    for rows, same in ((torch.arange(n, len(got["target"])), False), (torch.tensor(alone), True)):
        if len(rows):
            decoder = model.click_decoder
            nested = train_nano.click_decoder_loss(model, decoder, got, rows, False, cluster_candidates=True)
            nucleus = train_nano.click_decoder_loss(model, decoder, got, rows, True)
            assert torch.isclose(nested[0], nucleus[0]) == same


def test_multimask_min_trains_one_candidate_mask_and_every_iou(train_nano):
    model = train_nano.build_model(train_nano.NANO_FLUO)
    size = model.image_size
    feats = model.encode_image(torch.zeros(1, 3, size, size))
    coords = torch.tensor([[[100.0, 100.0]]])
    out = model.decode(model.image_embedding(feats), feats.high_res, coords, torch.ones(1, 1, dtype=torch.int32),
                       multimask=True, object_gate=False)  # fmt: skip
    target = torch.zeros(size, size, dtype=torch.bool)
    target[90:110, 90:110] = True
    grads = {}
    for flag in (False, True):
        stats = {"presence": [], "presence_acc": [], "iou": []}
        logits = out.multi_logits.detach().requires_grad_(True)
        ious = out.multi_ious.detach().requires_grad_(True)
        one = train_nano.dataclasses.replace(out, multi_logits=logits, multi_ious=ious, object_score=out.object_score)
        train_nano.frame_loss(model, one, target, stats, multimask_min=flag).backward(retain_graph=True)
        grads[flag] = (logits.grad.abs().flatten(2).sum(-1)[0], ious.grad[0])
    assert (grads[False][0] > 0).all()  # all three candidate masks trained on the same target
    assert int((grads[True][0] > 0).sum()) == 1  # only the best one
    assert (grads[True][1] != 0).all()  # but every candidate's IoU prediction is trained
    assert len(stats["iou_err"]) == 1 and 0 <= stats["iou_err"][0] <= 1


def test_nucleus_first_keeps_candidate_0_on_the_clicked_nucleus_when_the_target_is_the_pair(train_nano):
    """--nucleus-first: an ambiguous click asking for the pair trains candidate 0 on the clicked nucleus alone (its
    logits over the neighbour are pushed down) and one other candidate on the pair; every IoU is trained."""
    model = train_nano.build_model(train_nano.NANO_FLUO)
    size = model.image_size
    feats = model.encode_image(torch.zeros(1, 3, size, size))
    coords = torch.tensor([[[108.0, 100.0]]])  # (x, y) on the clicked nucleus's side of the shared border
    out = model.decode(model.image_embedding(feats), feats.high_res, coords, torch.ones(1, 1, dtype=torch.int32),
                       multimask=True, object_gate=False)  # fmt: skip
    nucleus = torch.zeros(size, size, dtype=torch.bool)
    nucleus[88:112, 88:112] = True
    pair = nucleus.clone()
    pair[88:112, 112:136] = True  # the touching neighbour, right of it
    stats = {"presence": [], "presence_acc": [], "iou": []}
    logits = out.multi_logits.detach().requires_grad_(True)
    ious = out.multi_ious.detach().requires_grad_(True)
    score = out.object_score.detach()
    one = train_nano.dataclasses.replace(out, multi_logits=logits, multi_ious=ious, object_score=score)
    train_nano.frame_loss(model, one, pair, stats, multimask_min=True, nucleus=nucleus).backward()
    trained = logits.grad.abs().flatten(2).sum(-1)[0]
    assert trained[0] > 0 and int((trained[1:] > 0).sum()) == 1  # candidate 0, and the best of the other two
    stride = size // logits.shape[-1]
    neighbour = logits.grad[0, 0, 92 // stride : 108 // stride, 116 // stride : 132 // stride]
    assert neighbour.sum() > 0  # descending lowers candidate 0 over the neighbour: it is not the pair
    assert (ious.grad[0] != 0).all()
    # without the nucleus the plain rule trains the one best candidate, whichever it is
    plain = out.multi_logits.detach().requires_grad_(True)
    two = train_nano.dataclasses.replace(out, multi_logits=plain, multi_ious=ious.detach(), object_score=score)
    train_nano.frame_loss(model, two, pair, stats, multimask_min=True).backward()
    assert int((plain.grad.abs().flatten(2).sum(-1)[0] > 0).sum()) == 1


def test_click_batches_with_nucleus_first_train_on_the_nucleus_under_an_ambiguous_click(train_nano, monkeypatch):
    model = train_nano.build_model(train_nano.NANO_FLUO)
    size = model.image_size
    labels = torch.zeros(1, size, size, dtype=torch.int64)
    labels[0, 100:140, 80:120], labels[0, 100:140, 120:160] = 1, 2  # a touching pair: every click is ambiguous
    movie = train_nano.Movie(torch.zeros(1, 3, size, size), labels, (), np.zeros((1, size, size)))
    seen = []
    real = train_nano.nucleus_candidate_loss

    def spy(logits, nucleus, balanced_weight=0.0):
        seen.append(nucleus.cpu().numpy())
        return real(logits, nucleus, balanced_weight)

    monkeypatch.setattr(train_nano, "nucleus_candidate_loss", spy)
    rng = np.random.default_rng(3)
    stats = {}
    loss = train_nano.click_batch_loss(model, movie, rng, stats, 6, odds=(0.0, 0.0, 0.0, 1.0), nucleus_first=True)
    loss.backward()
    assert torch.isfinite(loss) and len(seen) == 6
    for nucleus in seen:  # one whole nucleus of the (turned, flipped) frame, never the pair
        assert nucleus.sum() == 40 * 40 and ndimage.label(nucleus)[1] == 1
    rng = np.random.default_rng(3)  # the same clicks without the option: no nucleus loss at all
    seen.clear()
    train_nano.click_batch_loss(model, movie, rng, {}, 6, odds=(0.0, 0.0, 0.0, 1.0))
    assert seen == []


def test_window_spec_widens_the_trunk_windows_of_an_initialised_network_and_exports_them(train_nano, tmp_path):
    """--window-spec with --init: the first stage's window embedding is tiled into the wider window (each token keeps
    its position signal), one step trains, and the exported checkpoint loads with the wider windows."""
    shipped = ROOT / "src" / "napari_sam2" / "weights" / "nano_fluo.pt"
    out = tmp_path / "wide"
    args = [
        "--out",
        str(out),
        "--init",
        str(shipped),
        "--window-spec",
        "16",
        "4",
        "8",
        "8",
        "--steps",
        "1",
        "--clips",
        "1",
        "--frames",
        "2",
        "--val-every",
        "0",
        "--save-every",
        "1",
        "--pool",
        "1",
        "--threads",
        "1",
    ]
    assert train_nano.main(args) == 0
    state = torch.load(out / "last.pt", weights_only=True)
    assert tuple(state["config"]["trunk"]["window_spec"]) == (16, 4, 8, 8)
    start = torch.load(shipped, weights_only=True)["model"]["image_encoder.trunk.pos_embed_window"]
    assert start.shape[-1] == 8 and state["model"]["image_encoder.trunk.pos_embed_window"].shape[-1] == 16
    tiled = train_nano.tile_window_embedding(
        {"image_encoder.trunk.pos_embed_window": start}, train_nano.with_windows(train_nano.NANO_FLUO, (16, 4, 8, 8))
    )
    assert torch.equal(tiled["image_encoder.trunk.pos_embed_window"][..., 8:, 8:], start)
    assert train_nano.main(["--out", str(out), "--export", str(tmp_path / "wide.pt")]) == 0
    model = load_model(tmp_path / "wide.pt", device="cpu")
    assert model.cfg.trunk.window_spec == (16, 4, 8, 8)
    with pytest.raises(SystemExit, match="multiple"):
        train_nano.tile_window_embedding(
            {"image_encoder.trunk.pos_embed_window": start},
            train_nano.with_windows(train_nano.NANO_FLUO, (12, 4, 8, 8)),
        )


def test_iou_head_only_stage_changes_only_the_iou_head(train_nano, tmp_path):
    """The calibration stage (--iou-head-only): masks, scores and pointers of the network stay exactly as they were;
    only the IoU prediction head (which picks among the three candidates) learns."""
    shipped = ROOT / "src" / "napari_sam2" / "weights" / "nano_fluo.pt"
    small = ["--clips", "2", "--frames", "2", "--val-every", "0", "--save-every", "2", "--pool", "2", "--threads", "1"]
    out = tmp_path / "head"
    args = ["--out", str(out), "--steps", "2", "--init", str(shipped), "--iou-head-only", "--lr", "1e-2",
            "--warmup", "1", "--hard-fraction", "0.5", *small]  # fmt: skip
    assert train_nano.main(args) == 0
    start = torch.load(shipped, weights_only=True)["model"]
    after = torch.load(out / "last.pt", weights_only=True)["model"]
    changed = {k for k in after if not torch.equal(start[k], after[k])}
    assert changed and all(k.startswith("sam_mask_decoder.iou_prediction_head.") for k in changed), changed
    assert train_nano.LOSS_WEIGHTS["focal"] == 0.0  # this run trained the IoU loss alone
    assert train_nano.main(["--out", str(tmp_path / "x"), "--steps", "1", *small]) == 0
    assert train_nano.LOSS_WEIGHTS == train_nano.SAM2_LOSS_WEIGHTS  # the next run has SAM 2's weights again


def test_calibration_clicks_differ_in_kind_and_sit_where_they_say(train_nano):
    labels = np.zeros((64, 64), np.int64)
    labels[10:30, 10:30], labels[10:30, 30:50] = 1, 2  # a touching pair, 2 much brighter than 1
    labels[45:60, 45:60] = 3  # alone
    rng = np.random.default_rng(0)
    clicks = train_nano.calibration_clicks(labels, {1: 0.1, 2: 1.0, 3: 0.5}, rng, 200)
    kinds = {kind for kind, _, _ in clicks}
    assert kinds == set(train_nano.CLICK_KINDS)
    for kind, (x, y), target in clicks:
        obj = labels[int(y), int(x)]
        assert obj > 0 and target[int(y), int(x)]  # every click lies on its target
        depth = ndimage.distance_transform_edt(labels == obj)
        if kind == "dim":
            assert obj == 1  # the dim nucleus beside the bright one
        if kind == "offcentre":
            assert depth[int(y), int(x)] < 0.4 * depth.max()  # near the edge
        if kind in ("deep", "dim"):
            assert depth[int(y), int(x)] >= 0.4 * depth.max() and (target == (labels == obj)).all()
    assert train_nano.calibration_clicks(np.zeros((8, 8), np.int64), {}, rng, 3) == []
    only_dim = train_nano.calibration_clicks(labels, {1: 0.1, 2: 1.0, 3: 0.5}, rng, 20, odds=(0, 0, 1, 0))
    assert {kind for kind, _, _ in only_dim} == {"dim"}  # --click-odds


def test_decoder_only_calibration_leg_trains_the_decoder_alone_and_logs_both_passes_calibration(train_nano, tmp_path):
    shipped = ROOT / "src" / "napari_sam2" / "weights" / "nano_fluo.pt"
    small = ["--clips", "1", "--frames", "2", "--val-every", "0", "--save-every", "2", "--pool", "2", "--threads", "1"]
    out = tmp_path / "dec"
    args = ["--out", str(out), "--steps", "2", "--init", str(shipped), "--decoder-only", "--click-images", "1",
            "--clicks-per-image", "4", "--refine-pass", "--iou-weight", "10", "--lr", "1e-3", "--warmup", "1", "--hard-fraction", "0.5",
            "--balanced-end", "0", "--click-odds", "1", "0", "1", "0", *small]  # fmt: skip
    assert train_nano.main(args) == 0
    assert torch.load(out / "last.pt", weights_only=True)["args"]["click_odds"] == [1, 0, 1, 0]  # lists recorded too
    start = torch.load(shipped, weights_only=True)["model"]
    after = torch.load(out / "last.pt", weights_only=True)["model"]
    changed = {k for k in after if not torch.equal(start[k], after[k])}
    assert changed and all(k.startswith("sam_mask_decoder.") for k in changed), changed
    assert any(k.startswith("sam_mask_decoder.transformer.") for k in changed)  # not only the head
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert 0 <= log[-1]["click_iou"] <= 1 and 0 <= log[-1]["click_iou_err"] <= 1
    assert 0 <= log[-1]["refine_iou"] <= 1 and 0 <= log[-1]["refine_iou_err"] <= 1  # the second pass trained too
    train_nano.LOSS_WEIGHTS["iou"] = 1.0  # module state: later tests in this process use the default


def test_tracked_frames_can_train_all_candidates_while_the_prompt_takes_the_best(train_nano, monkeypatch):
    model = load_model("nano-fluo", device="cpu")
    movie = train_nano.make_movie(5, model.image_size, n_frames=4)
    clip = train_nano.sample_clip(movie, np.random.default_rng(0), 3)
    rules = []
    real = train_nano.frame_loss

    def spy(model, out, target, stats, balanced_weight=0.0, multimask_min=False, nucleus=None):
        rules.append(multimask_min)  # the rule each frame's loss was given
        return real(model, out, target, stats, balanced_weight, multimask_min, nucleus)

    monkeypatch.setattr(train_nano, "frame_loss", spy)
    stats = {"presence": [], "presence_acc": [], "iou": [], "iou_err": []}
    for tracked, expected in ((None, [True, True, True]), (False, [True, False, False])):
        rules.clear()
        train_nano.run_clip(model, clip, np.random.default_rng(1), stats, 8, "click", 0.0, True, False, tracked)
        assert rules == expected


def test_quality_head_leg_trains_only_the_head_resumes_exactly_and_exports(train_nano, tmp_path):
    shipped = ROOT / "src" / "napari_sam2" / "weights" / "nano_fluo.pt"
    args = ["--quality-head", "--init", str(shipped), "--steps", "2", "--click-images", "1", "--clicks-per-image",
            "4", "--threads", "1", "--hard-fraction", "0.5", "--val-every", "0", "--save-every", "1", "--seed", "7",
            "--warmup", "1"]  # fmt: skip
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train_nano.main(["--out", str(straight), *args]) == 0
    assert train_nano.main(["--out", str(split), *args, "--until", "1"]) == 0
    assert torch.load(split / "last.pt", weights_only=True)["step"] == 1
    assert train_nano.main(["--out", str(split), *args, "--resume"]) == 0
    a = torch.load(straight / "last.pt", weights_only=True)["model"]
    b = torch.load(split / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "stop + resume changed the head"
    init = torch.load(shipped, weights_only=True)["model"]
    head = sorted(k for k in a if k.startswith("mask_quality."))
    assert head and set(a) - set(head) == {k for k in init if not k.startswith("mask_quality.")}
    assert all(torch.equal(a[k], init[k]) for k in a if k not in head), (
        "a network weight moved: only the head may learn"
    )
    assert any(k not in init or not torch.equal(a[k], init[k]) for k in head), "the head did not learn"
    log = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 2 and np.isfinite(log[-1]["loss"])

    target = tmp_path / "with_head.pt"
    assert train_nano.main(["--out", str(straight), "--export", str(target)]) == 0
    model = load_model(target, device="cpu")
    assert model.mask_quality is not None
    record = json.loads(target.with_suffix(".json").read_text())
    assert record["params"] == sum(p.numel() for p in model.parameters())


def test_quality_init_takes_the_head_of_another_checkpoint_and_the_network_of_init(train_nano, tmp_path):
    shipped = ROOT / "src" / "napari_sam2" / "weights" / "nano_fluo.pt"
    state = torch.load(shipped, weights_only=True)
    network = {k: v.clone() for k, v in state["model"].items() if not k.startswith("mask_quality.")}
    moved = next(k for k in network if network[k].is_floating_point())
    network[moved] += 0.5  # a retrained network: its weights differ from the head donor's network
    bare = tmp_path / "network_only.pt"
    torch.save({"model": network, "config": state["config"]}, bare)
    args = ["--quality-head", "--init", str(bare), "--steps", "1", "--click-images", "1", "--clicks-per-image", "4",
            "--threads", "1", "--val-every", "0", "--seed", "7", "--warmup", "0", "--lr", "0"]  # fmt: skip
    assert train_nano.main(["--out", str(tmp_path / "a"), *args, "--quality-init", str(shipped)]) == 0
    got = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    head = [k for k in state["model"] if k.startswith("mask_quality.")]
    assert head and all(torch.equal(got[k], state["model"][k]) for k in head), "the head is not the donor's (lr 0)"
    assert all(torch.equal(got[k], network[k]) for k in network), "the network is not --init's"
    with pytest.raises(SystemExit, match="carries no mask-quality head"):
        train_nano.main(["--out", str(tmp_path / "b"), *args, "--quality-init", str(bare)])


def test_touching_validation_measures_merged_neighbours(train_nano):
    """validate_touching on the shipped network (v1: 14 % of the clicks merge a neighbour over three movies, masks the
    nuclei's size): a share and a median area ratio, per contrast step, from movies outside the benchmarks' seeds."""
    nano = load_model(ROOT / "src" / "napari_sam2" / "weights" / "nano_fluo.pt", device="cpu")
    got = train_nano.validate_touching(nano, nano.image_size, n_movies=1, frames=(0, 39))
    assert set(got) == {"val_touching_merge", "val_touching_area"}
    assert 0.0 <= got["val_touching_merge"] < 0.3 and 0.85 < got["val_touching_area"] < 1.2, got
    local = train_nano.validate_touching(nano, nano.image_size, "local", n_movies=1, frames=(0,))
    assert set(local) == {"val_touching_merge_local", "val_touching_area_local"}
    assert train_nano.VAL_LINEAGE_SEED not in range(4_000_000, 4_100_003)  # not a bench_auto movie


def test_lineage_movies_join_the_mix_only_when_asked(train_nano):
    """--lineage-fraction: a movie that is not hard may be a lineage movie (more nuclei appear: divisions, arrivals);
    at 0 every movie is the one make_movie always made (its own random draw)."""
    plain = train_nano.movie_for(5, 3, 0.0, 256)
    same = train_nano.make_movie(50_000_003, 256)
    assert torch.equal(plain.frames, same.frames) and torch.equal(plain.labels, same.labels)
    ids = []
    for k in range(4):
        before = train_nano.movie_for(5, k, 0.0, 256)
        after = train_nano.movie_for(5, k, 0.0, 256, lineage_fraction=1.0)
        ids.append((len(torch.unique(before.labels)), len(torch.unique(after.labels))))
    assert all(b <= a for b, a in ids) and any(b < a for b, a in ids), ids


def test_quality_targets_are_each_candidates_iou(train_nano):
    labels = torch.zeros(32, 32, dtype=torch.int64)
    labels[2:10, 2:10] = 1
    labels[20:30, 20:30] = 2
    masks = torch.zeros(3, 32, 32, dtype=torch.bool)
    masks[0, 2:10, 2:10] = True  # object 1 exactly
    masks[1, 20:25, 20:30] = True  # half of object 2
    ious = train_nano.candidate_ious(masks, labels == 1, labels)
    assert ious.tolist() == [1.0, 0.0, 0.0]
    grid = train_nano.candidate_ious(masks, None, labels)  # a grid click: each candidate's best object
    assert grid.tolist() == [1.0, 0.5, 0.0]
    rng = np.random.default_rng(0)
    clicks = train_nano.quality_clicks(labels.numpy(), {}, rng, 40, [0.5, 0, 0, 0, 0.5])
    kinds = {c[0] for c in clicks}
    assert kinds == {"deep", "grid"} and len(clicks) == 40
    assert all(c[2] is None for c in clicks if c[0] == "grid")


@pytest.mark.parametrize("contrast, rule", [("global", "off"), ("local", "off"), ("global", "fluorescence")])
def test_condition_clicks_score_the_candidate_a_fresh_session_returns(train_nano, contrast, rule):
    """--quality-data conditions scores clicks at model level; the chosen candidate's IoU must be the one a user's
    click through TrackingSession gets (bench_hard's measure), or the head learns another target. With the click rule
    too: each click decoded from the frame raised for it, the clicked part kept."""
    from napari_sam2.click_rule import CLICK_RULES
    from napari_sam2.sample_data import nuclei_timelapse
    from napari_sam2.session import TrackingSession

    model = load_model("nano-fluo", device="cpu")
    movie = nuclei_timelapse(n_frames=1, n_nuclei=6, seed=123)
    truth = movie.labels[0]
    got = train_nano.condition_clicks(
        model, movie.image, 0, truth, 3, np.random.default_rng(0), 0.0, contrast=contrast, rule=CLICK_RULES[rule]
    )
    chosen = got["actual"][torch.arange(len(got["token"])), got["token"].argmax(1)]
    objs = [int(o) for o in np.unique(truth)[1:] if (truth == o).sum() >= 20]
    assert len(objs) == len(chosen) >= 3 and got["deep"].all() and bool(got["local"].all()) == (contrast == "local")
    if rule == "fluorescence":  # the rule raised some of these clicks: each such click has a frame of its own
        assert len(got["s0"]) > 1 and len(got["group"]) == len(chosen)
    with TrackingSession(model, movie.image, contrast=contrast, click_rule=rule) as session:
        for obj, expected in zip(objs, chosen.tolist()):
            result = session.add_prompt(0, obj, points=[train_nano.deepest_click(truth == obj)], labels=[1])
            mask = result.masks[result.obj_ids.index(obj)]
            actual = (mask & (truth == obj)).sum() / (mask | (truth == obj)).sum()
            assert actual == pytest.approx(expected, abs=1e-6)
            session.remove_object(obj)


def test_quality_head_on_conditions_resumes_exactly_and_logs_the_tuning_calibration(train_nano, tmp_path):
    shipped = ROOT / "src" / "napari_sam2" / "weights" / "nano_fluo.pt"
    args = ["--quality-head", "--quality-data", "conditions", "--quality-groups", "1", "--init", str(shipped),
            "--steps", "3", "--clicks-per-image", "64", "--threads", "1", "--save-every", "1", "--seed", "7",
            "--warmup", "1", "--val-every", "3"]  # fmt: skip
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train_nano.main(["--out", str(straight), *args, "--quality-tune-groups", "1"]) == 0
    assert train_nano.main(["--out", str(split), *args, "--quality-tune-groups", "0", "--until", "2"]) == 0
    assert train_nano.main(["--out", str(split), *args, "--quality-tune-groups", "0", "--resume"]) == 0
    a = torch.load(straight / "last.pt", weights_only=True)["model"]
    b = torch.load(split / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a), "stop + resume changed the head"
    init = torch.load(shipped, weights_only=True)["model"]
    head = [k for k in a if k.startswith("mask_quality.")]
    assert head and all(torch.equal(a[k], init[k]) for k in a if k not in head), "only the head may learn"
    assert any(k not in init or not torch.equal(a[k], init[k]) for k in head), "the head did not learn"
    last = json.loads((straight / "log.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 3 and 0 <= last["tune_err"] <= 1 and last["tune_clicks"] > 20
    assert {"tune_err_brightness_spread", "tune_err_large_anisotropic", "tune_err_issue7"} <= set(last)


def _part_leg_straight_and_resumed(train_nano, tmp_path, args, init_path, prefix):
    """Run a leg that trains one optional part (keys `prefix`) straight through, and stopped at step 2 then resumed:
    both end with the same weights, the part's keys are the only ones added to --init's, and no weight of --init
    moved → (the straight run's state dict, its folder)."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train_nano.main(["--out", str(straight), *args]) == 0
    assert train_nano.main(["--out", str(split), *args, "--until", "2"]) == 0
    assert train_nano.main(["--out", str(split), *args, "--resume"]) == 0
    a = torch.load(straight / "last.pt", weights_only=True)["model"]
    b = torch.load(split / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"stop + resume changed {prefix}*"
    init = torch.load(init_path, weights_only=True)["model"]
    own = [k for k in a if k.startswith(prefix)]
    assert own and set(a) - set(own) == set(init)
    assert all(torch.equal(a[k], init[k]) for k in init), f"a weight outside {prefix}* moved"
    return a, straight


def test_click_decoder_leg_trains_only_the_click_decoder_resumes_exactly_and_exports(train_nano, tmp_path):
    """--click-decoder: the click set is built once (--click-data), the leg stops and resumes to the same weights,
    only click_decoder.* learn (the shared decoder, the encoder and the head stay --init's), and the exported file
    loads with its click decoder."""
    state = torch.load(ROOT / "src" / "napari_sam2" / "weights" / "nano_fluo.pt", weights_only=True)
    state["model"] = {k: v for k, v in state["model"].items() if not k.startswith("click_decoder.")}
    shipped = tmp_path / "without_click_decoder.pt"  # (the shipped file carries one: a leg from it trains on it)
    torch.save(state, shipped)
    args = ["--click-decoder", "--init", str(shipped), "--click-data", str(tmp_path / "clicks.pt"), "--quality-groups",
            "1", "--quality-tune-groups", "1", "--quality-click-rule", "fluorescence", "--steps", "3",
            "--clicks-per-image", "16", "--threads", "1", "--save-every", "1", "--seed", "7", "--warmup", "1",
            "--val-every", "3", "--all-candidates", "--balance-conditions"]  # fmt: skip
    a, straight = _part_leg_straight_and_resumed(train_nano, tmp_path, args, shipped, "click_decoder.")
    assert (tmp_path / "clicks.pt").exists()
    own = [k for k in a if k.startswith("click_decoder.")]
    init = torch.load(shipped, weights_only=True)["model"]
    moved = [k for k in own if not torch.equal(a[k], init["sam_mask_decoder." + k[len("click_decoder.") :]])]
    assert moved, "the click decoder did not learn"
    log = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    assert log[0]["step"] == 0 and 0 <= log[0]["before_chosen"] <= 1  # the shared decoder's, before training
    assert log[-1]["step"] == 3 and 0 <= log[-1]["tune_chosen"] <= 1 and "tune_chosen_issue7" in log[-1]

    target = tmp_path / "with_click_decoder.pt"
    assert train_nano.main(["--out", str(straight), "--export", str(target)]) == 0
    model = load_model(target, device="cpu")
    assert model.click_decoder is not None and model.mask_quality is not None
    assert json.loads(target.with_suffix(".json").read_text())["params"] == sum(p.numel() for p in model.parameters())


def test_mask_refiner_leg_trains_only_the_refiner_resumes_exactly_and_exports(train_nano, tmp_path):
    """--mask-refiner: the leg reads the unrefined masks of the click set (with the frames they were decoded from),
    stops and resumes to the same weights, only mask_refiner.* learn, its tuning validation compares without / with
    the refiner, and the exported file loads with it."""
    state = torch.load(ROOT / "src" / "napari_sam2" / "weights" / "nano_fluo.pt", weights_only=True)
    state["model"] = {k: v for k, v in state["model"].items() if not k.startswith("mask_refiner.")}
    init_path = tmp_path / "without_refiner.pt"
    torch.save(state, init_path)
    args = ["--mask-refiner", "--init", str(init_path), "--click-data", str(tmp_path / "clicks.pt"), "--quality-groups",
            "1", "--quality-tune-groups", "1", "--quality-click-rule", "fluorescence", "--steps", "3",
            "--clicks-per-image", "8", "--threads", "1", "--save-every", "1", "--seed", "7", "--warmup", "1",
            "--val-every", "3", "--refiner-width", "8", "--refiner-depth", "3", "--lr", "1e-2"]  # fmt: skip
    a, straight = _part_leg_straight_and_resumed(train_nano, tmp_path, args, init_path, "mask_refiner.")
    data = torch.load(tmp_path / "clicks.pt", weights_only=True)["train"]
    assert data["grey"].shape[-2:] == (256, 256) and len(data["grey"]) == len(data["s0"])
    assert a["mask_refiner.out.weight"].abs().sum() > 0, "the refiner did not learn (its last layer starts at zero)"
    log = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    assert log[0]["step"] == 0 and log[0]["before"] == log[0]["after"]  # a new refiner changes nothing
    assert log[-1]["step"] == 3 and 0 <= log[-1]["tune_after"] <= 1 and "tune_after_issue7" in log[-1]

    target = tmp_path / "with_refiner.pt"
    assert train_nano.main(["--out", str(straight), "--export", str(target)]) == 0
    model = load_model(target, device="cpu")
    assert model.mask_refiner is not None and len(model.mask_refiner.layers) == 3
    assert json.loads(target.with_suffix(".json").read_text())["params"] == sum(p.numel() for p in model.parameters())

    # --head-from: the refiner's file with a head fitted elsewhere (a copy of the init with its head moved)
    other = torch.load(init_path, weights_only=True)
    other["model"] = {k: v + 0.5 if k.startswith("mask_quality.") else v for k, v in other["model"].items()}
    torch.save(other, tmp_path / "other_head.pt")
    combined = tmp_path / "combined.pt"
    assert train_nano.main(["--out", str(straight), "--export", str(combined), "--head-from",
                            str(tmp_path / "other_head.pt")]) == 0  # fmt: skip
    got = torch.load(combined, weights_only=True)["model"]
    assert all(torch.equal(got[k], other["model"][k] if k.startswith("mask_quality.") else a[k]) for k in a)
    assert "other_head.pt" in json.loads(combined.with_suffix(".json").read_text())["training"]["head_from"]


def test_balanced_rows_draw_every_condition_equally(train_nano):
    condition = torch.tensor([0] * 7 + [1] * 2 + [3] * 3)
    rows = train_nano.balanced_rows(condition)
    assert torch.bincount(condition[rows]).tolist() == [7, 7, 0, 7]
    assert set(rows.tolist()) == set(range(len(condition)))  # every click is used
