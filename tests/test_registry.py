"""Checkpoint registry: the table of official checkpoints, and real downloads from a local HTTP server.

Only 127.0.0.1 is ever contacted: the official URLs are never fetched here.
"""

import functools
import hashlib
import http.server
import importlib.util
import os
import re
import socket
import sys
import threading
from pathlib import Path

import pytest

from napari_sam2 import registry
from napari_sam2.registry import ChecksumError, ModelInfo, ModelNotAvailableError

OFFICIAL_PARAMS = {
    "sam2.1_hiera_tiny": 38_962_498,
    "sam2.1_hiera_small": 46_060_354,
    "sam2.1_hiera_base_plus": 80_850_178,
    "sam2.1_hiera_large": 224_446_642,
    "sam2_hiera_tiny": 38_945_986,
    "sam2_hiera_small": 46_043_842,
    "sam2_hiera_base_plus": 80_833_666,
    "sam2_hiera_large": 224_430_130,
}


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch, tmp_path):
    """No user cache, no mirror from the environment, and no proxy between us and 127.0.0.1."""
    monkeypatch.delenv(registry.BASE_URL_ENV, raising=False)
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path / "default-cache"))
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


# ---------------------------------------------------------------------- the table
def test_table_has_the_builtin_model_and_the_eight_official_checkpoints():
    assert registry.list_models() == [registry.BUILTIN_MODEL, *OFFICIAL_PARAMS]
    for name, params in OFFICIAL_PARAMS.items():
        info = registry.model_info(name)
        assert info.name == name
        assert info.params == params
        assert info.license == "Apache-2.0"
        assert info.filename == name + ".pt"
        assert info.version == ("2.1" if name.startswith("sam2.1") else "2.0")
        date = "092824" if info.version == "2.1" else "072824"
        assert info.url == f"https://dl.fbaipublicfiles.com/segment_anything_2/{date}/{info.filename}"
        if info.sha256 is not None:
            assert re.fullmatch(r"[0-9a-f]{64}", info.sha256)
        if info.file_size is not None:
            assert isinstance(info.file_size, int) and info.file_size > 0
            # float32 weights plus a little pickle overhead: the recorded size must fit the parameter count
            assert 4 * params < info.file_size < 4 * params + 1_000_000


def test_hashes_are_distinct_and_recorded():
    hashes = [registry.model_info(n).sha256 for n in OFFICIAL_PARAMS]
    recorded = [h for h in hashes if h is not None]
    assert len(recorded) == len(set(recorded))
    assert len(recorded) == 8  # all eight were found in public records (model/README.md)


def test_config_names_match_our_model_configs():
    from napari_sam2.model.configs import CONFIGS

    for name in OFFICIAL_PARAMS:
        info = registry.model_info(name)
        assert info.config in CONFIGS
        assert CONFIGS[info.config].version == info.version


@pytest.mark.parametrize(
    "alias",
    [
        "sam2.1_hiera_t",
        "SAM2.1-hiera-tiny",
        "facebook/sam2.1-hiera-tiny",
        "sam2.1_tiny",
        "sam2.1_t",
        "sam2.1_hiera_tiny.pt",
    ],
)
def test_aliases(alias):
    assert registry.model_info(alias).name == "sam2.1_hiera_tiny"


def test_base_plus_aliases_and_unknown_name():
    assert registry.model_info("sam2_hiera_b+").name == "sam2_hiera_base_plus"
    assert registry.model_info("facebook/sam2.1-hiera-base-plus").name == "sam2.1_hiera_base_plus"
    with pytest.raises(KeyError, match="sam2.1_hiera_tiny"):
        registry.model_info("sam3_hiera_huge")


def test_cache_dir_precedence(monkeypatch, tmp_path):
    assert registry.cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path / "env"))
    assert registry.cache_dir() == tmp_path / "env"
    monkeypatch.delenv(registry.CACHE_ENV)
    default = registry.cache_dir()
    assert default.name == "napari-sam2"
    assert not (tmp_path / "env").exists()  # looking it up creates nothing


def test_import_and_lookups_never_touch_the_network(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError("network access")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    # a fresh copy of the module, executed under the block (registry.py has no relative imports)
    spec = importlib.util.spec_from_file_location("_registry_copy", registry.__file__)
    fresh = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "_registry_copy", fresh)  # dataclasses look their module up there
    spec.loader.exec_module(fresh)
    assert len(fresh.list_models()) == 9
    assert fresh.checkpoint_path("nano-fluo").parent == fresh.BUILTIN_DIR  # built in: no download, no cache
    fresh.model_info("sam2.1_hiera_l")
    assert fresh.verify("sam2.1_hiera_tiny", cache_dir=tmp_path)[0] is False
    with pytest.raises(fresh.ModelNotAvailableError):
        fresh.checkpoint_path("sam2.1_hiera_tiny", cache_dir=tmp_path, download=False)


