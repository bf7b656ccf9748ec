"""agent.taskscript: the hf_dataset call of an inspect task script, read with ast.

The scripts are never imported; every one that cannot be read statically is one
TaskScriptError line naming the script, the line and what to write instead.
"""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path

import pytest

from agent.errors import EXIT_USAGE, SummaryError, TaskScriptError
from agent.taskscript import HF_DATASET_PARAMS, NO_DEFAULT, read_task, split_ref
from scaffold import SCRIPTS

HEAD = "from inspect_ai import Task, task\nfrom inspect_ai.dataset import Sample, hf_dataset\n\n"


def script(tmp_path: Path, body: str, name: str = "t.py", head: str = HEAD) -> Path:
    path = tmp_path / name
    path.write_text(head + textwrap.dedent(body))
    return path


def test_hf_dataset_params_are_the_installed_signature() -> None:
    from inspect_ai.dataset import hf_dataset

    names = [p.name for p in inspect.signature(hf_dataset).parameters.values() if p.kind != p.VAR_KEYWORD]
    assert tuple(names) == HF_DATASET_PARAMS


def test_client_task_shape(tmp_path: Path) -> None:
    path = tmp_path / "capitalization.py"
    path.write_text(SCRIPTS["capitalization.py"])
    call = read_task(path, "capitalization")
    assert call.task == call.function == "capitalization" and call.via is None
    assert call.split_default == "test"
    assert [(a.name, a.param, a.value) for a in call.args] == [
        ("path", None, "json"), ("data_files", "data_path", NO_DEFAULT), ("field", "split", "test"),
        ("split", None, "train")]  # sample_fields is left out: it does not pick rows or the key
    assert path.read_text().splitlines()[call.line - 1].strip() == "dataset = hf_dataset("
    assert call.bind({"data_path": "/d/w.json"}) == [("path", "json"), ("data_files", "/d/w.json"),
                                                     ("field", "test"), ("split", "train")]
    assert call.bind({"data_path": "x", "split": "validation"})[2] == ("field", "validation")


def test_validation_default_and_named_task(tmp_path: Path) -> None:
    path = tmp_path / "organism.py"
    path.write_text(SCRIPTS["organism.py"])
    assert read_task(path, "model_organism").split_default == "validation"
    assert read_task(path).task == "model_organism"  # the only task: no @TASK needed
    path = tmp_path / "reordered.py"
    path.write_text(SCRIPTS["reordered.py"])
    call = read_task(path, "capitalization_reordered")  # @task(name=...) registers that name
    assert call.function == "cap_reordered"
    assert [a.name for a in call.args] == ["path", "field", "data_files", "split"]


def test_helper_with_extra_keywords(tmp_path: Path) -> None:
    path = tmp_path / "acs_extra.py"
    path.write_text(SCRIPTS["acs_extra.py"])
    call = read_task(path, "acs_extra")
    assert call.via == "load_split"
    assert [(a.name, a.param) for a in call.args] == [
        ("path", None), ("data_files", "data_path"), ("field", "split"), ("split", None), ("shuffle", None),
        ("limit", None), ("keep_in_memory", None)]
    assert call.bind({"data_path": "a.json"})[-3:] == [("shuffle", False), ("limit", 25), ("keep_in_memory", True)]


def test_positional_aliases_and_module_import(tmp_path: Path) -> None:
    p = script(tmp_path, '''
        import inspect_ai.dataset as ds

        @task
        def one(data_path: str, split: str = "test"):
            return Task(dataset=ds.hf_dataset("json", "train", data_files=data_path, field=split, name=None))
        ''')
    call = read_task(p, "one")
    assert [(a.name, a.value if a.param is None else a.param) for a in call.args] == [
        ("path", "json"), ("split", "train"), ("data_files", "data_path"), ("field", "split"), ("name", None)]
    p = script(tmp_path, '''
        @task
        def two(data_path: str, split: str = "test"):
            return Task(dataset=load("json", data_files=data_path, field=split, split="train"))
        ''', name="alias.py", head="from inspect_ai import Task, task\nfrom inspect_ai.dataset import hf_dataset as load\n")
    assert read_task(p, "two").arg("data_files").param == "data_path"


def test_a_helper_that_does_not_load_data_is_ignored(tmp_path: Path) -> None:
    p = script(tmp_path, '''
        import os

        def scorers(config):
            return []

        @task
        def t(data_path: str, split: str = "test"):
            s = scorers(os.environ)  # not static, but it does not reach hf_dataset
            return Task(dataset=hf_dataset(path="json", data_files=data_path, field=split, split="train"), scorer=s)
        ''')
    assert read_task(p, "t").arg("field").param == "split"


