"""The call one job will make, as the gate is told it: ``cell=DIR`` (a scaffolded cell,
read exactly as its job runs it) or ``data_files=STR [field=F]`` (from the folder the
gate runs in, which is the job's). The gate then looks for that very call in the
manifest, never for a task name alone.

Standard library (+ PyYAML for cells) only: the fast gate uses it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Tuple

from agent.entry import LoadCall
from agent.errors import ConfigError
from agent.paths import DEFAULT_SUMMARY_NAME


def find_summary(start: Path) -> Optional[Path]:
    """The experiment summary in `start` or the nearest folder above it."""
    for folder in [start, *start.parents]:
        candidate = folder / DEFAULT_SUMMARY_NAME
        if candidate.is_file():
            return candidate
    return None


def from_cell(cell: str) -> Tuple[LoadCall, Path]:
    """(the cell's call, the experiment summary above it)."""
    from agent import cells

    folder = Path(os.path.abspath(os.path.expanduser(cell)))
    found = cells.read_cell(folder)
    summary = find_summary(folder)
    if summary is None:
        raise ConfigError(f"cell={cell}: no {DEFAULT_SUMMARY_NAME} in {folder} or any folder above it; "
                          "pass experiment=PATH")
    return load_call(found), summary


def load_call(cell) -> LoadCall:
    """A scaffolded cell's call (agent.cells.CellCall) as an entry's LoadCall: the same
    string, folder (the one hf_dataset runs in), named arguments and kwargs order."""
    kwargs = list(cell.kwargs)
    extra = tuple((k, v) for k, v in kwargs if k not in ("data_files", "field"))
    relative = not os.path.isabs(cell.data_files)
    return LoadCall(cell.builder, cell.data_files, cell.field, cell.split,
                    cwd=str(cell.workdir) if relative else None, name=cell.name, data_dir=cell.data_dir,
                    revision=cell.revision, extra=extra, order=tuple(k for k, _ in kwargs))


def from_data_files(data_files: str, field: Optional[str], default_field: str = "test",
                    split: str = "train", cwd: Optional[str] = None) -> LoadCall:
    """The call `load_dataset(builder, data_files=STR, field=F, split=...)` run in `cwd`."""
    from agent.plan import BUILDERS

    suffix = Path(data_files).suffix.lower()
    if suffix not in BUILDERS:
        raise ConfigError(f"data_files={data_files}: unknown extension '{suffix or '(none)'}'; "
                          f"use one of {', '.join(BUILDERS)}")
    builder, takes_field = BUILDERS[suffix]
    if field is not None and not takes_field:
        raise ConfigError(f"field={field}: {data_files} is {suffix} (no top-level fields); drop field=")
    here = cwd or os.getcwd()
    return LoadCall(builder, data_files, (field or default_field) if takes_field else None, split,
                    cwd=None if os.path.isabs(data_files) else here)
