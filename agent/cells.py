"""The scaffolded eval cells of an experiment, each as the exact call its job will make.

cruijff_kit writes one folder per (run, task, epoch) before launch:
``<experiment>/<run>/eval/<cell>/eval.yaml`` and ``cell.slurm``, which does ``cd <cell>``
and runs ``inspect eval SCRIPT@TASK ... -T data_path="<data_path>" -T config_path=...
[-T split=...]``. The job's call is therefore known before it runs: the task script's
``hf_dataset(...)`` (agent.taskscript) with its parameters bound to the cell's ``-T``
values, in the cell folder. ``CellCall`` is that call with nothing rewritten: the
``data_files`` string is the one the job passes, and the keyword arguments keep the
order inspect-ai hashes. Paths are normalised only by ``source_file`` (to fingerprint the
file and group calls that read it), never in what is recorded or built with.

Nothing here imports `datasets` or inspect-ai: the launch gate reads one cell with it.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

from agent.errors import CellError, TaskScriptError
# agent.taskscript (ast) is imported by read_cell only: a run without cells just globs for them
if TYPE_CHECKING:
    from agent.taskscript import TaskCall

INSPECT = "inspect"
SUMMARY_NAME = "experiment_summary.yaml"
CELL_GLOB = "*/eval/*/eval.yaml"


@dataclass(frozen=True)
class CellCall:
    """One scaffolded cell: the folder its job runs in and the hf_dataset call it makes there."""

    cell: Path  # the folder the job runs in: cell.slurm's `cd` target, as written (absolute)
    workdir: Path  # the folder hf_dataset runs in: `inspect eval` enters the task script's folder
    #                (inspect_ai._eval.loader.create_file_tasks), so a relative data_files names a file there
    eval_yaml: Path
    slurm: Path
    run: str  # <run> in <experiment>/<run>/eval/<cell>
    epoch: Optional[int]  # eval.yaml epoch, else the folder's _epoch<N> suffix
    summary_task: Optional[str]  # eval.yaml task_name (the summary's task)
    task_script: str  # eval.yaml task_script, verbatim (PATH@TASK)
    script: Path  # the .py file inspect runs (a relative PATH is taken in the cell folder)
    task: str  # the registered @task name
    builder: str  # hf_dataset path= ("json")
    data_files: str  # EXACTLY the string the job passes (eval.yaml data_path), never normalised
    field: Optional[str]  # field= as the job passes it (eval.yaml split, else the task's default)
    split: str  # hf_dataset split= ("train")
    name: Optional[str]  # hf_dataset name=, data_dir=, revision= (None unless the script sets them)
    data_dir: Optional[str]
    revision: Optional[str]
    kwargs: Tuple[Tuple[str, Any], ...]  # the **kwargs inspect-ai hashes and passes to load_dataset, in order
    options: Tuple[Tuple[str, Any], ...]  # hf_dataset's own options (shuffle, limit, ...): rows, not the key
    task_args: Tuple[Tuple[str, Any], ...]  # the -T values, as inspect parses them
    hazards: Tuple[str, ...] = ()  # why another spelling / folder may miss, one reason each
    failure: Optional[str] = None  # why this call will fail when the job makes it (e.g. a literal '~')
    consumer: str = INSPECT

    def __hash__(self) -> int:  # literal values may be lists: hash their repr
        return hash(repr(self.key_fields()))

    def key_fields(self) -> tuple:
        """What inspect-ai's cache key is made of, in its order."""
        return (self.builder, self.name, self.data_dir, self.split, self.revision, self.kwargs)

    def kwargs_dict(self) -> Dict[str, Any]:
        return dict(self.kwargs)

    def inspect_key_message(self, inspect_version: str) -> str:
        """The string inspect-ai's hf_dataset hashes (agent.layers documents both forms)."""
        from agent.layers import INSPECT_REVISION_IN_KEY, _version_tuple

        kw = self.kwargs_dict()
        if _version_tuple(inspect_version) >= INSPECT_REVISION_IN_KEY:
            return f"{self.builder}{self.name}{self.data_dir}{self.split}{self.revision}{kw}"
        return f"{self.builder}{self.name}{self.data_dir}{self.split}{kw}"

    def inspect_folder_name(self, inspect_version: str) -> str:
        """The folder under <XDG_CACHE_HOME>/inspect_ai/hf_datasets the job reads."""
        from agent.layers import mm3_hash, safe_filename

        return f"{safe_filename(self.builder)}-{mm3_hash(self.inspect_key_message(inspect_version))}"

    def build_kwargs(self) -> Dict[str, Any]:
        """What to pass as hf_dataset(**call.build_kwargs()) to build the folder this job reads:
        the key's parts with the **kwargs in the job's order (a dict keeps it). Run it with
        cwd=workdir when data_files is relative. hf_dataset's own options (shuffle, limit)
        are left out: they act after the cache is read."""
        out: Dict[str, Any] = {"path": self.builder, "split": self.split}
        for key, value in (("name", self.name), ("data_dir", self.data_dir), ("revision", self.revision)):
            if value is not None:
                out[key] = value
        out.update(self.kwargs)
        return out

    def python(self) -> str:
        """The call as the job makes it, for messages and the manifest."""
        parts = [f"path={self.builder!r}"]
        for key, value in (("name", self.name), ("data_dir", self.data_dir), ("revision", self.revision)):
            if value is not None:
                parts.append(f"{key}={value!r}")
        parts += [f"{k}={v!r}" for k, v in self.kwargs]
        parts.append(f"split={self.split!r}")
        parts += [f"{k}={v!r}" for k, v in self.options]
        return f"hf_dataset({', '.join(parts)}) in {self.cell}"


