"""The napari dock widget: click on a slice, let SAM 2 carry the objects through the stack, save the labels.

The widget lays out and shows; what it does lives in `TrackingController` (`_controller.py`, no Qt, no napari):
the sessions (one per slice), the job queue that applies prompts in the order they were made, the labels every
result is merged into, propagation and save / open. The widget maps viewer state (the chosen image layer, the
prompt layers, the dims slider) to controller calls, runs the controller's long work on Qt thread workers, and
shows what the controller reports (it is the controller's `ControllerView`).
"""

from __future__ import annotations

import contextlib
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
from ._confidence import ConfidenceStrip
from ._controller import ControllerView, TrackingController, error_text, z_streamed
from ._geometry import StackGeometry, label_layer_data
from ._prompts_layers import PromptLayers, same_space

if TYPE_CHECKING:
    import napari

CHOOSE_FILE = "choose a .pt file…"
DEVICES = ("auto", "cpu", "cuda", "mps")
#: the click rule picker's item for an opened result's rule that is none of the named ones (made with other constants)
RECORDED_CLICK_RULE = "as recorded"

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


def _qt_worker(func, *args, **handlers):
    """An unstarted thread worker running `func(*args)` with `handlers` connected to its signals (the controller's
    `spawn`). superqt's worker, not napari's: napari's adds a raw traceback notification on error, and every error
    here gets its own message from the handlers instead."""
    from superqt.utils import create_worker

    worker = create_worker(func, *args, _start_thread=False, _ignore_errors=True)
    for name, callback in handlers.items():
        getattr(worker, name).connect(lambda *a, cb=callback: cb(*a))
    return worker


def _lineage_text(obj: int, parents: dict[int, int]) -> str:
    """The object list's lineage cell: "mother 3" for a daughter, "→ 5, 6" for a mother (both for a daughter that
    divided again)."""
    parts = []
    if obj in parents:
        parts.append(f"mother {parents[obj]}")
    daughters = sorted(d for d, m in parents.items() if m == obj)
    if daughters:
        parts.append("→ " + ", ".join(map(str, daughters)))
    return "; ".join(parts)


def _default_contrasts(model) -> str:
    """What "model default" means on the contrast picker: the model's contrast step, and its z-stack one where that
    differs (`registry.ModelInfo.z_contrast`: a stack tracked along z)."""
    from ..preprocess import default_contrast

    plain, along_z = default_contrast(model), default_contrast(model, z_stream=True)
    return plain if plain == along_z else f"{plain}; along z {along_z}"


def _select_quietly(combo, index: int) -> None:
    """Show item `index` of `combo` (a face showing state, not a user's pick: no change signal); -1: left as is."""
    if index >= 0 and index != combo.currentIndex():
        combo.blockSignals(True)
        combo.setCurrentIndex(index)
        combo.blockSignals(False)


