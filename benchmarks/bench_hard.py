"""nano-fluo (or any model) on the hard synthetic conditions of issue 16, and how well its IoU head is calibrated.

    python benchmarks/bench_hard.py                          # the built-in nano-fluo, 3 seeds per condition
    python benchmarks/bench_hard.py --model PATH.pt --seeds 2 --json out.json
    python benchmarks/bench_hard.py --model runs/leg.pt --defaults-of nano-fluo   # a training candidate, run as shipped

A checkpoint file the registry does not know (a training leg's export) runs with an unknown model's defaults: the
click rule off and global contrast. `--defaults-of NAME` measures it under registry model NAME's (its contrast, its
z-stream contrast, its click rule), as it would run were it shipped as NAME.

Held-out data: `napari_sam2.synthetic_hard.hard_condition` stacks with seeds from 4,000,000 up (training draws
`random_hard_stack` movies seeded --seed × 10,000,000 + k, never these; see model/train_nano.py), 16 frames / slices of 256² (the model's input
size: no resizing), plus the issue-7 sample movies (`nuclei_timelapse`, seeds from 4,900,000) for calibration on
the old data. Everything but the multimask probe runs through the public `TrackingSession`, as a user's click does.

Measured per condition (bars of issue 16 in brackets):
  click           one click per object (deepest interior pixel) on frame 0 (z-stacks: the middle slice), fresh
                  session: IoU of the returned mask with the truth; median over objects [≥ 0.80]. Also the median
                  over the dimmer half of the nuclei, over the dim nuclei touched by a mitotic figure, and the
                  share of masks that lie mostly (> 50 %) on another object ("wrong object").
  single image    the same clicks through the single-image API (`ImagePredictor` on the clicked frame alone, scaled
                  by its own percentiles): median IoU.
  zstack          large_anisotropic only: the middle-slice click propagated both ways through z; mean IoU over
                  (object, slice) with > 30 true pixels (the real-image z-stack measure), in a plain session
                  and as the faces run a z stream (`z_edge`: the axial edge rule and the click rule's through_z).
  calibration     mean |predicted IoU − actual IoU| of the returned masks over every click [≤ 0.10], and the
                  correlation of the two (an informative head correlates); the mean predicted IoU of masks that lie
                  mostly on another object against those on the clicked one (a head that knows predicts less).
  multimask       the decoder's three candidates for one click (model-level, at the model input): on an
                  ambiguous click — on the shared border of two touching nuclei — their mean pairwise IoU, and
                  how often one candidate is the nucleus and another the pair (IoU ≥ 0.7 each); the same pairwise
                  IoU on unambiguous clicks (deep inside an isolated nucleus) for comparison, and there, per
                  candidate (output token 1…3), the mean predicted and actual IoU and their correlation. Under
                  "returned", the same measures of the candidates as the single-image API returns them (the click
                  rule's steps and alternatives: `ClickRule.across_border`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from napari_sam2 import ImagePredictor, load_model
from napari_sam2.click_rule import CLICK_RULES, resolve_click_rule
from napari_sam2.frames import FrameSource
from napari_sam2.preprocess import CONTRASTS, resolve_contrast
from napari_sam2.sample_data import nuclei_timelapse
from napari_sam2.session import TrackingSession
from napari_sam2.synthetic_hard import HARD_CONDITIONS, hard_condition
from napari_sam2.volume import Z_EDGE

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_nano import deepest_point, defaults_of, iou  # the issue-7 bars' click and score; --defaults-of

HELD_OUT = 4_000_000
OLD_HELD_OUT = 4_900_000


def border_click(labels: np.ndarray, a: int, b: int) -> tuple[float, float] | None:
    """(y, x) on the shared border of objects a and b, at the middle of their contact (None: they do not touch)."""
    grown = ndimage.binary_dilation(labels == b)
    contact = np.argwhere((labels == a) & grown)
    if len(contact) < 3:
        return None
    centre = contact.mean(axis=0)
    y, x = contact[int(np.argmin(((contact - centre) ** 2).sum(1)))]
    return float(y), float(x)


def clicks_in_session(
    model, image: np.ndarray, frame: int, truth: np.ndarray, min_area: int = 20, contrast=None, click_rule=None
) -> list[dict]:
    """One fresh-session click per object on `frame`: [{obj, iou, predicted, on_other}] (truth [Y, X]); contrast,
    click_rule: the session's (None: the model's default)."""
    rows = []
    with TrackingSession(model, image, contrast=contrast, click_rule=click_rule) as session:
        for obj in (int(i) for i in np.unique(truth)[1:]):
            mask = truth == obj
            if mask.sum() < min_area:
                continue
            result = session.add_prompt(frame, obj, points=[deepest_point(mask)], labels=[1])
            k = result.obj_ids.index(obj)
            got = result.masks[k]
            on_other = float((truth[got] != obj).mean()) if got.any() else 0.0
            rows.append(
                {"obj": obj, "iou": iou(got, mask), "predicted": float(result.ious[k]), "on_other": on_other > 0.5}
            )
            session.remove_object(obj)  # each click alone, as on a fresh image
    return rows


def clicks_on_the_image_alone(model, image: np.ndarray, truth: np.ndarray, contrast=None, click_rule=None) -> list:
    """The IoU of one click per object (as `clicks_in_session` clicks) through `ImagePredictor` on the 2-D `image`
    alone: the mask it ranks best (a first click: the one a session keeps)."""
    predictor = ImagePredictor(model, click_rule=click_rule)
    predictor.set_image(image, contrast=contrast)
    ious = []
    for obj in (int(i) for i in np.unique(truth)[1:]):
        mask = truth == obj
        if mask.sum() >= 20:
            got = predictor.predict(points=[deepest_point(mask)])
            ious.append(iou(got.masks[got.best], mask))
    return ious


def returned_candidates_probe(
    model, image: np.ndarray, truth: np.ndarray, neighbours: dict, contrast=None, click_rule=None
) -> dict:
    """The three candidates as the single-image API returns them (`ImagePredictor.predict(multimask=True)` on the 2-D
    `image`: the click rule's steps, the refiner, and where the rule says so `across_border`'s alternatives), at the
    image's pixels: the same ambiguous (border) and unambiguous (isolated) clicks as `multimask_probe`."""
    predictor = ImagePredictor(model, click_rule=click_rule)
    predictor.set_image(image, contrast=contrast)
    present = {int(i) for i in np.unique(truth)[1:]}
    ambiguous, split = _border_clicks(truth, truth, neighbours, present, lambda *c: predictor.predict(points=[c]).masks)
    isolated = []
    touched = set(neighbours) | {b for v in neighbours.values() for b in v}
    for obj in sorted(present - touched):
        if (truth == obj).sum() >= 20:
            isolated.append(_pairwise(predictor.predict(points=[deepest_point(truth == obj)]).masks))
    return {"returned_ambiguous_pairwise": ambiguous, "returned_ambiguous_split": split,
            "returned_isolated_pairwise": isolated}  # fmt: skip


