"""From tasks to entries: one entry per unique consumer call (DESIGN §4).

Both consumers key their caches on the literal ``data_files`` string, so an entry
records the exact string the jobs must pass.

- Scaffolded cells, when the experiment has them, are the truth (``plan_cells``): each
  cell's string verbatim, taken in the folder its call runs in, never rewritten.
- Without cells no job exists yet: the jobs are the ones recipes/submit.py writes, and it
  passes the string the manifest records. That string is the summary's path joined to
  the summary's folder and normalised (absolute, no ``./`` or ``//``), because a relative
  one would name another file in each job: ``inspect eval`` runs the task in the task
  script's folder (measured, inspect_ai/_eval/loader.py), `datasets` in the job's cwd.
  Paths that a job could easily spell differently are reported as hazards, and the
  gate's ``data_files=`` form refuses a job passing another string.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Dict, List, Optional

from agent.entry import EntryRecord, LoadCall, Status
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


def _realpath(path: str, folders: Optional[Dict[str, str]]) -> str:
    """os.path.realpath of a normalised path, resolving each folder once per plan (`folders`):
    1,000 datasets in one folder cost 1,000 lstats instead of one per path component each."""
    if folders is None:
        return os.path.realpath(path)
    parent, name = os.path.split(path)
    if not name or name in (".", ".."):
        return os.path.realpath(path)
    real = folders.get(parent)
    if real is None:
        real = folders[parent] = os.path.realpath(parent)
    full = os.path.join(real, name)
    return os.path.realpath(full) if os.path.islink(full) else full


def path_hazards(written: str, resolved: str, folders: Optional[Dict[str, str]] = None) -> List[str]:
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
        real = _realpath(resolved, folders)
        if real != resolved:
            notes.append(f"passes through a symlink (real file: {real})")
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
    entries: Dict[str, EntryRecord] = {}
    folders: Dict[str, str] = {}  # realpath of each data folder, once
    for task in tasks:
        written = task.dataset
        if task.origin == "lm_eval_task":
            raise SummaryError(f"{summary.path}: task '{task.name}' is an lm-eval task (lm_eval_task: "
                               f"{task.lm_eval_task}) with no dataset: pass consumer=lm_eval")
        resolved = resolve_path(summary, written)
        try:
            builder, takes_field = builder_for(resolved, task.name)
        except SummaryError as exc:  # name the summary file, like every other summary error
            raise SummaryError(f"{summary.path}: {exc}") from None
        fld: Optional[str] = None
        if takes_field:
            fld = task.field if task.field_set else default_field
        elif task.field_set and task.field is not None:
            raise SummaryError(
                f"{summary.path}: task '{task.name}': field '{task.field}' given but {written} is "
                f"{Path(written).suffix} (no top-level fields); remove field or use a .json file"
            )
        call = LoadCall(builder, resolved, fld, split)
        key = call.key()
        if key in entries:
            entries[key].tasks.append(task.name)
        else:
            entries[key] = EntryRecord(call, [task.name], written, path_hazards(written, resolved, folders))
    return list(entries.values())


def plan_cells(cells: list) -> List[EntryRecord]:
    """One entry per unique call of the scaffolded cells (agent.cells.CellCall), in path
    order; a cell's task is the summary task it evaluates. A call the job will fail to
    make (a literal '~', a file that is not there) is refused with the cell's reason."""
    from agent.jobcall import load_call

    entries: Dict[str, EntryRecord] = {}
    for cell in cells:
        call = load_call(cell)
        task = cell.summary_task or cell.task
        record = entries.get(call.key())
        if record is None:
            record = EntryRecord(call, [], cell.data_files, list(cell.hazards))
            if cell.failure and cell.data_files.startswith("~"):  # a missing file is CACHE_MISSING, as ever
                record = dataclasses.replace(record, status=Status.FAILED, error=f"{cell.data_files} ({cell.failure})")
            entries[call.key()] = record
        if task not in record.tasks:
            record.tasks.append(task)
        record.hazards.extend(h for h in cell.hazards if h not in record.hazards)
    return list(entries.values())


def plan_entries(summary: Summary, split: str, default_field: str, task: Optional[str] = None,
                 consumer: Optional[object] = None) -> List[EntryRecord]:
    """The consumer's own plan if it has one (lm-eval resolves its tasks); else the
    scaffolded cells' calls when the experiment folder has cells (they are what the jobs
    will run), else the summary's; narrowed to task= if given."""
    from agent import cells

    own = consumer.plan(summary, task) if consumer is not None else None
    if own is not None:
        return own
    if not cells.has_cells(summary.folder):
        return make_plan(summary, split, default_field, task)
    planned = plan_cells(cells.discover(summary.folder))
    if task is not None:
        names = sorted({t for r in planned for t in r.tasks})
        planned = [r for r in planned if task in r.tasks]
        if not planned:
            raise SummaryError(f"task={task}: no scaffolded cell of {summary.folder} evaluates it; "
                               f"tasks: {', '.join(names)}")
    return planned


def select_entry(entries: List[EntryRecord], index: int, summary_path: Path) -> List[EntryRecord]:
    """entry=N: only the N-th entry (0-based, plan order), as one task of a pre-build array runs."""
    if not 0 <= index < len(entries):
        raise SummaryError(
            f"entry={index}: {summary_path} plans {len(entries)} entries; choose 0 to {len(entries) - 1}"
        )
    return [entries[index]]
