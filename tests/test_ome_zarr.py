"""LabelStore: OME-Zarr 0.5 labels written frame by frame, resumable, read back by independent readers."""

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import zarr

import napari_sam2
from napari_sam2.io import LabelStore, LabelStoreError, StoreExistsError, StoreWriteError
from napari_sam2.io.ome_zarr import label_color

SHAPE = (5, 24, 32)  # t, y, x


def _labels(t, shape=SHAPE[1:]):
    """A frame with object 3 (a box moving right) and, on odd frames, object 7."""
    frame = np.zeros(shape, np.uint32)
    frame[4:10, 2 + 3 * t : 8 + 3 * t] = 3
    if t % 2:
        frame[15:20, 20:26] = 7
    return frame


def _json(path):
    return json.loads(Path(path).read_text())


@pytest.fixture
def image():
    return np.random.default_rng(0).integers(0, 4000, SHAPE, dtype=np.uint16)


def test_round_trip_layout_and_metadata(tmp_path, image):
    path = tmp_path / "run.ome.zarr"
    store = LabelStore.create(
        path,
        SHAPE,
        image=image,
        scale=(2.0, 0.5, 0.5),
        units={"t": "second", "y": "micrometer", "x": "micrometer"},
        provenance={"model": "sam2.1_hiera_tiny", "checkpoint_sha256": "ab" * 32, "prompts": {1: [(3, 4)]}},
    )
    for t in (3, 0, 4, 1, 2):  # any order, e.g. a backward pass after a forward one
        store.write_frame(t, _labels(t))
    assert store.finished_frames() == [0, 1, 2, 3, 4] and store.pending_frames() == []

    back = LabelStore.open(path)
    labels = back.read_labels()
    assert isinstance(labels, zarr.Array) and labels.dtype == np.uint32 and labels.shape == SHAPE
    assert labels.chunks == (1, *SHAPE[1:])  # one chunk per frame
    np.testing.assert_array_equal(labels[:], np.stack([_labels(t) for t in range(5)]))
    np.testing.assert_array_equal(back.read_image()[:], image)
    assert back.axes == "tyx" and back.colors == {3: label_color(3), 7: label_color(7)}
    prov = back.provenance
    assert prov["model"] == "sam2.1_hiera_tiny" and prov["prompts"] == {"1": [[3, 4]]}
    assert prov["package_version"] == napari_sam2.__version__ and prov["created"].startswith("20")

    # On disk, as the NGFF 0.5 spec lays it out.
    root = _json(path / "zarr.json")
    assert root["zarr_format"] == 3 and root["attributes"]["ome"]["version"] == "0.5"
    ms = root["attributes"]["ome"]["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["t", "y", "x"] and ms["axes"][0] == {
        "name": "t",
        "type": "time",
        "unit": "second",
    }
    assert ms["datasets"] == [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2, 0.5, 0.5]}]}]
    assert _json(path / "labels" / "zarr.json")["attributes"] == {"ome": {"version": "0.5", "labels": ["sam2"]}}
    label_attrs = _json(path / "labels" / "sam2" / "zarr.json")["attributes"]
    assert label_attrs["ome"]["multiscales"][0]["datasets"] == ms["datasets"]  # as many levels as the image
    image_label = label_attrs["ome"]["image-label"]
    assert image_label["source"] == {"image": "../../"} and image_label["version"] == "0.5"
    assert [c["label-value"] for c in image_label["colors"]] == [0, 3, 7]  # 0: the background, transparent
    assert label_attrs["napari_sam2"]["provenance"]["checkpoint_sha256"] == "ab" * 32
    level = _json(path / "labels" / "sam2" / "0" / "zarr.json")
    assert level["dimension_names"] == ["t", "y", "x"] and level["data_type"] == "uint32"


def test_tzyx_planes_and_volumes(tmp_path):
    shape = (3, 4, 16, 16)
    store = LabelStore.create(tmp_path / "v.ome.zarr", shape, axes="tzyx")
    volume = np.zeros(shape[1:], np.uint16)
    volume[1:3, 4:9, 4:9] = 5
    store.write_frame(1, volume)  # a whole z-volume of frame t=1
    store.write_frame((2, 3), volume[2])  # one plane (t=2, z=3)
    expected = np.zeros(shape[:2], bool)
    expected[1] = True
    expected[2, 3] = True
    np.testing.assert_array_equal(store.done, expected)
    assert store.finished_frames() == [1] and store.pending_frames() == [0, 2]
    assert store.read_labels().chunks == (1, 1, 16, 16)
    np.testing.assert_array_equal(store.read_labels()[1], volume)
    np.testing.assert_array_equal(store.read_labels()[2, 3], volume[2])
    with pytest.raises(ValueError, match="shape"):
        store.write_frame(0, volume[0])  # a frame of a tzyx store is a volume
    with pytest.raises(IndexError):
        store.write_frame((0, 4), volume[0])


