"""What an inspect task script's ``hf_dataset(...)`` call is, read with ``ast`` (never imported).

A job runs ``inspect eval SCRIPT@TASK -T data_path=... [-T split=...]``; the cache folder
inspect-ai reads is keyed on the exact keyword arguments that call passes, in the order
written (``mm3_hash(f"{path}{name}{data_dir}{split}{revision}{kwargs}")``). This module
finds the ``@task`` function, its parameters and defaults, and the one ``hf_dataset`` call
it makes (directly, or through a function defined at module level in the same file), and
says for every keyword whether it is a literal or bound to a task parameter.

Importing the script would run the user's code (and import inspect-ai, slow in a gate), so
anything that is only known at run time — ``**kw``, a computed value, a reassigned
parameter, two candidate calls — is a ``TaskScriptError``: one line naming the script, the
line and what to write instead.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from agent.errors import TaskScriptError

# inspect_ai.dataset.hf_dataset's named parameters, in signature order (inspect-ai 0.3.285;
# tests/test_taskscript.py compares this with the installed release). Keywords not in this
# list go to **kwargs, which inspect-ai hashes as a dict and passes on to load_dataset.
# The client's pin, 0.3.209 (read from its wheel), has the same list without `retry`: a
# task passing retry= there sends it to **kwargs (and load_dataset). The shipped tasks do not.
HF_DATASET_PARAMS = ("path", "split", "name", "data_dir", "revision", "sample_fields", "auto_id", "shuffle",
                     "seed", "shuffle_choices", "limit", "trust", "cached", "retry")
# the named parameters that enter inspect-ai's cache key (besides **kwargs)
KEY_PARAMS = ("path", "name", "data_dir", "split", "revision")
# may be any expression: it maps records to samples after the cache is read
FREE_PARAMS = ("sample_fields",)

NO_DEFAULT = object()  # a task parameter without a default


@dataclass(frozen=True)
class Arg:
    """One keyword of the hf_dataset call, as written."""

    name: str  # the keyword hf_dataset receives (a positional argument is named by the signature)
    param: Optional[str]  # the task parameter it is bound to (data_files=data_path -> "data_path")
    value: Any  # the literal; or, when bound, the parameter's default (NO_DEFAULT if none)
    line: int

    @property
    def bound(self) -> bool:
        return self.param is not None


@dataclass(frozen=True)
class TaskCall:
    """A task function and the hf_dataset call it makes."""

    script: Path
    task: str  # the registered task name (what follows '@')
    function: str  # the Python function's name
    params: Tuple[Tuple[str, Any], ...]  # the task function's parameters and defaults (NO_DEFAULT)
    line: int  # the hf_dataset call's line
    via: Optional[str]  # the module-level helper the call is in, if not in the task function
    args: Tuple[Arg, ...]  # every keyword except sample_fields, in the order written

    @property
    def split_default(self) -> Optional[str]:
        """The default of the task function's `split` parameter (None without one)."""
        default = dict(self.params).get("split", NO_DEFAULT)
        return None if default is NO_DEFAULT else default

    def arg(self, name: str) -> Optional[Arg]:
        return next((a for a in self.args if a.name == name), None)

    def bind(self, task_args: Mapping[str, Any]) -> List[Tuple[str, Any]]:
        """Each keyword with the value the job passes: -T value, else the parameter's default."""
        out = []
        for a in self.args:
            if a.param is None:
                out.append((a.name, a.value))
            elif a.param in task_args:
                out.append((a.name, task_args[a.param]))
            elif a.value is NO_DEFAULT:
                raise TaskScriptError(
                    f"{self.script}:{a.line}: task '{self.task}' passes {a.name}={a.param}, but the job passes "
                    f"no -T {a.param}=... and the parameter has no default: add -T {a.param}=VALUE to the job")
            else:
                out.append((a.name, a.value))
        return out


