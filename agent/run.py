"""The pipeline for `prebuild` and `plan`: config -> plan -> reuse -> build -> verify ->
decision -> manifest. Each stage is a plain function in its own module; this one only
calls them in order."""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import List, TextIO

from agent import consumers, logs, manifest, paths, policy, report, reuse, versions
from agent.build import BuildSettings, sweep_leftovers
from agent.config import AgentConfig
from agent.entry import EntryRecord, Status
from agent.errors import EXIT_PROCEED, EXIT_STOP
from agent.logs import event
from agent.plan import plan_entries, select_entry
from agent.summary import read_summary


def run(cfg: AgentConfig, stdout: TextIO = sys.stdout) -> int:
    where = paths.for_config(cfg)
    consumer = consumers.get(cfg.consumer.kind.name)
    installed = versions.for_consumer(consumer.name)
    summary = read_summary(where.summary, paths.conditions_dir(cfg, where.summary), cfg.conditions.pattern,
                           memo=cfg.action.name == "prebuild")  # plan writes nothing, not even a memo
    planned = plan_entries(summary, cfg.consumer.split, cfg.consumer.default_field, cfg.task, consumer)
    if cfg.entry is not None:
        planned = select_entry(planned, cfg.entry, where.summary)
    job_env = consumer.job_env(where.roots, cfg.site.env)
    if cfg.action.name == "prebuild":  # before any log line: an unusable root is one error line (exit 2)
        for layer, root in consumer.roots(where.roots).items():
            paths.ensure_writable(root, {"hf": "HF cache root", "inspect": "inspect cache folder"}.get(layer, f"{layer} cache root"))
        paths.ensure_writable(where.manifest.parent, "manifest folder")
    fs_doc = resolve_lock_kind(cfg, consumer, where, warn=cfg.action.name == "prebuild")
    context = {"consumer": consumer.name, "env": job_env, "versions": installed}
    previous, _ = reuse.read_previous(where.manifest, context)
    for record in planned:
        if record.hazards:
            tasks = f"task{'s' if len(record.tasks) > 1 else ''} {', '.join(record.tasks)}"
            must = (f"jobs of {tasks} must pass exactly {record.call.data_files!r} (recorded in the manifest)"
                    if consumer.job_passes_data_files else f"needed by {tasks}")
            event("PATH_HAZARD", f"{record.written}: {'; '.join(record.hazards)}: {must}", "WARNING")
    clashes = consumer.conflicts([r.call for r in planned])
    planned = [dataclasses.replace(r, status=Status.FAILED, error=clashes[r.key]) if r.key in clashes else r
               for r in planned]
    records = reuse.classify_all(planned, previous, consumer, where.roots, installed, cfg.force)
    if cfg.action.name == "plan":
        return report.plan(records, consumer, where, cfg.output.name, stdout)

    # the site's umask is in force (cli.apply_umask, before the log file); forked build
    # workers and the verifier inherit it
    settings = BuildSettings(consumer.name, where.roots, job_env, installed, cfg.site.lock.name,
                             cfg.site.lock_timeout_s, cfg.site.lock_stale_s, cfg.force)
    listings: dict = {}
    records = [dataclasses.replace(r, notes=r.notes + sweep_leftovers(
        where.roots, r.call, consumer.name, installed, r.layers, settings.lock_kind, settings.lock_stale_s, listings))
        if r.status is Status.UNCHANGED else r for r in records]  # what a killed builder left beside ready layers
    event("CACHE_PREBUILD", f"Pre-building {consumer.title} cache\nUnique datasets: {len(records)}")
    t0 = time.perf_counter()
    progress = report.Progress(len(records), enabled=sys.stderr.isatty() and cfg.output.name == "text")
    with logs.held():  # one write for all the unchanged entries' lines
        for record in records:
            if not record.needs_build:
                report.log_item(record)
                progress.advance(record)
    records = _build_and_verify(records, cfg, settings, progress)
    progress.close()
    counts = manifest.count([{"status": str(r.status)} for r in records])
    event("CACHE_PREBUILD_COMPLETE", f"{counts['built'] + counts['unchanged'] + counts['rebuilt']} ready, "
          f"{counts['missing']} missing, {counts['failed']} failed ({time.perf_counter() - t0:.1f} s)")
    decision, why = policy.decide(counts["missing"] + counts["failed"], cfg.policy.mode.name,
                                  cfg.policy.non_interactive.name)
    event("DECISION", f"{decision}: {why}", "INFO" if decision == "proceed" else "WARNING")
    doc = manifest.document(cfg, summary, consumer, context, [r.to_json(consumer.python(r.call)) for r in records],
                            decision)
    doc["filesystem"] = fs_doc
    doc = manifest.publish(where.manifest, doc, cfg.task is not None or cfg.entry is not None, cfg.site.lock.name,
                           cfg.site.lock_timeout_s, cfg.site.lock_stale_s)
    report.result(doc, counts, where.manifest, cfg.output.name, stdout)
    return EXIT_PROCEED if decision == "proceed" else EXIT_STOP


def _build_and_verify(records: List[EntryRecord], cfg: AgentConfig, settings: BuildSettings,
                      progress: report.Progress) -> List[EntryRecord]:
    """Build what needs it, then prove each with the real call; each built entry is
    logged once, after its verification."""
    # the verification process starts now, so that its imports overlap the builds, and
    # verifies each entry as soon as it is built (while the next ones build)
    verifier = None
    if cfg.verify and any(r.needs_build for r in records):
        from agent import verify  # only then: an unchanged re-run does not import subprocess & co.

        verifier = verify.Verifier(settings.consumer, settings.job_env, [str(settings.roots.hf), str(
            settings.roots.inspect)])

    def done(record: EntryRecord) -> None:
        progress.advance(record)
        if verifier is not None:
            verify.on_built(verifier, record)
    # the memory budget counts every process the run starts: the verifier too
    budget = cfg.site.memory_budget_mb - (verifier.rss_mb if verifier else 0.0)
    from agent import schedule  # multiprocessing & co.: only when there is something to build

    try:
        built = schedule.build_all(records, settings, cfg.jobs, budget, done, cfg.verbose)
    except BaseException:
        if verifier is not None:
            verifier.cancel()
        raise
    fresh = [i for i, r in enumerate(built) if records[i].needs_build]
    if verifier is not None:
        built = verify.collect(verifier, built)
    for i in fresh:
        report.log_item(built[i])
    return built


def resolve_lock_kind(cfg: AgentConfig, consumer, where, warn: bool) -> dict:
    """site.lock=auto becomes soft or flock from the cache roots' file systems (in place,
    so every lock below uses it); returns what was detected, for the manifest."""
    from agent.config import LockKind
    from agent.fsdetect import resolve_lock

    roots = {f"{layer}_cache": str(root) for layer, root in consumer.roots(where.roots).items()}
    roots["manifest_folder"] = str(where.manifest.parent)
    kind, detected, warnings = resolve_lock(cfg.site.lock.name, roots)
    cfg.site.lock = LockKind[kind]
    for line in warnings if warn else []:
        event("LOCK_KIND", line, "WARNING")
    return detected
