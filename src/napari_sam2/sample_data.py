"""Synthetic fluorescence-microscopy stacks with exact ground truth (numpy + scipy; no napari, no downloads).

Two generators, both seeded and deterministic (same arguments -> identical arrays):

* `nuclei_timelapse`: a 2-D time-lapse [T, Y, X] of moving, touching, dividing, vanishing and reappearing nuclei,
  with ground-truth labels (an object keeps its id while it is the same nucleus) and the lineage of the division.
* `nuclei_zstack`: a 3-D stack [Z, Y, X] of ellipsoidal nuclei, with ground-truth labels.
* `synthetic_nuclei_4d`: a 3-D time-lapse [T, Z, Y, X] of ellipsoidal nuclei moving in 3-D (one dives through
  the slices, one divides), with ground-truth labels and the lineage.

The image model, in order: ellipses/ellipsoids with a chromatin texture and dark nucleoli -> an uneven
background (autofluorescence) -> uneven illumination (vignetting) -> a Gaussian PSF -> a camera that counts
photons (Poisson) and adds read noise (Gaussian) on an offset, quantised to 8 bits, or to 12 bits stored in
uint16 like a scientific camera. Labels are the true object masks before blur and noise; where two objects
touch, each pixel belongs to the one whose centre it is relatively nearer (a shared border, no gap, no overlap).
Label arrays are uint32, 0 is background.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

__all__ = [
    "SampleStack",
    "as_layer_data",
    "nuclei_lineage_timelapse",
    "nuclei_timelapse",
    "nuclei_zstack",
    "synthetic_nuclei_4d",
    "write_ctc_ground_truth",
]


@dataclass
class SampleStack:
    """A synthetic stack and its ground truth.

    image: [T, Y, X] or [Z, Y, X], uint8 or uint16. labels: same shape, uint32 object ids (0 = background).
    lineage: {daughter id: mother id} for divisions. axes: "TYX" or "ZYX". scale: voxel size per axis in units of
    the lateral pixel (a z-stack has z steps larger than its pixels). events: what was staged and where
    (ids and frames of the division, the touching pair, the nucleus that leaves and comes back, ...).
    """

    image: np.ndarray
    labels: np.ndarray
    lineage: dict[int, int] = field(default_factory=dict)
    axes: str = "TYX"
    scale: tuple[float, ...] = (1.0, 1.0, 1.0)
    events: dict = field(default_factory=dict)


# ---------------------------------------------------------------------- shared pieces
def _camera_range(dtype) -> tuple[np.dtype, int]:
    dt = np.dtype(dtype)
    if dt == np.uint8:
        return dt, 255
    if dt == np.uint16:
        return dt, 4095  # a 12-bit camera: uint16 storage, values up to 4095
    raise ValueError(f"dtype must be numpy.uint8 or numpy.uint16; got {dt}")


def _camera(signal: np.ndarray, rng: np.random.Generator, dtype, photons: float, read_noise: float) -> np.ndarray:
    """Photon counting + read noise + offset, quantised. signal: expected intensity, 1.0 = a bright nucleus, which
    receives `photons` photons per pixel and lands at a little over half the camera range (headroom for
    mitotic and overlapping bright spots)."""
    dt, full = _camera_range(dtype)
    offset = 0.04 * full
    gain = (0.55 * full - offset) / photons  # grey levels per photo-electron
    expected = np.clip(signal, 0, None, dtype=np.float32) * np.float32(photons)
    # Photon shot noise. Drawn exactly where few photons arrive; from its normal limit (same mean and variance)
    # from 10 expected photons up, where the two cannot be told apart and the normal draw is ~5x faster.
    electrons = np.empty_like(expected)
    few = expected < 10
    electrons[few] = rng.poisson(expected[few])
    many = ~few
    electrons[many] = expected[many] + np.sqrt(expected[many]) * rng.standard_normal(int(many.sum()), np.float32)
    electrons += np.float32(read_noise) * rng.standard_normal(signal.shape, np.float32)
    adu = np.float32(offset) + np.float32(gain) * electrons
    return np.clip(np.rint(adu), 0, full).astype(dt)


def _inside(rng: np.random.Generator, margin: float, extent: int) -> float:
    """A random centre coordinate `margin` px clear of both ends of [0, extent - 1]; the middle where the nucleus is
    too large for that (it is then cut by the border, as in a real field of view). Consumes one draw either way."""
    low, high = margin, extent - margin - 1
    if high < low:
        low = high = (extent - 1) / 2
    return float(rng.uniform(low, high))


def _smooth_noise(rng: np.random.Generator, shape, sigma) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to zero mean and unit standard deviation."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape, np.float32), sigma, mode="wrap")
    return (noise - noise.mean()) / (noise.std() + 1e-12)


def _background(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(autofluorescence, illumination), both [Y, X]: a patchy, slightly sloped background ~0.1 of a nucleus, and a
    vignetting that falls to ~80 % in the corners."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    patches = _smooth_noise(rng, shape, max(h, w) / 10)
    slope = rng.uniform(-1, 1) * (xx / w - 0.5) + rng.uniform(-1, 1) * (yy / h - 0.5)
    autofluorescence = np.clip(0.10 + 0.025 * patches + 0.03 * slope, 0.02, None)
    cy, cx = (h - 1) / 2 + rng.uniform(-0.1, 0.1) * h, (w - 1) / 2 + rng.uniform(-0.1, 0.1) * w
    illumination = 1.0 - 0.1 * (((yy - cy) / (h / 2)) ** 2 + ((xx - cx) / (w / 2)) ** 2)
    return autofluorescence, illumination


def _texture_patch(rng: np.random.Generator, half: int, radius: float) -> np.ndarray:
    """A square chromatin texture around a nucleus centre (mean ~1) with 1-2 darker nucleoli."""
    size = 2 * half + 1
    tex = 1.0 + 0.2 * _smooth_noise(rng, (size, size), 1.2)
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    for _ in range(rng.integers(1, 3)):
        oy, ox = rng.uniform(-0.35, 0.35, 2) * radius
        spot = np.exp(-((yy - oy) ** 2 + (xx - ox) ** 2) / (2 * (0.18 * radius) ** 2))
        tex *= 1.0 - 0.4 * spot
    return tex


@dataclass
class _Shape2D:
    """One nucleus on one frame: centre (y, x), semi-axes a (along `angle`, radians from +x) and b, brightness."""

    y: float
    x: float
    a: float
    b: float
    angle: float
    brightness: float


def _paint_ellipse(obj_id, s: _Shape2D, tex, signal, labels, nearest):
    """Draw one nucleus into the frame buffers, in place. nearest[Y, X] holds the normalised radius of the object
    that owns each pixel so far; a pixel goes to the object it is relatively nearest (touching objects share a
    border). The signal keeps the brightest contribution, with a one-pixel soft edge."""
    h, w = labels.shape
    reach = max(s.a, s.b) + 2
    y0, y1 = max(0, math.floor(s.y - reach)), min(h, math.ceil(s.y + reach) + 1)
    x0, x1 = max(0, math.floor(s.x - reach)), min(w, math.ceil(s.x + reach) + 1)
    if y0 >= y1 or x0 >= x1:
        return  # entirely outside the field of view
    dy = np.arange(y0, y1)[:, None] - s.y
    dx = np.arange(x0, x1)[None, :] - s.x
    cos, sin = math.cos(s.angle), math.sin(s.angle)
    u = dx * cos + dy * sin  # along the major axis
    v = -dx * sin + dy * cos
    r = np.sqrt((u / s.a) ** 2 + (v / s.b) ** 2)

    own = (r <= 1.0) & (r < nearest[y0:y1, x0:x1])
    labels[y0:y1, x0:x1][own] = obj_id
    nearest[y0:y1, x0:x1][own] = r[own]

    half = tex.shape[0] // 2
    iu = np.clip(np.rint(u).astype(int) + half, 0, 2 * half)
    iv = np.clip(np.rint(v).astype(int) + half, 0, 2 * half)
    edge = np.clip((1.0 - r) * min(s.a, s.b) + 0.5, 0.0, 1.0)
    value = s.brightness * tex[iv, iu] * (0.9 + 0.1 * (1 - np.minimum(r, 1) ** 2)) * edge
    np.maximum(signal[y0:y1, x0:x1], value, out=signal[y0:y1, x0:x1])


# ---------------------------------------------------------------------- time-lapse
def nuclei_timelapse(
    n_frames: int = 30,
    shape: tuple[int, int] = (256, 256),
    n_nuclei: int = 8,
    seed: int = 0,
    dtype=np.uint8,
    *,
    psf_sigma: float = 1.2,
    photons: float = 150.0,
    read_noise: float = 2.0,
    nucleus_radius: float | None = None,
    arrivals: int = 0,
    extra_divisions: int = 0,
) -> SampleStack:
    """A 2-D fluorescence time-lapse of nuclei with ground truth: image [T, Y, X], labels [T, Y, X] uint32, lineage.

    n_frames: T. shape: (Y, X) in pixels; nucleus size scales with min(Y, X) (radius ~10 px at 256).
    n_nuclei: nuclei on the first frame (ids 1..n_nuclei); a division adds two more ids. seed: all randomness.
    dtype: numpy.uint8 (8-bit, 0..255) or numpy.uint16 (12-bit camera, 0..4095).
    psf_sigma: lateral Gaussian PSF in pixels. photons: photons per pixel of a bright nucleus (lower = noisier).
    read_noise: camera read noise in electrons. nucleus_radius: typical radius in pixels (default ~10 px at 256,
    scaled with the shape; motion scales with it).

    Staged events (by id, given enough nuclei and frames; `events` records them):
      1  divides at frame T//2: it elongates and brightens, then ends; daughters n_nuclei+1 and n_nuclei+2 start
         on the next frame side by side, touching, and move apart (lineage {daughter: 1}). Needs T >= 4.
      2  swims out through the right edge, is absent for a few frames and comes back with the same id.
      3,4  a touching pair that drifts together (a shared border on every frame).
      5  fades and disappears for good at about 70 % of the movie.
      others wander (persistent random walks) and keep clear of each other.
    Slow photobleaching dims nuclei by ~10 % over the movie. Runs in well under a second at the defaults.

    Opt-in events (drawn from a second random stream, so the defaults above stay bit-identical):
      arrivals: that many new nuclei swim in from the border between 25 % and 60 % of the movie (first seen
         partly inside the field, fully inside a few frames later), ids after the division's daughters;
         `events["arrivals"]` = [{"id", "frame" (first frame with pixels)}].
      extra_divisions: that many wandering nuclei divide as well (at 35-75 % of the movie), each ending on the
         frame before its two daughters appear; `events["divisions"]` lists every division (the scripted one
         first) as {"parent", "children", "frame"}, and `lineage` holds them all.
    `nuclei_lineage_timelapse` is the preset with several of both.
    """
    n_frames, n_nuclei = int(n_frames), int(n_nuclei)
    if n_frames < 1 or n_nuclei < 0:
        raise ValueError("n_frames must be >= 1 and n_nuclei >= 0")
    h, w = (int(s) for s in shape)
    _camera_range(dtype)
    rng = np.random.default_rng(seed)
    r0 = max(3.0, 10.0 * min(h, w) / 256) if nucleus_radius is None else float(nucleus_radius)
    roles = ["divides", "leaves_and_returns", "touch_a", "touch_b", "vanishes"]
    roles = roles[:n_nuclei] + ["wanders"] * max(0, n_nuclei - len(roles))
    if n_nuclei == 3:  # a touching pair needs both members
        roles[2] = "wanders"

    # tracks[id] = {frame: _Shape2D}; textures[id] = patch
    tracks: dict[int, dict[int, _Shape2D]] = {}
    textures: dict[int, np.ndarray] = {}
    lineage: dict[int, int] = {}
    events: dict = {}
    half = math.ceil(1.6 * r0) + 2

    def new_texture(obj_id, radius):
        textures[obj_id] = _texture_patch(rng, half, radius)

    def axes():
        a = r0 * rng.uniform(0.95, 1.25)
        return a, a * rng.uniform(0.7, 0.9)

    # --- 1: division
    if "divides" in roles:
        parent = 1
        a, b = axes()
        angle = rng.uniform(0, math.pi)
        y, x = 0.5 * h + rng.uniform(-0.03, 0.03) * h, 0.45 * w + rng.uniform(-0.03, 0.03) * w
        bright = rng.uniform(0.8, 0.95)
        new_texture(parent, a)
        t_div = n_frames // 2 if n_frames >= 4 else n_frames  # == n_frames: no division fits
        step = rng.normal(0, 0.15 * r0 / 10, (n_frames, 2))
        track = {}
        for t in range(t_div):
            y, x = y + step[t, 0], x + step[t, 1]
            mitotic = t >= t_div - 2  # prophase/metaphase: longer, thinner, brighter
            track[t] = _Shape2D(
                y,
                x,
                a * (1.2 if mitotic else 1.0),
                b * (0.75 if mitotic else 1.0),
                angle,
                bright * (1.3 if mitotic else 1),
            )
        tracks[parent] = track
        if t_div < n_frames:
            children = (n_nuclei + 1, n_nuclei + 2)
            direction = np.array([math.sin(angle), math.cos(angle)])  # (dy, dx) along the major axis
            for sign, child in zip((-1, 1), children):
                new_texture(child, 0.8 * r0)
                lineage[child] = parent
                track = {}
                for k, t in enumerate(range(t_div, n_frames)):
                    grow = min(1.0, k / 6)
                    ca, cb = r0 * (0.72 + 0.22 * grow), r0 * (0.58 + 0.17 * grow)
                    apart = 0.92 * ca + 0.45 * r0 * min(k, 5)  # from the division point; touching at k=0
                    cy, cx = y + sign * apart * direction[0], x + sign * apart * direction[1]
                    track[t] = _Shape2D(cy, cx, ca, cb, angle + 0.02 * k * sign, bright * (1.25 if k < 2 else 1.0))
                tracks[child] = track
            events["division"] = {"parent": parent, "children": children, "frame": t_div}

    # --- 2: leaves through the right edge and comes back
    if "leaves_and_returns" in roles:
        obj = 2
        a, b = axes()
        new_texture(obj, a)
        bright = rng.uniform(0.65, 0.9)
        y_line = 0.2 * h + rng.uniform(-0.03, 0.03) * h
        t_turn = max(1.0, 0.45 * (n_frames - 1))
        x_turn = w + 2.5 * r0  # the turning point lies fully outside
        speed = 6.0 * r0 / t_turn
        tracks[obj] = {
            t: _Shape2D(y_line + 0.1 * r0 * math.sin(0.5 * t), x_turn - abs(t - t_turn) * speed, a, b, 0.1, bright)
            for t in range(n_frames)
        }

    # --- 3, 4: a touching pair
    if "touch_a" in roles and "touch_b" in roles:
        ids = (3, 4)
        shapes = [axes() for _ in ids]
        brights = rng.uniform(0.6, 0.9, 2)
        for obj, (a, _) in zip(ids, shapes):
            new_texture(obj, a)
        cy, cx = 0.75 * h, 0.3 * w
        psi = rng.uniform(0, math.pi)
        drift = rng.normal(0, 0.1 * r0 / 10, (n_frames, 2))
        b3, b4 = shapes[0][1], shapes[1][1]
        pair_tracks = {obj: {} for obj in ids}
        for t in range(n_frames):
            cy, cx = cy + drift[t, 0], cx + drift[t, 1]
            direction = (math.sin(psi + 0.03 * t), math.cos(psi + 0.03 * t))
            # minor axes face each other; the centres are slightly closer than b3 + b4, so the masks meet
            d = (b3 + b4) * (0.9 + 0.04 * math.sin(0.4 * t))
            for obj, (a, b), bright, frac in zip(ids, shapes, brights, (-b3, b4)):
                off = d * frac / (b3 + b4)
                pair_tracks[obj][t] = _Shape2D(
                    cy + off * direction[0], cx + off * direction[1], a, b, psi + 0.03 * t + math.pi / 2, bright
                )
        tracks.update(pair_tracks)
        events["touching"] = ids

    # --- wanderers (including 5, which vanishes), simulated together so that they keep clear of everything else
    wanderer_ids = [i + 1 for i, role in enumerate(roles) if role in ("wanders", "vanishes")]
    vanish_id = 5 if "vanishes" in roles else None
    vanish_end = round(0.7 * (n_frames - 1)) if vanish_id else None
    w_axes = {obj: axes() for obj in wanderer_ids}
    w_bright = {obj: rng.uniform(0.55, 1.0) for obj in wanderer_ids}
    w_angle = {obj: rng.uniform(0, math.pi) for obj in wanderer_ids}
    w_spin = {obj: rng.normal(0, 0.02) for obj in wanderer_ids}
    for obj in wanderer_ids:
        new_texture(obj, w_axes[obj][0])

    def fixed_at(t):
        """(y, x, radius) of the scripted nuclei on frame t."""
        return [(s.y, s.x, max(s.a, s.b)) for tr in tracks.values() if t in tr for s in [tr[t]]]

    pos: dict[int, np.ndarray] = {}
    for obj in wanderer_ids:
        a = w_axes[obj][0]
        others = fixed_at(0) + [(p[0], p[1], w_axes[o][0]) for o, p in pos.items()]
        best, best_gap = None, -np.inf
        for _ in range(30):  # best of 30 random candidates: spreads the nuclei over the field
            cand = np.array([_inside(rng, a + 2, h), _inside(rng, a + 2, w)])
            gap = min((math.hypot(cand[0] - oy, cand[1] - ox) - a - orad for oy, ox, orad in others), default=np.inf)
            if gap > best_gap:
                best, best_gap = cand, gap
        pos[obj] = best
    vel = {obj: rng.normal(0, 0.3 * r0 / 10, 2) for obj in wanderer_ids}
    kicks = rng.normal(0, 0.25 * r0 / 10, (n_frames, len(wanderer_ids), 2))

    w_tracks: dict[int, dict[int, _Shape2D]] = {obj: {} for obj in wanderer_ids}
    for t in range(n_frames):
        alive = [o for o in wanderer_ids if not (o == vanish_id and t > vanish_end)]
        if t > 0:
            for k, obj in enumerate(wanderer_ids):
                vel[obj] = 0.85 * vel[obj] + kicks[t, k]
                pos[obj] = pos[obj] + vel[obj]
            fixed = fixed_at(t)
            for _ in range(3):  # push overlapping nuclei apart (scripted ones do not yield)
                for obj in alive:
                    a = w_axes[obj][0]
                    others = [(y, x, rad, 1.0) for y, x, rad in fixed]
                    others += [(pos[o][0], pos[o][1], w_axes[o][0], 0.5) for o in alive if o != obj]
                    for oy, ox, orad, share in others:
                        d = pos[obj] - (oy, ox)
                        dist = float(np.hypot(*d)) + 1e-9
                        deficit = a + orad + 2.0 - dist
                        if deficit > 0:
                            pos[obj] = pos[obj] + share * deficit * d / dist
                    lo, hi = np.array([a + 1, a + 1]), np.array([h - a - 2, w - a - 2])
                    bounced = (pos[obj] < lo) | (pos[obj] > hi)
                    vel[obj] = np.where(bounced, -vel[obj], vel[obj])
                    pos[obj] = np.clip(pos[obj], lo, hi)
        for obj in alive:
            a, b = w_axes[obj]
            bright = w_bright[obj]
            if obj == vanish_id and t > vanish_end - 2:
                bright *= 0.7 if t == vanish_end - 1 else 0.45  # fading before it is gone
            w_tracks[obj][t] = _Shape2D(pos[obj][0], pos[obj][1], a, b, w_angle[obj] + w_spin[obj] * t, bright)
    tracks.update(w_tracks)
    if vanish_id is not None and vanish_end < n_frames - 1:
        events["vanishes"] = {"id": vanish_id, "last_frame": vanish_end}

    if arrivals or extra_divisions:
        _add_lineage_events(
            np.random.default_rng([seed, 14]), tracks, textures, lineage, events, (h, w), n_frames, r0, half,
            [o for o in wanderer_ids if o != vanish_id], arrivals, extra_divisions,
        )  # fmt: skip

    # --- render
    autofluorescence, illumination = _background(rng, (h, w))
    image = np.empty((n_frames, h, w), dtype=np.dtype(dtype))
    labels = np.zeros((n_frames, h, w), dtype=np.uint32)
    order = sorted(tracks)
    for t in range(n_frames):
        signal = np.zeros((h, w))
        nearest = np.full((h, w), np.inf)
        for obj in order:
            if t in tracks[obj]:
                _paint_ellipse(obj, tracks[obj][t], textures[obj], signal, labels[t], nearest)
        bleach = math.exp(-0.1 * t / max(1, n_frames - 1))
        optical = ndimage.gaussian_filter((bleach * signal + autofluorescence) * illumination, psf_sigma)
        image[t] = _camera(optical, rng, dtype, photons, read_noise)

    for arrival in events.get("arrivals", []):  # the first frame with pixels (it starts outside the field)
        seen = (labels == arrival["id"]).reshape(n_frames, -1).any(axis=1)
        arrival["frame"] = int(np.argmax(seen)) if seen.any() else None
    if "leaves_and_returns" in roles:
        present = (labels == 2).reshape(n_frames, -1).any(axis=1)
        gap = [t for t in range(n_frames) if not present[t]]
        if gap and present[: gap[0]].any() and present[gap[-1] :].any():
            events["leaves_and_returns"] = {"id": 2, "absent_frames": gap}
    return SampleStack(image, labels, lineage, axes="TYX", scale=(1.0, 1.0, 1.0), events=events)


def _add_lineage_events(rng, tracks, textures, lineage, events, shape, n_frames, r0, half, wanderers, n_in, n_div):
    """Arrivals from the border and divisions of wanderers (see `nuclei_timelapse`), in place."""
    h, w = shape
    next_id = max(tracks, default=0) + 1
    if "division" in events:
        events["divisions"] = [dict(events["division"])]

    def clearance(path: dict[int, _Shape2D], skip=()) -> float:
        """Smallest gap between the path and every other nucleus over the path's frames."""
        gap = np.inf
        for t, s in path.items():
            for obj, tr in tracks.items():
                if obj in skip or t not in tr:
                    continue
                o = tr[t]
                gap = min(gap, math.hypot(s.y - o.y, s.x - o.x) - max(s.a, s.b) - max(o.a, o.b))
        return gap

    for _ in range(int(n_in)):
        a = r0 * rng.uniform(0.95, 1.2)
        b = a * rng.uniform(0.7, 0.9)
        best, best_gap = None, -np.inf
        for _ in range(40):  # best of 40 random entries: keeps newcomers clear of everyone else
            t_in = int(rng.integers(max(1, round(0.25 * n_frames)), max(2, round(0.6 * n_frames)) + 1))
            side = int(rng.integers(4))
            along = rng.uniform(0.2, 0.8)
            start = [(-a, along * w), (h + a, along * w), (along * h, -a), (along * h, w + a)][side]
            inward = [(1, 0), (-1, 0), (0, 1), (0, -1)][side]
            speed = rng.uniform(0.35, 0.55) * r0
            angle = rng.uniform(0, math.pi)
            path = {}
            for k, t in enumerate(range(t_in, n_frames)):
                step = min(k, 4 * a / speed) * speed  # swims in, then drifts slowly
                drift = max(0.0, k - 4 * a / speed) * 0.05 * r0
                y = start[0] + inward[0] * (step + drift)
                x = start[1] + inward[1] * (step + drift)
                path[t] = _Shape2D(y + 0.4 * a * inward[0], x + 0.4 * a * inward[1], a, b, angle, rng.uniform(0.6, 0.9))
            gap = clearance(path)
            if gap > best_gap:
                best, best_gap = path, gap
        if not best:  # a movie too short for it to enter (its entry frame would be past the last frame)
            continue
        obj = next_id
        next_id += 1
        textures[obj] = _texture_patch(rng, half, a)
        tracks[obj] = best
        events.setdefault("arrivals", []).append({"id": obj, "frame": min(best)})

    candidates = [o for o in wanderers if o in tracks]
    rng.shuffle(candidates)
    for mother in candidates[: int(n_div)]:
        t_div = int(rng.integers(max(2, round(0.35 * n_frames)), max(3, round(0.75 * n_frames)) + 1))
        if t_div >= n_frames:
            continue
        track = tracks[mother]
        for t in (t_div - 2, t_div - 1):  # prophase/metaphase: longer, thinner, brighter
            s = track[t]
            track[t] = _Shape2D(s.y, s.x, s.a * 1.2, s.b * 0.75, s.angle, s.brightness * 1.3)
        last = track[t_div - 1]
        for t in range(t_div, n_frames):
            del track[t]
        direction = np.array([math.sin(last.angle), math.cos(last.angle)])
        children = (next_id, next_id + 1)
        next_id += 2
        for sign, child in zip((-1, 1), children, strict=True):
            textures[child] = _texture_patch(rng, half, 0.8 * r0)
            lineage[child] = mother
            path = {}
            for k, t in enumerate(range(t_div, n_frames)):
                grow = min(1.0, k / 6)
                ca, cb = r0 * (0.72 + 0.22 * grow), r0 * (0.58 + 0.17 * grow)
                apart = 0.92 * ca + 0.45 * r0 * min(k, 5)
                cy = float(np.clip(last.y + sign * apart * direction[0], ca, h - ca - 1))
                cx = float(np.clip(last.x + sign * apart * direction[1], ca, w - ca - 1))
                path[t] = _Shape2D(cy, cx, ca, cb, last.angle + 0.02 * k * sign, last.brightness / 1.3)
            tracks[child] = path
        events.setdefault("divisions", []).append({"parent": mother, "children": children, "frame": t_div})


