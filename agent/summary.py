"""Reading the experiment summary (cruijff_kit layout) into a list of typed tasks.

The summary is data, never code: it is parsed with ``yaml.safe_load`` and a ``_target_``
key or an OmegaConf interpolation (``${...}``) anywhere in it is refused, so nothing in
it can instantiate an object or run a resolver.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from agent.errors import SummaryError

# `field` is the top-level key of a .json data file that the jobs pass as field=...;
# cruijff_kit summaries sometimes call it `split`, so both are accepted.
_FIELD_KEYS = ("field", "split")


@dataclass(frozen=True)
class Task:
    """One task's data path. A task whose path comes from its runs (parameters.dataset_path)
    appears once per distinct path, each with the runs that read it."""

    name: str
    dataset: str  # the path exactly as written in the summary (or inherited), never rewritten
    field: Optional[str]  # None = the consumer's default field
    field_set: bool  # False when the task did not mention field/split at all
    inherited: bool  # True when the dataset came from data.training.path
    runs: Tuple[str, ...] = ()  # the runs that read this path; () = every run (or no runs)
    origin: str = "dataset"  # where the path came from: eval_condition, dataset, runs[i].parameters.X, data.training.path
    # an lm-evaluation-harness task (consumer=lm_eval): its task or group name (or task YAML
    # path), and the folder of the user's task YAMLs (`lm_eval --include_path`), as written
    lm_eval_task: Optional[str] = None
    include_path: Optional[str] = None


@dataclass(frozen=True)
class Summary:
    path: Path  # absolute path of the summary file
    folder: Path  # relative dataset paths resolve against this
    name: str
    tasks: List[Task]


def _refuse_code(node: Any, where: str, path: Path) -> None:
    """Walk the parsed YAML: no `_target_` keys, no interpolations."""
    if isinstance(node, dict):
        for key, value in node.items():
            if str(key) == "_target_":
                raise SummaryError(
                    f"{path}: '{where}._target_' found; the summary is data and is never "
                    "instantiated: remove the _target_ key"
                )
            _refuse_code(value, f"{where}.{key}" if where else str(key), path)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _refuse_code(value, f"{where}[{i}]", path)
    elif isinstance(node, str) and "${" in node:
        raise SummaryError(
            f"{path}: {where} = {node!r} looks like an interpolation; the summary is data "
            "and is never resolved: write the value out"
        )


def _load_yaml(path: Path, memo: bool = False) -> Any:
    if path.is_dir():
        raise SummaryError(f"experiment={path} is a folder: point it at the experiment_summary.yaml file")
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise SummaryError(f"experiment={path}: no such file; check the path (experiment=PATH)") from None
    except PermissionError:
        raise SummaryError(f"experiment={path}: permission denied; make it readable") from None
    except UnicodeDecodeError as exc:
        raise SummaryError(f"experiment={path}: not UTF-8 text (byte {exc.start}); is it the right file?") from None
    except OSError as exc:
        raise SummaryError(f"experiment={path}: cannot read it ({exc.strerror})") from None
    if memo:
        return _parse_memoised(raw, text, path)
    return _parse_yaml(text, path)


def _parse_yaml(text: str, path: Path) -> Any:
    import yaml

    try:
        # libyaml's safe loader when PyYAML has it: the same safe constructors, ~10x faster
        # on a summary with hundreds of tasks (an unchanged re-run parses it every time)
        return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 - safe loader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SummaryError(f"{path}: malformed YAML{where}: {problem}") from None


def _parse_memoised(raw: bytes, text: str, path: Path) -> Any:
    """What safe_load gives for these very bytes, from a JSON memo of an earlier parse when
    there is one (beside the config memo, agent.confcache): importing PyYAML and parsing a
    1,000-task summary cost an unchanged re-run ~60 ms (issue 14). The memo is keyed on
    the bytes and the PyYAML release, and written only when the parsed document survives
    JSON unchanged (str/int/float/bool/null, lists, string-keyed mappings: a date, a NaN or
    a non-string key is parsed by YAML every time). A pure speed-up: any problem with the
    memo means parsing again, never an error."""
    import hashlib
    import json

    from agent import confcache
    from agent.versions import version

    if not confcache.enabled():
        return _parse_yaml(text, path)
    key = hashlib.sha256(raw + b"\0" + str(version("PyYAML")).encode()).hexdigest()[:32]
    target = confcache.folder() / f"summary-{key}.json"
    try:
        return json.loads(target.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    doc = _parse_yaml(text, path)
    try:
        if json.loads(json.dumps(doc, allow_nan=False)) == doc:
            from agent.manifest import write_text_atomic

            target.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(target, json.dumps(doc))
            confcache._prune(target.parent)  # the memo folder keeps its newest 200 files
    except (OSError, TypeError, ValueError, RecursionError):
        pass
    return doc


def _get(node: Any, key: str, kind: type, where: str, path: Path, required: bool = True) -> Any:
    if not isinstance(node, dict) or key not in node or node[key] is None:
        if required:
            raise SummaryError(f"{path}: '{where}{key}' is missing; the summary needs {where}{key}")
        return None
    value = node[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise SummaryError(
            f"{path}: '{where}{key}' must be a {kind.__name__}, not {type(value).__name__} ({value!r:.60})"
        )
    return value


def _runs(doc: dict, path: Path) -> Dict[str, Tuple[Optional[str], str]]:
    """run name -> (its eval data path or None, which key gave it), in the summary's order."""
    out: Dict[str, Tuple[Optional[str], str]] = {}
    node = doc.get("runs")
    if node is None:
        return out
    if not isinstance(node, list):
        raise SummaryError(f"{path}: 'runs' must be a list of runs, not {type(node).__name__}")
    for i, run in enumerate(node):
        if not isinstance(run, dict) or not isinstance(run.get("name"), str):
            continue  # a run without a name cannot be named by the matrix either
        params = run.get("parameters")
        chosen: Tuple[Optional[str], str] = (None, "")
        if isinstance(params, dict):
            for key in ("eval_dataset_path", "dataset_path"):
                value = _get(params, key, str, f"runs[{i}].parameters.", path, required=False)
                if value is not None:
                    chosen = (value, f"runs[{i}].parameters.{key}")
                    break
        out[run["name"]] = chosen
    return out