def test_tzyx_store_axes_units_and_independent_readers(tmp_path):
    """A 3D+t store: axes t, z, y, x with their types, units and scale; one chunk per (t, z) plane; read back by
    ome-zarr-py and accepted by the NGFF models."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    shape = (3, 4, 16, 20)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 200, shape, dtype=np.uint8)
    units = {"t": "second", "z": "micrometer", "y": "micrometer", "x": "micrometer"}
    path = tmp_path / "v.ome.zarr"
    store = LabelStore.create(path, shape, axes="tzyx", image=image, scale=(30, 2, 0.5, 0.5), units=units)
    volume = np.zeros(shape[1:], np.uint32)
    volume[1:3, 4:9, 4:9] = 5
    for t in range(shape[0]):
        store.write_frame(t, np.roll(volume, t, axis=2))
    ms = _json(path / "labels" / "sam2" / "zarr.json")["attributes"]["ome"]["multiscales"][0]
    assert ms["axes"] == [
        {"name": "t", "type": "time", "unit": "second"},
        {"name": "z", "type": "space", "unit": "micrometer"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    assert ms["datasets"][0]["coordinateTransformations"] == [{"type": "scale", "scale": [30.0, 2.0, 0.5, 0.5]}]
    level = _json(path / "labels" / "sam2" / "0" / "zarr.json")
    assert level["dimension_names"] == ["t", "z", "y", "x"]
    assert level["chunk_grid"]["configuration"]["chunk_shape"] == [1, 1, 16, 20]
    assert store.done.shape == (3, 4) and store.finished_frames() == [0, 1, 2]
    assert store.scale == [30.0, 2.0, 0.5, 0.5] and store.units == units

    nodes = list(Reader(parse_url(str(path)))())
    image_node, _, label_node = nodes
    np.testing.assert_array_equal(np.asarray(image_node.data[0]), image)
    assert [a["name"] for a in label_node.metadata["axes"]] == ["t", "z", "y", "x"]
    np.testing.assert_array_equal(np.asarray(label_node.data[0])[2], np.roll(volume, 2, axis=2))

    models = pytest.importorskip("ome_zarr_models", reason="ome-zarr-models validates OME-Zarr (testing extra)")
    assert type(models.open_ome_zarr(zarr.open_group(path, mode="r"))).__name__ == "Image"
    label = models.open_ome_zarr(zarr.open_group(path / "labels" / "sam2", mode="r"))
    assert type(label).__name__ == "ImageLabel"


def test_interrupted_run_resumes(tmp_path):
    path = tmp_path / "run.ome.zarr"
    store = LabelStore.create(path, SHAPE)
    store.write_frame(0, _labels(0))
    store.write_frame(1, _labels(1))
    # The run dies after frame 2's chunk reached the disk but before it was recorded as finished.
    zarr.open_array(path / "labels" / "sam2" / "0", mode="r+")[2] = _labels(2)
    del store

    back = LabelStore.open(path)
    assert back.finished_frames() == [0, 1] and back.pending_frames() == [2, 3, 4]
    with pytest.raises(LabelStoreError, match="mode='r\\+'"):
        back.write_frame(2, _labels(2))  # read-only handle

    resumed = LabelStore.open(path, mode="r+")
    for t in resumed.pending_frames():
        resumed.write_frame(t, _labels(t))
    assert LabelStore.open(path).finished_frames() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(resumed.read_labels()[:], np.stack([_labels(t) for t in range(5)]))


def test_killed_process_leaves_a_valid_resumable_store(tmp_path):
    """A real SIGKILL between writing a chunk and marking it done (not a simulated exception)."""
    path = tmp_path / "killed.ome.zarr"
    script = textwrap.dedent(
        f"""
        import os, signal
        import numpy as np
        from napari_sam2.io import LabelStore
        store = LabelStore.create({str(path)!r}, {SHAPE!r}, provenance={{"model": "test"}})
        frame = np.zeros({SHAPE[1:]!r}, np.uint32)
        for t in range(3):
            frame[:] = t + 1
            store.write_frame(t, frame)
        frame[:] = 9
        store.read_labels()[3] = frame  # step 1 of write_frame(3): the chunk is on disk ...
        os.kill(os.getpid(), signal.SIGKILL)  # ... and the process dies before marking it finished
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(napari_sam2.__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=120, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]

    store = LabelStore.open(path, mode="r+")
    assert store.finished_frames() == [0, 1, 2] and store.pending_frames() == [3, 4]
    assert store.provenance["model"] == "test"
    for t in store.pending_frames():
        store.write_frame(t, np.full(SHAPE[1:], 10 + t, np.uint32))
    assert [int(store.read_labels()[t, 0, 0]) for t in range(5)] == [1, 2, 3, 13, 14]
    assert store.finished_frames() == [0, 1, 2, 3, 4]


