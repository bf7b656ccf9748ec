"""File operations that stay correct when another node changes the same folder.

Measured on the two-node rig (scripts/sharedfs-up.sh, docs/robustness.md): each client
caches attributes and directory entries for seconds, so a node can
- read a file another node just replaced with the OLD size: a torn read of the new
  content (`read_settled` re-reads until the text parses, within `SETTLE_S`);
- believe a folder another node just created does not exist: `mkdir` says EEXIST and
  `os.makedirs(exist_ok=True)` re-raises it because its own stat says "no such file"
  (`ensure_dir` waits for the entry to appear);
- lose an exclusive create (`O_EXCL`, `link()`) with EPERM instead of EEXIST (sshfs:
  SFTP has no "exists" status): `lost_race` treats both alike.
Standard library only: the launch gate uses it.
"""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path
from typing import Callable, Optional, TypeVar

from agent import fsdetect

# Longest attribute/entry cache we retry through: MooseFS's 3 s caches as mounted by
# the rig, NFS's default acregmin..acdirmin (3-30 s, but an open() revalidates: close-to-
# open consistency), sshfs revalidates on open. Measured in docs/robustness.md.
# CLUSTER_AGENT_SETTLE_S=0 turns the retries off (bench/sharedfs_trials.py measures
# what they prevent that way).
SETTLE_S = float(os.environ.get("CLUSTER_AGENT_SETTLE_S", "8"))
_POLL_S = 0.25

T = TypeVar("T")


def lost_race(exc: OSError) -> bool:
    """An exclusive create failed because someone else's name is there (EEXIST; EPERM is
    what sshfs returns when the other node's file is not in this node's cache yet)."""
    return exc.errno in (errno.EEXIST, errno.EPERM)


def ensure_dir(path: Path, settle_s: Optional[float] = None) -> None:
    """`mkdir -p` that tolerates a stale negative entry: EEXIST while our stat still says
    "no such file" means another node made it; wait for our cache to catch up."""
    path = Path(path)
    deadline = time.monotonic() + (SETTLE_S if settle_s is None else settle_s)
    while True:
        try:
            path.mkdir(parents=True, exist_ok=True)
            return
        except FileExistsError:
            if path.is_dir():
                return
            if path.exists() or time.monotonic() > deadline:
                raise  # really a file, or still invisible after the settle window
        except FileNotFoundError:
            # a parent vanished or is not visible yet from this node
            if time.monotonic() > deadline:
                raise
        time.sleep(_POLL_S)


def read_settled(path: Path, valid: Callable[[str], bool], settle_s: Optional[float] = None) -> str:
    """The text of a file another node may be replacing. Text that is not `valid` (e.g.
    does not parse: the new file read at the old cached size) is re-read on a network
    file system until `settle_s` passes; the last text read is returned either way, for
    the caller's own error message. On a local disk replacement is atomic: one read."""
    window = SETTLE_S if settle_s is None else settle_s
    if window and not fsdetect.is_network(str(path)):
        window = 0.0
    deadline = time.monotonic() + window
    while True:
        text = Path(path).read_text(encoding="utf-8")
        # no window (a local disk): one read, and no check (the caller parses it anyway)
        if not window or valid(text) or time.monotonic() > deadline:
            return text
        time.sleep(_POLL_S)


def is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def retry_settled(check: Callable[[], T], ok: Callable[[T], bool], path: str,
                  settle_s: Optional[float] = None) -> T:
    """Run `check` until `ok(result)`; on a network file system retry a failing result
    within `settle_s` (a refusal from stale attributes clears once the cache expires)."""
    result = check()
    if ok(result) or not SETTLE_S or not fsdetect.is_network(path):
        return result
    deadline = time.monotonic() + (SETTLE_S if settle_s is None else settle_s)
    while not ok(result) and time.monotonic() < deadline:
        time.sleep(_POLL_S * 2)
        result = check()
    return result


def trust_stat(path: str) -> bool:
    """May an unchanged stat stand for unchanged content here? Not on a network file
    system: attributes may come from a client cache, and sshfs reports no ctime and a
    per-path inode, so `cp -p` (same size and mtime) leaves the stat identical.
    CLUSTER_AGENT_TRUST_STAT=1 restores the old rule (for measuring what it cost)."""
    return os.environ.get("CLUSTER_AGENT_TRUST_STAT") == "1" or not fsdetect.is_network(path)