def _matrix_runs(evaluation: dict) -> Dict[str, List[str]]:
    """task name -> the runs evaluation.matrix evaluates it in (tasks absent: every run)."""
    out: Dict[str, List[str]] = {}
    matrix = evaluation.get("matrix")
    if not isinstance(matrix, list):
        return out
    for row in matrix:
        if isinstance(row, dict) and isinstance(row.get("tasks"), list) and row.get("run") is not None:
            for task in row["tasks"]:
                runs = out.setdefault(str(task), [])
                if str(row["run"]) not in runs:
                    runs.append(str(row["run"]))
    return out


def _condition_file(path: Path, folder: str, condition: str, pattern: str, task_name: str) -> str:
    """The eval_condition's file in `folder` (as written, joined, never normalised): the
    configured pattern if that file exists, else the client's generated
    `<condition>_test_<hash8>.json` (the hash is found by listing the folder)."""
    exact = os.path.join(folder, pattern.format(condition=condition))
    base = os.path.join(str(path.parent), os.path.expanduser(folder))
    if os.path.exists(os.path.join(str(path.parent), os.path.expanduser(exact))):
        return exact
    found = sorted(glob.glob(os.path.join(glob.escape(base), f"{glob.escape(condition)}_test_*.json")))
    if len(found) > 1:
        names = ", ".join(os.path.basename(f) for f in found)
        raise SummaryError(f"{path}: task '{task_name}': eval_condition '{condition}' matches {len(found)} files in "
                           f"{folder} ({names}); remove the stale ones or set conditions.pattern")
    if found:
        return os.path.join(folder, os.path.basename(found[0]))
    return exact  # missing: the build reports it as CACHE_MISSING, like any missing file


