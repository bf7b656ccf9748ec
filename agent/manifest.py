"""The manifest (DESIGN §5): what the pre-build produced and what it depended on.

JSON, one per experiment, written to a temporary name and renamed into place, merged
under a lock when two agents finish together. Reading is strict: the launch gate trusts
nothing it cannot parse, and a manifest from a newer schema is never overwritten.
This module imports only the standard library: the gate uses it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from agent.entry import READY as _READY
from agent.entry import Status
from agent.errors import ConfigError, ManifestError

SCHEMA_VERSION = 1
READY = tuple(s.value for s in _READY)
STATUSES = tuple(s.value for s in Status)
# an entry kept by a narrowed run (task=, entry=) from a manifest built for another
# consumer, job environment or library versions carries that build's context here; the
# gate refuses it until a run for the current context covers it
CONTEXT_KEYS = ("consumer", "env", "versions")
_ENTRY_KEYS = ("key", "call", "tasks", "status")


# path -> (its stat when read, the open file (so its inode cannot be reused), the document)
_read_before: Dict[str, Any] = {}


def _same_file(path: Path) -> Optional[Dict[str, Any]]:
    """The document this process read from `path`, if the file is provably still that one:
    same inode, size, mtime and ctime (every writer replaces it by rename: a new inode; the
    old one stays allocated while we hold it open), on a local disk (a network client's
    stat may be cached). An unchanged re-run reads the manifest before planning and again
    under the lock when it publishes: 1.1 MB of JSON at 1,000 entries, parsed once."""
    seen = _read_before.get(str(path))
    if seen is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    from agent.netfs import trust_stat

    if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) != seen[0] or not trust_stat(str(path)):
        return None
    return seen[2]


def read(path: Path) -> Optional[Dict[str, Any]]:
    """The manifest at `path`, None if there is none, ManifestError if it is unusable."""
    again = _same_file(path)
    if again is not None:
        return again
    try:
        held = open(path, "rb")  # noqa: SIM115 - kept open with the memo (see _same_file)
        st = os.fstat(held.fileno())  # the stat of the file as opened, before it is read
    except OSError:
        return _read(path)  # missing, a folder, unreadable: _read says which
    try:
        doc = _read(path)
    except BaseException:
        held.close()
        raise
    old = _read_before.pop(str(path), None)
    if old is not None:
        old[1].close()
    if doc is None:
        held.close()
    else:
        _read_before[str(path)] = ((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns), held, doc)
    return doc


def _read(path: Path) -> Optional[Dict[str, Any]]:
    from agent.netfs import is_json, read_settled

    try:
        # on a network file system a manifest another node is replacing can read torn
        # (new content at the old cached size): re-read within the settle window first
        text = read_settled(Path(path), is_json)
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise ManifestError(f"manifest {path} is a folder; pass manifest=FILE") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"manifest {path} unreadable ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        what = "empty" if not text.strip() else f"not valid JSON (truncated or edited? {exc.msg} at line {exc.lineno})"
        raise ManifestError(f"manifest {path} is {what}; run cluster-agent again to rewrite it") from None
    validate(doc, path)
    return doc


def validate(doc: Any, path: Path) -> None:
    if not isinstance(doc, dict):
        raise ManifestError(f"manifest {path} is not a JSON object; run cluster-agent again to rewrite it")
    version = doc.get("schema_version")
    if not isinstance(version, int):
        raise ManifestError(f"manifest {path} has no schema_version; run cluster-agent again to rewrite it")
    if version > SCHEMA_VERSION:
        raise ManifestError(
            f"manifest {path} has schema {version}, newer than this cluster-agent's {SCHEMA_VERSION}: "
            "upgrade cluster-agent (pip install -U cluster-agent)", newer_schema=True)
    entries = doc.get("entries")
    if not isinstance(entries, list):
        raise ManifestError(f"manifest {path}: 'entries' must be a list (edited by hand?); run cluster-agent again")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or any(k not in entry for k in _ENTRY_KEYS):
            raise ManifestError(
                f"manifest {path}: entries[{i}] lacks {', '.join(k for k in _ENTRY_KEYS if not isinstance(entry, dict) or k not in entry)} "
                "(edited by hand?); run cluster-agent again")
        if entry["status"] not in STATUSES:
            raise ManifestError(f"manifest {path}: entries[{i}].status={entry['status']!r} is not one of {', '.join(STATUSES)}")
        if not isinstance(entry["call"], dict) or not isinstance(entry["call"].get("data_files"), (str, dict, list)):
            raise ManifestError(f"manifest {path}: entries[{i}].call is malformed (edited by hand?); run cluster-agent again")
    for key in ("env", "versions"):
        if not isinstance(doc.get(key), dict):
            raise ManifestError(f"manifest {path}: '{key}' must be an object (edited by hand?); run cluster-agent again")


def write_atomic(path: Path, doc: Dict[str, Any]) -> None:
    """Write the manifest to a temporary name in the same folder, fsync, rename into place."""
    write_text_atomic(Path(path), render(doc))


def write_text_atomic(path: Path, text: str, mode: Optional[int] = None) -> None:
    """Readers see the old file or the new one, never half of it. The temporary name
    carries its owner, so a killed writer's leftover is swept once the owner is gone.
    The one atomic writer: manifests, shared entry records, rendered sbatch scripts."""
    from agent.locks import owner_tag  # stdlib only, like this module

    tmp = path.with_name(f".{path.name}.tmp-{owner_tag()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def render(doc: Dict[str, Any]) -> str:
    """The manifest as text: one top-level key per line and one entry per line. Readable,
    diffable, and encoded by json's C encoder (``indent=`` switches to the pure-Python
    one, which costs ~0.2 ms per entry on every run of a 1,000-dataset sweep)."""
    keys = list(doc)
    lines = ["{"]
    for i, key in enumerate(keys):
        comma = "," if i < len(keys) - 1 else ""
        value = doc[key]
        if key == "entries" and isinstance(value, list) and value:
            lines.append(f"  {json.dumps(key)}: [")
            lines.append(",\n".join(f"    {json.dumps(entry)}" for entry in value))
            lines.append(f"  ]{comma}")
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value)}{comma}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def merge(existing: Optional[Dict[str, Any]], ours: Dict[str, Any]) -> Dict[str, Any]:
    """Two agents finishing together: per entry, a ready record built from the same content
    beats a failure (e.g. our lock timed out while the other agent built it)."""
    if not existing:
        return ours
    theirs = {e["key"]: e for e in existing.get("entries", []) if isinstance(e, dict) and "key" in e}
    merged: List[Dict[str, Any]] = []
    for entry in ours["entries"]:
        other = theirs.get(entry["key"])
        if (other is not None and entry["status"] not in READY and other.get("status") in READY
                and existing.get("versions") == ours.get("versions")
                and (other.get("source") or {}).get("sha256") == (entry.get("source") or {}).get("sha256")):
            merged.append(dict(other, tasks=entry["tasks"]))
        else:
            merged.append(entry)
    out = dict(ours, entries=merged)
    out["summary"] = count(merged)
    return out


def document(cfg: Any, summary: Any, consumer: Any, ctx: Dict[str, Any], entries: List[Dict[str, Any]],
             decision: str) -> Dict[str, Any]:
    """The manifest document of one run (DESIGN §5), before the merge with what is on disk."""
    import getpass
    import hashlib
    from dataclasses import asdict

    from agent import __version__

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    digest = hashlib.sha256(repr(sorted(asdict(cfg).items(), key=lambda kv: kv[0])).encode()).hexdigest()[:16]
    return {
        "schema_version": SCHEMA_VERSION,
        "agent_version": __version__,
        "config_digest": digest,
        "experiment": {"name": summary.name, "summary": str(summary.path)},
        "site": cfg.site.name,
        "host": os.uname().nodename,  # socket.gethostname(), without importing socket
        "user": user,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "consumer": ctx["consumer"],
        "env": ctx["env"],
        "versions": ctx["versions"],
        "entries": entries,
        "summary": count(entries),
        "decision": decision,
    }


def context(doc: Dict[str, Any]) -> Dict[str, Any]:
    """What the manifest's caches were built for: consumer, job environment, versions."""
    return {k: doc.get(k) for k in CONTEXT_KEYS}


