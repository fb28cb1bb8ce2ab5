"""Image features of a stack persisted on disk, so that a second propagation or a re-opened session over the
same frames runs the image encoder (the costly step) on no frame again.

One zarr v3 store per (model weights, preprocessing, stack layout) under a user-chosen directory:

    <cache_dir>/<key>.zarr/
        vision       [N, d, h, w]          backbone features, one chunk per frame
        high_res_0   [N, d/8, 4h, 4w]      the decoder's projected high-resolution maps
        high_res_1   [N, d/4, 2h, 2w]
        vision_pos   [1, d, h, w]          the (frame-independent) position encoding
        checksum     [N, 16] uint8         a hash of each frame's stored features (all levels)
        digest       [N, 16] uint8         a hash of each frame's raw pixels; all zero = not stored
                                           (both one chunk per frame, like the features: see "Several writers")

The key is a hash of everything the features depend on except the pixels: the model's weights, the input size,
the compute precision, the intensity range, channel and axes, the stack's shape and dtype. The pixels are
checked per frame: a frame whose digest differs from the stored one (the data changed on disk) is encoded again
and overwritten, so a stale cache can cost time but never gives wrong features. What is read back is checked too:
a frame whose features do not hash to their recorded checksum (a chunk replaced or damaged on disk), or that
cannot be read at all (a truncated chunk), is logged, encoded again and rewritten — never used, never fatal.
Features are stored exactly (float32 as float32; bfloat16 bit patterns as int16), so results from cached
features are identical to results from fresh ones.

Several writers (`napari_sam2.encode` fills one store from many Dask tasks): every array has one chunk per frame,
so writers of disjoint frames write disjoint files, and zarr's LocalStore writes each file to a temporary name and
renames it into place, so a reader sees a frame's digest either absent or whole. Creating the store writes shared
metadata; `encode` lets one task create it before the others start (and a second creator attaches to the first's
store instead of failing). Stores made before this layout keep all digests in one chunk (`parallel_safe` False):
two writers there could lose each other's digest, so `encode` gives such a store one task.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .model.sam2 import ImageFeatures

log = logging.getLogger(__name__)

STORE_FORMAT = "napari-sam2-embeddings"
STORE_VERSION = 2  # 2: per-frame feature checksums
DIGEST_BYTES = 16
_LEVELS = ("vision", "high_res_0", "high_res_1")


def frame_digest(pixels: np.ndarray) -> bytes:
    """16-byte BLAKE2b hash of a frame's pixels, shape and dtype."""
    pixels = np.ascontiguousarray(pixels)
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    h.update(f"{pixels.shape}{pixels.dtype.str}".encode())
    h.update(pixels.data)
    return h.digest()


def model_fingerprint(model: torch.nn.Module) -> str:
    """Hash of a model's weights (names, shapes, dtypes and values); ≈ 0.1 s per 100 MB of weights."""
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()


