"""GPU proof: one budgeted run that verifies and measures our CUDA path beside the official SAM 2.

usage:
  python benchmarks/gpu_check.py OUT_DIR                        # a CUDA machine: all checks, <= 6 min on one H200
  python benchmarks/gpu_check.py OUT_DIR --quick                # 2.1 tiny only, fewer frames, no compile
  python benchmarks/gpu_check.py OUT_DIR --device cpu --quick   # the dry run of the test suite (tiny sizes)
  bash benchmarks/gpu_check.sh run OUT_DIR                      # a bare GPU machine: installs what is missing first

Writes OUT_DIR/gpu_check.json (every number, the conditions, what was skipped and why) and OUT_DIR/gpu_check.md
(the tables for the README's GPU section). Without CUDA (and no --device cpu) it says so and exits 0. Exit 1
when a correctness check failed or broke.

Weights: seeded random official-format checkpoints written on the spot (napari_sam2.model.random_weights),
frames: the synthetic clip of the parity tests (tests/parity/video_scenario.py) and the nuclei sample (for the
trained nano-fluo). The official SAM 2 (sam2==1.1.0 built with SAM2_BUILD_CUDA=0, no torchvision: the parity
tests' stand-in) runs beside ours where it is importable; its checks are skipped, with the reason, where not.

Checks, in this order (each has a time cap; `--budget` bounds the whole run and what did not fit is recorded
as skipped):
  correctness  2.1 tiny, random weights, fp32 with TF32 off: ours on CUDA vs ours on the CPU (image encoder,
               one tracked frame; max |a - b| / max |b| <= 1e-3); bf16 autocast vs fp32 on CUDA over a 30-frame
               track (pooled mask IoU >= 0.99; random tiny and the trained nano-fluo); 16 objects batched vs
               one at a time (fp32: parity bar, bf16: IoU >= 0.99); the official video predictor vs ours on
               CUDA fp32 (tracked frames, |a - b| <= 1e-4 + 1e-4 |b|, the parity tests' bar).
  speed        per size (2.1 tiny, small, base+, large), bf16 autocast, TF32 on (as the official benchmark):
               tracked frames/s with 1 and 16 objects at 1024² (frames 1..N-1 after a prompt on frame 0, masks
               handed to host memory on both sides), and the image encoder alone (ms per frame); ours and the
               official alternate, round after round, in one process.
  memory       ours, 2.1 tiny, bf16, one object tracked through 200 and through 2,000 lazily read frames with
               the default bounded caches: peak GPU memory and peak host RSS, each length in a fresh process.
  compile      2.1 tiny, 1 object: ours with its image encoder wrapped in torch.compile in this script (there is
               no compile option in napari-sam2 itself) vs the official `vos_optimized` predictor (every part
               compiled, max-autotune); compile time, frames/s and encoder ms, in turns after both compiled;
               in a child process that is killed at its cap (what it finished is kept). The CPU dry run
               compiles ours with dynamo's "eager" backend (the plumbing, in seconds) and not the official.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # the official predictor's progress bars

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "parity"))  # video_scenario, torchvision_standin (plain helpers)

MODELS = {"tiny": "sam2.1_hiera_t", "small": "sam2.1_hiera_s", "base+": "sam2.1_hiera_b+", "large": "sam2.1_hiera_l"}
CHECKS = ("correctness", "speed", "memory", "compile")
OFFICIAL_BAR = "abs(a−b) ≤ 1e-4 + 1e-4·abs(b) on 2 tracked frames (a click, a box), binary masks equal"
T0 = time.monotonic()


# ---------------------------------------------------------------------------------------------- plan and budget
@dataclass
class Plan:
    """Sizes of every check. `caps`: seconds each check may take at most (speed: per model size)."""

    name: str
    size: int  # network input size (1024 = the official)
    models: list[str]
    track_frames: int  # bf16 vs fp32
    batch_objects: int
    batch_frames: int
    speed_frames: int
    speed_rounds: int
    speed_objects: tuple[int, ...]
    encoder_iters: int
    memory_lengths: tuple[int, ...]
    compile_frames: int
    caps: dict = field(default_factory=dict)
    compile_backend: str = "inductor"  # the dry run: "eager" (dynamo's capture only: the plumbing, in seconds)


def make_plan(device: str, quick: bool) -> Plan:
    """full: the issue's sizes (<= 6 min on one H200); quick: 2.1 tiny, fewer frames; cpu: the dry run (tiny sizes)."""
    common = {"track_frames": 30, "batch_objects": 16, "batch_frames": 4, "speed_objects": (1, 16)}
    if device == "cpu":  # every code path at a size a 2-core CI machine runs in seconds per check
        caps = {"correctness": 600, "speed": 600, "memory": 600, "compile": 600}  # a loaded CI machine: be patient
        return Plan(
            "cpu-dry-run",
            128,
            ["tiny"],
            **{**common, "track_frames": 3, "batch_frames": 2},
            speed_frames=3,
            speed_rounds=1,
            encoder_iters=1,
            memory_lengths=(3, 6),
            compile_frames=3,
            caps=caps,
            compile_backend="eager",
        )
    if quick:
        caps = {"correctness": 90, "speed": 60, "memory": 90, "compile": 0}
        return Plan(
            "quick",
            1024,
            ["tiny"],
            **common,
            speed_frames=12,
            speed_rounds=1,
            encoder_iters=5,
            memory_lengths=(100, 1000),
            compile_frames=0,
            caps=caps,
        )
    caps = {"correctness": 90, "speed": 50, "memory": 120, "compile": 180}
    return Plan(
        "full",
        1024,
        list(MODELS),
        **common,
        speed_frames=20,
        speed_rounds=2,
        encoder_iters=10,
        memory_lengths=(200, 2000),
        compile_frames=20,
        caps=caps,
    )


