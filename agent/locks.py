"""Locks: one per dataset entry and one for the manifest merge.

`flock` is fcntl's flock on a lock file that is never removed. `soft` is for file systems
whose flock does not hold across nodes (many NFS / GPFS / Lustre mounts). filelock's own SoftFileLock
cannot tell a dead owner from a live one, so a crashed agent would block everyone until
someone deleted the file by hand; ours takes a lock over only when its owner is provably
gone (same host: the pid is dead, or now names another process; other host: no sign of
life for longer than the site's `lock_stale_s`), and never deletes a live owner's lock.

How `soft` stays correct without any working lock primitive
-----------------------------------------------------------
The obvious design (one lock file; a taker renames a dead owner's file away) has a
race that cannot be closed: two agents read the same dead owner, the first removes the
file and a third agent creates a fresh one, then the second agent removes the *live*
file. POSIX has no "delete this file only if it is still the one I read".

So the lock is a sequence of *generation* files ``<name>.g<N>.lock``; only the highest
generation counts. Every change of owner is the exclusive creation of the next number:

- acquire: read the highest generation N. If there is none, create ``g0``. If N was
  released, or its owner is provably gone, create ``g(N+1)``. Otherwise wait.
- creation is ``link(tmp, gN)`` of a fully written temporary file: atomic and exclusive
  on local file systems and NFS alike, and nobody ever reads a half-written owner. Of
  several agents that saw the same dead owner, exactly one creates N+1; the others get
  EEXIST and look again.
- after creating gN, the creator lists the generations again and owns the lock only if
  none is higher (a slow agent that created a number the owner had already cleaned up
  sees the higher one, removes its own file and waits).
- release overwrites the owner's own file with a "released" record (atomic rename); the
  highest file is never deleted, so the numbers only grow. The new owner deletes older
  generations.
- a holder touches its file every few seconds (heartbeat), so an owner on another host
  counts as gone only after `lock_stale_s` without a heartbeat, however long it builds.

Nothing ever deletes or replaces a file another live process owns.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

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


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _hostname() -> str:
    """socket.gethostname(), which is uname's nodename, without importing socket (~3 ms on
    every run: the manifest's temporary name carries it)."""
    return os.uname().nodename


def owner_record() -> dict:
    pid = os.getpid()
    return {"host": _hostname(), "pid": pid, "proc_start": _proc_start(pid),
            "boot_id": _boot_id(), "started": time.time()}


def owner_gone(owner: dict, stale_s: float, now: Optional[float] = None,
               last_seen: Optional[float] = None) -> bool:
    """True only when the owner of a lock (or temp folder) provably no longer runs.

    Same host: the pid is dead, or names a process started at another time, or the
    machine rebooted. Other host: nothing can be proved, so an owner whose last sign of
    life (`last_seen`, else its start) is older than `stale_s` counts as gone.
    """
    now = time.time() if now is None else now
    if owner.get("host") != _hostname():
        try:
            seen = max(float(owner.get("started", now)), last_seen or 0.0)
        except (TypeError, ValueError):
            seen = last_seen if last_seen is not None else now
        return now - seen > stale_s
    if owner.get("boot_id") and owner.get("boot_id") != _boot_id():
        return True  # the machine rebooted since
    try:
        pid = int(owner.get("pid", -1))
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    start = _proc_start(pid)
    if start is None:
        return not _pid_exists(pid)  # no /proc entry: dead unless kill(0) says otherwise
    recorded = owner.get("proc_start")
    return recorded is not None and str(recorded) != start  # the pid now names another process


# --- temporary names that carry their owner ------------------------------------------

_TAG_RE = re.compile(r"\.(?:tmp|stale|new)-(?P<host>[^/]+)-(?P<pid>\d+)-(?P<start>\d+|x)-(?P<ns>\d+)$")


def owner_tag() -> str:
    """`<host>-<pid>-<proc start>-<ns>`: a unique suffix for temporary names that lets a
    later agent decide, from the name alone, whether the writer still runs."""
    pid = os.getpid()
    return f"{_hostname()}-{pid}-{_proc_start(pid) or 'x'}-{time.time_ns()}"


def tag_owner(name: str) -> Optional[dict]:
    """The owner record encoded by owner_tag() at the end of `name`, None if there is none."""
    m = _TAG_RE.search(name)
    if not m:
        return None
    return {"host": m["host"], "pid": int(m["pid"]),
            "proc_start": None if m["start"] == "x" else m["start"],
            "started": int(m["ns"]) / 1e9}