# ---------------------------------------------------------------------- downloads from a local server
class _Server:
    """A static file server on 127.0.0.1 (random free port) in a thread, counting GET requests."""

    def __init__(self, directory: Path):
        counts = self.counts = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                counts.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(directory))
        )
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self):
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.thread.join(timeout=10)
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path):
    """(server, payload bytes) with the payload served as /test_ckpt.pt; the server is stopped afterwards."""
    root = tmp_path / "www"
    root.mkdir()
    payload = os.urandom(50_000)
    (root / "test_ckpt.pt").write_bytes(payload)
    server = _Server(root)
    yield server, payload
    server.stop()


@pytest.fixture
def entry():
    """register(...) a temporary model `test_ckpt`; removed from the registry afterwards."""
    added = []

    def _register(sha256, file_size=None):
        info = ModelInfo(
            name="test_ckpt",
            config="sam2.1_hiera_t",
            version="2.1",
            size="tiny",
            filename="test_ckpt.pt",
            url="https://example.invalid/never/used/test_ckpt.pt",
            sha256=sha256,
            file_size=file_size,
            params=1,
        )
        added.append(registry.register(info, overwrite=True))
        return info

    yield _register
    for info in added:
        registry.MODELS.pop(info.name, None)


def test_download_verifies_and_caches(served, entry, tmp_path):
    server, payload = served
    entry(hashlib.sha256(payload).hexdigest(), file_size=len(payload))
    cache = tmp_path / "cache"

    path = registry.checkpoint_path("test_ckpt", cache_dir=cache, base_url=server.url)
    assert path == cache / "test_ckpt.pt"
    assert path.read_bytes() == payload
    assert server.counts == ["/test_ckpt.pt"]

    again = registry.checkpoint_path("test_ckpt", cache_dir=cache, base_url=server.url)
    assert again == path
    assert len(server.counts) == 1  # served from the cache: the server was not asked again

    ok, message = registry.verify("test_ckpt", cache_dir=cache)
    assert ok, message
    ok, message = registry.verify(path)
    assert ok and "test_ckpt" in message

    server.stop()  # offline now, and the cached file is still returned
    assert registry.checkpoint_path("test_ckpt", cache_dir=cache, base_url=server.url) == path


def test_environment_variables_choose_cache_and_mirror(served, entry, tmp_path, monkeypatch):
    server, payload = served
    entry(hashlib.sha256(payload).hexdigest())
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path / "env-cache"))
    monkeypatch.setenv(registry.BASE_URL_ENV, server.url + "/")
    path = registry.checkpoint_path("test_ckpt")
    assert path == tmp_path / "env-cache" / "test_ckpt.pt"
    assert path.read_bytes() == payload


def test_wrong_hash_is_rejected_and_nothing_is_kept(served, entry, tmp_path):
    server, _payload = served
    entry(hashlib.sha256(b"some other file").hexdigest())
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError, match="SHA-256"):
        registry.checkpoint_path("test_ckpt", cache_dir=cache, base_url=server.url)
    assert len(server.counts) == 1
    assert not (cache / "test_ckpt.pt").exists()
    assert list(cache.iterdir()) == []  # no partial or temporary file left behind


def test_damaged_cached_file_is_refused_offline_and_replaced_online(served, entry, tmp_path):
    server, payload = served
    entry(hashlib.sha256(payload).hexdigest(), file_size=len(payload))
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "test_ckpt.pt").write_bytes(payload[:1000])  # an interrupted copy

    with pytest.raises(ChecksumError, match="damaged"):
        registry.checkpoint_path("test_ckpt", cache_dir=cache, download=False)
    ok, message = registry.verify(cache / "test_ckpt.pt")
    assert not ok and "bytes" in message

    path = registry.checkpoint_path("test_ckpt", cache_dir=cache, base_url=server.url)
    assert path.read_bytes() == payload
    assert registry.verify(path)[0]


def test_server_down_gives_one_clear_error(served, entry, tmp_path):
    server, payload = served
    entry(hashlib.sha256(payload).hexdigest())
    server.stop()
    cache = tmp_path / "cache"
    with pytest.raises(ModelNotAvailableError) as info:
        registry.checkpoint_path("test_ckpt", cache_dir=cache, base_url=server.url)
    err = info.value
    message = str(err)
    assert f"{server.url}/test_ckpt.pt" in message  # where to get it
    assert "test_ckpt.pt" in message and str(cache) in message  # what to call it and where to put it
    assert err.url == f"{server.url}/test_ckpt.pt" and err.path == cache / "test_ckpt.pt"
    assert isinstance(err, OSError)
    assert not (cache / "test_ckpt.pt").exists()


def test_missing_file_on_server_is_the_same_clear_error(served, entry, tmp_path):
    server, payload = served
    entry(hashlib.sha256(payload).hexdigest())
    with pytest.raises(ModelNotAvailableError, match="HTTPError"):
        registry.checkpoint_path("test_ckpt", cache_dir=tmp_path / "c", base_url=server.url + "/elsewhere")


