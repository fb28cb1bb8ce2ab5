"""The contrast step of the model input (preprocess.GlobalContrast / LocalContrast) and its wiring into FrameSource
and TrackingSession."""

import numpy as np
import pytest
from scipy import ndimage

from napari_sam2 import registry
from napari_sam2.errors import InputError
from napari_sam2.frames import FrameSource
from napari_sam2.preprocess import (
    FALLBACK_WINDOW,
    GlobalContrast,
    IntensityRange,
    LocalContrast,
    as_rgb,
    contrast_from_record,
    contrast_step,
    default_contrast,
    object_radius,
    resolve_contrast,
    to_model_input,
)


def dim_and_bright(n_frames=2, shape=(64, 64), seed=0, dim_x=44, drift=0):
    """[N, Y, X] uint16: a bright disk (+2000) at (20, 20) and a dim one (+200) at (44, dim_x) on a noisy pedestal,
    both moving `drift` px right per frame (also tests/test_contrast_track.py's movie)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    stack = np.empty((n_frames, *shape), np.uint16)
    for t in range(n_frames):
        frame = rng.normal(300, 10, shape)
        frame[(yy - 20) ** 2 + (xx - 20 - drift * t) ** 2 < 7**2] += 2000
        frame[(yy - 44) ** 2 + (xx - dim_x - drift * t) ** 2 < 7**2] += 200
        stack[t] = frame.clip(0, 65535)
    return stack


def reference(raw):
    """What the local contrast step is defined by when the frame is the model's input size (float64, grey)."""
    raw = np.asarray(raw, np.float64)
    y = np.clip(raw - np.percentile(raw, 5), 0, None)
    env = ndimage.gaussian_filter(ndimage.maximum_filter(ndimage.gaussian_filter(y, 2), size=16), 8)
    return np.clip(y / (env + 0.05 * y.max()), 0, 1)


def test_local_contrast_is_the_reference_at_the_input_size():
    raw = dim_and_bright(1, (64, 64))[0]
    intensity = IntensityRange.from_percentiles(raw)
    out = LocalContrast(window=16).apply(intensity.scale(raw), 64)
    assert out.dtype == np.float32 and out.shape == raw.shape
    np.testing.assert_allclose(out, reference(raw), atol=1e-5)
    # the stack-wide linear map is only a scale for it: the raw frame gives the same
    np.testing.assert_allclose(LocalContrast(window=16).apply(raw.astype(np.float32), 64), reference(raw), atol=1e-5)
    # grey replicated to RGB: every channel the grey answer
    rgb = LocalContrast(window=16).apply(as_rgb(intensity.scale(raw)), 64)
    assert rgb.shape == (64, 64, 3)
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], out)


def test_local_contrast_lifts_the_dim_object():
    raw = dim_and_bright(1)[0]
    x = IntensityRange.from_percentiles(raw).scale(raw)
    plain, local = np.clip(x, 0, 1), LocalContrast().apply(x, 64)
    assert plain[44, 44] < 0.2 and plain[20, 20] > 0.8  # globally the dim disk is near black
    assert local[44, 44] > 0.6 and local[20, 20] > 0.6  # locally both are bright
    assert local[44, 44] > 4 * plain[44, 44]
    assert local[5, 60] < 0.3  # background stays dark


def test_window_is_in_model_input_pixels():
    """A frame twice the input size in rows: the filters are twice as wide in frame pixels there. The envelope is made
    from 2 x 1 block means and enlarged again, so the answer is the full-resolution computation up to that
    resampling."""
    raw = dim_and_bright(1, (128, 64))[0].astype(np.float32)
    out = LocalContrast(window=16).apply(raw, 64)  # rows: 2 frame px per input px, cols: 1
    manual_y = np.clip(raw - np.percentile(raw, 5), 0, None)
    env = ndimage.gaussian_filter(ndimage.maximum_filter(ndimage.gaussian_filter(manual_y, (4, 2)), (32, 16)), (16, 8))
    manual = np.clip(manual_y / (env + 0.05 * manual_y.max()), 0, 1)
    assert out.shape == raw.shape
    assert np.abs(out - manual).mean() < 0.01 and np.abs(out - manual).max() < 0.1
    # the same disks at 4x in both axes (a 256² frame for a 64² input) give the reference of the small frame there
    small = dim_and_bright(1, (64, 64))[0].astype(np.float32)
    big = np.repeat(np.repeat(small, 4, axis=0), 4, axis=1)
    enlarged = np.repeat(np.repeat(LocalContrast(window=16).apply(small, 64), 4, axis=0), 4, axis=1)
    assert np.abs(LocalContrast(window=16).apply(big, 64) - enlarged).mean() < 0.02


