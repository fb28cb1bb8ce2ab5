"""Harder synthetic fluorescence nuclei for training and benchmarking nano-fluo (domain randomisation).

The generators of `napari_sam2.sample_data` draw evenly bright, smooth, well separated ellipses; real nuclear
stains are not like that. This module draws what made the first nano-fluo fail (issue 16), all seeded and
deterministic (same arguments → identical arrays), with exact ground truth:

* per-nucleus brightness spread up to 10× (log-uniform: as many dim as bright nuclei), so that after percentile
  scaling most nuclei are dim;
* bright, compact mitotic figures (condensed chromosome plates 2–4× the brightest interphase nucleus);
* chromatin texture, dark nucleoli and bright chromocentres; irregular (lobed) and elongated outlines;
* dense touching clusters (neighbours share a border, as in `sample_data`: a pixel goes to the object whose
  centre it is relatively nearer);
* uneven illumination (vignetting to 40 %, a gradient), out-of-focus haze (a wide blur of the in-focus signal and
  unlabelled out-of-focus ghost nuclei), background structure (dim cytoplasm around nuclei, fibres, patches),
  unlabelled debris (small, often very bright specks);
* nucleus radius 3–40 px; anisotropic z-stacks (z step 2–5× the pixel, axial blur 2–5× the lateral one);
* 8-, 12- (in uint16) and 16-bit cameras with Poisson photon noise, read noise and an offset.

Functions (image [N, Y, X] and labels [N, Y, X] uint32 in a `SampleStack`; coordinates (y, x) in pixels):

* `hard_nuclei_timelapse(n_frames, shape, seed, **settings)`: a 2-D time-lapse, nuclei drifting slowly;
* `hard_nuclei_zstack(n_slices, shape, seed, **settings)`: a 3-D stack, `scale` = (z_step, 1, 1);
* `random_hard_stack(seed, ...)`: one domain-randomised draw of either (what training uses);
* `hard_condition(name, seed)`: the benchmark's named hard conditions (`HARD_CONDITIONS`).

`events` records per object: "brightness" {id: relative brightness, 1 = the brightest interphase nucleus},
"mitotic" [ids], "clusters" [[ids touching each other]], "neighbours" {id: [ids it touches]}, and the
camera ("bits").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .sample_data import SampleStack

__all__ = ["HARD_CONDITIONS", "hard_condition", "hard_nuclei_timelapse", "hard_nuclei_zstack", "random_hard_stack"]


# ---------------------------------------------------------------------- nuclei
@dataclass
class _Nucleus:
    """centre (z, y, x) in pixel units (z = 0 for 2-D); semi-axes a (along `angle`, radians from +x), b, c (z);
    brightness (1 = brightest interphase); lobes: amplitudes and phases of the outline's harmonics 2..5."""

    obj_id: int
    z: float
    y: float
    x: float
    a: float
    b: float
    c: float
    angle: float
    brightness: float
    mitotic: bool
    lobes: np.ndarray
    phases: np.ndarray
    velocity: np.ndarray


