"""The benchmarks run a training candidate under the defaults it would ship with (`--defaults-of`)."""

import json
from pathlib import Path

import pytest
import torch

from napari_sam2.click_rule import CLICK_RULES

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench_hard(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_hard

    return bench_hard


@pytest.fixture
def candidate(tmp_path):
    """The shipped nano-fluo saved again with one more key: other bytes, so not a copy of the registry's file."""
    state = torch.load(ROOT / "src" / "napari_sam2" / "weights" / "nano_fluo.pt", weights_only=True)
    state["candidate"] = "a training leg's export"
    path = tmp_path / "leg.pt"
    torch.save(state, path)
    return path


def test_a_candidate_file_runs_under_the_defaults_of_the_model_it_would_ship_as(
    bench_hard, candidate, monkeypatch, tmp_path
):
    """A leg's export is a checkpoint the registry does not know: on its own it runs with the click rule off and
    global contrast (how session 17's first measure of a candidate went wrong). `--defaults-of nano-fluo` passes
    nano-fluo's contrast, z-stream contrast and click rule to every session, and the numbers record them; an explicit
    --contrast / --click-rule still wins."""
    calls = []

    def recorded(model, seeds, n, contrast=None, click_rule=None, z_contrast=None):
        calls.append((contrast, click_rule, z_contrast))
        return {}

    monkeypatch.setattr(bench_hard, "evaluate", recorded)

    def run(*options):
        out = tmp_path / f"numbers{len(calls)}.json"
        assert bench_hard.main(["--model", str(candidate), "--json", str(out), *options]) == 0
        return json.loads(out.read_text()), calls[-1]

    numbers, (contrast, rule, z_contrast) = run()
    assert (contrast, z_contrast, rule) == (None, None, CLICK_RULES["off"])
    assert (numbers["contrast"], numbers["z_contrast"], numbers["defaults_of"]) == ("global", "global", None)

    numbers, (contrast, rule, z_contrast) = run("--defaults-of", "nano-fluo")
    assert (contrast, z_contrast, rule) == ("global", "local", CLICK_RULES["fluorescence"])
    assert (numbers["contrast"], numbers["z_contrast"], numbers["defaults_of"]) == ("global", "local", "nano-fluo")
    assert numbers["click_rule"] == CLICK_RULES["fluorescence"].record()["click_rule"]

    numbers, (contrast, rule, z_contrast) = run(
        "--defaults-of", "nano-fluo", "--contrast", "local", "--click-rule", "off"
    )
    assert (contrast, z_contrast, rule) == ("local", "local", CLICK_RULES["off"])

    with pytest.raises(KeyError):
        run("--defaults-of", "no-such-model")


def test_bench_nano_runs_a_candidate_file_under_the_defaults_of_a_registry_model(
    bench_hard, candidate, monkeypatch, tmp_path
):
    """bench_nano (the issue-7 bars) too: --defaults-of gives its sessions and track() nano-fluo's contrast and click
    rule; without it the file's own (none: the session's unknown-model defaults)."""
    import bench_nano

    calls = []

    def recorded(model, seeds, frames, workdir=None, conditions=None, contrast=None, click_rule=None):
        calls.append((contrast, click_rule))
        return {}

    monkeypatch.setattr(bench_nano, "evaluate", recorded)
    for options, expected in (([], (None, None)), (["--defaults-of", "nano-fluo"], ("global", "fluorescence"))):
        out = tmp_path / "numbers.json"
        argv = ["--model", str(candidate), "--no-speed", "--json", str(out), *options]
        assert bench_nano.main(argv) == 0
        assert calls[-1] == expected
        assert (json.loads(out.read_text())["contrast"], json.loads(out.read_text())["click_rule"]) == expected


def test_bench_4d_and_bench_auto_run_a_candidate_file_under_the_defaults_of_a_registry_model(
    bench_hard, candidate, monkeypatch, tmp_path
):
    """bench_4d (3D+t and z-stacks) and bench_auto (lineage) take --defaults-of too (session 17 noted they lacked
    it): their sessions and track() calls get the registry model's contrast (a z stream: its z-stream contrast) and
    click rule; without it, the file's own (None everywhere: the session's unknown-model defaults)."""
    import sys

    import bench_4d
    import bench_auto

    got = {}

    def leg(model, args):
        got["4d"] = (bench_4d._options(args), bench_4d._options(args, z_stream=True))
        return {}

    monkeypatch.setattr(bench_4d, "zstack", leg)
    monkeypatch.setattr(bench_auto, "run_auto", lambda args: got.update(auto=bench_auto._options(args)) or {})
    for options, plain, z in (
        ([], {"contrast": None, "click_rule": None}, {"contrast": None, "click_rule": None}),
        (["--defaults-of", "nano-fluo"], {"contrast": "global", "click_rule": "fluorescence"},
         {"contrast": "local", "click_rule": "fluorescence"}),
    ):  # fmt: skip
        out = tmp_path / "4d.json"
        assert bench_4d.main(["zstack", "--model", str(candidate), "--json", str(out), *options]) == 0
        assert got["4d"] == (plain, z)
        assert json.loads(out.read_text())["defaults_of"] == (options[1] if options else None)
        monkeypatch.setattr(sys, "argv", ["bench_auto.py", "auto", "--model", str(candidate), *options])
        bench_auto.main()
        assert got["auto"] == plain