def test_rgb_channels_share_one_envelope():
    raw = dim_and_bright(1)[0].astype(np.float32)
    rgb = np.stack([raw, raw * 0.5, raw * 0.25], axis=-1)
    out = LocalContrast().apply(rgb, 64)
    assert out.shape == rgb.shape and out.dtype == np.float32
    grey = rgb.mean(axis=-1)
    pedestal = np.percentile(grey, 5)
    ratio = (out[44, 44, 0]) / max(out[44, 44, 2], 1e-6)
    assert ratio > 1.5  # one envelope: the channels keep their order of brightness
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert np.all(out[..., 2][grey <= pedestal] == 0)  # the pedestal of the grey plane comes off every channel


@pytest.mark.parametrize("value", [0.0, 7.0])
def test_constant_frame_gives_zeros(value):
    for frame in (np.full((32, 48), value, np.float32), np.full((32, 48, 3), value, np.float32)):
        with np.errstate(all="raise"):
            out = LocalContrast().apply(frame, 64)
        assert out.shape == frame.shape and out.dtype == np.float32 and not out.any()


def test_contrast_options_and_bad_input():
    assert contrast_step("global") == GlobalContrast() and contrast_step("Local") == LocalContrast()
    custom = LocalContrast(window=8)
    assert contrast_step(custom) is custom
    for bad in ("foo", None, 3):
        with pytest.raises(InputError, match="'global', 'local'"):
            contrast_step(bad)
    with pytest.raises(InputError, match="window"):
        LocalContrast(window=0)
    with pytest.raises(InputError, match="floor"):
        LocalContrast(floor=-1)
    with pytest.raises(InputError, match="local contrast takes one frame"):
        LocalContrast().apply(np.zeros((2, 3, 4, 5), np.float32), 64)
    # records: a store made before the option (no field) is "global"; local keeps its constants
    assert contrast_from_record({}) == GlobalContrast() and contrast_from_record(None) == GlobalContrast()
    assert contrast_from_record(custom.record()) == custom
    assert contrast_from_record(GlobalContrast().record()) == GlobalContrast()


def test_model_default(tiny_model, tmp_path):
    assert registry.model_info("nano-fluo").contrast in ("global", "local")
    assert default_contrast("nano-fluo") == registry.model_info("nano-fluo").contrast
    assert default_contrast("no-such-model") == "global"
    assert default_contrast(tiny_model) == "global"  # a checkpoint file the registry does not know
    builtin = registry.checkpoint_path("nano-fluo")
    assert default_contrast(str(builtin)) == registry.model_info("nano-fluo").contrast
    assert resolve_contrast(None, tiny_model) == GlobalContrast()
    assert resolve_contrast("local", tiny_model) == LocalContrast()


def test_frame_source_global_is_bit_identical():
    stack = dim_and_bright(3)
    frames = FrameSource(stack, 128, read_ahead=0)
    assert frames.contrast == GlobalContrast()
    intensity = IntensityRange.from_percentiles(stack[:, ::1, ::1])
    assert (frames.intensity.low, frames.intensity.high) == (intensity.low, intensity.high)
    for t in range(3):
        before = to_model_input(intensity.apply(as_rgb(stack[t])), 128)  # what the input was before the option
        assert np.array_equal(frames.model_input(t).numpy(), before.numpy())


def test_frame_source_local_brightens_the_dim_object():
    stack = dim_and_bright(2)
    plain = FrameSource(stack, 64, read_ahead=0).model_input(0).numpy()
    local_frames = FrameSource(stack, 64, read_ahead=0, contrast="local")
    local = local_frames.model_input(0).numpy()
    assert local_frames.contrast == LocalContrast(window=local_frames.contrast.window)
    assert local[0, 44, 44] > plain[0, 44, 44] + 2.0  # the dim disk: near black before, bright now (ImageNet units)
    assert abs(local[0, 20, 20] - plain[0, 20, 20]) < 0.5  # the bright one stays bright
    with pytest.raises(InputError, match="contrast must be one of"):
        FrameSource(stack, 64, contrast="foo")


def test_session_resolves_the_model_default(tiny_model):
    from napari_sam2.session import TrackingSession

    stack = dim_and_bright(2)
    with TrackingSession(tiny_model, stack) as session:
        assert session.frames.contrast == GlobalContrast()  # a checkpoint outside the registry: global
    with TrackingSession(tiny_model, stack, contrast="local") as session:
        assert session.frames.contrast == LocalContrast(window=session.frames.contrast.window)
        result = session.add_prompt(0, 1, points=[[44, 44]])
        assert result.masks.shape == (1, 64, 64)
        # discovery's signal map keeps the linear map alone
        np.testing.assert_allclose(
            session.frame_intensity(0), session.frames.intensity.apply(stack[0].astype(np.float32)), atol=1e-6
        )


