"""The `napari-sam2` command: track stacks from a shell or a cluster job, manage models, inspect results.

    napari-sam2 track IMAGE (--prompts FILE | --seeds LABELS | --auto) [--seed-frame N] [--discover-every K]
                      --out OUT.ome.zarr
                      [--model NAME|PATH] [--device auto|cpu|cuda|mps] [--axis t|z|tz|INDEX|T,Z] [--channel N]
                      [--direction forward|backward|both] [--window LO,HI] [--ctc DIR] [--resume | --overwrite]
                      [--no-image] [--embedding-cache DIR] [--quiet]
    napari-sam2 track-many IMAGE... (--seeds-pattern P | --prompts-dir DIR | --prompts FILE | --auto) --out-dir OUT
                      [--scheduler local|ADDRESS] [--workers N] ...     (Dask; see napari_sam2.scale_out)
    napari-sam2 encode IMAGE --embedding-cache DIR [--scheduler local|ADDRESS] [--workers N] ...
    napari-sam2 models list | download NAME [--cache-dir DIR] | verify NAME|PATH [--cache-dir DIR]
    napari-sam2 info OUT.ome.zarr
    napari-sam2 replay RESULT.ome.zarr [--image PATH] [--model NAME|PATH] [--device ...] [--threads N]
    napari-sam2 demo [--model NAME|PATH] [--out DIR] [--frames N] [--size PX] [--overwrite]

Exit codes:
    0    success
    1    bad input or another user error (missing/unreadable file, bad prompts file, output exists, disk full...):
         one message on stderr, no traceback
    2    usage error (unknown option, missing argument)
    3    model not available (not cached and not downloadable, unknown name, damaged or foreign checkpoint)
    130  interrupted (Ctrl-C / SIGINT): frames finished so far stay in the store; continue with --resume
    143  terminated (SIGTERM, e.g. a cluster job's time limit): the same as 130
Everything here is a thin face over `napari_sam2.track`, the registry and the result store.
"""

from __future__ import annotations

import argparse
import sys
import time

EXIT_OK, EXIT_INPUT, EXIT_USAGE, EXIT_MODEL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process it killed
DEVICES = ["auto", "cpu", "cuda", "mps"]
DEVICE_HELP = "where the model runs; auto: cuda, else mps, else cpu (auto)"

__all__ = [
    "EXIT_INPUT",
    "EXIT_INTERRUPTED",
    "EXIT_MODEL",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "ProgressBar",
    "main",
]


