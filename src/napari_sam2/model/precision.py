"""Compute precision: which one "auto" means on this machine, and the autocast context that applies it.

"fp32"  everything in float32 (the official SAM 2's only CPU precision; the parity preset on a CPU).
"bf16"  bfloat16 autocast: matmuls, convolutions and attention in bf16, the residual streams, the
        normalisation statistics, RoPE rotations and the stored memories' rounding as the official
        GPU path has them (see the modules' comments). SAM 2's own precision on a GPU.
"auto"  bf16 on CUDA; on a CPU, bf16 exactly when the CPU has native bf16 arithmetic (x86 AVX512-BF16 or
        AMX-BF16: recent Xeons, Zen 4 and later) and the network is SAM 2-sized (`BF16_MIN_PARAMETERS`),
        where the encoder and the memory attention run ~1.5–2× faster; fp32 on every other CPU, where bf16
        would be emulated and slower, and for small networks such as nano-fluo, which bf16 makes slower.
        The parity preset of the tracking session resolves "auto" to what the official predictor runs on
        that device.
"""

from __future__ import annotations

import contextlib
import functools

import torch

PRECISIONS = ("auto", "fp32", "bf16")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (x86 AVX512-BF16 or AMX-BF16).

    Read from torch's view of the CPU (`torch.cpu.get_capabilities`, torch ≥ 2.8; the private probes of
    older versions), else from the kernel's /proc/cpuinfo flags. Arm CPUs are left at False: their bf16
    paths in PyTorch were not measured to be faster than fp32.
    """
    caps = getattr(torch.cpu, "get_capabilities", None)
    if caps is not None:
        found = caps()
        return bool(found.get("avx512_bf16", False) or found.get("amx_bf16", False))
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(p is not None for p in probes):
        return any(bool(p()) for p in probes if p is not None)
    return bool(_cpuinfo_flags() & {"avx512_bf16", "amx_bf16"})


def _cpuinfo_flags() -> set[str]:
    """The CPU feature flags Linux reports (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


#: On a CPU, "auto" picks bf16 only for networks at least this large. Measured per tracked frame (CPU seconds,
#: one thread, in turns): SAM 2.1 tiny (39 M parameters, 1024²) runs faster in bf16, while the built-in
#: nano-fluo (0.9 M, 256²) ran 1.1–1.3× *slower* in bf16: its matmuls are too small to gain, and the casts
#: around them cost more than they save.
BF16_MIN_PARAMETERS = 10_000_000


def resolve_precision(
    device: torch.device | str, precision: str = "auto", preset: str | None = None, model: torch.nn.Module | None = None
) -> str:
    """ "fp32" or "bf16" for `precision` ("auto", "fp32" or "bf16") on `device`.

    On a CPU "auto" is bf16 exactly when the CPU has native bf16 and the network (when given) has at least
    BF16_MIN_PARAMETERS parameters. preset "parity" makes "auto" what the official SAM 2 runs there: fp32 on a
    CPU, bf16 on CUDA.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16"
    if device.type != "cpu" or preset == "parity" or not cpu_has_native_bf16():
        return "fp32"
    if model is not None and sum(p.numel() for p in model.parameters()) < BF16_MIN_PARAMETERS:
        return "fp32"
    return "bf16"


def autocast_context(device: torch.device | str, precision: str):
    """The context to run the network in at a resolved `precision` ("fp32" / "bf16") on `device`."""
    device = torch.device(device)
    if precision == "bf16" and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """The dtype autocast casts matmul inputs to right now on `device`'s type (None when it is off)."""
    device_type = torch.device(device).type
    if device_type not in ("cuda", "cpu"):
        return None
    try:  # torch >= 2.4
        enabled, dtype = torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
    except (TypeError, AttributeError):
        if device_type == "cpu":
            enabled, dtype = torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
        else:
            enabled, dtype = torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
    return dtype if enabled else None
