"""SAM 2 / 2.1 in plain PyTorch: one module per network part, a config per model, strict loading.

Only torch (and numpy) are imported here: no napari, no files beyond the checkpoint being loaded.
"""

from .build import CheckpointError, build_model, load_model, resolve_device
from .configs import CONFIGS, HieraConfig, SAM2Config, config_from_state_dict, get_config

__all__ = [
    "CONFIGS",
    "CheckpointError",
    "HieraConfig",
    "SAM2Config",
    "build_model",
    "config_from_state_dict",
    "get_config",
    "load_model",
    "resolve_device",
]