class ProgressBar:
    """A plain-text progress bar on a stream (stderr), redrawn in place at most ~10 times a second."""

    def __init__(self, label: str = "tracking", stream=None, width: int = 30):
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.start = time.monotonic()
        self._last = 0.0
        self._drawn = False
        self._first_done: int | None = None

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self._first_done is None:
            self._first_done = done - 1
        if done < total and now - self._last < 0.1:
            return
        self._last = now
        frac = done / total if total else 1.0
        filled = round(frac * self.width)
        rate = (done - self._first_done) / max(now - self.start, 1e-9)
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {done}/{total} frames  {rate:.1f} frames/s")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-sam2",
        description="SAM 2 tracking of z-stacks and time-lapses from the command line.",
        epilog="Exit codes: 0 ok, 1 bad input, 2 usage, 3 model not available, 130 interrupted, 143 terminated.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    t = sub.add_parser("track", help="track prompted objects through a stack into an OME-Zarr store")
    t.add_argument("image", help="image stack: .tif/.tiff (OME-TIFF), .zarr (OME-Zarr), .npy, .nii/.nii.gz")
    source = t.add_mutually_exclusive_group()
    source.add_argument("--prompts", metavar="FILE", help="prompts file (.json or .csv: obj_id,frame,y,x,label; boxes)")
    source.add_argument("--seeds", metavar="LABELS", help="label image of one frame: every object becomes a prompt")
    source.add_argument("--auto", action="store_true",
                        help="no prompts: segment everything on the seed frame, then track and discover new cells "
                        "and divisions (every frame unless --discover-every)")  # fmt: skip
    t.add_argument("--seed-frame", type=int, default=0, metavar="N", help="frame the seed labels belong to (0)")
    t.add_argument("--points-per-side", type=int, default=None, metavar="N",
                   help="segment-everything grid of --auto and discovery (default 16: N² decoder runs per frame)")  # fmt: skip
    t.add_argument("--discover-every", type=int, default=None, metavar="K",
                   help="find new cells and divisions by segment-everything every K frames while tracking forward "
                   "(1 = every frame; with --prompts/--seeds, or to thin out --auto's)")  # fmt: skip
    t.add_argument("--out", required=True, metavar="OUT.ome.zarr", help="output store (OME-Zarr 0.5)")
    t.add_argument("--model", default=None, metavar="NAME|PATH", help="registry name (e.g. sam2.1_hiera_tiny, "
                   "downloaded once) or checkpoint path (default: the built-in nano-fluo, offline; on --resume "
                   "the recorded one)")  # fmt: skip
    t.add_argument("--device", default="auto", choices=DEVICES, help=DEVICE_HELP)
    t.add_argument("--axis", default=None, metavar="t|z|tz|INDEX|T,Z",
                   help="stream axis (default: t, else z, else 0); a 3D+t stack has two, t and z, followed together "
                   "(default for 4-D: the axes named t and z, else the first two; or give them as T,Z indices)")  # fmt: skip
    t.add_argument("--channel", type=int, default=None, metavar="N", help="channel of multichannel data")
    t.add_argument("--direction", default=None, choices=["forward", "backward", "both"],
                   help="propagate from the first prompted frame forward, backward or both ways (both)")  # fmt: skip
    t.add_argument("--window", default=None, metavar="LO,HI",
                   help="fixed intensity window instead of percentiles, e.g. --window=-1000,400 for CT")  # fmt: skip
    t.add_argument("--contrast", default=None, choices=["global", "local"],
                   help="contrast step of the model input after the intensity window: global (the window alone) or "
                   "local (each frame divided by its local brightness envelope: dim nuclei beside bright ones); "
                   "default: the model's (on --resume: the recorded one)")  # fmt: skip
    t.add_argument("--click-rule", default=None, choices=["fluorescence", "off"],
                   help="how a frame prompted with clicks is read: fluorescence (a dim clicked object is brought up "
                   "to a set brightness before the network, and only the clicked part of the mask is kept) or off "
                   "(the network's answer as it is); default: the model's — fluorescence for nano-fluo, off for the "
                   "official checkpoints (on --resume: the recorded one)")  # fmt: skip
    t.add_argument("--z-edge", default="auto", metavar="FRACTION|off",
                   help="axial edge rule of z-stacks and 3D+t: end each object in z where the image falls below this "
                   "fraction of its column's brightest voxel (auto: 0.5 on a z stream, off along t; off: never)")  # fmt: skip
    t.add_argument("--ctc", default=None, metavar="DIR", help="also export Cell Tracking Challenge results here")
    mode = t.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="finish an interrupted run in --out")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing napari-sam2 store in --out")
    t.add_argument("--no-image", action="store_true", help="do not copy the image into the store")
    t.add_argument(
        "--embedding-cache",
        default=None,
        metavar="DIR",
        help="keep image features on disk here, so --resume and reruns skip the image encoder",
    )
    t.add_argument("--quiet", "-q", action="store_true", help="no progress bar, no summary")

    from .scale_out import add_cli_parsers

    add_cli_parsers(sub)  # track-many, encode

    m = sub.add_parser("models", help="list, download or verify SAM 2 checkpoints")
    msub = m.add_subparsers(dest="models_command", metavar="ACTION")
    msub.required = True
    ml = msub.add_parser("list", help="the known checkpoints and whether they are cached")
    ml.add_argument("--cache-dir", default=None)
    md = msub.add_parser("download", help="fetch a checkpoint into the cache (checked against its SHA-256)")
    md.add_argument("name")
    md.add_argument("--cache-dir", default=None)
    md.add_argument("--quiet", "-q", action="store_true")
    mv = msub.add_parser("verify", help="check a cached checkpoint (by name) or a file against the recorded hash")
    mv.add_argument("name", metavar="NAME|PATH")
    mv.add_argument("--cache-dir", default=None)

    i = sub.add_parser("info", help="what a result store holds")
    i.add_argument("store", metavar="OUT.ome.zarr")

    r = sub.add_parser("replay", help="re-run a result's recorded edits and check that they give its labels")
    r.add_argument("store", metavar="RESULT.ome.zarr")
    r.add_argument("--image", default=None, metavar="PATH", help="the stack it was made from (default: recorded)")
    r.add_argument("--model", default=None, metavar="NAME|PATH", help="default: the recorded model")
    r.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the recorded count)")

    d = sub.add_parser("demo", help="track the synthetic nuclei time-lapse from its first-frame ground truth")
    d.add_argument("--model", default="nano-fluo", metavar="NAME|PATH",
                   help="registry name or .pt file (default: the built-in nano-fluo, no download)")  # fmt: skip
    d.add_argument("--out", default=None, metavar="DIR",
                   help="folder for the sample, its ground truth and the results (default: a new temporary folder)")  # fmt: skip
    d.add_argument("--device", default="auto", choices=DEVICES, help=DEVICE_HELP)
    d.add_argument("--frames", type=int, default=30, help="time points (30)")
    d.add_argument("--size", type=int, default=256, help="frame size in pixels (256)")
    d.add_argument("--overwrite", action="store_true", help="replace the results of an earlier demo in --out")
    d.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    return parser