def split_ref(ref: str) -> Tuple[str, Optional[str]]:
    """'path/to/script.py@task' -> ('path/to/script.py', 'task'); no '@' -> (ref, None)."""
    path, sep, task = ref.rpartition("@")
    if not sep or not path or "/" in task:
        return ref, None
    return path, task


def _fail(script: Path, line: Optional[int], task: Optional[str], what: str) -> TaskScriptError:
    where = f"{script}:{line}" if line else str(script)
    of = f"task '{task}': " if task else ""
    return TaskScriptError(f"{where}: {of}{what}")


def _decorator_task_name(dec: ast.expr, fn: ast.FunctionDef, script: Path) -> Optional[str]:
    """The registered name if `dec` is @task / @task(...) / @inspect_ai.task(...), else None."""
    target = dec.func if isinstance(dec, ast.Call) else dec
    is_task = (isinstance(target, ast.Name) and target.id == "task") or (
        isinstance(target, ast.Attribute) and target.attr == "task")
    if not is_task:
        return None
    if isinstance(dec, ast.Call):
        for kw in dec.keywords:
            if kw.arg == "name":
                if isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                    return kw.value.value
                raise _fail(script, dec.lineno, fn.name, "@task(name=...) is not a string literal; cluster-agent "
                                                         "reads the task name without running the script: write "
                                                         "the name out")
    return fn.name


def _hf_names(tree: ast.Module) -> Tuple[set, set]:
    """Names hf_dataset is called by: `hf_dataset`, `from ... import hf_dataset as X`; and
    module aliases whose `.hf_dataset` is it (`import inspect_ai.dataset as ds`)."""
    names, modules = {"hf_dataset"}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name == "hf_dataset":
                    names.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                modules.add(alias.asname or alias.name)
    return names, modules