# --- the file a call names ---------------------------------------------------------------------


def source_file(call: CellCall) -> Path:
    """The file the job opens: data_files taken in the folder hf_dataset runs in (the task
    script's, see CellCall.workdir), symlinks and '..' resolved the way the kernel does for
    the job's process. For fingerprinting and grouping only, never to build with."""
    return Path(os.path.realpath(os.path.join(str(call.workdir), call.data_files)))


def _hazards(workdir: Path, data_files: str) -> Tuple[List[str], Optional[str]]:
    notes: List[str] = []
    joined = os.path.join(str(workdir), data_files)
    real = os.path.realpath(joined)
    if data_files.startswith("~"):
        return notes, (f"data_path {data_files!r} starts with '~': the job passes it literally (the shell does not "
                       "expand '~' inside quotes, and neither inspect-ai nor datasets expand it), so it opens "
                       f"{real} and fails with FileNotFoundError: write the full path in eval.yaml and cell.slurm")
    if not os.path.isabs(data_files):
        notes.append(f"relative path: `inspect eval` runs the task in the task script's folder {workdir}, not in "
                     f"the cell folder, so it names {real}; inspect-ai keys its cache on the string alone, so every "
                     "job passing the same string shares one inspect cache folder")
    if "//" in data_files:
        notes.append("contains '//'")
    if data_files.startswith("./") or "/./" in data_files:
        notes.append("contains './'")
    if "/../" in f"/{data_files}/":
        notes.append("contains '..'")
    if real != os.path.normpath(joined if os.path.isabs(joined) else os.path.abspath(joined)):
        notes.append(f"passes through a symlink (real file: {real})")
    failure = None
    if not os.path.isfile(real):
        failure = (f"data_path {data_files!r} names {real} (taken in {workdir}, where inspect runs the task), "
                   "which is not a file: the job will fail with FileNotFoundError; fix data_path in eval.yaml "
                   "and cell.slurm")
    return notes, failure


# --- cell.slurm -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlurmCell:
    """What cell.slurm does: the folder it cd's to and its `inspect eval` command."""

    cd: Optional[str]
    script_ref: str
    task_args: Tuple[Tuple[str, str], ...]  # -T key=value as the shell hands them to inspect (unquoted)
    inspect_line: int  # first line (1-based) of the `inspect eval` statement