def nuclei_lineage_timelapse(n_frames: int = 40, seed: int = 0, **kwargs) -> SampleStack:
    """The harder lineage preset of `nuclei_timelapse`: 40 frames of 256 x 256, 10 nuclei, the scripted division
    plus 3 more (4 in all), 3 nuclei arriving from the border mid-movie. Keyword arguments override any setting."""
    settings = {"shape": (256, 256), "n_nuclei": 10, "arrivals": 3, "extra_divisions": 3, **kwargs}
    return nuclei_timelapse(n_frames=n_frames, seed=seed, **settings)


# ---------------------------------------------------------------------- z-stack
def _ellipsoid_footprint(m: dict, z_step: float, shape: tuple[int, int, int]):
    """Where a nucleus (dict: centre (z, y, x) in xy pixels, semi-axes a, b in xy and c in z, angle in the xy plane)
    lies in a [Z, Y, X] volume whose slices are `z_step` pixels apart: (box, dz, u, v, r) with box the slices of its
    bounding box, dz/u/v its offsets along z and its two rotated axes, r its normalised radius (1 on the surface);
    None if it lies outside the volume."""
    n_slices, h, w = shape
    zc, yc, xc = m["centre"]
    a, b, c = m["a"], m["b"], m["c"]
    reach = max(a, b) + 2
    z0, z1 = max(0, math.floor((zc - c) / z_step) - 1), min(n_slices, math.ceil((zc + c) / z_step) + 2)
    y0, y1 = max(0, int(yc - reach)), min(h, int(yc + reach) + 2)
    x0, x1 = max(0, int(xc - reach)), min(w, int(xc + reach) + 2)
    if z0 >= z1 or y0 >= y1 or x0 >= x1:
        return None
    dz = (np.arange(z0, z1) * z_step - zc)[:, None, None]
    dy = (np.arange(y0, y1) - yc)[None, :, None]
    dx = (np.arange(x0, x1) - xc)[None, None, :]
    cos, sin = math.cos(m["angle"]), math.sin(m["angle"])
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos
    r = np.sqrt((u / a) ** 2 + (v / b) ** 2 + (dz / c) ** 2)
    return (slice(z0, z1), slice(y0, y1), slice(x0, x1)), dz, u, v, r


