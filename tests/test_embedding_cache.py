"""The on-disk embedding cache: a re-opened session or a second pass over the same frames encodes nothing again,
results from cached features equal results from fresh ones, and changed pixels are never served stale."""

import logging

import numpy as np
import pytest

from napari_sam2 import TrackingSession
from napari_sam2.embedding_cache import EmbeddingStore, frame_digest

INTENSITY = (0.0, 4000.0)  # fixed, so that editing one frame changes only that frame's digest


@pytest.fixture
def stack(blob_stack):
    return blob_stack(n_frames=6, shape=(64, 80))


def _track(model, stack, cache, **kw):
    s = TrackingSession(model, stack, embedding_cache=cache, intensity=INTENSITY, **kw)
    s.add_prompt(1, 1, points=[[30, 40]])
    results = {r.frame: r for r in s.propagate("both")}
    s.close()
    return s, results


def test_reopened_session_encodes_nothing_and_gives_identical_results(tiny_model, stack, tmp_path):
    first, res1 = _track(tiny_model, stack, tmp_path)
    assert first.encoder_runs == len(stack) and first.embeddings.writes == len(stack)
    second, res2 = _track(tiny_model, stack, tmp_path)
    assert second.encoder_runs == 0 and second.embeddings.hits == len(stack)
    assert sorted(res1) == sorted(res2) == list(range(len(stack)))
    for f in res1:
        np.testing.assert_array_equal(res1[f].logits, res2[f].logits)  # exact: features are stored losslessly
        np.testing.assert_array_equal(res1[f].labels, res2[f].labels)
    assert len(list(tmp_path.glob("*.zarr"))) == 1


def test_changed_pixels_are_encoded_again(tiny_model, stack, tmp_path):
    _track(tiny_model, stack, tmp_path)
    edited = stack.copy()
    edited[4] = np.roll(edited[4], 7, axis=1)
    s, _ = _track(tiny_model, edited, tmp_path)
    assert s.encoder_runs == 1  # only frame 4; the other five come from disk
    s, _ = _track(tiny_model, edited, tmp_path)
    assert s.encoder_runs == 0  # frame 4 was overwritten with its new features


def test_other_preprocessing_or_model_uses_another_store(tiny_model, make_checkpoint, tiny_config, stack, tmp_path):
    _track(tiny_model, stack, tmp_path)
    s = TrackingSession(tiny_model, stack, embedding_cache=tmp_path, intensity=(0.0, 2000.0))
    s.add_prompt(0, 1, points=[[30, 40]])
    assert s.encoder_runs == 1 and s.embeddings.hits == 0
    from napari_sam2 import load_model

    other = load_model(make_checkpoint(tiny_config(), seed=5), device="cpu")
    s = TrackingSession(other, stack, embedding_cache=tmp_path, intensity=INTENSITY)
    s.add_prompt(0, 1, points=[[30, 40]])
    assert s.encoder_runs == 1 and s.embeddings.hits == 0


def test_second_pass_beyond_the_memory_budget_reads_disk(tiny_model, stack, tmp_path):
    s = TrackingSession(tiny_model, stack, embedding_cache=tmp_path, intensity=INTENSITY, feature_cache_bytes=1)
    s.add_prompt(0, 1, points=[[30, 40]])
    list(s.propagate("forward"))
    assert s.encoder_runs == len(stack) and len(s.features) == 1  # the LRU holds one frame only
    s.add_prompt(2, 1, points=[[20, 30]], labels=[0])  # a correction, then a second pass
    list(s.propagate("forward", start=2))
    assert s.encoder_runs == len(stack)


def test_unwritable_cache_is_skipped_with_a_warning(tiny_model, stack, tmp_path, caplog):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache directory should be")
    with caplog.at_level(logging.WARNING):
        s, res = _track(tiny_model, stack, blocker)
    assert len(res) == len(stack) and s.encoder_runs == len(stack)
    assert "embedding cache" in caplog.text


def test_frame_digest_sees_values_and_dtype():
    a = np.arange(12, dtype=np.uint16).reshape(3, 4)
    assert frame_digest(a) == frame_digest(a.copy()) != frame_digest(a.astype(np.int32))
    assert len(frame_digest(a)) == 16


def test_bfloat16_features_round_trip_exactly(tmp_path):
    import torch

    from napari_sam2.model.sam2 import ImageFeatures

    g = torch.Generator().manual_seed(0)
    feats = ImageFeatures(
        torch.randn(1, 8, 4, 4, generator=g).bfloat16(),
        torch.randn(1, 8, 4, 4, generator=g),
        [torch.randn(1, 2, 16, 16, generator=g).bfloat16(), torch.randn(1, 4, 8, 8, generator=g)],
    )
    store = EmbeddingStore.open(tmp_path, {"test": 1}, num_frames=3)
    store.put(2, b"d" * 16, feats)
    assert store.get(2, b"x" * 16) is None and store.get(1, b"d" * 16) is None
    back = EmbeddingStore.open(tmp_path, {"test": 1}, num_frames=3).get(2, b"d" * 16)
    for ours, ref in zip(
        [back.vision, back.vision_pos, *back.high_res], [feats.vision, feats.vision_pos, *feats.high_res]
    ):
        assert ours.dtype == ref.dtype
        assert torch.equal(ours, ref)


def test_every_frame_is_its_own_files_so_writers_of_disjoint_frames_do_not_race(tiny_model, stack, tmp_path):
    import zarr

    a = TrackingSession(tiny_model, stack, embedding_cache=tmp_path, intensity=INTENSITY)
    a.encode_frames([0])  # creates the store (napari_sam2.encode lets one task do this before the others start)
    b = TrackingSession(tiny_model, stack, embedding_cache=tmp_path, intensity=INTENSITY)
    assert a.embeddings.parallel_safe and b.embeddings.parallel_safe
    group = zarr.open_group(a.embeddings.path, mode="r")
    for name in ("vision", "high_res_0", "high_res_1", "digest"):
        assert group[name].chunks[0] == 1  # a digest chunk shared by frames could lose a concurrent writer's update
    for f in range(1, len(stack)):
        (a if f % 2 else b).encode_frames([f])
    c = TrackingSession(tiny_model, stack, embedding_cache=tmp_path, intensity=INTENSITY)
    c.encode_frames()
    assert c.encoder_runs == 0 and c.embeddings.hits == len(stack)
