"""SAM 2 checkpoints by name: the official SAM 2 / 2.1 ones (where they come from, what they must hash to, where
they are cached) and our built-in `nano-fluo` (shipped inside the package: no download, works offline).

Nothing here touches the network at import or when looking things up; only `checkpoint_path(..., download=True)`
does, and only when the file is not cached yet. No torch, no napari.

    from napari_sam2 import registry
    registry.list_models()                        # ['sam2.1_hiera_tiny', 'sam2.1_hiera_small', ...]
    path = registry.checkpoint_path("sam2.1_hiera_t")  # an alias; downloaded once into registry.cache_dir()

Environment variables:
  NAPARI_SAM2_CACHE     folder that holds the checkpoints (default: the platform's user cache, `napari-sam2`)
  NAPARI_SAM2_BASE_URL  fetch `<base>/<file name>` instead of Meta's URL (a mirror, or a local server in tests)

Hashes and file sizes are the Git-LFS records of Meta's Hugging Face repositories (`facebook/sam2-hiera-*`,
`facebook/sam2.1-hiera-*`), cross-checked against copies uploaded by others; see model/README.md for the
sources. A field that could not be found is None, never a guess.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "BASE_URL_ENV",
    "CACHE_ENV",
    "DEFAULT_MODEL",
    "MODELS",
    "ChecksumError",
    "ModelInfo",
    "ModelNotAvailableError",
    "cache_dir",
    "checkpoint_path",
    "default_click_rule",
    "default_contrast",
    "file_sha256",
    "list_models",
    "model_info",
    "register",
    "verify",
]

CACHE_ENV = "NAPARI_SAM2_CACHE"
BASE_URL_ENV = "NAPARI_SAM2_BASE_URL"
BUILTIN_MODEL = "nano-fluo"  # in the package, needs no download
# Every face (widget, track(), the CLI, the demo) uses the built-in model unless the user names another, so a first
# run works offline; the official checkpoints (sam2.1_hiera_tiny and up) are the choice for real work.
DEFAULT_MODEL = BUILTIN_MODEL
BUILTIN_DIR = Path(__file__).parent / "weights"

_SAM2_BASE = "https://dl.fbaipublicfiles.com/segment_anything_2/072824"  # SAM 2.0, July 2024
_SAM21_BASE = "https://dl.fbaipublicfiles.com/segment_anything_2/092824"  # SAM 2.1, September 2024


class ModelNotAvailableError(FileNotFoundError):
    """A checkpoint that is not in the cache and could not be downloaded (offline, server down, HTTP error).

    The message says where to get the file and where to put it; the same facts are attributes.
    """

    def __init__(self, message: str, *, name: str, url: str, filename: str, path: Path):
        super().__init__(message)
        self.message = message
        self.name = name
        self.url = url
        self.filename = filename
        self.path = Path(path)
        self.cache_dir = self.path.parent

    def __str__(self) -> str:  # OSError would format errno/filename instead
        return self.message


class ChecksumError(ValueError):
    """A checkpoint whose SHA-256 differs from the recorded one (a truncated or tampered file)."""


@dataclass(frozen=True)
class ModelInfo:
    """One downloadable checkpoint.

    name: registry name (`sam2.1_hiera_tiny`); config: our/official config name (`sam2.1_hiera_t`);
    version: "2.0" or "2.1"; size: tiny | small | base_plus | large; filename: the file name in the cache;
    url: Meta's download URL ("" for a built-in model); sha256 / file_size: of that file (None: not recorded);
    params: parameter count; hf_repo: Meta's Hugging Face repository holding the same file; aliases: other accepted
    spellings; builtin: the file ships inside the package (`BUILTIN_DIR`), written by model/train_nano.py --export
    together with a JSON record of its hash, size and parameter count. contrast: the contrast step its input is made
    with unless the user picks one ("global" or "local"; `napari_sam2.preprocess.resolve_contrast`); z_contrast: the
    same for a z stream (a z-stack tracked along z; None: `contrast`). click_rule: the
    click rule its sessions use unless the user picks one ("off" or "fluorescence"; `napari_sam2.click_rule`).
    """

    name: str
    config: str
    version: str
    size: str
    filename: str
    url: str
    sha256: str | None
    file_size: int | None
    params: int
    license: str = "Apache-2.0"
    hf_repo: str | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)
    builtin: bool = False  # shipped in napari_sam2/weights/ (no url, never downloaded)
    contrast: str = "global"  # preprocess.CONTRASTS: the default contrast step of every face for this model
    click_rule: str = "off"  # click_rule.CLICK_RULES: how every face reads a clicked frame for this model
    z_contrast: str | None = None  # the default contrast step of a z stream (None: `contrast`)


_SHORT = {"tiny": "t", "small": "s", "base_plus": "b+", "large": "l"}


def _official(version, size, sha256, file_size, params) -> ModelInfo:
    stem = ("sam2.1_hiera_" if version == "2.1" else "sam2_hiera_") + size
    config = stem[: -len(size)] + _SHORT[size]
    base = _SAM21_BASE if version == "2.1" else _SAM2_BASE
    hf_repo = "facebook/" + stem.replace("_hiera_", "-hiera-").replace("_", "-")
    version_prefix = stem[: -len(size)].replace("_hiera_", "_")  # sam2.1_ / sam2_
    return ModelInfo(
        name=stem,
        config=config,
        version=version,
        size=size,
        filename=stem + ".pt",
        url=f"{base}/{stem}.pt",
        sha256=sha256,
        file_size=file_size,
        params=params,
        hf_repo=hf_repo,
        aliases=(config, hf_repo, version_prefix + size, version_prefix + _SHORT[size]),
    )


# (version, size, sha256, file size in bytes, parameters). Sources: model/README.md.
_OFFICIAL = [
    ("2.1", "tiny", "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69", 156_008_466, 38_962_498),
    ("2.1", "small", "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38", 184_416_285, 46_060_354),
    ("2.1", "base_plus", "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5", 323_606_802, 80_850_178),
    ("2.1", "large", "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318", 898_083_611, 224_446_642),
    ("2.0", "tiny", "65b50056e05bcb13694174f51bb6da89c894b57b75ccdf0ba6352c597c5d1125", 155_906_050, 38_945_986),
    # sam2_hiera_small: the hash is recorded on facebook/sam2-hiera-small; its exact byte count was not found.
    ("2.0", "small", "95949964d4e548409021d47b22712d5f1abf2564cc0c3c765ba599a24ac7dce3", None, 46_043_842),
    ("2.0", "base_plus", "d0bb7f236400a49669ffdd1be617959a8b1d1065081789d7bbff88eded3a8071", 323_493_298, 80_833_666),
    ("2.0", "large", "7442e4e9b732a508f80e141e7c2913437a3610ee0c77381a66658c3a445df87b", 897_952_466, 224_430_130),
]


def _builtin(
    name: str, stem: str, config: str, contrast: str = "global", click_rule: str = "off", z_contrast: str | None = None
) -> ModelInfo:
    """A model shipped in the package; its hash, size and parameters come from the record written beside it."""
    import json

    try:
        record = json.loads((BUILTIN_DIR / f"{stem}.json").read_text())
    except (OSError, ValueError):
        record = {}
    return ModelInfo(
        name=name,
        config=config,
        version="2.1",
        size="nano",
        filename=f"{stem}.pt",
        url="",
        sha256=record.get("sha256"),
        file_size=record.get("file_size"),
        params=int(record.get("params", 0)),
        license="BSD-3-Clause",
        aliases=(stem, "nano"),
        builtin=True,
        contrast=contrast,
        click_rule=click_rule,
        z_contrast=z_contrast,
    )


#: Every known checkpoint by registry name: the built-in one first, then the eight official ones, plus any added
#: with `register`.
MODELS: dict[str, ModelInfo] = {
    info.name: info
    for info in [
        # contrast: nano-fluo's default contrast step (preprocess.LocalContrast is "local")
        # click_rule: nano-fluo's clicks are read with the fluorescence rule (click_rule.py; model/README.md)
        # z_contrast: a z-stack tracked along z under local contrast: under the stack's range the network loses a dim
        # large nucleus on the slice after the click (model/README.md, "Session 16")
        _builtin(
            BUILTIN_MODEL, "nano_fluo", "nano-fluo", contrast="global", click_rule="fluorescence", z_contrast="local"
        ),
        *(_official(*row) for row in _OFFICIAL),
    ]
}


# ---------------------------------------------------------------------- look-ups (no network)
def _normalise(name: str) -> str:
    key = str(name).strip().lower().replace("-", "_")
    key = key.removesuffix(".pt")
    return key


def list_models() -> list[str]:
    """Registry names: the built-in nano-fluo, then the official ones (SAM 2.1 first, smallest first)."""
    return list(MODELS)


def model_info(name: str) -> ModelInfo:
    """The entry for a registry name or alias (`sam2.1_hiera_tiny`, `sam2.1_hiera_t`, `facebook/sam2.1-hiera-tiny`,
    `sam2.1_tiny`, or the file name `sam2.1_hiera_tiny.pt`; case and `-`/`_` do not matter)."""
    key = _normalise(name)
    for info in MODELS.values():
        if key == _normalise(info.name) or key in {_normalise(a) for a in info.aliases}:
            return info
    raise KeyError(f"unknown SAM 2 model {name!r}; known: {', '.join(MODELS)} (or pass the path of a .pt file)")


def _known_info(name_or_path: str | os.PathLike) -> ModelInfo | None:
    """The registry entry a name, an alias or a checkpoint path names (its built-in file, its file in the download
    cache, or a byte-identical copy of either); None for a checkpoint the registry does not know."""
    path = Path(name_or_path)
    if not path.exists():
        try:
            return model_info(str(name_or_path))
        except KeyError:
            return None
    try:
        resolved = path.resolve()
        for info in MODELS.values():
            known = _model_file(info)
            if known.is_file() and known.resolve() == resolved:
                return info
        # a copy of a registry file elsewhere (a lab server, a download by hand): the same bytes, so the same model
        # and the same defaults (hashed only where the size matches a registry file's)
        stat = path.stat()
        version = (str(resolved), stat.st_size, stat.st_mtime_ns)
        for info in MODELS.values():
            if (
                info.sha256 is not None
                and info.file_size == stat.st_size
                and _sha256_of_version(*version) == info.sha256
            ):
                return info
    except OSError:
        pass
    return None


def default_contrast(name_or_path: str | os.PathLike, z_stream: bool = False) -> str:
    """The `ModelInfo.contrast` (`z_stream`: its `z_contrast`, where it has one) of the registry model a name, an
    alias or a checkpoint path names (its built-in file, its file in the download cache, or a copy of either);
    "global" for a checkpoint the registry does not know."""
    info = _known_info(name_or_path)
    if info is None:
        return "global"
    return info.z_contrast if z_stream and info.z_contrast is not None else info.contrast


def default_click_rule(name_or_path: str | os.PathLike) -> str:
    """The `ModelInfo.click_rule` of the registry model `name_or_path` names (as `default_contrast`); "off" for a
    checkpoint the registry does not know."""
    info = _known_info(name_or_path)
    return "off" if info is None else info.click_rule


def register(info: ModelInfo, *, overwrite: bool = False) -> ModelInfo:
    """Add a checkpoint to the registry (a fine-tuned model on a lab server, or a test file)."""
    if info.sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", info.sha256):
        raise ValueError(f"sha256 must be 64 lowercase hex digits or None; got {info.sha256!r}")
    if info.name in MODELS and not overwrite:
        raise ValueError(f"a model named {info.name!r} is already registered (pass overwrite=True to replace it)")
    MODELS[info.name] = info
    return info


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The folder that holds downloaded checkpoints: `path` if given, else $NAPARI_SAM2_CACHE, else the platform's
    user cache folder for "napari-sam2" (`~/.cache/napari-sam2` on Linux). It is not created here."""
    return _resolve_cache_dir(path)


