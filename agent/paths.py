"""Every location the agent reads or writes, from one function.

The pre-build, the launch gate (fast path and full path), the SLURM launcher and the
recipes all call ``resolve`` (or ``for_config``), so they can never disagree about where
an experiment's manifest is. Standard library only: the fast gate uses it.

- summary: ``experiment=`` (default: the bundled example)
- state folder: ``site.state_dir``, else the summary's folder
- manifest: ``manifest=`` (relative = inside the state folder), else
  ``<state>/.cluster-agent/manifest.json`` for ``experiment_summary.yaml`` and
  ``<state>/.cluster-agent/<stem>.manifest.json`` for any other summary file, so two
  summaries in one folder never share a manifest
- log file: ``log_file=``, else ``<state>/logs/cluster-agent.log`` (``cluster-agent-<stem>.log``)
- job folder (rendered sbatch scripts, job output): ``launcher.folder``, else ``<state>/logs/slurm``
- cache roots: agent.layers.resolve_roots; shared per-entry records and locks under
  ``<hf root>/.cluster-agent/{entries,locks}``
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from agent.errors import ConfigError
from agent.layers import CacheRoots, resolve_roots

PACKAGE_DIR = Path(__file__).resolve().parent


def _bundled(name: str) -> Path:
    """A folder shipped with the package: inside it when installed, beside it in a checkout."""
    installed = PACKAGE_DIR / name
    return installed if installed.is_dir() else PACKAGE_DIR.parent / name


EXAMPLE_SUMMARY = _bundled("examples") / "experiment_summary.yaml"


def inside(base: Path, value: Optional[str], key: str) -> Optional[Path]:
    """Where `manifest=` / `log_file=` point. An absolute path (after ~ and $VARS) is the
    user's explicit choice. A relative one resolves inside `base` (the state folder: the
    summary's folder unless site.state_dir says otherwise), never against the current
    folder, and may not climb out of it with '..': nothing is written outside the
    configured folders by accident."""
    if value is None or str(value).strip() == "":
        return None
    raw = os.path.expandvars(os.path.expanduser(str(value)))
    if os.path.isabs(raw):
        return Path(os.path.abspath(raw))
    base = Path(os.path.abspath(base))
    resolved = Path(os.path.normpath(os.path.join(str(base), raw)))
    if resolved != base and base not in resolved.parents:
        raise ConfigError(
            f"{key}={value}: a relative path must stay inside {base} (it resolves to {resolved}); "
            "write an absolute path to put it elsewhere")
    return resolved


def expand(path: Optional[str]) -> Optional[Path]:
    """A configured path with ~ and $VARS expanded, made absolute (never relative to cwd
    for keys the user did not write relative)."""
    if path is None or str(path).strip() == "":
        return None
    return Path(os.path.abspath(os.path.expandvars(os.path.expanduser(str(path)))))


DEFAULT_SUMMARY_NAME = "experiment_summary.yaml"


@dataclass(frozen=True)
class Paths:
    summary: Path
    state: Path
    manifest: Path
    log_file: Path
    job_folder: Path
    roots: CacheRoots

    @property
    def records(self) -> Path:
        return records_dir(self.roots)

    @property
    def locks(self) -> Path:
        return locks_dir(self.roots)

    @property
    def manifest_lock(self) -> Path:
        return self.manifest.with_name(self.manifest.name + ".lock")


def agent_dir(roots: CacheRoots) -> Path:
    """The agent's own folder inside the HF cache root (shared by every experiment)."""
    return roots.hf / ".cluster-agent"


def records_dir(roots: CacheRoots) -> Path:
    return agent_dir(roots) / "entries"


def locks_dir(roots: CacheRoots) -> Path:
    return agent_dir(roots) / "locks"


def _stem(summary: Path) -> Optional[str]:
    """None for the conventional summary name, else the file's stem (names its manifest)."""
    return None if summary.name == DEFAULT_SUMMARY_NAME else summary.stem


def resolve(experiment: Optional[str] = None, *, state_dir: Optional[str] = None, manifest: Optional[str] = None,
            log_file: Optional[str] = None, job_folder: Optional[str] = None, hf_cache: Optional[str] = None,
            xdg_cache_home: Optional[str] = None, environ: Mapping[str, str] = os.environ) -> Paths:
    summary = expand(experiment) or EXAMPLE_SUMMARY
    state = expand(state_dir) or summary.parent
    stem = _stem(summary)
    default_manifest = state / ".cluster-agent" / (f"{stem}.manifest.json" if stem else "manifest.json")
    default_log = state / "logs" / (f"cluster-agent-{stem}.log" if stem else "cluster-agent.log")
    return Paths(
        summary=summary,
        state=state,
        manifest=inside(state, manifest, "manifest") or default_manifest,
        log_file=inside(state, log_file, "log_file") or default_log,
        job_folder=expand(job_folder) or state / "logs" / "slurm",
        roots=resolve_roots(expand(hf_cache), expand(xdg_cache_home), environ),
    )


def for_config(cfg: Any, environ: Mapping[str, str] = os.environ) -> Paths:
    """The locations of a composed AgentConfig."""
    return resolve(cfg.experiment, state_dir=cfg.site.state_dir, manifest=cfg.manifest, log_file=cfg.log_file,
                   job_folder=cfg.launcher.folder, hf_cache=cfg.site.hf_cache,
                   xdg_cache_home=cfg.site.xdg_cache_home, environ=environ)


def conditions_dir(cfg: Any, summary: Path) -> Optional[Path]:
    """The folder `eval_condition` names resolve in: conditions.dir, relative to the summary."""
    if not cfg.conditions.dir:
        return None
    raw = str(cfg.conditions.dir)
    if os.path.isabs(os.path.expanduser(raw)):
        return expand(raw)
    return summary.parent / raw


def ensure_writable(folder: Path, what: str) -> None:
    """Create `folder` if needed and prove it writable; one ConfigError line if not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        from agent.errors import ConfigError

        raise ConfigError(f"{what} {folder} is not writable ({exc.strerror}); fix its permissions "
                          "or point the site profile elsewhere") from None
