"""Precision "auto": bf16 exactly where the CPU computes bf16 natively, fp32 elsewhere and in the parity preset."""

import numpy as np
import pytest
import torch

from napari_sam2 import TrackingSession
from napari_sam2.model import build_model, precision
from napari_sam2.model.precision import (
    BF16_MIN_PARAMETERS,
    autocast_context,
    cpu_has_native_bf16,
    resolve_precision,
)
from napari_sam2.predictor import ImagePredictor


def _cpuinfo_says_native_bf16() -> bool | None:
    """The kernel's own flags (None where there is no /proc/cpuinfo): an independent reading of the CPU."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        return None
    return None if flags is None else bool({"avx512_bf16", "amx_bf16"} & set(flags))


def test_detection_agrees_with_the_kernel_flags():
    kernel = _cpuinfo_says_native_bf16()
    if kernel is None:
        pytest.skip("no /proc/cpuinfo flags on this system")
    assert cpu_has_native_bf16() is kernel


def test_auto_is_bf16_exactly_when_the_cpu_has_native_bf16():
    """A SAM 2-sized network (2.1 tiny, random weights): bf16 on this CPU exactly when it has native bf16."""
    native = cpu_has_native_bf16()
    expected = "bf16" if native else "fp32"
    assert resolve_precision("cpu") == expected
    model = build_model("sam2.1_hiera_t")
    stack = np.random.default_rng(0).integers(0, 255, (2, 64, 64), dtype=np.uint8)
    assert TrackingSession(model, stack).precision == expected
    assert ImagePredictor(model).precision == expected
    # the parity preset runs what the official predictor runs on a CPU: fp32, whatever the CPU
    assert TrackingSession(model, stack, preset="parity").precision == "fp32"
    # explicit choices are kept
    assert TrackingSession(model, stack, precision="fp32").precision == "fp32"
    assert TrackingSession(model, stack, preset="parity", precision="bf16").precision == "bf16"


def test_small_networks_stay_fp32(tiny_model):
    """bf16 made the 0.9 M-parameter nano-fluo slower on a CPU: small networks keep fp32 under "auto"."""
    assert sum(p.numel() for p in tiny_model.parameters()) < BF16_MIN_PARAMETERS
    assert resolve_precision("cpu", model=tiny_model) == "fp32"
    assert ImagePredictor(tiny_model).precision == "fp32"
    assert ImagePredictor(tiny_model, precision="bf16").precision == "bf16"


@pytest.mark.parametrize("native", [True, False])
def test_auto_follows_the_detection(monkeypatch, native):
    """Both answers of the detection, whichever CPU runs the test."""
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert resolve_precision("cpu") == ("bf16" if native else "fp32")
    assert resolve_precision("cpu", preset="parity") == "fp32"
    assert resolve_precision("cuda") == "bf16"
    assert resolve_precision(torch.device("cpu"), "fp32") == "fp32"


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        resolve_precision("cpu", "fp16")


def test_bf16_autocast_runs_the_network_in_bf16_on_a_cpu(tiny_model):
    lin = tiny_model.memory_attention.layers[0].linear1
    x = torch.randn(2, lin.in_features)
    with torch.inference_mode(), autocast_context("cpu", "bf16"):
        assert lin(x).dtype == torch.bfloat16
    with torch.inference_mode(), autocast_context("cpu", "fp32"):
        assert lin(x).dtype == torch.float32
