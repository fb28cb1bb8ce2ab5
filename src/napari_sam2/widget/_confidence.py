"""The confidence strip: one row per object, one cell per frame, coloured by how sure SAM 2 is there.

A cell's height is the predicted IoU (0…1) and its colour the object's colour; frames where the object-score
head says "absent" (score logit ≤ 0) are dark grey; frames without a result are empty; prompted frames get a white
tick. A click emits `frameClicked(frame)`; hovering tells the numbers.
"""

from __future__ import annotations

import math

from qtpy.QtCore import QRectF, Qt, Signal
from qtpy.QtGui import QColor, QPainter
from qtpy.QtWidgets import QSizePolicy, QToolTip, QWidget

ROW_HEIGHT = 14
WEAK_IOU = 0.5


def confidence(score: float, iou: float) -> float:
    """One number per object and frame (0…1): predicted IoU times the probability the object is present."""
    return float(iou) / (1.0 + math.exp(-float(score)))


class ConfidenceStrip(QWidget):
    frameClicked = Signal(int)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.num_frames = 0
        self.current = 0
        self.values: dict[int, dict[int, tuple[float, float]]] = {}  # obj_id → frame → (score, iou)
        self.prompted: dict[int, set[int]] = {}
        self.colors: dict[int, tuple] = {}
        self.setMouseTracking(True)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip(
            "Confidence per object and frame: bar height = predicted IoU, grey = object absent, "
            "white tick = prompted frame. Click to go to a frame."
        )
        self._resize()

    # ------------------------------------------------------------------ data
    def reset(self, num_frames: int) -> None:
        self.num_frames = int(num_frames)
        self.values.clear()
        self.prompted.clear()
        self._resize()
        self.update()

    def set_objects(self, colors: dict[int, tuple], prompted: dict[int, set[int]]) -> None:
        self.colors = dict(colors)
        self.prompted = {k: set(v) for k, v in prompted.items()}
        for obj in list(self.values):
            if obj not in self.colors:
                del self.values[obj]
        self._resize()
        self.update()

    def set_current(self, frame: int) -> None:
        self.current = int(frame)
        self.update()

    def weakest_frames(self) -> list[int]:
        """Unprompted frames with a result, weakest first (the least confident object of each frame decides)."""
        worst: dict[int, float] = {}
        for obj, frames in self.values.items():
            for frame, (score, iou) in frames.items():
                if frame in self.prompted.get(obj, ()):
                    continue
                c = confidence(score, iou)
                worst[frame] = min(c, worst.get(frame, 1.0))
        return sorted(worst, key=lambda f: (worst[f], f))

    # ------------------------------------------------------------------ drawing
    def _rows(self) -> list[int]:
        return sorted(self.colors)

    def _resize(self) -> None:
        self.setMinimumHeight(ROW_HEIGHT * max(1, len(self.colors)) + 4)
        self.setMaximumHeight(ROW_HEIGHT * max(1, len(self.colors)) + 4)

    def _cell_width(self) -> float:
        return self.width() / max(1, self.num_frames)

    def frame_at(self, x: float) -> int:
        return max(0, min(self.num_frames - 1, int(x / self._cell_width())))

    def paintEvent(self, event):
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(38, 41, 48))
        cw = self._cell_width()
        for r, obj in enumerate(self._rows()):
            y0 = 2 + r * ROW_HEIGHT
            rgba = self.colors[obj]
            color = QColor.fromRgbF(float(rgba[0]), float(rgba[1]), float(rgba[2]), 1.0)
            for frame, (score, iou) in self.values.get(obj, {}).items():
                x = frame * cw
                if score <= 0:
                    p.fillRect(QRectF(x, y0, max(cw - 0.5, 1), ROW_HEIGHT - 2), QColor(90, 90, 90))
                    continue
                h = max(1.0, (ROW_HEIGHT - 2) * min(max(iou, 0.0), 1.0))
                p.fillRect(QRectF(x, y0 + ROW_HEIGHT - 2 - h, max(cw - 0.5, 1), h), color)
                if iou < WEAK_IOU:
                    p.fillRect(QRectF(x, y0, max(cw - 0.5, 1), 2), QColor(255, 60, 60))
            p.setPen(QColor(255, 255, 255))
            for frame in self.prompted.get(obj, ()):
                x = (frame + 0.5) * cw
                p.drawLine(int(x), y0, int(x), y0 + 4)
        if self.num_frames:
            p.setPen(QColor(255, 220, 0))
            x = int((self.current + 0.5) * cw)
            p.drawLine(x, 0, x, self.height())
        p.end()

    # ------------------------------------------------------------------ mouse
    def mousePressEvent(self, event):
        if self.num_frames and event.button() == Qt.MouseButton.LeftButton:
            self.frameClicked.emit(self.frame_at(event.position().x()))

    def mouseMoveEvent(self, event):
        if not self.num_frames:
            return
        frame = self.frame_at(event.position().x())
        rows = self._rows()
        r = int((event.position().y() - 2) // ROW_HEIGHT)
        text = f"frame {frame}"
        if 0 <= r < len(rows):
            obj = rows[r]
            value = self.values.get(obj, {}).get(frame)
            if value is None:
                text += f" · object {obj}: no result"
            else:
                state = "present" if value[0] > 0 else "absent"
                text += f" · object {obj}: IoU {value[1]:.2f}, score {value[0]:+.1f} ({state})"
        QToolTip.showText(event.globalPosition().toPoint(), text, self)