def _join_negative_window(argv: list[str]) -> list[str]:
    """argparse reads `--window -1000,400` as two options; make it `--window=-1000,400`."""
    out = []
    skip = False
    for k, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--window" and k + 1 < len(argv) and argv[k + 1][:2].startswith("-") and argv[k + 1][1:2].isdigit():
            out.append(f"--window={argv[k + 1]}")
            skip = True
        else:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    import signal

    from .errors import Terminated

    def on_sigterm(signum, frame):  # a stop like Ctrl-C: the run records itself as interrupted, never "running"
        raise Terminated("terminated (SIGTERM)")

    args = None
    try:
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread (e.g. called from a worker): keep the default
        previous = None
    try:
        argv = _join_negative_window(list(sys.argv[1:] if argv is None else argv))
        try:
            args = _parser().parse_args(argv)
        except SystemExit as exc:  # argparse: 0 for --help, 2 for usage errors
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE
        _import_deferring_signals(args.command, on_sigterm)
        from . import scale_out

        handler = {
            "track": _cmd_track,
            "track-many": scale_out.cmd_track_many,
            "encode": scale_out.cmd_encode,
            "models": _cmd_models,
            "info": _cmd_info,
            "demo": _cmd_demo,
            "replay": _cmd_replay,
        }[args.command]
        return _run(handler, args)
    except KeyboardInterrupt as exc:  # also before the handler runs (e.g. Ctrl-C while starting up)
        return _interrupted(exc, args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


_MODULES = {"track": "api", "demo": "api", "info": "io.results", "models": "registry", "track-many": "scale_out",
            "encode": "scale_out", "replay": "api"}  # fmt: skip


def _import_deferring_signals(command: str, on_sigterm) -> None:
    """Import what `command` needs (numpy, zarr, torch: seconds) with Ctrl-C / SIGTERM held back until the imports
    are complete: a KeyboardInterrupt inside a half-imported numpy or torch breaks later imports with tracebacks.
    A signal that came meanwhile is raised afterwards, as if it had come at once."""
    import importlib
    import signal

    pending: list[int] = []

    def hold(signum, frame):
        pending.append(signum)

    try:
        old_int = signal.signal(signal.SIGINT, hold)
        signal.signal(signal.SIGTERM, hold)
    except ValueError:  # not the main thread: nothing to defer
        importlib.import_module(f"{__package__}.{_MODULES[command]}")
        return
    try:
        importlib.import_module(f"{__package__}.{_MODULES[command]}")
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, on_sigterm)
    if pending:
        from .errors import Terminated

        raise Terminated("terminated (SIGTERM)") if pending[0] == signal.SIGTERM else KeyboardInterrupt