def _border_clicks(truth, scored_on, neighbours: dict, present: set, masks_at) -> tuple[list, list]:
    """One click per touching pair on its shared border (`border_click` on `truth` [Y, X], (y, x) image pixels) →
    (the mean pairwise IoU of the three masks `masks_at(y, x)` returns, whether one of them is either nucleus and
    another the pair, IoU ≥ 0.7 each against `scored_on`: the truth at the masks' size)."""
    ambiguous, split = [], []
    for a, b in touching_pairs(neighbours, present):
        click = border_click(truth, a, b)
        if click is None:
            continue
        masks = masks_at(*click)
        ambiguous.append(_pairwise(masks))
        one = max(max(iou(m, scored_on == a), iou(m, scored_on == b)) for m in masks)
        pair = max(iou(m, (scored_on == a) | (scored_on == b)) for m in masks)
        split.append(one >= 0.7 and pair >= 0.7)
    return ambiguous, split


def touching_pairs(neighbours: dict, present: set) -> list[tuple[int, int]]:
    """Each touching pair (a, b) of objects both present, once, in the order `neighbours` lists them."""
    pairs = []
    for a, others in neighbours.items():
        for b in others:
            if (b, a) not in pairs and a in present and b in present:
                pairs.append((a, b))
    return pairs