def read_summary(path: Path, conditions_dir: Optional[Path] = None, conditions_pattern: str = "{condition}.json",
                 memo: bool = False) -> Summary:
    """Parse and check the summary; every problem is a SummaryError naming the key.
    `memo`: the parse may come from (and go to) the memo of these bytes (_parse_memoised)."""
    path = Path(os.path.abspath(path))
    doc = _load_yaml(path, memo)
    if not isinstance(doc, dict):
        kind = "empty" if doc is None else f"a {type(doc).__name__}"
        raise SummaryError(f"{path}: the summary is {kind}, expected a mapping with evaluation.tasks")
    _refuse_code(doc, "", path)

    evaluation = doc.get("evaluation")
    if not isinstance(evaluation, dict):
        raise SummaryError(f"{path}: no 'evaluation' mapping; add evaluation.tasks (a list of tasks)")
    tasks_node = evaluation.get("tasks")
    if tasks_node is None:
        raise SummaryError(f"{path}: no 'evaluation.tasks'; list the eval tasks, each with name and dataset")
    if not isinstance(tasks_node, list):
        raise SummaryError(
            f"{path}: 'evaluation.tasks' must be a list of tasks, not {type(tasks_node).__name__}"
        )
    if not tasks_node:
        raise SummaryError(f"{path}: 'evaluation.tasks' is empty; nothing to pre-build")

    training = None
    data = doc.get("data")
    if data is not None:
        if not isinstance(data, dict):
            raise SummaryError(f"{path}: 'data' must be a mapping, not {type(data).__name__}")
        train_node = data.get("training")
        if train_node is not None:
            if not isinstance(train_node, dict):
                raise SummaryError(f"{path}: 'data.training' must be a mapping with a path")
            training = _get(train_node, "path", str, "data.training.", path, required=False)

    name = "experiment"
    exp = doc.get("experiment")
    if isinstance(exp, dict) and isinstance(exp.get("name"), str):
        name = exp["name"]

    generation_out = None
    if isinstance(data, dict) and isinstance(data.get("data_generation"), dict):
        generation_out = _get(data["data_generation"], "output_path", str, "data.data_generation.", path,
                              required=False)
    runs = _runs(doc, path)
    matrix_runs = _matrix_runs(evaluation)

    tasks: List[Task] = []
    seen: dict = {}
    for i, node in enumerate(tasks_node):
        where = f"evaluation.tasks[{i}]."
        if not isinstance(node, dict):
            raise SummaryError(f"{path}: '{where[:-1]}' must be a mapping with name and dataset, not {type(node).__name__}")
        task_name = _get(node, "name", str, where, path)
        if not task_name.strip():
            raise SummaryError(f"{path}: '{where}name' is empty")
        if task_name in seen:
            raise SummaryError(
                f"{path}: task name '{task_name}' appears twice (evaluation.tasks[{seen[task_name]}] and [{i}]); "
                "give each task its own name"
            )
        seen[task_name] = i
        field_key = next((k for k in _FIELD_KEYS if k in node), None)
        field = None
        if field_key is not None:
            field = node[field_key]
            if field is not None and not isinstance(field, str):
                raise SummaryError(f"{path}: '{where}{field_key}' must be a string, not {type(field).__name__}")
        # the client's order (CLIENT.md): eval_condition, the task's dataset, the run's
        # parameters.eval_dataset_path, parameters.dataset_path, then data.training.path
        condition = _get(node, "eval_condition", str, where, path, required=False)
        dataset = _get(node, "dataset", str, where, path, required=False)
        lm_task = _get(node, "lm_eval_task", str, where, path, required=False)
        include = _get(node, "include_path", str, where, path, required=False)
        if include is None and lm_task is not None:
            include = _get(evaluation, "include_path", str, "evaluation.", path, required=False)
        if lm_task is not None and not lm_task.strip():
            raise SummaryError(f"{path}: '{where}lm_eval_task' is empty; name an lm-eval task or group")
        choices: List[Tuple[str, Tuple[str, ...], str]] = []  # (path, runs, origin)
        if lm_task is not None and condition is None and dataset is None:
            # the task's data is whatever its lm-eval YAML loads (agent.consumers.lm_eval)
            tasks.append(Task(task_name, "", None, False, False, (), "lm_eval_task", lm_task, include))
            continue
        if condition is not None:
            folder = str(conditions_dir) if conditions_dir is not None else generation_out
            if folder is None:
                raise SummaryError(
                    f"{path}: task '{task_name}' names eval_condition '{condition}' but no folder is "
                    "configured: pass conditions.dir=PATH (or set data.data_generation.output_path)"
                )
            choices.append((_condition_file(path, folder, condition, conditions_pattern, task_name),
                            (), "eval_condition"))
        elif dataset is not None:
            choices.append((dataset, (), "dataset"))
        else:
            by_path: Dict[Tuple[str, str], List[str]] = {}
            for run_name in matrix_runs.get(task_name, list(runs)):
                chosen = runs.get(run_name, (None, ""))
                if chosen[0] is None:
                    if training is None:
                        raise SummaryError(
                            f"{path}: task '{task_name}' has no dataset, run '{run_name}' has no "
                            "parameters.eval_dataset_path or dataset_path, and there is no "
                            "data.training.path: add dataset: PATH to the task"
                        )
                    chosen = (training, "data.training.path")
                by_path.setdefault((chosen[0], chosen[1]), []).append(run_name)
            if not by_path:
                if training is None:
                    raise SummaryError(
                        f"{path}: task '{task_name}' has no dataset and there is no data.training.path "
                        "to inherit: add dataset: PATH to the task"
                    )
                by_path[(training, "data.training.path")] = []
            every_run = len(by_path) == 1
            for (chosen_path, origin), run_names in by_path.items():
                choices.append((chosen_path, () if every_run else tuple(run_names), origin))
        for chosen_path, run_names, origin in choices:
            if not chosen_path.strip():
                raise SummaryError(f"{path}: task '{task_name}' has an empty dataset path")
            tasks.append(Task(task_name, chosen_path, field, field_key is not None, origin == "data.training.path",
                              run_names, origin, lm_task, include))
    return Summary(path=path, folder=path.parent, name=name, tasks=tasks)