def _interrupted(exc: BaseException, args) -> int:
    from .errors import Terminated

    what = "terminated" if isinstance(exc, Terminated) else "interrupted"
    out = getattr(args, "out", None) if args is not None else None
    hint = ""
    if out is not None and getattr(args, "command", None) == "track":
        from .io.results import is_result_store

        if is_result_store(out):
            hint = f"; frames finished so far are kept in {out}; continue with --resume"
        else:
            hint = "; nothing was written"
    if getattr(args, "command", None) == "track-many":
        hint = "; finished frames are kept in each store: run the same command again to resume"
    _error(f"{what}{hint}")
    return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED


def _run(handler, args) -> int:
    try:
        return handler(args)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # classified below; anything unknown is re-raised
        code = _classify(exc)
        if code is None:
            raise
        _error(str(exc))
        return code


def _classify(exc: Exception) -> int | None:
    from . import registry
    from .api import ModelNameError
    from .errors import InputError
    from .io.ome_zarr import LabelStoreError
    from .model import CheckpointError

    if isinstance(exc, (registry.ModelNotAvailableError, registry.ChecksumError, ModelNameError, CheckpointError)):
        return EXIT_MODEL
    if isinstance(exc, (InputError, LabelStoreError, OSError, ValueError)):
        return EXIT_INPUT
    return None


def _error(message: str) -> None:
    sys.stderr.write(f"napari-sam2: error: {message}\n")
    sys.stderr.flush()


# ---------------------------------------------------------------------- track
def _cmd_track(args) -> int:
    from pathlib import Path

    from .api import track
    from .errors import InputError

    out = Path(args.out)
    resuming = args.resume and out.exists()
    if not resuming and args.prompts is None and args.seeds is None and not args.auto:
        raise InputError("give --prompts FILE or --seeds LABELS, or --auto (or --resume an interrupted run in --out)")
    if args.discover_every is not None and args.discover_every < 1:
        raise InputError(f"--discover-every takes K >= 1 (1 = every frame); got {args.discover_every}")
    if args.prompts is not None and Path(args.prompts).suffix.lower() not in (".json", ".csv"):
        raise InputError(
            f"--prompts {args.prompts}: prompts files are .json or .csv (a label image of seeds goes to --seeds)"
        )
    _check_device(args.device)
    bar = None if args.quiet else ProgressBar("replaying/tracking" if resuming else "tracking")
    try:
        result = track(
            args.image,
            args.prompts if args.prompts is not None else args.seeds,
            model=args.model,  # None: the recorded one on --resume, else registry.DEFAULT_MODEL (nano-fluo)
            axis=args.axis,
            out=out,
            direction=args.direction,
            channel=args.channel,
            device=args.device,
            window=args.window,
            resume=args.resume,
            ctc=args.ctc,
            progress=bar,
            seed_frame=args.seed_frame,
            overwrite=args.overwrite,
            save_image=not args.no_image,
            embedding_cache=args.embedding_cache,
            discover=_discovery(args),
            auto=args.auto,
            z_edge=args.z_edge,
            contrast=args.contrast,
            click_rule=args.click_rule,
        )
    finally:
        if bar is not None:
            bar.close()
    if not args.quiet:
        objects = sorted({row["obj_id"] for row in result.confidence} | {row["label"] for row in result.regions})
        if result.events:
            arrivals = sum(e["kind"] == "arrival" for e in result.events)
            divisions = sum(e["kind"] == "division" for e in result.events)
            print(
                f"discovery: {arrivals} new object(s), {divisions} division(s) (lineage: {len(result.parents)} link(s))"
            )
        span = f"{result.labels.shape[0]} frames"
        if result.axes == "tzyx":  # 3D+t: a frame is one time point's volume
            span = f"{result.labels.shape[0]} time points x {result.labels.shape[1]} z slices"
        print(f"tracked {len(objects)} object(s) over {span} -> {result.path}")
        print(f"  wrote {len(result.frames_written)} frame(s); table: {result.csv_path}")
        if result.ctc_path is not None:
            print(f"  Cell Tracking Challenge export: {result.ctc_path}")
    return EXIT_OK


