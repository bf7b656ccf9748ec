"""Logging: the one place that sets up the sinks (DESIGN §6).

Each line is `[YYYY-MM-DD HH:MM:SS] EVENT: message`, on stderr and appended to the
experiment's log file. Records from the standard `logging` module (datasets, filelock,
hydra, fsspec) are routed into the same sinks by an intercept handler.

With `verbose=true` the sinks are loguru's (`logger.add` is called here only), for its
debug level and tracebacks. Otherwise the event lines are written here directly, in the
same format: importing and setting up loguru costs ~40 ms, a fifth of an unchanged
re-run of 100 datasets (issue 14; docs/benchmarks.md), for lines that need nothing of it.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional, TextIO

# loguru is imported where it is used: the fast gate uses `line`/`write_line` only and
# must not pay for it

FORMAT = "[{time:YYYY-MM-DD HH:mm:ss}] {extra[event]}: {message}"
_LEVELS = {"TRACE": 5, "DEBUG": 10, "INFO": 20, "SUCCESS": 25, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}


class _Plain:
    """The sinks without loguru: INFO and above, each line written and flushed at once
    (forked build workers share the log file, opened for append, line-buffered)."""

    def __init__(self, write: Optional[Callable[[str], object]], log_file: Optional[Path]) -> None:
        self.write = write if write is not None else sys.stderr.write
        self.flush = sys.stderr.flush if write is None else None
        self.log_file = log_file
        self.fh: Optional[TextIO] = None
        self.held: Optional[List[str]] = None  # lines kept for one write (see held())

    def emit(self, name: str, message: str, level: str) -> None:
        if _LEVELS.get(str(level).upper(), 20) < 20:
            return
        text = line(name, message)
        if self.held is not None:
            self.held.append(text)
            return
        self.out(text)

    def out(self, text: str) -> None:
        self.write(text)
        if self.flush is not None:
            self.flush()
        if self.log_file is None:
            return
        try:  # created on the first line only; a write failure never stops the run (loguru's catch=True)
            if self.fh is None:
                self.fh = open(self.log_file, "a", encoding="utf-8", buffering=1)
            self.fh.write(text)
        except OSError:
            self.log_file = None


_plain: Optional[_Plain] = None


@contextlib.contextmanager
def held() -> Iterator[None]:
    """The event lines of the block written at its end, in one write per sink instead of
    two per line: the lines of a re-run's unchanged entries (1,000 of them in a large
    sweep; no other process writes meanwhile). With loguru (verbose=true), as they come."""
    plain = _plain
    if plain is None or plain.held is not None:
        yield
        return
    plain.held = []
    try:
        yield
    finally:
        text, plain.held = "".join(plain.held), None
        if text:
            plain.out(text)


def _intercept():  # logging is imported only by setup: the gate writes lines without it
    import logging

    class _Intercept(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            event_name = record.name.split(".")[0].upper() or "LOG"
            if _plain is not None:
                message = record.getMessage()
                if record.exc_info:
                    import traceback

                    message += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
                _plain.emit(event_name, message, record.levelname)
                return
            from loguru import logger

            try:
                level = logger.level(record.levelname).name
            except ValueError:
                level = record.levelno
            logger.bind(event=event_name).opt(exception=record.exc_info).log(level, record.getMessage())

    return _Intercept()


def setup(log_file: Optional[Path], verbose: bool, write: Optional[Callable[[str], None]] = None) -> None:
    """stderr (or `write`, e.g. a progress bar's writer) plus the log file."""
    import logging

    global _plain
    if log_file is not None:
        from agent.netfs import ensure_dir

        # loguru's own makedirs fails on a stale negative entry (another node just made
        # the folder) and catch=True would then drop every line silently
        with contextlib.suppress(OSError):
            ensure_dir(Path(log_file).parent)
    if verbose:
        from loguru import logger

        _plain = None
        logger.remove()
        logger.configure(extra={"event": "LOG"})
        sink = write if write is not None else sys.stderr
        logger.add(sink, format=FORMAT, level="DEBUG", colorize=False, backtrace=True, diagnose=False)
        if log_file is not None:
            logger.add(str(log_file), format=FORMAT, level="DEBUG", colorize=False, enqueue=False,
                       encoding="utf-8", catch=True, delay=True)  # created on the first line only
    else:
        _plain = _Plain(write, log_file)
    logging.basicConfig(handlers=[_intercept()], level=logging.DEBUG if verbose else logging.WARNING, force=True)
    for name in ("datasets", "filelock", "hydra", "fsspec", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)


def event(name: str, message: str, level: str = "INFO") -> None:
    if _plain is not None:
        _plain.emit(name, message, level)
        return
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