def _logical_lines(text: str) -> List[Tuple[int, str]]:
    """Lines with backslash-newline continuations joined, each with its first line number."""
    out: List[Tuple[int, str]] = []
    buf, start = "", 0
    for i, line in enumerate(text.splitlines(), 1):
        if not buf:
            start = i
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        out.append((start, buf + line))
        buf = ""
    if buf:
        out.append((start, buf))
    return out


def read_slurm(path: Path) -> SlurmCell:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CellError(f"{path}: no cell.slurm beside eval.yaml; scaffold the cell again") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CellError(f"{path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    cd: Optional[str] = None
    for lineno, line in _logical_lines(text):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            tokens = shlex.split(stripped, comments=True)
        except ValueError as exc:
            raise CellError(f"{path}:{lineno}: cannot parse this shell line ({exc})") from None
        if tokens[:1] == ["cd"]:
            if len(tokens) != 2 or any(t in ("&&", ";", "||") for t in tokens):
                raise CellError(f"{path}:{lineno}: `{stripped}`: cluster-agent expects `cd <cell folder>` alone "
                                "on its line")
            cd = tokens[1]
            continue
        at = next((i for i in range(len(tokens) - 1) if tokens[i] == "inspect" and tokens[i + 1] == "eval"), None)
        if at is None:
            continue
        rest = tokens[at + 2:]
        if not rest or rest[0].startswith("-"):
            raise CellError(f"{path}:{lineno}: `inspect eval` without a task script; scaffold the cell again")
        args: List[Tuple[str, str]] = []
        i = 1
        while i < len(rest):
            tok = rest[i]
            if tok in ("-T", "--task-arg"):
                if i + 1 >= len(rest):
                    raise CellError(f"{path}:{lineno}: -T without key=value")
                pair, i = rest[i + 1], i + 2
            elif tok.startswith("-T") and len(tok) > 2:
                pair, i = tok[2:], i + 1
            elif tok.startswith("--task-arg="):
                pair, i = tok.split("=", 1)[1], i + 1
            elif tok == "--task-config" or tok.startswith("--task-config="):
                raise CellError(f"{path}:{lineno}: --task-config: cluster-agent reads the task arguments from the "
                                "-T key=value options; pass them with -T")
            else:
                i += 1
                continue
            key, sep, value = pair.partition("=")
            if not sep:
                raise CellError(f"{path}:{lineno}: -T {pair}: expected key=value")
            if "$" in value or "`" in value:
                raise CellError(f"{path}:{lineno}: -T {pair}: a shell expansion is only known when the job runs; "
                                "write the value out")
            args.append((key.replace("-", "_"), value))
        return SlurmCell(cd=cd, script_ref=rest[0], task_args=tuple(args), inspect_line=lineno)
    raise CellError(f"{path}: no `inspect eval` command; cluster-agent gates cells that run inspect eval")


def inspect_task_arg(raw: str) -> Any:
    """A -T value as inspect-ai parses it (inspect_ai._util.config.parse_cli_args): YAML, and
    a string with commas becomes a list (tests compare this with inspect's own function)."""
    import yaml

    value = yaml.safe_load(raw)
    if isinstance(value, str):
        parts = value.split(",")
        value = parts if len(parts) > 1 else parts[0]
    return value


# --- eval.yaml --------------------------------------------------------------------------------


def _read_yaml(path: Path) -> Dict[str, Any]:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CellError(f"{path}: no such eval.yaml") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CellError(f"{path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise CellError(f"{path}: malformed YAML{where}; scaffold the cell again") from None
    if not isinstance(doc, dict):
        raise CellError(f"{path}: expected a mapping with task_script and data_path")
    return doc


def _str_key(doc: Dict[str, Any], key: str, path: Path, required: bool) -> Optional[str]:
    value = doc.get(key)
    if value is None:
        if required:
            raise CellError(f"{path}: no '{key}'; the cell needs {key}")
        return None
    if not isinstance(value, str) or not value.strip():
        raise CellError(f"{path}: '{key}' must be a non-empty string, not {value!r:.60}")
    return value


_EPOCH = re.compile(r"_epoch(\d+)$")


def read_cell(cell: Union[str, Path], scripts: Optional[Dict[Tuple[str, Optional[str]], TaskCall]] = None) -> CellCall:
    """The call one cell's job makes; every inconsistency is one CellError / TaskScriptError line.

    `cell` is the cell folder (or its eval.yaml); `scripts` memoises parsed task scripts."""
    from agent.taskscript import HF_DATASET_PARAMS, KEY_PARAMS, read_task, resolve_script

    cell = Path(cell)
    eval_yaml = cell if cell.name == "eval.yaml" else cell / "eval.yaml"
    folder = eval_yaml.parent
    doc = _read_yaml(eval_yaml)
    task_script = _str_key(doc, "task_script", eval_yaml, True)
    data_path = _str_key(doc, "data_path", eval_yaml, True)
    split_yaml = _str_key(doc, "split", eval_yaml, False)
    summary_task = doc.get("task_name") if isinstance(doc.get("task_name"), str) else None
    slurm_path = folder / "cell.slurm"
    slurm = read_slurm(slurm_path)
    assert task_script is not None and data_path is not None

    # cell.slurm must run the call eval.yaml describes, in this folder
    if slurm.cd is None:
        raise CellError(f"{slurm_path}: no `cd <cell folder>` before inspect eval, so the job's folder depends on "
                        "where it was submitted from: add `cd {folder}`")
    if not os.path.isabs(slurm.cd):
        raise CellError(f"{slurm_path}: `cd {slurm.cd}` is relative, so the job's folder depends on where it was "
                        f"submitted from: write `cd {folder}`")
    if not os.path.isdir(slurm.cd) or not os.path.samefile(slurm.cd, folder):
        raise CellError(f"{slurm_path}: does `cd {slurm.cd}`, but the cell is {folder}: the job would run in "
                        "another folder; scaffold the cell again")
    if slurm.script_ref != task_script:
        raise CellError(f"{slurm_path}:{slurm.inspect_line}: runs `inspect eval {slurm.script_ref}` but eval.yaml "
                        f"task_script is {task_script}: scaffold the cell again so they agree")
    targs = dict(slurm.task_args)
    if targs.get("data_path") != data_path:
        passed = f"-T data_path={targs['data_path']!r}" if "data_path" in targs else "no -T data_path"
        raise CellError(f"{slurm_path}:{slurm.inspect_line}: passes {passed} but eval.yaml data_path is "
                        f"{data_path!r}: the job would read another file; scaffold the cell again")
    if targs.get("split") != split_yaml:
        passed = f"-T split={targs['split']!r}" if "split" in targs else "no -T split"
        want = f"split {split_yaml!r}" if split_yaml is not None else "no split"
        raise CellError(f"{slurm_path}:{slurm.inspect_line}: passes {passed} but eval.yaml has {want}: the job "
                        "would read another field; scaffold the cell again")
    parsed: List[Tuple[str, Any]] = []
    for key, raw in slurm.task_args:
        try:
            value = inspect_task_arg(raw)
        except Exception:  # yaml raises several types; all mean inspect cannot parse it either
            raise CellError(f"{slurm_path}:{slurm.inspect_line}: -T {key}={raw}: inspect-ai reads -T values as YAML "
                            "and cannot read this one; quote or rename it") from None
        parsed.append((key, value))
    task_args = dict(parsed)
    if task_args["data_path"] != data_path:
        raise CellError(f"{slurm_path}:{slurm.inspect_line}: inspect-ai reads -T data_path={data_path} as "
                        f"{task_args['data_path']!r} (YAML; a comma makes a list), not the path: rename the file")

    script, task = resolve_script(task_script, Path(slurm.cd))
    memo_key = (str(script), task)
    if scripts is not None and memo_key in scripts:
        tc = scripts[memo_key]
    else:
        tc = read_task(script, task)
        if scripts is not None:
            scripts[memo_key] = tc
    try:
        bound = tc.bind(task_args)
    except TaskScriptError as exc:
        raise CellError(f"{slurm_path}: {exc}") from None

    values = dict(bound)
    kwargs = tuple((k, v) for k, v in bound if k not in HF_DATASET_PARAMS)
    options = tuple((k, v) for k, v in bound if k in HF_DATASET_PARAMS and k not in KEY_PARAMS)
    data_files = values.get("data_files")
    if not isinstance(data_files, str):
        raise CellError(f"{tc.script}:{tc.line}: task '{tc.task}' passes data_files={data_files!r}; cluster-agent "
                        "pre-builds one data file per call: pass data_files=data_path")
    field = values.get("field")
    if field is not None and not isinstance(field, str):
        raise CellError(f"{slurm_path}: field={field!r} is not a string; pass -T split=NAME")
    workdir = Path(os.path.dirname(str(script)) or slurm.cd)
    hazards, failure = _hazards(workdir, data_files)
    if task is None and os.path.isabs(task_script):
        # measured with inspect-ai 0.3.285 on Python 3.11: NotImplementedError from pathlib's glob
        hazards.append(f"task_script {task_script} has no @TASK: inspect-ai 0.3.285 fails on an absolute script "
                       "path without one (\"Non-relative patterns are unsupported\"); write PATH@TASK")
    if data_files != data_path:
        hazards.append(f"the task passes data_files={data_files!r}, not eval.yaml's data_path {data_path!r}")
    revision = values.get("revision")
    if revision is not None:
        hazards.append("revision= set: inspect-ai ignores its cache and loads again on every call")
    if values.get("cached") is False:
        hazards.append("cached=False: inspect-ai ignores its cache and loads again on every call")

    epoch = doc.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool):
        m = _EPOCH.search(folder.name)
        epoch = int(m.group(1)) if m else None
    return CellCall(
        cell=Path(slurm.cd), workdir=workdir, eval_yaml=eval_yaml, slurm=slurm_path, run=folder.parent.parent.name, epoch=epoch,
        summary_task=summary_task, task_script=task_script, script=script, task=tc.task, builder=str(values["path"]),
        data_files=data_files, field=field, split=str(values["split"]), name=values.get("name"),
        data_dir=values.get("data_dir"), revision=revision, kwargs=kwargs, options=options,
        task_args=tuple(parsed), hazards=tuple(hazards), failure=failure)


# --- an experiment's cells --------------------------------------------------------------------


def experiment_folder(path: Union[str, Path]) -> Path:
    """The experiment folder of `path`: the folder itself, or the summary file's folder."""
    path = Path(path)
    return path.parent if path.is_file() else path


def cell_files(experiment: Union[str, Path]) -> List[Path]:
    """Every scaffolded eval.yaml (<experiment>/<run>/eval/<cell>/eval.yaml), sorted."""
    return sorted(experiment_folder(experiment).glob(CELL_GLOB))


def has_cells(experiment: Union[str, Path]) -> bool:
    return bool(cell_files(experiment))


def discover(experiment: Union[str, Path]) -> List[CellCall]:
    """Every cell's call, in path order (each task script parsed once)."""
    scripts: Dict[Tuple[str, Optional[str]], TaskCall] = {}
    return [read_cell(p, scripts) for p in cell_files(experiment)]


def find_experiment(cell: Union[str, Path]) -> Path:
    """The summary a cell belongs to: walk up from the cell folder to the folder that holds it."""
    start = Path(os.path.abspath(cell))
    for folder in [start, *start.parents]:
        if (folder / SUMMARY_NAME).is_file():
            return folder / SUMMARY_NAME
    raise CellError(f"cell={cell}: no {SUMMARY_NAME} in it or any folder above it: pass experiment=PATH")