def _resolve_cache_dir(path) -> Path:
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-sam2"))


def _model_file(info: ModelInfo, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where a registry model's file is: in the package (built-in) or in the download cache (`cache_dir`)."""
    return BUILTIN_DIR / info.filename if info.builtin else _resolve_cache_dir(cache_dir) / info.filename


def _download_url(info: ModelInfo, base_url: str | None) -> str:
    base = base_url or os.environ.get(BASE_URL_ENV)
    return f"{base.rstrip('/')}/{info.filename}" if base else info.url


# ---------------------------------------------------------------------- hashing
def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """SHA-256 of a file, read in 1 MiB chunks (a 900 MB checkpoint takes a few seconds)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


@functools.lru_cache(maxsize=16)
def _sha256_of_version(path: str, size: int, mtime_ns: int) -> str:
    """`file_sha256` of one version of a file (its size and modification time are the cache key): the faces resolve
    a model's defaults several times per session (contrast, click rule), and a copy of a 900 MB checkpoint takes
    seconds to hash."""
    return file_sha256(path)


def _stamp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.verified")


def _stamp_text(path: Path, sha256: str) -> str:
    st = path.stat()
    return f"{sha256} {st.st_size} {st.st_mtime_ns}\n"


def _hash_is_known_good(path: Path, sha256: str) -> bool:
    """True if `path` hashes to `sha256`. A small stamp file beside it remembers a successful check for that exact
    size and modification time, so a 900 MB checkpoint is hashed once, not at every load."""
    stamp = _stamp_path(path)
    try:
        if stamp.read_text() == _stamp_text(path, sha256):
            return True
    except OSError:
        pass
    if file_sha256(path) != sha256:
        return False
    try:
        stamp.write_text(_stamp_text(path, sha256))
    except OSError:  # a read-only cache still works, it just re-hashes next time
        pass
    return True


def _remove(path: Path) -> None:
    for p in (path, _stamp_path(path)):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def _cached_file_problem(path: Path, info: ModelInfo) -> str | None:
    """Why the cached file cannot be used (None: it is fine or cannot be checked)."""
    actual_size = path.stat().st_size
    if info.file_size is not None and actual_size != info.file_size:
        return f"it has {actual_size} bytes, expected {info.file_size}"
    if info.sha256 is not None and not _hash_is_known_good(path, info.sha256):
        return f"its SHA-256 is not the recorded {info.sha256}"
    return None


# ---------------------------------------------------------------------- fetching
def checkpoint_path(
    name: str,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
    progress: bool = False,
    base_url: str | None = None,
) -> Path:
    """Path of the checkpoint `name` in the cache, downloading it first if needed (and allowed).

    A cached file is checked against the recorded size and SHA-256; a bad one is deleted and fetched again
    (download=True) or refused with `ChecksumError` (download=False). A download is written to a temporary file and
    only renamed into place once its hash matches; on a mismatch nothing is left behind and `ChecksumError` is
    raised. When the file is missing and cannot be fetched, `ModelNotAvailableError` names the URL, the file name
    and the folder to put it in. base_url (or $NAPARI_SAM2_BASE_URL): fetch `<base_url>/<file name>` instead.
    """
    info = model_info(name)
    if info.builtin:
        return _builtin_path(info)
    folder = _resolve_cache_dir(cache_dir)
    target = folder / info.filename
    url = _download_url(info, base_url)

    if target.is_file():
        problem = _cached_file_problem(target, info)
        if problem is None:
            return target
        if not download:
            raise ChecksumError(
                f"the cached checkpoint {target} is damaged: {problem}. Delete it and download it again from {url}"
            )
        _remove(target)

    if not download:
        raise ModelNotAvailableError(
            _not_available_message(info, url, target, reason="downloads are switched off (download=False)"),
            name=info.name,
            url=url,
            filename=info.filename,
            path=target,
        )
    _fetch(info, url, target, progress)
    return target


def _builtin_path(info: ModelInfo) -> Path:
    """The file of a built-in model, checked against its record: size, then SHA-256 (a few MB, hashed at every load;
    no stamp file is written into the installation, unlike `_cached_file_problem` for the download cache)."""
    target = BUILTIN_DIR / info.filename
    if not target.is_file() or info.sha256 is None:
        raise ModelNotAvailableError(
            f"the built-in model {info.name!r} is missing from this installation (expected {target} and its record "
            f"{target.with_suffix('.json').name}): reinstall napari-sam2, or make it with model/train_nano.py --export",
            name=info.name,
            url="",
            filename=info.filename,
            path=target,
        )
    size = target.stat().st_size
    if info.file_size is not None and size != info.file_size:
        raise ChecksumError(f"the built-in model {target} has {size} bytes, expected {info.file_size}: reinstall")
    if file_sha256(target) != info.sha256:
        raise ChecksumError(f"the built-in model {target} does not have its recorded SHA-256: reinstall napari-sam2")
    return target


def _fetch(info: ModelInfo, url: str, target: Path, progress: bool) -> None:
    import pooch
    import requests

    if progress:
        try:
            import tqdm  # noqa: F401  (pooch's progress bar needs it)
        except ImportError:
            progress = False
    try:
        pooch.retrieve(
            url,
            known_hash=f"sha256:{info.sha256}" if info.sha256 else None,
            fname=info.filename,
            path=target.parent,
            progressbar=progress,
        )
    except (requests.exceptions.RequestException, OSError) as exc:
        # offline, refused, timed out, HTTP 404...; requests' errors are OSErrors, not builtins.ConnectionError
        _remove(target)
        raise ModelNotAvailableError(
            _not_available_message(info, url, target, reason=f"the download failed ({type(exc).__name__}: {exc})"),
            name=info.name,
            url=url,
            filename=info.filename,
            path=target,
        ) from exc
    except ValueError as exc:  # pooch: the downloaded file's hash differs from known_hash
        _remove(target)
        raise ChecksumError(
            f"the file downloaded from {url} does not have the recorded SHA-256 {info.sha256} of {info.name}; "
            f"it was deleted. Try again later, or download it yourself and check it with "
            f"napari_sam2.registry.verify(path). ({exc})"
        ) from exc

    # pooch has checked the hash; this checks the size and leaves the stamp that spares the next load a re-hash
    problem = _cached_file_problem(target, info)
    if problem is not None:
        _remove(target)
        raise ChecksumError(f"the file downloaded from {url} is not {info.name}: {problem}; it was deleted")


def _not_available_message(info: ModelInfo, url: str, target: Path, reason: str) -> str:
    return (
        f"SAM 2 checkpoint {info.name!r} is not in the cache and {reason}.\n"
        f"  Download:  {url}\n"
        f"  Save as:   {target}   (file name {info.filename!r}, in the folder {target.parent})\n"
        f"The folder can be changed with ${CACHE_ENV}; a mirror can be set with ${BASE_URL_ENV}; "
        f"or pass the path of the .pt file instead of the name. Without a download, the built-in {BUILTIN_MODEL!r} "
        f"(a small model for fluorescence nuclei) works at once."
    )


# ---------------------------------------------------------------------- verification
def verify(name_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> tuple[bool, str]:
    """Check a checkpoint against the recorded SHA-256: `(ok, message)`.

    A registry name checks its file in the cache; a path checks that file, against the entry with the same file
    name, or else against every recorded hash (telling which official checkpoint it is). ok is True only when the
    file's SHA-256 equals a recorded one; without a recorded hash the message says "no recorded hash".
    Never downloads anything.
    """
    text = os.fspath(name_or_path)
    as_path = Path(text).expanduser()
    if not as_path.exists():
        try:
            info = model_info(text)
        except KeyError as exc:
            if os.sep in text or text.endswith((".pt", ".pth")):
                return False, f"no such file: {as_path}"
            return False, str(exc.args[0])
        path = _model_file(info, cache_dir)
        if not path.is_file():
            return False, f"{info.name} is not downloaded (expected at {path})"
        return _verify_file(path, info)

    if not as_path.is_file():
        return False, f"no such file: {as_path}"
    by_name = [info for info in MODELS.values() if info.filename == as_path.name]
    if by_name:
        return _verify_file(as_path, by_name[0])
    digest = file_sha256(as_path)
    for info in MODELS.values():
        if info.sha256 == digest:
            return True, f"{as_path} is {info.name} (SHA-256 {digest} matches)"
    return False, f"{as_path} has SHA-256 {digest}, which matches no recorded checkpoint ({len(MODELS)} known)"


def _verify_file(path: Path, info: ModelInfo) -> tuple[bool, str]:
    size = path.stat().st_size
    if info.file_size is not None and size != info.file_size:
        return False, f"{path} has {size} bytes but {info.name} has {info.file_size}: truncated or a different file"
    digest = file_sha256(path)
    if info.sha256 is None:
        return False, f"no recorded hash for {info.name}: cannot verify {path} (its SHA-256 is {digest})"
    if digest != info.sha256:
        return False, f"{path} has SHA-256 {digest}, but {info.name} should have {info.sha256}"
    return True, f"{path} is {info.name} (SHA-256 {digest} matches)"