def entry_context(doc: Dict[str, Any], entry: Dict[str, Any]) -> Dict[str, Any]:
    return entry.get("context") or context(doc)


def context_change(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    """Which of consumer, job environment and versions differ, as short phrases."""
    out = []
    if old.get("consumer") != new.get("consumer"):
        out.append(f"consumer {old.get('consumer')} -> {new.get('consumer')}")
    old_env, new_env = old.get("env") or {}, new.get("env") or {}
    for key in sorted(set(old_env) | set(new_env)):
        if old_env.get(key) != new_env.get(key):
            out.append(f"job environment {key} {old_env.get(key)} -> {new_env.get(key)}")
    old_v, new_v = old.get("versions") or {}, new.get("versions") or {}
    for key in sorted(set(old_v) | set(new_v)):
        if old_v.get(key) != new_v.get(key):
            out.append(f"{key} {old_v.get(key)} -> {new_v.get(key)}")
    return out


def publish(path: Path, doc: Dict[str, Any], narrowed: bool, lock_kind: str, lock_timeout_s: float,
            lock_stale_s: float) -> Dict[str, Any]:
    """Merge `doc` with what is on disk under the manifest lock and write it atomically.

    A narrowed run (task=, entry=) keeps every other entry: as it was when built for the
    same context, else with its own context recorded (the gate then refuses it)."""
    from agent.locks import clean_leftovers, hold  # stdlib only, but not needed by the gate

    with hold(path.with_name(path.name + ".lock"), lock_kind, lock_timeout_s, lock_stale_s):
        # temporary manifests of agents killed while writing (only when provably gone)
        clean_leftovers(path.parent, f".{path.name}.tmp-", lock_stale_s)
        try:
            existing = read(path)
        except ManifestError:
            existing = None
        same = bool(existing) and context(existing) == context(doc)
        doc = merge(existing if same else None, doc)
        if narrowed and existing:
            # an entry this run shares with tasks it did not run keeps their names
            theirs = {e["key"]: e for e in existing.get("entries", [])}
            for entry in doc["entries"]:
                other = theirs.get(entry["key"])
                if other is not None:
                    entry["tasks"] = entry["tasks"] + [t for t in other.get("tasks", []) if t not in entry["tasks"]]
            mine = {e["key"] for e in doc["entries"]}
            for other in existing.get("entries", []):
                if other["key"] in mine:
                    continue
                ctx = entry_context(existing, other)
                doc["entries"].append(other if ctx == context(doc) else dict(other, context=ctx))
            doc["summary"] = count(doc["entries"])
        try:
            write_atomic(path, doc)
        except OSError as exc:
            raise ConfigError(f"manifest {path} could not be written ({exc.strerror}); "
                              "fix the folder's permissions or pass manifest=PATH") from None
    return doc


def count(entries: List[Dict[str, Any]]) -> Dict[str, int]:
    totals = {s: 0 for s in ("built", "unchanged", "rebuilt", "missing", "failed")}
    for entry in entries:
        totals[entry["status"]] = totals.get(entry["status"], 0) + 1
    return totals


def entries_by_key(doc: Optional[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    return {e["key"]: e for e in (doc or {}).get("entries", [])}
