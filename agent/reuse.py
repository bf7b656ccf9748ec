"""What the previous manifest lets this run reuse: each planned entry is unchanged,
missing, failed, or needs a build (status None, with the reason).

An unchanged re-run costs a stat per source and a few per layer, and never imports
`datasets`. The verdict is agent.entry.assess, the rule the gate uses too.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from agent import manifest
from agent.consumers import Consumer
from agent.entry import EntryRecord, Status, assess, fingerprint_more
from agent.errors import ConfigError, ManifestError, SourceError
from agent.fingerprint import fingerprint
from agent.layers import CacheRoots
from agent.logs import event


def read_previous(path: Path, current: Dict[str, Any]) -> Tuple[Dict[str, EntryRecord], Optional[Dict[str, Any]]]:
    """(key -> previous record, built for this very context) and the previous manifest.
    Records built for another consumer, job environment or library versions are not
    reused: every entry is then checked (and built) again."""
    try:
        previous = manifest.read(path)
    except ManifestError as exc:
        if exc.newer_schema:
            raise ConfigError(str(exc)) from None
        event("MANIFEST_UNUSABLE", f"{exc}; it will be rewritten", "WARNING")
        return {}, None
    if not previous:
        return {}, None
    changed = manifest.context_change(manifest.context(previous), current)
    if changed:
        event("VERSIONS_CHANGED", f"manifest was built for another context ({'; '.join(changed)}): "
              "every entry is checked again", "WARNING")
        return {}, previous
    out = {}
    for doc in previous.get("entries", []):
        record = EntryRecord.parse(doc)
        if record is not None and not doc.get("context"):
            out[record.key] = record
    return out, previous


def classify(record: EntryRecord, previous: Optional[EntryRecord], consumer: Consumer, roots: CacheRoots,
             versions: Mapping[str, Optional[str]], force: bool) -> EntryRecord:
    """The planned record with its status (None = build it) and reason."""
    if record.status is not None:  # refused while planning (e.g. a literal '~' the job passes)
        return record
    prev_ready = previous is not None and previous.status is not None and previous.status.ready
    will_build = force or not prev_ready or previous.source is None
    try:
        # an entry that will be built anyway is hashed by the build (overlapped with
        # importing datasets), not here: a large file is then hashed once, not twice
        source = fingerprint(record.call.source(), previous.source if previous else None, content=not will_build)
        more = fingerprint_more(record.call, previous, content=not will_build)
    except SourceError as exc:
        status = Status.MISSING if exc.missing else Status.FAILED
        return dataclasses.replace(record, status=status, error=str(exc), previous=previous)
    if force:
        return dataclasses.replace(record, source=source, more_sources=more, previous=previous, reason="force=true")
    reason = assess(previous, source, consumer.layers, consumer.expected(roots, record.call, versions), more)
    if reason is not None:
        return dataclasses.replace(record, source=source, more_sources=more, previous=previous, reason=reason)
    assert previous is not None
    return dataclasses.replace(record, source=source, more_sources=more, previous=previous, status=Status.UNCHANGED,
                               rows=previous.rows, layers=previous.layers)


def classify_all(records: List[EntryRecord], previous: Dict[str, EntryRecord], consumer: Consumer,
                 roots: CacheRoots, versions: Mapping[str, Optional[str]], force: bool) -> List[EntryRecord]:
    return [classify(r, previous.get(r.key), consumer, roots, versions, force) for r in records]
