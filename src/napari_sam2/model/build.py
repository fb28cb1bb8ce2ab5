"""Building a network from a config, and loading official (or our own) checkpoints strictly.

Checkpoints are untrusted files: they are read with `torch.load(..., weights_only=True)`, which refuses
anything but tensors and plain containers, and loaded with `strict=True` so that a file of another model
can never half-load. Every failure is one `CheckpointError` that names the file, the problem and the fix.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from ..errors import CheckpointError
from .configs import SAM2Config, check_config, config_from_state_dict, get_config


def build_model(config: SAM2Config | str) -> SAM2Model:  # noqa: F821
    """A SAM2Model with freshly initialised weights, in eval mode, on the CPU."""
    from .sam2 import SAM2Model

    cfg = get_config(config) if isinstance(config, str) else config
    return SAM2Model(cfg).eval()


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """ "auto" → CUDA if available, else Apple MPS, else CPU. Asking for a missing device is an error."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but PyTorch sees no CUDA GPU here; use device='cpu' or 'auto'")
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise RuntimeError("device 'mps' was requested but Apple MPS is not available; use 'cpu' or 'auto'")
    return device


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, dict | None]:
    """Read a checkpoint file safely → (state_dict, stored config dict or None).

    Accepts the official layout `{"model": state_dict}`, and a bare state dict.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; give the path of a SAM 2 .pt file or a model name")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file; give the path of a SAM 2 .pt file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, zipfile.BadZipFile, EOFError) as exc:
        text = str(exc)
        if "central directory" in text or "failed reading" in text or isinstance(exc, (EOFError, zipfile.BadZipFile)):
            raise CheckpointError(
                f"checkpoint {path} is truncated or corrupt ({path.stat().st_size} bytes): download it again"
            ) from exc
        raise CheckpointError(f"checkpoint {path} could not be read as a PyTorch checkpoint: {text}") from exc
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                f"checkpoint {path} contains Python objects besides tensors; napari-sam2 only loads plain tensor "
                "checkpoints (weights_only) for safety: re-save it as {'model': state_dict}"
            ) from exc
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (unpickling failed: {exc})") from exc
    except Exception as exc:  # e.g. a text file: "invalid load key"
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        return obj["model"], obj.get("config")
    if isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
        return obj, None
    raise CheckpointError(
        f"checkpoint {path} holds no SAM 2 state dict (expected {{'model': state_dict}}; "
        f"found {type(obj).__name__} with keys {list(obj)[:5] if isinstance(obj, dict) else '-'})"
    )


def config_from_dict(data: dict, source: str = "the checkpoint") -> SAM2Config:
    """Rebuild a SAM2Config stored in a checkpoint (our own small models carry theirs). Every field is checked
    (known name, type, sane range: `configs.check_config`) before anything is built; a bad one is a
    CheckpointError naming it."""
    import dataclasses

    from .configs import HieraConfig

    def fields_of(cls, values, where):
        if not isinstance(values, dict):
            raise CheckpointError(f"{source}: its stored config{where} must be a mapping; got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CheckpointError(f"{source}: its stored config{where} has unknown field(s) {unknown}")
        return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}

    data = fields_of(SAM2Config, data, "")
    if "trunk" not in data:
        raise CheckpointError(f"{source}: its stored config has no 'trunk' (the image encoder's Hiera settings)")
    for required in ("name", "version"):
        if required not in data:
            raise CheckpointError(f"{source}: its stored config has no {required!r}")
    data["trunk"] = HieraConfig(**fields_of(HieraConfig, data["trunk"], "['trunk']"))
    config = SAM2Config(**data)
    try:
        check_config(config)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{source}: its stored config is not usable: {exc}") from None
    return config


def _describe_mismatch(model: torch.nn.Module, state_dict: dict, limit: int = 5) -> str:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (first: {', '.join(missing[:limit])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:limit])})")
    if wrong_shape:
        parts.append(f"{len(wrong_shape)} shape mismatches (first: {'; '.join(wrong_shape[:limit])})")
    return "; ".join(parts)


def model_from_state_dict(state_dict: dict, config: SAM2Config | None = None, source: str = "state dict"):
    """Build the network that `state_dict` belongs to and load it strictly.

    Without `config` the official size and version are detected from the keys and shapes.
    """
    if config is None:
        try:
            config = config_from_state_dict(state_dict)
        except ValueError as exc:
            sample = ", ".join(list(state_dict)[:5])
            raise CheckpointError(f"{source} is not a SAM 2 / 2.1 checkpoint: {exc} (first keys: {sample})") from exc
    from .configs import CONFIGS, CUSTOM_CONFIGS

    # a config that is not one we ship (e.g. stored in the file) is built shapes-only first: compared with the
    # state dict before any weight is allocated
    trusted = config in (CONFIGS.get(config.name), CUSTOM_CONFIGS.get(config.name))
    probe = None if trusted else _shapes_only(config)
    if probe is not None:
        _attach_optional_parts(probe, state_dict, source)
        mismatch = _describe_mismatch(probe, state_dict)
        if mismatch:
            raise CheckpointError(f"{source} does not match the configuration {config.name!r}: {mismatch}")
    bad = [k for k, t in state_dict.items() if torch.is_tensor(t) and t.is_floating_point() and not t.isfinite().all()]
    if bad:
        raise CheckpointError(
            f"{source} holds NaN or infinite weights in {len(bad)} tensor(s) (first: {bad[0]}): the file is damaged "
            "or the training diverged; use another checkpoint"
        )
    model = build_model(config)
    _attach_optional_parts(model, state_dict, source)
    mismatch = _describe_mismatch(model, state_dict)
    if mismatch:
        raise CheckpointError(f"{source} does not match the configuration {config.name!r}: {mismatch}")
    model.load_state_dict(state_dict, strict=True)
    return model


def _attach_optional_parts(model, state_dict: dict, source: str) -> None:
    """Add the optional mask-quality head, click decoder and mask refiner where the checkpoint carries their keys
    (`mask_quality.*`, `click_decoder.*`, `mask_refiner.*`; official ones never do): built from the keys' shapes or the
    model, then loaded strictly with the rest."""
    from .click_decoder import attach_from_state_dict as attach_click_decoder
    from .mask_quality import attach_from_state_dict
    from .mask_refiner import attach_from_state_dict as attach_mask_refiner

    try:
        attach_from_state_dict(model, state_dict)
        attach_click_decoder(model, state_dict)
        attach_mask_refiner(model, state_dict)
    except ValueError as exc:
        raise CheckpointError(f"{source}: {exc}") from None


def _shapes_only(config: SAM2Config):
    """The network of `config` on the meta device (shapes, no memory), or None where it cannot be built so."""
    from .sam2 import SAM2Model

    try:
        with torch.device("meta"):
            return SAM2Model(config)
    except Exception:  # noqa: BLE001  (a module computing a buffer eagerly: the real build checks instead)
        return None


def load_model(
    name_or_path: str | os.PathLike,
    device: str | torch.device | None = "auto",
    config: SAM2Config | str | None = None,
):
    """Load SAM 2 from a registry name (e.g. "sam2.1_hiera_tiny") or a path to an official `.pt` file.

    Version (2.0 / 2.1) and size are detected from the checkpoint; pass `config` to insist on one (a file
    that does not match it is refused). Returns a `SAM2Model` in eval mode on `device` ("auto": CUDA, then
    MPS, then CPU).
    """
    target = resolve_device(device)
    path = Path(name_or_path)
    if not path.exists() and not str(name_or_path).endswith((".pt", ".pth")) and os.sep not in str(name_or_path):
        from .. import registry

        path = registry.checkpoint_path(str(name_or_path))
    state_dict, stored_config = read_checkpoint(path)
    if isinstance(config, str):
        config = get_config(config)
    if config is None and stored_config is not None:
        config = config_from_dict(stored_config, source=f"checkpoint {path}")
    model = model_from_state_dict(state_dict, config, source=f"checkpoint {path}")
    model.checkpoint_path = str(path)
    return model.to(target)
