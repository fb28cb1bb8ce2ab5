"""Scale-out on Dask: a plate of stacks tracked in parallel, or one long movie's image features encoded in parallel.

    import napari_sam2
    run = napari_sam2.track_many("plate/*.tif", "seeds/{name}_seeds.tif", "out/", model="sam2.1_hiera_tiny")
    run.rows        # one StackRow per stack: input, output, status, frames, objects, seconds, error
    napari_sam2.encode("movie.tif", "features/", model="sam2.1_hiera_tiny")   # then track(..., embedding_cache=)

Nothing here schedules, queues or pools: Dask does. `track_many` submits one task per stack; each task is
`napari_sam2.track(..., resume=True)` into its own OME-Zarr store `OUT/<name>.ome.zarr`, so

- a worker that dies mid-stack is replaced by the scheduler (up to `distributed.scheduler.allowed-failures`
  times) and the task, run again elsewhere, replays the finished part and writes only the frames that are missing:
  the labels are identical to an uninterrupted run (see `track`'s `resume`);
- a stack that fails (unreadable file, bad prompts) fails alone, with its message in its row;
- stacks whose store is already complete are skipped before any cluster work, so re-running a command is cheap.

Without `client` a `distributed.LocalCluster` of process workers is started (and closed at the end), with torch
threads per worker set so that workers × threads = the CPU cores; `scheduler="tcp://host:8786"` connects to a
running cluster instead (e.g. one started by dask-jobqueue on SLURM, see the README).

`encode` splits the frames of one stack into chunks, one task per chunk, each filling the on-disk embedding cache
(`embedding_cache.py`) for its frames. Every frame is its own set of chunk files in that store (features and pixel
digest), so tasks write disjoint files and never race; the store itself is created by a first one-frame task before
the others start. A later `track(..., embedding_cache=DIR)` then runs the image encoder on no frame.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError

__all__ = ["EncodeResult", "StackRow", "TrackManyResult", "encode", "local_cluster", "stack_name", "track_many"]

log = logging.getLogger(__name__)

SUMMARY_NAME = "track_many_summary.csv"
STORE_SUFFIX = ".ome.zarr"
_IMAGE_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".ome.zarr", ".zarr", ".npy", ".nii.gz", ".nii")
# settings a stack's track() may take from track_many (the rest are fixed by track_many itself)
_TRACK_OPTIONS = (
    "model",
    "axis",
    "direction",
    "channel",
    "device",
    "window",
    "contrast",
    "click_rule",
    "seed_frame",
    "preset",
    "save_image",
    "tables",
    "scale",
    "embedding_cache",
    "discover",
    "auto",
)


@dataclass
class StackRow:
    """One stack of a `track_many` run (a row of the summary table).

    status: "done" (tracked by this run), "skipped" (its store was already complete) or "failed" (see `error`).
    frames: frames in the stack; objects: distinct object ids in its labels; seconds: wall time of its task
    (including any replay after a worker died); resumed_frames: frames already finished in its store when the
    task that completed it started (> 0 after an interruption); worker: the Dask worker that finished it.
    """

    input: str
    output: str
    status: str = "pending"
    frames: int = 0
    objects: int = 0
    seconds: float = 0.0
    resumed_frames: int = 0
    error: str = ""
    worker: str = ""


@dataclass
class TrackManyResult:
    """What `track_many` did: `rows` in input order, the summary CSV, the dashboard link (None if none ran)."""

    rows: list[StackRow]
    summary_path: Path
    dashboard: str | None = None

    @property
    def failed(self) -> list[StackRow]:
        return [r for r in self.rows if r.status == "failed"]

    def table(self) -> str:
        """The summary as an aligned text table (what the CLI prints)."""
        head = ("stack", "status", "frames", "objects", "seconds", "error")
        body = [
            (Path(r.input).name, r.status, str(r.frames), str(r.objects), f"{r.seconds:.1f}", r.error)
            for r in self.rows
        ]
        widths = [max(len(head[i]), *(len(b[i]) for b in body)) if body else len(head[i]) for i in range(5)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(head[:5], widths)) + "  error"]
        lines += ["  ".join(c.ljust(w) for c, w in zip(b[:5], widths)) + ("  " + b[5] if b[5] else "") for b in body]
        return "\n".join(line.rstrip() for line in lines)


@dataclass
class EncodeResult:
    """What `encode` did: frames in the stack, frames the encoder ran on (the rest were already cached), tasks
    submitted, the embedding store's path, wall seconds."""

    frames: int
    encoded: int
    cached: int
    tasks: int
    store: Path | None
    seconds: float
    dashboard: str | None = None
    per_task: list[dict] = field(default_factory=list)