def _pairwise(masks) -> float:
    """The mean IoU of the pairs among three candidate masks."""
    return float(np.mean([iou(masks[i], masks[j]) for i in range(3) for j in range(i + 1, 3)]))


@torch.no_grad()
def multimask_probe(model, image: np.ndarray, frame: int, truth: np.ndarray, neighbours: dict, contrast=None) -> dict:
    """Three candidates of one click at the model input: ambiguous (border) vs unambiguous (isolated) clicks."""
    size = model.image_size
    source = FrameSource(image, size, read_ahead=0, contrast=resolve_contrast(contrast, model))
    feats = model.encode_image(source.model_input(frame)[None].to(model.device))
    embedding = model.image_embedding(feats)
    scale = size / np.array(truth.shape, float)
    small = (
        torch.nn.functional.interpolate(
            torch.from_numpy(truth.astype(np.int64))[None, None].float(), size=(size, size), mode="nearest"
        )[0, 0]
        .long()
        .numpy()
    )

    def candidates(y, x):
        coords = torch.tensor([[[x * scale[1], y * scale[0]]]], dtype=torch.float32, device=model.device)
        # a first click's candidates, as a session decodes it (the click decoder's, where the model carries one)
        out = model.decode_click(embedding, feats.high_res, coords, torch.ones(1, 1, dtype=torch.int32))
        masks = (model.upsample_logits(out.multi_logits)[0] > 0).cpu().numpy()
        return masks, out.reported_multi_ious[0].float().cpu().numpy()  # the mask-quality head's, where there is one

    isolated, cand_err, tokens = [], [], []
    present = {int(i) for i in np.unique(small)[1:]}
    ambiguous, split = _border_clicks(truth, small, neighbours, present, lambda y, x: candidates(y, x)[0])
    touched = set(neighbours) | {b for v in neighbours.values() for b in v}
    for obj in sorted(present - touched):
        mask = small == obj
        if mask.sum() < 20:
            continue
        masks, predicted = candidates(*[c / s for c, s in zip(deepest_point(mask), scale)])
        isolated.append(_pairwise(masks))
        cand_err.extend(abs(float(p) - iou(m, mask)) for m, p in zip(masks, predicted))
        tokens.append([(float(p), iou(m, mask)) for m, p in zip(masks, predicted)])
    return {"ambiguous_pairwise": ambiguous, "ambiguous_split": split, "isolated_pairwise": isolated,
            "candidate_abs_err": cand_err, "tokens": tokens}  # fmt: skip