UNREADABLE = {
    "splat": ('''
        @task
        def t(data_path: str):
            kw = {"data_files": data_path}
            return Task(dataset=hf_dataset(path="json", split="train", **kw))
        ''', 8, "hf_dataset(*args/**kwargs): the arguments are built at run time"),
    "computed": ('''
        import os

        @task
        def t(data_path: str):
            return Task(dataset=hf_dataset(path="json", data_files=os.path.expanduser(data_path), split="train"))
        ''', 9, "hf_dataset(data_files=...) = `os.path.expanduser(data_path)` is neither a literal nor a parameter"),
    "nonliteral_extra": ('''
        N = 10

        @task
        def t(data_path: str):
            return Task(dataset=hf_dataset(path="json", data_files=data_path, split="train", limit=N))
        ''', 9, "hf_dataset(limit=...) = `N` is neither a literal nor a parameter"),
    "no_call": ('''
        from inspect_ai.dataset import json_dataset

        @task
        def t(data_path: str):
            return Task(dataset=json_dataset(data_path))
        ''', 8, "no hf_dataset(...) call in the task function"),
    "two_calls": ('''
        @task
        def t(data_path: str, big: bool = False):
            if big:
                return Task(dataset=hf_dataset(path="json", data_files=data_path, split="train"))
            return Task(dataset=hf_dataset(path="json", data_files=data_path, split="train", limit=5))
        ''', 8, "2 hf_dataset calls (lines 8, 9)"),
    "reassigned": ('''
        @task
        def t(data_path: str, split: str = "test"):
            split = split or "test"
            return Task(dataset=hf_dataset(path="json", data_files=data_path, field=split, split="train"))
        ''', 7, "the task assigns to its parameter 'split'"),
    "helper_splat": ('''
        def load(**kw):
            return hf_dataset(path="json", split="train", **kw)

        @task
        def t(data_path: str):
            return Task(dataset=load(**{"data_files": data_path}))
        ''', 10, "load(*args/**kwargs) is only known at run time"),
    "helper_computed": ('''
        def load(files, fld):
            return hf_dataset(path="json", data_files=files, field=fld, split="train")

        @task
        def t(data_path: str, split: str = "test"):
            return Task(dataset=load(data_path, split.upper()))
        ''', 10, "hf_dataset(field=...) gets `split.upper()` through load(fld=...)"),
    "reassigned_before_helper": ('''
        def load(files):
            return hf_dataset(path="json", data_files=files, split="train")

        @task
        def t(data_path: str):
            data_path = data_path.strip()
            return Task(dataset=load(data_path))
        ''', 10, "the task assigns to its parameter 'data_path'"),
    "task_name_variable": ('''
        NAME = "x"

        @task(name=NAME)
        def t(data_path: str):
            return Task(dataset=hf_dataset(path="json", data_files=data_path, split="train"))
        ''', 7, "@task(name=...) is not a string literal"),
    "no_split": ('''
        @task
        def t(data_path: str):
            return Task(dataset=hf_dataset(path="json", data_files=data_path))
        ''', 7, "hf_dataset() without split=...; write it out"),
    "syntax": ('''
        @task
        def t(data_path: str)
            return 1
        ''', 6, "not valid Python"),
}


@pytest.mark.parametrize("case", sorted(UNREADABLE))
def test_unreadable_script_is_one_clear_line(tmp_path: Path, case: str) -> None:
    body, line, message = UNREADABLE[case]
    path = script(tmp_path, body)
    with pytest.raises(TaskScriptError) as err:
        read_task(path, "t")
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{path}:{line}: "), text
    assert message in text, text
    assert isinstance(err.value, SummaryError) and err.value.exit_code == EXIT_USAGE


def test_missing_script_wrong_task_and_several_tasks(tmp_path: Path) -> None:
    with pytest.raises(TaskScriptError, match=r"nope\.py: no such task script; check task_script"):
        read_task(tmp_path / "nope.py", "t")
    path = script(tmp_path, '''
        @task
        def a(data_path: str):
            return Task(dataset=hf_dataset(path="json", data_files=data_path, split="train"))

        @task
        def b(data_path: str):
            return Task(dataset=hf_dataset(path="json", data_files=data_path, split="train"))
        ''')
    with pytest.raises(TaskScriptError, match=r"task 'c': no @task of that name in the script; its tasks: a, b"):
        read_task(path, "c")
    with pytest.raises(TaskScriptError, match=r"2 @task functions \(a, b\): name one as .*t\.py@TASK"):
        read_task(path)


def test_required_parameter_not_passed(tmp_path: Path) -> None:
    path = script(tmp_path, '''
        @task
        def t(data_path: str, part: str):
            return Task(dataset=hf_dataset(path="json", data_files=data_path, field=part, split="train"))
        ''')
    with pytest.raises(TaskScriptError, match=r"t\.py:7: task 't' passes field=part, but the job passes no -T part="):
        read_task(path, "t").bind({"data_path": "x.json"})


def test_split_ref() -> None:
    assert split_ref("/a/b/task.py@cap") == ("/a/b/task.py", "cap")
    assert split_ref("/a/b/task.py") == ("/a/b/task.py", None)
    assert split_ref("/a/x@y/task.py") == ("/a/x@y/task.py", None)