def test_the_window_is_fitted_to_the_objects():
    """Without a window, a stack gets one from its objects' size (2.5 x their median radius at the model input), used
    by every frame and recorded; the same disks at twice the frame size give the same window in input pixels."""
    stack = dim_and_bright(3)  # disks of radius 7 px in 64 x 64 frames
    frames = FrameSource(stack, 64, read_ahead=0, contrast="local")
    window = frames.contrast.window
    assert 2.5 * 6 <= window <= 2.5 * 8
    assert contrast_from_record(frames.contrast.record()) == frames.contrast  # a replay uses the fitted window
    fixed = FrameSource(stack, 64, read_ahead=0, contrast=LocalContrast(window=window))
    for t in range(3):  # one window for the stack: each frame as the fixed step makes it
        assert np.array_equal(frames.model_input(t).numpy(), fixed.model_input(t).numpy())
    big = np.repeat(np.repeat(stack, 2, axis=1), 2, axis=2)  # 128 x 128 frames, radius 14 px: the same at the input
    assert abs(FrameSource(big, 64, read_ahead=0, contrast="local").contrast.window - window) <= 1.0
    # a frame with no object to measure (constant) falls back to the default window
    assert LocalContrast().fitted([np.zeros((32, 32), np.float32)], 64).window == FALLBACK_WINDOW
    assert LocalContrast(window=9).fitted([stack[0]], 64).window == 9  # a given window is kept


