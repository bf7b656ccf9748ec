"""Logging: the one place that calls `logger.add` (DESIGN §6).

Each line is `[YYYY-MM-DD HH:MM:SS] EVENT: message`, on stderr and appended to the
experiment's log file. Records from the standard `logging` module (datasets, filelock,
hydra, fsspec) are routed into the same sinks by an intercept handler.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import Callable, Optional, TextIO

# loguru is imported where it is used: the fast gate uses `line`/`write_line` only and
# must not pay for it

FORMAT = "[{time:YYYY-MM-DD HH:mm:ss}] {extra[event]}: {message}"


class _Intercept(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        from loguru import logger

        event = record.name.split(".")[0].upper() or "LOG"
        try:
            level = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.bind(event=event).opt(exception=record.exc_info).log(level, record.getMessage())


def setup(log_file: Optional[Path], verbose: bool, write: Optional[Callable[[str], None]] = None) -> None:
    """stderr (or `write`, e.g. a progress bar's writer) plus the log file."""
    from loguru import logger

    logger.remove()
    logger.configure(extra={"event": "LOG"})
    level = "DEBUG" if verbose else "INFO"
    sink = write if write is not None else sys.stderr
    logger.add(sink, format=FORMAT, level=level, colorize=False, backtrace=verbose, diagnose=False)
    if log_file is not None:
        from agent.netfs import ensure_dir

        # loguru's own makedirs fails on a stale negative entry (another node just made
        # the folder) and catch=True would then drop every line silently
        with contextlib.suppress(OSError):
            ensure_dir(Path(log_file).parent)
        logger.add(str(log_file), format=FORMAT, level=level, colorize=False, enqueue=False,
                   encoding="utf-8", catch=True, delay=True)  # created on the first line only
    logging.basicConfig(handlers=[_Intercept()], level=logging.DEBUG if verbose else logging.WARNING, force=True)
    for name in ("datasets", "filelock", "hydra", "fsspec", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)


def event(name: str, message: str, level: str = "INFO") -> None:
    from loguru import logger

    logger.bind(event=name).log(level, message)


def line(name: str, message: str) -> str:
    """One event line in FORMAT, for the processes that must not import loguru (the fast
    gate at the start of every job, the launcher printing a job id)."""
    return f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {name}: {message}\n"


def write_line(name: str, message: str, log_file: Optional[Path], stderr: TextIO = sys.stderr) -> None:
    """An event line on stderr and appended to the experiment's log file, if its folder
    exists (a gate never creates folders; a write failure is not the job's problem)."""
    text = line(name, message)
    stderr.write(text)
    if log_file is not None and log_file.parent.is_dir():
        try:
            with open(log_file, "a", encoding="utf-8") as fh:
                fh.write(text)
        except OSError:
            pass
