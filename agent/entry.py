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

import json
import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple  # noqa: F401

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
    """The exact call a job makes, nothing rewritten:
    load_dataset(builder, name=, data_dir=, revision=, **kwargs, split=) in the folder `cwd`,
    where kwargs are data_files, field and any literal extras *in the job's order*
    (inspect-ai hashes str(kwargs), so the order is part of its cache key).

    `data_files` is the string as the job passes it. A relative one is taken in `cwd`
    (`datasets` joins it to the working folder for its key; inspect-ai keys on the string
    alone). `source()` names the file, for fingerprinting and grouping only.

    An lm-eval job's call (agent.consumers.lm_eval) passes no split (`split=None`: the
    whole DatasetDict) and may pass `data_files` as a list or a mapping of splits, kept
    exactly as the task wrote it; `files()` then names every file it opens.
    """

    builder: str
    data_files: Any  # str, or (lm-eval) a list of str or a {split: str | [str]} mapping
    field: Optional[str]
    split: Optional[str]
    cwd: Optional[str] = None  # the folder the job runs its call in; None = data_files is absolute
    name: Optional[str] = None
    data_dir: Optional[str] = None
    revision: Optional[str] = None
    # literal extra kwargs the job passes to load_dataset, and the order of every kwarg
    # (data_files, field, extras) as the job writes them; () = data_files, field, extras
    extra: Tuple[Tuple[str, Any], ...] = ()
    order: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # a process's working folder is always the physical one (os.getcwd() after any cd
        # through a symlink), and that is what `datasets` joins a relative data_files to
        if self.cwd is not None:
            object.__setattr__(self, "cwd", os.path.realpath(self.cwd))
        # the default order is stored as (): the same call read from a cell and given as
        # data_files= (or from an earlier manifest) has one key
        default = ("data_files",) + (("field",) if self.field is not None else ()) + tuple(k for k, _ in self.extra)
        if tuple(self.order) == default:
            object.__setattr__(self, "order", ())

    def __hash__(self) -> int:  # extras may hold lists
        return hash(self.key())

    def kwargs(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"data_files": self.data_files}
        if self.field is not None:
            out["field"] = self.field
        out.update(self.extra)
        if self.order:
            return {k: out[k] for k in self.order if k in out}
        return out

    def patterns(self) -> List[str]:
        """Every path string in data_files, in the order the job wrote them."""
        files = self.data_files
        if isinstance(files, str):
            return [files]
        if isinstance(files, Mapping):
            return [p for v in files.values() for p in ([v] if isinstance(v, str) else list(v))]
        return [str(p) for p in files]

    def files(self) -> List[str]:
        """The paths `datasets` opens: each data_files string joined to the job's folder
        (not normalised), first one first."""
        out = []
        for pattern in self.patterns():
            out.append(pattern if self.cwd is None or os.path.isabs(pattern) else os.path.join(self.cwd, pattern))
        return list(dict.fromkeys(out))

    def source(self) -> str:
        """The (first) path `datasets` opens: data_files joined to the job's folder."""
        return self.files()[0]

    @property
    def shown(self) -> str:
        """data_files as messages name it: the job's string, or the mapping/list as JSON."""
        return self.data_files if isinstance(self.data_files, str) else json.dumps(self.data_files)

    def key(self) -> str:
        """A stable id of the call (not of any library version). The simple call keeps the
        id earlier manifests recorded. Computed once per call object (a run asks ~5 times
        per entry; the call is frozen, so the id cannot go stale)."""
        known = self.__dict__.get("_key")
        if known is None:
            known = self._compute_key()
            object.__setattr__(self, "_key", known)  # not a field: eq, replace and to_json ignore it
        return known

    def _compute_key(self) -> str:
        raw: list = [self.builder, self.data_files, self.field, self.split]
        rest = [self.cwd, self.name, self.data_dir, self.revision, [list(p) for p in self.extra], list(self.order)]
        if any(rest):
            raw += rest
        import hashlib  # here, not at the top: the gate's task= form never needs it (3-5 ms)

        return hashlib.sha256(json.dumps(raw, default=repr).encode()).hexdigest()[:16]

    def describe(self) -> str:
        relative = any(not os.path.isabs(p) for p in self.patterns())
        where = f" in {self.cwd}" if self.cwd and relative else ""
        details = [f"field={self.field}"] if self.field else []
        details += [f"{k}={v!r}" for k, v in self.extra]
        return f"{self.shown}{where}" + (f" ({', '.join(details)})" if details else "")

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"builder": self.builder, "data_files": self.data_files, "field": self.field,
                               "split": self.split}
        for key in ("cwd", "name", "data_dir", "revision"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.extra:
            out["extra"] = [[k, v] for k, v in self.extra]
        if self.order:
            out["order"] = list(self.order)
        return out

    @staticmethod
    def from_json(doc: Mapping[str, Any]) -> "LoadCall":
        def opt(key: str) -> Optional[str]:
            return None if doc.get(key) is None else str(doc[key])

        files = doc["data_files"]
        files = files if isinstance(files, (dict, list)) else str(files)
        return LoadCall(str(doc["builder"]), files, opt("field"), opt("split"),
                        cwd=opt("cwd"), name=opt("name"), data_dir=opt("data_dir"), revision=opt("revision"),
                        extra=tuple((str(k), v) for k, v in doc.get("extra") or ()),
                        order=tuple(str(k) for k in doc.get("order") or ()))


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
    source: Optional[Fingerprint] = None  # of call.files()[0]
    more_sources: Dict[str, Fingerprint] = field(default_factory=dict)  # of call.files()[1:], by path
    # what the consumer needs to remake its jobs' own loading (lm-eval: the task names and
    # include_path that make this call); {} for the others
    job: Dict[str, Any] = field(default_factory=dict)
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
            **({"more_sources": {k: v.to_json() for k, v in self.more_sources.items()}} if self.more_sources else {}),
            **({"job": dict(self.job)} if self.job else {}),
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
            more_sources={str(k): Fingerprint.from_json(v) for k, v in (doc.get("more_sources") or {}).items()},
            job=dict(doc.get("job") or {}),
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


def fingerprint_more(call: LoadCall, previous: Optional[EntryRecord], content: bool = True
                     ) -> Dict[str, Fingerprint]:
    """The fingerprints now of every file the call opens after its first (SourceError if
    one is gone), each hashed only when its stat moved from `previous`'s record of it."""
    from agent.fingerprint import fingerprint

    old = previous.more_sources if previous is not None else {}
    return {p: fingerprint(p, old.get(p), content=content) for p in call.files()[1:]}


# --- what a whole layer looks like ------------------------------------------------------

# The files without which each layer is broken (and poisons every later job).
REQUIRED = {
    "hf": ("dataset_info.json",),
    "inspect": ("state.json", "dataset_info.json"),
}


def _whole_as_recorded(kind: str, layer: Layer) -> bool:
    """Every recorded file is there at its recorded size, and the record itself holds the
    required files and an Arrow file (else layer_problems lists the folder for the reason)."""
    names = layer.files
    if not any(n.endswith(".arrow") for n in names) or any(n not in names for n in REQUIRED.get(kind, ())):
        return False
    for name, size in names.items():
        try:
            if os.stat(os.path.join(layer.dir, name)).st_size != size:
                return False
        except OSError:
            return False
    return True


def layer_problems(kind: str, layer: Layer) -> List[str]:
    """Why the layer on disk is not the one recorded: missing folder, files, truncation."""
    if _whole_as_recorded(kind, layer):  # the common case: one stat per recorded file, no listing
        return []
    try:
        present = {e.name: e.stat().st_size for e in os.scandir(layer.dir) if e.is_file()}
    except FileNotFoundError:
        return [f"{kind} cache folder {layer.dir} is gone"]
    except OSError as exc:
        return [f"{kind} cache folder {layer.dir} unreadable ({exc.strerror})"]
    problems = []  # the recorded files first: they name the file that is gone or cut
    for name, size in layer.files.items():
        if name not in present:
            problems.append(f"{kind} cache file {name} missing in {layer.dir}")
        elif present[name] != size:
            problems.append(f"{kind} cache file {layer.dir}/{name} is {present[name]} bytes, recorded {size} "
                            "(truncated or rewritten)")
    for name in REQUIRED.get(kind, ()):
        if name not in present and name not in layer.files:
            problems.append(f"{kind} cache {layer.dir} lacks {name}")
    if not any(n.endswith(".arrow") for n in present):
        problems.append(f"{kind} cache {layer.dir} has no Arrow file")
    return problems


# --- the one rule ------------------------------------------------------------------------


def assess(record: Optional[EntryRecord], now: Fingerprint, layers: Sequence[str],
           expected: Mapping[str, Tuple[Path, Optional[Path]]],
           now_more: Optional[Mapping[str, Fingerprint]] = None) -> Optional[str]:
    """None if `record` still describes caches a job would hit for the source as it is
    `now`; else the first reason it does not (a short phrase, no advice).

    `layers`: the cache layers the job's consumer reads. `expected[layer]`: (the root the
    job's environment points that layer at, the exact folder the job will look up or
    None where only `datasets` could compute it). The same rule everywhere: content and
    mtime (part of the HF key) must be as built, every layer present and whole where the
    job will look. `now_more`: the fingerprints now of a call's further files
    (record.more_sources' paths; see fingerprint_more), held to the same rule.
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
    for path, old in record.more_sources.items():
        fp = (now_more or {}).get(path)
        # these reasons name the file: it is not the one callers name the entry by
        if fp is None:
            return f"{path} was not checked"
        if fp.sha256 is not None and old.sha256 != fp.sha256:
            return f"{path} changed since the pre-build (content hash differs): its caches hold the old rows"
        if old.mtime_ns != fp.mtime_ns:
            return f"{path} has a new mtime since the pre-build: datasets looks under a new HF cache key"
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
