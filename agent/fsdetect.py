"""Which file system holds a path, and what that means for locks and stat-based checks.

`site.lock: auto` (the default) asks this module: a cache root on a network or FUSE file
system (NFS, GPFS, Lustre, BeeGFS, CephFS, sshfs, MooseFS, ...) gets the `soft` lock,
because flock there often does not hold across nodes; a local disk gets `flock`. The
same answer decides whether a stat can be trusted: every network client caches
attributes for seconds, and some (sshfs) report no ctime and a path-derived inode, so
on those a file's content is hashed instead of trusting an unchanged stat.

Read from /proc/self/mountinfo (the mount namespace of this process). Standard library
only: the launch gate uses it.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

# types whose clients cache attributes / whose flock may not be cluster-wide
_NETWORK = {"nfs", "nfs4", "gpfs", "lustre", "beegfs", "ceph", "cifs", "smb3", "smbfs",
            "9p", "afs", "glusterfs", "ocfs2", "gfs2", "panfs", "pvfs2", "orangefs",
            "wekafs", "fuse"}
# FUSE file systems that are local to the machine
_LOCAL_FUSE = {"fuse.fuse-overlayfs", "fuse.lxcfs", "fuse.squashfuse", "fuse.squashfuse_ll",
               "fuse.gvfsd-fuse", "fuse.portal", "fuse.snapfuse", "fuse.bindfs", "fuse.encfs",
               "fuse.gocryptfs"}


@dataclass(frozen=True)
class Mount:
    mount_point: str
    fstype: str
    source: str

    @property
    def network(self) -> bool:
        if self.fstype in _LOCAL_FUSE:
            return False
        return self.fstype in _NETWORK or self.fstype.startswith("fuse.")

    def to_json(self) -> Dict[str, object]:
        return {"type": self.fstype, "mount": self.mount_point, "source": self.source,
                "network": self.network}


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> List[Mount]:
    """Mounts in the order listed (later mounts over the same point shadow earlier ones)."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, rest = left.split(), right.split()
        if len(fields) < 5 or len(rest) < 2:
            continue
        mounts.append(Mount(_unescape(fields[4]), rest[0], _unescape(rest[1])))
    return mounts


@functools.lru_cache(maxsize=4)
def _table(text: str) -> Tuple[Mount, ...]:
    return tuple(parse_mountinfo(text))


_READ_S = 2.0  # the table is read again after this long: a run asks for every source and layer
# (when read, the table, whether any of its mounts is a network one)
_last: Tuple[float, Tuple[Mount, ...], bool] = (float("-inf"), (), False)


def _current() -> Tuple[float, Tuple[Mount, ...], bool]:
    global _last
    now = time.monotonic()
    if now - _last[0] >= _READ_S:
        try:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
                table = _table(fh.read())
        except OSError:
            table = ()
        _last = (now, table, any(m.network for m in table))
    return _last


def mounts() -> Tuple[Mount, ...]:
    return _current()[1]


def mount_of(path: str, table: Optional[Tuple[Mount, ...]] = None) -> Optional[Mount]:
    """The mount holding `path` (or, for a path not created yet, its nearest existing parent)."""
    probe = os.path.abspath(os.path.expanduser(str(path)))
    if table is None:  # the live table: resolve symlinks of what exists
        table = mounts()
        while not os.path.exists(probe) and os.path.dirname(probe) != probe:
            probe = os.path.dirname(probe)
        probe = os.path.realpath(probe)
    real = probe
    best: Optional[Mount] = None
    for m in table:
        mp = m.mount_point.rstrip("/") or "/"
        if real == mp or real.startswith(mp + "/") or mp == "/":
            if best is None or len(mp) >= len(best.mount_point.rstrip("/") or "/"):
                best = m
    return best


def is_network(path: str) -> bool:
    if not _current()[2]:
        return False  # nothing is (the usual laptop or local-disk node): no realpath per path
    m = mount_of(path)
    return bool(m and m.network)


def resolve_lock(configured: str, roots: Dict[str, str],
                 table: Optional[Tuple[Mount, ...]] = None) -> Tuple[str, Dict[str, object], List[str]]:
    """(lock kind to use, {'lock': ..., 'configured': ..., root name: mount record}, warnings).

    auto: soft if any cache root is on a network file system, else flock. An explicit
    flock on a network file system is kept (the user said so) but warned about."""
    detected: Dict[str, object] = {}
    network = []
    for name, root in roots.items():
        m = mount_of(root, table)
        if m is None:
            continue
        detected[name] = m.to_json()
        if m.network:
            network.append((name, root, m))
    kind = configured
    if configured == "auto":
        kind = "soft" if network else "flock"
    warnings = []
    if configured == "flock":
        for name, root, m in network:
            warnings.append(f"site.lock=flock but {name} {root} is on {m.fstype} ({m.source} at {m.mount_point}), "
                            "where flock may not hold across nodes: use site.lock=soft (or auto)")
    detected.update(lock=kind, configured=configured)
    return kind, detected, warnings
