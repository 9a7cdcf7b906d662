"""Who owns a working folder: two copies of one job (a SLURM requeue after a node failure, a user running the
same stage twice) must never write into, or delete, each other's unfinished output.

A :class:`WorkLock` is a file ``<folder>.lock`` created exclusively (``O_CREAT | O_EXCL``), holding the owner's
host, pid and SLURM job id; a thread refreshes its mtime every ``heartbeat_s`` while the owner works. A lock
whose owner is gone is taken over: same host and no such process, or no heartbeat for ``stale_after_s`` (an
owner on another node that died with it). A live owner's lock is never taken: the caller works elsewhere.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"


def owner() -> dict[str, Any]:
    """This process as a lock records it."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID")}


def owner_tag() -> str:
    """``<host>-<pid>``: a name part that no concurrent copy of a job shares (host names may hold dots)."""
    return f"{socket.gethostname().replace('.', '_')}-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class WorkLock:
    """An exclusive, heartbeat-refreshed claim on ``folder`` (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike[str], stale_after_s: float = 300.0,
                 heartbeat_s: float = 30.0) -> None:
        self.folder = Path(folder)
        self.path = self.folder.with_name(self.folder.name + LOCK_SUFFIX)
        self.stale_after_s, self.heartbeat_s = stale_after_s, heartbeat_s
        self.holder: dict[str, Any] | None = None  # the live owner that kept us out, after a failed acquire
        self.held = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        """Take the lock (taking over a dead owner's); False when a live owner holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a takeover races at most with another taker
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read()
                if holder is not None and not self._stale(holder):
                    self.holder = holder
                    return False
                log.warning("%s: taking over the lock of a dead owner (%s)", self.path, holder)
                self._remove_if(holder)
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(owner(), fh)
            self.held = True
            self._start_heartbeat()
            return True
        return False

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if this object took it and it is still ours."""
        if not self.held:
            return
        self.held = False
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        mine = self._read()
        if mine is not None and mine.get("host") == socket.gethostname() and mine.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)

    def describe_holder(self) -> str:
        """The live owner that holds the lock, for a message."""
        holder = self.holder or {}
        job = f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
        return f"host {holder.get('host')} pid {holder.get('pid')}{job}"

    def _read(self) -> dict[str, Any] | None:
        try:
            value = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being written, or damaged: judged by its age alone
        return value if isinstance(value, dict) else {}

    def _stale(self, holder: dict[str, Any]) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return True
        if age > self.stale_after_s:
            return True
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            return not _pid_alive(holder["pid"])
        return False

    def _remove_if(self, holder: dict[str, Any] | None) -> None:
        """Remove the lock only if it still holds ``holder`` (another taker may have replaced it)."""
        if self._read() == holder:
            self.path.unlink(missing_ok=True)

    def _start_heartbeat(self) -> None:
        self._stop.clear()

        def beat() -> None:
            while not self._stop.wait(self.heartbeat_s):
                try:
                    os.utime(self.path)
                except OSError:
                    return

        self._thread = threading.Thread(target=beat, name=f"lock {self.path.name}", daemon=True)
        self._thread.start()

    def __enter__(self) -> WorkLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def dead_local_tag(tag: str) -> bool:
    """True when ``tag`` (an :func:`owner_tag`) names a process of this host that no longer runs."""
    host, _, pid = tag.rpartition("-")
    return host == socket.gethostname().replace(".", "_") and pid.isdigit() and not _pid_alive(int(pid))
