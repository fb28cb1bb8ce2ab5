"""The contrast option through track() / the CLI: recorded in the store, replayed, resumed, old stores, 3D+t."""

import numpy as np
import pytest
from run_helpers import stop_at_call
from test_contrast import dim_and_bright

from napari_sam2 import PromptSet, cli, track
from napari_sam2.errors import InputError
from napari_sam2.io.ome_zarr import LabelStore
from napari_sam2.io.results import open_result
from napari_sam2.preprocess import LocalContrast
from napari_sam2.replay import replay


def dim_and_bright_movie(n_frames=5, shape=(64, 64), seed=0):
    """[N, Y, X] uint16: a bright disk (+2000) near (20, 20) and a dim one (+200) near (44, 40), drifting right."""
    return dim_and_bright(n_frames, shape, seed, dim_x=40, drift=1)


def clicks():
    prompts = PromptSet()
    prompts.add(0, 1, points=[[44, 40]])  # the dim one
    prompts.add(0, 2, points=[[20, 20]])
    return prompts


def test_track_records_the_contrast_and_replay_uses_it(tmp_path, tiny_checkpoint, capsys):
    stack = dim_and_bright_movie()
    np.save(tmp_path / "stack.npy", stack)
    plain = track(stack, clicks(), model=tiny_checkpoint, device="cpu", tables=False)
    assert plain.provenance["settings"]["contrast"] == "global"  # the model's default: a checkpoint not in the registry
    assert "local_contrast" not in plain.provenance["settings"]
    explicit = track(stack, clicks(), model=tiny_checkpoint, device="cpu", tables=False, contrast="global")
    np.testing.assert_array_equal(explicit.labels, plain.labels)

    custom = LocalContrast(window=8.0)
    out = tmp_path / "local.ome.zarr"
    local = track(tmp_path / "stack.npy", clicks(), model=tiny_checkpoint, device="cpu", out=out, tables=False,
                  contrast=custom)  # fmt: skip
    settings = open_result(out).record.settings
    assert settings["contrast"] == "local"
    assert settings["local_contrast"] == custom.record()["local_contrast"] and settings["local_contrast"]["window"] == 8
    assert not np.array_equal(np.asarray(local.labels[:]), plain.labels)  # another input, other masks
    assert replay(out, device="cpu").identical  # the recorded constants, not the default ones
    assert cli.main(["info", str(out)]) == 0
    assert "contrast=local (window=8, floor=0.05, background_percentile=5," in capsys.readouterr().out
    with pytest.raises(InputError, match="contrast must be one of 'global', 'local'"):
        track(stack, clicks(), model=tiny_checkpoint, device="cpu", tables=False, contrast="foo")


def test_cli_contrast_resume_keeps_it_and_refuses_another(tmp_path, tiny_checkpoint, capsys):
    stack = dim_and_bright_movie()
    np.save(tmp_path / "stack.npy", stack)
    clicks().save(tmp_path / "p.json")
    reference = track(stack, clicks(), model=tiny_checkpoint, device="cpu", tables=False, contrast="local")
    out = tmp_path / "cut.ome.zarr"
    with pytest.raises(KeyboardInterrupt):
        track(tmp_path / "stack.npy", clicks(), model=tiny_checkpoint, device="cpu", out=out, tables=False,
              contrast="local", progress=stop_at_call(2))  # fmt: skip
    argv = ["track", str(tmp_path / "stack.npy"), "--out", str(out), "--model", str(tiny_checkpoint), "--device",
            "cpu", "-q", "--resume"]  # fmt: skip
    assert cli.main([*argv, "--contrast", "global"]) == 1
    err = capsys.readouterr().err
    assert "was made with contrast='local'" in err and "resume without --contrast" in err and "Traceback" not in err
    assert cli.main([*argv, "--contrast", "local"]) == 0  # the recorded one (its window was fitted to the stack)
    resumed = open_result(out)
    assert resumed.complete and resumed.record.settings["contrast"] == "local"
    assert resumed.record.settings["local_contrast"]["window"] > 0  # the fitted window, recorded for replay
    np.testing.assert_array_equal(np.asarray(resumed.labels[:]), np.asarray(reference.labels))
    assert cli.main(["info", str(out)]) == 0
    assert "contrast=local" in capsys.readouterr().out

    fresh = tmp_path / "cli.ome.zarr"
    assert cli.main(["track", str(tmp_path / "stack.npy"), "--prompts", str(tmp_path / "p.json"), "--out", str(fresh),
                     "--model", str(tiny_checkpoint), "--device", "cpu", "-q", "--contrast", "local"]) == 0  # fmt: skip
    np.testing.assert_array_equal(open_result(fresh).labels[:], np.asarray(reference.labels))
    assert cli.main(["track", str(tmp_path / "stack.npy"), "--out", str(fresh), "--contrast", "foo"]) == 2
    assert "invalid choice: 'foo'" in capsys.readouterr().err


