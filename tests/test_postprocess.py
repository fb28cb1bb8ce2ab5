"""Hole filling (on every tracked frame in the default preset) and sprinkle removal: 8-connected components, the
area rule at its boundary, border components, batches of maps, and that nothing else changes."""

import numpy as np
import torch

from napari_sam2.postprocess import fill_holes, remove_sprinkles


def _disc_with_holes():
    logits = np.full((24, 24), -5.0, np.float32)
    logits[2:22, 2:22] = 5.0  # a square object
    logits[5:7, 5:7] = -3.0  # a 4-pixel hole
    logits[10:13, 10:13] = -3.0  # a 9-pixel hole
    logits[16, 16] = -1.0  # a 1-pixel hole
    logits[17, 17] = -1.0  # touching it only diagonally: one 8-connected 2-pixel hole
    return torch.from_numpy(logits)


def test_fill_holes_fills_exactly_the_small_background_components():
    logits = _disc_with_holes()
    out = fill_holes(logits, max_area=4).numpy()
    assert (out[5:7, 5:7] == 0.1).all()  # area 4 <= 4: filled with the video predictor's 0.1
    assert out[16, 16] == out[17, 17] == np.float32(0.1)  # diagonal neighbours are one component (area 2)
    np.testing.assert_array_equal(out[10:13, 10:13], -3.0)  # area 9 > 4: kept
    assert (out[0] == -5.0).all()  # the outer background (large, touching the border) is kept
    changed = out != logits.numpy()
    assert changed.sum() == 6  # nothing but the two small holes changed
    assert fill_holes(logits, max_area=0) is logits  # off


def test_fill_holes_counts_border_components_and_keeps_shape_dtype():
    logits = torch.full((2, 1, 8, 8), 3.0)
    logits[0, 0, 0, 0] = -2.0  # a 1-pixel background corner: a component touching the border still counts
    logits[1, 0, 4, 4] = -2.0
    out = fill_holes(logits, max_area=1)
    assert out.shape == logits.shape and out.dtype == logits.dtype
    assert out[0, 0, 0, 0] == out[1, 0, 4, 4] == torch.tensor(0.1)
    # every pixel of a map is at or below threshold 5: one component per map, too large to be a hole
    torch.testing.assert_close(fill_holes(logits, max_area=1, threshold=5.0), logits)


def test_remove_sprinkles_drops_small_foreground_components():
    logits = torch.full((16, 16), -4.0)
    logits[1:9, 1:9] = 2.0  # a 64-pixel object
    logits[12, 12] = 1.0  # a 1-pixel sprinkle
    logits[12:14, 3:5] = 1.0  # a 4-pixel sprinkle
    out = remove_sprinkles(logits, max_area=3)
    assert out[12, 12] == -10.0 and (out[12:14, 3:5] == 1.0).all() and (out[1:9, 1:9] == 2.0).all()
    assert (remove_sprinkles(logits, max_area=4)[12:14, 3:5] == -10.0).all()
