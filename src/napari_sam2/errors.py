"""The exceptions every face (widget, Python API, CLI) reports as one clear message.

They live here, apart from the code that raises them, so that a face can catch them without importing torch.
"""

from __future__ import annotations


class InputError(ValueError):
    """Input data that cannot be segmented as given, with what to do instead."""


class ModelNameError(InputError):
    """A model name that is neither in the registry nor an existing checkpoint file."""


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used, with the reason and what to do about it."""


class Terminated(KeyboardInterrupt):
    """SIGTERM turned into a stop like Ctrl-C (the command line does this), so a run records itself as interrupted
    and keeps its finished frames instead of dying mid-write with its status "running"."""
