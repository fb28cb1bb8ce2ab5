"""Which input a result store was made from: shape, dtype and a digest of every frame read, kept in the store.

A resumed run replays the recorded prompts over the input it is given; given another image of the same shape
it would finish the store with frames of two images. So the store keeps `labels/<name>/input_digest`, a
[N, 16] uint8 array (one BLAKE2b digest per frame, all zero = not read yet) whose attributes hold the input's
shape and dtype. Digests are recorded *as frames are read* (the `FrameSource.on_read` hook), so recording costs
one hash per read and no extra pass over the data; a frame's digest is on disk before any label computed from it.

On resume, every frame read is compared with its recorded digest before it is used: the first that differs
stops the run with `InputMismatchError`, and since SAM 2 only ever looks at frames it has read, every label
written until then came from frames equal to the original ones — nothing from another image is written.
"""

from __future__ import annotations

import threading

import numpy as np

from ..embedding_cache import DIGEST_BYTES, frame_digest
from ..errors import InputError

__all__ = ["ARRAY_NAME", "InputIdentity", "InputMismatchError"]

ARRAY_NAME = "input_digest"


class InputMismatchError(InputError):
    """The input given to a resumed run is not the one the store was made from."""


class InputIdentity:
    """Digests of the frames of one input, recorded into (or checked against) a store.

    shape, dtype: of the whole input array; num_frames: frames along the stream axis. Call the object as
    `identity(index, pixels)` for every frame read (it is a `FrameSource.on_read` hook); `attach(store)` binds it
    to a `LabelStore` (recording what was read so far, or loading the recorded digests of a resumed store).
    """

    def __init__(self, shape, dtype, num_frames: int, source: str = "the input"):
        self.shape = [int(s) for s in shape]
        self.dtype = str(np.dtype(dtype))
        self.source = source
        self.digests = np.zeros((int(num_frames), DIGEST_BYTES), np.uint8)
        self.known = np.zeros(int(num_frames), bool)
        self._array = None
        self._store_path = None
        self._lock = threading.Lock()
        self.describe = lambda index: f"frame {index}"  # a digest's index in messages (3D+t: its (t, z) slice)

    def attach(self, store, resume: bool) -> None:
        """Bind to `store` (a writable `LabelStore`). resume: the store's recorded identity must match this input
        (shape and dtype now, each frame as it is read); a store made before identities were recorded gets one."""
        import zarr

        group = zarr.open_group(store.path / "labels" / store.name, mode="r+", zarr_format=3)
        with self._lock:
            if ARRAY_NAME in group:
                array = group[ARRAY_NAME]
                recorded = dict(array.attrs)
                if resume and (recorded.get("shape") != self.shape or recorded.get("dtype") != self.dtype):
                    raise InputMismatchError(
                        f"{store.path} was made from an input of shape {tuple(recorded.get('shape', ()))} and dtype "
                        f"{recorded.get('dtype')}, but {self.source} has shape {tuple(self.shape)} and dtype "
                        f"{self.dtype}: resume it with its own input, or write to a new --out"
                    )
                stored = np.asarray(array[...], np.uint8)
                if stored.shape != self.digests.shape:
                    raise InputMismatchError(f"{store.path}: its input record has {stored.shape[0]} frames, not "
                                             f"{self.digests.shape[0]}; resume it with its own input")  # fmt: skip
                stored_known = stored.any(axis=1)
                for i in np.flatnonzero(self.known & stored_known):  # read before attaching: check now
                    if not np.array_equal(stored[i], self.digests[i]):
                        raise self._mismatch(int(i), store.path)
                take = stored_known & ~self.known
                self.digests[take] = stored[take]
                self.known |= stored_known
            else:
                array = group.create_array(ARRAY_NAME, shape=self.digests.shape, chunks=self.digests.shape,
                                           dtype="uint8", fill_value=0)  # fmt: skip
                array.attrs.update({"shape": self.shape, "dtype": self.dtype, "digest": "blake2b-16 of each frame"})
            array[...] = self.digests
            self._array, self._store_path = array, store.path

    def _mismatch(self, index: int, store_path) -> InputMismatchError:
        what = self.describe(index)
        return InputMismatchError(
            f"{what} of {self.source} differs from {what} of the input {store_path} was made from: "
            "this is another image. Resume the store with its own input, or write to a new --out (frames already "
            "finished in the store are unchanged)"
        )

    def __call__(self, index: int, pixels: np.ndarray) -> None:
        """Check (or record) frame `index`; raises `InputMismatchError` if it differs from its recorded digest."""
        digest = np.frombuffer(frame_digest(pixels), np.uint8)
        with self._lock:
            if self.known[index]:
                if not np.array_equal(self.digests[index], digest):
                    raise self._mismatch(int(index), self._store_path or "the store")
                return
            self.digests[index] = digest
            self.known[index] = True
            if self._array is not None:  # on disk before any label computed from this frame is written
                self._array[index] = digest