def evaluate(model, seeds: int = 3, n: int = 16, contrast=None, click_rule=None, z_contrast=None) -> dict:
    """Every measure of the module docstring. contrast, click_rule: the sessions' (None: the model's defaults);
    z_contrast: that of the z stream as the faces run it (None: `contrast`, or where that is None the model's
    z-stream default)."""
    results: dict[str, dict] = {}
    rows_of: dict[str, list] = {}
    all_pred, all_actual = [], []
    probe = {"ambiguous_pairwise": [], "ambiguous_split": [], "isolated_pairwise": [], "candidate_abs_err": [],
             "tokens": [], "returned_ambiguous_pairwise": [], "returned_ambiguous_split": [],
             "returned_isolated_pairwise": []}  # fmt: skip
    for c, name in enumerate(HARD_CONDITIONS):
        rows, dim_rows, partner_rows, zious, faces_zious, alone = [], [], [], [], [], []
        for k in range(seeds):
            stack = hard_condition(name, HELD_OUT + 100 * c + k, n=n)
            frame = n // 2 if stack.axes == "ZYX" else 0
            truth = stack.labels[frame]
            got = clicks_in_session(model, stack.image, frame, truth, contrast=contrast, click_rule=click_rule)
            brightness = stack.events["brightness"]
            interphase = [r for r in got if r["obj"] not in stack.events["mitotic"]]
            cut = np.median([brightness[r["obj"]] for r in interphase]) if interphase else 0
            dim_rows += [r for r in interphase if brightness[r["obj"]] <= cut]
            mitotic = set(stack.events["mitotic"])
            partner_rows += [r for r in interphase if mitotic & set(stack.events["neighbours"].get(r["obj"], []))]
            rows += got
            alone += clicks_on_the_image_alone(model, stack.image[frame], truth, contrast, click_rule)
            for key, values in multimask_probe(
                model, stack.image, frame, truth, stack.events["neighbours"], contrast
            ).items():
                probe[key] += values
            returned = returned_candidates_probe(
                model, stack.image[frame], truth, stack.events["neighbours"], contrast, click_rule
            )
            for key, values in returned.items():
                probe[key] += values
            if stack.axes == "ZYX":  # propagate the middle-slice click through z
                for r in got[:6]:
                    obj = r["obj"]
                    with TrackingSession(model, stack.image, contrast=contrast, click_rule=click_rule) as session:
                        session.add_prompt(frame, obj, points=[deepest_point(truth == obj)], labels=[1])
                        masks = {fr.frame: fr.masks[fr.obj_ids.index(obj)] for fr in session.propagate("both")
                                 if obj in fr.obj_ids}  # fmt: skip
                    zious += [
                        iou(masks[z], stack.labels[z] == obj) for z in masks if (stack.labels[z] == obj).sum() > 30
                    ]
                    # as track(), the CLI and the widget run a z stream: the axial edge rule (and with it the click
                    # rule's through_z), the edge applied once the propagation has run
                    z_step = contrast if z_contrast is None else z_contrast
                    with TrackingSession(
                        model, stack.image, contrast=z_step, click_rule=click_rule, z_edge=Z_EDGE
                    ) as session:
                        session.add_prompt(frame, obj, points=[deepest_point(truth == obj)], labels=[1])
                        masks = {fr.frame: fr.masks[fr.obj_ids.index(obj)] for fr in session.propagate("both")
                                 if obj in fr.obj_ids}  # fmt: skip
                        masks.update({fr.frame: fr.masks[fr.obj_ids.index(obj)] for fr in session.axial_edge()
                                      if obj in fr.obj_ids})  # fmt: skip
                    faces_zious += [
                        iou(masks[z], stack.labels[z] == obj) for z in masks if (stack.labels[z] == obj).sum() > 30
                    ]
        rows_of[name] = rows
        all_pred += [r["predicted"] for r in rows]
        all_actual += [r["iou"] for r in rows]
        ious = [r["iou"] for r in rows]
        results[name] = {
            "click_iou_median": float(np.median(ious)),
            "click_iou_mean": float(np.mean(ious)),
            "objects": len(rows),
            "dimmer_half_click_iou_median": float(np.median([r["iou"] for r in dim_rows])) if dim_rows else None,
            "mitotic_partner_click_iou_median": (
                float(np.median([r["iou"] for r in partner_rows])) if partner_rows else None
            ),
            "mitotic_partners": len(partner_rows),
            "wrong_object_share": float(np.mean([r["on_other"] for r in rows])),
            "single_image_click_iou_median": float(np.median(alone)),
            "calibration_abs_err": float(np.mean([abs(r["predicted"] - r["iou"]) for r in rows])),
        }
        if zious:
            results[name]["zstack_mean_iou"] = float(np.mean(zious))
            results[name]["zstack_mean_iou_as_the_faces_run_it"] = float(np.mean(faces_zious))
    old = []
    for k in range(seeds):
        movie = nuclei_timelapse(n_frames=1, n_nuclei=10, seed=OLD_HELD_OUT + k)
        old += clicks_in_session(model, movie.image, 0, movie.labels[0], contrast=contrast, click_rule=click_rule)
    all_pred += [r["predicted"] for r in old]
    all_actual += [r["iou"] for r in old]
    pred, actual = np.array(all_pred), np.array(all_actual)
    wrong = np.array([r["on_other"] for name in results for r in rows_of[name]] + [r["on_other"] for r in old])
    tokens = np.array(probe["tokens"])  # [clicks, 3 candidates, (predicted, actual)]
    return {
        "conditions": results,
        "old_sample_click_iou_median": float(np.median([r["iou"] for r in old])),
        "old_sample_calibration_abs_err": float(np.mean([abs(r["predicted"] - r["iou"]) for r in old])),
        "calibration_abs_err": float(np.mean(np.abs(pred - actual))),
        "calibration_corr": float(np.corrcoef(pred, actual)[0, 1]) if pred.std() > 0 and actual.std() > 0 else None,
        "predicted_iou_range": [float(np.percentile(pred, 5)), float(np.percentile(pred, 95))],
        # does the head know when its mask is on another object? (an informative head predicts less there)
        "predicted_iou_mean_on_other_object": float(pred[wrong].mean()) if wrong.any() else None,
        "predicted_iou_mean_on_the_clicked_object": float(pred[~wrong].mean()) if (~wrong).any() else None,
        "clicks": len(pred),
        "multimask": {
            "ambiguous_clicks": len(probe["ambiguous_pairwise"]),
            "ambiguous_pairwise_iou": float(np.mean(probe["ambiguous_pairwise"]))
            if probe["ambiguous_pairwise"]
            else None,
            "ambiguous_nucleus_and_pair_offered": (
                float(np.mean(probe["ambiguous_split"])) if probe["ambiguous_split"] else None
            ),
            "isolated_pairwise_iou": float(np.mean(probe["isolated_pairwise"])) if probe["isolated_pairwise"] else None,
            # the same clicks, the candidates as the single-image API returns them (`returned_candidates_probe`)
            "returned": {
                "ambiguous_pairwise_iou": _mean_or_none(probe["returned_ambiguous_pairwise"]),
                "ambiguous_nucleus_and_pair_offered": _mean_or_none(probe["returned_ambiguous_split"]),
                "isolated_pairwise_iou": _mean_or_none(probe["returned_isolated_pairwise"]),
            },
            "candidate_calibration_abs_err": (
                float(np.mean(probe["candidate_abs_err"])) if probe["candidate_abs_err"] else None
            ),
            # per output token (candidate 1…3) on the isolated clicks: mean predicted, mean actual, correlation
            "per_token": [
                {
                    "predicted_mean": float(tokens[:, t, 0].mean()),
                    "actual_mean": float(tokens[:, t, 1].mean()),
                    "corr": float(np.corrcoef(tokens[:, t, 0], tokens[:, t, 1])[0, 1])
                    if tokens[:, t, 0].std() > 0 and tokens[:, t, 1].std() > 0
                    else None,
                }
                for t in range(tokens.shape[1])
            ]
            if len(tokens)
            else [],
        },
    }


