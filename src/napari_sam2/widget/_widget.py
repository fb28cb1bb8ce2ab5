"""The napari dock widget: click on a slice, let SAM 2 carry the objects through the stack, save the labels.

The widget holds no model logic. It maps viewer state (the chosen image layer, the prompt layers, the dims slider)
to `TrackingSession` calls and writes the sessions' `FrameResult`s back into one Labels layer. Everything that can
take long (loading a model, opening a session, encoding frames, prompting an unencoded frame, propagating, saving)
runs on napari thread workers; prompt jobs run one after another in the order they were made.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..errors import InputError
from ..replay import merge_result
from . import _worker
from ._confidence import ConfidenceStrip
from ._geometry import StackGeometry, label_layer_data, make_label_array
from ._prompts_layers import PromptLayers, same_space

if TYPE_CHECKING:
    import napari

CHOOSE_FILE = "choose a .pt file…"
DEVICES = ("auto", "cpu", "cuda", "mps")
MAX_PREFETCH = 64  # frames encoded ahead when a layer is chosen (the feature cache holds about this many at 1024²)

#: (key, what it does) — bound on the viewer while the widget lives; listed in the widget's tooltip and README
SHORTCUTS = (
    ("click", "positive point (Points layer in add mode)"),
    ("Shift+click", "negative (background) point"),
    ("drag", "box (Shapes layer, rectangle mode)"),
    ("N", "new object"),
    ("U", "undo the last prompt"),
    ("Shift+F", "propagate forward"),
    ("Shift+B", "propagate backward"),
    ("Shift+A", "propagate both ways"),
    ("Shift+X", "cancel propagation (after the current frame)"),
    ("W", "jump to the next weakest frame"),
)


def _notify(kind: str, message: str) -> None:
    from napari.utils import notifications

    {"info": notifications.show_info, "warning": notifications.show_warning, "error": notifications.show_error}[kind](
        message
    )


def _error_text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, (InputError, ValueError, OSError, RuntimeError)) else f"{type(exc).__name__}: {text}"


class SAM2Widget(QWidget):
    """Dock widget: image/model pickers, objects, prompts, propagation, confidence strip, save/open."""

    #: emitted on the GUI thread after each prompt job's labels are written (the list of FrameResults)
    prompted = Signal(object)
    #: emitted when a session for the current frames is ready (features being encoded)
    sessionReady = Signal()
    #: emitted when a propagation run ended (finished or cancelled); argument: frames written
    propagationDone = Signal(int)
    #: emitted when a result was saved (path) / opened (path)
    saved = Signal(str)
    opened = Signal(str)

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        viewer = self.viewer = napari_viewer
        self.model = None
        self.model_source: str | None = None
        self._opened_record = None  # the Provenance of the last opened result
        self.image_layer = None
        self.geometry: StackGeometry | None = None
        self.labels_layer = None
        self.label_base = None
        self.prompt_layers: PromptLayers | None = None
        self.sessions: dict[tuple, object] = {}  # key → TrackingSession, or "creating"
        self._session_guard = threading.Lock()
        self.objects: list[int] = []
        self.current_obj: int | None = None
        self._max_id = 0
        self._conf: dict[tuple, dict] = {}
        self._jobs: collections.deque = collections.deque()
        self.job_worker = None
        self.model_worker = None
        self.encode_worker = None
        self.propagation_worker = None
        self.save_worker = None
        self._prop_progress = ((), [1], None)
        self._frames_written = 0
        self._weak_cursor = -1
        self._encoded = (0, 0)
        self._alive = True
        self._workers: set = set()
        self._build_ui()
        self._bind_keys()
        viewer.layers.events.inserted.connect(self._refresh_layer_choices)
        viewer.layers.events.removed.connect(self._on_layer_removed)
        viewer.layers.events.moved.connect(self._refresh_layer_choices)
        viewer.dims.events.current_step.connect(self._on_dims)
        self._refresh_layer_choices()
        self._update_buttons()

    # ================================================================== UI
    def _build_ui(self) -> None:
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        self.setToolTip(
            "SAM 2 tracking. Pick an image layer and a model, click objects on any frame, propagate.\n"
            + "\n".join(f"{k:>12}  {v}" for k, v in SHORTCUTS)
        )

        # ---- image
        box = QGroupBox("Image")
        grid = QGridLayout(box)
        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip("Image layer to track: 2-D, 3-D (z or t), 3-D + channels, or 4-D TZYX.")
        self.axis_combo = QComboBox()
        self.axis_combo.setToolTip("Stream axis: the axis SAM 2 walks through (z of a stack, or t of a time-lapse).")
        self.channel_axis_combo = QComboBox()
        self.channel_axis_combo.setToolTip("Channel axis of a multichannel layer (RGB layers: the colour axis).")
        self.channel_spin = QComboBox()
        self.channel_spin.setToolTip("Which channel SAM 2 sees (RGB: all three, or one).")
        grid.addWidget(QLabel("layer"), 0, 0)
        grid.addWidget(self.layer_combo, 0, 1, 1, 3)
        grid.addWidget(QLabel("stream axis"), 1, 0)
        grid.addWidget(self.axis_combo, 1, 1)
        grid.addWidget(QLabel("channels"), 1, 2)
        grid.addWidget(self.channel_axis_combo, 1, 3)
        grid.addWidget(QLabel("channel"), 2, 2)
        grid.addWidget(self.channel_spin, 2, 3)
        layout.addWidget(box)
        self.layer_combo.currentIndexChanged.connect(self._on_layer_choice)
        self.axis_combo.currentIndexChanged.connect(self._on_axes_choice)
        self.channel_axis_combo.currentIndexChanged.connect(self._on_axes_choice)
        self.channel_spin.currentIndexChanged.connect(self._on_axes_choice)

        # ---- model
        box = QGroupBox("Model")
        grid = QGridLayout(box)
        self.model_combo = QComboBox()
        from ..registry import list_models

        self.model_combo.addItems([*list_models(), CHOOSE_FILE])
        self.model_combo.setToolTip("A registry model (downloaded once, hash-checked) or your own SAM 2 .pt file.")
        self.model_combo.activated.connect(self._on_model_activated)
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICES)
        self.device_combo.setToolTip("auto: CUDA, then Apple MPS, then CPU.")
        self.load_button = QPushButton("Load")
        self.load_button.clicked.connect(self.load_model)
        grid.addWidget(self.model_combo, 0, 0, 1, 2)
        grid.addWidget(self.device_combo, 0, 2)
        grid.addWidget(self.load_button, 0, 3)
        self.status = QLabel("No model loaded.")
        self.status.setWordWrap(True)
        grid.addWidget(self.status, 1, 0, 1, 4)
        self.encode_bar = QProgressBar()
        self.encode_bar.setFormat("features %v/%m")
        self.encode_bar.setMaximumHeight(14)
        self.encode_bar.setVisible(False)
        grid.addWidget(self.encode_bar, 2, 0, 1, 4)
        layout.addWidget(box)

        # ---- objects
        box = QGroupBox("Objects")
        v = QVBoxLayout(box)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["id", "prompted frames", "status"])
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setMaximumHeight(130)
        self.table.itemSelectionChanged.connect(self._on_table_selection)
        v.addWidget(self.table)
        row = QHBoxLayout()
        self.new_button = QPushButton("New object (N)")
        self.new_button.clicked.connect(self.new_object)
        self.delete_button = QPushButton("Delete")
        self.delete_button.clicked.connect(self.delete_object)
        self.undo_button = QPushButton("Undo prompt (U)")
        self.undo_button.clicked.connect(self.undo)
        for b in (self.new_button, self.delete_button, self.undo_button):
            row.addWidget(b)
        v.addLayout(row)
        layout.addWidget(box)

        # ---- propagation
        box = QGroupBox("Propagate")
        grid = QGridLayout(box)
        self.backward_button = QPushButton("◀ Backward")
        self.both_button = QPushButton("◀ Both ▶")
        self.forward_button = QPushButton("Forward ▶")
        self.backward_button.clicked.connect(lambda: self.propagate("backward"))
        self.both_button.clicked.connect(lambda: self.propagate("both"))
        self.forward_button.clicked.connect(lambda: self.propagate("forward"))
        grid.addWidget(self.backward_button, 0, 0)
        grid.addWidget(self.both_button, 0, 1)
        grid.addWidget(self.forward_button, 0, 2)
        self.range_check = QCheckBox("only frames")
        self.range_check.setToolTip("Propagate within [from, to] instead of over the whole stack.")
        self.range_from = QSpinBox()
        self.range_to = QSpinBox()
        self.range_check.toggled.connect(self._update_buttons)
        grid.addWidget(self.range_check, 1, 0)
        grid.addWidget(self.range_from, 1, 1)
        grid.addWidget(self.range_to, 1, 2)
        self.progress = QProgressBar()
        self.progress.setFormat("%v/%m frames")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop after the current frame; finished frames are kept (Shift+X).")
        self.cancel_button.clicked.connect(self.cancel)
        grid.addWidget(self.progress, 2, 0, 1, 2)
        grid.addWidget(self.cancel_button, 2, 2)
        layout.addWidget(box)

        # ---- confidence
        box = QGroupBox("Confidence")
        v = QVBoxLayout(box)
        self.strip = ConfidenceStrip()
        self.strip.frameClicked.connect(self.go_to_frame)
        v.addWidget(self.strip)
        self.weakest_button = QPushButton("Next weakest frame (W)")
        self.weakest_button.clicked.connect(self.next_weakest)
        v.addWidget(self.weakest_button)
        layout.addWidget(box)

        # ---- save / open
        row = QHBoxLayout()
        self.save_button = QPushButton("Save…")
        self.save_button.setToolTip("Write the labels as an OME-Zarr result with prompts, model and settings.")
        self.save_button.clicked.connect(lambda: self.save())
        self.open_button = QPushButton("Open…")
        self.open_button.setToolTip("Open a saved result: labels and prompts come back so work can continue.")
        self.open_button.clicked.connect(lambda: self.open())
        row.addWidget(self.save_button)
        row.addWidget(self.open_button)
        layout.addLayout(row)
        layout.addStretch(1)

    def _bind_keys(self) -> None:
        actions = {
            "N": self.new_object,
            "U": self.undo,
            "Shift-F": lambda: self.propagate("forward"),
            "Shift-B": lambda: self.propagate("backward"),
            "Shift-A": lambda: self.propagate("both"),
            "Shift-X": self.cancel,
            "W": self.next_weakest,
        }
        self._keys = []
        for key, action in actions.items():

            def handler(viewer, action=action):
                action()

            self.viewer.bind_key(key, handler, overwrite=True)
            self._keys.append(key)

    # ================================================================== workers
    def _start_worker(self, func, *args, **handlers):
        """Start `func(*args)` on a napari thread worker; `handlers` map signal names (returned, yielded, errored,
        aborted, finished) to GUI-thread callbacks, which are dropped once the widget has shut down."""
        # superqt's worker, not napari's: napari's adds a raw traceback notification on error, and every error
        # here gets its own message from the handlers instead
        from superqt.utils import create_worker

        worker = create_worker(func, *args, _start_thread=False, _ignore_errors=True)
        for name, callback in handlers.items():
            getattr(worker, name).connect(lambda *a, cb=callback: cb(*a) if self._alive else None)
        worker.finished.connect(lambda: self._workers.discard(worker))
        self._workers.add(worker)
        worker.start()
        return worker

    # ================================================================== layers
    def _image_layers(self):
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _refresh_layer_choices(self, event=None) -> None:
        names = [layer.name for layer in self._image_layers()]
        current = self.image_layer.name if self.image_layer is not None else None
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        self.layer_combo.addItem("—")
        self.layer_combo.addItems(names)
        if current in names:
            self.layer_combo.setCurrentIndex(names.index(current) + 1)
        self.layer_combo.blockSignals(False)
        if current is None and len(names) == 1 and event is not None:
            self.layer_combo.setCurrentIndex(1)  # the only image: pick it

    def _on_layer_removed(self, event) -> None:
        layer = event.value
        if layer is self.image_layer:
            running = self.propagation_worker is not None
            self.cancel()
            self._stop_encoding()
            self.image_layer = None
            self.geometry = None
            self.sessions.clear()
            msg = f"The image layer {layer.name!r} was removed"
            if running:
                msg += "; propagation stops after the current frame and every finished frame is kept"
            _notify("warning", msg + ". Pick an image layer to continue.")
        elif layer is self.labels_layer:
            _notify("info", "The SAM 2 labels layer was removed; it comes back (with its labels) at the next result.")
            self.labels_layer = None
        self._refresh_layer_choices()
        self._update_buttons()

    def select_layer(self, layer) -> None:
        """Track `layer` (an Image layer of the viewer); same as picking it in the combo box."""
        names = [self.layer_combo.itemText(i) for i in range(self.layer_combo.count())]
        self._refresh_layer_choices()
        names = [self.layer_combo.itemText(i) for i in range(self.layer_combo.count())]
        index = names.index(layer.name)
        if self.layer_combo.currentIndex() == index:
            self._on_layer_choice(index)
        else:
            self.layer_combo.setCurrentIndex(index)

    def _on_layer_choice(self, index: int) -> None:
        name = self.layer_combo.itemText(index) if index > 0 else None
        layer = next((x for x in self._image_layers() if x.name == name), None)
        if layer is self.image_layer and layer is not None:
            return
        self._stop_encoding()
        self.image_layer = layer
        self.geometry = None
        if layer is None:
            self._update_buttons()
            return
        self._fill_axis_choices(layer)
        self._setup_geometry(new_layer=True)

    def _world_offset(self) -> int:
        return self.viewer.dims.ndim - self.image_layer.ndim

    def _fill_axis_choices(self, layer) -> None:
        ndim = layer.ndim
        names = list(self.viewer.dims.axis_labels)[self.viewer.dims.ndim - ndim :]
        # napari's default labels are the negative indices ("-3"); show only names the user gave (t, z, …)
        labels = ["" if str(n).lstrip("-").isdigit() else f"{n}, " for n in names]
        for combo in (self.axis_combo, self.channel_axis_combo):
            combo.blockSignals(True)
            combo.clear()
        if getattr(layer, "rgb", False):
            self.channel_axis_combo.addItem("RGB (last)", None)
        else:
            self.channel_axis_combo.addItem("none", None)
            for a in range(max(0, ndim - 2)):
                if layer.data.shape[a] <= 16:
                    self.channel_axis_combo.addItem(f"axis {a} ({labels[a]}{layer.data.shape[a]})", a)
        if ndim == 2:
            self.axis_combo.addItem("— (one image)", None)
        else:
            offset = self.viewer.dims.ndim - ndim
            hidden = [w - offset for w in self.viewer.dims.not_displayed if w - offset >= 0]
            for a in range(ndim - 2):
                self.axis_combo.addItem(f"axis {a} ({labels[a]}{layer.data.shape[a]} frames)", a)
            first = next((a for a in hidden if a < ndim - 2), 0)
            self.axis_combo.setCurrentIndex(first)
        for combo in (self.axis_combo, self.channel_axis_combo):
            combo.blockSignals(False)
        self._fill_channels()

    def _fill_channels(self) -> None:
        layer = self.image_layer
        self.channel_spin.blockSignals(True)
        self.channel_spin.clear()
        channel_axis = self.channel_axis_combo.currentData()
        if getattr(layer, "rgb", False):
            n = layer.data.shape[-1]
            self.channel_spin.addItem("all (RGB)", None)
        elif channel_axis is not None:
            n = layer.data.shape[channel_axis]
            if n in (3, 4):
                self.channel_spin.addItem("all (RGB)", None)
        else:
            n = 0
        for c in range(n):
            self.channel_spin.addItem(str(c), c)
        self.channel_spin.setEnabled(n > 0)
        self.channel_spin.blockSignals(False)

    def _on_axes_choice(self, index=None) -> None:
        if self.image_layer is None:
            return
        if self.sender() is self.channel_axis_combo:
            self._fill_channels()
        self._setup_geometry(new_layer=False)

    def _setup_geometry(self, new_layer: bool) -> None:
        """(Re)derive the axes from the pickers, make the labels and prompt layers, and restart the sessions."""
        layer = self.image_layer
        try:
            geometry = StackGeometry.from_layer(
                layer,
                stream_axis=self.axis_combo.currentData(),
                channel_axis=self.channel_axis_combo.currentData(),
                channel=self.channel_spin.currentData(),
            )
        except InputError as exc:
            _notify("warning", str(exc))
            self.geometry = None
            self._update_buttons()
            return
        old = self.geometry
        self.geometry = geometry
        if new_layer or self.label_base is None or old is None or old.label_shape != geometry.label_shape:
            self._make_output_layers()
        else:
            self.prompt_layers.geometry = geometry
            self._rederive_prompts()
        n = geometry.num_frames
        for spin in (self.range_from, self.range_to):
            spin.setRange(0, max(0, n - 1))
        self.range_to.setValue(max(0, n - 1))
        self._conf.clear()
        self.strip.reset(n)
        self._reset_sessions()

    def _make_output_layers(self) -> None:
        g = self.geometry
        layer = self.image_layer
        # the previous image's layers: empty ones go, ones holding work stay in the viewer (detached)
        if self.prompt_layers is not None:
            old = self.prompt_layers
            old.detach()
            if not old.points_rec and not old.boxes_rec:
                old.remove_layers()
        old_labels, self.labels_layer = self.labels_layer, None
        if old_labels is not None and old_labels in self.viewer.layers:
            if isinstance(self.label_base, np.ndarray) and not self.label_base.any():
                self.viewer.layers.remove(old_labels)
            else:
                old_labels.name = f"{old_labels.name} (detached)"
        self.label_base = make_label_array(g.label_shape)
        self.labels_layer = self.viewer.add_labels(
            label_layer_data(self.label_base, g),
            name=f"SAM2 labels ({layer.name})",
            opacity=0.5,
            **same_space(layer),
        )
        self.objects, self.current_obj, self._max_id = [], None, 0
        self.prompt_layers = PromptLayers(self.viewer, layer, g, self._on_prompt_changes, self.color_of)
        self.new_object()

    def _rederive_prompts(self) -> None:
        """The stream axis / channel changed: every prompt row means another frame now; read them again."""
        pl = self.prompt_layers
        with pl.muted():
            for layer in (pl.points, pl.boxes):
                if len(layer.data):
                    layer.features["uid"] = -1
        pl.points_rec.clear()
        pl.boxes_rec.clear()
        pl.history.clear()
        pl.sync()

    def _ensure_labels_layer(self) -> None:
        if self.labels_layer is None or self.labels_layer not in self.viewer.layers:
            self.labels_layer = self.viewer.add_labels(
                label_layer_data(self.label_base, self.geometry),
                name=f"SAM2 labels ({self.image_layer.name})",
                opacity=0.5,
                **same_space(self.image_layer),
            )

    def color_of(self, obj_id: int):
        if self.labels_layer is None:
            return (1.0, 1.0, 1.0, 1.0)
        return tuple(float(c) for c in self.labels_layer.get_color(int(obj_id)))

    # ================================================================== viewer position
    def current_position(self):
        """(session key, frame) under the viewer's dims, or None without an image layer."""
        if self.image_layer is None or self.geometry is None:
            return None
        coords = self.image_layer.world_to_data(self.viewer.dims.point)
        key = self.geometry.key_of(coords)
        frame = min(max(self.geometry.frame_of(coords), 0), self.geometry.num_frames - 1)
        return key, frame

    def go_to_frame(self, frame: int) -> None:
        g = self.geometry
        if g is None or g.stream_axis is None:
            return
        world = g.stream_axis + self._world_offset()
        value = self.image_layer.translate[g.stream_axis] + self.image_layer.scale[g.stream_axis] * int(frame)
        self.viewer.dims.set_point(world, value)

    def _on_dims(self, event=None) -> None:
        pos = self.current_position()
        if pos is None:
            return
        key, frame = pos
        self.strip.set_current(frame)
        if self.strip.values is not self._conf.setdefault(key, {}):
            self.strip.values = self._conf[key]
            self.strip.update()
            self._refresh_objects()
            if self.model is not None and key not in self.sessions and self.geometry.key_in_range(key):
                self._create_session(key)
        self._update_buttons()

    # ================================================================== model
    def set_model_source(self, source: str) -> None:
        """Pick a registry name or a .pt path in the model combo (a path is added to the list)."""
        index = self.model_combo.findText(str(source))
        if index < 0:
            self.model_combo.insertItem(self.model_combo.count() - 1, str(source))
            index = self.model_combo.findText(str(source))
        self.model_combo.setCurrentIndex(index)

    def _on_model_activated(self, index: int) -> None:
        if self.model_combo.itemText(index) == CHOOSE_FILE:
            path, _ = QFileDialog.getOpenFileName(self, "SAM 2 checkpoint", "", "PyTorch checkpoint (*.pt *.pth)")
            if path:
                self.set_model_source(path)
            else:
                self.model_combo.setCurrentIndex(0)

    def load_model(self) -> None:
        source = self.model_combo.currentText()
        if source == CHOOSE_FILE:
            _notify("info", "Choose a .pt file first (or pick a model name).")
            return
        device = self.device_combo.currentText()
        self.status.setText(f"Loading {source} on {device}…")
        self.model_worker = self._start_worker(
            _worker.load_model_job,
            source,
            device,
            returned=lambda model: self._on_model_loaded(model, source),
            errored=lambda exc: self._on_model_failed(exc, source, device),
            finished=self._model_worker_done,
        )
        self._update_buttons()

    def _model_worker_done(self) -> None:
        self.model_worker = None
        self._update_buttons()

    def _on_model_failed(self, exc, source, device) -> None:
        self.status.setText(f"Could not load {source}." + (f" Still using {self.model_source}." if self.model else ""))
        hint = ""
        if device in ("cuda", "mps") and isinstance(exc, RuntimeError):
            hint = " Choose device 'auto' or 'cpu'."
        _notify("error", f"Model {source!r} could not be loaded: {_error_text(exc)}{hint}")

    def _on_model_loaded(self, model, source) -> None:
        self.model = model
        self.model_source = source
        self._reset_sessions()
        self._update_status()

    def _update_status(self) -> None:
        parts = []
        if self.model is not None:
            name = getattr(self.model.cfg, "name", "SAM 2")
            parts.append(f"{self.model_source.split('/')[-1]} ({name}) on {self.model.device}")
        else:
            parts.append("no model loaded")
        if self.geometry is not None:
            g = self.geometry
            axis = "one image" if g.stream_axis is None else f"{g.num_frames} frames along axis {g.stream_axis}"
            parts.append(f"{self.image_layer.name}: {axis}")
        done, total = self._encoded
        if total:
            parts.append(f"features {done}/{total}")
        self.status.setText(" · ".join(parts))

    # ================================================================== sessions
    def _reset_sessions(self) -> None:
        self._stop_encoding()
        self._jobs.clear()
        with self._session_guard:
            for s in self.sessions.values():
                if not isinstance(s, str):
                    s.close()
            self.sessions.clear()
        if self.model is not None and self.geometry is not None:
            pos = self.current_position()
            if pos is not None:
                self._create_session(pos[0])
        self._update_status()
        self._update_buttons()

    def session(self, key=None):
        """The ready TrackingSession of `key` (default: the current one), or None."""
        if key is None:
            pos = self.current_position()
            if pos is None:
                return None
            key = pos[0]
        s = self.sessions.get(key)
        return None if s is None or isinstance(s, str) else s

    def _snapshot(self, key):
        """The prompts of session `key` as a `PromptSet`, one `ObjectPrompt` per (object, frame) in the order their
        first prompt was given (groups left empty by deletions are skipped)."""
        from ..prompts import PromptSet

        prompts = PromptSet()
        for k, frame, obj in self.prompt_layers.groups(key=key):
            prompt = self.prompt_layers.prompt(k, frame, obj)
            if prompt is not None:
                prompts.append(prompt)
        return prompts

    def _create_session(self, key) -> None:
        """Queue the creation of session `key`: a fresh session plus every prompt already made for it."""
        self.sessions[key] = "creating"
        model, geometry, groups = self.model, self.geometry, self._snapshot(key)

        def job():
            session = _worker.make_session(model, geometry, key)
            return session, groups.apply(session)

        def done(value):
            session, results = value
            if self.sessions.get(key) != "creating" or self.geometry is not geometry or self.model is not model:
                session.close()  # outdated while it was being made
                return
            self.sessions[key] = session
            for r in results:
                self._write_result(key, r)
            self._after_prompt(results)
            self.sessionReady.emit()
            pos = self.current_position()
            if pos is not None and pos[0] == key:
                self._start_encoding(session, pos[1])
            self._update_buttons()

        def failed(exc):
            if self.sessions.get(key) == "creating":
                del self.sessions[key]
            _notify(
                "error", f"Cannot track layer {self.image_layer.name if self.image_layer else ''}: {_error_text(exc)}"
            )

        self._enqueue(job, done, failed)

    def _start_encoding(self, session, frame: int) -> None:
        self._stop_encoding()
        n = len(session)
        order = sorted(range(n), key=lambda f: (abs(f - frame), f))[:MAX_PREFETCH]
        order = [f for f in order if not session.is_encoded(f)]
        if not order:
            return
        self.encode_bar.setRange(0, len(order))
        self.encode_bar.setValue(0)
        self.encode_bar.setVisible(True)

        def progress(value):
            self.encode_bar.setValue(value[0])
            self._encoded = value
            self._update_status()

        def finished():
            if self.encode_worker is worker_box[0]:
                self.encode_worker = None
                self.encode_bar.setVisible(False)

        def errored(exc):
            _notify("warning", f"Encoding frames in the background stopped: {_error_text(exc)}")

        worker_box = [None]
        worker_box[0] = self.encode_worker = self._start_worker(
            _worker.encode_job, session, order, yielded=progress, finished=finished, errored=errored
        )

    def _stop_encoding(self) -> None:
        if self.encode_worker is not None:
            self.encode_worker.quit()
            self.encode_worker = None
        self.encode_bar.setVisible(False)
        self._encoded = (0, 0)

    # ================================================================== job queue (prompts, in order)
    def _enqueue(self, job, done, failed=None) -> None:
        self._jobs.append((job, done, failed))
        if self.job_worker is None:
            self._next_job()

    def _next_job(self) -> None:
        if not self._jobs:
            self.job_worker = None
            self._update_buttons()
            return
        job, done, failed = self._jobs.popleft()
        self.job_worker = self._start_worker(
            job,
            returned=done,
            errored=failed or (lambda exc: _notify("warning", f"Prompt not applied: {_error_text(exc)}")),
            finished=self._next_job,
        )

    @property
    def idle(self) -> bool:
        """No prompt job, session creation or propagation is pending (tests wait on this)."""
        return self.job_worker is None and not self._jobs and self.propagation_worker is None

    # ================================================================== prompts
    def _on_prompt_changes(self, changes) -> None:
        if self.model is None:
            _notify("info", "Load a model to see masks: the prompts are kept and applied once it is loaded.")
            self._refresh_objects()
            return
        for change in changes:
            if change.obj_id not in self.objects:
                self._add_object_row(change.obj_id)
            if change.key not in self.sessions:
                self._create_session(change.key)  # its snapshot already holds this change
                continue
            self._enqueue_change(change)
        self._refresh_objects()
        self._update_buttons()

    def _enqueue_change(self, change) -> None:
        key, frame, obj = change.key, change.frame, change.obj_id
        if change.kind == "points":
            points, labels = change.points, change.labels

            def job():
                return [self.sessions[key].add_prompt(frame, obj, points=points, labels=labels)]

            drop = ()
        elif change.kind == "box":
            box = change.box

            def job():
                return [self.sessions[key].add_prompt(frame, obj, box=box)]

            drop = ()
        else:  # resync: rows were removed or moved
            prompt = self.prompt_layers.prompt(key, frame, obj)

            def job():
                return self.sessions[key].set_prompt(frame, obj, prompt)

            drop = (obj,)

        def done(results):
            for r in results:
                self._write_result(key, r, drop=drop)
            self._after_prompt(results)

        self._enqueue(job, done)

    def _after_prompt(self, results) -> None:
        self._weak_cursor = -1
        self._refresh_objects()
        self.prompted.emit(results)
        self._update_buttons()

    def undo(self) -> None:
        """Remove the last prompt (point or box) and update that frame's mask."""
        if self.prompt_layers is None:
            return
        change = self.prompt_layers.undo()
        if change is None:
            _notify("info", "Nothing to undo.")
            return
        if self.model is not None and change.key in self.sessions:
            self._enqueue_change(change)
        self._refresh_objects()
        self._update_buttons()

    # ================================================================== labels
    def _write_result(self, key, result, drop=(), geometry=None) -> None:
        """Write one FrameResult into the labels. Pixels of objects the result does not cover (opened results,
        painted labels, evicted outputs) are kept where the new labels are empty, except ids in `drop`.
        `geometry`: the one the result was made under (a propagation outlives a removed image layer)."""
        geometry = geometry or self.geometry
        if self.label_base is None or geometry is None:
            return
        index = geometry.label_index(key, result.frame)
        self.label_base[index] = merge_result(self.label_base[index], result, drop)  # as replay writes them
        self._conf.setdefault(key, {})
        for obj, score, iou in zip(result.obj_ids, result.scores, result.ious, strict=True):
            self._conf[key].setdefault(int(obj), {})[int(result.frame)] = (float(score), float(iou))
        if self.geometry is not None:
            self._ensure_labels_layer()
        if self.labels_layer is not None:
            self.labels_layer.refresh()
        self.strip.update()

    # ================================================================== objects
    def new_object(self) -> None:
        if self.prompt_layers is None:
            return
        obj = max([self._max_id, *self.objects, *self.prompt_layers.obj_ids()], default=0) + 1
        self._add_object_row(obj)
        self.select_object(obj)

    def _add_object_row(self, obj: int) -> None:
        if obj not in self.objects:
            self.objects.append(int(obj))
            self.objects.sort()
        self._max_id = max(self._max_id, int(obj))
        self._refresh_objects()

    def select_object(self, obj: int) -> None:
        self.current_obj = int(obj)
        if self.prompt_layers is not None:
            self.prompt_layers.set_object(obj)
        if self.labels_layer is not None:
            self.labels_layer.selected_label = int(obj)
        self._refresh_objects()

    def _on_table_selection(self) -> None:
        rows = self.table.selectionModel().selectedRows()
        if rows:
            obj = self.objects[rows[0].row()]
            if obj != self.current_obj:
                self.select_object(obj)
        self._update_buttons()

    def _refresh_objects(self) -> None:
        if self.prompt_layers is None:
            return
        pos = self.current_position()
        key = pos[0] if pos else ()
        conf = self._conf.get(key, {})
        n = self.geometry.num_frames if self.geometry else 0
        self.table.blockSignals(True)
        self.table.setRowCount(len(self.objects))
        prompted = {}
        for row, obj in enumerate(self.objects):
            frames = self.prompt_layers.frames_of(obj).get(key, [])
            prompted[obj] = set(frames)
            values = conf.get(obj, {})
            absent = sum(1 for s, _ in values.values() if s <= 0)
            if not frames and not values:
                status = "no prompt yet"
            elif len(values) <= len(frames):
                status = "prompted"
            else:
                status = f"tracked {len(values)}/{n}" + (f", absent on {absent}" if absent else "")
            item = QTableWidgetItem(str(obj))
            pix = QPixmap(12, 12)
            r, g, b, _ = self.color_of(obj)
            pix.fill(QColor.fromRgbF(r, g, b))
            item.setIcon(QIcon(pix))
            self.table.setItem(row, 0, item)
            text = ", ".join(map(str, frames[:8])) + (" …" if len(frames) > 8 else "")
            self.table.setItem(row, 1, QTableWidgetItem(text or "—"))
            self.table.setItem(row, 2, QTableWidgetItem(status))
        if self.current_obj in self.objects:
            self.table.selectRow(self.objects.index(self.current_obj))
        self.table.blockSignals(False)
        self.strip.set_objects({o: self.color_of(o) for o in self.objects}, prompted)
        if self.strip.values is not conf and key in self._conf:
            self.strip.values = self._conf[key]

    def delete_object(self, obj: int | None = None) -> None:
        """Delete an object (default: the selected one): its prompts, its tracking and its labels."""
        obj = self.current_obj if obj is None else int(obj)
        if obj is None or obj not in self.objects:
            return
        if self.propagation_worker is not None:
            _notify("info", "Wait for the propagation to end (or cancel it) before deleting an object.")
            return
        for key, s in list(self.sessions.items()):
            if not isinstance(s, str) and obj in s.obj_ids:

                def job(s=s):
                    s.remove_object(obj)

                self._enqueue(job, lambda _: None)
        self.prompt_layers.remove_object(obj)
        if isinstance(self.label_base, np.ndarray):
            self.label_base[self.label_base == obj] = 0
        elif self.label_base is not None:
            for t in range(self.label_base.shape[0]):
                plane = np.asarray(self.label_base[t])
                if (plane == obj).any():
                    plane[plane == obj] = 0
                    self.label_base[t] = plane
        for conf in self._conf.values():
            conf.pop(obj, None)
        self.objects.remove(obj)
        if self.labels_layer is not None:
            self.labels_layer.refresh()
        if self.objects:
            self.select_object(self.objects[-1])
        else:
            self.new_object()
        self._refresh_objects()
        self._update_buttons()

    # ================================================================== propagation
    def _range(self) -> tuple[int, int]:
        n = self.geometry.num_frames
        if self.range_check.isChecked():
            lo, hi = sorted((self.range_from.value(), self.range_to.value()))
            return lo, hi
        return 0, n - 1

    def propagate(self, direction: str = "both") -> None:
        """Propagate every object of the current session: "forward", "backward" or "both", over all frames or the
        chosen range, on a worker; the labels update frame by frame."""

        if self.propagation_worker is not None:
            return
        pos = self.current_position()
        if pos is None:
            _notify("info", "Pick an image layer first.")
            return
        key = pos[0]
        session = self.session(key)
        if session is None:
            _notify("info", "Load a model and add a prompt first (the session is not ready yet).")
            return
        frames = sorted({f for _, f, _ in self.prompt_layers.groups(key=key)})
        if not frames:
            _notify("warning", "Nothing to propagate: click on an object (or draw a box) on some frame first.")
            return
        if self.geometry.num_frames < 2:
            _notify("info", "A single image has nothing to propagate to.")
            return
        lo, hi = self._range()
        inside = [f for f in frames if lo <= f <= hi]
        passes = []
        if direction in ("forward", "both"):
            start = min(inside, default=lo)
            passes.append(("forward", start, hi))
        if direction in ("backward", "both"):
            start = max(inside, default=hi)
            if start > lo or direction == "backward":
                passes.append(("backward", start, lo))
        lengths = [abs(stop - start) + 1 for _, start, stop in passes]
        self._prop_progress = (key, lengths, self.geometry)
        self._frames_written = 0
        self.progress.setRange(0, sum(lengths))
        self.progress.setValue(0)
        self.propagation_worker = self._start_worker(
            _worker.propagate_job,
            session,
            passes,
            yielded=self._on_propagated,
            errored=lambda exc: _notify("warning", f"Propagation stopped: {_error_text(exc)}"),
            aborted=lambda: _notify("info", f"Propagation cancelled; {self._frames_written} finished frames kept."),
            finished=self._on_propagation_finished,
        )
        self._update_buttons()

    def _on_propagated(self, value) -> None:
        pass_index, done, result = value
        key, lengths, geometry = self._prop_progress
        self.progress.setValue(sum(lengths[:pass_index]) + min(done, lengths[pass_index]))
        self._write_result(key, result, geometry=geometry)
        self._frames_written += 1

    def _on_propagation_finished(self) -> None:
        self.propagation_worker = None
        self._weak_cursor = -1
        self._refresh_objects()
        self._update_buttons()
        self.propagationDone.emit(self._frames_written)

    def cancel(self) -> None:
        """Stop the propagation after the frame being computed; every finished frame stays."""
        if self.propagation_worker is not None:
            self.propagation_worker.quit()

    # ================================================================== confidence
    def next_weakest(self) -> None:
        """Jump to the next weakest unprompted frame (least confident object first; repeated presses walk on)."""
        frames = self.strip.weakest_frames()
        if not frames:
            _notify("info", "No tracked frames yet: propagate first.")
            return
        self._weak_cursor = (self._weak_cursor + 1) % len(frames)
        self.go_to_frame(frames[self._weak_cursor])

    # ================================================================== save / open
    def prompt_set(self, key=None):
        """The prompts of session `key` (default: current) as a `PromptSet`, in the order they were given."""
        if key is None:
            pos = self.current_position()
            key = pos[0] if pos else ()
        return self._snapshot(key)

    def provenance(self):
        """The `Provenance` of what the widget holds now (the checkpoint's hash is added by the save job)."""
        import napari
        import torch

        from ..io.provenance import ModelRecord, Provenance

        g = self.geometry
        pos = self.current_position()
        session = self.sessions.get(pos[0]) if pos else None
        edit_log = None
        if session is not None and not isinstance(session, str) and self._opened_record is None:
            edit_log = session.edit_log  # a session continued from an opened result does not start from nothing
        if self.model is not None:
            checkpoint = getattr(self.model, "checkpoint_path", None)
            model = ModelRecord(
                source=self.model_source,
                config=getattr(self.model.cfg, "name", None),
                checkpoint=None if checkpoint is None else str(checkpoint),
            )
        elif self._opened_record is not None:  # opened, not re-tracked: the opened result's model made it
            model = self._opened_record.model
        else:
            model = ModelRecord(source=self.model_source)
        source_path = self.image_layer.source.path
        return Provenance(
            model=model,
            settings={
                "device": str(getattr(self.model, "device", "")) or None,
                "preset": next((s.preset for s in self.sessions.values() if not isinstance(s, str)), "default"),
                "stream_axis": g.stream_axis,
                "channel_axis": g.channel_axis,
                "channel": g.channel,
                "session_key": list(pos[0]) if pos else [],
                "threads": torch.get_num_threads(),
            },
            parents=dict(self._opened_record.parents) if self._opened_record is not None else {},
            input={
                "layer": self.image_layer.name,
                "path": str(source_path) if source_path else None,
                "shape": [int(n) for n in self.image_layer.data.shape],
            },
            tool="widget",
            edit_log=edit_log,
            extra={"napari_version": napari.__version__},
        )

    def save(self, path: str | None = None) -> None:
        """Save the labels as an OME-Zarr result with the prompts, model and settings (a worker writes it)."""

        if self.label_base is None or self.geometry is None:
            _notify("info", "Nothing to save yet: pick an image layer and track something.")
            return
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Save result", "result.ome.zarr", "OME-Zarr (*.zarr)")
            if not path:
                return
        labels = self.label_base if self.label_base.ndim > 2 else self.label_base[None]
        try:
            axes = self.geometry.axes_string(list(self.viewer.dims.axis_labels)[self._world_offset() :])
        except InputError as exc:
            _notify("warning", str(exc))
            return
        scale = [float(self.image_layer.scale[a]) for a in self.geometry.label_axes]
        units = [str(self.image_layer.units[a]) for a in self.geometry.label_axes]
        if labels.ndim != len(scale):
            scale, units = [1.0, *scale], ["pixel", *units]
        self.save_worker = self._start_worker(
            _worker.save_job,
            path,
            labels,
            axes,
            self.prompt_set(),
            self.provenance(),
            scale,
            units,
            returned=lambda p: (_notify("info", f"Saved {p}"), self.saved.emit(p)),
            errored=lambda exc: _notify("error", f"Could not save {path}: {_error_text(exc)}"),
            finished=self._save_done,
        )
        self._update_buttons()

    def _save_done(self) -> None:
        self.save_worker = None
        self._update_buttons()

    def open(self, path: str | None = None) -> None:
        """Open a saved result: its labels replace the current ones and its prompts return to the prompt layers
        (and to a fresh session once a model is loaded), so work continues where it stopped."""
        from ..io.results import open_result

        if self.propagation_worker is not None:
            _notify("info", "Cancel the propagation before opening a result.")
            return
        if path is None:
            path = QFileDialog.getExistingDirectory(self, "Open a napari-sam2 result (.zarr folder)")
            if not path:
                return
        try:
            result = open_result(path)
        except Exception as exc:  # noqa: BLE001 (any failure becomes one message)
            _notify("error", f"Could not open {path}: {_error_text(exc)}")
            return
        if self.image_layer is None:
            if result.image is None:
                _notify("warning", "Open the image of this result in napari first, pick it here, then open again.")
                return
            layer = self.viewer.add_image(result.image, name=f"{result.path.name} image")
            self.select_layer(layer)
        g = self.geometry
        if g is None:
            return
        shape = tuple(result.labels.shape)
        expected = g.label_shape if len(g.label_shape) > 2 else (1, *g.label_shape)
        if shape != expected:
            _notify(
                "warning",
                f"The result's labels have shape {shape}, the picked image's frames {expected}: "
                "pick the image the result was made from.",
            )
            return
        # start over: objects, prompts and sessions of the opened result
        for obj in list(self.prompt_layers.obj_ids()):
            self.prompt_layers.remove_object(obj)
        self.prompt_layers.history.clear()
        target = self.label_base if self.label_base.ndim > 2 else self.label_base[None]
        ids = set()
        for t in range(shape[0]):
            plane = np.asarray(result.labels[t]).astype(np.uint32)
            target[t] = plane
            ids.update(int(i) for i in np.unique(plane) if i)
        record = result.record
        key = tuple(record.settings.get("session_key") or ()) or (0,) * len(g.fixed_axes)
        if len(key) != len(g.fixed_axes):
            key = (0,) * len(g.fixed_axes)
        if result.prompts is not None:
            self.prompt_layers.add_prompts(result.prompts, key=key)
            ids.update(result.prompts.obj_ids)
        self._conf.clear()
        self.strip.reset(g.num_frames)
        self.objects = sorted(ids)
        self._max_id = max(ids, default=0)
        self._ensure_labels_layer()
        self.labels_layer.refresh()
        if self.objects:
            self.select_object(self.objects[0])
        else:
            self.new_object()
        self._opened_record = record
        model = record.model.source
        if model and self.model is None:
            self.set_model_source(model)
            _notify("info", f"Result made with {model}: load it to continue tracking.")
        self._reset_sessions()
        self._refresh_objects()
        self.opened.emit(str(path))

    # ================================================================== state of the buttons
    def _update_buttons(self, *args) -> None:
        running = self.propagation_worker is not None
        has_layer = self.geometry is not None
        session = self.session() if has_layer else None
        pos = self.current_position() if has_layer else None
        has_prompts = bool(self.prompt_layers and pos and self.prompt_layers.groups(key=pos[0]))
        can_propagate = not running and session is not None and has_prompts and self.geometry.num_frames > 1
        for b in (self.forward_button, self.backward_button, self.both_button):
            b.setEnabled(can_propagate)
        self.cancel_button.setEnabled(running)
        self.load_button.setEnabled(self.model_worker is None and not running)
        for w in (self.layer_combo, self.axis_combo, self.channel_axis_combo, self.model_combo, self.device_combo):
            w.setEnabled(not running)
        self.axis_combo.setEnabled(not running and has_layer and self.axis_combo.count() > 1)
        self.channel_spin.setEnabled(not running and self.channel_spin.count() > 0)
        self.new_button.setEnabled(has_layer)
        self.delete_button.setEnabled(has_layer and not running and self.current_obj in self.objects)
        self.undo_button.setEnabled(bool(self.prompt_layers and self.prompt_layers.history))
        self.weakest_button.setEnabled(bool(self.strip.weakest_frames()))
        self.save_button.setEnabled(has_layer and not running and self.save_worker is None)
        self.open_button.setEnabled(not running)
        for spin in (self.range_from, self.range_to):
            spin.setEnabled(self.range_check.isChecked() and not running)

    # ================================================================== teardown
    def shutdown(self) -> None:
        """Stop every worker, unbind the shortcuts and release the sessions (viewer closing, or a test ending).
        Workers still finishing a step end on their own; their signals are ignored from now on."""
        if not self._alive:
            return
        self._alive = False
        self._jobs.clear()
        for worker in list(self._workers):
            worker.quit()
        for key in getattr(self, "_keys", []):
            with contextlib.suppress(Exception):
                self.viewer.bind_key(key, None, overwrite=True)
        for emitter, callback in (
            (self.viewer.layers.events.inserted, self._refresh_layer_choices),
            (self.viewer.layers.events.removed, self._on_layer_removed),
            (self.viewer.layers.events.moved, self._refresh_layer_choices),
            (self.viewer.dims.events.current_step, self._on_dims),
        ):
            with contextlib.suppress(Exception):
                emitter.disconnect(callback)
        if self.prompt_layers is not None:
            self.prompt_layers.detach()

    @property
    def workers_running(self) -> bool:
        return bool(self._workers)

    def closeEvent(self, event):
        self.shutdown()
        super().closeEvent(event)


__all__ = ["SHORTCUTS", "SAM2Widget"]