class SAM2Widget(QWidget, ControllerView):
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
        self.controller = TrackingController(view=self, spawn=_qt_worker, prompts_of=self.prompt_set)
        self.image_layer = None
        self.labels_layer = None
        self.prompt_layers: PromptLayers | None = None
        self.current_obj: int | None = None
        #: settings of "discover new objects while propagating" and "Find all objects" (a
        #: `napari_sam2.discovery.DiscoveryOptions`; None: the defaults, made when the option is switched on)
        self.discovery_options = None
        self._weak_cursor = -1
        self._alive = True
        self._model_defaults: dict = {}  # lookup → (model, its default): what "model default" means in a picker
        self._build_ui()
        self._bind_keys()
        viewer.layers.events.inserted.connect(self._refresh_layer_choices)
        viewer.layers.events.removed.connect(self._on_layer_removed)
        viewer.layers.events.moved.connect(self._refresh_layer_choices)
        viewer.dims.events.current_step.connect(self._on_dims)
        self._refresh_layer_choices()
        self._update_buttons()

    # ---- the controller's state, read where the widget (and its tests) always read it
    @property
    def model(self):
        return self.controller.model

    @property
    def model_source(self) -> str | None:
        return self.controller.model_source

    @property
    def geometry(self) -> StackGeometry | None:
        return self.controller.geometry

    @property
    def label_base(self):
        return self.controller.labels

    @property
    def sessions(self) -> dict:
        return self.controller.sessions

    @property
    def objects(self) -> list[int]:
        return self.controller.object_ids

    @property
    def propagation_worker(self):
        return self.controller.propagation_worker

    @property
    def model_worker(self):
        return self.controller.model_worker

    @property
    def idle(self) -> bool:
        """No prompt job, session creation or propagation is pending (tests wait on this)."""
        return self.controller.idle

    @property
    def workers_running(self) -> bool:
        return bool(self.controller.workers)

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
        self.axis_combo.setToolTip(
            "Stream axis: the axis SAM 2 walks through (z of a stack, or t of a time-lapse).\n"
            "t + z together (3D+t, a 4-D layer's default): each object is one 3-D mask per time point, propagated\n"
            "through z and through time; prompts go on any (t, z) slice."
        )
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
        self.contrast_combo = QComboBox()
        self.contrast_combo.setToolTip(
            "Contrast of what SAM 2 sees, after the stack-wide intensity range:\n"
            "global: the range alone (every object keeps its brightness);\n"
            "local: each frame divided by its local brightness, so dim nuclei beside bright ones are seen as well\n"
            "(objects of very different brightness). Default: the model's."
        )
        self.contrast_combo.addItem("model default", None)
        self.contrast_combo.addItem("global", "global")
        self.contrast_combo.addItem("local", "local")
        grid.addWidget(QLabel("contrast"), 2, 0)
        grid.addWidget(self.contrast_combo, 2, 1)
        self.click_rule_combo = QComboBox()
        self.click_rule_combo.setToolTip(
            "How a click is read on the frame it is made on (tracked frames are not touched):\n"
            "fluorescence: a dim clicked nucleus is brought up to a set brightness before SAM 2 sees it, only the\n"
            "clicked part of the mask is kept, a large nucleus's mask is grown to its edge, and a brighter\n"
            "neighbour that looked alike is cut off;\n"
            "off: SAM 2's answer as it is (the official predictor). Default: the model's (nano-fluo: fluorescence)."
        )
        from ..click_rule import CLICK_RULES

        self.click_rule_combo.addItem("model default", None)
        for name in CLICK_RULES:
            self.click_rule_combo.addItem(name, name)
        grid.addWidget(QLabel("click rule"), 3, 0)
        grid.addWidget(self.click_rule_combo, 3, 1)
        layout.addWidget(box)
        self.layer_combo.currentIndexChanged.connect(self._on_layer_choice)
        self.axis_combo.currentIndexChanged.connect(self._on_axes_choice)
        self.channel_axis_combo.currentIndexChanged.connect(self._on_axes_choice)
        self.channel_spin.currentIndexChanged.connect(self._on_axes_choice)
        self.contrast_combo.currentIndexChanged.connect(self._on_contrast_choice)
        self.click_rule_combo.currentIndexChanged.connect(self._on_click_rule_choice)

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
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["id", "prompted frames", "status", "lineage"])
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
        self.delete_button.clicked.connect(lambda: self.delete_object())  # not clicked's `checked` as the id
        self.undo_button = QPushButton("Undo prompt (U)")
        self.undo_button.clicked.connect(self.undo)
        for b in (self.new_button, self.delete_button, self.undo_button):
            row.addWidget(b)
        v.addLayout(row)
        self.find_button = QPushButton("Find all objects on this frame")
        self.find_button.setToolTip(
            "Segment everything on the current frame: every object not yet in the list becomes a new object,\n"
            "prompted by its mask (review them; Delete removes a wrong one)."
        )
        self.find_button.clicked.connect(self.find_objects)
        v.addWidget(self.find_button)
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
        self.discover_check = QCheckBox("discover new objects while propagating")
        self.discover_check.setToolTip(
            "Forward passes segment everything on each frame and add cells that enter (arrivals) and the two\n"
            "daughters of a cell that divides (the mother ends; the list shows mother → daughters).\n"
            "Such a pass runs to the last frame. Slower: the decoder runs for a grid of points on every frame."
        )
        self.discover_check.toggled.connect(self._on_discover_toggled)
        grid.addWidget(self.discover_check, 3, 0, 1, 3)
        self.z_edge_combo = QComboBox()
        self.z_edge_combo.setEditable(True)
        self.z_edge_combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.z_edge_combo.addItems(["auto", "off", "0.3"])
        self.z_edge_combo.setToolTip(
            "Axial edge rule of a z-stack (as napari-sam2 track --z-edge): once propagation has run, each object ends\n"
            "in z where the image falls below this fraction of the brightest voxel of its (y, x) column in the mask\n"
            "(auto: 0.5; off: the model's masks; a smaller fraction keeps more of each cap). Assumes bright objects\n"
            "on a darker background. Changing it after a propagation propagates those frames again with it."
        )
        self.z_edge_label = QLabel("z edge")
        grid.addWidget(self.z_edge_label, 4, 0)
        grid.addWidget(self.z_edge_combo, 4, 1)
        self.z_edge_combo.activated.connect(self._on_z_edge_choice)
        self.z_edge_combo.lineEdit().editingFinished.connect(self._on_z_edge_choice)
        # (session key, (first, last)): frames to propagate again once that session is ready (the rule changed)
        self._propagate_again = None
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
            self.controller.drop_image()
            self.image_layer = None
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
        self.controller.stop_encoding()
        self.image_layer = layer
        self.controller.set_geometry(None)
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
            if ndim >= 4:  # 3D+t: objects carried through z and time together (the default of a 4-D layer)
                self.axis_combo.addItem("t + z together (3D+t)", "tz")
                if ndim == 4:
                    first = self.axis_combo.count() - 1
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

    def _on_contrast_choice(self, index=None) -> None:
        """The contrast picker changed: the sessions restart with the new model input (labels and prompts stay)."""
        self.controller.current = self.current_position() or self.controller.current
        self.controller.set_contrast(self.contrast_combo.currentData())
        self._update_status()

    def _show_contrast(self) -> None:
        """The picker shows the controller's contrast (an opened result sets it) and what "model default" means."""
        self._show_model_default(self.contrast_combo, _default_contrasts)
        wanted = self.controller.contrast
        name = wanted if wanted is None or isinstance(wanted, str) else wanted.name
        _select_quietly(self.contrast_combo, 0 if name is None else self.contrast_combo.findData(name))

    def _show_model_default(self, combo, lookup) -> None:
        """Item 0 of a picker says what "model default" means for the loaded model: `lookup(model)` (e.g.
        `preprocess.default_contrast`), looked up once per model and lookup."""
        known = self._model_defaults.get(lookup)
        if known is None or known[0] is not self.model:
            known = self._model_defaults[lookup] = (self.model, None if self.model is None else lookup(self.model))
        combo.setItemText(0, f"model default ({known[1]})" if known[1] else "model default")

    def _on_click_rule_choice(self, index=None) -> None:
        """The click rule picker changed: the sessions restart with it (labels and prompts stay)."""
        self.controller.current = self.current_position() or self.controller.current
        self.controller.set_click_rule(self.click_rule_combo.currentData())
        self._update_status()

    def _show_click_rule(self) -> None:
        """The picker shows the controller's rule (an opened result sets it) and what "model default" means; a
        recorded rule that is none of the named ones is shown as "as recorded"."""
        from ..click_rule import CLICK_RULES, ClickRule, default_click_rule

        combo = self.click_rule_combo
        self._show_model_default(combo, default_click_rule)
        wanted = self.controller.click_rule
        if isinstance(wanted, ClickRule):
            wanted = next((name for name, rule in CLICK_RULES.items() if rule == wanted), wanted)
        recorded = combo.findText(RECORDED_CLICK_RULE)
        if isinstance(wanted, ClickRule):  # e.g. made by a version with other constants: offered as it was made
            if recorded < 0:
                combo.blockSignals(True)
                combo.addItem(RECORDED_CLICK_RULE, wanted)
                combo.blockSignals(False)
                recorded = combo.count() - 1
            combo.setItemData(recorded, wanted)
            index = recorded
        else:
            index = 0 if wanted is None else combo.findData(wanted)
        _select_quietly(combo, index)

    def _on_z_edge_choice(self, index=None) -> None:
        """The axial edge rule changed (a pick or a typed value, read as --z-edge reads it): the sessions restart
        with it, and frames a propagation had written with the previous rule are propagated again both ways (the
        same rule again, e.g. when focus leaves the field, changes nothing: `TrackingController.set_z_edge`)."""
        self.controller.current = self.current_position() or self.controller.current
        try:
            again = self.controller.set_z_edge(self.z_edge_combo.currentText())
        except InputError as exc:
            _notify("warning", str(exc))
            self._show_z_edge()
            return
        self._show_z_edge()
        if again is not None and self.geometry is not None:
            _notify(
                "info",
                f"Axial edge rule now {self.z_edge_combo.currentText()}: propagating "
                f"{'time points' if self.geometry.coupled else 'frames'} {again[0]}–{again[1]} again with it.",
            )
            if self.geometry.coupled:  # the 3D+t session is made again by the propagation itself
                self.controller.propagate_volume("both", again, self.all_prompts())
            else:  # once the restarted session is ready (`show_session_ready`)
                self._propagate_again = (self.controller.current[0], again)
        self._update_status()
        self._update_buttons()

    def _show_z_edge(self) -> None:
        """The field shows the controller's rule (after a refused value, or an opened result's rule)."""
        value = self.controller.z_edge
        self.z_edge_combo.blockSignals(True)
        self.z_edge_combo.setCurrentText("off" if value is None else value if isinstance(value, str) else f"{value:g}")
        self.z_edge_combo.blockSignals(False)

    def _setup_geometry(self, new_layer: bool) -> None:
        """(Re)derive the axes from the pickers, make the labels and prompt layers, and restart the sessions."""
        layer = self.image_layer
        try:
            geometry = StackGeometry.from_layer(
                layer,
                stream_axis=self.axis_combo.currentData(),
                channel_axis=self.channel_axis_combo.currentData(),
                channel=self.channel_spin.currentData(),
            ).named(list(self.viewer.dims.axis_labels)[self._world_offset() :])
        except InputError as exc:
            _notify("warning", str(exc))
            self.controller.set_geometry(None)
            self._update_buttons()
            return
        old_labels = self.label_base
        if self.controller.set_geometry(geometry, new_labels=new_layer):
            self._make_output_layers(old_labels)
        else:
            self.prompt_layers.geometry = geometry
            self._rederive_prompts()
        n = self._range_length()
        for spin in (self.range_from, self.range_to):
            spin.setRange(0, max(0, n - 1))
        self.range_to.setValue(max(0, n - 1))
        self.range_check.setText("only time points" if geometry.coupled else "only frames")
        self.progress.setFormat("%v/%m time points" if geometry.coupled else "%v/%m frames")
        self.strip.reset(geometry.num_frames)
        self._propagate_again = None  # of the previous geometry's session
        self._reset_sessions()

    def _make_output_layers(self, old_labels_data) -> None:
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
            if isinstance(old_labels_data, np.ndarray) and not old_labels_data.any():
                self.viewer.layers.remove(old_labels)
            else:
                old_labels.name = f"{old_labels.name} (detached)"
        self.labels_layer = self.viewer.add_labels(
            label_layer_data(self.label_base, g),
            name=f"SAM2 labels ({layer.name})",
            opacity=0.5,
            **same_space(layer),
        )
        self.current_obj = None
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
        conf = self.controller.confidence.setdefault(key, {})
        if self.strip.values is not conf:
            self.strip.values = conf
            self.strip.update()
            self._refresh_objects()
        self.controller.focus(key, frame)
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
        self.controller.load_model(source, device)

    def _update_status(self) -> None:
        parts = []
        if self.model is not None:
            name = getattr(self.model.cfg, "name", "SAM 2")
            parts.append(f"{self.model_source.split('/')[-1]} ({name}) on {self.model.device}")
        else:
            parts.append("no model loaded")
        if self.geometry is not None:
            g = self.geometry
            if g.coupled:
                axis = f"3D+t, {self._range_length()} time points × {g.num_frames} slices"
            elif g.stream_axis is None:
                axis = "one image"
            else:
                axis = f"{g.num_frames} frames along axis {g.stream_axis}"
            parts.append(f"{self.image_layer.name}: {axis}")
        done, total = self.controller.encoded
        if total:
            parts.append(f"features {done}/{total}")
        self.status.setText(" · ".join(parts))

    # ================================================================== what the controller reports
    def show_message(self, kind: str, text: str) -> None:
        if self._alive:
            _notify(kind, text)

    def show_labels(self, key) -> None:
        if self.geometry is not None:
            self._ensure_labels_layer()
        if self.labels_layer is not None:
            self.labels_layer.refresh()
        self.strip.update()

    def show_prompted(self, results) -> None:
        self._weak_cursor = -1
        self._refresh_objects()
        self.prompted.emit(results)
        self._update_buttons()

    def show_session_ready(self, key, session) -> None:
        self.sessionReady.emit()
        again, self._propagate_again = self._propagate_again, None
        if again is not None and again[0] == key:  # the axial edge rule changed after a propagation
            from qtpy.QtCore import QTimer

            QTimer.singleShot(0, lambda: self._propagate_frames(key, again[1]))

    def _propagate_frames(self, key, frames: tuple[int, int]) -> None:
        """Propagate session `key` both ways over frames (first, last) (the prompted frames of the face)."""
        if self._alive and self.propagation_worker is None and self.session(key) is not None:
            self.controller.propagate(key, "both", frames, self._prompted_frames(key))

    def show_encoding(self, done: int, total: int) -> None:
        self.encode_bar.setVisible(total > 0)
        if total:
            self.encode_bar.setRange(0, total)
            self.encode_bar.setValue(done)
        self._update_status()

    def show_propagation(self, done: int, total: int) -> None:
        self.progress.setRange(0, total)
        self.progress.setValue(done)

    def show_propagation_done(self, frames_written: int, cancelled: bool) -> None:
        self._weak_cursor = -1
        self._refresh_objects()
        self.propagationDone.emit(frames_written)

    def show_model(self, model, source) -> None:
        if model is None:
            current = self.model_source
            self.status.setText(f"Could not load {source}." + (f" Still using {current}." if self.model else ""))
        else:
            self._update_status()

    def show_state(self) -> None:
        if self._alive:
            self._update_buttons()

    # ================================================================== sessions
    def _reset_sessions(self) -> None:
        pos = self.current_position()
        if pos is not None:
            self.controller.current = pos
        self.controller.reset_sessions()
        self._update_status()
        self._update_buttons()

    def session(self, key=None):
        """The ready TrackingSession of `key` (default: the current one), or None."""
        if key is None:
            pos = self.current_position()
            if pos is None:
                return None
            key = pos[0]
        return self.controller.session(key)

    # ================================================================== prompts
    def _on_prompt_changes(self, changes) -> None:
        if self.model is None:
            _notify("info", "Load a model to see masks: the prompts are kept and applied once it is loaded.")
            self._refresh_objects()
            return
        for change in changes:
            self.controller.add_object(change.obj_id, quiet=True)
            if change.key not in self.sessions:
                self.controller.create_session(change.key)  # its snapshot already holds this change
                continue
            self._send_change(change)
        self._refresh_objects()
        self._update_buttons()

    def _send_change(self, change) -> None:
        key, frame, obj = change.key, change.frame, change.obj_id
        if change.kind == "points":
            self.controller.add_points(key, frame, obj, change.points, change.labels)
        elif change.kind == "box":
            self.controller.add_box(key, frame, obj, change.box)
        else:  # resync: rows were removed or moved
            self.controller.set_prompt(key, frame, obj, self.prompt_layers.prompt(key, frame, obj))

    def undo(self) -> None:
        """Remove the last prompt (point or box) and update that frame's mask."""
        if self.prompt_layers is None:
            return
        change = self.prompt_layers.undo()
        if change is None:
            _notify("info", "Nothing to undo.")
            return
        if self.model is not None and change.key in self.sessions:
            self._send_change(change)
        self._refresh_objects()
        self._update_buttons()

    # ================================================================== objects
    def new_object(self) -> None:
        if self.prompt_layers is None:
            return
        obj = self.controller.new_object_id(self.prompt_layers.obj_ids())
        self.controller.add_object(obj, quiet=True)
        self.select_object(obj)

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
        conf = self.controller.confidence.get(key, {})
        n = self.geometry.num_frames if self.geometry else 0
        self.table.blockSignals(True)
        self.table.setRowCount(len(self.objects))
        prompted = {}
        parents = self.controller.lineage(key)
        for row, obj in enumerate(self.objects):
            frames = sorted({*self.prompt_layers.frames_of(obj).get(key, []), *self.controller.mask_frames(key, obj)})
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
            self.table.setItem(row, 3, QTableWidgetItem(_lineage_text(obj, parents)))
        if self.current_obj in self.objects:
            self.table.selectRow(self.objects.index(self.current_obj))
        self.table.blockSignals(False)
        self.strip.set_objects({o: self.color_of(o) for o in self.objects}, prompted)
        if self.strip.values is not conf and key in self.controller.confidence:
            self.strip.values = self.controller.confidence[key]

    def delete_object(self, obj: int | None = None) -> None:
        """Delete an object (default: the selected one): its prompts, its tracking and its labels."""
        obj = self.current_obj if obj is None else int(obj)
        if obj is None or obj not in self.objects:
            return
        if not self.controller.delete_object(obj):
            return
        self.prompt_layers.remove_object(obj)
        if self.objects:
            self.select_object(self.objects[-1])
        else:
            self.new_object()
        self._refresh_objects()
        self._update_buttons()

    # ================================================================== propagation
    def _range_length(self) -> int:
        """What the range and the progress count: frames along the stream axis, or time points (3D+t)."""
        g = self.geometry
        return g.layer_shape[g.fixed_axes[0]] if g.coupled else g.num_frames

    def _range(self) -> tuple[int, int]:
        n = self._range_length()
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
        if self.geometry.coupled:  # 3D+t: every object through z and time (the range is over time points)
            self.controller.propagate_volume(direction, self._range(), self.all_prompts())
            return
        key = pos[0]
        self.controller.propagate(key, direction, self._range(), self._prompted_frames(key))

    def _on_discover_toggled(self, on: bool) -> None:
        from ..discovery import DiscoveryOptions

        if on and self.discovery_options is None:
            self.discovery_options = DiscoveryOptions()
        self.controller.discovery = self.discovery_options if on else None

    def find_objects(self) -> None:
        """Segment everything on the current frame; what no object holds yet becomes new objects (see
        `TrackingController.find_objects`)."""
        pos = self.current_position()
        if pos is None:
            _notify("info", "Pick an image layer first.")
            return
        self.controller.find_objects(*pos, taken=self.prompt_layers.obj_ids(), options=self.discovery_options)

    def cancel(self) -> None:
        """Stop the propagation after the frame being computed; every finished frame stays."""
        self.controller.cancel()

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
        """The prompts of session `key` (default: current) as a `PromptSet`, one `ObjectPrompt` per (object, frame)
        in the order their first prompt was given (groups left empty by deletions are skipped)."""
        from ..prompts import PromptSet

        if key is None:
            pos = self.current_position()
            key = pos[0] if pos else ()
        prompts = PromptSet()
        if self.prompt_layers is None:
            return prompts
        for k, frame, obj in self.prompt_layers.groups(key=key):
            prompt = self.prompt_layers.prompt(k, frame, obj)
            if prompt is not None:
                prompts.append(prompt)
        for prompt in self.controller.mask_prompt_set(key):  # objects found by "Find all" or by discovery
            prompts.append(prompt)
        return prompts

    def _prompted_frames(self, key) -> list[int]:
        return sorted(
            {f for _, f, _ in self.prompt_layers.groups(key=key)}
            | {p.frame for p in self.controller.mask_prompt_set(key)}
        )

    def all_prompts(self):
        """Every prompt the widget holds, on every session (each time point of a 4-D layer), as one `PromptSet` in
        the order given: what Save writes. For [T, Z, Y, X] labels each prompt carries its (t, z) (`ObjectPrompt.t`
        and frame = z, as prompt files hold them); otherwise the frame along the stream axis."""
        from ..prompts import PromptSet

        prompts = PromptSet()
        if self.prompt_layers is None or self.geometry is None:
            return prompts
        for key, frame, obj in self.prompt_layers.groups():
            prompt = self.prompt_layers.prompt(key, frame, obj)
            if prompt is not None:
                prompts.append(self.geometry.tz_prompt(key, prompt))
        for key in sorted(self.controller.mask_prompts):  # objects found by "Find all" or by discovery
            for prompt in self.controller.mask_prompt_set(key):
                prompts.append(self.geometry.tz_prompt(key, prompt))
        return prompts

    def provenance(self):
        """The `Provenance` of what the widget holds now (the checkpoint's hash is added by the save job)."""
        import napari

        pos = self.current_position()
        source_path = self.image_layer.source.path
        return self.controller.provenance(
            pos[0] if pos else (),
            {
                "layer": self.image_layer.name,
                "path": str(source_path) if source_path else None,
                "shape": [int(n) for n in self.image_layer.data.shape],
            },
            extra={"napari_version": napari.__version__},
            prompts=self.all_prompts() if self.geometry.coupled else None,
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
        try:
            axes = self.geometry.axes_string(list(self.viewer.dims.axis_labels)[self._world_offset() :])
        except InputError as exc:
            _notify("warning", str(exc))
            return
        scale = [float(self.image_layer.scale[a]) for a in self.geometry.label_axes]
        units = [str(self.image_layer.units[a]) for a in self.geometry.label_axes]
        self.controller.save(
            path, axes, self.all_prompts(), self.provenance(), scale, units, on_saved=lambda p: self.saved.emit(p)
        )

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
            _notify("error", f"Could not open {path}: {error_text(exc)}")
            return
        if self.image_layer is None:
            if result.image is None:
                _notify("warning", "Open the image of this result in napari first, pick it here, then open again.")
                return
            layer = self.viewer.add_image(result.image, name=f"{result.path.name} image")
            self.select_layer(layer)
        if self.geometry is None:
            return
        try:
            key, prompts = self.controller.open_result(result)
        except InputError as exc:
            _notify("warning", str(exc))
            return
        # start over: objects, prompts and sessions of the opened result
        for obj in list(self.prompt_layers.obj_ids()):
            self.prompt_layers.remove_object(obj)
        self.prompt_layers.history.clear()
        if prompts is not None and prompts.is_4d:  # every time point's prompts back to the session they belong to
            by_key: dict = {}
            for prompt in prompts:
                where, on_session = self.geometry.session_prompt(prompt)
                by_key.setdefault(where, []).append(on_session)
            for where, group in by_key.items():
                self.prompt_layers.add_prompts(group, key=where)
        elif prompts is not None:
            self.prompt_layers.add_prompts(prompts, key=key)
        self.strip.reset(self.geometry.num_frames)
        self._ensure_labels_layer()
        self.labels_layer.refresh()
        if self.objects:
            self.select_object(self.objects[0])
        else:
            self.new_object()
        model = result.record.model.source
        if model and self.model is None:
            self.set_model_source(model)
            _notify("info", f"Result made with {model}: load it to continue tracking.")
        self._show_z_edge()  # the result's axial edge rule, which its continuation keeps
        self._propagate_again = None  # frames of the labels just replaced
        self._reset_sessions()
        self._refresh_objects()
        self.opened.emit(str(path))

    # ================================================================== state of the buttons
    def _update_buttons(self, *args) -> None:
        running = self.propagation_worker is not None
        has_layer = self.geometry is not None
        session = self.session() if has_layer else None
        pos = self.current_position() if has_layer else None
        if has_layer and self.geometry.coupled:  # 3D+t: prompts on any time point; the slice session is not needed
            has_prompts = bool(self.prompt_layers and len(self.all_prompts()))
            can_propagate = not running and self.model is not None and has_prompts
        else:
            has_prompts = bool(self.prompt_layers and pos and self._prompted_frames(pos[0]))
            can_propagate = not running and session is not None and has_prompts and self.geometry.num_frames > 1
        for b in (self.forward_button, self.backward_button, self.both_button):
            b.setEnabled(can_propagate)
        self.cancel_button.setEnabled(running)
        self.load_button.setEnabled(self.controller.model_worker is None and not running)
        for w in (self.layer_combo, self.axis_combo, self.channel_axis_combo, self.model_combo, self.device_combo,
                  self.contrast_combo, self.click_rule_combo):  # fmt: skip
            w.setEnabled(not running)
        self._show_contrast()
        self._show_click_rule()
        self.axis_combo.setEnabled(not running and has_layer and self.axis_combo.count() > 1)
        self.channel_spin.setEnabled(not running and self.channel_spin.count() > 0)
        z_stream = z_streamed(self.geometry)  # the axial edge rule means nothing along t
        for w in (self.z_edge_label, self.z_edge_combo):
            w.setVisible(z_stream)
        self.z_edge_combo.setEnabled(z_stream and not running)
        self.new_button.setEnabled(has_layer)
        self.find_button.setEnabled(self.controller.idle and session is not None)  # one search at a time
        self.delete_button.setEnabled(has_layer and not running and self.current_obj in self.objects)
        self.undo_button.setEnabled(bool(self.prompt_layers and self.prompt_layers.history))
        self.weakest_button.setEnabled(bool(self.strip.weakest_frames()))
        self.save_button.setEnabled(has_layer and not running and self.controller.save_worker is None)
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
        self.controller.shutdown()
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

    def closeEvent(self, event):
        self.shutdown()
        super().closeEvent(event)


__all__ = ["SHORTCUTS", "SAM2Widget"]
