"""From tasks to entries: one entry per unique consumer call (DESIGN §4).

Both consumers key their caches on the literal ``data_files`` string, so an entry
records the exact string the jobs must pass: the summary's path joined to the summary's
folder and normalised (absolute, no ``./`` or ``//``). Paths that a job could easily
spell differently are reported as hazards.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional

from agent.entry import EntryRecord, LoadCall
from agent.errors import SummaryError
from agent.summary import Summary

# file suffix -> (datasets builder, does a `field=` apply)
BUILDERS = {
    ".json": ("json", True),
    ".jsonl": ("json", False),
    ".ndjson": ("json", False),
    ".csv": ("csv", False),
    ".parquet": ("parquet", False),
}


def resolve_path(summary: Summary, written: str) -> str:
    joined = os.path.join(str(summary.folder), os.path.expanduser(written))
    return os.path.normpath(joined)


def path_hazards(written: str, resolved: str) -> List[str]:
    """Reasons why a job might pass a different string for the same file."""
    notes = []
    if not os.path.isabs(written):
        notes.append("relative path")
    if "/./" in f"/{written}" or written.startswith("./"):
        notes.append("contains './'")
    if "//" in written:
        notes.append("contains '//'")
    if "/../" in f"/{written}/":
        notes.append("contains '..'")
    try:
        if os.path.realpath(resolved) != resolved:
            notes.append(f"passes through a symlink (real file: {os.path.realpath(resolved)})")
    except OSError:
        pass
    return notes


def builder_for(path: str, task_name: str) -> tuple:
    suffix = Path(path).suffix.lower()
    if suffix not in BUILDERS:
        raise SummaryError(
            f"task '{task_name}': dataset {path} has an unknown extension '{suffix or '(none)'}'; "
            f"use one of {', '.join(BUILDERS)}"
        )
    return BUILDERS[suffix]


def make_plan(summary: Summary, split: str, default_field: str, only_task: Optional[str] = None) -> List[EntryRecord]:
    """Group the summary's tasks into entries, in first-appearance order."""
    tasks = summary.tasks
    if only_task is not None:
        tasks = [t for t in tasks if t.name == only_task]
        if not tasks:
            names = ", ".join(t.name for t in summary.tasks)
            raise SummaryError(f"task={only_task}: no such task in {summary.path}; tasks: {names}")
    entries: Dict[LoadCall, EntryRecord] = {}
    for task in tasks:
        resolved = resolve_path(summary, task.dataset)
        try:
            builder, takes_field = builder_for(resolved, task.name)
        except SummaryError as exc:  # name the summary file, like every other summary error
            raise SummaryError(f"{summary.path}: {exc}") from None
        fld: Optional[str] = None
        if takes_field:
            fld = task.field if task.field_set else default_field
        elif task.field_set and task.field is not None:
            raise SummaryError(
                f"{summary.path}: task '{task.name}': field '{task.field}' given but {task.dataset} is "
                f"{Path(resolved).suffix} (no top-level fields); remove field or use a .json file"
            )
        call = LoadCall(builder, resolved, fld, split)
        if call in entries:
            entries[call].tasks.append(task.name)
        else:
            entries[call] = EntryRecord(call, [task.name], task.dataset, path_hazards(task.dataset, resolved))
    return list(entries.values())


def select_entry(entries: List[EntryRecord], index: int, summary_path: Path) -> List[EntryRecord]:
    """entry=N: only the N-th entry (0-based, plan order), as one task of a pre-build array runs."""
    if not 0 <= index < len(entries):
        raise SummaryError(
            f"entry={index}: {summary_path} plans {len(entries)} entries; choose 0 to {len(entries) - 1}"
        )
    return [entries[index]]