def test_ome_zarr_py_reads_our_store(tmp_path, image):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    path = tmp_path / "run.ome.zarr"
    store = LabelStore.create(path, SHAPE, image=image, scale=(1, 0.5, 0.5))
    for t in range(SHAPE[0]):
        store.write_frame(t, _labels(t))

    nodes = list(Reader(parse_url(str(path)))())
    kinds = [sorted(type(s).__name__ for s in n.specs) for n in nodes]
    assert kinds == [["Multiscales"], ["Labels"], ["Label", "Multiscales"]]
    image_node, _, label_node = nodes
    np.testing.assert_array_equal(np.asarray(image_node.data[0]), image)
    assert label_node.metadata["name"] == "sam2"
    assert [a["name"] for a in label_node.metadata["axes"]] == ["t", "y", "x"]
    assert label_node.metadata["coordinateTransformations"] == [[{"type": "scale", "scale": [1.0, 0.5, 0.5]}]]
    colors = {3: [c / 255 for c in label_color(3)], 7: [c / 255 for c in label_color(7)], 0: [0.0] * 4}
    assert label_node.metadata["color"] == colors
    np.testing.assert_array_equal(np.asarray(label_node.data[0]), store.read_labels()[:])

    # Without a source image the label image itself is a complete multiscale image.
    bare = LabelStore.create(tmp_path / "bare.ome.zarr", SHAPE)
    bare.write_frame(0, _labels(0))
    (node,) = list(Reader(parse_url(str(tmp_path / "bare.ome.zarr" / "labels" / "sam2")))())
    np.testing.assert_array_equal(np.asarray(node.data[0][0]), _labels(0))


def test_store_validates_against_ngff_models(tmp_path, image):
    models = pytest.importorskip("ome_zarr_models", reason="ome-zarr-models validates OME-Zarr (testing extra)")

    path = tmp_path / "run.ome.zarr"
    store = LabelStore.create(path, SHAPE, image=image)
    store.write_frame(0, _labels(1))
    assert type(models.open_ome_zarr(zarr.open_group(path, mode="r"))).__name__ == "Image"
    assert type(models.open_ome_zarr(zarr.open_group(path / "labels", mode="r"))).__name__ == "Labels"
    label = models.open_ome_zarr(zarr.open_group(path / "labels" / "sam2", mode="r"))
    assert type(label).__name__ == "ImageLabel"
    assert [c.label_value for c in label.attributes.ome.image_label.colors] == [0, 3, 7]

    # The validator does catch a broken store (e.g. the labels group without its version, ome-zarr-py's bug).
    broken = tmp_path / "broken.ome.zarr"
    shutil.copytree(path, broken)
    group = zarr.open_group(broken / "labels", mode="r+")
    group.update_attributes({"ome": {"labels": ["sam2"]}})
    with pytest.raises(Exception, match="version"):
        models.open_ome_zarr(zarr.open_group(broken / "labels", mode="r"))


