"""The error hierarchy and the exit codes of DESIGN §7.

Every expected failure is an ``AgentError``: the entry point prints its message as one
line and exits with its code. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

EXIT_PROCEED = 0  # every dataset is ready, or the policy said go on
EXIT_STOP = 1  # a failure under `stop`, a "no" to `ask`, `ask` without a terminal
EXIT_USAGE = 2  # bad override, unreadable or malformed summary, unusable site
EXIT_GATE = 3  # the launch gate refused: manifest missing, stale, or other versions


class AgentError(Exception):
    """An expected failure with a one-line message that names the thing and the fix."""

    exit_code = EXIT_USAGE


class ConfigError(AgentError):
    """A bad override, an unknown key, a bad value or an unusable site profile."""


class SummaryError(AgentError):
    """The experiment summary cannot be read or does not have the expected shape."""


class SourceError(AgentError):
    """A dataset file cannot be built: missing, not an object, no such field, ...

    Raised per entry inside a build; the run records it as CACHE_MISSING / CACHE_FAILED
    and the failure policy decides what it means.
    """

    def __init__(self, message: str, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


class LockTimeout(AgentError):
    """Another agent held a dataset's lock for longer than the site's lock_timeout_s."""

    exit_code = EXIT_STOP


class ManifestError(AgentError):
    """The manifest is missing, truncated, edited by hand or from another schema."""

    exit_code = EXIT_GATE

    def __init__(self, message: str, newer_schema: bool = False) -> None:
        super().__init__(message)
        self.newer_schema = newer_schema  # written by a newer cluster-agent: never overwrite it


class LaunchError(AgentError):
    """sbatch is missing or refused the job, or a dependency can never be satisfied."""


class GateRefused(AgentError):
    """The launch gate found the caches not ready for this job."""

    exit_code = EXIT_GATE


class TaskScriptError(SummaryError):
    """An inspect task script whose hf_dataset call cannot be read without running it."""


class CellError(SummaryError):
    """A scaffolded eval cell (eval.yaml + cell.slurm) that is missing a part or contradicts itself."""
