"""The manifest (DESIGN §5): what the pre-build produced and what it depended on.

JSON, one per experiment, written to a temporary name and renamed into place, merged
under a lock when two agents finish together. Reading is strict: the launch gate trusts
nothing it cannot parse, and a manifest from a newer schema is never overwritten.
This module imports only the standard library: the gate uses it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from agent.errors import ManifestError

SCHEMA_VERSION = 1
READY = ("built", "unchanged", "rebuilt")
STATUSES = READY + ("missing", "failed")
_ENTRY_KEYS = ("key", "call", "tasks", "status")


def read(path: Path) -> Optional[Dict[str, Any]]:
    """The manifest at `path`, None if there is none, ManifestError if it is unusable."""
    try:
        text = Path(path).read_text(encoding="utf-8")
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
            "upgrade cluster-agent (pip install -U cluster-agent)")
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
        if not isinstance(entry["call"], dict) or not isinstance(entry["call"].get("data_files"), str):
            raise ManifestError(f"manifest {path}: entries[{i}].call is malformed (edited by hand?); run cluster-agent again")
    for key in ("env", "versions"):
        if not isinstance(doc.get(key), dict):
            raise ManifestError(f"manifest {path}: '{key}' must be an object (edited by hand?); run cluster-agent again")


def write_atomic(path: Path, doc: Dict[str, Any]) -> None:
    """Write the manifest to a temporary name in the same folder, fsync, rename into place."""
    write_text_atomic(Path(path), render(doc))


def write_text_atomic(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half of it. The temporary name
    carries its owner, so a killed writer's leftover is swept once the owner is gone."""
    from agent.locks import owner_tag  # stdlib only, like this module

    tmp = path.with_name(f".{path.name}.tmp-{owner_tag()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
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


def count(entries: List[Dict[str, Any]]) -> Dict[str, int]:
    totals = {s: 0 for s in ("built", "unchanged", "rebuilt", "missing", "failed")}
    for entry in entries:
        totals[entry["status"]] = totals.get(entry["status"], 0) + 1
    return totals


def entries_by_key(doc: Optional[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    return {e["key"]: e for e in (doc or {}).get("entries", [])}