# ---------------------------------------------------------------------- naming inputs and their prompts
def stack_name(path: str | os.PathLike) -> str:
    """A stack's name: its file name without the image suffix (`plate/A01.ome.tif` → `A01`)."""
    name = Path(path).name
    for suffix in _IMAGE_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return Path(name).stem or name


def _expand_inputs(inputs) -> list[Path]:
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    paths: list[Path] = []
    for item in inputs:
        text = os.fspath(item)
        if glob.has_magic(text):
            matches = sorted(glob.glob(os.path.expanduser(text)))
            if not matches:
                raise InputError(f"no file matches {text!r}")
            paths += [Path(os.path.abspath(m)) for m in matches]
        else:
            paths.append(Path(os.path.abspath(os.path.expanduser(text))))
    if not paths:
        raise InputError("no input stacks given")
    seen: dict[str, Path] = {}
    for p in paths:
        name = stack_name(p)
        if name in seen and seen[name] != p:
            raise InputError(
                f"{seen[name]} and {p} would both be written to {name}{STORE_SUFFIX}; give inputs distinct names"
            )
        seen[name] = p
    return list(dict.fromkeys(paths))


def _prompts_for(source, path: Path, index: int, n: int):
    """The prompts of one stack from `prompts_or_seeds` (see `track_many`); raises InputError for this stack."""
    name = stack_name(path)
    if source is None:
        return None
    if callable(source) and not hasattr(source, "shape"):
        return source(path)
    if isinstance(source, Mapping):
        for key in (os.fspath(path), str(path), path.name, name):
            if key in source:
                return source[key]
        raise InputError(f"no prompts for {path} in the mapping given (keys are paths, file names or stack names)")
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if "{" in text:
            try:
                found = Path(
                    os.path.abspath(os.path.expanduser(text.format(name=name, stem=name, parent=str(path.parent))))
                )
            except (KeyError, IndexError, ValueError) as exc:
                raise InputError(f"bad pattern {text!r}: use {{name}} (and {{parent}}); {exc}") from None
            if not found.exists():
                raise InputError(f"{found} (the pattern {text!r} for {path.name}) does not exist")
            return found
        folder = Path(os.path.abspath(os.path.expanduser(text)))
        if folder.is_dir():
            for suffix in (".json", ".csv"):
                if (folder / f"{name}{suffix}").is_file():
                    return folder / f"{name}{suffix}"
            raise InputError(f"no prompts file for {path.name} in {folder} (looked for {name}.json and {name}.csv)")
        return folder  # one prompts or seeds file for every stack
    if isinstance(source, Sequence) and not isinstance(source, (bytes, str)) and not hasattr(source, "shape"):
        if len(source) != n:
            raise InputError(f"{len(source)} prompts given for {n} input stacks; give one per stack")
        return source[index]
    return source  # a PromptSet or a seed label array: the same for every stack


# ---------------------------------------------------------------------- the cluster
def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _require_distributed():
    try:
        import distributed
    except ImportError:
        raise InputError(
            "scale-out needs Dask's distributed scheduler: pip install 'napari-sam2[dask]' "
            "(dask[distributed] and bokeh for the dashboard)"
        ) from None
    return distributed


@contextmanager
def _connect(client, scheduler: str | None, workers: int | None, retries: int, default_workers: int):
    """Yield (client, workers in the cluster). Starts (and closes) a LocalCluster unless given a client/address."""
    distributed = _require_distributed()
    if client is not None:
        yield client, len(client.scheduler_info().get("workers", {})) or 1
        return
    if scheduler not in (None, "", "local"):
        try:
            c = distributed.Client(scheduler, timeout="30s")
        except OSError as exc:
            raise InputError(
                f"cannot reach the Dask scheduler at {scheduler} ({exc}); is the cluster running?"
            ) from None
        try:
            yield c, len(c.scheduler_info().get("workers", {})) or 1
        finally:
            c.close()
        return
    n = workers or default_workers
    try:
        import bokeh  # noqa: F401  (the dashboard needs it; without it, no dashboard and no warning)

        dashboard = ":0"  # any free port: several runs (or users) on one machine must not collide on 8787
    except ImportError:
        dashboard = None
    cluster = local_cluster(n, dashboard=dashboard, allowed_failures=max(3, retries))
    c = distributed.Client(cluster)
    try:
        yield c, n
    finally:
        c.close()
        cluster.close()


