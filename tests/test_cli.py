"""The napari-sam2 command line, in-process (main([...])) and as a subprocess: same labels as the API, exit codes,
a hard-killed run that --resume finishes exactly, info, models, demo."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_sam2 import PromptSet, cli, track
from napari_sam2.io.ome_zarr import LabelStore
from napari_sam2.io.results import open_result

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    # Same thread count as this process: float reductions (and so boundary pixels) depend on it, and the tests
    # compare subprocess and in-process labels bit for bit.
    env["OMP_NUM_THREADS"] = str(__import__("torch").get_num_threads())
    return env


@pytest.fixture
def files(tmp_path, blob_stack):
    """An image TIFF, a prompts CSV and a seed label TIFF for a 6-frame blob stack."""
    stack = blob_stack(n_frames=6, shape=(64, 96))
    tifffile.imwrite(tmp_path / "movie.tif", stack, metadata={"axes": "TYX"})
    prompts = PromptSet()
    prompts.add(1, 1, points=[[30, 33]])
    prompts.add(1, 2, box=[40, 72, 62, 93], points=[[50, 82]])
    prompts.save(tmp_path / "prompts.csv")
    seeds = np.zeros((64, 96), np.uint16)
    seeds[20:40, 20:40] = 5
    seeds[56:74, 76:94] = 8
    tifffile.imwrite(tmp_path / "seeds.tif", seeds)
    return {"dir": tmp_path, "stack": stack, "image": tmp_path / "movie.tif", "prompts": prompts,
            "csv": tmp_path / "prompts.csv", "seeds": tmp_path / "seeds.tif"}  # fmt: skip


def test_cli_and_api_give_identical_labels(files, tiny_checkpoint, capsys):
    out = files["dir"] / "cli.ome.zarr"
    code = cli.main(["track", str(files["image"]), "--prompts", str(files["csv"]), "--out", str(out),
                     "--model", str(tiny_checkpoint), "--device", "cpu", "--ctc", str(files["dir"] / "ctc")])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "tracking [" in captured.err and "6/6 frames" in captured.err  # the progress bar, on stderr
    assert "tracked 2 object(s) over 6 frames" in captured.out
    api = track(files["stack"], files["prompts"], model=tiny_checkpoint, device="cpu", tables=False)
    np.testing.assert_array_equal(open_result(out).labels[:], api.labels)
    assert (files["dir"] / "ctc" / "res_track.txt").is_file() and (files["dir"] / "ctc" / "mask005.tif").is_file()
    assert (files["dir"] / "cli_regions.csv").is_file()

    assert cli.main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "frames finished: 6/6" in info and "status: complete" in info and "prompts: 2 on frames 1" in info


def test_subprocess_seeds_run_and_usage_errors(files, tiny_checkpoint):
    out = files["dir"] / "seeded.ome.zarr"
    cmd = [sys.executable, "-m", "napari_sam2.cli", "track", str(files["image"]), "--seeds", str(files["seeds"]),
           "--out", str(out), "--model", str(tiny_checkpoint), "--device", "cpu", "--quiet"]  # fmt: skip
    run = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stderr == "" and run.stdout == ""  # --quiet
    result = open_result(out)
    assert result.complete and result.prompts.obj_ids == [5, 8]
    api = track(files["stack"], files["seeds"], model=tiny_checkpoint, device="cpu", tables=False)
    np.testing.assert_array_equal(result.labels[:], api.labels)

    usage = subprocess.run([sys.executable, "-m", "napari_sam2.cli", "track", "--bogus"], env=_env(),
                           capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert usage.returncode == 2 and "usage:" in usage.stderr


def test_hard_killed_run_is_resumed_exactly(files, tiny_checkpoint):
    out = files["dir"] / "killed.ome.zarr"
    script = textwrap.dedent(f"""
        import os, signal
        from napari_sam2 import PromptSet, track
        def progress(done, total):
            if done == 3:
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup of any kind runs
        track({str(files["image"])!r}, PromptSet.load({str(files["csv"])!r}), model={str(tiny_checkpoint)!r},
              out={str(out)!r}, device="cpu", progress=progress)
    """)
    run = subprocess.run(
        [sys.executable, "-c", script], env=_env(), capture_output=True, text=True, timeout=300, check=False
    )
    assert run.returncode == -signal.SIGKILL, run.stderr
    store = LabelStore.open(out)
    assert len(store.finished_frames()) == 3 and store.provenance["status"] == "running"

    code = cli.main(["track", str(files["image"]), "--out", str(out), "--resume", "--device", "cpu", "--quiet"])
    assert code == 0
    api = track(files["stack"], files["prompts"], model=tiny_checkpoint, device="cpu", tables=False)
    resumed = open_result(out)
    assert resumed.complete and resumed.provenance["status"] == "complete"
    np.testing.assert_array_equal(resumed.labels[:], api.labels)


def test_interrupt_exits_130_and_keeps_finished_frames(files, tiny_checkpoint, monkeypatch, capsys):
    calls = []

    def interrupt(self, done, total):
        calls.append(done)
        if done == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli.ProgressBar, "__call__", interrupt)
    out = files["dir"] / "int.ome.zarr"
    code = cli.main(["track", str(files["image"]), "--prompts", str(files["csv"]), "--out", str(out),
                     "--model", str(tiny_checkpoint), "--device", "cpu"])  # fmt: skip
    assert code == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    assert LabelStore.open(out).finished_frames().__len__() == 2


@pytest.mark.parametrize(
    "args, code, message",
    [
        (
            ["track", "{dir}/missing.tif", "--prompts", "{csv}", "--out", "{dir}/o.zarr"],
            1,
            "missing.tif does not exist",
        ),
        (["track", "{image}", "--prompts", "{dir}/bad.csv", "--out", "{dir}/o.zarr"], 1, "bad.csv:3: column 'x'"),
        (["track", "{image}", "--out", "{dir}/o.zarr"], 1, "give --prompts FILE or --seeds"),
        (
            ["track", "{image}", "--prompts", "{csv}", "--out", "{dir}"],
            1,
            "already exists; pass overwrite=True (--overwrite)",
        ),
        (
            ["track", "{image}", "--seeds", "{dir}/small.tif", "--out", "{dir}/o.zarr"],
            1,
            "seed labels have shape (8, 8)",
        ),
        (["track", "{image}", "--prompts", "{csv}", "--out", "{dir}/o.zarr", "--window", "-100,-200"], 1, "is empty"),
        (["track", "{image}", "--prompts", "{csv}", "--out", "{dir}/o.zarr", "--axis", "q"], 1, "axis 'q' is not"),
        (
            ["track", "{image}", "--prompts", "{csv}", "--out", "{dir}/o.zarr", "--model", "sam7"],
            3,
            "unknown SAM 2 model",
        ),
        (
            ["track", "{image}", "--prompts", "{csv}", "--out", "{dir}/o.zarr", "--model", "{dir}/prompts.csv"],
            3,
            "prompts.csv contains Python objects",
        ),
        (
            ["track", "{image}", "--prompts", "{csv}", "--seeds", "{dir}/seeds.tif", "--out", "{dir}/o.zarr"],
            2,
            "not allowed with argument",
        ),
        (["info", "{dir}"], 1, "zarr.json missing"),
    ],
)
def test_user_errors_are_one_clear_message(files, tiny_checkpoint, capsys, args, code, message):
    (files["dir"] / "bad.csv").write_text("obj_id,frame,y,x\n1,0,5,5\n1,0,5,five\n")
    tifffile.imwrite(files["dir"] / "small.tif", np.ones((8, 8), np.uint8))
    argv = [a.format(dir=files["dir"], csv=files["csv"], image=files["image"]) for a in args]
    if argv[0] == "track" and "--model" not in argv:
        argv += ["--model", str(tiny_checkpoint)]
    assert cli.main(argv + (["--device", "cpu"] if argv[0] == "track" else [])) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (files["dir"] / "o.zarr").exists()


def test_negative_window_is_accepted(files, tiny_checkpoint):
    out = files["dir"] / "w.ome.zarr"
    argv = ["track", str(files["image"]), "--prompts", str(files["csv"]), "--out", str(out), "--window", "-100,2500",
            "--model", str(tiny_checkpoint), "--device", "cpu", "--quiet", "--direction", "forward", "--axis", "t"]  # fmt: skip
    assert cli.main(argv) == 0
    settings = open_result(out).provenance["settings"]
    assert settings["window"] == [-100.0, 2500.0] and settings["direction"] == "forward"


def test_models_commands(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    monkeypatch.setenv("NAPARI_SAM2_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NAPARI_SAM2_BASE_URL", "http://127.0.0.1:9")  # nothing listens there: offline
    assert cli.main(["models", "list"]) == 0
    listing = capsys.readouterr().out
    assert "sam2.1_hiera_tiny" in listing and "sam2_hiera_large" in listing and str(tmp_path / "cache") in listing
    assert cli.main(["models", "verify", str(tiny_checkpoint)]) == 1
    assert "matches no recorded checkpoint" in capsys.readouterr().out
    assert cli.main(["models", "verify", "sam2.1_hiera_tiny"]) == 1
    assert "is not downloaded" in capsys.readouterr().out
    assert cli.main(["models", "download", "sam2.1_hiera_small", "--quiet"]) == 3
    err = capsys.readouterr().err
    assert "sam2.1_hiera_small.pt" in err and "Traceback" not in err
    assert cli.main(["models", "download", "nonesuch"]) == 3
    assert cli.main(["models"]) == 2


def test_demo_runs_the_main_job(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "demo"
    code = cli.main(["demo", "--model", str(tiny_checkpoint), "--out", str(out), "--frames", "5", "--size", "96",
                     "--device", "cpu", "--quiet"])  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0
    assert open_result(out / "nuclei.ome.zarr").complete
    assert (out / "01_RES" / "res_track.txt").is_file() and (out / "01_GT" / "TRA" / "man_track.txt").is_file()
    assert (out / "nuclei_regions.csv").is_file()
    pytest.importorskip("ctc_metrics")
    assert "TRA: " in text
    tra = float(text.split("TRA: ")[1].split()[0])
    assert 0.0 <= tra <= 1.0
    assert "{" not in text  # py-ctcmetrics' raw result dict is not shown

    # a second run into the same folder: a message with the option demo accepts, nothing replaced
    before = (out / "nuclei_regions.csv").read_bytes()
    assert cli.main(["demo", "--model", str(tiny_checkpoint), "--out", str(out), "--frames", "5", "--size", "96",
                     "--device", "cpu", "--quiet"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "--overwrite" in err and "--resume" not in err and "Traceback" not in err
    assert (out / "nuclei_regions.csv").read_bytes() == before


def test_demo_without_out_writes_into_a_new_temporary_folder(tmp_path, monkeypatch, capsys):
    import tempfile

    (tmp_path / "tmp").mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    assert cli.main(["demo", "--frames", "3", "--size", "64", "--device", "cpu", "--quiet"]) == 0
    text = capsys.readouterr().out
    (made,) = list((tmp_path / "tmp").iterdir())
    assert made.name.startswith("napari-sam2-demo-") and str(made) in text
    assert (made / "nuclei.ome.zarr").is_dir() and not any((tmp_path / "cwd").iterdir())


def test_every_option_has_help_text_and_track_defaults_to_the_builtin_model(files, capsys):
    subparsers = next(a for a in cli._parser()._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    for name in ("track", "demo"):
        for action in subparsers.choices[name]._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings} has no help text"
    out = files["dir"] / "default.ome.zarr"
    args = ["track", str(files["image"]), "--seeds", str(files["seeds"]), "--out", str(out), "--device", "cpu", "-q"]
    assert cli.main(args) == 0
    assert open_result(out).provenance["model"]["source"] == "nano-fluo"  # offline, no download


def test_help_and_models_list_import_nothing_heavy():
    """`napari-sam2 --help` and `models list` must start fast: neither `import napari_sam2` nor the CLI imports torch,
    numpy, zarr, scipy or napari for them."""
    code = textwrap.dedent(
        """
        import sys
        import napari_sam2
        from napari_sam2 import cli
        before = set(sys.modules)
        assert cli.main(["--help"]) == 0
        assert cli.main(["models", "list"]) == 0
        assert cli.main(["track", "--help"]) == 0
        heavy = ("torch", "numpy", "zarr", "scipy", "napari", "tifffile", "skimage")
        added = sorted(m for m in set(sys.modules) - before if m.split(".")[0] in heavy)
        print("HEAVY", added, "torch" in before)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip().splitlines()[-1]
    assert line == "HEAVY [] False", line  # nothing heavy added, and no torch from `import napari_sam2` either