def _discovery(args):
    """--discover-every / --points-per-side → track()'s `discover` (None: off, or --auto's default)."""
    from .errors import InputError

    if args.discover_every is None and not args.auto:
        if args.points_per_side is not None:
            raise InputError("--points-per-side sets the segment-everything grid of --auto / --discover-every")
        return None
    if args.discover_every is None and args.points_per_side is None:
        return None  # --auto's defaults
    from .discovery import DiscoveryOptions

    options = DiscoveryOptions(every=args.discover_every or 1)
    if args.points_per_side is not None:
        if args.points_per_side < 1:
            raise InputError(f"--points-per-side takes N >= 1; got {args.points_per_side}")
        options.generator["points_per_side"] = args.points_per_side
    if args.auto:
        options.on_start_frame = False
    return options


def _check_device(device: str) -> None:
    from .errors import InputError
    from .model.build import resolve_device

    try:
        resolve_device(device)
    except RuntimeError as exc:
        raise InputError(str(exc)) from None


# ---------------------------------------------------------------------- models
def _cmd_models(args) -> int:
    from . import registry

    if args.models_command == "list":
        folder = registry.cache_dir(args.cache_dir)
        print(f"{'name':<22} {'version':<7} {'params':>8} {'size':>9}  cached   (cache: {folder})")
        for name in registry.list_models():
            info = registry.model_info(name)
            size = f"{info.file_size / 1e6:.0f} MB" if info.file_size else "?"
            if info.builtin:
                cached = "built-in" if (registry.BUILTIN_DIR / info.filename).is_file() else "missing"
            else:
                cached = "yes" if (folder / info.filename).is_file() else "no"
            print(f"{info.name:<22} {info.version:<7} {info.params / 1e6:>7.1f}M {size:>9}  {cached}")
        return EXIT_OK
    if args.models_command == "download":
        try:
            registry.model_info(args.name)
        except KeyError as exc:
            from .api import ModelNameError

            raise ModelNameError(exc.args[0]) from None
        path = registry.checkpoint_path(args.name, cache_dir=args.cache_dir, download=True, progress=not args.quiet)
        print(path)
        return EXIT_OK
    ok, message = registry.verify(args.name, cache_dir=args.cache_dir)
    print(message)
    return EXIT_OK if ok else EXIT_INPUT