def test_unrecorded_hash_downloads_but_does_not_verify(served, entry, tmp_path):
    server, payload = served
    entry(None)
    path = registry.checkpoint_path("test_ckpt", cache_dir=tmp_path / "c", base_url=server.url)
    assert path.read_bytes() == payload
    ok, message = registry.verify("test_ckpt", cache_dir=tmp_path / "c")
    assert not ok and "no recorded hash" in message


def test_verify_identifies_a_renamed_file(served, entry, tmp_path):
    _, payload = served
    entry(hashlib.sha256(payload).hexdigest())
    renamed = tmp_path / "my_model.pt"
    renamed.write_bytes(payload)
    ok, message = registry.verify(renamed)
    assert ok and "test_ckpt" in message
    other = tmp_path / "other.pt"
    other.write_bytes(b"not a checkpoint")
    ok, message = registry.verify(other)
    assert not ok and "matches no recorded checkpoint" in message


def test_register_refuses_bad_hashes_and_duplicates():
    info = registry.model_info("sam2.1_hiera_tiny")
    with pytest.raises(ValueError, match="already registered"):
        registry.register(info)
    bad = ModelInfo(**{**info.__dict__, "name": "bad", "sha256": "XYZ"})
    with pytest.raises(ValueError, match="64"):
        registry.register(bad)
    assert "bad" not in registry.MODELS


def test_load_model_by_name_downloads_through_the_registry(tiny_checkpoint, entry, tmp_path, monkeypatch):
    """load_model("<name>") goes through checkpoint_path: a (tiny, random-weight) checkpoint served locally."""
    from napari_sam2 import load_model

    root = tmp_path / "www"
    root.mkdir()
    payload = Path(tiny_checkpoint).read_bytes()
    (root / "test_ckpt.pt").write_bytes(payload)
    server = _Server(root)
    try:
        entry(hashlib.sha256(payload).hexdigest(), file_size=len(payload))
        monkeypatch.setenv(registry.BASE_URL_ENV, server.url)
        model = load_model("test_ckpt", device="cpu")
        assert Path(model.checkpoint_path) == registry.cache_dir() / "test_ckpt.pt"
        assert server.counts == ["/test_ckpt.pt"]
    finally:
        server.stop()


# ---------------------------------------------------------------------- the built-in model
def test_builtin_model_ships_in_the_package_and_loads_offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access")

    monkeypatch.setattr(socket, "create_connection", refuse)
    info = registry.model_info("nano")
    assert info.name == "nano-fluo" and info.builtin and info.url == ""
    path = registry.checkpoint_path("nano-fluo", download=False)
    assert path.parent == registry.BUILTIN_DIR and path.stat().st_size == info.file_size <= 20_000_000
    assert registry.verify("nano-fluo")[0] is True
    from napari_sam2 import load_model

    model = load_model("nano-fluo", device="cpu")
    assert model.cfg.name == "nano-fluo" and sum(p.numel() for p in model.parameters()) == info.params


def test_builtin_model_damaged_or_missing_is_refused_with_the_fix(monkeypatch, tmp_path):
    original = registry.checkpoint_path("nano-fluo")
    monkeypatch.setattr(registry, "BUILTIN_DIR", tmp_path)
    with pytest.raises(ModelNotAvailableError, match="reinstall napari-sam2"):
        registry.checkpoint_path("nano-fluo")
    data = bytearray(original.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / original.name).write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="recorded SHA-256: reinstall"):
        registry.checkpoint_path("nano-fluo")
    (tmp_path / original.name).write_bytes(bytes(data[:-10]))
    with pytest.raises(ChecksumError, match="bytes, expected"):
        registry.checkpoint_path("nano-fluo")


def test_a_copy_of_a_registry_file_keeps_its_defaults(tmp_path):
    """A byte-identical copy of nano-fluo (on a lab server, downloaded by hand) is still nano-fluo: the click rule and
    contrast every face uses with it are the registry's, not those of an unknown checkpoint; one changed byte makes it
    unknown."""
    import shutil

    from napari_sam2 import ImagePredictor, load_model
    from napari_sam2.click_rule import default_click_rule

    copy = tmp_path / "my_nano.pt"
    shutil.copyfile(registry.checkpoint_path("nano-fluo"), copy)
    info = registry.model_info("nano-fluo")
    assert default_click_rule(copy) == info.click_rule == "fluorescence"
    assert registry.default_contrast(copy) == info.contrast
    assert not ImagePredictor(load_model(copy, device="cpu")).click_rule.off
    data = bytearray(copy.read_bytes())
    data[-1] ^= 1
    changed = tmp_path / "changed.pt"
    changed.write_bytes(bytes(data))
    assert default_click_rule(changed) == "off"