class OutOfTime(Exception):
    """A check reached its cap: what it measured so far is kept and it is marked partial."""


class Budget:
    def __init__(self, total_s: float):
        self.end = time.monotonic() + total_s

    def left(self) -> float:
        return self.end - time.monotonic()

    def deadline(self, cap: float) -> float:
        return time.monotonic() + max(0.0, min(cap, self.left()))


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f} s] {msg}", flush=True)


def in_time(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise OutOfTime


# ---------------------------------------------------------------------------------------------- inputs
def frames(n: int, size: int) -> torch.Tensor:
    """[n, 3, size, size] float32 network inputs of the parity tests' synthetic clip (240 x 320 frames)."""
    from video_scenario import official_preprocess, synthetic_frames

    return official_preprocess(synthetic_frames(n), size)


def grid_points(k: int) -> list[list[int]]:
    """k clicks (y, x) spread over the 240 x 320 frame."""
    return [[60 + 12 * (i // 4), 40 + 60 * (i % 4)] for i in range(k)]


class Checkpoints:
    """Random official-format checkpoints, written once per config into `folder` (at input `size`: 1024 is the
    official configs unchanged; another size is the same network at that input, as the parity tests run it)."""

    def __init__(self, folder: Path, size: int):
        self.folder, self.size, self.made = Path(folder), size, {}

    def config(self, name: str):
        from napari_sam2.model import get_config

        cfg = get_config(name)
        return cfg if self.size == 1024 else cfg.replace(image_size=self.size, name=f"{name}@{self.size}")

    def path(self, name: str) -> Path:
        from napari_sam2.model.random_weights import write_random_checkpoint

        if name not in self.made:
            cfg = self.config(name)
            self.made[name] = write_random_checkpoint(
                cfg if self.size != 1024 else name, self.folder / f"{cfg.name}.pt"
            )
        return self.made[name]

    def ours(self, name: str, device):
        from napari_sam2 import load_model

        return load_model(self.path(name), device=device, config=self.config(name))

    def official(self, name: str, device, vos_optimized: bool = False):
        from sam2.build_sam import build_sam2_video_predictor

        yaml = f"configs/sam2.1/{name}.yaml"
        over = [] if self.size == 1024 else [f"++model.image_size={self.size}"]
        vp = build_sam2_video_predictor(
            yaml, str(self.path(name)), device=str(device), hydra_overrides_extra=over, vos_optimized=vos_optimized
        )
        vp.fill_hole_area = 0  # its hole filling needs the CUDA extension, which SAM2_BUILD_CUDA=0 leaves out
        return vp


def official_status() -> str | None:
    """None when the official SAM 2 imports (after the torchvision stand-in), else why not."""
    try:
        import torchvision_standin

        torchvision_standin.install()  # before sam2 imports torchvision.transforms
        import sam2.build_sam
        import sam2.sam2_video_predictor  # noqa: F401
    except Exception as exc:  # noqa: BLE001 (ImportError, or hydra failing to initialise: either means "absent")
        return f"official not installed ({type(exc).__name__}: {str(exc)[:120]})"
    return None


def set_tf32(on: bool) -> None:
    """TF32 for fp32 matmuls and convolutions: off for the fp32 correctness checks, on for speed (as the official
    benchmark). The legacy flags: once the newer `fp32_precision` API is used, torch refuses to read them."""
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def free(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------- tracking runs
def track_ours(model, images, prompts, n, precision, deadline, preset="parity", object_batch=None):
    """Prompt objects on frame 0, track frames 1..n-1. → (logits [n, K, 240, 320] list, seconds per tracked frame)."""
    from napari_sam2 import TrackingSession

    s = TrackingSession(
        model,
        images[:n],
        preset=preset,
        precision=precision,
        preprocessed=True,
        frame_shape=(240, 320),
        object_batch=object_batch,
    )
    for obj_id, prompt in prompts:
        s.add_prompt(0, obj_id, **prompt)
    logits, times = [], []
    t0 = time.perf_counter()
    for r in s.propagate("forward"):
        logits.append(r.logits)
        times.append(time.perf_counter() - t0)
        in_time(deadline)
        t0 = time.perf_counter()
    s.close()
    return logits, times[1:]


def bf16_autocast(dev):
    """A factory of bf16 autocast contexts on CUDA (a fresh one per `with`), of no-op contexts elsewhere."""
    return (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if dev.type == "cuda" else contextlib.nullcontext


def track_official(vp, images, prompts, n, autocast, deadline):
    """The same on the official SAM2VideoPredictor (frames on its device, as its loader puts them).
    autocast: a factory of context managers (bf16_autocast, or contextlib.nullcontext for fp32)."""
    import sam2.sam2_video_predictor as svp

    device = vp.device
    clip = images[:n].to(device)
    original = svp.load_video_frames
    svp.load_video_frames = lambda **kw: (clip, 240, 320)
    try:
        with torch.inference_mode(), autocast():
            state = vp.init_state("<in-memory>")
            for obj_id, prompt in prompts:
                if "box" in prompt:
                    y0, x0, y1, x1 = prompt["box"]
                    vp.add_new_points_or_box(state, 0, obj_id, box=np.array([x0, y0, x1, y1], np.float32))
                else:
                    xy = np.asarray(prompt["points"], np.float32)[:, ::-1].copy()  # (y, x) → (x, y)
                    vp.add_new_points_or_box(state, 0, obj_id, points=xy, labels=np.ones(len(xy), np.int32))
            logits, times = [], []
            t0 = time.perf_counter()
            for _, _, masks in vp.propagate_in_video(state):
                logits.append(masks[:, 0].float().cpu().numpy())  # to host memory, as ours hands them back
                times.append(time.perf_counter() - t0)
                in_time(deadline)
                t0 = time.perf_counter()
    finally:
        svp.load_video_frames = original
    return logits, times[1:]


def click_prompts(k: int) -> list:
    return [(i + 1, {"points": grid_points(k)[i : i + 1]}) for i in range(k)]


SCENARIO_PROMPTS = [(1, {"points": [[120, 90]]}), (2, {"box": [25, 215, 85, 275]})]  # the disk and the square


def fps(times) -> float:
    return len(times) / sum(times) if times and sum(times) > 0 else float("nan")


# ---------------------------------------------------------------------------------------------- comparisons
def rel_err(a, b) -> float:
    """max |a - b| / max |b| (a scale-relative error that near-zero entries cannot blow up)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def parity_bar(a, b, rtol=1e-4, atol=1e-4) -> dict:
    """The parity tests' bar: |a - b| <= atol + rtol |b| everywhere; binary masks equal wherever b is decided."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    err = np.abs(a - b)
    decided = np.abs(b) > atol + rtol * np.abs(b)
    return {
        "max_abs_diff": float(err.max()),
        "within": bool(np.all(err <= atol + rtol * np.abs(b))),
        "masks_equal": bool(np.array_equal((a > 0)[decided], (b > 0)[decided])),
    }


def pooled_iou(masks_a, masks_b) -> tuple[float, float]:
    """(pooled IoU over all frames and objects, worst per-frame IoU) of two lists of [K, H, W] logits."""
    inter = union = 0
    worst = 1.0
    for a, b in zip(masks_a, masks_b):
        a, b = np.asarray(a) > 0, np.asarray(b) > 0
        i, u = int((a & b).sum()), int((a | b).sum())
        inter, union = inter + i, union + u
        worst = min(worst, i / u if u else 1.0)
    return (inter / union if union else 1.0), worst


def verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


# ---------------------------------------------------------------------------------------------- checks
def check_correctness(res, deadline, ctx):
    """The four correctness checks; each result row: bar, measured values, status."""
    dev, plan, ck = ctx["device"], ctx["plan"], ctx["ckpt"]
    name = MODELS["tiny"]
    set_tf32(False)
    images = frames(max(plan.track_frames, plan.batch_frames, 3), plan.size)
    rows = res.setdefault("rows", {})

    # 1. fp32: ours on the device vs ours on the CPU
    # (the dry run on the CPU compares the CPU with itself: the code path, nothing to measure)
    cpu_model = ck.ours(name, "cpu")
    dev_model = cpu_model if dev.type == "cpu" else ck.ours(name, dev)
    with torch.inference_mode():
        f_cpu = cpu_model.encode_image(images[:1])
        f_dev = dev_model.encode_image(images[:1].to(dev))
    enc = max(rel_err(a.cpu(), b) for a, b in zip([f_dev.vision, *f_dev.high_res], [f_cpu.vision, *f_cpu.high_res]))
    in_time(deadline)
    lc, _ = track_ours(cpu_model, images, SCENARIO_PROMPTS, 3, "fp32", deadline)
    ld = lc if dev.type == "cpu" else track_ours(dev_model, images, SCENARIO_PROMPTS, 3, "fp32", deadline)[0]
    trk = rel_err(ld[-1], lc[-1])
    rows["fp32 device vs CPU"] = {
        "bar": "max abs(a−b) / max abs(b) ≤ 1e-3 (image encoder; the last of 2 tracked frames)",
        "image_encoder": enc,
        "tracked_frame": trk,
        "status": verdict(enc <= 1e-3 and trk <= 1e-3),
    }
    log(f"  fp32 {dev.type} vs cpu: encoder {enc:.2e}, tracked frame {trk:.2e}")
    del cpu_model, f_cpu, f_dev
    free(dev)

    # 2. bf16 autocast vs fp32 over a track: random tiny (synthetic clip) and the trained nano-fluo (nuclei sample)
    n = plan.track_frames
    a32, _ = track_ours(dev_model, images, SCENARIO_PROMPTS, n, "fp32", deadline)
    a16, _ = track_ours(dev_model, images, SCENARIO_PROMPTS, n, "bf16", deadline)
    iou, worst = pooled_iou(a32[1:], a16[1:])
    nano_iou, nano_worst = _nano_bf16(dev, n, deadline)
    rows["bf16 vs fp32"] = {
        "bar": f"pooled mask IoU ≥ 0.99 over {n - 1} tracked frames",
        "random_tiny_iou": iou,
        "random_tiny_worst_frame": worst,
        "nano_fluo_iou": nano_iou,
        "nano_fluo_worst_frame": nano_worst,
        "status": verdict(iou >= 0.99 and nano_iou >= 0.99),
    }
    if dev.type == "cpu":
        rows["bf16 vs fp32"]["note"] = "on the CPU: CPU bf16 autocast (model/precision.py), not the CUDA kernels"
    log(f"  bf16 vs fp32: IoU random tiny {iou:.4f} (worst frame {worst:.4f}), nano-fluo {nano_iou:.4f}")

    # 3. objects batched vs one at a time
    prompts, nb = click_prompts(plan.batch_objects), plan.batch_frames
    row = {"bar": f"{plan.batch_objects} objects, {nb - 1} tracked frame(s); fp32: the parity bar, bf16: IoU ≥ 0.99"}
    ok = True
    for precision in ("fp32", "bf16") if dev.type == "cuda" else ("fp32",):
        batched, _ = track_ours(dev_model, images, prompts, nb, precision, deadline, object_batch=plan.batch_objects)
        single, _ = track_ours(dev_model, images, prompts, nb, precision, deadline, object_batch=1)
        if precision == "fp32":
            cmp = parity_bar(np.stack(batched[1:]), np.stack(single[1:]))
            row["fp32"] = cmp
            ok &= cmp["within"] and cmp["masks_equal"]
        else:
            row["bf16_iou"] = pooled_iou(batched[1:], single[1:])[0]
            ok &= row["bf16_iou"] >= 0.99
    row["status"] = verdict(ok)
    rows["batched vs one at a time"] = row
    log(f"  batched vs one at a time: {row['status']} ({ {k: v for k, v in row.items() if k not in ('bar',)} })")

    # 4. the official SAM 2 vs ours, fp32 on the device
    reason = ctx["official"]
    if reason:
        rows["official vs ours"] = {"bar": OFFICIAL_BAR, "status": f"skipped: {reason}"}
        log(f"  official vs ours: skipped ({reason})")
    else:
        vp = ck.official(name, dev)
        lo, _ = track_official(vp, images, SCENARIO_PROMPTS, 3, contextlib.nullcontext, deadline)
        cmp = parity_bar(np.stack(ld[1:]), np.stack(lo[1:]))
        rows["official vs ours"] = {
            "bar": OFFICIAL_BAR,
            **cmp,
            "status": verdict(cmp["within"] and cmp["masks_equal"]),
        }
        log(f"  official vs ours: {rows['official vs ours']['status']} (max abs diff {cmp['max_abs_diff']:.2e})")
        del vp
    del dev_model
    free(dev)
    failed = [k for k, r in rows.items() if r["status"] == "FAIL"]
    res["status"] = "FAIL: " + ", ".join(failed) if failed else "pass"


def _nano_bf16(dev, n, deadline):
    """Pooled IoU of bf16 vs fp32 tracks of the built-in nano-fluo, one click per nucleus of the nuclei sample."""
    from scipy import ndimage

    from napari_sam2 import TrackingSession, load_model
    from napari_sam2.sample_data import nuclei_timelapse

    sample = nuclei_timelapse(n_frames=n, shape=(256, 256), n_nuclei=8, seed=1)
    model = load_model("nano-fluo", device=dev)
    runs = []
    for precision in ("fp32", "bf16"):
        s = TrackingSession(model, sample.image, precision=precision)
        for obj_id in np.unique(sample.labels[0])[1:]:
            depth = ndimage.distance_transform_edt(sample.labels[0] == obj_id)
            s.add_prompt(0, int(obj_id), points=[list(np.unravel_index(int(depth.argmax()), depth.shape))])
        out = []
        for r in s.propagate("forward"):
            out.append(r.logits)
            in_time(deadline)
        runs.append(out[1:])
    return pooled_iou(*runs)


def check_speed(res, deadline, ctx, name):
    """One model size: tracked frames/s (1 and 16 objects) and the image encoder, ours and official in turns."""
    dev, plan, ck = ctx["device"], ctx["plan"], ctx["ckpt"]
    set_tf32(True)
    n = plan.speed_frames
    images = frames(n, plan.size)
    autocast = bf16_autocast(dev)
    precision = "bf16" if dev.type == "cuda" else "fp32"
    ours = ck.ours(name, dev)
    vp = None if ctx["official"] else ck.official(name, dev)
    res["official"] = "measured" if vp is not None else f"skipped: {ctx['official']}"
    # warm-up (cuDNN / cuBLAS choices, allocator): a short pass each, not timed
    track_ours(ours, images, click_prompts(1), 3, precision, deadline)
    if vp is not None:
        track_official(vp, images, click_prompts(1), 3, autocast, deadline)
    for k in plan.speed_objects:
        row = res.setdefault(f"{k} object{'s' if k > 1 else ''}", {"ours_fps": [], "official_fps": []})
        for _ in range(plan.speed_rounds):  # in turns: ours, official, ours, official, …
            row["ours_fps"].append(fps(track_ours(ours, images, click_prompts(k), n, precision, deadline)[1]))
            if vp is not None:
                t = track_official(vp, images, click_prompts(k), n, autocast, deadline)[1]
                row["official_fps"].append(fps(t))
        log(
            f"  {name} {k:2d} object(s): ours {_fmt_list(row['ours_fps'])} fps, "
            f"official {_fmt_list(row['official_fps'])} fps"
        )
    x = images[:1].to(dev)
    row = res.setdefault("encoder", {"ours_ms": [], "official_ms": []})
    for _ in range(plan.speed_rounds):
        row["ours_ms"].append(_time_ms(lambda: ours.encode_image(x), plan.encoder_iters, autocast, dev, deadline))
        if vp is not None:
            row["official_ms"].append(
                _time_ms(lambda: vp.forward_image(x), plan.encoder_iters, autocast, dev, deadline)
            )
    log(f"  {name} image encoder: ours {_fmt_list(row['ours_ms'])} ms, official {_fmt_list(row['official_ms'])} ms")
    res["status"] = "measured"
    ours = vp = None  # free the GPU for the next size
    free(dev)


def _time_ms(fn, iters, autocast, dev, deadline) -> float:
    with torch.inference_mode(), autocast():
        fn()  # one untimed call
        sync(dev)
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
            in_time(deadline)
        sync(dev)
    return 1000 * (time.perf_counter() - t0) / iters


def _fmt_list(values) -> str:
    return "/".join(f"{v:.1f}" for v in values) or "-"


# ---------------------------------------------------------------------------------------------- child processes
def run_child(kind: str, args: dict, deadline: float, workdir: Path) -> dict:
    """Run `kind` in a fresh process, killed at `deadline`; it writes its results to a file after every stage,
    so what it finished before a kill is kept."""
    out = workdir / f"child-{kind}-{args.get('length', '')}.json"
    out.unlink(missing_ok=True)
    payload = json.dumps({**args, "kind": kind, "out": str(out), "deadline_s": deadline - time.monotonic()})
    # its own process group: a kill also ends the compile workers torch.compile may have started
    proc = subprocess.Popen(
        [sys.executable, __file__, "--_child", payload],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        ended = f"exit {proc.returncode}"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        ended = "killed at its time cap"
    tail = (output or "").strip().splitlines()[-15:]
    data = json.loads(out.read_text()) if out.exists() else {}
    data["process"] = ended
    if ended != "exit 0":
        data["log_tail"] = tail
    return data


def child_main(payload: dict) -> None:
    if payload["device"] == "cpu":
        torch.set_num_threads(1)
    deadline = time.monotonic() + payload["deadline_s"] - 2
    out = Path(payload["out"])
    result = {}

    def save():
        out.write_text(json.dumps(result))

    try:
        {"memory": _child_memory, "compile": _child_compile}[payload["kind"]](payload, result, save, deadline)
    except OutOfTime:
        result["stopped_at_time_cap"] = True
    save()


def _child_memory(p, result, save, deadline):
    """Ours, one object through `length` lazily made frames, default caches: peak GPU memory and host RSS."""
    from video_scenario import H, W, synthetic_frames

    from napari_sam2 import TrackingSession, load_model

    dev = torch.device(p["device"])
    clip = synthetic_frames(50)
    length = p["length"]

    class SyntheticStack:
        """Frames made on request (as a lazily read file, without its page cache in the RSS)."""

        shape, dtype = (length, H, W, 3), np.uint8

        def __getitem__(self, key):
            return clip[key[0] % len(clip)][key[1:]]

    model = load_model(p["ckpt"], device=dev, config=Checkpoints(".", p["size"]).config(p["config"]))
    s = TrackingSession(model, SyntheticStack(), intensity=(0, 255))
    s.add_prompt(0, 1, points=[[120, 90]])
    done, t0 = 0, time.perf_counter()
    for _ in s.propagate("forward"):
        done += 1
        if time.monotonic() > deadline:
            break
    seconds = time.perf_counter() - t0
    result.update(
        {
            "frames": length,
            "frames_tracked": done,
            "fps": done / seconds,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_gpu_allocated_mib": torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None,
            "peak_gpu_reserved_mib": torch.cuda.max_memory_reserved() / 2**20 if dev.type == "cuda" else None,
        }
    )


def _child_compile(p, result, save, deadline):
    """2.1 tiny, 1 object, bf16: ours with torch.compile(image encoder) vs the official vos_optimized."""
    dev = torch.device(p["device"])
    set_tf32(True)
    ck = Checkpoints(Path(p["ckpt"]).parent, p["size"])
    ck.made[p["config"]] = Path(p["ckpt"])
    images = frames(p["frames"], p["size"])
    autocast = bf16_autocast(dev)
    x = images[:1].to(dev)
    ours = ck.ours(p["config"], dev)
    inductor = p["backend"] == "inductor"
    ours.image_encoder.compile(backend=p["backend"], **({"mode": p["mode"]} if inductor else {}))
    t = time.perf_counter()
    track_ours(ours, images, click_prompts(1), 3, "bf16", deadline)
    how = f"{p['backend']}, mode {p['mode']}" if inductor else p["backend"]
    result["ours"] = {"compile_s": time.perf_counter() - t, "how": how, "fps": [], "encoder_ms": []}
    save()
    vp = None
    if not inductor:
        result["official"] = {"status": f"skipped: vos_optimized compiles with inductor, not {p['backend']}"}
    elif p["official_reason"] is None and official_status() is None:
        vp = ck.official(p["config"], dev, vos_optimized=True)
        t = time.perf_counter()
        track_official(vp, images, click_prompts(1), 3, autocast, deadline)
        result["official"] = {
            "compile_s": time.perf_counter() - t,
            "how": "vos_optimized (inductor, max-autotune)",
            "fps": [],
            "encoder_ms": [],
        }
        save()
    for _ in range(p["rounds"]):  # in turns, both compiled
        result["ours"]["fps"].append(fps(track_ours(ours, images, click_prompts(1), p["frames"], "bf16", deadline)[1]))
        result["ours"]["encoder_ms"].append(_time_ms(lambda: ours.encode_image(x), p["iters"], autocast, dev, deadline))
        save()
        if vp is not None:
            t = track_official(vp, images, click_prompts(1), p["frames"], autocast, deadline)[1]
            result["official"]["fps"].append(fps(t))
            ms = _time_ms(lambda: vp.forward_image(x), p["iters"], autocast, dev, deadline)
            result["official"]["encoder_ms"].append(ms)
            save()


def check_memory(res, deadline, ctx):
    plan, name = ctx["plan"], MODELS["tiny"]
    for length in plan.memory_lengths:
        left = deadline - time.monotonic()
        # the short run first, with a third of the time; the long one gets the rest
        sub_deadline = time.monotonic() + left * (0.3 if length != plan.memory_lengths[-1] else 1.0)
        args = {
            "device": str(ctx["device"]),
            "ckpt": str(ctx["ckpt"].path(name)),
            "config": name,
            "size": plan.size,
            "length": length,
        }
        row = run_child("memory", args, sub_deadline, ctx["workdir"])
        res[str(length)] = row
        log(f"  {length} frames: {json.dumps({k: _round(v) for k, v in row.items() if k != 'log_tail'})}")
    partial = [r for r in res.values() if isinstance(r, dict) and r.get("frames_tracked") != r.get("frames")]
    res["status"] = "partial: a run reached its time cap (frames_tracked < frames)" if partial else "measured"


def check_compile(res, deadline, ctx):
    plan, name = ctx["plan"], MODELS["tiny"]
    args = {
        "device": str(ctx["device"]),
        "ckpt": str(ctx["ckpt"].path(name)),
        "config": name,
        "size": plan.size,
        "frames": plan.compile_frames,
        "rounds": plan.speed_rounds,
        "iters": plan.encoder_iters,
        "mode": ctx["compile_mode"],
        "backend": plan.compile_backend,
        "official_reason": ctx["official"],
    }
    res.update(run_child("compile", args, deadline, ctx["workdir"]))
    if "official" not in res:
        res["official"] = {"status": f"skipped: {ctx['official']}" if ctx["official"] else "not reached"}
    res["status"] = "measured" if res["process"] == "exit 0" else f"partial: {res['process']}"
    log(f"  compile: {json.dumps({k: _round(v) for k, v in res.items() if k != 'log_tail'})}")


def _round(v):
    if isinstance(v, float):
        return round(v, 3)
    if isinstance(v, dict):
        return {k: _round(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_round(x) for x in v]
    return v


# ---------------------------------------------------------------------------------------------- report
def environment(device) -> dict:
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }
    if device.type == "cuda":
        env.update(
            gpu=torch.cuda.get_device_name(),
            cuda=torch.version.cuda,
            capability=".".join(map(str, torch.cuda.get_device_capability())),
        )
    else:
        env["cpu"] = platform.processor() or platform.machine()
    try:
        import sam2

        env["official"] = getattr(sam2, "__version__", None) or _dist_version("sam2")
    except Exception:  # noqa: BLE001 (not installed)
        env["official"] = None
    return env


def _dist_version(name):
    from importlib.metadata import version

    return version(name)


def write_report(report: dict, out: Path) -> None:
    report["total_s"] = round(time.monotonic() - T0, 1)
    (out / "gpu_check.json").write_text(json.dumps(_round(report), indent=1, default=str))
    (out / "gpu_check.md").write_text(markdown(report))


def markdown(report: dict) -> str:
    env, checks = report["environment"], report["checks"]
    where = env.get("gpu") or f"CPU ({env.get('cpu')}), dry run"
    lines = [
        f"Measured by `benchmarks/gpu_check.py` ({report['plan']['name']}) on {where}, torch {env['torch']}"
        + (f", CUDA {env['cuda']}" if env.get("cuda") else "")
        + f", {env['date_utc']} UTC; random weights, "
        f"input {report['plan']['size']}²; official: sam2 {env.get('official') or 'not installed'}.",
        "",
        "| correctness | bar | measured | result |",
        "|---|---|---|---|",
    ]
    rows = checks.get("correctness", {}).get("rows", {})
    for name, row in rows.items():
        measured = ", ".join(f"{k} {_short(v)}" for k, v in row.items() if k not in ("bar", "status", "note"))
        lines.append(f"| {name} | {row['bar']} | {measured or '-'} | {row['status']} |")
    if not rows:
        lines.append(f"| (not run) | | | {checks.get('correctness', {}).get('status', 'skipped')} |")
    speed = []
    for size, name in MODELS.items():
        res = checks.get(f"speed {name}")
        if res is None:
            continue
        if not res.get("status", "").startswith(("measured", "partial")):
            speed.append(f"| 2.1 {size} | | | {res.get('status')} |")
            continue
        for key, row in res.items():
            if not isinstance(row, dict):
                continue
            a, b = (
                (row.get("ours_fps"), row.get("official_fps"))
                if "ours_fps" in row
                else (row.get("ours_ms"), row.get("official_ms"))
            )
            what = f"{key} tracked" if "object" in key else "image encoder alone, ms"
            speed.append(f"| 2.1 {size}, {what} | {_mean(a)} | {_mean(b)} | {_ratio(a, b, 'ms' in what)} |")
    comp = checks.get("compile")
    if comp and isinstance(comp.get("ours"), dict):
        o, f = comp["ours"], comp.get("official", {})
        speed.append(
            f"| 2.1 tiny compiled, 1 object tracked (compile s: {_short(o.get('compile_s'))} / "
            f"{_short(f.get('compile_s'))}) | {_mean(o.get('fps'))} | {_mean(f.get('fps'))} | "
            f"{_ratio(o.get('fps'), f.get('fps'))} |"
        )
        speed.append(
            f"| 2.1 tiny compiled, image encoder alone, ms | {_mean(o.get('encoder_ms'))} | "
            f"{_mean(f.get('encoder_ms'))} | {_ratio(o.get('encoder_ms'), f.get('encoder_ms'), True)} |"
        )
    elif comp:
        speed.append(f"| compiled (torch.compile / vos_optimized) | | | {comp.get('status')} |")
    if speed:
        header = "| speed (bf16 on CUDA), frames/s; encoder: ms | ours | official | ours ÷ official speed (> 1: ours faster) |"
        lines += ["", header, "|---|---|---|---|", *speed]
    mem = checks.get("memory", {})
    lengths = [k for k, v in mem.items() if isinstance(v, dict)]
    if lengths:
        lines += [
            "",
            "| memory, ours, 1 object, lazy frames | " + " | ".join(f"{int(k):,} frames" for k in lengths) + " |",
            "|---" * (len(lengths) + 1) + "|",
        ]
        for key, label in (
            ("peak_gpu_allocated_mib", "peak GPU memory allocated, MiB"),
            ("peak_rss_mib", "peak host RSS, MiB"),
            ("frames_tracked", "frames tracked"),
            ("fps", "frames/s"),
        ):
            lines.append(f"| {label} | " + " | ".join(_short(mem[k].get(key)) for k in lengths) + " |")
    if report["skipped"]:
        lines += ["", "Skipped: " + "; ".join(report["skipped"]) + "."]
    return "\n".join(lines) + "\n"


def _short(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:.4g}"
    if isinstance(v, dict):
        return "(" + ", ".join(f"{k} {_short(x)}" for k, x in v.items()) + ")"
    return str(v)


def _mean(values) -> str:
    return f"{np.mean(values):.1f}" if values else "-"


def _ratio(a, b, times=False) -> str:
    """Speed of ours ÷ the official's: frames/s divided, or times (ms) divided the other way round."""
    if not a or not b:
        return "-"
    r = np.mean(a) / np.mean(b)
    return f"{1 / r if times else r:.2f}"


# ---------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="folder for gpu_check.json and gpu_check.md")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (the dry run: tiny sizes)")
    ap.add_argument("--quick", action="store_true", help="2.1 tiny only, fewer frames, no compile")
    ap.add_argument("--budget", type=float, default=330.0, help="seconds for the whole run (default 330)")
    ap.add_argument("--only", nargs="+", choices=CHECKS, default=list(CHECKS), help="run only these checks")
    ap.add_argument("--models", nargs="+", choices=list(MODELS), help="model sizes for the speed check")
    ap.add_argument("--compile-mode", default="default", help="torch.compile mode for ours (default: 'default')")
    ap.add_argument("--workdir", type=Path, help="where checkpoints go (default: a temporary folder, removed)")
    args = ap.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        msg = f"no CUDA GPU here (torch {torch.__version__}): nothing to check. The dry run: --device cpu --quick"
        print(msg)
        (args.out / "gpu_check.json").write_text(json.dumps({"status": msg}, indent=1))
        return 0
    plan = make_plan(device.type, args.quick)
    if device.type == "cpu":
        # the dry run checks the code path; on a shared CI machine one thread is several times faster (no
        # thread barriers waiting on busy cores). The children inherit it through the environment.
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)
    if args.models:
        plan.models = args.models
    budget = Budget(args.budget)
    warnings.filterwarnings("ignore", category=UserWarning)  # the official's notices about optional extensions
    temp = None
    if args.workdir is None:
        temp = tempfile.TemporaryDirectory(prefix="gpu_check_")
        args.workdir = Path(temp.name)
    args.workdir.mkdir(parents=True, exist_ok=True)
    ctx = {
        "device": device,
        "plan": plan,
        "ckpt": Checkpoints(args.workdir, plan.size),
        "workdir": args.workdir,
        "official": official_status(),
        "compile_mode": args.compile_mode,
    }
    report = {
        "environment": environment(device),
        "plan": asdict(plan),
        "budget_s": args.budget,
        "checks": {},
        "skipped": [],
    }
    log(
        f"gpu_check: {plan.name} plan on {report['environment'].get('gpu', device)}, budget {args.budget:.0f} s; "
        f"official: {ctx['official'] or 'importable'}"
    )

    jobs = []  # (name, function, cap): the order is the priority
    if "correctness" in args.only:
        jobs.append(("correctness", check_correctness, plan.caps["correctness"]))
    if "speed" in args.only:
        for size in plan.models:
            jobs.append(
                (
                    f"speed {MODELS[size]}",
                    lambda res, dl, c, n=MODELS[size]: check_speed(res, dl, c, n),
                    plan.caps["speed"],
                )
            )
    if "memory" in args.only:
        jobs.append(("memory", check_memory, plan.caps["memory"]))
    if "compile" in args.only:
        if plan.caps["compile"]:
            jobs.append(("compile", check_compile, plan.caps["compile"]))
        else:
            report["checks"]["compile"] = {"status": f"skipped: not in the {plan.name} plan (compiling takes minutes)"}
            report["skipped"].append(f"compile (not in the {plan.name} plan)")

    for name, fn, cap in jobs:
        if budget.left() < 10:
            report["checks"][name] = {"status": "skipped: total budget spent"}
            report["skipped"].append(f"{name} (budget spent)")
            log(f"{name}: skipped, the budget is spent")
            continue
        deadline = budget.deadline(cap)
        log(f"{name}: start (cap {deadline - time.monotonic():.0f} s)")
        res, t = {}, time.monotonic()
        try:
            fn(res, deadline, ctx)
        except OutOfTime:
            res["status"] = f"partial: time cap ({cap:.0f} s or the budget) reached; rows so far kept"
        except Exception as exc:  # noqa: BLE001 (one broken check must not cost the others their lease time)
            res["status"] = f"error: {type(exc).__name__}: {exc}"
            res["traceback"] = traceback.format_exc().splitlines()[-12:]
            print("\n".join(res["traceback"]), flush=True)
        res["seconds"] = round(time.monotonic() - t, 1)
        report["checks"][name] = res
        log(f"{name}: {res['status']} ({res['seconds']} s)")
        free(device)
        write_report(report, args.out)  # after every check: a run killed from outside still leaves its results

    write_report(report, args.out)
    log(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}")
    print(markdown(report))
    if temp is not None:
        temp.cleanup()
    correctness = report["checks"].get("correctness", {}).get("status", "")
    return 1 if correctness.startswith(("FAIL", "error")) else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--_child":
        child_main(json.loads(sys.argv[2]))
        sys.exit(0)
    sys.exit(main())
