"""lm-evaluation-harness tasks -> the exact ``datasets.load_dataset`` calls their jobs make.

lm-eval (0.4.13, ``lm_eval/api/task.py: ConfigurableTask.download``) loads a task's data
with exactly one call, at task construction, with no split, cache_dir or download_mode::

    datasets.load_dataset(path=config.dataset_path, name=config.dataset_name, **config.dataset_kwargs)

(``trust_remote_code`` is first popped from ``dataset_kwargs`` when datasets >= 4; a task
with a callable ``custom_dataset`` calls that instead). ``data_files`` reaches ``datasets``
exactly as the task YAML wrote it (a string, a list, or a mapping of splits), and a
relative path is resolved by ``datasets`` against the job's working directory.

Tasks are resolved with lm-eval's own machinery, as ``lm_eval run --tasks ... --include_path
...`` does (``EvaluatorConfig.process_tasks`` then ``TaskManager.load``: groups, tags,
``include:``, templates, task YAML paths). No YAML is parsed here. While lm-eval builds
each task, ``datasets.load_dataset`` is replaced by a recorder that keeps the arguments
and stops that task's construction, so resolving loads nothing and writes nothing.

Verification (``verify``) runs in a fresh process with the job environment: lm-eval's own
loading for the tasks (the real ``TaskManager.load``, the real call) must be a pure cache
hit and read the rows the build read.

lm-eval is an optional extra (``pip install 'cluster-agent[lm-eval]'``) and is imported
only inside the functions that need it; without it they raise one ``ConfigError`` line.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from agent.build import in_folder  # run a call in the job's folder (shared with the other consumers)
from agent.errors import ConfigError, SourceError, SummaryError

# `datasets` builders that read local files named by data_files (the ones we build and
# test: json for .json/.jsonl, csv, parquet; text and arrow take the same path).
FILE_BUILDERS = ("json", "csv", "parquet", "text", "arrow")
INSTALL_HINT = "pip install 'cluster-agent[lm-eval]'"


def require_lm_eval() -> Any:
    """Import lm_eval or raise the one-line error the CLI prints (exit 2)."""
    try:
        import lm_eval  # noqa: F401
        import lm_eval.tasks  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"consumer=lm_eval needs lm-eval ({exc.name or 'lm_eval'} is not importable): {INSTALL_HINT}, "
            "or pass consumer=datasets"
        ) from None
    return lm_eval


# --- the call --------------------------------------------------------------------------


@dataclass(frozen=True)
class LmEvalCall:
    """One exact ``datasets.load_dataset(path=..., name=..., **dataset_kwargs)`` call.

    ``kwargs`` is the JSON text of the keyword arguments in lm-eval's order (path, name,
    then dataset_kwargs as the task wrote them): hashable, and a mapping of splits stays
    a mapping. ``cwd`` is the working directory relative paths resolve against (None
    when the call names no relative path: then it does not depend on the job's cwd).
    """

    kwargs: str
    cwd: Optional[str] = None

    @staticmethod
    def make(kwargs: Mapping[str, Any], cwd: str) -> "LmEvalCall":
        text = json.dumps(dict(kwargs))
        return LmEvalCall(text, cwd if _relative_paths(dict(kwargs)) else None)

    def load_kwargs(self) -> Dict[str, Any]:
        return json.loads(self.kwargs)

    @property
    def path(self) -> str:
        return self.load_kwargs()["path"]

    @property
    def data_files(self) -> Any:
        return self.load_kwargs().get("data_files")

    def key(self) -> str:
        return hashlib.sha256(json.dumps([self.kwargs, self.cwd]).encode()).hexdigest()[:16]

    def python(self) -> str:
        """The call as lm-eval makes it, for logs, docs and the manifest."""
        args = ", ".join(f"{k}={v!r}" for k, v in self.load_kwargs().items())
        return f"datasets.load_dataset({args})"

    def describe(self) -> str:
        files = self.data_files
        return f"{self.path}: {files}" if files is not None else self.path

    def to_json(self) -> Dict[str, Any]:
        return {"load_dataset": self.load_kwargs(), "cwd": self.cwd}

    @staticmethod
    def from_json(doc: Mapping[str, Any]) -> "LmEvalCall":
        return LmEvalCall(json.dumps(dict(doc["load_dataset"])), doc.get("cwd"))


def _file_patterns(kwargs: Mapping[str, Any]) -> List[str]:
    files = kwargs.get("data_files")
    if files is None:
        return []
    if isinstance(files, str):
        return [files]
    if isinstance(files, Mapping):
        out: List[str] = []
        for value in files.values():
            out.extend([value] if isinstance(value, str) else list(value))
        return out
    return [str(f) for f in files]


def _is_remote(pattern: str) -> bool:
    return "://" in pattern


def _relative_paths(kwargs: Mapping[str, Any]) -> bool:
    local = [p for p in _file_patterns(kwargs) if not _is_remote(p)]
    if kwargs.get("data_dir"):
        local.append(str(kwargs["data_dir"]))
    if kwargs.get("path") not in FILE_BUILDERS:
        local.append(str(kwargs.get("path")))
    return any(not os.path.isabs(os.path.expanduser(p)) for p in local)


@dataclass
class LmEvalEntry:
    """One unique call and the lm-eval tasks (leaf names) that make it."""

    call: LmEvalCall
    tasks: List[str]
    sources: List[str]  # the local files the call reads (resolved as `datasets` resolves them)
    hazards: List[str] = field(default_factory=list)

    def to_json(self) -> Dict[str, Any]:
        return {**self.call.to_json(), "tasks": list(self.tasks), "sources": list(self.sources),
                "hazards": list(self.hazards), "python": self.call.python()}

    @staticmethod
    def from_json(doc: Mapping[str, Any]) -> "LmEvalEntry":
        return LmEvalEntry(LmEvalCall.from_json(doc), [str(t) for t in doc["tasks"]],
                           [str(s) for s in doc["sources"]], [str(h) for h in doc.get("hazards") or []])


# --- resolving tasks with lm-eval's own task manager -----------------------------------


class _Captured(Exception):
    """Raised by the recorder to stop a task's construction right after its call."""


@contextlib.contextmanager
def _recording() -> Iterator[List[Any]]:
    """While lm-eval constructs tasks, record each task's load_dataset call instead of making it.

    lm-eval's task module calls ``datasets.load_dataset`` through the module attribute, so
    replacing the attribute catches the call lm-eval's own ``download`` makes (with its
    own argument handling). Task construction goes on to read the data it just loaded, so
    the recorder raises and the wrapped ``__init__`` swallows that: the half-built task
    keeps its config and name, which is all the task manager needs to assemble groups.
    """
    import datasets
    from lm_eval.api.task import ConfigurableTask, Task

    building: List[Any] = []
    real_load = datasets.load_dataset
    real_inits = {cls: cls.__dict__["__init__"] for cls in (Task, ConfigurableTask)}
    real_download = ConfigurableTask.download

    def record(*args: Any, **kwargs: Any) -> None:
        if args:  # lm-eval passes keywords only; keep a positional path as `path`
            kwargs = {"path": args[0], **kwargs}
        if building:
            building[-1]._cluster_agent_call = copy.deepcopy(kwargs)
        raise _Captured()

    def download(self: Any, dataset_kwargs: Any = None, **kw: Any) -> None:
        # The one branch of lm-eval's download that is not a load_dataset call: do not run
        # the task's own Python loader while resolving.
        if callable(getattr(self.config, "custom_dataset", None)):
            self._cluster_agent_custom = True
            raise _Captured()
        real_download(self, dataset_kwargs, **kw)

    def wrap(init: Any) -> Any:
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            building.append(self)
            try:
                init(self, *args, **kwargs)
            except _Captured:
                pass
            finally:
                building.pop()

        return __init__

    datasets.load_dataset = record
    ConfigurableTask.download = download
    for cls, init in real_inits.items():
        cls.__init__ = wrap(init)
    try:
        yield building
    finally:
        datasets.load_dataset = real_load
        ConfigurableTask.download = real_download
        for cls, init in real_inits.items():
            cls.__init__ = init


_MANAGERS: Dict[str, Any] = {}


@contextlib.contextmanager
def _index_once() -> Iterator[None]:
    """One TaskManager per (include_path, metadata) in this process: building one indexes
    every task YAML lm-eval ships (~14,000 files, ~6 s), and the verifier loads the tasks
    of several entries. The index is read-only; each load builds new task objects, as a
    job's one load does. process_tasks looks the class up on lm_eval.tasks at call time."""
    import lm_eval.tasks

    real = lm_eval.tasks.TaskManager

    def memo(*args: Any, **kwargs: Any) -> Any:
        key = json.dumps([args, kwargs], sort_keys=True, default=str)
        if key not in _MANAGERS:
            _MANAGERS[key] = real(*args, **kwargs)
        return _MANAGERS[key]

    lm_eval.tasks.TaskManager = memo
    try:
        yield
    finally:
        lm_eval.tasks.TaskManager = real


def _task_list(tasks: Sequence[str] | str) -> str:
    return tasks if isinstance(tasks, str) else ",".join(tasks)


def load_tasks(tasks: Sequence[str] | str, include_path: Optional[str] = None,
               metadata: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """What ``lm_eval run --tasks T --include_path P`` loads: {"tasks": {name: Task}, ...}.

    The CLI's own steps (``_cli/run.py``): ``EvaluatorConfig.process_tasks`` (comma lists,
    globs, task YAML paths, include_path) builds the TaskManager, then
    ``simple_evaluate`` calls ``task_manager.load(cfg.tasks)``. Unknown names and broken
    task files become one SummaryError line.
    """
    require_lm_eval()
    from lm_eval.config.evaluate_config import EvaluatorConfig

    if include_path is not None and not os.path.isdir(include_path):
        raise SummaryError(f"lm_eval include_path {include_path} is not a folder; give the folder of your task YAMLs")
    try:
        cfg = EvaluatorConfig(tasks=_task_list(tasks), include_path=include_path, metadata=metadata or {})
        with _index_once():
            manager = cfg.process_tasks(cfg.metadata)
        return manager.load(cfg.tasks)
    except (ValueError, KeyError, TypeError, FileNotFoundError, ImportError, AttributeError) as exc:
        msg = (str(exc).splitlines() or [type(exc).__name__])[0].strip("'\"")
        where = f" with include_path={include_path}" if include_path else ""
        raise SummaryError(
            f"lm_eval tasks {_task_list(tasks)}{where}: {msg}; check the names with "
            f"`lm_eval ls tasks{' --include_path ' + include_path if include_path else ''}`"
        ) from None


def capture_calls(tasks: Sequence[str] | str, include_path: Optional[str] = None,
                  metadata: Optional[Dict[str, Any]] = None) -> List[Tuple[str, Optional[Dict[str, Any]], bool]]:
    """(leaf task name, the load_dataset kwargs it passes or None, uses custom_dataset) per task."""
    return _capture(tasks, include_path, metadata)[0]


def _capture(tasks: Sequence[str] | str, include_path: Optional[str] = None,
             metadata: Optional[Dict[str, Any]] = None
             ) -> Tuple[List[Tuple[str, Optional[Dict[str, Any]], bool]], Dict[str, List[str]]]:
    """capture_calls, plus lm-eval's group map ({group: [children]}) of what it loaded."""
    require_lm_eval()
    import logging

    quiet = logging.getLogger("lm_eval")  # its notes on the task YAMLs are the jobs' to print, not ours
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with _recording():
            loaded = load_tasks(tasks, include_path, metadata)
    finally:
        quiet.setLevel(level)
    out = []
    for name, task in loaded["tasks"].items():
        out.append((name, getattr(task, "_cluster_agent_call", None), bool(getattr(task, "_cluster_agent_custom", False))))
    group_map = {str(k): [str(c) for c in v] for k, v in (loaded.get("group_map") or {}).items()}
    return out, group_map


def data_file_sources(call: LmEvalCall) -> List[str]:
    """The local files the call reads, resolved by `datasets`' own pattern resolution
    (globs, a mapping of splits, data_dir, a local dataset folder)."""
    from datasets.data_files import DataFilesDict, get_data_patterns, sanitize_patterns

    kwargs = call.load_kwargs()
    cwd = call.cwd or os.getcwd()
    base = os.path.join(cwd, os.path.expanduser(str(kwargs.get("data_dir") or "")))
    if kwargs.get("data_files") is not None:
        patterns = sanitize_patterns(kwargs["data_files"])
    else:
        base = os.path.join(cwd, os.path.expanduser(kwargs["path"]), str(kwargs.get("data_dir") or ""))
        patterns = get_data_patterns(base)
    files = DataFilesDict.from_patterns(patterns, base_path=base)
    return sorted({str(f) for split in files.values() for f in split})


def _hazards(call: LmEvalCall) -> List[str]:
    notes = []
    if call.cwd is not None:
        notes.append(f"relative path: datasets resolves it against the job's working directory, so jobs must "
                     f"start in {call.cwd} (an absolute path in the task YAML removes this)")
    for pattern in _file_patterns(call.load_kwargs()):
        if "//" in pattern or "/./" in f"/{pattern}":
            notes.append(f"{pattern} contains '//' or './': the cache key is the string as written")
    return notes


def resolve(tasks: Sequence[str] | str, include_path: Optional[str] = None, cwd: Optional[str] = None,
            metadata: Optional[Dict[str, Any]] = None) -> List[LmEvalEntry]:
    """lm-eval task names (and/or task YAML paths) -> one entry per unique load_dataset call.

    `cwd`: the working directory the jobs start in (default: this process's), against
    which `datasets` resolves relative data_files. Tasks that need the Hugging Face Hub,
    a custom Python loader or a missing file are refused with one SummaryError line
    naming every such task.
    """
    # physical folder: a job's os.getcwd() (what datasets joins relative paths to) never
    # shows a symlink it was cd'ed through
    cwd = os.path.realpath(cwd or os.getcwd())
    with in_folder(cwd):  # task YAML paths given relative, as the CLI would see them from the job's cwd
        captured = capture_calls(tasks, include_path, metadata)
    return _entries(captured, cwd)


def resolve_each(names: Sequence[str], include_path: Optional[str] = None, cwd: Optional[str] = None
                 ) -> Dict[str, List[LmEvalEntry]]:
    """{name: the entries its job (`lm_eval --tasks name`) loads}, for several task or group
    names, with one lm-eval task index for all (building one costs ~8 s). A name lm-eval's
    group map does not expand (a tag, a task YAML path) is resolved on its own."""
    cwd = os.path.realpath(cwd or os.getcwd())
    with in_folder(cwd):
        captured, group_map = _capture(list(names), include_path)
    leaves_of: Dict[str, List[str]] = {}
    leaf_names = [c[0] for c in captured]

    def expand(name: str) -> Optional[List[str]]:
        if name in leaf_names:
            return [name]
        if name not in group_map:
            return None
        out: List[str] = []
        for child in group_map[name]:
            more = expand(child)
            if more is None:
                return None
            out.extend(m for m in more if m not in out)
        return out

    for name in names:
        leaves = expand(name)
        if leaves is None:
            with in_folder(cwd):
                alone = capture_calls(name, include_path)
            captured.extend(c for c in alone if c[0] not in leaf_names)
            leaf_names.extend(c[0] for c in alone if c[0] not in leaf_names)
            leaves = [c[0] for c in alone]
        leaves_of[name] = leaves
    entries = _entries(captured, cwd)
    by_leaf = {t: e for e in entries for t in e.tasks}
    out: Dict[str, List[LmEvalEntry]] = {}
    for name, leaves in leaves_of.items():
        out[name] = list({id(by_leaf[t]): by_leaf[t] for t in leaves}.values())
    return out


# --- a memo of resolutions: an unchanged re-run must not index lm-eval's tasks again -------


def _tree_state(folder: str) -> List[Any]:
    """(path, size, mtime) of every file under `folder`: task YAMLs, their `include:`
    templates and `!function` Python files all live there."""
    out: List[Any] = []
    for sub, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            with contextlib.suppress(OSError):
                st = os.stat(os.path.join(sub, name))
                out.append([os.path.join(sub, name), st.st_size, st.st_mtime_ns])
    return out


def _memo_key(names: Sequence[str], include_path: Optional[str], cwd: str) -> str:
    """Everything a resolution depends on: lm-eval's and datasets' versions (lm-eval's own
    task YAMLs ship with it), the names, the jobs' folder, and every file under the
    include path and under the folder of each task YAML given directly."""
    from agent.versions import version

    folders = [include_path] if include_path else []
    folders += [os.path.dirname(os.path.join(cwd, n)) for n in names if n.endswith((".yaml", ".yml"))]
    state = [version("lm_eval"), version("datasets"), list(names), include_path, cwd,
             [[f, _tree_state(f)] for f in sorted(set(folders))]]
    return hashlib.sha256(json.dumps(state).encode()).hexdigest()[:32]


def resolve_each_memo(names: Sequence[str], include_path: Optional[str], cwd: str, memo_dir: Optional[Path]
                      ) -> Dict[str, List[LmEvalEntry]]:
    """resolve_each, remembered in `memo_dir` under the key of everything it depends on.
    A pure speed-up: an unreadable or stale memo means resolving again, never an error."""
    cwd = os.path.realpath(cwd)
    if memo_dir is None:
        return resolve_each(names, include_path, cwd)
    path = memo_dir / f"{_memo_key(names, include_path, cwd)}.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        doc = json.loads(path.read_text())
        return {str(k): [LmEvalEntry.from_json(e) for e in v] for k, v in doc.items()}
    out = resolve_each(names, include_path, cwd)
    with contextlib.suppress(OSError):
        from agent.manifest import write_text_atomic

        memo_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps({k: [e.to_json() for e in v] for k, v in out.items()}))
    return out


def _entries(captured: List[Tuple[str, Optional[Dict[str, Any]], bool]], cwd: str) -> List[LmEvalEntry]:
    """One entry per unique captured call; SummaryError naming every task it cannot pre-build."""
    entries: Dict[LmEvalCall, LmEvalEntry] = {}
    hub, custom, broken = [], [], []
    for name, kwargs, is_custom in captured:
        if is_custom or kwargs is None:
            custom.append(name)
            continue
        call = LmEvalCall.make(kwargs, cwd)
        path = str(kwargs.get("path"))
        patterns = _file_patterns(kwargs)
        local_folder = os.path.isdir(os.path.join(cwd, os.path.expanduser(path)))
        if (path not in FILE_BUILDERS and not local_folder) or any(_is_remote(p) for p in patterns):
            hub.append(f"{name} ({path}{', ' + str(kwargs.get('name')) if kwargs.get('name') else ''})")
            continue
        if path in FILE_BUILDERS and not patterns and not kwargs.get("data_dir"):
            broken.append(f"{name}: dataset_path {path} with no dataset_kwargs.data_files")
            continue
        if call in entries:
            entries[call].tasks.append(name)
            continue
        try:
            sources = data_file_sources(call)
        except FileNotFoundError as exc:
            broken.append(f"{name}: {(str(exc).splitlines() or ['data file not found'])[0]}")
            continue
        entries[call] = LmEvalEntry(call, [name], sources, _hazards(call))
    if hub:
        raise SummaryError(
            f"lm_eval task{'s' if len(hub) > 1 else ''} {', '.join(hub)} load{'' if len(hub) > 1 else 's'} from the "
            "Hugging Face Hub, which cluster-agent cannot pre-build here; point dataset_path at json/csv/parquet "
            "with local dataset_kwargs.data_files, or drop the task"
        )
    if custom:
        raise SummaryError(
            f"lm_eval task{'s' if len(custom) > 1 else ''} {', '.join(custom)}: no datasets.load_dataset call "
            "(custom_dataset or a Python task class); cluster-agent can only pre-build tasks with dataset_path + data_files"
        )
    if broken:
        raise SummaryError(f"lm_eval {'; '.join(broken)}")
    return list(entries.values())


# --- building, the job environment ------------------------------------------------------


def job_env(hf_cache: str | Path, extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """What every lm_eval job must export to read the pre-built cache (and never the hub):
    the same HF_DATASETS_CACHE the build wrote, and both offline switches, so a miss is an
    error at once instead of a download or a silent rebuild into another folder."""
    env = {"HF_DATASETS_CACHE": str(hf_cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env


def prebuild(call: LmEvalCall) -> Dict[str, Any]:
    """Make the exact call (in the call's cwd), so the jobs' identical call is a cache hit.

    `datasets` must already have been imported with the job environment (it reads
    HF_DATASETS_CACHE once). Returns {"rows": {split: n}, "cache_dirs": [...]}.
    """
    import datasets

    with in_folder(call.cwd or None):
        try:
            ds = datasets.load_dataset(**call.load_kwargs())
        except FileNotFoundError as exc:
            raise SourceError(f"{call.describe()}: {(str(exc).splitlines() or [''])[0]}", missing=True) from None
    splits = ds if isinstance(ds, datasets.DatasetDict) else {"train": ds}
    dirs = sorted({os.path.dirname(f["filename"]) for d in splits.values() for f in d.cache_files})
    return {"rows": {k: v.num_rows for k, v in splits.items()}, "cache_dirs": dirs}


# --- verification: lm-eval's own loading in a fresh process ----------------------------


def probe(request: Mapping[str, Any]) -> Dict[str, Any]:
    """Inside the fresh process: lm-eval loads the tasks for real; report rows and changes."""
    import datasets.config

    from agent.verify import _diff, snapshot

    roots = list(dict.fromkeys(list(request["roots"]) + [str(datasets.config.HF_DATASETS_CACHE)]))
    watch = [w for w in request.get("watch", []) if w]
    before = snapshot(roots, watch)
    try:
        with in_folder(request.get("cwd") or None):
            loaded = load_tasks(request["tasks"], request.get("include_path"))
    except Exception as exc:  # noqa: BLE001 - reported as the verification's failure
        return {"ok": False, "error": f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}", "tasks": {}}
    diff = _diff(before, snapshot(roots, watch))  # created, modified, removed
    changed = diff["created"] + diff["modified"] + [f"{p} (removed)" for p in diff["removed"]]
    rows = {name: {k: v.num_rows for k, v in task.dataset.items()} if hasattr(task.dataset, "items")
            else {"train": task.dataset.num_rows} for name, task in loaded["tasks"].items()}
    if changed:
        return {"ok": False, "tasks": rows, "error": (
            f"lm-eval's loading was not a pure cache hit: it wrote {changed[0]}"
            + (f" and {len(changed) - 1} more" if len(changed) > 1 else ""))}
    return {"ok": True, "tasks": rows, "error": None}


def verify(tasks: Sequence[str] | str, include_path: Optional[str], env: Mapping[str, str], roots: Sequence[str],
           cwd: Optional[str] = None, watch: Sequence[str] = (), timeout: float = 1800) -> Dict[str, Any]:
    """Run `probe` in a fresh interpreter with the job environment `env`.

    Returns {"ok", "error", "tasks": {task: {split: rows}}}; the caller compares the rows
    with what the build read."""
    request = {"tasks": _task_list(tasks), "include_path": include_path, "roots": list(roots),
               "cwd": cwd, "watch": list(watch)}
    full_env = dict(os.environ)
    full_env.update(env)
    proc = subprocess.run([sys.executable, "-m", "agent.lmeval_tasks", "probe"], input=json.dumps(request),
                          capture_output=True, text=True, env=full_env, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"ok": False, "error": f"verification process failed: {tail}", "tasks": {}}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _main(argv: List[str]) -> int:
    """`python -m agent.lmeval_tasks resolve TASKS [INCLUDE_PATH]` (prints the entries as JSON),
    `... prebuild < calls.json` (makes the calls; prints rows per split), or
    `... probe < request.json` (the verification process)."""
    import logging

    logging.disable(logging.WARNING)  # lm-eval's task-index warnings are not ours to print
    from agent.errors import AgentError

    try:
        if argv[:1] == ["probe"]:
            out: Any = probe(json.loads(sys.stdin.read()))
        elif argv[:1] == ["prebuild"]:  # stdin: [call.to_json(), ...]; run with the job env
            out = [prebuild(LmEvalCall.from_json(doc)) for doc in json.loads(sys.stdin.read())]
        elif argv[:1] == ["resolve"] and len(argv) in (2, 3):
            out = [e.to_json() for e in resolve(argv[1], argv[2] if len(argv) == 3 else None)]
        else:
            sys.stderr.write("usage: python -m agent.lmeval_tasks resolve TASKS [INCLUDE_PATH] | prebuild < calls.json | probe < request.json\n")
            return 2
    except AgentError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    sys.stdout.write("\n" + json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