# ---------------------------------------------------------------------- info
def _cmd_info(args) -> int:
    from .io.results import open_result

    result = open_result(args.store)
    record = result.record
    settings = record.settings
    n = int(result.labels.shape[0])
    print(f"{result.path}: napari-sam2 result, axes {result.axes}, shape {tuple(result.labels.shape)}")
    print(f"  frames finished: {len(result.finished_frames)}/{n}  status: {record.status or '?'}")
    print(f"  objects: {len(result.colors)} ({_short(sorted(result.colors))})")
    units = result.units or {}
    sizes = result.scale or (1.0,) * len(result.axes)
    scale = ", ".join(
        f"{a}={v:g}" + (f" {units[a]}" if a in units else "") for a, v in zip(result.axes, sizes, strict=True)
    )
    print(f"  image stored: {'yes' if result.image is not None else 'no'}  scale: {scale}")
    if record.model.source or record.model.checkpoint_sha256:
        print(f"  model: {record.model.describe()}")
    if result.prompts is not None:
        if result.prompts.is_4d:  # 3D+t: where each prompt lies is a (t, z) slice
            print(f"  prompts: {len(result.prompts)} on time points {_short(result.prompts.times)} (t, z slices "
                  f"{', '.join(f'({t}, {z})' for t, z in result.prompts.slices[:6])}{', ...' if len(result.prompts.slices) > 6 else ''})")  # fmt: skip
        else:
            print(f"  prompts: {len(result.prompts)} on frames {_short(result.prompts.frames)}")
    if record.parents:
        print(f"  lineage: {len(record.parents)} object(s) with a parent")
    if settings:
        keys = ("direction", "axis_name", "stream_axis", "channel", "window", "preset")
        shown = [f"{k}={settings.get(k)}" for k in keys if k in settings]
        if "z" in result.axes:  # the axial edge rule the labels were made with (none recorded: made before it, off)
            z_edge = settings.get("z_edge")
            shown.append("z_edge=off" if z_edge is None else f"z_edge={z_edge} ({_z_edge_background_text(record)})")
        shown.append(_contrast_text(settings))
        shown.append(_click_rule_text(settings))
        print("  settings: " + ", ".join(shown))
    if record.input:
        print("  input: " + ", ".join(f"{k}={v}" for k, v in record.input.items()))
    print(f"  made by {record.tool or '?'} on {record.created or '?'} with napari-sam2 {record.package_version or '?'}")
    if len(result.finished_frames) < n:
        print("  incomplete: finish it with `napari-sam2 track IMAGE --out STORE --resume`")
    return EXIT_OK


def _z_edge_background_text(record) -> str:
    """ "background: ring percentile 10": the axial edge rule's background (`volume_time.Z_EDGE_BACKGROUND`) as the
    store records it (its settings; a widget z-stack: its log's "edge" entries; none: made before session 12, the
    median)."""
    from .volume_time import Z_EDGE_BACKGROUND_BEFORE

    background = record.settings.get("z_edge_background")
    if background is None:
        edges = [e for e in record.edit_log or () if e.get("op") == "edge"]
        background = edges[-1].get("background", Z_EDGE_BACKGROUND_BEFORE) if edges else Z_EDGE_BACKGROUND_BEFORE
    return f"background: ring percentile {float(background):g}"


def _click_rule_text(settings: dict) -> str:
    """ "click_rule=fluorescence" / "click_rule=off" (a rule of other constants: its numbers): the click rule the labels
    were made with (none recorded: made before the rule, off)."""
    from dataclasses import fields

    from .click_rule import CLICK_RULES, click_rule_from_record

    rule = click_rule_from_record(settings)
    name = next((k for k, v in CLICK_RULES.items() if v == rule), None)
    if name:
        return f"click_rule={name}"
    # e.g. the fluorescence rule of an earlier version (before its ceiling step): every constant, as recorded
    return "click_rule=(" + ", ".join(f"{f.name}={getattr(rule, f.name)}" for f in fields(rule)) + ")"


def _contrast_text(settings: dict) -> str:
    """ "contrast=global" / "contrast=local" (with local's constants when they are not the defaults): the contrast step
    the labels were made with (none recorded: made before the option, global)."""
    from .preprocess import contrast_from_record, contrast_step

    step = contrast_from_record(settings)
    if step == contrast_step(step.name):
        return f"contrast={step.name}"
    constants = ", ".join(
        f"{k}={'fitted' if v is None else format(v, 'g')}" for k, v in step.record()["local_contrast"].items()
    )
    return f"contrast={step.name} ({constants})"