def nuclei_zstack(
    n_slices: int = 24,
    shape: tuple[int, int] = (256, 256),
    n_nuclei: int = 10,
    seed: int = 0,
    dtype=np.uint8,
    *,
    z_step: float = 2.0,
    psf_sigma: float = 1.2,
    axial_ratio: float = 3.0,
    depth_attenuation: float = 0.5,
    photons: float = 200.0,
    read_noise: float = 2.0,
    nucleus_radius: float | None = None,
) -> SampleStack:
    """A 3-D fluorescence stack of ellipsoidal nuclei with ground truth: image [Z, Y, X], labels [Z, Y, X] uint32.

    n_slices: Z. shape: (Y, X) in pixels; nucleus radius ~11 px at 256. n_nuclei: ids 1..n_nuclei (nuclei 1 and 2
    touch). seed: all randomness. dtype: numpy.uint8 (0..255) or numpy.uint16 (12-bit camera, 0..4095).
    z_step: slice spacing in pixel units (anisotropic voxels; `scale` = (z_step, 1, 1)); nuclei are somewhat
    flatter than wide, and some are cut by the top or bottom of the stack.
    psf_sigma: lateral PSF sigma in pixels; axial_ratio: axial / lateral PSF width (the axial blur is stronger).
    depth_attenuation: brightness left at the deepest slice (z = Z-1) relative to the top (z = 0), from
    scattering/absorption, falling exponentially with depth. photons, read_noise: as in `nuclei_timelapse`.
    nucleus_radius: typical lateral radius in pixels (default ~11 px at 256, scaled with the shape).
    """
    n_slices, n_nuclei = int(n_slices), int(n_nuclei)
    if n_slices < 1 or n_nuclei < 0:
        raise ValueError("n_slices must be >= 1 and n_nuclei >= 0")
    h, w = (int(s) for s in shape)
    _camera_range(dtype)
    rng = np.random.default_rng(seed)
    r0 = max(3.0, 11.0 * min(h, w) / 256) if nucleus_radius is None else float(nucleus_radius)
    depth = (n_slices - 1) * z_step  # physical extent along z, in pixel units

    # ellipsoids: centre (z, y, x) in pixel units, semi-axes a, b (in the y-x plane, a along `angle`), c (along z)
    nuclei = []
    for obj in range(1, n_nuclei + 1):
        a = r0 * rng.uniform(0.9, 1.2)
        b = a * rng.uniform(0.75, 0.95)
        c = a * rng.uniform(0.6, 0.8)
        angle = rng.uniform(0, math.pi)
        if obj == 2 and nuclei:  # touching nucleus 1: side by side, minor axes facing
            n1 = nuclei[0]
            psi = n1["angle"] + math.pi / 2
            d = 0.93 * (n1["b"] + b)
            centre = n1["centre"] + np.array([0.0, d * math.sin(psi), d * math.cos(psi)])
            angle = n1["angle"]
        else:
            lo = 3 * a if obj == 1 else a + 2  # nucleus 1 stays clear of the edges: 2 is placed beside it
            best, best_gap = None, -np.inf
            for _ in range(30):  # best of 30 random candidates: spreads the nuclei through the volume
                cand = np.array([rng.uniform(0.15 * depth, 0.85 * depth), _inside(rng, lo, h), _inside(rng, lo, w)])
                gap = min((np.linalg.norm(cand - m["centre"]) - a - m["a"] for m in nuclei), default=np.inf)
                if gap > best_gap:
                    best, best_gap = cand, gap
            centre = best
        nuclei.append(
            {"id": obj, "centre": centre, "a": a, "b": b, "c": c, "angle": angle, "bright": rng.uniform(0.6, 1.0)}
        )

    signal = np.zeros((n_slices, h, w), np.float32)
    nearest = np.full((n_slices, h, w), np.inf, np.float32)
    labels = np.zeros((n_slices, h, w), dtype=np.uint32)
    chromatin = 1.0 + 0.18 * _smooth_noise(rng, (n_slices, h, w), (1.2 / z_step, 1.2, 1.2))
    for m in nuclei:
        footprint = _ellipsoid_footprint(m, z_step, (n_slices, h, w))
        if footprint is None:
            continue
        box, *_, r = footprint
        a, b, c = m["a"], m["b"], m["c"]
        own = (r <= 1.0) & (r < nearest[box])
        labels[box][own] = m["id"]
        nearest[box][own] = r[own]
        edge = np.clip((1.0 - r) * min(a, b, c) + 0.5, 0.0, 1.0)
        value = m["bright"] * chromatin[box] * (0.9 + 0.1 * (1 - np.minimum(r, 1) ** 2)) * edge
        np.maximum(signal[box], value, out=signal[box])

    autofluorescence, illumination = _background(rng, (h, w))
    z_index = np.arange(n_slices)[:, None, None]
    attenuation = (depth_attenuation ** (z_index / max(1, n_slices - 1))).astype(np.float32)
    optical = (signal + autofluorescence[None].astype(np.float32)) * illumination[None].astype(np.float32)
    optical *= attenuation
    sigma_z = axial_ratio * psf_sigma / z_step  # in slices
    optical = ndimage.gaussian_filter(optical, (sigma_z, psf_sigma, psf_sigma))
    image = _camera(optical, rng, dtype, photons, read_noise)
    events = {"touching": (1, 2)} if n_nuclei >= 2 else {}
    return SampleStack(image, labels, {}, axes="ZYX", scale=(float(z_step), 1.0, 1.0), events=events)


