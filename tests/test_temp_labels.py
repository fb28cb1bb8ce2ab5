"""The widget's temporary on-disk label arrays (large stacks) are removed with the array, not left behind."""

import gc
import os

import numpy as np
import pytest

pytest.importorskip("napari")

from napari_sam2.widget import _geometry


def _ours(folder) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.startswith("napari-sam2-labels-"))


def test_large_label_array_lives_in_a_temporary_folder_removed_with_it(tmp_path, monkeypatch):
    monkeypatch.setattr(_geometry, "IN_MEMORY_LABELS_LIMIT", 1000)  # 4 × 32 × 32 × 4 bytes is "large" now
    labels = _geometry.make_label_array((4, 32, 32), tmp_dir=str(tmp_path))
    assert not isinstance(labels, np.ndarray)  # on disk
    (folder,) = _ours(tmp_path)
    labels[2] = 7
    assert int(np.asarray(labels[2]).max()) == 7 and os.listdir(tmp_path / folder)
    del labels
    gc.collect()
    assert _ours(tmp_path) == []


def test_small_label_array_stays_in_memory_and_makes_no_folder(tmp_path):
    labels = _geometry.make_label_array((4, 32, 32), tmp_dir=str(tmp_path))
    assert isinstance(labels, np.ndarray) and labels.dtype == np.uint32 and not labels.any()
    assert _ours(tmp_path) == []
