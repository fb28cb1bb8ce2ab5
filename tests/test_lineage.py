"""Lineage everywhere: the session's parents and life spans, and what track() makes of them (regions CSV, Tracks
graph, CTC export, store provenance, the napari reader).

The discovery rules run here with an *oracle detector* (the generator's true masks stand in for segment-everything),
so that these tests prove the plumbing and the rules on known input; the `--auto` tests at the end of this file (and
tests/test_scale_out.py) run the real segment-everything path.
"""

import csv

import numpy as np
import pytest

from napari_sam2 import load_model, track
from napari_sam2.analysis import consistent_parents, parents_from_provenance, region_table, tracks_from_labels
from napari_sam2.discovery import DiscoveryOptions, compare_masks
from napari_sam2.errors import InputError
from napari_sam2.sample_data import nuclei_timelapse
from napari_sam2.session import TrackingSession


# ---------------------------------------------------------------------- the session
def test_session_keeps_parents_and_spans(tiny_model, blob_stack):
    stack = blob_stack(n_frames=6)
    session = TrackingSession(tiny_model, stack)
    session.add_prompt(0, 1, points=[[30, 30]])
    for _ in session.propagate("forward", stop=2):
        pass
    session.end_object(1, 2)  # divides between frames 2 and 3
    for d, (y, x) in zip((2, 3), ((30, 38), (30, 46)), strict=True):
        session.add_object(d, parent=1, start=3)
        session.add_prompt(3, d, points=[[y, x]])
    assert session.parents == {2: 1, 3: 1}
    assert session.span(1) == (None, 2) and session.span(2) == (3, None)
    seen = {r.frame: r.obj_ids for r in session.propagate("forward", start=3)}
    assert all(1 not in ids for ids in seen.values())
    assert seen[5] == [2, 3]  # the daughters are tracked past the frame they were prompted on
    assert 1 in session.result(2).obj_ids and 1 not in session.result(3).obj_ids
    # no backward tracking before a daughter's birth, and no prompts outside a span
    backward = {r.frame: r.obj_ids for r in session.propagate("backward", start=3)}
    assert all(2 not in backward.get(f, []) for f in range(3))
    with pytest.raises(InputError, match="lineage"):
        session.add_prompt(4, 1, points=[[30, 30]])
    with pytest.raises(InputError, match="own parent"):
        session.add_object(2, parent=2)
    session.remove_object(1)
    assert session.parents == {}


def test_an_object_added_mid_pass_is_tracked_on_the_following_frames(tiny_model, blob_stack):
    # discovery prompts a new object between two frames of a running pass: its memory must be encoded at once
    stack = blob_stack(n_frames=6)
    session = TrackingSession(tiny_model, stack)
    session.add_prompt(0, 1, points=[[30, 30]])
    frames = {}
    for result in session.propagate("forward"):
        if result.frame == 2:
            session.add_object(2, start=2)
            session.add_prompt(2, 2, points=[[65, 89]])
        frames[result.frame] = result.obj_ids
    assert frames[3] == [1, 2] and frames[5] == [1, 2]
    assert frames[1] == [1]


# ---------------------------------------------------------------------- tables and rules
def test_region_table_and_graph_carry_the_lineage():
    labels = np.zeros((4, 8, 8), np.uint32)
    labels[:2, 1:4, 1:4] = 1  # mother on frames 0-1
    labels[2:, 1:3, 1:3] = 2  # daughters from frame 2
    labels[2:, 5:7, 5:7] = 3
    rows = region_table(labels, parents={2: 1, 3: 1})
    by = {(r["frame"], r["label"]): r for r in rows}
    assert by[(2, 2)]["parent_label"] == 1 and by[(2, 2)]["parent_track_id"] == 1
    assert by[(0, 1)]["parent_label"] == 0 and by[(0, 1)]["parent_track_id"] == 0
    _, graph = tracks_from_labels(labels, parents={2: 1, 3: 1})
    assert graph == {2: [1], 3: [1]}


def test_consistent_parents_drops_links_the_labels_cannot_carry():
    kept, dropped = consistent_parents({2: 1, 3: 9, 4: 5}, {1: [0, 1], 2: [2], 3: [2], 4: [0], 5: [0]})
    assert kept == {2: 1}
    assert set(dropped) == {3, 4}


def test_compare_masks_rules():
    labels = np.zeros((40, 40), np.uint32)
    labels[5:15, 5:25] = 1  # a mother, 10 x 20
    labels[25:35, 25:35] = 2  # a well-explained object
    left, right = np.zeros_like(labels, bool), np.zeros_like(labels, bool)
    left[5:15, 5:12], right[5:15, 18:25] = True, True  # daughters 6 px apart (division_gap 3)
    same = labels == 2
    newcomer = np.zeros_like(left)
    newcomer[25:35, 2:12] = True
    opts = DiscoveryOptions()
    found = compare_masks(labels, [left, right, same, newcomer], opts)
    kinds = sorted((p.kind, p.mother) for p in found)
    assert kinds == [("arrival", None), ("division", 1)]
    # one mask inside the mother is no division; a young mother does not divide
    assert [p.kind for p in compare_masks(labels, [left, same], opts)] == []
    assert [p.kind for p in compare_masks(labels, [left, right], opts, may_divide=lambda o: False)] == []
    # the mother's mask in two components is a division too
    split = labels.copy()
    split[5:15, 14:16] = 0
    assert [(p.kind, p.sign) for p in compare_masks(split, [], opts)] == [("division", "two components")]
    # a small unexplained blob is not an arrival
    tiny = np.zeros_like(left)
    tiny[30:33, 2:5] = True
    assert compare_masks(labels, [tiny], opts) == []