def leftover_gone(path: Path, stale_s: float) -> bool:
    """A temporary file or folder named with owner_tag(): is its writer provably gone?
    For another host the newest mtime inside counts as its last sign of life."""
    owner = tag_owner(path.name)
    if owner is None:
        return False
    last = 0.0
    with contextlib.suppress(OSError):
        last = path.lstat().st_mtime
        if path.is_dir():
            for sub in path.rglob("*"):
                with contextlib.suppress(OSError):
                    last = max(last, sub.lstat().st_mtime)
    return owner_gone(owner, stale_s, last_seen=last)


# --- the soft lock --------------------------------------------------------------------


class SoftLock:
    """Generation lock files with provable stale-lock takeover (see the module text)."""

    def __init__(self, path: Path, timeout: float, stale_s: float, heartbeat_s: Optional[float] = None) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.stale_s = stale_s
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else max(0.5, min(30.0, stale_s / 4))
        base = self.path.name[:-5] if self.path.name.endswith(".lock") else self.path.name
        self._base = base
        self._gen_re = re.compile(rf"^{re.escape(base)}\.g(\d+)\.lock$")
        self._tmp_prefix = f".{base}.new-"
        self._saw_tmp = False
        self._gen: Optional[int] = None
        self._stop = threading.Event()
        self._beat: Optional[threading.Thread] = None

    # naming
    def gen_path(self, gen: int) -> Path:
        return self.path.with_name(f"{self._base}.g{gen}.lock")

    def generations(self) -> List[int]:
        gens = []
        try:
            with os.scandir(self.path.parent) as it:
                for entry in it:
                    m = self._gen_re.match(entry.name)
                    if m:
                        gens.append(int(m.group(1)))
                    elif entry.name.startswith(self._tmp_prefix):
                        self._saw_tmp = True
        except FileNotFoundError:
            pass
        return sorted(gens)

    # one generation's state
    def _read(self, gen: int) -> Optional[Dict]:
        """The record of generation `gen`; None if the file is gone, {} if unparseable."""
        try:
            doc = json.loads(self.gen_path(gen).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def _free(self, gen: int) -> Optional[bool]:
        """True if generation `gen` was released or its owner is provably gone; None if
        the file vanished (look again)."""
        doc = self._read(gen)
        if doc is None:
            return None
        if doc.get("released"):
            return True
        try:
            mtime = self.gen_path(gen).stat().st_mtime
        except FileNotFoundError:
            return None
        if not doc:
            # Files are created complete (link of a written file): unparseable content
            # means damage; only a file untouched for stale_s is treated as dead.
            return time.time() - mtime > self.stale_s
        return owner_gone(doc, self.stale_s, last_seen=mtime)

    def _write_tmp(self, doc: Dict) -> Path:
        tmp = self.path.with_name(f".{self._base}.new-{owner_tag()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh)
            fh.flush()
            os.fsync(fh.fileno())
        return tmp

    def _create(self, gen: int) -> bool:
        """Exclusively create generation `gen` holding our owner record."""
        from agent.netfs import lost_race

        mine = owner_record()
        tmp = self._write_tmp(mine)
        target = self.gen_path(gen)
        try:
            os.link(tmp, target)
            return True
        except OSError as exc:
            # Did the link happen anyway? NFS may report an error (even EEXIST) for a link
            # whose reply was lost. st_nlink cannot tell on every mount (sshfs: always 1),
            # so compare the content: our owner record (host, pid, start, time) is unique.
            if self._read(gen) == json.loads(json.dumps(mine)):
                return True
            if lost_race(exc):  # EEXIST, or EPERM from sshfs: another agent's number
                return False
            raise
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def try_acquire(self) -> bool:
        """One attempt; True when we now hold the lock."""
        gens = self.generations()
        if gens:
            top = gens[-1]
            free = self._free(top)
            if not free:
                return False  # held by a live owner (or the file just vanished: look again)
            candidate = top + 1
        else:
            candidate = 0
        if not self._create(candidate):
            return False  # another agent took this number first
        if self.generations()[-1] != candidate:
            # We created a number below the current owner's (it had cleaned that one up
            # while we were slow): not ours. Our own file is the only thing we remove.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.gen_path(candidate))
            return False
        self._gen = candidate
        for old in gens:
            if old < candidate:
                with contextlib.suppress(OSError):
                    os.unlink(self.gen_path(old))  # released or dead: nobody owns it
        if self._saw_tmp:
            # temporary owner files of agents killed before their link (only if gone)
            self._saw_tmp = False
            clean_leftovers(self.path.parent, self._tmp_prefix, self.stale_s)
        self._start_heartbeat()
        return True

    def acquire(self) -> None:
        from agent.netfs import ensure_dir

        ensure_dir(self.path.parent)
        deadline = time.monotonic() + self.timeout
        while True:
            if self.try_acquire():
                return
            if time.monotonic() > deadline:
                raise LockTimeout(self._timeout_message())
            time.sleep(_POLL_S)

    def owner(self) -> Optional[Dict]:
        gens = self.generations()
        return self._read(gens[-1]) if gens else None

    def _timeout_message(self) -> str:
        owner = self.owner() or {}
        who = f"pid {owner.get('pid')} on {owner.get('host')}" if owner.get("pid") else "another agent"
        return (f"lock {self.path} held by {who} for over {self.timeout:.0f} s; wait for it to "
                f"finish, or raise site.lock_timeout_s")

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        path = self.gen_path(self._gen)  # type: ignore[arg-type]

        def beat() -> None:
            while not self._stop.wait(self.heartbeat_s):
                with contextlib.suppress(OSError):
                    os.utime(path)

        self._beat = threading.Thread(target=beat, name="soft-lock-heartbeat", daemon=True)
        self._beat.start()

    def release(self) -> None:
        if self._gen is None:
            return
        gen, self._gen = self._gen, None
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
            self._beat = None
        # Mark our own generation released, atomically; the file stays so the numbers
        # only grow (see the module text).
        doc = dict(owner_record(), released=True, released_at=time.time())
        try:
            tmp = self._write_tmp(doc)
            os.replace(tmp, self.gen_path(gen))
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.EROFS, errno.EACCES):
                raise

    @property
    def held(self) -> bool:
        return self._gen is not None

    def __enter__(self) -> "SoftLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def hold(path: Path, kind: str, timeout: float, stale_s: float) -> Iterator[None]:
    """Hold the lock at `path` (kind 'flock' or 'soft'); LockTimeout after `timeout` s."""
    from agent.netfs import ensure_dir

    ensure_dir(path.parent)
    fd = None if kind == "soft" else _flock(path, timeout)
    if fd is None:  # soft, or a file system without flock (ENOSYS/ENOLCK/EOPNOTSUPP)
        with SoftLock(path, timeout, stale_s):
            yield
        return
    try:
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock; the file stays for the next holder


_NO_FLOCK = (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP)


def _flock(path: Path, timeout: float) -> Optional[int]:
    """An exclusive flock on `path` (created if need be; the file is never removed, so every
    holder locks the same inode); the open descriptor, or None where flock is not supported.

    fcntl directly rather than filelock's FileLock (what this was): the same flock on the
    same files, so both interoperate, without importing filelock (~15 ms, on every run and
    every gate that publishes). Mode 0666 less the umask (the site's, for group-shared
    caches); a lock file we may not write is locked read-only, as flock allows."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except PermissionError:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as exc:
            if exc.errno in _NO_FLOCK:
                os.close(fd)
                return None
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
        if time.monotonic() >= deadline:
            os.close(fd)
            raise LockTimeout(
                f"lock {path} held by another agent for over {timeout:.0f} s; wait for it to "
                "finish, or raise site.lock_timeout_s")
        time.sleep(_POLL_S)


def clean_leftovers(folder: Path, prefix: str, stale_s: float) -> List[str]:
    """Remove temporary files/folders in `folder` whose names start with `prefix` and end
    with an owner_tag() whose owner is provably gone; returns what was removed. Call it
    while holding the lock that covers those names."""
    removed: List[str] = []
    try:
        names = [n for n in os.listdir(folder) if n.startswith(prefix)]
    except OSError:
        return removed
    for name in names:
        path = folder / name
        if not leftover_gone(path, stale_s):
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                import shutil  # only then: every run sweeps, almost always finding nothing

                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(str(path))
        except FileNotFoundError:
            pass
        except OSError:
            continue
    return removed
