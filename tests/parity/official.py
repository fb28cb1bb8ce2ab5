"""Helpers shared by the parity tests: give an official module and ours the same random weights."""

import numpy as np
import torch

from napari_sam2.model.random_weights import randomize_state_dict


def same_random_weights(ours: torch.nn.Module, official: torch.nn.Module, seed: int = 0) -> dict:
    """Randomize `ours` (seeded), load the same tensors into `official`, both strictly; put both in eval.

    Both modules must have identical state-dict keys and shapes (that is what loading official
    checkpoints unchanged means). Returns the state dict used.
    """
    sd = randomize_state_dict(ours.state_dict(), seed=seed, object_score_bias=None)
    ours.load_state_dict(sd, strict=True)
    official.load_state_dict(sd, strict=True)
    ours.eval()
    official.eval()
    return sd


def assert_close(ours, ref, name="", rtol=1e-4, atol=1e-4):
    """The parity bar: |ours - ref| <= atol + rtol·|ref| elementwise (fp32, CPU)."""
    a = ours.detach().float().cpu().numpy() if torch.is_tensor(ours) else np.asarray(ours, dtype=np.float32)
    b = ref.detach().float().cpu().numpy() if torch.is_tensor(ref) else np.asarray(ref, dtype=np.float32)
    assert a.shape == b.shape, f"{name}: shape {a.shape} != official {b.shape}"
    err = np.abs(a - b)
    bound = atol + rtol * np.abs(b)
    worst = float((err - bound).max()) if err.size else 0.0
    rel = float((err / np.maximum(np.abs(b), 1e-12)).max()) if err.size else 0.0
    assert worst <= 0, f"{name}: max abs diff {err.max():.3g}, max rel diff {rel:.3g} exceeds rtol={rtol}, atol={atol}"
