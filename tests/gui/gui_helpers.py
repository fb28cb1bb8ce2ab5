"""Helpers of the GUI tests (imported by name: `from gui_helpers import …`; a module named conftest would clash with
tests/parity/conftest.py when the whole tests/ folder is collected at once)."""

WAIT_MS = 60_000  # generous: the CI machine has 2 shared cores; no test relies on timing


def wait_idle(qtbot, widget, timeout=WAIT_MS):
    """Wait until no prompt job, session creation or propagation is pending."""
    qtbot.waitUntil(lambda: widget.idle, timeout=timeout)


def canvas_click(viewer, world_yx, modifiers=()):
    """A real mouse click on the vispy canvas at world (y, x) of the displayed plane (press + release)."""
    canvas = viewer.window._qt_viewer.canvas
    transform = canvas.view.transform * canvas.view.scene.transform
    x, y = transform.map([world_yx[1], world_yx[0]])[:2]
    scene = canvas._scene_canvas
    scene.events.mouse_press(pos=(x, y), modifiers=modifiers, button=1)
    scene.events.mouse_release(pos=(x, y), modifiers=modifiers, button=1)