def _mean_or_none(values) -> float | None:
    return float(np.mean(values)) if len(values) else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="nano-fluo", help="registry name or checkpoint path (default nano-fluo)")
    parser.add_argument("--seeds", type=int, default=3, help="stacks per condition")
    parser.add_argument("--frames", type=int, default=16, help="frames / slices per stack")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument(
        "--contrast", choices=CONTRASTS, help="the contrast step of the model input (default: the model's)"
    )
    parser.add_argument(
        "--click-rule", choices=sorted(CLICK_RULES), help="how a clicked frame is read (default: the model's)"
    )
    parser.add_argument(
        "--defaults-of", metavar="NAME", help="a registry model whose defaults (contrast, z-stream contrast, click "
        "rule) the --model file runs with where --contrast / --click-rule do not say (default: the file's own)"
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, device="cpu")
    began = time.perf_counter()
    given, z_given, rule_given = defaults_of(args.defaults_of, args.contrast, args.click_rule)
    contrast = resolve_contrast(given, model).name
    z_contrast = resolve_contrast(given if z_given is None else z_given, model, z_stream=True).name
    rule = resolve_click_rule(rule_given, model)
    numbers = {"model": str(args.model), "defaults_of": args.defaults_of, "seeds": args.seeds,
               "threads": torch.get_num_threads(), "contrast": contrast, "z_contrast": z_contrast, **rule.record(),
               **evaluate(model, args.seeds, args.frames, given, rule, z_given)}  # fmt: skip
    numbers["seconds"] = time.perf_counter() - began
    print(json.dumps(numbers, indent=1))
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