def _outline_radius(nuc: _Nucleus, u: np.ndarray, v: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Normalised radius (≤ 1 inside) of an ellipse/ellipsoid whose outline is modulated by low harmonics."""
    theta = np.arctan2(v / nuc.b, u / nuc.a)
    scale = 1.0 + sum(amp * np.cos(k * theta + ph) for k, amp, ph in zip(range(2, 6), nuc.lobes, nuc.phases))
    r2 = (u / nuc.a) ** 2 + (v / nuc.b) ** 2
    if w is not None:
        r2 = r2 + (w / nuc.c) ** 2
    return np.sqrt(r2) / np.maximum(scale, 0.5)


def _smooth(rng: np.random.Generator, shape, sigma) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return (noise - noise.mean()) / (noise.std() + 1e-9)


def _texture(rng: np.random.Generator, half: int, nuc: _Nucleus) -> np.ndarray:
    """Texture patch [2h+1, 2h+1] in the nucleus's own frame (u along the major axis), mean ~1.

    Interphase: coarse + fine chromatin, 0–3 dark nucleoli, 0–4 bright chromocentres. Mitotic: a condensed plate —
    bright, grainy, brightest along the major axis (the chromosomes of a metaphase plate seen from the side)."""
    size = 2 * half + 1
    vv, uu = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    radius = max(nuc.a, 1.0)
    if nuc.mitotic:
        grain = 1.0 + 0.35 * _smooth(rng, (size, size), 0.8)
        plate = 0.7 + 0.3 * np.exp(-((vv / max(nuc.b, 1.0)) ** 2))
        return np.clip(grain * plate, 0.2, None)
    amp = rng.uniform(0.1, 0.35)
    tex = 1.0 + amp * (0.6 * _smooth(rng, (size, size), max(1.0, radius / 5)) + 0.4 * _smooth(rng, (size, size), 0.8))
    for _ in range(int(rng.integers(0, 4))):  # nucleoli: darker
        oy, ox = rng.uniform(-0.45, 0.45, 2) * radius
        s = rng.uniform(0.1, 0.22) * radius + 0.5
        tex *= 1.0 - rng.uniform(0.3, 0.7) * np.exp(-((vv - oy) ** 2 + (uu - ox) ** 2) / (2 * s * s))
    for _ in range(int(rng.integers(0, 5))):  # chromocentres: brighter specks
        oy, ox = rng.uniform(-0.6, 0.6, 2) * radius
        s = rng.uniform(0.05, 0.1) * radius + 0.5
        tex += rng.uniform(0.3, 0.9) * np.exp(-((vv - oy) ** 2 + (uu - ox) ** 2) / (2 * s * s))
    return np.clip(tex, 0.05, None)


def _place_nuclei(
    rng: np.random.Generator,
    shape: tuple[int, int],
    depth: float,
    radius: float,
    n_nuclei: int,
    brightness_spread: float,
    mitotic_fraction: float,
    mitotic_neighbours: int,
    cluster_fraction: float,
    elongation: float,
    irregularity: float,
    z_elongation: tuple[float, float],
    motion: float,
) -> tuple[list[_Nucleus], dict[int, list[int]]]:
    """Random nuclei without deep overlaps; a `cluster_fraction` of them touch a neighbour, and
    `mitotic_neighbours` dim nuclei each get a bright mitotic figure touching them. Returns (nuclei, touching)."""
    h, w = shape
    nuclei: list[_Nucleus] = []
    touching: dict[int, list[int]] = {}

    def draw(mitotic: bool, bright: float | None = None) -> _Nucleus:
        a = radius * float(np.exp(rng.normal(0, 0.15)))
        b = a * rng.uniform(1.0 - elongation, 1.0) if elongation > 0 else a * rng.uniform(0.85, 1.0)
        if mitotic:  # compact and flat: the condensed chromosomes
            a, b = a * rng.uniform(0.45, 0.7), a * rng.uniform(0.2, 0.35)
            bright = bright if bright is not None else rng.uniform(2.0, 4.0)
        elif bright is None:
            bright = float(brightness_spread ** -rng.uniform(0, 1))  # log-uniform in [1/spread, 1]
        lobes = rng.uniform(0, irregularity, 4) / np.arange(1, 5) if not mitotic else rng.uniform(0, 0.12, 4)
        return _Nucleus(
            len(nuclei) + 1, depth / 2, 0.0, 0.0, a, b, a * rng.uniform(*z_elongation), rng.uniform(0, math.pi),
            float(bright), mitotic, lobes, rng.uniform(0, 2 * math.pi, 4),
            rng.normal(0, 0.08 * motion * radius, 2),
        )  # fmt: skip

    def fits(nuc: _Nucleus, partner: _Nucleus | None = None) -> bool:
        m = 0.0 if nuc.mitotic else 1.0
        if not (
            m * nuc.a * 0.5 <= nuc.y <= h - 1 - m * nuc.a * 0.5 and m * nuc.a * 0.5 <= nuc.x <= w - 1 - m * nuc.a * 0.5
        ):
            return False
        for o in nuclei:
            if o is partner:
                continue
            gap = math.hypot(nuc.y - o.y, nuc.x - o.x) - max(nuc.a, nuc.b) - max(o.a, o.b)
            if depth and abs(nuc.z - o.z) > (nuc.c + o.c):
                continue
            if gap < 1.5:
                return False
        return True

    def place_beside(nuc: _Nucleus, partner: _Nucleus) -> bool:
        for _ in range(20):
            phi = rng.uniform(0, 2 * math.pi)
            dist = (min(partner.a, partner.b) + min(nuc.a, nuc.b)) * rng.uniform(0.8, 0.95)
            nuc.y, nuc.x = partner.y + dist * math.sin(phi), partner.x + dist * math.cos(phi)
            nuc.z = partner.z + (rng.uniform(-0.15, 0.15) * partner.c if depth else 0.0)
            nuc.angle = phi + math.pi / 2  # the minor axes face each other
            if fits(nuc, partner):
                return True
        return False

    def place_free(nuc: _Nucleus) -> bool:
        for _ in range(30):
            nuc.y, nuc.x = rng.uniform(0, h - 1), rng.uniform(0, w - 1)
            nuc.z = rng.uniform(0.2 * depth, 0.8 * depth) if depth else 0.0
            if fits(nuc):
                return True
        return False

    def add(nuc: _Nucleus, partner: _Nucleus | None = None) -> bool:
        ok = place_beside(nuc, partner) if partner is not None else place_free(nuc)
        if ok:
            nuc.obj_id = len(nuclei) + 1
            nuclei.append(nuc)
            if partner is not None:
                touching.setdefault(nuc.obj_id, []).append(partner.obj_id)
                touching.setdefault(partner.obj_id, []).append(nuc.obj_id)
        return ok

    for _ in range(mitotic_neighbours):  # a dim interphase nucleus with a bright mitotic figure against it
        dim = draw(False, bright=float(brightness_spread ** -rng.uniform(0.6, 1.0)))
        if add(dim):
            add(draw(True), partner=dim)
    while len(nuclei) < n_nuclei:
        before = len(nuclei)
        nuc = draw(rng.random() < mitotic_fraction)
        partners = [o for o in nuclei if not o.mitotic]
        if partners and rng.random() < cluster_fraction:
            add(nuc, partner=partners[int(rng.integers(len(partners)))])
        else:
            add(nuc)
        if len(nuclei) == before and rng.random() < 0.3:  # crowded: stop after repeated failures
            break
    return nuclei, touching


def _clusters(touching: dict[int, list[int]]) -> list[list[int]]:
    seen, groups = set(), []
    for start in sorted(touching):
        if start in seen:
            continue
        group, todo = [], [start]
        while todo:
            k = todo.pop()
            if k in seen:
                continue
            seen.add(k)
            group.append(k)
            todo.extend(touching.get(k, []))
        groups.append(sorted(group))
    return groups


# ---------------------------------------------------------------------- optics and camera
def _background(rng, shape, structure: float, radius: float) -> np.ndarray:
    """Autofluorescence [Y, X]: patches, a slope, fibres (thin bright ridges), scaled by `structure` ∈ [0, 1]."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    patches = _smooth(rng, shape, max(h, w) / 8)
    slope = rng.uniform(-1, 1) * (xx / w - 0.5) + rng.uniform(-1, 1) * (yy / h - 0.5)
    ridges = np.exp(-np.abs(_smooth(rng, shape, max(2.0, radius))) * 6.0)  # thin lines where the field crosses 0
    bg = 0.06 + structure * (0.04 * patches + 0.04 * slope + 0.06 * ridges)
    return np.clip(bg, 0.01, None).astype(np.float32)


def _illumination(rng, shape, vignetting: float) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = (h - 1) / 2 + rng.uniform(-0.2, 0.2) * h, (w - 1) / 2 + rng.uniform(-0.2, 0.2) * w
    rr = ((yy - cy) / (h / 2)) ** 2 + ((xx - cx) / (w / 2)) ** 2
    tilt = 1.0 + rng.uniform(-0.15, 0.15) * (xx / w - 0.5) + rng.uniform(-0.15, 0.15) * (yy / h - 0.5)
    return (np.clip(1.0 - vignetting * rr / 2.0, 0.3, 1.0) * tilt).astype(np.float32)


def _debris(rng, shape, count: int) -> np.ndarray:
    """Unlabelled specks [Y, X]: 1–3 px, brightness 0.3–4 (many brighter than any nucleus)."""
    h, w = shape
    out = np.zeros(shape, np.float32)
    for _ in range(count):
        y, x = rng.uniform(0, h), rng.uniform(0, w)
        s = rng.uniform(0.6, 2.5)
        reach = int(3 * s) + 1
        y0, y1, x0, x1 = (
            max(0, int(y) - reach),
            min(h, int(y) + reach + 1),
            max(0, int(x) - reach),
            min(w, int(x) + reach + 1),
        )
        if y0 >= y1 or x0 >= x1:
            continue
        dy, dx = np.arange(y0, y1)[:, None] - y, np.arange(x0, x1)[None, :] - x
        blob = float(np.exp(rng.uniform(math.log(0.3), math.log(4.0)))) * np.exp(-(dy**2 + dx**2) / (2 * s * s))
        np.maximum(out[y0:y1, x0:x1], blob, out=out[y0:y1, x0:x1])
    return out


def _camera(optical: np.ndarray, rng, bits: int, fill: float, photons: float, read_noise: float) -> np.ndarray:
    """Counts photons (Poisson; normal beyond 20) + read noise + offset, quantised to `bits` (8 → uint8, 12 and 16
    → uint16). A signal of 1 (the brightest interphase nucleus) gets `photons` photons and lands at `fill` of the
    range; brighter things (mitotic figures, debris) may saturate."""
    full = 2**bits - 1
    offset = rng.uniform(0.01, 0.08) * full
    gain = (fill * full - offset) / photons
    expected = np.clip(optical, 0, None).astype(np.float32) * np.float32(photons)
    electrons = np.empty_like(expected)
    few = expected < 20
    electrons[few] = rng.poisson(expected[few])
    many = ~few
    electrons[many] = expected[many] + np.sqrt(expected[many]) * rng.standard_normal(int(many.sum())).astype(np.float32)
    electrons += np.float32(read_noise) * rng.standard_normal(optical.shape).astype(np.float32)
    adu = np.float32(offset) + np.float32(gain) * electrons
    return np.clip(np.rint(adu), 0, full).astype(np.uint8 if bits == 8 else np.uint16)


# ---------------------------------------------------------------------- settings
_DEFAULTS = {
    "radius": 10.0,
    "n_nuclei": None,  # None: from `fill` (fraction of the field covered)
    "fill": 0.25,
    "brightness_spread": 10.0,
    "mitotic_fraction": 0.08,
    "mitotic_neighbours": 0,
    "cluster_fraction": 0.35,
    "elongation": 0.4,  # minor/major axis down to 1 - elongation
    "irregularity": 0.25,  # amplitude of the outline's lobes
    "background_structure": 0.6,
    "vignetting": 0.5,
    "haze": 0.3,  # fraction of the in-focus signal spread as wide out-of-focus blur
    "ghosts": 4,  # unlabelled out-of-focus nuclei
    "debris": 10,
    "cytoplasm": 0.08,  # dim stain around each nucleus, relative to its brightness
    "bits": 8,
    "fill_range": 0.45,  # where a signal of 1 lands in the camera range
    "photons": 150.0,
    "read_noise": 2.0,
    "psf_sigma": 1.2,
    "motion": 1.0,
}


def _settings(overrides: dict) -> dict:
    unknown = set(overrides) - set(_DEFAULTS) - {"z_step", "axial_ratio", "z_elongation", "depth_attenuation"}
    if unknown:
        raise ValueError(f"unknown setting(s) {sorted(unknown)}; known: {sorted(_DEFAULTS)}")
    s = {**_DEFAULTS, **overrides}
    if s["bits"] not in (8, 12, 16):
        raise ValueError(f"bits must be 8, 12 or 16; got {s['bits']}")
    if not 1.0 <= s["brightness_spread"] <= 100.0:
        raise ValueError(f"brightness_spread must be in [1, 100]; got {s['brightness_spread']}")
    return s


def _count(s: dict, shape) -> int:
    if s["n_nuclei"] is not None:
        return int(s["n_nuclei"])
    return int(np.clip(round(s["fill"] * shape[0] * shape[1] / (math.pi * s["radius"] ** 2)), 2, 80))


def _events(nuclei: list[_Nucleus], touching: dict, bits: int, labels: np.ndarray) -> dict:
    present = {int(i) for i in np.unique(labels) if i}
    return {
        "brightness": {n.obj_id: n.brightness for n in nuclei if n.obj_id in present},
        "mitotic": [n.obj_id for n in nuclei if n.mitotic and n.obj_id in present],
        "neighbours": {k: sorted(v) for k, v in touching.items() if k in present},
        "clusters": _clusters(touching),
        "bits": bits,
    }


# ---------------------------------------------------------------------- time-lapse
def hard_nuclei_timelapse(
    n_frames: int = 8, shape: tuple[int, int] = (256, 256), seed: int = 0, **settings
) -> SampleStack:
    """A hard 2-D fluorescence time-lapse: image [T, Y, X] (uint8 for bits=8, else uint16), labels [T, Y, X] uint32.

    Nuclei drift slowly (a few % of their radius per frame; `motion` scales it) and may cross into each other
    (the relatively nearer centre owns a shared pixel). Settings (defaults in `_DEFAULTS`): radius (px),
    n_nuclei or fill, brightness_spread (≥ 1: brightest / dimmest interphase nucleus), mitotic_fraction,
    mitotic_neighbours (dim nuclei with a bright mitotic figure touching them), cluster_fraction, elongation,
    irregularity, background_structure, vignetting, haze, ghosts, debris, cytoplasm, bits (8/12/16), fill_range,
    photons, read_noise, psf_sigma, motion. See the module docstring for `events`.
    """
    s = _settings(settings)
    n_frames = int(n_frames)
    if n_frames < 1:
        raise ValueError("n_frames must be >= 1")
    h, w = (int(v) for v in shape)
    rng = np.random.default_rng(seed)
    nuclei, touching = _place_nuclei(
        rng, (h, w), 0.0, float(s["radius"]), _count(s, (h, w)), float(s["brightness_spread"]),
        float(s["mitotic_fraction"]), int(s["mitotic_neighbours"]), float(s["cluster_fraction"]),
        float(s["elongation"]), float(s["irregularity"]), (1.0, 1.0), float(s["motion"]),
    )  # fmt: skip
    textures = {}
    for n in nuclei:
        half = math.ceil(1.6 * max(n.a, n.b)) + 2
        textures[n.obj_id] = _texture(rng, half, n)
    background = _background(rng, (h, w), s["background_structure"], s["radius"])
    illumination = _illumination(rng, (h, w), s["vignetting"])
    ghosts = []
    for _ in range(int(s["ghosts"])):
        ghosts.append(
            (rng.uniform(0, h), rng.uniform(0, w), s["radius"] * rng.uniform(0.8, 1.5), rng.uniform(0.2, 1.0))
        )
    image = np.empty((n_frames, h, w), np.uint8 if s["bits"] == 8 else np.uint16)
    labels = np.zeros((n_frames, h, w), np.uint32)
    haze_sigma = s["radius"] * rng.uniform(1.0, 2.5)
    for t in range(n_frames):
        signal = np.zeros((h, w), np.float32)
        cyto = np.zeros((h, w), np.float32)
        nearest = np.full((h, w), np.inf, np.float32)
        for n in nuclei:
            y, x = n.y + n.velocity[0] * t, n.x + n.velocity[1] * t
            reach = 1.4 * max(n.a, n.b) + 2
            y0, y1 = max(0, math.floor(y - reach)), min(h, math.ceil(y + reach) + 1)
            x0, x1 = max(0, math.floor(x - reach)), min(w, math.ceil(x + reach) + 1)
            if y0 >= y1 or x0 >= x1:
                continue
            dy = (np.arange(y0, y1)[:, None] - y).astype(np.float32)
            dx = (np.arange(x0, x1)[None, :] - x).astype(np.float32)
            cos, sin = math.cos(n.angle), math.sin(n.angle)
            u, v = dx * cos + dy * sin, -dx * sin + dy * cos
            r = _outline_radius(n, u, v)
            box = (slice(y0, y1), slice(x0, x1))
            own = (r <= 1.0) & (r < nearest[box])
            labels[t][box][own] = n.obj_id
            nearest[box][own] = r[own]
            tex = textures[n.obj_id]
            half = tex.shape[0] // 2
            iu = np.clip(np.rint(u).astype(int) + half, 0, 2 * half)
            iv = np.clip(np.rint(v).astype(int) + half, 0, 2 * half)
            edge = np.clip((1.0 - r) * min(n.a, n.b) + 0.5, 0.0, 1.0)
            np.maximum(signal[box], n.brightness * tex[iv, iu] * edge, out=signal[box])
            if not n.mitotic:  # dim cytoplasm stain in a ring around the nucleus (the scaled outline, 1.4×)
                ring = np.clip(1.4 - r, 0.0, 0.4) / 0.4 * (r > 0.9)
                np.maximum(cyto[box], s["cytoplasm"] * n.brightness * ring, out=cyto[box])
        out_of_focus = np.zeros((h, w), np.float32)
        yy, xx = np.ogrid[0:h, 0:w]
        for gy, gx, gr, gb in ghosts:
            out_of_focus += gb * (((yy - gy) ** 2 + (xx - gx) ** 2) <= gr * gr)
        in_focus = signal + cyto + _debris(np.random.default_rng([seed, 7, t]), (h, w), int(s["debris"]))
        haze = ndimage.gaussian_filter(in_focus, haze_sigma) + ndimage.gaussian_filter(out_of_focus, 2 * haze_sigma / 3)
        optical = ndimage.gaussian_filter((1 - s["haze"]) * in_focus, s["psf_sigma"]) + s["haze"] * haze
        optical = (optical + background) * illumination
        image[t] = _camera(optical, rng, s["bits"], s["fill_range"], s["photons"], s["read_noise"])
    events = _events(nuclei, touching, s["bits"], labels)
    return SampleStack(image, labels, {}, axes="TYX", scale=(1.0, 1.0, 1.0), events=events)


# ---------------------------------------------------------------------- z-stack
def hard_nuclei_zstack(
    n_slices: int = 16, shape: tuple[int, int] = (256, 256), seed: int = 0, **settings
) -> SampleStack:
    """A hard anisotropic 3-D stack: image [Z, Y, X], labels [Z, Y, X] uint32, `scale` = (z_step, 1, 1).

    Extra settings: z_step (slice spacing in pixels, default 3), axial_ratio (axial / lateral PSF width, default
    3), z_elongation (range of the z semi-axis / lateral semi-axis, default (0.8, 1.6): nuclei are often taller
    than wide), depth_attenuation (brightness left at the deepest slice, default 0.6); the rest as in
    `hard_nuclei_timelapse` (motion is unused). Neighbours touch in 3-D.
    """
    s = _settings(settings)
    n_slices = int(n_slices)
    if n_slices < 1:
        raise ValueError("n_slices must be >= 1")
    z_step = float(s.get("z_step", 3.0))
    axial_ratio = float(s.get("axial_ratio", 3.0))
    z_elong = tuple(s.get("z_elongation", (0.8, 1.6)))
    attenuation_end = float(s.get("depth_attenuation", 0.6))
    h, w = (int(v) for v in shape)
    rng = np.random.default_rng(seed)
    depth = (n_slices - 1) * z_step
    nuclei, touching = _place_nuclei(
        rng, (h, w), max(depth, 1e-3), float(s["radius"]), _count(s, (h, w)), float(s["brightness_spread"]),
        float(s["mitotic_fraction"]), int(s["mitotic_neighbours"]), float(s["cluster_fraction"]),
        float(s["elongation"]), float(s["irregularity"]), z_elong, 0.0,
    )  # fmt: skip
    signal = np.zeros((n_slices, h, w), np.float32)
    nearest = np.full((n_slices, h, w), np.inf, np.float32)
    labels = np.zeros((n_slices, h, w), np.uint32)
    chromatin = 1.0 + 0.25 * _smooth(rng, (n_slices, h, w), (max(0.3, 1.5 / z_step), 1.5, 1.5))
    for n in nuclei:
        reach = 1.4 * max(n.a, n.b) + 2
        z0, z1 = max(0, math.floor((n.z - n.c) / z_step) - 1), min(n_slices, math.ceil((n.z + n.c) / z_step) + 2)
        y0, y1 = max(0, math.floor(n.y - reach)), min(h, math.ceil(n.y + reach) + 1)
        x0, x1 = max(0, math.floor(n.x - reach)), min(w, math.ceil(n.x + reach) + 1)
        if z0 >= z1 or y0 >= y1 or x0 >= x1:
            continue
        dz = (np.arange(z0, z1) * z_step - n.z)[:, None, None].astype(np.float32)
        dy = (np.arange(y0, y1) - n.y)[None, :, None].astype(np.float32)
        dx = (np.arange(x0, x1) - n.x)[None, None, :].astype(np.float32)
        cos, sin = math.cos(n.angle), math.sin(n.angle)
        u, v = dx * cos + dy * sin, -dx * sin + dy * cos
        r = _outline_radius(n, u, v, dz)
        box = (slice(z0, z1), slice(y0, y1), slice(x0, x1))
        own = (r <= 1.0) & (r < nearest[box])
        labels[box][own] = n.obj_id
        nearest[box][own] = r[own]
        edge = np.clip((1.0 - r) * min(n.a, n.b) + 0.5, 0.0, 1.0)
        contrast = 2.0 if n.mitotic else 1.0  # condensed chromatin is grainier
        value = n.brightness * np.clip(1 + contrast * (chromatin[box] - 1), 0.05, None) * edge
        np.maximum(signal[box], value, out=signal[box])
    background = _background(rng, (h, w), s["background_structure"], s["radius"])
    illumination = _illumination(rng, (h, w), s["vignetting"])
    for _ in range(int(s["debris"])):  # debris: bright specks on random slices
        k = int(rng.integers(n_slices))
        signal[k] = np.maximum(signal[k], _debris(rng, (h, w), 1))
    haze_sigma = s["radius"] * rng.uniform(1.0, 2.0)
    sigma_z = axial_ratio * s["psf_sigma"] / z_step
    in_focus = ndimage.gaussian_filter(signal, (sigma_z, s["psf_sigma"], s["psf_sigma"]))
    haze = ndimage.gaussian_filter(signal, (max(sigma_z, 1.0) * 2, haze_sigma, haze_sigma))
    attenuation = (attenuation_end ** (np.arange(n_slices) / max(1, n_slices - 1))).astype(np.float32)[:, None, None]
    optical = ((1 - s["haze"]) * in_focus + s["haze"] * haze + background[None]) * illumination[None] * attenuation
    image = _camera(optical, rng, s["bits"], s["fill_range"], s["photons"], s["read_noise"])
    events = _events(nuclei, touching, s["bits"], labels)
    return SampleStack(image, labels, {}, axes="ZYX", scale=(z_step, 1.0, 1.0), events=events)


# ---------------------------------------------------------------------- domain randomisation and named conditions
def random_hard_stack(seed: int, n_frames: int = 8, image_size: int = 256) -> tuple[SampleStack, float]:
    """One domain-randomised stack (a time-lapse, or with odds 0.3 an anisotropic z-stack) and the factor its
    pixels are resized by to reach the model input (`image_size`): nucleus radius 3–40 px at the model input
    (log-uniform), brightness spread 1–10×, 8/12/16-bit, every nuisance of the module at a random strength."""
    rng = np.random.default_rng([seed, 16])
    radius_in = float(np.exp(rng.uniform(math.log(3.0), math.log(40.0))))
    side = int(rng.choice([image_size, image_size, 192, 320, 384]))
    factor = image_size / side
    radius = radius_in / factor
    settings = {
        "radius": radius,
        "fill": rng.uniform(0.1, 0.4),
        "brightness_spread": float(np.exp(rng.uniform(0, math.log(10.0)))),
        "mitotic_fraction": rng.uniform(0, 0.15),
        "mitotic_neighbours": int(rng.integers(0, 4)),
        "cluster_fraction": rng.uniform(0, 0.7),
        "elongation": rng.uniform(0, 0.6),
        "irregularity": rng.uniform(0, 0.4),
        "background_structure": rng.uniform(0, 1),
        "vignetting": rng.uniform(0, 0.8),
        "haze": rng.uniform(0, 0.5),
        "ghosts": int(rng.integers(0, 8)),
        "debris": int(rng.integers(0, 30)),
        "cytoplasm": rng.uniform(0, 0.15),
        "bits": int(rng.choice([8, 12, 16])),
        "fill_range": rng.uniform(0.15, 0.7),
        "photons": float(np.exp(rng.uniform(math.log(15.0), math.log(500.0)))),
        "read_noise": rng.uniform(0.5, 5.0),
        "psf_sigma": rng.uniform(0.6, 2.5),
    }
    if settings["radius"] * 2 > side / 2:  # keep a few nuclei in the field
        settings["radius"] = side / 4
    inner = int(rng.integers(2**31))
    if rng.random() < 0.3:
        settings.update(z_step=rng.uniform(2.0, 5.0), axial_ratio=rng.uniform(2.0, 5.0), z_elongation=(0.8, 1.8))
        settings["motion"] = 0.0
        return hard_nuclei_zstack(n_frames, (side, side), inner, **settings), factor
    return hard_nuclei_timelapse(n_frames, (side, side), inner, **settings), factor


HARD_CONDITIONS = {
    # 10× brightness spread, a few very bright mitotic figures and specks set the top percentile: most nuclei dim
    "brightness_spread": {
        "kind": "timelapse",
        "settings": {"radius": 9.0, "fill": 0.25, "brightness_spread": 10.0, "mitotic_fraction": 0.1, "debris": 12},
    },
    # dim interphase nuclei with a bright compact mitotic figure touching each
    "mitotic_neighbours": {
        "kind": "timelapse",
        "settings": {"radius": 10.0, "fill": 0.15, "brightness_spread": 4.0, "mitotic_neighbours": 6, "debris": 4},
    },
    # radius 20–40 px, z step 3–4 px, strong axial blur, neighbours touching in 3-D
    "large_anisotropic": {
        "kind": "zstack",
        "settings": {"radius": 28.0, "fill": 0.35, "brightness_spread": 3.0, "cluster_fraction": 0.6,
                     "z_step": 3.5, "axial_ratio": 4.0, "bits": 16, "fill_range": 0.2},
    },
}  # fmt: skip


def hard_condition(name: str, seed: int, n: int = 16, shape: tuple[int, int] = (256, 256)) -> SampleStack:
    """The named hard condition (`HARD_CONDITIONS`) drawn with `seed`: n frames or slices of `shape` (y, x)."""
    if name not in HARD_CONDITIONS:
        raise ValueError(f"unknown hard condition {name!r}; known: {sorted(HARD_CONDITIONS)}")
    spec = HARD_CONDITIONS[name]
    make = hard_nuclei_zstack if spec["kind"] == "zstack" else hard_nuclei_timelapse
    return make(n, shape, seed, **spec["settings"])