def test_a_store_made_before_the_option_replays_and_resumes_global(tmp_path, tiny_checkpoint, capsys):
    stack = dim_and_bright_movie()
    np.save(tmp_path / "stack.npy", stack)
    out = tmp_path / "old.ome.zarr"
    made = track(tmp_path / "stack.npy", clicks(), model=tiny_checkpoint, device="cpu", out=out, tables=False)
    store = LabelStore.open(out, mode="r+")
    settings = {k: v for k, v in store.provenance["settings"].items() if k != "contrast"}
    store.update_provenance({"settings": settings, "status": "interrupted"})
    assert "contrast" not in open_result(out).record.settings
    assert replay(out, device="cpu").identical
    assert cli.main(["info", str(out)]) == 0
    assert "contrast=global" in capsys.readouterr().out
    with pytest.raises(InputError, match="was made with contrast='global'"):
        track(tmp_path / "stack.npy", None, model=tiny_checkpoint, device="cpu", out=out, resume=True, tables=False,
              contrast="local")  # fmt: skip
    resumed = track(tmp_path / "stack.npy", None, model=tiny_checkpoint, device="cpu", out=out, resume=True,
                    tables=False)  # fmt: skip
    assert "contrast" not in resumed.provenance["settings"]  # the store keeps what its first run recorded
    np.testing.assert_array_equal(np.asarray(resumed.labels[:]), np.asarray(made.labels[:]))


def test_tzyx_track_records_and_replays_the_contrast(tmp_path, tiny_checkpoint, capsys):
    movie = np.stack([dim_and_bright_movie(4, seed=t) for t in range(2)])  # [T, Z, Y, X]
    np.save(tmp_path / "movie.npy", movie)
    prompts = PromptSet()
    prompts.add(1, 1, points=[[44, 41]], t=0)
    out = tmp_path / "tzyx.ome.zarr"
    made = track(tmp_path / "movie.npy", prompts, model=tiny_checkpoint, device="cpu", out=out, tables=False,
                 contrast="local", direction="forward")  # fmt: skip
    assert made.provenance["settings"]["contrast"] == "local" and made.axes == "tzyx"
    plain = track(movie, prompts, model=tiny_checkpoint, device="cpu", tables=False, direction="forward")
    assert plain.provenance["settings"]["contrast"] == "global"
    assert cli.main(["replay", str(out), "--device", "cpu"]) == 0
    assert "identical labels" in capsys.readouterr().out
    LabelStore.open(out, mode="r+").update_provenance({"status": "interrupted"})
    with pytest.raises(InputError, match="was made with contrast='local'"):
        track(tmp_path / "movie.npy", None, model=tiny_checkpoint, device="cpu", out=out, resume=True, tables=False,
              contrast="global")  # fmt: skip


def test_track_many_and_encode_take_the_contrast():
    """track_many passes contrast to every stack's track(); encode builds the sessions track() builds (the embedding
    cache key holds a local step), and both commands take --contrast."""
    from napari_sam2.scale_out import _TRACK_OPTIONS

    assert "contrast" in _TRACK_OPTIONS
    parser = cli._parser()
    many = parser.parse_args(["track-many", "a.tif", "--auto", "--out-dir", "o", "--contrast", "local"])
    assert many.contrast == "local"
    assert parser.parse_args(["encode", "a.tif", "--embedding-cache", "c"]).contrast is None  # the model's


def test_a_model_whose_default_is_local(tmp_path, monkeypatch):
    """The default is the model's (`registry.ModelInfo.contrast`): with nano-fluo's set to "local" (a one-line change
    in the registry), track() records the local step without being asked, and a resume keeps it."""
    import dataclasses

    from napari_sam2 import registry
    from napari_sam2.preprocess import default_contrast

    info = registry.MODELS[registry.BUILTIN_MODEL]
    monkeypatch.setitem(registry.MODELS, info.name, dataclasses.replace(info, contrast="local"))
    assert default_contrast("nano-fluo") == "local" and default_contrast(registry.checkpoint_path("nano")) == "local"
    stack = dim_and_bright_movie(3)
    np.save(tmp_path / "stack.npy", stack)
    out = tmp_path / "nano.ome.zarr"
    made = track(tmp_path / "stack.npy", clicks(), model="nano-fluo", device="cpu", out=out, tables=False)
    assert made.provenance["settings"]["contrast"] == "local"
    assert made.provenance["settings"]["local_contrast"]["window"] > 0
    asked = track(stack, clicks(), model="nano-fluo", device="cpu", tables=False, contrast="global")
    assert asked.provenance["settings"]["contrast"] == "global"  # an explicit choice wins
    LabelStore.open(out, mode="r+").update_provenance({"status": "interrupted"})
    resumed = track(tmp_path / "stack.npy", None, out=out, resume=True, device="cpu", tables=False)
    np.testing.assert_array_equal(np.asarray(resumed.labels[:]), np.asarray(made.labels[:]))
