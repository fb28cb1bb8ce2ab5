"""The two napari layers that hold prompts — Points (clicks) and Shapes (rectangles = boxes) — and what each row
means for tracking.

Every row carries the features `obj_id` (the object it prompts), `uid` (a stable id for undo and diffing) and, for
points, `positive` (1 = object, 0 = background). The layers are the truth: after each edit `PromptLayers.sync`
compares the rows with its record and reports what changed as `Change`s (new clicks, a new box, or a group of
prompts to be re-sent because rows were deleted or moved), which the widget turns into `TrackingSession` calls.
A group is one object on one frame of one session (`key` = the indices of the axes held fixed, e.g. t while
tracking through z of a TZYX stack).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from ._geometry import StackGeometry


def same_space(layer) -> dict:
    """Layer kwargs that put a new layer in `layer`'s world: scale, translate, units and axis names (napari warns
    about, and stops rendering, units that differ between layers)."""
    return {
        "scale": layer.scale,
        "translate": layer.translate,
        "units": tuple(layer.units),
        "axis_labels": tuple(layer.axis_labels),
    }


POSITIVE_FACE = (0.2, 1.0, 0.2, 1.0)
NEGATIVE_FACE = (1.0, 0.2, 0.8, 1.0)
NEGATIVE_MODIFIER = "Shift"  # Shift + click adds a background (negative) point


@dataclass
class PointRecord:
    key: tuple
    frame: int
    obj_id: int
    yx: tuple[float, float]
    label: int


@dataclass
class BoxRecord:
    key: tuple
    frame: int
    obj_id: int
    box: tuple[float, float, float, float]  # y0, x0, y1, x1


@dataclass
class Change:
    """kind: "points" (new clicks: points [N, 2] (y, x), labels [N]), "box" (a new box (y0, x0, y1, x1)) or
    "resync" (rows of the group were removed or moved: re-send the group's remaining prompts)."""

    kind: str
    key: tuple
    frame: int
    obj_id: int
    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: tuple | None = None


class PromptLayers:
    """Creates and watches the prompt layers of one image layer; `on_change(list[Change])` gets every edit."""

    def __init__(self, viewer, image_layer, geometry: StackGeometry, on_change, color_of):
        self.viewer = viewer
        self.geometry = geometry
        self.on_change = on_change
        self.color_of = color_of  # obj_id → RGBA in 0…1
        self.points_rec: dict[int, PointRecord] = {}
        self.boxes_rec: dict[int, BoxRecord] = {}
        self.history: list[tuple[str, int]] = []  # ("p" | "b", uid) in the order prompts were given
        self._next_uid = 0
        self._muted = 0
        self.obj_id = 1
        kw = {"ndim": image_layer.ndim, **same_space(image_layer)}
        self.points = viewer.add_points(
            np.empty((0, image_layer.ndim)),
            name=f"SAM2 points ({image_layer.name})",
            features={"obj_id": np.empty(0, int), "positive": np.empty(0, int), "uid": np.empty(0, int)},
            size=max(4.0, min(geometry.frame_shape) / 40),
            border_width=0.25,
            **kw,
        )
        self.boxes = viewer.add_shapes(
            None,
            name=f"SAM2 boxes ({image_layer.name})",
            features={"obj_id": np.empty(0, int), "uid": np.empty(0, int)},
            face_color="transparent",
            edge_width=max(1.0, min(geometry.frame_shape) / 150),
            **kw,
        )
        self.boxes.mode = "add_rectangle"
        self.points.mouse_drag_callbacks.insert(0, self._note_modifier)
        self.points.events.data.connect(self._on_data)
        self.boxes.events.data.connect(self._on_data)
        self.set_object(1)
        self.viewer.layers.selection.active = self.points
        self.points.mode = "add"

    # ------------------------------------------------------------------ state for new rows
    def set_object(self, obj_id: int) -> None:
        """New clicks and boxes belong to `obj_id`."""
        self.obj_id = int(obj_id)
        self.points.feature_defaults = {"obj_id": self.obj_id, "positive": 1, "uid": -1}
        self.boxes.feature_defaults = {"obj_id": self.obj_id, "uid": -1}
        color = self.color_of(self.obj_id)
        self.points.current_border_color = color
        self.boxes.current_edge_color = color

    def _note_modifier(self, layer, event) -> None:
        """Runs before napari's own "add point" handler: Shift + click makes the new point negative."""
        if layer.mode == "add":
            negative = NEGATIVE_MODIFIER in event.modifiers
            layer.feature_defaults = {"obj_id": self.obj_id, "positive": 0 if negative else 1, "uid": -1}

    # ------------------------------------------------------------------ watching edits
    def _on_data(self, event) -> None:
        if self._muted or str(getattr(event, "action", "")) not in ("added", "removed", "changed"):
            return
        changes = self.sync()
        if changes:
            self.on_change(changes)

    def _uid(self) -> int:
        self._next_uid += 1
        return self._next_uid

    def sync(self) -> list[Change]:
        """Compare both layers with the record; update the record; return what changed."""
        changes: list[Change] = []
        resync: set[tuple] = set()
        g = self.geometry
        # ---- points
        data = np.asarray(self.points.data)
        feats = self.points.features
        uids = feats["uid"].to_numpy().astype(int).copy()
        present = set()
        new_groups: dict[tuple, list[int]] = {}
        bad_rows = []
        for row, uid in enumerate(uids):
            coords = data[row]
            key, frame = g.key_of(coords), g.frame_of(coords)
            # napari copies the selected row's features into new rows, so a repeated uid also marks a new row
            if uid < 0 or uid in present or uid not in self.points_rec:
                if not self._inside(key, frame, g.yx_of(coords)):
                    bad_rows.append(row)
                    continue
                uid = self._uid()
                uids[row] = uid
                obj = int(feats["obj_id"].iloc[row])
                label = int(feats["positive"].iloc[row])
                self.points_rec[uid] = PointRecord(key, frame, obj, tuple(g.yx_of(coords)), label)
                self.history.append(("p", uid))
                new_groups.setdefault((key, frame, obj), []).append(uid)
            else:
                rec = self.points_rec.get(uid)
                if rec is not None and (rec.key, rec.frame, tuple(rec.yx)) != (key, frame, tuple(g.yx_of(coords))):
                    resync.add((rec.key, rec.frame, rec.obj_id))
                    if self._inside(key, frame, g.yx_of(coords)):
                        self.points_rec[uid] = PointRecord(key, frame, rec.obj_id, tuple(g.yx_of(coords)), rec.label)
                        resync.add((key, frame, rec.obj_id))
                    else:
                        bad_rows.append(row)
            present.add(int(uid))
        for uid in [u for u in self.points_rec if u not in present]:
            rec = self.points_rec.pop(uid)
            resync.add((rec.key, rec.frame, rec.obj_id))
        with self.muted():
            self.points.features["uid"] = uids
            self._recolor_points()
        for (key, frame, obj), group in new_groups.items():
            if (key, frame, obj) in resync:
                continue
            recs = [self.points_rec[u] for u in group]
            changes.append(
                Change(
                    "points",
                    key,
                    frame,
                    obj,
                    points=np.array([r.yx for r in recs], dtype=float),
                    labels=np.array([r.label for r in recs], dtype=np.int32),
                )
            )
        # ---- boxes
        bfeats = self.boxes.features
        buids = bfeats["uid"].to_numpy().astype(int).copy() if len(bfeats) else np.zeros(0, int)
        present = set()
        replaced_rows = []
        for row, uid in enumerate(buids):
            corners = np.asarray(self.boxes.data[row])
            key, frame = g.key_of(corners[0]), g.frame_of(corners[0])
            ys = corners[:, g.spatial[0]]
            xs = corners[:, g.spatial[1]]
            box = (float(ys.min()), float(xs.min()), float(ys.max()), float(xs.max()))
            if uid < 0 or uid in present or uid not in self.boxes_rec:
                if not self._inside(key, frame, [box[0], box[1]]) and not self._inside(key, frame, [box[2], box[3]]):
                    bad_rows.append(("b", row))
                    continue
                uid = self._uid()
                buids[row] = uid
                obj = int(bfeats["obj_id"].iloc[row])
                # one box per object and frame: the new one replaces an older one
                for old_uid, old in list(self.boxes_rec.items()):
                    if (old.key, old.frame, old.obj_id) == (key, frame, obj):
                        replaced_rows.append(old_uid)
                        del self.boxes_rec[old_uid]
                self.boxes_rec[uid] = BoxRecord(key, frame, obj, box)
                self.history.append(("b", uid))
                changes.append(Change("box", key, frame, obj, box=box))
            else:
                rec = self.boxes_rec.get(uid)
                if rec is not None and (rec.key, rec.frame, rec.box) != (key, frame, box):
                    resync.add((rec.key, rec.frame, rec.obj_id))
                    self.boxes_rec[uid] = BoxRecord(key, frame, rec.obj_id, box)
                    resync.add((key, frame, rec.obj_id))
            present.add(int(uid))
        for uid in [u for u in self.boxes_rec if u not in present]:
            rec = self.boxes_rec.pop(uid)
            resync.add((rec.key, rec.frame, rec.obj_id))
        with self.muted():
            if len(buids):
                self.boxes.features["uid"] = buids
            drop = [r for kind, r in [b for b in bad_rows if isinstance(b, tuple)]]
            drop += [row for row, u in enumerate(buids) if int(u) in replaced_rows]
            if drop:
                self.boxes.selected_data = set(drop)
                self.boxes.remove_selected()
            point_drop = [r for r in bad_rows if not isinstance(r, tuple)]
            if point_drop:
                self.points.selected_data = set(point_drop)
                self.points.remove_selected()
        changes += [Change("resync", *group) for group in sorted(resync)]
        if bad_rows:
            from napari.utils.notifications import show_warning

            show_warning("A prompt outside the image was ignored: click on the image of the current frame.")
        return changes

    def _inside(self, key, frame, yx) -> bool:
        g = self.geometry
        h, w = g.frame_shape
        return (
            g.key_in_range(key) and 0 <= frame < g.num_frames and -0.5 <= yx[0] <= h - 0.5 and -0.5 <= yx[1] <= w - 0.5
        )

    @contextlib.contextmanager
    def muted(self):
        """Context manager: edits made inside are not reported."""
        self._muted += 1
        try:
            yield
        finally:
            self._muted -= 1

    def _recolor_points(self) -> None:
        n = len(self.points.data)
        if not n:
            return
        feats = self.points.features
        positive = feats["positive"].to_numpy().astype(bool)
        face = np.where(positive[:, None], POSITIVE_FACE, NEGATIVE_FACE)
        border = np.array([self.color_of(int(o)) for o in feats["obj_id"].to_numpy()], dtype=float).reshape(n, 4)
        self.points.face_color = face
        self.points.border_color = border

    def recolor(self) -> None:
        with self.muted():
            self._recolor_points()
            if len(self.boxes.data):
                ids = self.boxes.features["obj_id"].to_numpy()
                self.boxes.edge_color = np.array([self.color_of(int(o)) for o in ids], dtype=float)

    # ------------------------------------------------------------------ queries
    def group(self, key, frame, obj_id):
        """Remaining prompts of one group: (points [N, 2] (y, x), labels [N], box or None) in the order given."""
        recs = [r for r in self.points_rec.values() if (r.key, r.frame, r.obj_id) == (key, frame, obj_id)]
        boxes = [b.box for b in self.boxes_rec.values() if (b.key, b.frame, b.obj_id) == (key, frame, obj_id)]
        points = np.array([r.yx for r in recs], dtype=float).reshape(-1, 2)
        labels = np.array([r.label for r in recs], dtype=np.int32)
        return points, labels, (boxes[-1] if boxes else None)

    def prompt(self, key, frame, obj_id):
        """The group's remaining prompts as one `ObjectPrompt` (the package's prompt type), None when none is left."""
        from ..prompts import make_prompt

        points, labels, box = self.group(key, frame, obj_id)
        if not len(points) and box is None:
            return None
        return make_prompt(
            frame,
            obj_id,
            points=points if len(points) else None,
            labels=labels if len(points) else None,
            box=box,
            where=f"object {obj_id} on frame {frame}",
        )

    def groups(self, key=None, obj_id=None) -> list[tuple]:
        """(key, frame, obj_id) of every group, in the order their first prompt was given."""
        seen = {}
        for kind, uid in self.history:
            rec = (self.points_rec if kind == "p" else self.boxes_rec).get(uid)
            if rec is None:
                continue
            group = (rec.key, rec.frame, rec.obj_id)
            if (key is None or rec.key == key) and (obj_id is None or rec.obj_id == obj_id):
                seen.setdefault(group, None)
        return list(seen)

    def frames_of(self, obj_id) -> dict[tuple, list[int]]:
        out: dict[tuple, set] = {}
        for key, frame, obj in self.groups(obj_id=obj_id):
            out.setdefault(key, set()).add(frame)
        return {k: sorted(v) for k, v in out.items()}

    def obj_ids(self) -> list[int]:
        return sorted({r.obj_id for r in self.points_rec.values()} | {b.obj_id for b in self.boxes_rec.values()})

    # ------------------------------------------------------------------ edits made by the widget
    def undo(self) -> Change | None:
        """Remove the most recent prompt still present; returns the resync of its group (None: nothing left)."""
        while self.history:
            kind, uid = self.history.pop()
            records, layer = (self.points_rec, self.points) if kind == "p" else (self.boxes_rec, self.boxes)
            rec = records.pop(uid, None)
            if rec is None:
                continue
            rows = np.flatnonzero(layer.features["uid"].to_numpy().astype(int) == uid)
            with self.muted():
                if len(rows):
                    layer.selected_data = set(rows.tolist())
                    layer.remove_selected()
            return Change("resync", rec.key, rec.frame, rec.obj_id)
        return None

    def remove_object(self, obj_id: int) -> None:
        for records, layer in ((self.points_rec, self.points), (self.boxes_rec, self.boxes)):
            for uid in [u for u, r in records.items() if r.obj_id == obj_id]:
                del records[uid]
            if len(layer.data):
                rows = np.flatnonzero(layer.features["obj_id"].to_numpy().astype(int) == obj_id)
                if len(rows):
                    with self.muted():
                        layer.selected_data = set(rows.tolist())
                        layer.remove_selected()

    def add_prompts(self, prompts, key: tuple = ()) -> None:
        """Put a `PromptSet`'s prompts (e.g. from a saved result) into the layers without reporting them."""
        g = self.geometry

        def coords(frame, y, x):
            c = np.zeros(g.ndim)
            for a, k in zip(g.fixed_axes, key, strict=True):
                c[a] = k
            if g.stream_axis is not None:
                c[g.stream_axis] = frame
            c[g.spatial[0]], c[g.spatial[1]] = y, x
            return c

        pts, pfeat, boxes, bfeat = [], [], [], []
        for p in prompts:
            for (y, x), label in zip(np.asarray(p.points).reshape(-1, 2), np.asarray(p.labels).ravel(), strict=True):
                uid = self._uid()
                pts.append(coords(p.frame, y, x))
                pfeat.append((p.obj_id, int(label), uid))
                self.points_rec[uid] = PointRecord(key, int(p.frame), int(p.obj_id), (float(y), float(x)), int(label))
                self.history.append(("p", uid))
            if p.box is not None:
                y0, x0, y1, x1 = (float(v) for v in p.box)
                uid = self._uid()
                boxes.append(
                    np.array(
                        [
                            coords(p.frame, y0, x0),
                            coords(p.frame, y0, x1),
                            coords(p.frame, y1, x1),
                            coords(p.frame, y1, x0),
                        ]
                    )
                )
                bfeat.append((p.obj_id, uid))
                self.boxes_rec[uid] = BoxRecord(key, int(p.frame), int(p.obj_id), (y0, x0, y1, x1))
                self.history.append(("b", uid))
        with self.muted():
            if pts:
                n0 = len(self.points.data)
                self.points.add(np.array(pts))
                feats = self.points.features
                rows = np.arange(n0, n0 + len(pts))
                for col, values in zip(("obj_id", "positive", "uid"), zip(*pfeat, strict=True), strict=True):
                    column = feats[col].to_numpy().astype(int).copy()
                    column[rows] = values
                    self.points.features[col] = column
                self._recolor_points()
            if boxes:
                n0 = len(self.boxes.data)
                self.boxes.add_rectangles(boxes)
                rows = np.arange(n0, n0 + len(boxes))
                for col, values in zip(("obj_id", "uid"), zip(*bfeat, strict=True), strict=True):
                    column = self.boxes.features[col].to_numpy().astype(int).copy()
                    column[rows] = values
                    self.boxes.features[col] = column
        self.recolor()

    def detach(self) -> None:
        """Stop watching the layers (they stay in the viewer, e.g. holding work on a previous image)."""
        for layer in (self.points, self.boxes):
            with contextlib.suppress(Exception):
                layer.events.data.disconnect(self._on_data)

    def remove_layers(self) -> None:
        for layer in (self.points, self.boxes):
            if layer in self.viewer.layers:
                with self.muted():
                    self.viewer.layers.remove(layer)