def local_cluster(n_workers: int, *, dashboard: str | None = None, allowed_failures: int = 3):
    """A `distributed.LocalCluster` of `n_workers` single-threaded process workers, as `track_many` starts it.

    Each task sets its own torch threads, so the nanny is told not to export OMP_NUM_THREADS / MKL_NUM_THREADS /
    OPENBLAS_NUM_THREADS=1: it sets them in *this* process's environment before spawning a worker, where they
    would stay and change the thread count (and so the last bits of float results) of any later subprocess.
    A worker that dies is replaced, and its task rescheduled up to `allowed_failures` times.
    """
    import dask
    import distributed

    keep_env = {f"distributed.nanny.pre-spawn-environ.{k}": None for k in _THREAD_VARS}
    with dask.config.set({**keep_env, "distributed.scheduler.allowed-failures": allowed_failures}):
        return distributed.LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=dashboard,
            silence_logs=logging.ERROR,
        )


_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _dashboard(client) -> str | None:
    """The Dask dashboard's URL, or None when the scheduler serves none (e.g. bokeh is not installed)."""
    try:
        if "dashboard" not in client.scheduler_info().get("services", {}):
            return None
        return client.dashboard_link
    except Exception:  # noqa: BLE001  (the link is only informative)
        return None


def _set_torch_threads(threads: int | None) -> int:
    """Inside a task: pin torch's intra-op threads (Dask's nanny sets OMP_NUM_THREADS=1 in workers)."""
    import torch

    if not threads:
        try:
            from distributed import get_worker

            per_worker = get_worker().state.nthreads
        except (ImportError, ValueError, AttributeError):
            per_worker = 1
        threads = max(1, _cores() // max(1, per_worker))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return "local"


# ---------------------------------------------------------------------- track_many
def _store_complete(out: Path) -> tuple[bool, int, int]:
    """(complete, frames, objects) of an existing result store; (False, 0, 0) if absent or unreadable."""
    if not out.exists():
        return False, 0, 0
    from .io.ome_zarr import LabelStore

    try:
        store = LabelStore.open(out, mode="r")
        frames = store.shape[0]
        complete = store.provenance.get("status") == "complete" and len(store.finished_frames()) == frames
        return complete, frames, len(store.colors)
    except Exception:  # noqa: BLE001  (not finished or not ours: the task's track() says what is wrong)
        return False, 0, 0


def _track_stack(spec: dict) -> dict:
    """One Dask task: track one stack into its store with resume semantics; returns its StackRow as a dict.

    Errors of the input (file, prompts, store, model) are returned in the row, never retried; anything else
    raises, so Dask retries the task (`retries`)."""
    from .api import ModelNameError, track
    from .io.ome_zarr import LabelStore, LabelStoreError

    start = time.perf_counter()
    row = StackRow(spec["input"], spec["output"], worker=_worker_address())
    _set_torch_threads(spec.get("torch_threads"))
    out = Path(spec["output"])
    complete, frames, objects = _store_complete(out)
    if complete:  # e.g. a retry of a task whose worker died after it finished
        row.status, row.frames, row.objects, row.resumed_frames = "done", frames, objects, frames
        row.seconds = time.perf_counter() - start
        return asdict(row)
    try:
        if out.exists():
            try:
                row.resumed_frames = len(LabelStore.open(out, mode="r").finished_frames())
            except LabelStoreError:
                pass  # track() below explains what is wrong with it
        result = track(spec["input"], spec["prompts"], out=out, resume=True, **spec["options"])
        row.status = "done"
        row.frames = int(result.labels.shape[0])
        row.objects = len(result.store.colors) if result.store is not None else 0
    except (InputError, LabelStoreError, ModelNameError) as exc:
        row.status, row.error = "failed", _message(exc)
    except (OSError, ValueError, KeyError) as exc:  # e.g. a truncated TIFF: the reader's words, and what to do
        row.status = "failed"
        row.error = f"cannot track {Path(spec['input']).name}: {type(exc).__name__}: {_message(exc)} (is the file "
        row.error += "damaged or truncated? re-copy or re-export it)"
    except Exception as exc:
        from .model import CheckpointError
        from .registry import ChecksumError, ModelNotAvailableError

        if isinstance(exc, (CheckpointError, ChecksumError, ModelNotAvailableError)):
            row.status, row.error = "failed", _message(exc)
        else:
            raise
    row.seconds = time.perf_counter() - start
    return asdict(row)


def _message(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    return " ".join(text.split())  # one line: it is a CSV cell and a table cell


def track_many(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    prompts_or_seeds,
    out_dir: str | os.PathLike,
    *,
    client=None,
    scheduler: str | None = None,
    workers: int | None = None,
    torch_threads: int | None = None,
    retries: int = 2,
    resources: Mapping[str, float] | None = None,
    progress: bool | Callable[[StackRow, int, int], Any] = True,
    frame_progress: Callable[[int, int], Any] | None = None,
    overwrite: bool = False,
    **track_options,
) -> TrackManyResult:
    """Track many stacks in parallel on Dask, one task per stack, each into `out_dir/<name>.ome.zarr`.

    inputs: paths or glob patterns ("plate/*.tif"), or a list of them; `name` is the file name without its image
        suffix (`stack_name`); two inputs with one name are refused.
    prompts_or_seeds: per stack, what `track` takes as `prompts`: a pattern with `{name}` (and `{parent}`), e.g.
        "seeds/{name}_seeds.tif" (seed labels) or "prompts/{name}.json"; a directory holding `<name>.json` or
        `<name>.csv`; a mapping {path | file name | name: prompts}; a list aligned with the inputs; a callable
        path → prompts; a single file / PromptSet / seed array for every stack; or None with auto=True (each
        stack segments its seed frame itself, see `track`) or to only resume stores.
    out_dir: created if needed; also receives `track_many_summary.csv` and each stack's region/confidence CSVs.
        A summary file there that track_many did not write is refused before any work (OutputExistsError) unless
        `overwrite` (it replaces only that file: stores are always resumed or skipped, never replaced).
    client: a `distributed.Client` to use (not closed). Else scheduler: "local" / None starts a LocalCluster of
        `workers` process workers (default: half the cores, at most one per stack) closed at the end; an address
        ("tcp://host:8786") connects to a running cluster.
    torch_threads: torch threads per task (default: cores // Dask threads of the worker running it, so that
        workers × threads = cores on a LocalCluster).
    retries: Dask retries of a task that raised an unexpected error (input errors are not retried; they fail their
        stack); a worker that dies is replaced up to max(3, retries) times on a LocalCluster started here (on
        another cluster its `distributed.scheduler.allowed-failures`).
    resources: Dask resources each task needs, e.g. {"GPU": 1} with workers started `--resources GPU=1`, so one
        stack runs per GPU (tasks wait forever if no worker has them).
    progress: True prints one line per finished stack on stderr; a callable gets (row, finished, total).
    frame_progress: `track`'s per-frame progress(frames_done, frames_total), called inside the worker (it must
        pickle; its output goes to the worker's log).
    track_options: passed to every stack's `track`: model, axis, direction, channel, device, window, contrast,
        click_rule, seed_frame, preset, save_image, tables, scale, embedding_cache, discover, auto.

    Returns a `TrackManyResult` (rows in input order; the summary is also written as CSV). Stacks whose store is
    already complete are skipped without any cluster work; interrupted stores are resumed.
    """
    unknown = set(track_options) - set(_TRACK_OPTIONS)
    if unknown:
        raise TypeError(f"track_many() got unexpected options {sorted(unknown)}; track options: {_TRACK_OPTIONS}")
    paths = _expand_inputs(inputs)
    out_dir = Path(os.path.abspath(os.path.expanduser(out_dir)))  # workers may run in another directory
    summary_path = out_dir / SUMMARY_NAME
    _check_summary(summary_path, overwrite)  # before any work: a refusal after hours of tracking would be cruel
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[StackRow] = []
    todo: list[tuple[int, dict]] = []
    for k, path in enumerate(paths):
        out = out_dir / f"{stack_name(path)}{STORE_SUFFIX}"
        row = StackRow(str(path), str(out))
        rows.append(row)
        complete, frames, objects = _store_complete(out)
        if complete:
            row.status, row.frames, row.objects, row.resumed_frames = "skipped", frames, objects, frames
            continue
        try:
            prompts = _prompts_for(prompts_or_seeds, path, k, len(paths))
            if prompts is None and not out.exists() and not track_options.get("auto"):
                raise InputError(f"no prompts for {path.name} and no store {out} to resume (or use auto=True)")
        except InputError as exc:
            row.status, row.error = "failed", _message(exc)
            continue
        spec = {
            "input": str(path),
            "output": str(out),
            "prompts": prompts,
            "options": {**_absolute_paths(track_options), "progress": frame_progress},
            "torch_threads": torch_threads,
        }
        todo.append((k, spec))

    report = _reporter(progress, len(rows))
    for row in rows:
        if row.status != "pending":
            report(row)
    dashboard = None
    if todo:
        default_workers = max(1, min(len(todo), _cores() // 2))
        with _connect(client, scheduler, workers, retries, default_workers) as (c, n_workers):
            if client is None and scheduler in (None, "", "local") and torch_threads is None:
                threads = max(1, _cores() // n_workers)
                for _, spec in todo:
                    spec["torch_threads"] = threads
            dashboard = _dashboard(c)
            if dashboard and progress:
                _say(f"Dask dashboard: {dashboard}")
            _run_stacks(c, todo, rows, retries, resources, report)
    summary = _write_summary(rows, summary_path)
    return TrackManyResult(rows, summary, dashboard)


def _absolute_paths(options: dict) -> dict:
    """Relative model / embedding-cache paths made absolute: a worker may run in another directory."""
    out = dict(options)
    cache = out.get("embedding_cache")
    if cache is not None:
        out["embedding_cache"] = os.path.abspath(os.path.expanduser(cache))
    model = out.get("model")
    if isinstance(model, (str, os.PathLike)):  # a registry name stays a name
        text = os.fspath(model)
        if os.sep in text or text.endswith(".pt") or os.path.exists(text):
            out["model"] = os.path.abspath(os.path.expanduser(text))
    return out


def _run_stacks(client, todo, rows, retries, resources, report) -> None:
    from distributed import as_completed

    futures = {}
    for k, spec in todo:
        name = stack_name(spec["input"])
        fut = client.submit(
            _track_stack, spec, key=f"track-{name}-{os.urandom(4).hex()}", retries=retries, resources=resources
        )
        futures[fut] = k
    for fut in as_completed(list(futures)):
        k = futures[fut]
        try:
            rows[k] = StackRow(**fut.result())
        except Exception as exc:  # noqa: BLE001  (retries exhausted or the worker died too often: this stack only)
            rows[k].status = "failed"
            rows[k].error = _task_error(exc)
        report(rows[k])


def _task_error(exc: BaseException) -> str:
    if type(exc).__name__ == "KilledWorker":
        return "the worker running it died on every attempt (out of memory? see the worker logs)"
    return f"{type(exc).__name__}: {_message(exc)}"


_SUMMARY_COLUMNS = ("input", "output", "status", "frames", "objects", "seconds", "resumed_frames", "error", "worker")


def _summary_is_ours(path: Path) -> bool:
    """A summary written by track_many: a plain file whose header is exactly our columns. (A run has no store of
    its own to record the file in, as a store records its side files in io/outputs.py; the header is the record.)"""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with path.open(newline="") as f:
            header = f.readline(4096)
    except (OSError, UnicodeDecodeError):
        return False
    return header.rstrip("\r\n") == ",".join(_SUMMARY_COLUMNS)


def _check_summary(path: Path, overwrite: bool) -> None:
    """Refuse to replace a file at the summary's path that track_many did not write (as io/outputs.py refuses a
    side file a store did not record), unless `overwrite`."""
    if overwrite or not os.path.lexists(path) or _summary_is_ours(path):
        return
    from .io.outputs import OutputExistsError

    raise OutputExistsError(
        f"{path} exists and was not written by track-many, so it is not replaced; move it away, choose another "
        "--out-dir, or pass --overwrite (overwrite=True) to replace that file"
    )


def _write_summary(rows: list[StackRow], path: Path) -> Path:
    from .analysis import write_csv

    cols = _SUMMARY_COLUMNS
    return write_csv(
        [{c: round(getattr(r, c), 2) if c == "seconds" else getattr(r, c) for c in cols} for r in rows], path
    )


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _reporter(progress, total: int) -> Callable[[StackRow], None]:
    count = 0

    def report(row: StackRow) -> None:
        nonlocal count
        count += 1
        if callable(progress):
            progress(row, count, total)
        elif progress:
            detail = row.error if row.status == "failed" else f"{row.frames} frames, {row.objects} objects"
            _say(f"[{count}/{total}] {Path(row.input).name}: {row.status} ({detail}) {row.seconds:.1f} s")

    return report


# ---------------------------------------------------------------------- encode
_MODELS: dict[tuple, Any] = {}  # per worker process: the model loaded by an earlier chunk task


def _open_session(
    stack, model, axis, channel, window, device, embedding_cache, feature_cache_bytes=1 << 30, contrast=None
):
    """A TrackingSession over `stack` built as `track` builds it (same axis, channel and intensity resolution),
    so that its embedding-cache key equals that of a later `track(..., embedding_cache=...)`."""
    from .api import _channel_axis, _frame_shape, _load_model, _open_input, _stream_letter
    from .io.readers import parse_window, resolve_axis
    from .preprocess import IntensityRange
    from .session import TrackingSession

    opened = _open_input(stack)
    ax = resolve_axis(axis, opened.axes, len(opened.shape), opened.axes_known)
    channel_axis = _channel_axis(opened, ax)
    _frame_shape(opened.shape, ax, channel_axis)
    intensity = window if isinstance(window, IntensityRange) else parse_window(window)
    key = (os.fspath(model) if isinstance(model, (str, os.PathLike)) else id(model), device)
    if key not in _MODELS:
        _MODELS.clear()  # one model per worker at a time
        _MODELS[key] = _load_model(model, device)[0]
    return TrackingSession(
        _MODELS[key],
        opened.data,
        axis=ax,
        channel=channel,
        channel_axis=channel_axis,
        intensity=intensity,
        embedding_cache=embedding_cache,
        feature_cache_bytes=feature_cache_bytes,
        contrast=contrast,  # None: the model's default, as track()
        z_stream=_stream_letter(axis, opened.axes[ax]) == "z",  # (a z stream's default contrast, as track())
    )


def _encode_chunk(spec: dict) -> dict:
    """One Dask task: encode `spec["frames"]` of a stack into the embedding cache (frames already there: none)."""
    start = time.perf_counter()
    _set_torch_threads(spec.get("torch_threads"))
    session = _open_session(
        spec["stack"],
        spec["model"],
        spec["axis"],
        spec["channel"],
        spec["window"],
        spec["device"],
        spec["embedding_cache"],
        feature_cache_bytes=0,  # features go to disk only; nothing is kept in memory
        contrast=spec.get("contrast"),
    )
    try:
        if session.embeddings is None or session.embeddings.path is None:
            raise InputError(f"cannot use {spec['embedding_cache']} as an embedding cache (see the worker log)")
        session.encode_frames(spec["frames"])
        store = session.embeddings
        return {
            "frames": len(spec["frames"]),
            "encoded": session.encoder_runs,
            "cached": store.hits,
            "store": str(store.path),
            "parallel_safe": store.parallel_safe,
            "seconds": time.perf_counter() - start,
            "worker": _worker_address(),
        }
    finally:
        session.close()


def encode(
    stack: str | os.PathLike,
    embedding_cache: str | os.PathLike,
    model: str | os.PathLike | None = None,
    *,
    axis: int | str | None = None,
    channel: int | None = None,
    window=None,
    contrast=None,
    device: str = "auto",
    client=None,
    scheduler: str | None = None,
    workers: int | None = None,
    torch_threads: int | None = None,
    chunk_frames: int | None = None,
    retries: int = 2,
    progress: bool = True,
) -> EncodeResult:
    """Fill the on-disk embedding cache of one stack in parallel: image features of every frame, so that a later
    `track(stack, ..., embedding_cache=embedding_cache)` with the same model, axis, channel and window runs the
    image encoder on no frame (only memory attention and the heads, which are sequential).

    stack: a path (TIFF, Zarr, .npy, NIfTI) the workers can read. model: registry name or checkpoint path
    (default sam2.1_hiera_tiny). axis / channel / window / contrast / device: as in `track` (they determine the
    features).
    client / scheduler / workers / torch_threads / retries: as in `track_many`. chunk_frames: frames per task
    (default: about four tasks per worker). Frames already in the cache are not encoded again.
    """
    from . import registry
    from .api import _open_input

    _require_distributed()
    start = time.perf_counter()
    model = registry.DEFAULT_MODEL if model is None else model
    opened = _open_input(stack)
    if opened.format == "array":
        raise InputError("encode() needs a path to the stack (workers read it themselves), not an in-memory array")
    from .io.readers import resolve_axis

    ax = resolve_axis(axis, opened.axes, len(opened.shape), opened.axes_known)
    n_frames = int(opened.shape[ax])
    base = {
        "stack": os.path.abspath(opened.path),  # workers may run in another directory
        "model": _absolute_paths({"model": model})["model"],
        "axis": ax,
        "channel": channel,
        "window": window,
        "contrast": contrast,
        "device": device,
        "embedding_cache": os.path.abspath(os.path.expanduser(embedding_cache)),
        "torch_threads": torch_threads,
    }
    dashboard = None
    results: list[dict] = []
    default_workers = max(1, min(n_frames, _cores() // 2))
    with _connect(client, scheduler, workers, retries, default_workers) as (c, n_workers):
        if client is None and scheduler in (None, "", "local") and torch_threads is None:
            base["torch_threads"] = max(1, _cores() // n_workers)
        dashboard = _dashboard(c)
        if dashboard and progress:
            _say(f"Dask dashboard: {dashboard}")
        # 1. one frame first: the task that creates the store is alone (creation writes the shared metadata)
        first = c.submit(_encode_chunk, {**base, "frames": [0]}, key=f"encode-0-{os.urandom(4).hex()}", retries=retries)
        results.append(first.result())
        rest = list(range(1, n_frames))
        if not results[0]["parallel_safe"]:  # a store from an older layout: its digests share one chunk
            log.warning("%s keeps all digests in one chunk: encoding with one task", results[0]["store"])
            chunks = [rest] if rest else []
        else:
            size = chunk_frames or max(1, math.ceil(len(rest) / (4 * max(1, n_workers))))
            chunks = [rest[i : i + size] for i in range(0, len(rest), size)]
        # 2. the other frames in disjoint chunks: every frame's files are written by one task only
        futures = [
            c.submit(
                _encode_chunk, {**base, "frames": ch}, key=f"encode-{ch[0]}-{os.urandom(4).hex()}", retries=retries
            )
            for ch in chunks
        ]
        from distributed import as_completed

        done_frames = 1
        for fut in as_completed(futures):
            res = fut.result()
            results.append(res)
            done_frames += res["frames"]
            if progress:
                _say(f"encoded {done_frames}/{n_frames} frames ({res['seconds']:.1f} s on {res['worker']})")
    return EncodeResult(
        frames=n_frames,
        encoded=sum(r["encoded"] for r in results),
        cached=sum(r["cached"] for r in results),
        tasks=len(results),
        store=Path(results[0]["store"]) if results else None,
        seconds=time.perf_counter() - start,
        dashboard=dashboard,
        per_task=results,
    )


# ---------------------------------------------------------------------- the command line (`napari-sam2 track-many`, `napari-sam2 encode`)
def add_cli_parsers(sub) -> None:
    """Add the `track-many` and `encode` sub-commands to the `napari-sam2` parser (see `cli.py`)."""
    t = sub.add_parser(
        "track-many",
        help="track many stacks in parallel on Dask, one task per stack, each into OUT/<name>.ome.zarr",
        description="Each stack is tracked by `napari-sam2 track --resume` semantics into its own store: "
        "finished stacks are skipped, interrupted ones resumed, a stack that fails fails alone. "
        "Exit code 1 if any stack failed (see the summary table).",
    )
    t.add_argument("inputs", nargs="+", metavar="IMAGE", help="stacks or quoted glob patterns ('plate/*.tif')")
    source = t.add_mutually_exclusive_group(required=True)
    source.add_argument("--seeds-pattern", metavar="PATTERN",
                        help="seed labels per stack, {name} = the stack's file name without suffix, "
                        "e.g. 'seeds/{name}_seeds.tif'")  # fmt: skip
    source.add_argument("--prompts-dir", metavar="DIR", help="prompts files DIR/<name>.json or DIR/<name>.csv")
    source.add_argument("--prompts", metavar="FILE", help="one prompts file (.json/.csv) for every stack")
    source.add_argument("--auto", action="store_true",
                        help="no prompts: each stack segments everything on its seed frame, then tracks and "
                        "discovers new cells and divisions (as track --auto)")  # fmt: skip
    t.add_argument("--points-per-side", type=int, default=None, metavar="N",
                   help="segment-everything grid of --auto and discovery (as track)")  # fmt: skip
    t.add_argument("--discover-every", type=int, default=None, metavar="K",
                   help="discovery every K frames (as track)")  # fmt: skip
    t.add_argument("--out-dir", required=True, metavar="OUT", help="folder of the result stores and the summary")
    _cluster_options(t)
    t.add_argument("--resources", default=None, metavar="NAME=N[,NAME=N]",
                   help="Dask resources per stack, e.g. GPU=1 with workers started --resources GPU=1")  # fmt: skip
    _stack_options(t)
    t.add_argument("--click-rule", default=None, choices=["fluorescence", "off"],
                   help="how frames prompted with clicks are read, as track (default: the model's)")  # fmt: skip
    t.add_argument("--direction", default="both", choices=["forward", "backward", "both"], help="as track (both)")
    t.add_argument("--seed-frame", type=int, default=0, metavar="N", help="frame the seed labels belong to (0)")
    t.add_argument("--no-image", action="store_true", help="do not copy the images into the stores")
    t.add_argument("--embedding-cache", default=None, metavar="DIR", help="keep image features on disk here")
    t.add_argument("--overwrite", action="store_true",
                   help=f"replace an OUT/{SUMMARY_NAME} that track-many did not write (stores are never replaced: "
                   "finished ones are skipped, interrupted ones resumed)")  # fmt: skip
    t.add_argument("--quiet", "-q", action="store_true", help="no progress lines, no table")

    e = sub.add_parser(
        "encode",
        help="fill the on-disk embedding cache of one stack in parallel on Dask (then: track --embedding-cache)",
    )
    e.add_argument("image", help="the stack (a path every worker can read)")
    e.add_argument("--embedding-cache", required=True, metavar="DIR", help="the embedding cache folder")
    _stack_options(e)
    _cluster_options(e)
    e.add_argument("--chunk-frames", type=int, default=None, metavar="N",
                   help="frames per task (default: about four tasks per worker)")  # fmt: skip
    e.add_argument("--quiet", "-q", action="store_true", help="no progress lines, no summary")


def _stack_options(p) -> None:
    p.add_argument("--model", default=None, metavar="NAME|PATH", help="registry name or checkpoint path "
                   "(default sam2.1_hiera_tiny; on resumed stores the recorded one)")  # fmt: skip
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="on the workers")
    p.add_argument("--axis", default=None, metavar="t|z|INDEX", help="stream axis (default: t, else z, else 0)")
    p.add_argument("--channel", type=int, default=None, metavar="N", help="channel of multichannel data")
    p.add_argument("--window", default=None, metavar="LO,HI", help="fixed intensity window instead of percentiles")
    p.add_argument("--contrast", default=None, choices=["global", "local"],
                   help="contrast step of the model input, as track (default: the model's)")  # fmt: skip


def _cluster_options(p) -> None:
    p.add_argument("--scheduler", default="local", metavar="local|ADDRESS",
                   help="'local' starts a LocalCluster of process workers; an address (tcp://host:8786) "
                   "uses a running cluster (e.g. dask-jobqueue)")  # fmt: skip
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="workers of the local cluster (default: half the CPU cores)")  # fmt: skip
    p.add_argument("--threads-per-worker", type=int, default=None, metavar="N",
                   help="torch threads per task (default: cores / workers)")  # fmt: skip
    p.add_argument("--retries", type=int, default=2, metavar="N", help="Dask retries of a task that errs (2)")


def _parse_resources(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    out = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise InputError(f"--resources: {part!r} is not NAME=NUMBER (e.g. GPU=1)") from None
        if not name.strip():
            raise InputError(f"--resources: {part!r} is not NAME=NUMBER (e.g. GPU=1)")
    return out


def cmd_track_many(args) -> int:
    """`napari-sam2 track-many`: returns 0 if every stack is done or skipped, 1 if any failed."""
    if args.workers is not None and args.workers < 1:
        raise InputError("--workers must be at least 1")
    from .cli import _discovery

    prompts = args.seeds_pattern or args.prompts_dir or args.prompts
    if args.prompts_dir is not None and not Path(args.prompts_dir).is_dir():
        raise InputError(f"--prompts-dir {args.prompts_dir} is not a folder")
    if args.seeds_pattern is not None and "{name}" not in args.seeds_pattern:
        raise InputError("--seeds-pattern needs {name} (the stack's file name without suffix), e.g. seeds/{name}.tif")
    options = {
        "model": args.model,
        "axis": args.axis,
        "direction": args.direction,
        "channel": args.channel,
        "device": args.device,
        "window": args.window,
        "contrast": args.contrast,
        "click_rule": args.click_rule,
        "seed_frame": args.seed_frame,
        "save_image": not args.no_image,
        "embedding_cache": args.embedding_cache,
    }
    discover = _discovery(args)  # the same rules as `napari-sam2 track`
    if discover is not None:
        options["discover"] = discover
    if args.auto:
        options["auto"] = True
    run = track_many(
        args.inputs,
        prompts,
        args.out_dir,
        scheduler=args.scheduler,
        workers=args.workers,
        torch_threads=args.threads_per_worker,
        retries=args.retries,
        resources=_parse_resources(args.resources),
        progress=not args.quiet,
        overwrite=args.overwrite,
        **options,
    )
    if not args.quiet:
        print(run.table())
        print(f"summary: {run.summary_path}")
    failed = run.failed
    if failed:
        sys.stderr.write(
            f"napari-sam2: error: {len(failed)} of {len(run.rows)} stacks failed (see {run.summary_path}); "
            "fix them and run the same command again: finished stacks are skipped\n"
        )
        return 1
    return 0


def cmd_encode(args) -> int:
    """`napari-sam2 encode`: fill the embedding cache of one stack in parallel."""
    if args.chunk_frames is not None and args.chunk_frames < 1:
        raise InputError("--chunk-frames must be at least 1")
    res = encode(
        args.image,
        args.embedding_cache,
        model=args.model,
        axis=args.axis,
        channel=args.channel,
        window=args.window,
        contrast=args.contrast,
        device=args.device,
        scheduler=args.scheduler,
        workers=args.workers,
        torch_threads=args.threads_per_worker,
        chunk_frames=args.chunk_frames,
        retries=args.retries,
        progress=not args.quiet,
    )
    if not args.quiet:
        print(
            f"encoded {res.encoded} of {res.frames} frames ({res.cached} already cached) in {res.tasks} tasks, "
            f"{res.seconds:.1f} s -> {res.store}"
        )
        print(f"now: napari-sam2 track {args.image} ... --embedding-cache {args.embedding_cache}")
    return 0
