"""Reading the experiment summary (cruijff_kit layout) into a list of typed tasks.

The summary is data, never code: it is parsed with ``yaml.safe_load`` and a ``_target_``
key or an OmegaConf interpolation (``${...}``) anywhere in it is refused, so nothing in
it can instantiate an object or run a resolver.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

from agent.errors import SummaryError

# `field` is the top-level key of a .json data file that the jobs pass as field=...;
# cruijff_kit summaries sometimes call it `split`, so both are accepted.
_FIELD_KEYS = ("field", "split")


@dataclass(frozen=True)
class Task:
    name: str
    dataset: str  # the path exactly as written in the summary (or inherited)
    field: Optional[str]  # None = the consumer's default field
    field_set: bool  # False when the task did not mention field/split at all
    inherited: bool  # True when the dataset came from data.training.path


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


def _load_yaml(path: Path) -> Any:
    import yaml

    if path.is_dir():
        raise SummaryError(f"experiment={path} is a folder: point it at the experiment_summary.yaml file")
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise SummaryError(f"experiment={path}: no such file; check the path (experiment=PATH)") from None
    except PermissionError:
        raise SummaryError(f"experiment={path}: permission denied; make it readable") from None
    except UnicodeDecodeError as exc:
        raise SummaryError(f"experiment={path}: not UTF-8 text (byte {exc.start}); is it the right file?") from None
    except OSError as exc:
        raise SummaryError(f"experiment={path}: cannot read it ({exc.strerror})") from None
    try:
        # libyaml's safe loader when PyYAML has it: the same safe constructors, ~10x faster
        # on a summary with hundreds of tasks (an unchanged re-run parses it every time)
        return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 - safe loader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SummaryError(f"{path}: malformed YAML{where}: {problem}") from None


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


def read_summary(path: Path, conditions_dir: Optional[Path] = None, conditions_pattern: str = "{condition}.json") -> Summary:
    """Parse and check the summary; every problem is a SummaryError naming the key."""
    path = Path(os.path.abspath(path))
    doc = _load_yaml(path)
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
        dataset = _get(node, "dataset", str, where, path, required=False)
        inherited = False
        if dataset is None:
            condition = _get(node, "eval_condition", str, where, path, required=False)
            if condition is not None:
                if conditions_dir is None:
                    raise SummaryError(
                        f"{path}: task '{task_name}' names eval_condition '{condition}' but no folder is "
                        "configured: pass conditions.dir=PATH"
                    )
                dataset = str(conditions_dir / conditions_pattern.format(condition=condition))
            elif training is not None:
                dataset, inherited = training, True
            else:
                raise SummaryError(
                    f"{path}: task '{task_name}' has no dataset and there is no data.training.path "
                    "to inherit: add dataset: PATH to the task"
                )
        if not dataset.strip():
            raise SummaryError(f"{path}: task '{task_name}' has an empty dataset path")
        tasks.append(Task(task_name, dataset, field, field_key is not None, inherited))
    return Summary(path=path, folder=path.parent, name=name, tasks=tasks)
