"""The pipeline: typed config -> plan -> build -> verify -> decision -> manifest.

Each stage is a plain function over typed values. Entries whose source and layers are
exactly as the previous manifest recorded are `unchanged` without importing `datasets`:
an unchanged re-run costs a stat per source and a few per layer.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from agent import __version__, layers, manifest, policy, report
from agent.build import BuildOutcome, BuildRequest, build_entry, sweep_leftovers
from agent.config import EXAMPLE_SUMMARY, AgentConfig, expand, inside
from agent.errors import EXIT_PROCEED, EXIT_STOP, AgentError, ConfigError, ManifestError, SourceError
from agent.fingerprint import Fingerprint, fingerprint
from agent.layers import HF, INSPECT, CacheRoots, Layer, inspect_folder, layer_problems
from agent.logs import event
from agent.plan import Entry, make_plan, select_entry
from agent.summary import read_summary


@dataclass
class Paths:
    summary: Path
    manifest: Path
    log_file: Path
    roots: CacheRoots


def resolve_paths(cfg: AgentConfig, environ=os.environ) -> Paths:
    summary = expand(cfg.experiment) or EXAMPLE_SUMMARY
    state = expand(cfg.site.state_dir) or summary.parent
    manifest_path = inside(state, cfg.manifest, "manifest") or state / ".cluster-agent" / "manifest.json"
    log_file = inside(state, cfg.log_file, "log_file") or state / "logs" / "cluster-agent.log"
    roots = layers.resolve_roots(expand(cfg.site.hf_cache), expand(cfg.site.xdg_cache_home), environ)
    return Paths(summary, manifest_path, log_file, roots)


def apply_umask(site_umask: Optional[str]) -> None:
    """The site's umask (e.g. 0002, group-shared); without one, the inherited umask with
    world-write masked off: nothing the agent writes is ever world-writable."""
    if site_umask is not None:
        os.umask(int(str(site_umask), 8))
    else:
        current = os.umask(0o022)
        os.umask(current | 0o002)


def installed_versions(consumer: str) -> Dict[str, Optional[str]]:
    """The versions that key the caches, read without importing the libraries."""
    from agent.versions import versions  # dist-info lookup: no importlib.metadata import

    out = versions(("datasets", "pyarrow", "inspect_ai"))
    if consumer == INSPECT and out["inspect_ai"] is None:
        raise ConfigError("consumer=inspect needs inspect-ai: pip install 'cluster-agent[inspect]', "
                          "or pass consumer=datasets")
    return out


@dataclass
class Item:
    """One entry on its way through the run."""

    entry: Entry
    status: str = "pending"  # unchanged | build | missing | failed, then the final status
    reason: str = ""
    source: Optional[Fingerprint] = None
    previous: Optional[Dict[str, Any]] = None
    rows: Optional[int] = None
    layers: Dict[str, Layer] = field(default_factory=dict)
    error: Optional[str] = None
    seconds: float = 0.0
    notes: List[str] = field(default_factory=list)


def wanted_layers(consumer: str) -> List[str]:
    return [HF, INSPECT] if consumer == INSPECT else [HF]


def classify(item: Item, prev: Optional[Dict[str, Any]], cfg: AgentConfig, roots: CacheRoots,
             versions: Dict[str, Optional[str]], prev_ok: bool) -> None:
    """unchanged / build / missing / failed, from the previous manifest and a stat."""
    consumer = cfg.consumer.kind.name
    previous_fp = None
    if prev and prev_ok and isinstance(prev.get("source"), dict):
        try:
            previous_fp = Fingerprint.from_json(prev["source"])
        except (KeyError, TypeError, ValueError):
            previous_fp = None
    item.previous = prev
    # an entry that will be built whatever its content is hashed by the build (overlapped
    # with importing datasets), not here: a large file is then hashed once, not twice
    will_build = cfg.force or previous_fp is None or prev.get("status") not in manifest.READY
    try:
        item.source = fingerprint(item.entry.call.data_files, previous_fp, content=not will_build)
    except SourceError as exc:
        item.status, item.error = ("missing" if exc.missing else "failed"), str(exc)
        return
    if cfg.force:
        item.status, item.reason = "build", "force=true"
        return
    if not prev or not prev_ok or prev.get("status") not in manifest.READY or previous_fp is None:
        item.status, item.reason = "build", "not built yet" if not prev else "not ready in the manifest"
        return
    if previous_fp.sha256 != item.source.sha256:
        item.status, item.reason = "build", "content changed"
        return
    if previous_fp.mtime_ns != item.source.mtime_ns:
        item.status, item.reason = "build", "mtime changed (new HF cache key)"
        return
    try:
        recorded = {k: Layer.from_json(v) for k, v in (prev.get("layers") or {}).items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        recorded = {}
    for kind in wanted_layers(consumer):
        layer = recorded.get(kind)
        if layer is None:
            item.status, item.reason = "build", f"no {kind} layer recorded"
            return
        expected_root = roots.hf if kind == HF else roots.inspect
        if not layer.dir.startswith(str(expected_root) + os.sep):
            item.status, item.reason = "build", f"{kind} cache root moved to {expected_root}"
            return
        if kind == INSPECT and layer.dir != str(inspect_folder(roots, item.entry.call, versions["inspect_ai"] or "0")):
            item.status, item.reason = "build", "inspect cache key moved"
            return
        problems = layer_problems(kind, layer)
        if problems:
            item.status, item.reason = "build", problems[0]
            return
    item.status = "unchanged"
    item.rows = prev.get("rows")
    item.layers = recorded


# Peak RSS of one build: DESIGN measured 150 MB + 4.3 x the file; bench/run.py measured
# 3.1 GB for a 200 MB file of short rows (~15.5 x), since `field=` parses the whole file
# into Python objects. Budget for the worse case.
_RSS_PER_SOURCE_BYTE = 16.0


def _estimate_mb(item: Item) -> float:
    size = item.source.size if item.source else 0
    return 150 + _RSS_PER_SOURCE_BYTE * size / 1e6


def build_all(items: List[Item], cfg: AgentConfig, roots: CacheRoots, job_env: Dict[str, str],
              versions: Dict[str, Optional[str]], on_done: Callable[[Item], None]) -> None:
    """Build every item marked `build`; jobs>1 uses worker processes under the memory budget."""
    todo = [i for i in items if i.status == "build"]
    if not todo:
        return
    umask = int(str(cfg.site.umask), 8) if cfg.site.umask is not None else None

    def request(item: Item) -> BuildRequest:
        return BuildRequest(
            call=item.entry.call, consumer=cfg.consumer.kind.name, roots=roots, job_env=job_env,
            versions=versions, previous=Fingerprint.from_json(item.previous["source"])
            if item.previous and isinstance(item.previous.get("source"), dict) else None,
            lock_kind=cfg.site.lock.name, lock_timeout_s=cfg.site.lock_timeout_s,
            lock_stale_s=cfg.site.lock_stale_s, force=cfg.force, umask=umask, current=item.source)

    def finish(item: Item, outcome: Optional[BuildOutcome], error: Optional[BaseException]) -> None:
        if outcome is not None:
            item.status, item.rows, item.layers = outcome.status, outcome.rows, outcome.layers
            item.source, item.seconds, item.notes = outcome.source, outcome.seconds, outcome.notes
        elif isinstance(error, AgentError):
            _hash_if_needed(item)  # the manifest merge matches failures to others' builds by hash
            item.status, item.error = "failed", str(error)
            if isinstance(error, SourceError) and error.missing:
                item.status = "missing"
        else:
            _hash_if_needed(item)
            item.status, item.error = "failed", f"{item.entry.call.data_files} ({type(error).__name__}: {error})"
        if error is not None and cfg.verbose:
            from loguru import logger

            logger.opt(exception=error).bind(event="DEBUG").debug("build failed")
        on_done(item)

    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
    from multiprocessing import get_context

    # Builds run in worker processes even with jobs=1: the agent itself never imports
    # datasets, and a build's peak memory (150 MB + up to 16 x the file) is returned to the
    # system when its worker exits, before the verification process starts.
    # Largest first, and never more estimated peak RSS in flight than the site allows.
    workers = min(cfg.jobs, len(todo))
    queue = sorted(todo, key=_estimate_mb, reverse=True) if workers > 1 else list(todo)
    budget = cfg.site.memory_budget_mb
    running: Dict[Future, Item] = {}
    in_use = 0.0
    # fork: the parent has not imported datasets, and forking avoids re-importing the agent
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("fork")) as pool:
        while queue or running:
            while queue and len(running) < workers and (not running or in_use + _estimate_mb(queue[0]) <= budget):
                item = queue.pop(0)
                in_use += _estimate_mb(item)
                running[pool.submit(build_entry, request(item))] = item
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in done:
                item = running.pop(fut)
                in_use -= _estimate_mb(item)
                exc = fut.exception()
                finish(item, None if exc else fut.result(), exc)


def _hash_if_needed(item: Item) -> None:
    if item.source is not None and item.source.sha256 is None:
        try:
            item.source = fingerprint(item.entry.call.data_files, None)
        except SourceError:
            pass


def verify_built(items: List[Item], cfg: AgentConfig, roots: CacheRoots, job_env: Dict[str, str],
                 started: Any = None) -> None:
    """`started`: the verification process verify.start() launched before the builds."""
    from agent.verify import cancel, verify

    # also what another agent built (shared record): it was verified in *its* job environment
    targets = [i for i in items if i.status in ("built", "rebuilt")
               or (i.status == "unchanged" and "built by another agent" in i.notes)]
    if not targets:
        if started is not None:
            cancel(started)
        return
    event("CACHE_VERIFY", f"Loading {len(targets)} dataset(s) with the real {cfg.consumer.kind.name} call in a fresh process")
    calls = [dict(i.entry.call.__dict__, rows=i.rows, watch=_watched(i)) for i in targets]
    results = verify(cfg.consumer.kind.name, calls, [str(roots.hf), str(roots.inspect)], job_env, started=started)
    for item, result in zip(targets, results):
        if not result["ok"]:
            item.status, item.error = "failed", f"{item.entry.call.describe()} (verification: {result['error']})"


def _watched(item: Item) -> List[str]:
    """The folders whose every file verification compares: the entry's HF config folder
    (<hf>/<builder>/<config>, holding its version folders) and its inspect folder."""
    out = []
    if HF in item.layers:
        out.append(str(Path(item.layers[HF].dir).parent.parent))
    if INSPECT in item.layers:
        out.append(item.layers[INSPECT].dir)
    return out


def _check_writable(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{what} {folder} is not writable ({exc.strerror}); fix its permissions "
                          "or point the site profile elsewhere") from None


def config_digest(cfg: AgentConfig) -> str:
    from dataclasses import asdict

    return hashlib.sha256(repr(sorted(asdict(cfg).items(), key=lambda kv: kv[0])).encode()).hexdigest()[:16]


def _entry_doc(item: Item, consumer: str) -> Dict[str, Any]:
    call = item.entry.call
    return {
        "key": call.key(),
        "call": dict(call.__dict__),
        "python": call.python(consumer),
        "tasks": list(item.entry.tasks),
        "written": item.entry.written,
        "hazards": list(item.entry.hazards),
        "source": item.source.to_json() if item.source else None,
        "layers": {k: v.to_json() for k, v in item.layers.items()},
        "rows": item.rows,
        "status": item.status,
        "error": item.error,
        "seconds": round(item.seconds, 3),
    }


def run(cfg: AgentConfig, stdout=sys.stdout) -> int:
    paths = resolve_paths(cfg)
    action = cfg.action.name
    consumer = cfg.consumer.kind.name
    versions = installed_versions(consumer)
    conditions_dir = expand(cfg.conditions.dir) if cfg.conditions.dir else None
    if conditions_dir is not None and not os.path.isabs(cfg.conditions.dir or ""):
        conditions_dir = paths.summary.parent / str(cfg.conditions.dir)
    summary = read_summary(paths.summary, conditions_dir, cfg.conditions.pattern)
    entries = make_plan(summary, cfg.consumer.split, cfg.consumer.default_field, cfg.task)
    if cfg.entry is not None:
        entries = select_entry(entries, cfg.entry, paths.summary)
    job_env = paths.roots.job_env(consumer, cfg.site.env)
    if action == "prebuild":  # before any log line: an unusable root is one error line (exit 2)
        _check_writable(paths.roots.hf, "HF cache root")
        if consumer == INSPECT:
            _check_writable(paths.roots.inspect, "inspect cache folder")
        _check_writable(paths.manifest.parent, "manifest folder")

    previous: Optional[Dict[str, Any]] = None
    try:
        previous = manifest.read(paths.manifest)
    except ManifestError as exc:
        if "newer than this cluster-agent" in str(exc):
            raise ConfigError(str(exc)) from None
        event("MANIFEST_UNUSABLE", f"{exc}; it will be rewritten", "WARNING")
    # another job environment (cache roots, site env) means other folders the jobs read
    prev_ok = (bool(previous) and previous.get("versions") == versions and previous.get("consumer") == consumer
               and previous.get("env") == job_env)
    if previous and not prev_ok:
        event("VERSIONS_CHANGED", "manifest was built for other library versions, another consumer or another job environment: "
              "every entry is checked again", "WARNING")
    prev_entries = manifest.entries_by_key(previous) if previous else {}

    items = [Item(e) for e in entries]
    warned = set()
    for item in items:
        if item.entry.hazards and item.entry.written not in warned:
            warned.add(item.entry.written)
            event("PATH_HAZARD", f"{item.entry.written}: {'; '.join(item.entry.hazards)}: jobs must pass exactly "
                  f"{item.entry.call.data_files!r} (recorded in the manifest)", "WARNING")
        classify(item, prev_entries.get(item.entry.call.key()), cfg, paths.roots, versions, prev_ok)

    if action == "plan":
        return report.plan(items, cfg, paths, stdout)

    # prebuild
    apply_umask(cfg.site.umask)
    listings: Dict[Path, List[str]] = {}
    for item in items:
        if item.status == "unchanged":  # what a killed builder left beside ready layers
            item.notes += sweep_leftovers(paths.roots, item.entry.call, consumer, versions, item.layers,
                                          cfg.site.lock.name, cfg.site.lock_stale_s, listings)

    event("CACHE_PREBUILD", f"Pre-building {'HF datasets + inspect-ai' if consumer == INSPECT else 'HF datasets'} cache\n"
          f"Unique datasets: {len(items)}")
    t0 = time.perf_counter()
    progress = report.Progress(len(items), enabled=sys.stderr.isatty() and cfg.output.name == "text")
    for item in items:
        if item.status in ("unchanged", "missing", "failed"):
            report.log_item(item)
            progress.advance(item)
    # the verification process starts now, so that its imports overlap the builds
    started = None
    if cfg.verify and any(i.status == "build" for i in items):
        from agent import verify as verify_mod

        started = verify_mod.start(consumer, job_env)
    try:
        build_all(items, cfg, paths.roots, job_env, versions, lambda it: (report.log_item(it), progress.advance(it)))
    except BaseException:
        if started is not None:
            verify_mod.cancel(started)
        raise
    if cfg.verify:
        verify_built(items, cfg, paths.roots, job_env, started)
        for item in items:
            if item.status == "failed" and item.error and "(verification:" in item.error:
                report.log_item(item)
    progress.close()
    counts = manifest.count([{"status": i.status} for i in items])
    ready = counts["built"] + counts["unchanged"] + counts["rebuilt"]
    event("CACHE_PREBUILD_COMPLETE", f"{ready} ready, {counts['missing']} missing, {counts['failed']} failed "
          f"({time.perf_counter() - t0:.1f} s)")

    decision, why = policy.decide(counts["missing"] + counts["failed"], cfg.policy.mode.name,
                                  cfg.policy.non_interactive.name)
    event("DECISION", f"{decision}: {why}", "INFO" if decision == "proceed" else "WARNING")

    doc = {
        "schema_version": manifest.SCHEMA_VERSION,
        "agent_version": __version__,
        "config_digest": config_digest(cfg),
        "experiment": {"name": summary.name, "summary": str(summary.path)},
        "site": cfg.site.name,
        "host": socket.gethostname(),
        "user": _user(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "consumer": consumer,
        "env": job_env,
        "versions": versions,
        "entries": [_entry_doc(i, consumer) for i in items],
        "summary": counts,
        "decision": decision,
    }
    from agent.locks import clean_leftovers, hold

    with hold(paths.manifest.with_name(paths.manifest.name + ".lock"), cfg.site.lock.name,
              cfg.site.lock_timeout_s, cfg.site.lock_stale_s):
        # temporary manifests of agents killed while writing (only when provably gone)
        clean_leftovers(paths.manifest.parent, f".{paths.manifest.name}.tmp-", cfg.site.lock_stale_s)
        try:
            existing = manifest.read(paths.manifest)
        except ManifestError:
            existing = None
        same_keys = bool(existing) and existing.get("versions") == versions and existing.get("consumer") == consumer
        doc = manifest.merge(existing if same_keys else None, doc)
        if (cfg.task is not None or cfg.entry is not None) and same_keys:
            # narrowed run: keep the other tasks' entries as they were (only when they were
            # built for the same library versions: the manifest's versions vouch for all)
            mine = {e["key"] for e in doc["entries"]}
            doc["entries"] += [e for e in existing.get("entries", []) if e["key"] not in mine]
            doc["summary"] = manifest.count(doc["entries"])
        try:
            manifest.write_atomic(paths.manifest, doc)
        except OSError as exc:
            raise ConfigError(f"manifest {paths.manifest} could not be written ({exc.strerror}); "
                              "fix the folder's permissions or pass manifest=PATH") from None
    report.result(doc, paths.manifest, cfg.output.name, stdout)
    return EXIT_PROCEED if decision == "proceed" else EXIT_STOP


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
