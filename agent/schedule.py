"""Running the builds: worker processes, largest first, within the site's memory budget.

Builds run in worker processes even with jobs=1: the agent itself never imports
`datasets`, and a build's peak memory (150 MB + up to 16 x the file) is returned to the
system when its worker exits, before the verification process starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional, Tuple

from agent.build import BuildSettings, build_entry
from agent.entry import EntryRecord, Status
from agent.errors import AgentError, SourceError
from agent.fingerprint import fingerprint

if TYPE_CHECKING:  # multiprocessing costs an unchanged re-run 11 ms to import: only when it builds
    from multiprocessing.context import BaseContext

# Peak RSS of one build: DESIGN measured 150 MB + 4.3 x the file; bench/run.py measured
# 3.1 GB for a 200 MB file of short rows (~15.5 x), since `field=` parses the whole file
# into Python objects. Budget for the worse case.
_RSS_PER_SOURCE_BYTE = 16.0


def estimate_mb(record: EntryRecord) -> float:
    size = record.source.size if record.source else 0
    return 150 + _RSS_PER_SOURCE_BYTE * size / 1e6


def failed(record: EntryRecord, error: BaseException) -> EntryRecord:
    """The record of a build that raised: missing / failed with one line of error."""
    source = record.source
    if source is not None and source.sha256 is None:  # the manifest merge matches failures by hash
        try:
            source = fingerprint(record.call.source(), None)
        except SourceError:
            pass
    if isinstance(error, AgentError):
        status = Status.MISSING if isinstance(error, SourceError) and error.missing else Status.FAILED
        message = str(error)
    else:
        status, message = Status.FAILED, f"{record.call.data_files} ({type(error).__name__}: {error})"
    return dataclasses.replace(record, status=status, error=message, source=source)


def build_all(records: List[EntryRecord], settings: BuildSettings, jobs: int, budget_mb: float,
              on_done: Callable[[EntryRecord], None], verbose: bool = False) -> List[EntryRecord]:
    """Build every record that needs it; returns the records in the same order, each
    built one replaced by what its worker returned. `on_done` sees each as it finishes."""
    todo = [i for i, r in enumerate(records) if r.needs_build]
    out = list(records)
    if not todo:
        return out

    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

    workers = min(jobs, len(todo))
    queue = sorted(todo, key=lambda i: estimate_mb(records[i]), reverse=True) if workers > 1 else list(todo)
    running: Dict[Future, int] = {}
    in_use = 0.0
    from agent.build import die_with_parent

    with _worker_context(workers, settings.job_env) as (context, parent), \
            ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                initializer=die_with_parent, initargs=(parent, os.getpid())) as pool:
        while queue or running:
            while queue and len(running) < workers and (
                    not running or in_use + estimate_mb(records[queue[0]]) <= budget_mb):
                i = queue.pop(0)
                in_use += estimate_mb(records[i])
                running[pool.submit(build_entry, records[i], settings)] = i
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in done:
                i = running.pop(fut)
                in_use -= estimate_mb(records[i])
                exc: Optional[BaseException] = fut.exception()
                if exc is None:
                    out[i] = fut.result()
                else:
                    out[i] = failed(records[i], exc)
                    if verbose:
                        from loguru import logger

                        logger.opt(exception=exc).bind(event="DEBUG").debug("build failed")
                on_done(out[i])
    return out


@contextlib.contextmanager
def _worker_context(workers: int, job_env: Dict[str, str]) -> Iterator[Tuple[BaseContext, int]]:
    """(how the build workers start, the pid they are forked from).

    One worker: forked from the agent, which has not imported `datasets` (the worker
    imports it, overlapped with hashing the source). Several: forked from a fork server
    that imported `datasets` once with the job environment (agent.buildserver), so the
    import is paid once, not once per worker. The server serves this run only: it is
    stopped after the builds, so a later run in the same process (a sweep, the tests)
    never forks from a server that read another run's cache roots."""
    from multiprocessing import get_context

    if workers < 2:
        yield get_context("fork"), os.getpid()
        return
    from multiprocessing import forkserver

    context = get_context("forkserver")
    context.set_forkserver_preload(["agent.buildserver"])
    saved = dict(os.environ)
    os.environ.update(job_env)  # the server's environment is the agent's at its start
    try:
        forkserver.ensure_running()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    try:
        # stdlib has no public name for the server's pid or for stopping it (3.8-3.13)
        yield context, forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]
    finally:
        forkserver._forkserver._stop()  # type: ignore[attr-defined]
