"""The launch gate (`action=check`, DESIGN §8): may these jobs start now?

It runs before `sbatch` and again as the first step of every eval job, so it must be
fast: it imports neither `datasets`, `inspect_ai` nor Hydra. It reads the manifest,
re-stats each source (hashing it only when the stat moved), checks that every layer's
files are on disk at their recorded sizes, and compares the installed library versions
with the manifest's. Exit 0 = go, 3 = refused with one line per reason.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, TextIO

from agent import consumers
from agent.entry import EntryRecord, LoadCall, assess, fingerprint_more
from agent.errors import EXIT_GATE, EXIT_PROCEED, EXIT_USAGE, AgentError, ConfigError, ManifestError, SourceError
from agent.fingerprint import fingerprint
from agent.layers import CacheRoots
from agent.manifest import context, context_change, entry_context, read

_FAST_KEYS = {"action", "experiment", "manifest", "task", "output", "verbose", "consumer", "cell", "data_files", "field",
              "lm_eval_task", "include_path"}
_AGAIN = "run cluster-agent again"


def _versions(keying: tuple = ()) -> Dict[str, Optional[str]]:
    from agent.versions import KEYING_LIBRARIES, versions  # dist-info lookup: no importlib.metadata import

    return versions(KEYING_LIBRARIES + tuple(n for n in keying if n not in KEYING_LIBRARIES))


class LmEvalJob:
    """An lm-eval job as the gate sees it: what it passes to --tasks (comma-separated) and
    --include_path (taken in the job's folder, as lm-eval takes it)."""

    def __init__(self, tasks: str, include_path: Optional[str]) -> None:
        import os

        self.tasks = [t for t in tasks.split(",") if t]
        self.include_path = os.path.realpath(include_path) if include_path else None

    def describe(self) -> str:
        return f"lm_eval --tasks {','.join(self.tasks)}" + (f" --include_path {self.include_path}" if self.include_path else "")

    def entries(self, entries: List[Dict[str, Any]], manifest_path: Path) -> tuple:
        """(the entries this job loads, problems): every name it passes must have been pre-built."""
        chosen: List[Dict[str, Any]] = []
        problems = []
        for name in self.tasks:
            mine = [e for e in entries if name in (e.get("job") or {}).get("tasks_arg", [])
                    and (e.get("job") or {}).get("include_path") == self.include_path]
            if not mine:
                known = sorted({f"{t} (include_path {(e.get('job') or {}).get('include_path')})"
                                for e in entries for t in (e.get("job") or {}).get("tasks_arg", [])})
                problems.append(f"this job's {self.describe()} loads {name}, which {manifest_path} did not pre-build "
                                f"with that include path; pre-built: {', '.join(known) or 'no lm-eval tasks'}; "
                                "add it to the summary (lm_eval_task:) and run cluster-agent consumer=lm_eval")
            chosen += [e for e in mine if e not in chosen]
        return chosen, problems


def check(manifest_path: Path, task: Optional[str] = None, versions: Optional[Dict[str, Optional[str]]] = None,
          consumer: Optional[str] = None, call: Optional[Any] = None) -> Dict[str, Any]:
    """{'ok': bool, 'problems': [...], 'entries': n, 'env': {...}} for the whole manifest or one task.

    `consumer`: how the job loads its data (the job's own word; without it, the
    manifest's consumer). A manifest built for a consumer whose layers do not cover the
    job's is refused: that job would write the missing layer itself, unlocked.
    `call`: the exact call the job makes (cell=, data_files=): only the entry of that very
    call may let it through; without one, the nearest call the pre-build did cover is named.

    On a network file system a refusal is re-checked for a few seconds first: the
    manifest or a layer file another node just replaced can look torn, missing or of the
    old size until this node's attribute cache expires (netfs.SETTLE_S)."""
    from agent.netfs import retry_settled

    return retry_settled(lambda: _check_once(manifest_path, task, versions, consumer, call), lambda r: r["ok"],
                         str(manifest_path))


def _check_once(manifest_path: Path, task: Optional[str], versions: Optional[Dict[str, Optional[str]]],
                consumer: Optional[str], call: Optional[LoadCall]) -> Dict[str, Any]:
    try:
        doc = read(manifest_path)
    except ManifestError as exc:
        return _refused(manifest_path, task, [str(exc)])
    if doc is None:
        return _refused(manifest_path, task, [
            f"no manifest at {manifest_path}: run cluster-agent (prebuild) for this experiment first"])
    built_for = consumers.get(doc.get("consumer") or "inspect")
    try:
        job = consumers.get(consumer) if consumer else built_for
    except AgentError as exc:
        return _refused(manifest_path, task, [str(exc)])
    problems: List[str] = []
    if doc.get("decision") != "proceed":
        problems.append(f"the pre-build decided '{doc.get('decision')}': fix the datasets it reported and {_AGAIN}")
    missing_layers = [layer for layer in job.layers if layer not in built_for.layers]
    if missing_layers:
        problems.append(f"manifest {manifest_path} was built for consumer={built_for.name}, but this job is "
                        f"consumer={job.name}: its {', '.join(missing_layers)} cache was not pre-built; run "
                        f"cluster-agent consumer={job.name}")
    installed = versions if versions is not None else _versions(job.keying)
    for lib in job.keying:
        built_with, here = doc["versions"].get(lib), installed.get(lib)
        if built_with != here:
            problems.append(
                f"{lib} {here or 'not installed'} here, but the caches were built with {lib} {built_with}: "
                "the cache keys differ; re-run cluster-agent in the job's environment")
    entries = doc["entries"]
    if task is not None:
        entries = [e for e in entries if task in e.get("tasks", [])]
        if not entries:
            names = sorted({t for e in doc["entries"] for t in e.get("tasks", [])})
            problems.append(f"task '{task}' is not in manifest {manifest_path}; tasks: {', '.join(names)}")
    if isinstance(call, LmEvalJob):
        entries, uncovered = call.entries(entries, manifest_path)
        problems += uncovered
    elif call is not None:
        entries = [e for e in entries if e.get("key") == call.key()]
        if not entries:
            problems.append(_uncovered(call, doc["entries"], manifest_path))
    env = doc.get("env", {})
    roots = _job_roots(env)
    if not missing_layers:
        for entry in entries:
            problems += _entry_problems(doc, entry, job, roots, installed)
    return {"ok": not problems, "manifest": str(manifest_path), "task": task, "entries": len(entries),
            "problems": problems, "env": env, "call": call.describe() if call is not None else None,
            "consumer": job.name}


def _uncovered(call: LoadCall, entries: List[Dict[str, Any]], manifest_path: Path) -> str:
    """The job's call is not in the manifest: name it, its folder, and the nearest call
    that is (the same file, else the same string)."""
    import os

    def near(e: Dict[str, Any]) -> int:
        other = EntryRecord.parse(e)
        if other is None:
            return 0
        same_file = os.path.realpath(other.call.source()) == os.path.realpath(call.source())
        return 2 * same_file + (other.call.data_files == call.data_files) + (other.call.field == call.field)

    best = max(entries, key=near, default=None)
    nearest = ""
    if best is not None and near(best) > 0:
        other = EntryRecord.parse(best)
        assert other is not None
        nearest = f"; the nearest pre-built call is {other.call.describe()} (tasks {', '.join(other.tasks)})"
    return (f"this job's call {call.describe()} (run in {call.cwd or os.getcwd()}) is not in {manifest_path}: its caches "
            f"were not pre-built for it{nearest}; pre-build from the job's own cell or string "
            "(cluster-agent experiment=... with the scaffolded cells) and check again")


def _job_roots(env: Dict[str, str]) -> CacheRoots:
    """The cache roots the manifest's environment points a job at."""
    from agent.layers import resolve_roots

    return resolve_roots(None, None, env)


def _refused(manifest_path: Path, task: Optional[str], problems: List[str]) -> Dict[str, Any]:
    return {"ok": False, "manifest": str(manifest_path), "task": task, "entries": 0, "problems": problems, "env": {}}


def _entry_problems(doc: Dict[str, Any], entry: Dict[str, Any], job: Any, roots: CacheRoots,
                    installed: Dict[str, Optional[str]]) -> List[str]:
    path = str(entry["call"]["data_files"])
    ctx = entry_context(doc, entry)
    if ctx != context(doc):
        return [f"{path} was pre-built for another context ({'; '.join(context_change(ctx, context(doc)))}) and "
                f"kept by a narrowed run; run cluster-agent for its tasks ({', '.join(entry.get('tasks', []))})"]
    record = EntryRecord.parse(entry)
    if record is None:
        return [f"{path}: manifest entry is malformed (edited by hand?); {_AGAIN}"]
    path = record.call.source()  # the file, as the job's folder names it
    if record.status is not None and record.status.value == "missing":
        return [f"{path} did not exist when the pre-build ran ({record.error or 'no such file'}); "
                f"restore it and {_AGAIN}"]
    if record.status is None or not record.status.ready:
        return [f"{path} is {record.status} in the manifest ({record.error or 'no cache'}); fix it and {_AGAIN}"]
    if record.source is None:
        return [f"{path}: manifest entry has no usable source fingerprint (edited by hand?); {_AGAIN}"]
    try:
        now = fingerprint(record.call.source(), record.source)
        more = fingerprint_more(record.call, record)
    except SourceError as exc:
        return [f"{exc} since the pre-build; restore it or {_AGAIN}"]
    try:
        reason = assess(record, now, job.layers, job.expected(roots, record.call, installed), more)
    except (KeyError, TypeError, ValueError, AttributeError):
        return [f"{path}: layer record is malformed (edited by hand?); {_AGAIN}"]
    if reason is None:
        return []
    if reason.startswith(("changed since", "has a new mtime")):
        return [f"{path} {reason}; {_AGAIN}"]
    if reason.startswith(tuple(record.more_sources)):  # names the call's other file itself
        return [f"{reason}; {_AGAIN}"]
    return [f"{reason}; {_AGAIN} to repair it" if "cache" in reason else f"{path}: {reason}; {_AGAIN}"]


def emit(result: Dict[str, Any], output: str, stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr,
         log_file: Optional[Path] = None) -> int:
    """Print the gate's verdict (and append its lines to the experiment's log file)."""
    from agent.logs import write_line  # stdlib only at import

    scope = (f"this job's call {result['call']}" if result.get("call") else
             f"task {result['task']}" if result["task"] else "all tasks")
    if output == "json":
        stdout.write(json.dumps({"gate": "ok" if result["ok"] else "refused", **result}) + "\n")
    if result["ok"]:
        write_line("GATE_OK", f"{result['entries']} dataset(s) ready for {scope} ({result['manifest']})", log_file, stderr)
        if output == "shell":
            stdout.write("".join(f"export {k}={shlex.quote(str(v))}\n" for k, v in result["env"].items()))
        return EXIT_PROCEED
    for problem in result["problems"]:
        write_line("GATE_REFUSED", problem, log_file, stderr)
    return EXIT_GATE


def fast_args(argv: List[str]) -> Optional[Dict[str, str]]:
    """`action=check` with only gate keys: handled without composing the Hydra config.
    Not when a config folder beyond the shipped conf/ exists (agent.searchpath): a profile
    or defaults file there may move the manifest (site.state_dir), so the full path decides."""
    from agent import searchpath

    if searchpath.extra_locations_exist():
        return None
    pairs = {}
    for item in argv:
        if "=" not in item or item.startswith(("-", "+", "~")):
            return None
        key, value = item.split("=", 1)
        if key not in _FAST_KEYS:
            return None
        pairs[key] = value
    if pairs.get("action") != "check" or pairs.get("output", "text") not in ("text", "json", "shell"):
        return None
    if pairs.get("verbose", "false").lower() not in ("true", "false"):
        return None
    return pairs


def _given(pairs: Dict[str, str], key: str) -> Optional[str]:
    value = pairs.get(key)
    return None if value in (None, "", "null") else value


def job_call(pairs: Dict[str, Optional[str]]) -> tuple:
    """(the job's call or None, the experiment summary, the job's consumer) from the gate's
    keys: cell= reads the cell (an inspect job, its summary found by walking up);
    data_files= is taken in the current folder (the job's), its summary found the same way."""
    from pathlib import Path as _Path

    from agent import jobcall

    experiment = _given(pairs, "experiment")
    consumer = _given(pairs, "consumer")
    if sum(bool(_given(pairs, k)) for k in ("cell", "data_files", "lm_eval_task")) > 1:
        raise ConfigError("give one of cell=DIR, data_files=STR, lm_eval_task=NAME")
    if _given(pairs, "cell"):
        call, summary = jobcall.from_cell(str(_given(pairs, "cell")))
        return call, experiment or str(summary), consumer or "inspect"  # cells run `inspect eval`
    def summary_above(key: str) -> str:
        """The summary of the job's folder (walking up), for a call given in the job's words."""
        found = jobcall.find_summary(_Path.cwd())
        if found is None:
            raise ConfigError(f"{key}={pairs[key]}: no experiment_summary.yaml in {_Path.cwd()} or "
                              "above it; pass experiment=PATH")
        return str(found)

    if _given(pairs, "data_files"):
        call = jobcall.from_data_files(str(_given(pairs, "data_files")), _given(pairs, "field"))
        return call, experiment or summary_above("data_files"), consumer or "inspect"
    if _given(pairs, "lm_eval_task"):
        job = LmEvalJob(str(_given(pairs, "lm_eval_task")), _given(pairs, "include_path"))
        return job, experiment or summary_above("lm_eval_task"), consumer or "lm_eval"
    if _given(pairs, "field"):
        raise ConfigError("field= narrows a data_files= check; add data_files=STR")
    if _given(pairs, "include_path"):
        raise ConfigError("include_path= goes with lm_eval_task=NAME (an lm-eval job's --tasks)")
    return None, experiment, consumer


def main_fast(pairs: Dict[str, str]) -> int:
    from agent import paths

    try:
        call, experiment, consumer = job_call(pairs)
        where = paths.resolve(experiment, manifest=_given(pairs, "manifest"))
    except AgentError as exc:
        sys.stderr.write(f"cluster-agent: error: {exc}\n")
        if pairs.get("output") == "json":  # every exit prints one JSON document
            sys.stdout.write(json.dumps({"error": str(exc), "exit": EXIT_USAGE}) + "\n")
        return EXIT_USAGE
    from agent.cli import note_relative

    note_relative("manifest", _given(pairs, "manifest"), where.manifest)
    try:
        result = check(where.manifest, _given(pairs, "task"), consumer=consumer, call=call)
        return emit(result, pairs.get("output", "text"), log_file=where.log_file)
    except OSError as exc:  # pragma: no cover - e.g. stdout closed
        sys.stderr.write(f"cluster-agent: error: {exc}\n")
        return EXIT_USAGE
