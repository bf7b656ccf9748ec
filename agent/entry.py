"""What an entry is, and the one rule that says whether it is still good.

An entry is one unique consumer call (DESIGN §4). ``EntryRecord`` is its typed record:
the manifest's entries and the shared per-entry records next to each lock are both
``EntryRecord.to_json()``. ``assess`` is the single rule, used by the pre-build (is the
previous manifest's entry unchanged?), by a builder that waited for another agent's lock
(did it build what we need?) and by the launch gate (may a job use it now?): all three
agree because they call the same function.

Standard library only (the launch gate imports this module).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from agent.fingerprint import Fingerprint


class Status(str, Enum):
    """The one status each entry reports (Ansible-style), as written in the manifest."""

    BUILT = "built"
    UNCHANGED = "unchanged"
    REBUILT = "rebuilt"
    MISSING = "missing"
    FAILED = "failed"

    def __str__(self) -> str:  # f-strings and logs show the manifest's word
        return self.value

    @property
    def ready(self) -> bool:
        return self in READY


READY = (Status.BUILT, Status.UNCHANGED, Status.REBUILT)


@dataclass(frozen=True)
class LoadCall:
    """The exact call a job makes: load_dataset(builder, data_files=..., field=..., split=...)."""

    builder: str
    data_files: str
    field: Optional[str]
    split: str

    def kwargs(self) -> Dict[str, str]:
        # Order matters: inspect-ai hashes str(kwargs), and jobs pass data_files then field.
        out = {"data_files": self.data_files}
        if self.field is not None:
            out["field"] = self.field
        return out

    def key(self) -> str:
        """A stable id of the call (not of any library version)."""
        raw = json.dumps([self.builder, self.data_files, self.field, self.split])
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    def describe(self) -> str:
        return f"{self.data_files} (field={self.field})" if self.field else self.data_files

    def to_json(self) -> Dict[str, Any]:
        return {"builder": self.builder, "data_files": self.data_files, "field": self.field, "split": self.split}

    @staticmethod
    def from_json(doc: Mapping[str, Any]) -> "LoadCall":
        return LoadCall(str(doc["builder"]), str(doc["data_files"]),
                        None if doc.get("field") is None else str(doc["field"]), str(doc["split"]))


@dataclass
class Layer:
    """One cache layer as built: its folder and every file in it with its size."""

    dir: str
    files: Dict[str, int]

    def to_json(self) -> dict:
        return {"dir": self.dir, "files": dict(self.files)}

    @staticmethod
    def from_json(doc: dict) -> "Layer":
        return Layer(str(doc["dir"]), {str(k): int(v) for k, v in doc["files"].items()})


@dataclass
class EntryRecord:
    """One entry through the whole run, and as the manifest and shared records store it."""

    call: LoadCall
    tasks: List[str] = field(default_factory=list)
    written: str = ""  # the path as the summary wrote it (first task's)
    hazards: List[str] = field(default_factory=list)
    source: Optional[Fingerprint] = None
    layers: Dict[str, Layer] = field(default_factory=dict)
    rows: Optional[int] = None
    status: Optional[Status] = None  # None while planned; one Status once decided
    error: Optional[str] = None
    seconds: float = 0.0
    # not stored: what this run learnt about the entry (for the log and the plan)
    reason: str = ""  # why it is (re)built
    notes: List[str] = field(default_factory=list)
    by_other_agent: bool = False  # another agent built it while we waited for its lock
    previous: Optional["EntryRecord"] = None  # the previous manifest's record, if usable

    @property
    def key(self) -> str:
        return self.call.key()

    @property
    def needs_build(self) -> bool:
        return self.status is None

    def to_json(self, python: str = "") -> Dict[str, Any]:
        return {
            "key": self.key,
            "call": self.call.to_json(),
            "python": python,
            "tasks": list(self.tasks),
            "written": self.written,
            "hazards": list(self.hazards),
            "source": self.source.to_json() if self.source else None,
            "layers": {k: v.to_json() for k, v in self.layers.items()},
            "rows": self.rows,
            "status": str(self.status) if self.status else None,
            "error": self.error,
            "seconds": round(self.seconds, 3),
        }

    @staticmethod
    def from_json(doc: Mapping[str, Any]) -> "EntryRecord":
        """ValueError (or KeyError/TypeError) if the document is not a usable record."""
        src = doc.get("source")
        return EntryRecord(
            call=LoadCall.from_json(doc["call"]),
            tasks=[str(t) for t in doc.get("tasks") or []],
            written=str(doc.get("written") or ""),
            hazards=[str(h) for h in doc.get("hazards") or []],
            source=Fingerprint.from_json(src) if isinstance(src, dict) else None,
            layers={str(k): Layer.from_json(v) for k, v in (doc.get("layers") or {}).items()},
            rows=None if doc.get("rows") is None else int(doc["rows"]),
            status=Status(doc["status"]) if doc.get("status") else None,
            error=doc.get("error"),
            seconds=float(doc.get("seconds") or 0.0),
        )

    @staticmethod
    def parse(doc: Any) -> Optional["EntryRecord"]:
        """from_json, or None for a record that is malformed (edited by hand, torn)."""
        try:
            return EntryRecord.from_json(doc)
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


# --- what a whole layer looks like ------------------------------------------------------

# The files without which each layer is broken (and poisons every later job).
REQUIRED = {
    "hf": ("dataset_info.json",),
    "inspect": ("state.json", "dataset_info.json"),
}


def layer_problems(kind: str, layer: Layer) -> List[str]:
    """Why the layer on disk is not the one recorded: missing folder, files, truncation."""
    try:
        present = {e.name: e.stat().st_size for e in os.scandir(layer.dir) if e.is_file()}
    except FileNotFoundError:
        return [f"{kind} cache folder {layer.dir} is gone"]
    except OSError as exc:
        return [f"{kind} cache folder {layer.dir} unreadable ({exc.strerror})"]
    problems = []
    for name in REQUIRED.get(kind, ()):
        if name not in present:
            problems.append(f"{kind} cache {layer.dir} lacks {name}")
    if not any(n.endswith(".arrow") for n in present):
        problems.append(f"{kind} cache {layer.dir} has no Arrow file")
    for name, size in layer.files.items():
        if name not in present:
            problems.append(f"{kind} cache file {name} missing in {layer.dir}")
        elif present[name] != size:
            problems.append(f"{kind} cache file {layer.dir}/{name} is {present[name]} bytes, recorded {size} "
                            "(truncated or rewritten)")
    return problems


# --- the one rule ------------------------------------------------------------------------


def assess(record: Optional[EntryRecord], now: Fingerprint, layers: Sequence[str],
           expected: Mapping[str, Tuple[Path, Optional[Path]]]) -> Optional[str]:
    """None if `record` still describes caches a job would hit for the source as it is
    `now`; else the first reason it does not (a short phrase, no advice).

    `layers`: the cache layers the job's consumer reads. `expected[layer]`: (the root the
    job's environment points that layer at, the exact folder the job will look up or
    None where only `datasets` could compute it). The same rule everywhere: content and
    mtime (part of the HF key) must be as built, every layer present and whole where the
    job will look.
    """
    if record is None:
        return "not built yet"
    if record.status is None or not record.status.ready:
        return f"{record.status or 'not built'} in the manifest" + (f" ({record.error})" if record.error else "")
    if record.source is None:
        return "no usable source fingerprint recorded"
    if now.sha256 is not None and record.source.sha256 != now.sha256:
        return "changed since the pre-build (content hash differs): its caches hold the old rows"
    if record.source.mtime_ns != now.mtime_ns:
        return "has a new mtime since the pre-build: datasets looks under a new HF cache key"
    for kind in layers:
        layer = record.layers.get(kind)
        if layer is None:
            return f"no {kind} cache recorded"
        root, folder = expected.get(kind, (None, None))
        if root is not None and not layer.dir.startswith(str(root) + os.sep):
            return f"{kind} cache root moved to {root}"
        if folder is not None and layer.dir != str(folder):
            return f"{kind} cache key moved (the job looks in {folder})"
        problems = layer_problems(kind, layer)
        if problems:
            return problems[0]
    return None
