"""One writer per output store: a lock file beside it, `<store>.lock`, naming the process that holds it.

Two runs writing one store interleave their frames (and an `--overwrite` run deletes the store under a running
one), so `track()` holds a `StoreLock` on its output for the whole run, side files included. The lock is an
exclusive `flock` on the lock file (POSIX): the kernel releases it when its process ends in any way (kill -9,
a crash), so a lock file left behind by a dead process is *stale* and simply taken over. The file records the
holder's pid, host and start time, so that a refused run can say who holds the store. Where `flock` is missing
(Windows) the recorded pid is checked instead: a lock of a pid that no longer runs on this host is stale.

Within one process, `is_held_elsewhere(path)` is False for locks this process holds, so the holder itself may
replace (overwrite) the store it locked.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from pathlib import Path

from .ome_zarr import LabelStoreError

try:
    import fcntl
except ImportError:  # Windows: pid-based stale detection only
    fcntl = None

__all__ = ["StoreLock", "StoreLockedError", "is_held_elsewhere", "lock_path"]

_HELD: dict[str, StoreLock] = {}  # resolved store path → the lock this process holds on it


class StoreLockedError(LabelStoreError):
    """Another live process is writing the store."""


def lock_path(store: str | os.PathLike) -> Path:
    """The lock file of a store: `cells.ome.zarr` → `cells.ome.zarr.lock` (beside it, so that replacing the
    store never removes its lock)."""
    store = Path(store)
    return store.parent / f"{store.name}.lock"


def _key(store) -> str:
    return str(Path(os.path.abspath(os.fspath(store))))


def _read_owner(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(owner: dict) -> str:
    if not owner:
        return "another process"
    return f"process {owner.get('pid', '?')} on {owner.get('host', '?')} (since {owner.get('since', '?')})"


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, ValueError, TypeError, OverflowError):
        return True  # exists (another user's) or cannot tell: assume alive
    return True


def _locked_message(store: Path, owner: dict, path: Path) -> str:
    return (
        f"{store} is being written by {_describe(owner)}: wait for it to finish (or stop it), then run again with "
        f"--resume; the lock file is {path}"
    )


class StoreLock:
    """An exclusive writer lock on `store` (see the module docstring). Use as a context manager, or
    `acquire()` / `release()`. Raises `StoreLockedError` naming the holder when a live process has it."""

    def __init__(self, store: str | os.PathLike):
        self.store = Path(store)
        self.path = lock_path(self.store)
        self._fd: int | None = None

    def acquire(self) -> StoreLock:
        key = _key(self.store)
        if key in _HELD:
            raise StoreLockedError(
                f"{self.store} is already being written by this process (another run in the same session); "
                "wait for it to finish"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fcntl is not None:
            self._acquire_flock()
        else:
            self._acquire_pidfile()
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        data = json.dumps(owner).encode()
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        os.write(self._fd, data)
        _HELD[key] = self
        return self

    def _acquire_flock(self) -> None:
        for _ in range(20):  # retries only when a releasing holder unlinked the file between open and flock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise StoreLockedError(_locked_message(self.store, _read_owner(self.path), self.path)) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return
            os.close(fd)  # we locked a file its holder had just removed: try the current one
        raise StoreLockedError(f"could not lock {self.path}: it keeps being replaced by another process")

    def _acquire_pidfile(self) -> None:
        for _ in range(2):
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                return
            except FileExistsError:
                owner = _read_owner(self.path)
                if owner.get("host") == socket.gethostname() and not _pid_alive(owner.get("pid")):
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                raise StoreLockedError(_locked_message(self.store, owner, self.path)) from None
        raise StoreLockedError(_locked_message(self.store, _read_owner(self.path), self.path))

    def release(self) -> None:
        if self._fd is None:
            return
        _HELD.pop(_key(self.store), None)
        try:
            self.path.unlink(missing_ok=True)  # unlink before unlocking: a waiter then re-checks the inode
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def is_held_elsewhere(store: str | os.PathLike) -> str | None:
    """A description of the live process (not this one) holding `store`'s lock, or None if nobody does."""
    if _key(store) in _HELD:
        return None
    path = lock_path(store)
    if not path.exists():
        return None
    if fcntl is not None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _describe(_read_owner(path))
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)
    owner = _read_owner(path)
    if owner.get("host") == socket.gethostname() and not _pid_alive(owner.get("pid")):
        return None
    return _describe(owner)
