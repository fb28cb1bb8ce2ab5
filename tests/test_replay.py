"""Reproducible sessions: the edit log re-runs an interactive session bit for bit; the prompts alone cannot."""

import numpy as np
import torch

from napari_sam2 import PromptSet, cli, track
from napari_sam2.io.results import open_result
from napari_sam2.prompts import make_prompt
from napari_sam2.replay import merge_result, replay_log
from napari_sam2.session import TrackingSession

CLICK = [[30, 30]]
CORRECTION = [[34, 40]]


def _interactive(model, stack):
    """Click frame 0, propagate, correct frame 4, propagate — as in the widget; → (labels, edit log)."""
    labels = np.zeros(stack.shape, np.uint32)

    def write(results):
        for r in results:
            labels[r.frame] = merge_result(labels[r.frame], r)

    with TrackingSession(model, stack) as session:
        write([session.add_prompt(0, 1, points=CLICK)])
        write(session.propagate("forward"))
        write([session.add_prompt(4, 1, points=CORRECTION, labels=[0])])
        write(session.propagate("forward", start=4))
        return labels, session.edit_log


def test_a_correction_replays_bit_for_bit_from_the_edit_log_not_from_the_prompts(tiny_model, blob_stack):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same thread count for both runs: float sums depend on it
    try:
        stack = blob_stack(n_frames=8, shape=(64, 96))
        labels, log = _interactive(tiny_model, stack)
        assert [e["op"] for e in log] == ["add", "pass", "add", "pass"] and log[1]["frames"] == 8
        assert log[3] == {"op": "pass", "first": 4, "last": 7, "reverse": False, "frames": 4}

        # the bug: the saved prompts alone, applied at once, give other labels from the correction on
        prompts = PromptSet()
        prompts.add(0, 1, points=CLICK)
        prompts.add(4, 1, points=CORRECTION, labels=[0])
        plain = track(stack, prompts, model=tiny_model, device="cpu", direction="forward", tables=False).labels
        differing = [t for t in range(8) if (plain[t] != labels[t]).any()]
        assert differing and min(differing) >= 1

        # the fix: the edit log re-runs the same edits in the same order
        with TrackingSession(tiny_model, stack) as fresh:
            replayed = replay_log(fresh, log)
            assert fresh.edit_log == log
        np.testing.assert_array_equal(replayed, labels)
    finally:
        torch.set_num_threads(threads)


def test_a_stopped_pass_and_edits_replay(tiny_model, blob_stack):
    stack = blob_stack(n_frames=6, shape=(64, 96))
    labels = np.zeros(stack.shape, np.uint32)
    with TrackingSession(tiny_model, stack) as session:
        for r in [session.add_prompt(2, 1, points=CLICK), session.add_prompt(2, 2, box=[55, 60, 76, 90])]:
            labels[r.frame] = merge_result(labels[r.frame], r)
        for r in session.propagate("both"):
            labels[r.frame] = merge_result(labels[r.frame], r)
            if r.frame == 4:
                break  # cancelled after frame 4
        for r in session.set_prompt(3, 2, make_prompt(3, 2, points=[[60, 70]])):
            labels[r.frame] = merge_result(labels[r.frame], r, drop=(2,))
        session.remove_object(1)
        labels[labels == 1] = 0
        log = session.edit_log
    assert log[2]["frames"] == 3 and [e["op"] for e in log] == ["add", "add", "pass", "set", "remove"]
    with TrackingSession(tiny_model, stack) as fresh:
        np.testing.assert_array_equal(replay_log(fresh, log), labels)


def test_track_records_its_log_and_the_cli_replays_it(tmp_path, tiny_checkpoint, blob_stack, capsys):
    stack = blob_stack(n_frames=5, shape=(64, 96))
    np.save(tmp_path / "stack.npy", stack)
    prompts = PromptSet()
    prompts.add(1, 1, points=CLICK)
    out = tmp_path / "t.ome.zarr"
    track(tmp_path / "stack.npy", prompts, model=tiny_checkpoint, out=out, device="cpu", tables=False)
    record = open_result(out).record
    assert [e["op"] for e in record.edit_log] == ["add", "pass", "pass"]
    assert record.settings["threads"] == torch.get_num_threads()
    assert cli.main(["replay", str(out)]) == 0
    assert "identical labels on all 5 frames" in capsys.readouterr().out
    # a store without a log: one clear message, exit 1
    from napari_sam2.io.results import save_result

    save_result(tmp_path / "plain.ome.zarr", np.zeros((2, 8, 8), np.uint32))
    assert cli.main(["replay", str(tmp_path / "plain.ome.zarr")]) == 1
    err = capsys.readouterr().err
    assert "records no edit log" in err and "Traceback" not in err


def test_discovery_edits_replay_bit_for_bit(tmp_path, capsys):
    """A run with discovery records its arrivals and divisions (new objects with their parent, the mother's end,
    the daughters' mask prompts, the pass split around them); `napari-sam2 replay` re-runs that log to the same
    labels at the same thread count, without running discovery again."""
    from napari_sam2 import load_model
    from napari_sam2.discovery import DiscoveryOptions
    from napari_sam2.sample_data import nuclei_timelapse

    movie = nuclei_timelapse(n_frames=6, shape=(128, 128), n_nuclei=3, seed=11)  # nucleus 1 divides on frame 3
    mother = movie.events["division"]["parent"]
    unseeded = next(int(o) for o in np.unique(movie.labels[0])[1:] if o != mother)
    seeds = np.where(movie.labels[0] == unseeded, 0, movie.labels[0])

    def oracle(session, frame):  # the true masks stand in for segment everything (fast, and sure to find events)
        truth = movie.labels[frame]
        return [truth == o for o in np.unique(truth)[1:]]

    np.save(tmp_path / "movie.npy", movie.image)
    out = tmp_path / "movie.ome.zarr"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        options = DiscoveryOptions(detector=oracle, division_gap=0)
        result = track(tmp_path / "movie.npy", seeds, model=load_model("nano-fluo", device="cpu"), out=out,
                       direction="forward", discover=options, tables=False)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    kinds = {e["kind"] for e in result.events}
    # arrivals and divisions, and any repairs (a daughter the tracker drops is probed back: "relink")
    assert {"arrival", "division"} <= kinds <= {"arrival", "division", "relink", "reclaim", "refresh"}, result.events
    log = open_result(out).record.edit_log
    ops = [e["op"] for e in log]
    assert "end" in ops and any(e["op"] == "object" and e["parent"] == mother for e in log)
    assert ops.count("pass") > 1  # the pass was split where discovery edited the session

    assert cli.main(["replay", str(out)]) == 0, capsys.readouterr().err
    assert "identical labels on all 6 frames" in capsys.readouterr().out