# ---------------------------------------------------------------------- through track(), with an oracle detector
@pytest.fixture(scope="module")
def nano():
    return load_model("nano-fluo", device="cpu")


def test_a_division_reaches_session_csv_graph_ctc_and_reader(nano, tmp_path):
    from traccuracy.loaders import load_ctc_data

    movie = nuclei_timelapse(n_frames=6, shape=(128, 128), n_nuclei=3, seed=11)
    div = movie.events["division"]
    mother, (d1, d2), t_div = div["parent"], div["children"], div["frame"]

    def oracle(session, frame):
        truth = movie.labels[frame]
        return [truth == o for o in np.unique(truth)[1:]]

    out = tmp_path / "movie.ome.zarr"
    result = track(movie.image, movie.labels[0], model=nano, direction="forward", out=out, ctc=tmp_path / "RES",
                   discover=DiscoveryOptions(detector=oracle, arrivals=False, division_gap=0))  # fmt: skip
    divisions = [e for e in result.events if e["kind"] == "division"]
    assert [(e["frame"], e["mother"]) for e in divisions] == [(t_div, mother)]
    daughters = divisions[0]["daughters"]
    assert result.parents == dict.fromkeys(daughters, mother)
    labels = np.asarray(result.labels)
    assert not (labels[t_div:] == mother).any() and (labels[t_div - 1] == mother).any()
    # each daughter is one of the true daughters
    truth = movie.labels[t_div]
    assert sorted(int(np.bincount(truth[labels[t_div] == d]).argmax()) for d in daughters) == sorted((d1, d2))
    # the regions CSV
    with open(result.csv_path) as f:
        rows = list(csv.DictReader(f))
    assert {r["label"]: r["parent_label"] for r in rows if r["label"] in map(str, daughters)} == {
        str(d): str(mother) for d in daughters
    }
    # the Tracks graph, the provenance and the napari reader
    assert {d: result.graph[d] for d in daughters} == {d: [mother] for d in daughters}
    assert parents_from_provenance(result.store.provenance) == result.parents
    from napari_sam2._napari_io import read_result

    tracks = [layer for layer in read_result(str(out)) if layer[2] == "tracks"]
    assert tracks[0][1]["graph"] == result.graph
    # res_track.txt, read by traccuracy's CTC loader
    graph = load_ctc_data(str(tmp_path / "RES"), str(tmp_path / "RES" / "res_track.txt"))
    assert len(graph.get_divisions()) == 1
    lines = {
        int(line.split()[0]): line.split()
        for line in (tmp_path / "RES" / "res_track.txt").read_text().split("\n")
        if line
    }
    assert {lines[d][3] for d in daughters} == {str(mother)}


def test_an_arrival_is_found_on_its_first_discovery_frame(nano):
    movie = nuclei_timelapse(n_frames=6, shape=(128, 128), n_nuclei=6, seed=5)
    newcomer = movie.labels[3] == 6  # pretend nucleus 6 (a wanderer) were unseeded and only "arrives" on frame 3

    def oracle(session, frame):
        return [newcomer] if frame == 3 else []

    seeds = np.where(np.isin(movie.labels[0], [1, 3, 4]), movie.labels[0], 0)
    result = track(
        movie.image, seeds, model=nano, direction="forward", discover=DiscoveryOptions(detector=oracle, divisions=False)
    )
    assert [(e["frame"], e["kind"]) for e in result.events] == [(3, "arrival")]
    new = result.events[0]["object"]
    assert new == 5  # above every id the session held
    labels = np.asarray(result.labels)
    assert not (labels[:3] == new).any()
    assert (labels[3] == new).sum() > 0.8 * newcomer.sum()
    assert (labels[5] == new).any()  # and tracked afterwards


# ---------------------------------------------------------------------- the command line: --auto
def test_cli_auto_finds_the_nuclei_and_opens_in_napari_with_the_lineage_graph(tmp_path, capsys):
    import tifffile

    from napari_sam2 import cli
    from napari_sam2._napari_io import get_reader

    movie = nuclei_timelapse(n_frames=4, shape=(128, 128), n_nuclei=4, seed=21)
    tifffile.imwrite(tmp_path / "movie.tif", movie.image, metadata={"axes": "TYX"})
    out = tmp_path / "movie.ome.zarr"
    argv = ["track", str(tmp_path / "movie.tif"), "--auto", "--points-per-side", "8", "--discover-every", "2"]
    code = cli.main([*argv, "--out", str(out), "--device", "cpu", "--ctc", str(tmp_path / "RES")])
    assert code == 0, capsys.readouterr().err
    layers = get_reader(str(out))(str(out))
    kinds = [layer[2] for layer in layers]
    assert kinds == ["image", "labels", "tracks"]
    labels = np.asarray(layers[1][0])
    # most true nuclei of the first frame were found without any prompt
    truth = movie.labels[0]
    found = [o for o in np.unique(truth)[1:] if (labels[0][truth == o] > 0).mean() > 0.5]
    assert len(found) >= 3
    # the lineage graph napari gets is the one recorded (gaps and divisions)
    from napari_sam2.io.results import open_result

    record = open_result(out).provenance
    assert record["settings"]["auto"] is True and record["settings"]["discover"]["every"] == 2
    assert layers[2][1]["graph"] == tracks_from_labels(labels, parents=parents_from_provenance(record))[1]
    both = ["track", str(tmp_path / "movie.tif"), "--prompts", "x.csv", "--auto", "--out", str(tmp_path / "y")]
    assert cli.main(both) == cli.EXIT_USAGE  # prompts and --auto exclude each other
