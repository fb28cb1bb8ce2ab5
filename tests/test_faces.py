"""The faces (widget, track()/CLI, replay, napari reader/writer) use only public attributes of the engine and of
each other: no `x._private` on anything but `self`, and none of the session's internal state by name."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "napari_sam2"
FACES = [
    *sorted((SRC / "widget").glob("*.py")),
    SRC / "api.py",
    SRC / "cli.py",
    SRC / "replay.py",
    SRC / "_napari_io.py",
]
# TrackingSession / ObjectTrack internals a face must not read (public methods exist for what the faces need)
ENGINE_STATE = {"visited", "cond", "tracked", "stale", "holding_memory", "holding_pointer", "objects"}


def _violations(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Attribute):
            continue
        base, name = node.value, node.attr
        own = isinstance(base, ast.Name) and base.id in ("self", "cls")
        if name.startswith("_") and not name.startswith("__") and not own:
            found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
        # the widget keeps its own list `self.objects`; anything else's `.objects` is the engine's
        if name in ENGINE_STATE and not (own and name == "objects"):
            found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_faces_touch_no_private_or_engine_state():
    assert all(p.is_file() for p in FACES)
    found = [v for path in FACES for v in _violations(path)]
    assert not found, "\n".join(found)


def test_the_check_catches_what_it_is_for(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f(session, worker):\n    session.objects[1].visited\n    worker._relay_error\n")
    assert len(_violations(bad)) == 3