class _Reader:
    def __init__(self, script: Path, tree: ast.Module, task: str) -> None:
        self.script, self.task = script, task
        self.hf_names, _ = _hf_names(tree)
        self.helpers: Dict[str, ast.FunctionDef] = {
            n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}

    def fail(self, line: Optional[int], what: str) -> TaskScriptError:
        return _fail(self.script, line, self.task, what)

    def is_hf(self, call: ast.Call) -> bool:
        f = call.func
        return (isinstance(f, ast.Name) and f.id in self.hf_names) or (
            isinstance(f, ast.Attribute) and f.attr == "hf_dataset")

    def calls_in(self, fn: ast.AST) -> List[ast.Call]:
        return [n for n in ast.walk(fn) if isinstance(n, ast.Call)]

    def literal(self, node: ast.expr, what: str) -> Any:
        try:
            return ast.literal_eval(node)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise self.fail(node.lineno, f"{what} = `{ast.unparse(node)}` is neither a literal nor a parameter of "
                                         "the task function, so its value is only known when the script runs: "
                                         "write a literal, or pass it as a task parameter") from None

    def value(self, node: ast.expr, env: Mapping[str, Tuple[Optional[str], Any]], what: str) -> Tuple[Optional[str], Any]:
        """(bound task parameter or None, literal value / parameter default)."""
        if isinstance(node, ast.Name) and node.id in env:
            bound = env[node.id]
            if isinstance(bound, _Opaque):  # only an error where the value matters
                raise self.fail(bound.node.lineno, f"{what} gets `{ast.unparse(bound.node)}` through {bound.what}, "
                                                   "which is neither a literal nor a parameter of the task "
                                                   "function, so its value is only known when the script runs: "
                                                   "write a literal, or pass it as a task parameter")
            return bound
        return None, self.literal(node, what)

    def reassigned(self, fn: ast.AST, names: Sequence[str]) -> Dict[str, int]:
        out: Dict[str, int] = {}
        for n in ast.walk(fn):
            if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)) and n.id in names:
                out.setdefault(n.id, n.lineno)
            elif isinstance(n, (ast.Global, ast.Nonlocal)):
                for name in n.names:
                    if name in names:
                        out.setdefault(name, n.lineno)
        return out

    def params(self, fn: ast.FunctionDef) -> List[Tuple[str, ast.arg, Optional[ast.expr]]]:
        a = fn.args
        positional = a.posonlyargs + a.args
        defaults: List[Optional[ast.expr]] = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
        out = [(p.arg, p, d) for p, d in zip(positional, defaults)]
        out += [(p.arg, p, d) for p, d in zip(a.kwonlyargs, a.kw_defaults)]
        return out

    def find(self, fn: ast.FunctionDef, env: Dict[str, Tuple[Optional[str], Any]], depth: int,
             via: Optional[str]) -> Tuple[ast.Call, Dict[str, Tuple[Optional[str], Any]], Optional[str]]:
        """The one hf_dataset call reachable from fn (directly or via module-level helpers)."""
        direct = sorted((c for c in self.calls_in(fn) if self.is_hf(c)), key=lambda c: (c.lineno, c.col_offset))
        if len(direct) > 1:
            lines = ", ".join(str(c.lineno) for c in direct)
            raise self.fail(direct[0].lineno, f"{len(direct)} hf_dataset calls (lines {lines}); cluster-agent cannot "
                                              "tell without running the script which one the job makes: keep one "
                                              "hf_dataset call per task")
        if direct:
            return direct[0], env, via
        found = []
        for call in self.calls_in(fn):
            helper = self.helpers.get(call.func.id) if isinstance(call.func, ast.Name) else None
            if helper is None or helper is fn or depth >= 4 or not self.reaches_hf(helper, set()):
                continue
            found.append(self.find(helper, self.helper_env(helper, call, env), depth + 1, helper.name))
        if len(found) > 1:
            raise self.fail(found[0][0].lineno, f"{len(found)} hf_dataset calls reachable through helpers; keep one "
                                                "hf_dataset call per task")
        if not found:
            raise _NoCall()
        return found[0]

    def reaches_hf(self, fn: ast.AST, seen: set) -> bool:
        """Does fn call hf_dataset, itself or through module-level functions?"""
        for call in self.calls_in(fn):
            if self.is_hf(call):
                return True
            helper = self.helpers.get(call.func.id) if isinstance(call.func, ast.Name) else None
            if helper is not None and helper.name not in seen:
                seen.add(helper.name)
                if self.reaches_hf(helper, seen):
                    return True
        return False

    def helper_env(self, helper: ast.FunctionDef, call: ast.Call,
                   env: Mapping[str, Tuple[Optional[str], Any]]) -> Dict[str, Tuple[Optional[str], Any]]:
        """The helper's parameters as bindings of the caller's task parameters or literals."""
        if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
            raise self.fail(call.lineno, f"{helper.name}(*args/**kwargs) is only known at run time: pass the "
                                         f"arguments of {helper.name}() one by one")
        params = self.params(helper)
        passed: Dict[str, ast.expr] = {}
        for (name, _, _), node in zip(params, call.args):
            passed[name] = node
        for kw in call.keywords:
            passed[kw.arg] = kw.value  # type: ignore[index]
        out: Dict[str, Tuple[Optional[str], Any]] = {}
        for name, _, default in params:
            if name in passed:
                try:
                    out[name] = self.value(passed[name], env, f"{helper.name}({name}=...)")
                except TaskScriptError:
                    out[name] = _Opaque(passed[name], f"{helper.name}({name}=...)")  # type: ignore[assignment]
            elif default is not None:
                out[name] = (None, self.literal(default, f"the default of {helper.name}({name})"))
        for name, line in self.reassigned(helper, list(out)).items():
            raise self.fail(line, f"{helper.name}() assigns to its parameter '{name}' before calling hf_dataset; "
                                  "its value is only known at run time: pass the final value as an argument")
        return out


class _NoCall(Exception):
    pass


@dataclass(frozen=True)
class _Opaque:
    """A helper argument only known at run time (fine if it only reaches sample_fields)."""

    node: ast.expr
    what: str


