"""What a build depended on: the source file's size, times, inode and content hash.

The content is hashed only when the cheap stat fields moved (like DVC and make): a
rewrite that keeps the mtime (`cp -p`, `rsync -t`) still changes the ctime and usually
the inode, so it is caught, while an unchanged file costs one stat.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import Any, Dict, Optional

from agent.errors import SourceError

_CHUNK = 1 << 20  # stream 1 MiB at a time: memory stays flat for any file size


@dataclass(frozen=True)
class Fingerprint:
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    sha256: Optional[str] = None

    def same_stat(self, other: "Fingerprint") -> bool:
        return (self.size, self.mtime_ns, self.ctime_ns, self.inode) == (
            other.size, other.mtime_ns, other.ctime_ns, other.inode)

    def to_json(self) -> Dict[str, Any]:  # by hand: dataclasses.asdict deep-copies (a 1,000-entry manifest: 10 ms)
        return {"size": self.size, "mtime_ns": self.mtime_ns, "ctime_ns": self.ctime_ns, "inode": self.inode,
                "sha256": self.sha256}

    @staticmethod
    def from_json(doc: Dict[str, Any]) -> "Fingerprint":
        return Fingerprint(int(doc["size"]), int(doc["mtime_ns"]), int(doc.get("ctime_ns", 0)),
                           int(doc.get("inode", 0)), doc.get("sha256"))


def _open_error(path: str, exc: OSError) -> SourceError:
    if exc.errno == errno.ENOENT:
        return SourceError(f"{path} (no such file)", missing=True)
    if exc.errno == errno.ELOOP:
        return SourceError(f"{path} (symlink loop: fix the link)")
    if exc.errno == errno.EACCES:
        return SourceError(f"{path} (permission denied: make it readable)")
    if exc.errno == errno.EISDIR:
        return SourceError(f"{path} (is a folder, expected a data file)")
    return SourceError(f"{path} ({exc.strerror or exc})")


def stat_source(path: str) -> Fingerprint:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise _open_error(path, exc) from None
    if not stat.S_ISREG(st.st_mode):  # the same stat (os.path.isfile would stat again)
        raise SourceError(f"{path} (is a folder, expected a data file)" if stat.S_ISDIR(st.st_mode)
                          else f"{path} (not a regular file)")
    return Fingerprint(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def content_hash(path: str) -> str:
    import hashlib  # only when a file must be hashed (an unchanged gate or re-run stats only)

    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()  # streams in chunks
    except AttributeError:  # Python < 3.11
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                h.update(chunk)
        return h.hexdigest()
    except OSError as exc:
        raise _open_error(path, exc) from None


def fingerprint(path: str, previous: Optional[Fingerprint] = None, content: bool = True,
                trust_stat: Optional[bool] = None) -> Fingerprint:
    """Stat the file; hash it unless the stat matches `previous` (then reuse its hash).

    trust_stat=False (default on network file systems, see netfs.trust_stat): hash even
    when the stat matches, because the stat may come from a client's attribute cache.
    A `previous` taken by this same process moments ago (the build reusing the plan's
    hash) is passed with trust_stat=True by its caller.

    content=False: no hash (sha256=None), but the file is opened, so an unreadable file
    fails here as it would when hashed; for a file that is going to be built anyway (the
    build hashes it, overlapped with importing `datasets`)."""
    fp = stat_source(path)
    if trust_stat is None:
        trust_stat = _trust(path)
    if not trust_stat and previous is not None:
        previous = Fingerprint(previous.size, previous.mtime_ns, previous.ctime_ns, previous.inode, None)
    if not content and not (previous is not None and previous.sha256 and fp.same_stat(previous)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise _open_error(path, exc) from None
        return fp
    if previous is not None and previous.sha256 and fp.same_stat(previous):
        return previous  # the same stat and hash: the previous record (frozen) says it all
    return Fingerprint(fp.size, fp.mtime_ns, fp.ctime_ns, fp.inode, content_hash(path))


def _trust(path: str) -> bool:
    from agent.netfs import trust_stat  # netfs imports fsdetect: only when asked

    return trust_stat(path)
