"""One tracking scenario run twice: by the official SAM2VideoPredictor and by our TrackingSession.

Both get the same random checkpoint and the same preprocessed frames (the official JPEG path: PIL bicubic
resize of uint8 RGB → /255 → ImageNet mean/std, minus the JPEG codec), then the same operations:

    1. object 1: a positive and a negative click on the middle frame; object 2: a box on the middle frame
    2. propagate forward from the middle frame, then in reverse from it
    3. object 3: a mask prompt on a later frame (an object added after tracking started); propagate forward
    4. a correction click for object 1 on a tracked frame, then propagate forward again over it

Every returned mask and, after each propagation, every stored per-object per-frame state (low-res logits,
object pointer, object score, bf16 memory) is recorded under the same key on both sides.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
H, W = 240, 320  # original frame size (not square, to catch x/y mix-ups)


def synthetic_frames(n: int, seed: int = 0) -> list[np.ndarray]:
    """uint8 RGB frames: textured background, a bright disk moving right, a darker square moving down."""
    rng = np.random.default_rng(seed)
    bg = rng.integers(0, 60, size=(H, W, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:H, 0:W]
    frames = []
    for t in range(n):
        f = bg.copy()
        disk = (yy - 120) ** 2 + (xx - (90 + 8 * t)) ** 2 <= 35**2
        f[disk] = (220, 200, 180)
        y0 = 30 + 6 * t
        f[y0 : y0 + 50, 220:270] = (150, 160, 90)
        frames.append(f)
    return frames


def official_preprocess(frames: list[np.ndarray], size: int) -> torch.Tensor:
    imgs = torch.zeros(len(frames), 3, size, size, dtype=torch.float32)
    for i, f in enumerate(frames):
        a = np.array(Image.fromarray(f).convert("RGB").resize((size, size))) / 255.0
        imgs[i] = torch.from_numpy(a).permute(2, 0, 1)
    imgs -= torch.tensor(MEAN)[:, None, None]
    imgs /= torch.tensor(STD)[:, None, None]
    return imgs


def scenario(n_frames: int):
    """The operations, in napari coordinates (y, x); returns (middle frame, later frame, tracked frame, ops)."""
    mid = n_frames // 2
    later = mid + 1
    corrected = n_frames - 2
    square_mask = np.zeros((H, W), dtype=bool)
    square_mask[30 + 6 * later : 80 + 6 * later, 220:270] = True
    ops = [
        ("points", mid, 1, {"points": [[120, 90 + 8 * mid], [40, 40]], "labels": [1, 0]}),
        ("box", mid, 2, {"box": [30 + 6 * mid - 5, 215, 85 + 6 * mid, 275]}),
        ("propagate", mid, None, {"reverse": False}),
        ("propagate", mid, None, {"reverse": True}),
        ("mask", later, 3, {"mask": square_mask}),
        # start at the new object's frame: the official code crashes on the CPU (bf16 memories without any
        # pointer reach an fp32 Linear) when an object is tracked before its first prompted frame
        ("propagate", later, None, {"reverse": False}),
        ("points", corrected, 1, {"points": [[120, 90 + 8 * corrected + 20]], "labels": [1]}),
        ("propagate", later, None, {"reverse": False}),
    ]
    return ops


def run_official(ckpt: str, config_file: str, image_size: int, n_frames: int, threads: int = 2) -> dict:
    import sam2.sam2_video_predictor as svp
    from sam2.build_sam import build_sam2_video_predictor

    torch.set_num_threads(threads)
    frames = synthetic_frames(n_frames)
    images = official_preprocess(frames, image_size)

    def fake_loader(video_path, image_size, offload_video_to_cpu, async_loading_frames=False, compute_device=None):
        return images, H, W

    original_loader = svp.load_video_frames
    svp.load_video_frames = fake_loader
    overrides = [] if image_size == 1024 else [f"++model.image_size={image_size}"]
    try:
        vp = build_sam2_video_predictor(config_file, ckpt, device="cpu", hydra_overrides_extra=overrides)
        vp.fill_hole_area = 0  # the CUDA-only step is skipped on the CPU anyway; make it explicit
        rec = {}
        with torch.inference_mode():
            state = vp.init_state(video_path="<in-memory>")
            for step, (kind, frame, obj, args) in enumerate(scenario(n_frames)):
                if kind == "points":
                    pts = np.asarray(args["points"], dtype=np.float32)[:, ::-1].copy()  # (y, x) → (x, y)
                    _, ids, masks = vp.add_new_points_or_box(
                        state,
                        frame,
                        obj,
                        points=pts,
                        labels=np.asarray(args["labels"], np.int32),
                        clear_old_points=True,
                    )
                    _record_prompt(rec, step, ids, masks)
                elif kind == "box":
                    y0, x0, y1, x1 = args["box"]
                    _, ids, masks = vp.add_new_points_or_box(
                        state, frame, obj, box=np.array([x0, y0, x1, y1], np.float32)
                    )
                    _record_prompt(rec, step, ids, masks)
                elif kind == "mask":
                    _, ids, masks = vp.add_new_mask(state, frame, obj, args["mask"])
                    _record_prompt(rec, step, ids, masks)
                else:
                    for f, ids, masks in vp.propagate_in_video(state, start_frame_idx=frame, reverse=args["reverse"]):
                        for k, oid in enumerate(ids):
                            rec[f"s{step}_f{f}_o{oid}_masks"] = masks[k, 0].numpy()
                    for idx, oid in state["obj_idx_to_id"].items():
                        per = state["output_dict_per_obj"][idx]
                        for storage in ("cond_frame_outputs", "non_cond_frame_outputs"):
                            for f, out in per[storage].items():
                                _record_state(
                                    rec,
                                    step,
                                    f,
                                    oid,
                                    out["pred_masks"],
                                    out["obj_ptr"],
                                    out["object_score_logits"],
                                    out["maskmem_features"],
                                )
        return rec
    finally:
        svp.load_video_frames = original_loader


def run_ours(ckpt: str, image_size: int, n_frames: int, threads: int = 2) -> tuple[dict, object]:
    from napari_sam2 import TrackingSession, load_model

    torch.set_num_threads(threads)
    frames = synthetic_frames(n_frames)
    images = official_preprocess(frames, image_size)
    model = load_model(ckpt, device="cpu", config=_config_for(ckpt, image_size))
    session = TrackingSession(model, images, preset="parity", preprocessed=True, frame_shape=(H, W))
    rec = {}
    for step, (kind, frame, obj, args) in enumerate(scenario(n_frames)):
        if kind in ("points", "box", "mask"):
            res = session.add_prompt(frame, obj, replace=True, **args)
            _record_prompt(rec, step, res.obj_ids, res.logits[:, None])
        else:
            direction = "backward" if args["reverse"] else "forward"
            for res in session.propagate(direction, start=frame):
                for k, oid in enumerate(res.obj_ids):
                    rec[f"s{step}_f{res.frame}_o{oid}_masks"] = res.logits[k]
            for oid, track in session.objects.items():
                for f, out in list(track.cond.items()) + list(track.tracked.items()):
                    _record_state(rec, step, f, oid, out.logits, out.pointer, out.score, out.memory)
    return rec, session


def _config_for(ckpt, image_size):
    from napari_sam2.model.build import read_checkpoint
    from napari_sam2.model.configs import config_from_state_dict

    sd, _ = read_checkpoint(ckpt)
    return config_from_state_dict(sd).replace(image_size=image_size)


def _record_prompt(rec, step, ids, masks):
    masks = masks.numpy() if torch.is_tensor(masks) else masks
    for k, oid in enumerate(ids):
        rec[f"s{step}_prompt_o{oid}_masks"] = np.asarray(masks[k, 0], dtype=np.float32)


def _record_state(rec, step, frame, oid, low, ptr, score, memory):
    key = f"s{step}_f{frame}_o{oid}"
    rec[f"{key}_lowres"] = low.float().numpy()
    rec[f"{key}_ptr"] = ptr.float().numpy()
    rec[f"{key}_score"] = score.float().numpy()
    if memory is not None:
        rec[f"{key}_memory"] = memory.float().numpy()