def _cmd_replay(args) -> int:
    from .replay import replay

    _check_device(args.device)
    result = replay(args.store, image=args.image, model=args.model, device=args.device, threads=args.threads)
    n = result.labels.shape[0]
    if result.identical:
        print(f"replayed {args.store}: identical labels on all {n} frames")
        return EXIT_OK
    _error(
        f"replaying {args.store} gives other labels on {len(result.differing_frames)} of {n} frames "
        f"({_short(result.differing_frames)}; {result.differing_pixels} pixels): other thread count, device or "
        "package version than the recording?"
    )
    return EXIT_INPUT


def _short(values, limit: int = 12) -> str:
    values = list(values)
    text = ", ".join(str(v) for v in values[:limit])
    return text + (f", … ({len(values)} in all)" if len(values) > limit else "")


# ---------------------------------------------------------------------- demo
def _cmd_demo(args) -> int:
    import tempfile
    from pathlib import Path

    import tifffile

    from .api import track
    from .errors import InputError
    from .sample_data import nuclei_timelapse, write_ctc_ground_truth

    if not 64 <= args.size <= 2048 or not 2 <= args.frames <= 1000:  # the sample is made in memory, whole
        raise InputError(f"demo: --size must be 64…2048 pixels and --frames 2…1000; got {args.size} and {args.frames}")
    if args.out is None:  # never into the working tree unless asked
        out = Path(tempfile.mkdtemp(prefix="napari-sam2-demo-"))
    else:
        out = Path(args.out)
        earlier = [p.name for p in (out / "nuclei.ome.zarr", out / "01_RES") if p.exists()]
        if earlier and not args.overwrite:
            raise InputError(
                f"{out} already holds the results of an earlier demo ({', '.join(earlier)}); pass --overwrite to "
                "replace them, or choose another --out (or none: a new temporary folder)"
            )
        out.mkdir(parents=True, exist_ok=True)
    _check_device(args.device)
    sample = nuclei_timelapse(n_frames=args.frames, shape=(args.size, args.size))
    image_path = out / "nuclei.tif"
    tifffile.imwrite(image_path, sample.image, metadata={"axes": "TYX"}, photometric="minisblack")
    tifffile.imwrite(out / "seeds.tif", sample.labels[0], photometric="minisblack")
    write_ctc_ground_truth(sample, out / "01_GT", overwrite=True)
    bar = None if args.quiet else ProgressBar("demo")
    try:
        result = track(
            image_path,
            sample.labels[0],
            model=args.model,
            axis="t",
            out=out / "nuclei.ome.zarr",
            direction="forward",
            device=args.device,
            ctc=out / "01_RES",
            progress=bar,
            overwrite=args.overwrite,
        )
    finally:
        if bar is not None:
            bar.close()
    print(f"store: {result.path}\ntable: {result.csv_path}\nCTC:   {result.ctc_path} (ground truth: {out / '01_GT'})")
    print(_ctc_scores(out / "01_RES", out / "01_GT"))
    return EXIT_OK


def _ctc_scores(res, gt) -> str:
    """One line with the Cell Tracking Challenge TRA and DET scores of `res` against `gt` (py-ctcmetrics)."""
    import contextlib
    import io

    try:
        from ctc_metrics import evaluate_sequence
    except ImportError:
        return "TRA: not computed; pip install py-ctcmetrics (or napari-sam2[all]) to score against the ground truth"
    with contextlib.redirect_stdout(io.StringIO()):  # py-ctcmetrics prints its raw result dict
        scores = evaluate_sequence(str(res), str(gt), ["Valid", "DET", "TRA"], threads=1)
    if not scores.get("Valid"):
        return "TRA: not computed; py-ctcmetrics judged the exported result invalid"
    return f"TRA: {scores['TRA']:.4f}  DET: {scores['DET']:.4f}  (CTC measures against the ground truth; 1 = perfect)"


if __name__ == "__main__":
    sys.exit(main())
