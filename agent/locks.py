"""Locks: one per dataset entry and one for the manifest merge.

`flock` uses filelock's FileLock (fcntl). `soft` is for file systems whose flock does
not hold across nodes (many NFS / GPFS / Lustre mounts): an exclusive-create lock file
holding its owner's host, pid and start time. filelock's own SoftFileLock cannot tell a
dead owner from a live one, so a crashed agent would block everyone until someone
deleted the file by hand; ours takes a stale lock over only when its owner is provably
gone (same host: the pid is dead or is another process now; other host: older than the
site's `lock_stale_s`), and never deletes a live owner's lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator, Optional

from agent.errors import LockTimeout

_POLL_S = 0.05


def _proc_start(pid: int) -> Optional[str]:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat):
    with the pid it names one process, even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read().decode(errors="replace")
        return data.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def owner_record() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "proc_start": _proc_start(pid),
            "boot_id": _boot_id(), "started": time.time()}


def owner_gone(owner: dict, stale_s: float, now: Optional[float] = None) -> bool:
    """True only when the owner of a lock (or temp folder) provably no longer runs."""
    now = time.time() if now is None else now
    if owner.get("host") != socket.gethostname():
        return now - float(owner.get("started", now)) > stale_s
    if owner.get("boot_id") and owner.get("boot_id") != _boot_id():
        return True  # the machine rebooted since
    pid = int(owner.get("pid", -1))
    if pid <= 0:
        return False
    start = _proc_start(pid)
    if start is None:
        return True  # no such process
    recorded = owner.get("proc_start")
    return recorded is not None and recorded != start  # the pid now names another process


class SoftLock:
    """Exclusive-create lock file with provable stale-lock takeover."""

    def __init__(self, path: Path, timeout: float, stale_s: float) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.stale_s = stale_s
        self._held = False

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            json.dump(owner_record(), fh)
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def _read_owner(self) -> Optional[dict]:
        try:
            return json.loads(self.path.read_text() or "{}")
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being written right now, or garbage: age decides below

    def _take_over_if_stale(self) -> None:
        owner = self._read_owner()
        if owner is None:
            return
        if not owner:
            # unreadable content: only a file older than stale_s is treated as dead
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return
            if age <= self.stale_s:
                return
        elif not owner_gone(owner, self.stale_s):
            return
        # Rename is atomic: of several agents that all saw the same dead owner, exactly
        # one moves the file; the others get FileNotFoundError and simply retry.
        grave = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}-{time.time_ns()}")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return
        try:
            moved = json.loads(grave.read_text() or "{}")
        except (OSError, ValueError):
            moved = {}
        if moved and owner and moved != owner:
            # Between our read and the rename a new owner took the lock: give it back
            # if the name is still free; otherwise the new owner's file is already gone
            # and the newest one stands (a window of microseconds, documented in DESIGN).
            with contextlib.suppress(OSError):
                os.link(grave, self.path)
        with contextlib.suppress(OSError):
            os.unlink(grave)

    def acquire(self) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            if self._try_create():
                self._held = True
                return
            self._take_over_if_stale()
            if time.monotonic() > deadline:
                raise LockTimeout(self._timeout_message())
            time.sleep(_POLL_S)

    def _timeout_message(self) -> str:
        owner = self._read_owner() or {}
        who = f"pid {owner.get('pid')} on {owner.get('host')}" if owner else "another agent"
        return (f"lock {self.path} held by {who} for over {self.timeout:.0f} s; wait for it to "
                f"finish, or raise site.lock_timeout_s")

    def release(self) -> None:
        if self._held:
            self._held = False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def __enter__(self) -> "SoftLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def hold(path: Path, kind: str, timeout: float, stale_s: float) -> Iterator[None]:
    """Hold the lock at `path` (kind 'flock' or 'soft'); LockTimeout after `timeout` s."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "soft":
        with SoftLock(path, timeout, stale_s):
            yield
        return
    from filelock import FileLock, Timeout

    lock = FileLock(str(path), timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        raise LockTimeout(
            f"lock {path} held by another agent for over {timeout:.0f} s; wait for it to "
            "finish, or raise site.lock_timeout_s") from None
    try:
        yield
    finally:
        lock.release()