def test_noise_is_not_stretched_to_the_objects_brightness():
    """A dim, noisy frame (a 12-bit camera at low light): far from the nuclei the envelope is the noise itself, so
    without the noise term the background would come out as bright as the nuclei."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:128, :128]
    frame = rng.poisson(20.0, (128, 128)).astype(np.float32)
    frame[(yy - 30) ** 2 + (xx - 30) ** 2 < 8**2] += 60.0
    frame[(yy - 90) ** 2 + (xx - 90) ** 2 < 8**2] += 25.0
    background = (yy - 30) ** 2 + (xx - 30) ** 2 > 30**2
    background &= (yy - 90) ** 2 + (xx - 90) ** 2 > 30**2
    stretched = LocalContrast(window=16, noise_floor=0).apply(frame, 128)
    kept = LocalContrast(window=16).apply(frame, 128)
    assert stretched[background].mean() > 0.45  # the failure the noise term is there for
    assert kept[background].mean() < 0.3 and kept[background].mean() < 0.6 * stretched[background].mean()
    assert kept[90, 90] > 0.6 and kept[30, 30] > 0.6  # both nuclei still bright
    # the pedestal 1.3 noise sigmas above the 5th percentile: empty background darker, the nuclei still bright
    lifted = LocalContrast(window=16, background_noise=1.3).apply(frame, 128)
    assert lifted[background].mean() < 0.5 * kept[background].mean() and kept[background].mean() > 0.1
    assert lifted[90, 90] > 0.6 and lifted[30, 30] > 0.6
    with pytest.raises(InputError, match="noise_floor"):
        LocalContrast(noise_floor=-1)
    with pytest.raises(InputError, match="background_noise"):
        LocalContrast(background_noise=-1)


def test_a_store_recorded_before_background_noise_replays_without_it():
    from napari_sam2.preprocess import contrast_from_record

    record = LocalContrast(window=20, background_noise=1.3).record()
    assert record["local_contrast"]["background_noise"] == 1.3
    assert contrast_from_record(record) == LocalContrast(window=20, background_noise=1.3)
    older = {"contrast": "local", "local_contrast": {k: v for k, v in record["local_contrast"].items()
                                                     if k != "background_noise"}}  # fmt: skip
    assert contrast_from_record(older) == LocalContrast(window=20, background_noise=0.0)


def test_image_predictor_and_segment_everything_take_the_contrast(tiny_model):
    import torch

    from napari_sam2.automatic import segment_everything
    from napari_sam2.predictor import ImagePredictor

    image = dim_and_bright(1, (64, 96))[0]
    intensity = IntensityRange.from_percentiles(as_rgb(image))
    predictor = ImagePredictor(tiny_model)
    predictor.set_image(image)
    assert predictor.contrast == GlobalContrast()  # the model's default
    plain = predictor._embedding.clone()
    predictor.set_image(image, contrast="local")
    assert predictor.contrast == LocalContrast().fitted([intensity.scale(as_rgb(image))], 128)  # fitted to the image
    assert predictor.contrast.window is not None
    local = predictor._embedding.clone()
    expected = to_model_input(LocalContrast().apply(intensity.scale(as_rgb(image)), 128), 128)
    predictor.set_preprocessed(expected[None], image.shape)
    assert torch.equal(predictor._embedding, local) and not torch.equal(plain, local)
    with pytest.raises(InputError, match="contrast must be one of"):
        predictor.set_image(image, contrast="foo")

    # segment everything: one mapping for the image and its crops; the same as through a predictor's local features
    lenient = {"points_per_side": 8, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    predictor.set_image(image, contrast="local")
    via_predictor = segment_everything(predictor, None, **lenient)
    direct = segment_everything(tiny_model, image, contrast="local", **lenient)
    assert np.array_equal(direct.labels, via_predictor.labels)
    with pytest.raises(InputError, match="encoded with contrast='local'"):
        segment_everything(predictor, None, contrast="global", **lenient)
    cropped = segment_everything(tiny_model, image, contrast="local", crop_n_layers=1, **lenient)
    assert cropped.labels.shape == image.shape
    with pytest.raises(InputError, match="contrast must be one of"):
        segment_everything(tiny_model, image, contrast="foo")


def test_volume_time_session_streams_take_the_contrast(tiny_model):
    from napari_sam2.volume_time import VolumeTimeSession

    movie = np.stack([dim_and_bright(3, (64, 64), seed=s) for s in range(2)])  # [T, Z, Y, X]
    plain = VolumeTimeSession(tiny_model, movie)
    assert plain.contrast == GlobalContrast()
    vt = VolumeTimeSession(tiny_model, movie, contrast="local")
    assert vt.contrast.name == "local" and vt.contrast.window is not None  # fitted once for the whole stack
    zs = vt._z_session(1)
    assert zs.frames.contrast == vt.contrast  # every stream: the same step, so the same input for the same slice
    assert zs.frames.intensity == vt.intensity  # one range for every stream, as before
    mask = vt.add(0, 1, _point_prompt(44, 44))
    assert mask.shape == (64, 64)
    labels = dict(vt.propagate("forward"))
    assert sorted(labels) == [0, 1]
    with pytest.raises(InputError, match="contrast must be one of"):
        VolumeTimeSession(tiny_model, movie, contrast="foo")


def test_a_stack_is_fitted_on_evenly_spaced_frames_first_and_last_included(tiny_model):
    from napari_sam2.preprocess import evenly_spaced
    from napari_sam2.volume_time import VolumeTimeSession

    assert evenly_spaced(10, 3) == [0, 4, 9] and evenly_spaced(2, 3) == [0, 1] and evenly_spaced(0, 3) == []
    assert evenly_spaced(40, 16)[0] == 0 and evenly_spaced(40, 16)[-1] == 39 and len(evenly_spaced(40, 16)) == 16
    # a 3-D stack fitted as a z-stack (FrameSource) and as a 3D+t stack of one time point: the same planes, the same
    # window and range, so the two faces give a slice the same network input
    stack = np.stack([dim_and_bright(1, (64, 64), seed=s, dim_x=30 + 3 * s)[0] for s in range(7)])
    vt = VolumeTimeSession(tiny_model, stack[None], contrast="local")
    frames = FrameSource(stack, tiny_model.image_size, read_ahead=0, contrast="local")
    assert vt.contrast == frames.contrast and vt.intensity == frames.intensity


def _point_prompt(y, x):
    from napari_sam2.prompts import make_prompt

    return make_prompt(0, 1, points=[[y, x]], labels=[1])


def test_embedding_cache_keys_a_local_step(tiny_model, tmp_path):
    """Features made with another contrast step are other features: each step (and each local window) gets its own
    cache store."""
    from napari_sam2.session import TrackingSession

    stack = dim_and_bright(2)
    paths = {}
    for contrast in ("global", "local", LocalContrast(window=9.0)):
        with TrackingSession(tiny_model, stack, embedding_cache=tmp_path, contrast=contrast) as session:
            paths[str(contrast)] = session.embeddings.path
    assert len(set(paths.values())) == 3


def test_an_empty_slice_does_not_shrink_the_fitted_window():
    """The first slice of a z-stack is often noise alone: it must not bring one-pixel specks into the objects' size."""
    stack = dim_and_bright(3)
    noise = np.random.default_rng(9).normal(300, 10, stack.shape[1:]).clip(0, 65535).astype(np.uint16)
    with_empty = np.concatenate([noise[None], stack])
    plain = FrameSource(stack, 64, read_ahead=0, contrast="local").contrast.window
    assert FrameSource(with_empty, 64, read_ahead=0, contrast="local").contrast.window == pytest.approx(plain, abs=1.0)
    assert object_radius([noise.astype(np.float32)], 64) is None  # no object in noise alone