# ---------------------------------------------------------------------- 3-D time-lapse
def synthetic_nuclei_4d(
    n_frames: int = 8,
    n_slices: int = 16,
    shape: tuple[int, int] = (96, 96),
    n_nuclei: int = 5,
    seed: int = 0,
    dtype=np.uint8,
    *,
    z_step: float = 2.0,
    psf_sigma: float = 1.0,
    axial_ratio: float = 2.5,
    depth_attenuation: float = 0.6,
    photons: float = 200.0,
    read_noise: float = 2.0,
    nucleus_radius: float | None = None,
) -> SampleStack:
    """A 3-D fluorescence time-lapse of ellipsoidal nuclei moving in 3-D, with ground truth: image [T, Z, Y, X],
    labels [T, Z, Y, X] uint32 (an object keeps its id while it is the same nucleus), lineage {daughter: mother}.

    n_frames: T. n_slices: Z. shape: (Y, X) in pixels; nucleus lateral radius ~7.5 px at 96 (scaled with the
    shape; `nucleus_radius` overrides). n_nuclei: ids 1..n_nuclei; the division adds n_nuclei+1 and n_nuclei+2.
    seed: all randomness. dtype: numpy.uint8 or numpy.uint16 (12-bit camera). z_step: slice spacing in pixel
    units (`scale` = (1, z_step, 1, 1)). psf_sigma, axial_ratio, depth_attenuation, photons, read_noise: as in
    `nuclei_zstack`.

    Staged events (`events` records them):
      1  divides at frame T//2 (T >= 4): elongates and brightens for two frames, then ends; its daughters start
         on the next frame touching each other and move apart along a 3-D direction that also crosses slices.
      2  dives: drifts steadily through the slices (its widest slice moves by about one slice every frame or two),
         so a tracker cannot keep an object on the slice it was prompted on.
      others wander (persistent 3-D random walks) and keep clear of each other.
    Slow photobleaching dims nuclei by ~10 % over the movie. About a second at the defaults.
    """
    n_frames, n_slices, n_nuclei = int(n_frames), int(n_slices), int(n_nuclei)
    if n_frames < 1 or n_slices < 1 or n_nuclei < 0:
        raise ValueError("n_frames and n_slices must be >= 1 and n_nuclei >= 0")
    h, w = (int(s) for s in shape)
    _camera_range(dtype)
    rng = np.random.default_rng(seed)
    r0 = max(3.0, 7.5 * min(h, w) / 96) if nucleus_radius is None else float(nucleus_radius)
    depth = max(1e-6, (n_slices - 1) * z_step)  # physical extent along z, in pixel units
    half = math.ceil(1.6 * r0) + 2
    z_lo, z_hi = 0.25 * depth, 0.75 * depth  # centres stay in the middle half: nuclei are mostly inside

    def texture():
        tex = 1.0 + 0.2 * _smooth_noise(rng, (2 * half + 1,) * 3, 1.2)
        zz, yy, xx = np.mgrid[-half : half + 1, -half : half + 1, -half : half + 1]
        for _ in range(rng.integers(1, 3)):  # one or two darker nucleoli
            o = rng.uniform(-0.3, 0.3, 3) * r0
            tex *= 1.0 - 0.4 * np.exp(-((zz - o[0]) ** 2 + (yy - o[1]) ** 2 + (xx - o[2]) ** 2) / (2 * (0.2 * r0) ** 2))
        return tex.astype(np.float32)

    # one nucleus on one frame: centre (z, y, x) in pixel units, semi-axes a (along angle), b, c (along z)
    tracks: dict[int, dict[int, dict]] = {}
    textures: dict[int, np.ndarray] = {}
    lineage: dict[int, int] = {}
    events: dict = {}
    size = {}
    for obj in range(1, n_nuclei + 1):
        a = r0 * rng.uniform(0.95, 1.2)
        size[obj] = (a, a * rng.uniform(0.75, 0.92), a * rng.uniform(0.8, 1.0), rng.uniform(0, math.pi))
        textures[obj] = texture()
    bright = {obj: rng.uniform(0.6, 0.95) for obj in range(1, n_nuclei + 1)}

    pos: dict[int, np.ndarray] = {}
    for obj in range(1, n_nuclei + 1):
        a = size[obj][0]
        lo = 2.2 * a if obj == 1 else a + 2  # the dividing nucleus keeps room for its daughters
        best, best_gap = None, -np.inf
        for _ in range(40):  # best of 40 random candidates: spreads the nuclei through the volume
            zc = z_lo + 0.1 * depth if obj == 2 else rng.uniform(z_lo, z_hi)
            cand = np.array([zc, _inside(rng, lo, h), _inside(rng, lo, w)])
            gap = min((np.linalg.norm(cand - p) - a - size[o][0] for o, p in pos.items()), default=np.inf)
            if gap > best_gap:
                best, best_gap = cand, gap
        pos[obj] = best
    vel = {obj: np.concatenate([rng.normal(0, 0.08 * r0, 1), rng.normal(0, 0.2 * r0, 2)]) for obj in pos}
    kicks = rng.normal(0, 1.0, (n_frames, n_nuclei + 1, 3)) * np.array([0.06, 0.15, 0.15]) * r0
    dive = 0.5 * depth / max(1, n_frames - 1)  # nucleus 2 crosses half the depth over the movie
    dive = min(dive, 0.6 * z_step)  # at most ~half a slice per frame on long movies

    t_div = n_frames // 2 if (n_nuclei >= 1 and n_frames >= 4) else None
    for t in range(n_frames):
        alive = [o for o in pos if not (o == 1 and t_div is not None and t >= t_div)]
        if t > 0:
            for obj in alive:
                vel[obj] = 0.8 * vel[obj] + kicks[t, obj]
                if obj == 2:
                    vel[obj][0] = dive
                step = vel[obj] if obj != 1 else 0.4 * vel[obj]  # the mother hardly moves before dividing
                pos[obj] = pos[obj] + step
            fixed = [(tracks[o][t]["centre"], tracks[o][t]["a"]) for o in tracks if o > n_nuclei and t in tracks[o]]
            for _ in range(3):  # push overlapping nuclei apart (the daughters do not yield)
                for obj in alive:
                    a = size[obj][0]
                    others = [(c, r, 1.0) for c, r in fixed]
                    others += [(pos[o], size[o][0], 0.5) for o in alive if o != obj]
                    for centre, rad, share in others:
                        d = pos[obj] - centre
                        dist = float(np.linalg.norm(d)) + 1e-9
                        deficit = a + rad + 2.0 - dist
                        if deficit > 0:
                            pos[obj] = pos[obj] + share * deficit * d / dist
                    lo = np.array([z_lo, a + 1, a + 1])
                    hi = np.array([z_hi, h - a - 2, w - a - 2])
                    bounced = (pos[obj] < lo) | (pos[obj] > hi)
                    vel[obj] = np.where(bounced, -vel[obj], vel[obj])
                    pos[obj] = np.clip(pos[obj], lo, hi)
        for obj in alive:
            a, b, c, angle = size[obj]
            shine = bright[obj]
            if obj == 1 and t_div is not None and t >= t_div - 2:  # prophase/metaphase: longer, thinner, brighter
                a, b, c, shine = 1.2 * a, 0.75 * b, 0.8 * c, 1.3 * shine
            tracks.setdefault(obj, {})[t] = {"centre": pos[obj].copy(), "a": a, "b": b, "c": c, "angle": angle,
                                              "bright": shine}  # fmt: skip
        if t_div is not None and t == t_div - 1:
            mother = tracks[1][t]
            _, _, _, angle = size[1]
            direction = np.array([0.3, math.sin(angle), math.cos(angle)])
            direction /= np.linalg.norm(direction)
            children = (n_nuclei + 1, n_nuclei + 2)
            for sign, child in zip((-1, 1), children):
                textures[child] = texture()
                lineage[child] = 1
                tracks[child] = {}
                for k, tt in enumerate(range(t_div, n_frames)):
                    grow = min(1.0, k / 4)
                    ca, cb = r0 * (0.75 + 0.2 * grow), r0 * (0.62 + 0.15 * grow)
                    apart = 0.95 * ca + 0.5 * r0 * min(k, 4)
                    centre = mother["centre"] + sign * apart * direction
                    centre = np.clip(centre, [0, ca + 1, ca + 1], [depth, h - ca - 2, w - ca - 2])
                    tracks[child][tt] = {"centre": centre, "a": ca, "b": cb, "c": 0.9 * ca,
                                         "angle": angle + 0.03 * k * sign, "bright": bright[1] * (1.2 if k < 2 else 1)}  # fmt: skip
            events["division"] = {"parent": 1, "children": children, "frame": t_div}
    if n_nuclei >= 2:
        events["dives"] = {"id": 2, "z_per_frame": float(dive / z_step)}

    autofluorescence, illumination = _background(rng, (h, w))
    z_index = np.arange(n_slices)[:, None, None]
    attenuation = (depth_attenuation ** (z_index / max(1, n_slices - 1))).astype(np.float32)
    base = (autofluorescence[None] * illumination[None]).astype(np.float32)
    sigma = (axial_ratio * psf_sigma / z_step, psf_sigma, psf_sigma)
    image = np.empty((n_frames, n_slices, h, w), dtype=np.dtype(dtype))
    labels = np.zeros((n_frames, n_slices, h, w), dtype=np.uint32)
    for t in range(n_frames):
        signal = np.zeros((n_slices, h, w), np.float32)
        nearest = np.full((n_slices, h, w), np.inf, np.float32)
        for obj in sorted(tracks):
            m = tracks[obj].get(t)
            if m is None:
                continue
            footprint = _ellipsoid_footprint(m, z_step, (n_slices, h, w))
            if footprint is None:
                continue
            box, dz, u, v, r = footprint
            a, b, c = m["a"], m["b"], m["c"]
            own = (r <= 1.0) & (r < nearest[box])
            labels[t][box][own] = obj
            nearest[box][own] = r[own]
            tex = textures[obj]  # the texture moves and turns with the nucleus
            iz = np.clip(np.rint(np.broadcast_to(dz, r.shape)).astype(int) + half, 0, 2 * half)
            iv = np.clip(np.rint(np.broadcast_to(v, r.shape)).astype(int) + half, 0, 2 * half)
            iu = np.clip(np.rint(np.broadcast_to(u, r.shape)).astype(int) + half, 0, 2 * half)
            edge = np.clip((1.0 - r) * min(a, b, c) + 0.5, 0.0, 1.0)
            value = m["bright"] * tex[iz, iv, iu] * (0.9 + 0.1 * (1 - np.minimum(r, 1) ** 2)) * edge
            np.maximum(signal[box], value.astype(np.float32), out=signal[box])
        bleach = np.float32(math.exp(-0.1 * t / max(1, n_frames - 1)))
        optical = (bleach * signal * illumination[None].astype(np.float32) + base) * attenuation
        image[t] = _camera(ndimage.gaussian_filter(optical, sigma), rng, dtype, photons, read_noise)
    return SampleStack(image, labels, lineage, axes="TZYX", scale=(1.0, float(z_step), 1.0, 1.0), events=events)


