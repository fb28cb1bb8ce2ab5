"""Configs, strict checkpoint loading and the clear errors for bad checkpoint files."""

import pytest
import torch

from napari_sam2 import CheckpointError, load_model
from napari_sam2.model import CONFIGS, build_model, config_from_state_dict, get_config

# parameter counts of the official models (SAM 2 README; counted on the official models built from their configs)
PARAMS = {
    "sam2.1_hiera_t": 38_962_498,
    "sam2.1_hiera_s": 46_060_354,
    "sam2.1_hiera_b+": 80_850_178,
    "sam2.1_hiera_l": 224_446_642,
    "sam2_hiera_t": 38_945_986,
    "sam2_hiera_s": 46_043_842,
    "sam2_hiera_b+": 80_833_666,
    "sam2_hiera_l": 224_430_130,
}
KEYS = {"t": 471, "s": 519, "b+": 615, "l": 903}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_all_eight_configs_have_official_sizes_and_are_detected(name):
    with torch.device("meta"):  # shapes only: no memory, no time
        model = build_model(name)
    sd = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    size = name.rsplit("_", 1)[-1]
    assert len(sd) == KEYS[size] - (3 if name.startswith("sam2_") else 0)
    assert config_from_state_dict(sd) == CONFIGS[name]


def test_config_names():
    assert get_config("sam2.1_hiera_tiny") is CONFIGS["sam2.1_hiera_t"]
    assert get_config("sam2-small") is CONFIGS["sam2_hiera_s"]
    with pytest.raises(KeyError, match="unknown SAM 2 configuration"):
        get_config("sam3_huge")


def test_load_official_format_checkpoint(make_checkpoint):
    model = load_model(make_checkpoint("sam2_hiera_t", seed=1), device="cpu")
    assert model.cfg.name == "sam2_hiera_t" and model.cfg.version == "2.0"
    assert not model.training and model.device.type == "cpu"


def test_custom_config_travels_in_the_checkpoint(make_checkpoint, tiny_config):
    cfg = tiny_config(image_size=96)
    model = load_model(make_checkpoint(cfg), device="cpu")
    assert model.cfg == cfg
    feats = model.encode_image(torch.zeros(1, 3, 96, 96))
    assert feats.vision.shape == (1, 32, 6, 6)  # nothing hard-codes 1024 / 64 / 256


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nothing.pt", device="cpu")


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("these are not weights")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_model(path, device="cpu")


def test_truncated_checkpoint(tmp_path, tiny_checkpoint):
    data = tiny_checkpoint.read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(path, device="cpu")


def test_state_dict_of_another_model(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save({"model": {"conv1.weight": torch.zeros(3), "fc.bias": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="not a SAM 2 / 2.1 checkpoint.*conv1.weight"):
        load_model(path, device="cpu")


def test_missing_and_unexpected_keys_are_listed(tmp_path, tiny_checkpoint):
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    del ckpt["model"]["no_obj_ptr"]
    ckpt["model"]["extra.weight"] = torch.zeros(1)
    path = tmp_path / "edited.pt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"1 missing keys \(first: no_obj_ptr\).*1 unexpected keys"):
        load_model(path, device="cpu")


def test_config_that_does_not_match_the_file(make_checkpoint):
    with pytest.raises(CheckpointError, match="does not match the configuration 'sam2_hiera_t'.*unexpected"):
        load_model(make_checkpoint("sam2.1_hiera_t", seed=1), device="cpu", config="sam2_hiera_t")


def test_code_in_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"model": {"x": torch.zeros(1)}, "hook": print}, path)
    with pytest.raises(CheckpointError, match="Python objects besides tensors"):
        load_model(path, device="cpu")


def test_cuda_requested_without_gpu(tiny_checkpoint):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        load_model(tiny_checkpoint, device="cuda")