def cache_key(parts: Mapping[str, Any]) -> str:
    """Stable hash of JSON-able facts (sorted keys) naming one embedding store (and the store format version, so
    stores of an older layout are left alone, never misread)."""
    text = json.dumps({**parts, "store_version": STORE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def features_checksum(arrays) -> bytes:
    """16-byte BLAKE2b of stored feature arrays (their bytes, shapes and dtypes), in order."""
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype.str}".encode())
        h.update(a.data)
    return h.digest()


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: keep the exact bit patterns
        return t.view(torch.int16).numpy()
    return t.numpy()


def _to_tensor(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t


def _is_channels_last(t: torch.Tensor) -> bool:
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class EmbeddingStore:
    """Per-frame image features of one stack on disk (see the module docstring).

    Use `EmbeddingStore.open(cache_dir, key_parts, num_frames)`; `get(frame, digest)` returns the stored
    `ImageFeatures` (batch 1, on the CPU) or None, `put(frame, digest, features)` stores them.
    """

    def __init__(self, path: Path, key_parts: Mapping[str, Any], num_frames: int):
        self.path = path
        self.key_parts = dict(key_parts)
        self.num_frames = num_frames
        self._group = None  # zarr.Group once the store exists
        self._dtypes: dict[str, torch.dtype] = {}  # per stored array
        self._channels_last: set[str] = set()
        self._vision_pos: torch.Tensor | None = None
        self.hits = self.writes = self.damaged = 0
        if path.exists():
            self._attach_existing()

    @classmethod
    def open(cls, cache_dir: str | os.PathLike, key_parts: Mapping[str, Any], num_frames: int) -> EmbeddingStore:
        """The store for `key_parts` under `cache_dir` (created on the first `put`)."""
        cache_dir = Path(cache_dir).expanduser()
        return cls(cache_dir / f"{cache_key({**key_parts, 'num_frames': num_frames})}.zarr", key_parts, num_frames)

    def _attach_existing(self) -> None:
        try:
            import zarr  # only when a cache is used: the tracking core does not need zarr

            group = zarr.open_group(self.path, mode="r+")
            info = group.attrs.get(STORE_FORMAT, {})
            if info.get("version") != STORE_VERSION:
                raise ValueError(f"not a version-{STORE_VERSION} embedding store")
            self._dtypes = {level: _DTYPES[name] for level, name in info["dtypes"].items()}
            self._channels_last = set(info["channels_last"])
            self._group = group
        except Exception as exc:  # noqa: BLE001 — a damaged or foreign directory: work without it, never delete it
            log.warning("ignoring embedding cache %s (%s); features will be computed", self.path, exc)
            self._group = None
            self.path = None

    def _create(self, features: ImageFeatures) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        import zarr

        try:
            group = zarr.open_group(self.path, mode="w-", zarr_format=3)
        except (FileExistsError, zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError):
            self._attach_existing()  # another writer created it meanwhile: use theirs
            if self._group is None:
                raise OSError(f"{self.path} appeared meanwhile and is not a usable embedding store") from None
            return
        tensors = dict(zip(_LEVELS, [features.vision, *features.high_res]))
        for level, t in tensors.items():
            storage = _to_numpy(t[:1]).dtype
            group.create_array(
                level, shape=(self.num_frames, *t.shape[1:]), chunks=(1, *t.shape[1:]), dtype=storage, compressors=None
            )
        pos = _to_numpy(features.vision_pos[:1])
        group.create_array("vision_pos", shape=pos.shape, dtype=pos.dtype, compressors=None)[...] = pos
        group.create_array("checksum", shape=(self.num_frames, DIGEST_BYTES), chunks=(1, DIGEST_BYTES), dtype="uint8")
        tensors["vision_pos"] = features.vision_pos
        # one chunk per frame: concurrent writers of different frames never rewrite each other's digest
        group.create_array("digest", shape=(self.num_frames, DIGEST_BYTES), chunks=(1, DIGEST_BYTES), dtype="uint8")
        names = {v: k for k, v in _DTYPES.items()}
        dtypes = {level: names[t.dtype] for level, t in tensors.items()}
        # the memory layout too: the same values in another layout take other kernels (last-bit differences)
        channels_last = [level for level, t in tensors.items() if _is_channels_last(t)]
        group.attrs[STORE_FORMAT] = {
            "version": STORE_VERSION,
            "dtypes": dtypes,
            "channels_last": channels_last,
            "key": self.key_parts,
            "vision_pos_checksum": features_checksum([pos]).hex(),
        }
        self._group, self._dtypes = group, {k: _DTYPES[v] for k, v in dtypes.items()}
        self._channels_last = set(channels_last)

    @property
    def parallel_safe(self) -> bool:
        """Whether tasks may write disjoint frames at once: every frame's digest is its own chunk (True for a
        store not created yet)."""
        return self._group is None or self._group["digest"].chunks[0] == 1

    def get(self, frame: int, digest: bytes) -> ImageFeatures | None:
        """Stored features of `frame` if its stored pixel digest equals `digest`, else None."""
        if self._group is None:
            return None
        try:
            stored = bytes(np.asarray(self._group["digest"][frame], dtype=np.uint8))
            if stored != digest:
                return None
            raw = [np.asarray(self._group[level][frame : frame + 1]) for level in _LEVELS]
            if features_checksum(raw) != bytes(np.asarray(self._group["checksum"][frame], dtype=np.uint8)):
                raise ValueError("the stored features do not match their checksum")
            if self._vision_pos is None:
                pos = np.asarray(self._group["vision_pos"][...])
                if features_checksum([pos]).hex() != self._group.attrs[STORE_FORMAT].get("vision_pos_checksum"):
                    raise ValueError("the stored position encoding does not match its checksum")
                self._vision_pos = self._as_tensor("vision_pos", pos)
        except Exception as exc:  # noqa: BLE001 — damaged on disk (any codec/IO error): recompute, rewrite
            log.warning("embedding cache %s: frame %d is damaged (%s); computing it again", self.path, frame, exc)
            self.damaged += 1
            return None
        arrays = [self._as_tensor(level, a) for level, a in zip(_LEVELS, raw, strict=True)]
        self.hits += 1
        return ImageFeatures(arrays[0], self._vision_pos, arrays[1:])

    def _as_tensor(self, level: str, array: np.ndarray) -> torch.Tensor:
        t = _to_tensor(array, self._dtypes[level])
        return t.contiguous(memory_format=torch.channels_last) if level in self._channels_last else t

    def put(self, frame: int, digest: bytes, features: ImageFeatures) -> None:
        """Store `frame`'s features (batch 1). A failure to write is logged, never raised: the cache is optional."""
        if self.path is None:
            return
        try:
            if self._group is None:
                self._create(features)
            if features.vision.dtype != self._dtypes["vision"]:
                return  # another precision than the store's (cannot happen with one key; kept safe)
            arrays = [_to_numpy(t) for t in [features.vision, *features.high_res]]
            for level, a in zip(_LEVELS, arrays, strict=True):
                self._group[level][frame : frame + 1] = a
            self._group["checksum"][frame] = np.frombuffer(features_checksum(arrays), dtype=np.uint8)
            # the digest last: a frame counts as stored only once all of its levels are written
            self._group["digest"][frame] = np.frombuffer(digest, dtype=np.uint8)
            self.writes += 1
        except OSError as exc:
            log.warning("cannot write the embedding cache %s (%s); continuing without it", self.path, exc)
            self.path, self._group = None, None


__all__ = ["EmbeddingStore", "cache_key", "features_checksum", "frame_digest", "model_fingerprint"]