# ---------------------------------------------------------------------- exports
def write_ctc_ground_truth(
    stack: SampleStack,
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    image_dir: str | os.PathLike | None = None,
) -> dict[int, list[int]]:
    """Write a time-lapse's ground truth in the Cell Tracking Challenge layout: `out_dir/TRA/man_track.txt`,
    `out_dir/TRA/man_trackTTT.tif` and `out_dir/SEG/man_segTTT.tif` (typically out_dir = `<dataset>/01_GT`).

    Divisions come from `stack.lineage`; a nucleus that leaves and comes back becomes two CTC tracks linked by
    parent, per the CTC rules (done by `napari_sam2.analysis.export_ctc`). image_dir: also write the raw frames
    there as `tTTT.tif` (the CTC's `<dataset>/01`). Returns {object id: [its CTC labels]}.
    """
    if stack.axes != "TYX":
        raise ValueError(f"CTC ground truth is written for time-lapses (axes TYX); this stack is {stack.axes}")
    from .analysis import export_ctc

    mapping = export_ctc(stack.labels, out_dir, parents=stack.lineage, ground_truth=True, overwrite=overwrite)
    if image_dir is not None:
        import tifffile

        image_dir = Path(image_dir)
        image_dir.mkdir(parents=True, exist_ok=True)
        digits = 3 if len(stack.image) < 1000 else max(4, len(str(len(stack.image) - 1)))
        for t, frame in enumerate(stack.image):
            tifffile.imwrite(image_dir / f"t{t:0{digits}d}.tif", frame)
    return mapping


def as_layer_data(stack: SampleStack, name: str = "nuclei") -> list[tuple]:
    """napari layer-data tuples (image, labels) for a sample-data contribution, without importing napari. The axes
    are named (t / z, y, x): the viewer's sliders read them, and the widget streams a z-stack's z as z (the axial
    edge rule, saved as "zyx")."""
    scale, names = tuple(stack.scale), tuple(stack.axes.lower())
    return [
        (stack.image, {"name": name, "scale": scale, "colormap": "gray", "axis_labels": names}, "image"),
        (
            stack.labels,
            {"name": f"{name} ground truth", "scale": scale, "opacity": 0.4, "axis_labels": names},
            "labels",
        ),
    ]