def test_existing_path_is_refused_unless_overwrite(tmp_path):
    path = tmp_path / "run.ome.zarr"
    store = LabelStore.create(path, SHAPE)
    store.write_frame(0, _labels(0))
    with pytest.raises(StoreExistsError, match="overwrite=True") as info:
        LabelStore.create(path, SHAPE)
    assert "LabelStore.open" in str(info.value) and isinstance(info.value, FileExistsError)
    assert LabelStore.open(path).finished_frames() == [0]  # untouched

    fresh = LabelStore.create(path, (2, 8, 8), overwrite=True)
    assert fresh.shape == (2, 8, 8) and fresh.finished_frames() == []

    foreign = tmp_path / "my_data"
    foreign.mkdir()
    (foreign / "precious.tif").write_bytes(b"x")
    with pytest.raises(StoreExistsError, match="not a store written by napari-sam2"):
        LabelStore.create(foreign, SHAPE, overwrite=True)
    assert (foreign / "precious.tif").read_bytes() == b"x"

    with pytest.raises(FileNotFoundError, match="LabelStore.create"):
        LabelStore.open(tmp_path / "missing.ome.zarr")


def test_bad_inputs_are_refused(tmp_path, image):
    with pytest.raises(ValueError, match="axes"):
        LabelStore.create(tmp_path / "a", SHAPE, axes="cyx")
    with pytest.raises(ValueError, match="image shape"):
        LabelStore.create(tmp_path / "b", SHAPE, image=image[..., :5])
    with pytest.raises(TypeError, match="JSON"):
        LabelStore.create(tmp_path / "c", SHAPE, provenance={"model": object()})
    store = LabelStore.create(tmp_path / "d", SHAPE)
    with pytest.raises(TypeError, match="integer"):
        store.write_frame(0, _labels(0).astype(np.float32))
    with pytest.raises(ValueError, match="0\\.\\."):
        store.write_frame(0, -_labels(0).astype(np.int32))
    with pytest.raises(ValueError, match="shape"):
        store.write_frame(0, _labels(0)[:-1])
    with pytest.raises(IndexError):
        store.write_frame(5, _labels(0))
    store.write_frame(-1, _labels(4))  # negative indices count from the end, like numpy
    assert store.finished_frames() == [4]


@contextmanager
def _file_size_limit(nbytes=2048):
    """Make every file write beyond `nbytes` fail with EFBIG, as on a full disk; works as root too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def _noisy(t):
    return np.random.default_rng(t).integers(0, 1000, (64, 64)).astype(np.uint32)  # compresses badly


def test_full_disk_error_keeps_finished_frames_and_resumes(tmp_path):
    path = tmp_path / "run.ome.zarr"
    store = LabelStore.create(path, (3, 64, 64))
    store.write_frame(0, _noisy(0))
    with _file_size_limit(), pytest.raises(StoreWriteError) as info:
        store.write_frame(1, _noisy(1))
    err = info.value
    assert isinstance(err, OSError) and err.errno == errno.EFBIG
    assert str(path) in str(err) and "File too large" in str(err) and "mode='r+'" in str(err)

    back = LabelStore.open(path, mode="r+")
    assert back.finished_frames() == [0]
    np.testing.assert_array_equal(back.read_labels()[0], _noisy(0))
    assert not back.read_labels()[1].any()  # no partial chunk was left behind
    back.write_frame(1, _noisy(1))  # space is back: resume
    assert back.finished_frames() == [0, 1]


def _make_unwritable(path: Path):
    """Block writes into `path`'s directories: chmod for normal users; as root (which ignores modes), the
    immutable attribute. Returns an undo function, or skips where neither works."""
    dirs = [path] + [Path(d) / n for d, names, _ in os.walk(path) for n in names]
    if os.geteuid() != 0:
        for d in dirs:
            d.chmod(0o555)
        return lambda: [d.chmod(0o755) for d in dirs]
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.skip("running as root (modes do not block writes) and chattr is not installed")
    done = []
    for d in dirs:
        if subprocess.run([chattr, "+i", str(d)], capture_output=True, check=False).returncode != 0:
            for x in done:
                subprocess.run([chattr, "-i", str(x)], capture_output=True, check=False)
            pytest.skip("running as root and this file system/container does not allow chattr +i")
        done.append(d)
    return lambda: [subprocess.run([chattr, "-i", str(d)], capture_output=True, check=False) for d in done]


def test_read_only_directory_gives_a_clear_error(tmp_path):
    path = tmp_path / "run.ome.zarr"
    store = LabelStore.create(path, SHAPE)
    store.write_frame(0, _labels(0))
    undo = _make_unwritable(path)
    try:
        with pytest.raises(StoreWriteError) as info:
            store.write_frame(1, _labels(1))
    finally:
        undo()
    message = str(info.value)
    assert str(path) in message and "writable location" in message
    assert info.value.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
    assert LabelStore.open(path).finished_frames() == [0]
