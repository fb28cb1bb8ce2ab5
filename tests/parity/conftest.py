"""Fixtures for parity tests against the official SAM 2 implementation (PyPI sam2==1.1.0).

The official package is a test-time reference only. Outside the `parity` tox env it is usually absent and
these tests skip; with NAPARI_SAM2_REQUIRE_PARITY=1 (set by `tox -e parity`) a missing reference is an
error instead, so CI can never pass by skipping the proof.
"""

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def _import_official():
    try:
        import sam2
        import sam2.modeling.sam2_base  # noqa: F401 (imported to see that it imports)
    except Exception as exc:  # noqa: BLE001  # pragma: no cover - whatever breaks the import, say so
        if os.environ.get("NAPARI_SAM2_REQUIRE_PARITY") == "1":
            raise RuntimeError(f"the official sam2 reference is required here but cannot be imported: {exc}")
        pytest.skip(f"official sam2 reference not installed ({exc}); run `tox -e parity`", allow_module_level=True)


_import_official()
sys.path.insert(0, str(HERE))  # for tv_shim / official_runner helpers beside this file