def parse_tree(script: Path) -> ast.Module:
    try:
        text = script.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _fail(script, None, None, "no such task script; check task_script (PATH@TASK) in eval.yaml") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(script, None, None, f"cannot read the task script ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        return ast.parse(text, filename=str(script))
    except SyntaxError as exc:
        raise _fail(script, exc.lineno, None, f"not valid Python ({exc.msg}); fix the script") from None


def tasks_of(tree: ast.Module, script: Path) -> Dict[str, ast.FunctionDef]:
    """Registered task name -> function, for every @task function at module level."""
    out: Dict[str, ast.FunctionDef] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for dec in node.decorator_list:
                name = _decorator_task_name(dec, node, script)  # type: ignore[arg-type]
                if name is not None:
                    out[name] = node  # type: ignore[assignment]
    return out


def read_task(script: Path, task: Optional[str] = None) -> TaskCall:
    """The hf_dataset call `inspect eval script[@task]` makes, or one TaskScriptError line."""
    script = Path(script)
    tree = parse_tree(script)
    tasks = tasks_of(tree, script)
    if not tasks:
        raise _fail(script, None, task, "no @task function in the script; is it an inspect task script?")
    if task is None:
        if len(tasks) > 1:
            raise _fail(script, None, None, f"{len(tasks)} @task functions ({', '.join(tasks)}): name one as "
                                            f"{script}@TASK")
        task = next(iter(tasks))
    if task not in tasks:
        raise _fail(script, None, task, f"no @task of that name in the script; its tasks: {', '.join(tasks)}")
    fn = tasks[task]
    reader = _Reader(script, tree, task)
    params = reader.params(fn)
    defaults: List[Tuple[str, Any]] = []
    for name, _, default in params:
        defaults.append((name, NO_DEFAULT if default is None else
                         reader.literal(default, f"the default of parameter '{name}'")))
    env = {name: (name, default) for name, default in defaults}
    try:
        call, env, via = reader.find(fn, env, 0, None)
    except _NoCall:
        raise reader.fail(fn.lineno, "no hf_dataset(...) call in the task function (nor in a function of this file "
                                     "it calls); cluster-agent pre-builds what hf_dataset reads: load the data with "
                                     "inspect_ai.dataset.hf_dataset(path=..., data_files=..., ...)") from None
    if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
        raise reader.fail(call.lineno, "hf_dataset(*args/**kwargs): the arguments are built at run time, and "
                                       "inspect-ai's cache key depends on them and their order: write each keyword "
                                       "argument out in the call")
    if len(call.args) > len(HF_DATASET_PARAMS):
        raise reader.fail(call.lineno, "hf_dataset() called with too many positional arguments")
    written: List[Tuple[str, ast.expr]] = list(zip(HF_DATASET_PARAMS, call.args))
    written += [(k.arg, k.value) for k in call.keywords]  # type: ignore[misc]
    args: List[Arg] = []
    used: List[str] = []
    for name, node in written:
        if name in FREE_PARAMS:
            continue
        param, value = reader.value(node, env, f"hf_dataset({name}=...)")
        args.append(Arg(name, param, value, node.lineno))
        if param is not None:
            used.append(param)
    # (a helper's own parameters were checked when its environment was built)
    for name, line in reader.reassigned(fn, used).items():
        raise reader.fail(line, f"the task assigns to its parameter '{name}' before hf_dataset uses it; its "
                                "value is only known at run time: pass the final value as a parameter")
    names = [a.name for a in args]
    for required in ("path", "split"):
        if required not in names:
            raise reader.fail(call.lineno, f"hf_dataset() without {required}=...; write it out")
    return TaskCall(script=script, task=task, function=fn.name, params=tuple(defaults), line=call.lineno,
                    via=via, args=tuple(args))


def resolve_script(ref: str, folder: Path) -> Tuple[Path, Optional[str]]:
    """The script file of 'PATH@TASK' (a relative PATH resolves in the job's folder, as inspect does)."""
    path, task = split_ref(ref)
    return Path(os.path.join(str(folder), path)), task
