"""Hostile and broken input: each case gives one clear line, the documented exit code, and
loses nothing (the earlier manifest is byte-identical, the caches are untouched).

One experiment is built once for the module; every case then breaks one thing (the
summary, an override, a data file, the manifest) and checks what a user sees.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest

from tests.conftest import REPO, files_under, run_agent, write_records

GOOD = """\
experiment: {name: hostile}
evaluation:
  tasks:
    - {name: a, dataset: data/a.json}
    - {name: b, dataset: data/b.jsonl}
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Dict:
    base = tmp_path_factory.mktemp("hostile")
    env = {"HF_DATASETS_CACHE": str(base / "cache" / "hf"), "HF_HOME": str(base / "cache" / "hf-home"),
           "XDG_CACHE_HOME": str(base / "cache" / "xdg"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    exp = base / "exp"
    write_records(exp / "data" / "a.json", 30)
    (exp / "data" / "b.jsonl").write_text("".join(json.dumps({"input": f"b{i}", "output": "x"}) + "\n" for i in range(7)))
    (exp / "experiment_summary.yaml").write_text(GOOD)
    first = run_agent(f"experiment={exp / 'experiment_summary.yaml'}", "verify=false", env=env)
    assert first.returncode == 0, first.stderr
    return {"base": base, "env": env, "exp": exp, "summary": exp / "experiment_summary.yaml",
            "manifest": exp / ".cluster-agent" / "manifest.json"}


class Snapshot:
    """The earlier manifest's bytes and every cache file's mtime, to prove nothing moved."""

    def __init__(self, b: Dict) -> None:
        self.b = b
        self.manifest = hashlib.sha256(b["manifest"].read_bytes()).hexdigest()
        self.caches = dataset_caches(b)

    def unchanged(self) -> None:
        assert hashlib.sha256(self.b["manifest"].read_bytes()).hexdigest() == self.manifest, "manifest changed"
        assert dataset_caches(self.b) == self.caches, "caches changed"


def dataset_caches(b: Dict) -> Dict[str, int]:
    """Every file of both dataset cache layers (not the agent's own config cache)."""
    return {**files_under(b["base"] / "cache" / "hf"), **files_under(b["base"] / "cache" / "xdg" / "inspect_ai")}


def one_error(stderr: str, *phrases: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("cluster-agent: error: ")]
    assert len(errors) == 1, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr  # and nothing else
    for phrase in phrases:
        assert phrase in errors[0], errors[0]
    return errors[0]


def with_summary(b: Dict, content, *extra: str, exit_code: int = 2):
    """Replace the summary by `content` (str or bytes), run, restore; return the result."""
    snap = Snapshot(b)
    path: Path = b["summary"]
    good = path.read_bytes()
    try:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        result = run_agent(f"experiment={path}", *extra, env=b["env"], timeout=120)
    finally:
        path.write_bytes(good)
    assert result.returncode == exit_code, result.stderr
    snap.unchanged()
    return result


# --- the summary: malformed, wrong types at every level, wrong shapes (exit 2) -------------

SUMMARY_CASES = {
    "malformed-yaml": ("evaluation:\n  tasks: [\n", ["malformed YAML at line"]),
    "tab-indented-yaml": ("evaluation:\n\ttasks: []\n", ["malformed YAML"]),
    "empty-file": ("", ["the summary is empty"]),
    "top-level-list": ("- a\n- b\n", ["the summary is a list"]),
    "top-level-string": ("just words\n", ["the summary is a str"]),
    "json-array": ('[{"evaluation": {"tasks": []}}]', ["the summary is a list"]),
    "no-evaluation": ("experiment: {name: x}\n", ["no 'evaluation' mapping"]),
    "evaluation-is-a-string": ("evaluation: tasks\n", ["no 'evaluation' mapping"]),
    "tasks-missing": ("evaluation: {matrix: []}\n", ["no 'evaluation.tasks'"]),
    "tasks-is-a-mapping": ("evaluation: {tasks: {a: 1}}\n", ["'evaluation.tasks' must be a list", "dict"]),
    "tasks-empty": ("evaluation: {tasks: []}\n", ["'evaluation.tasks' is empty"]),
    "task-is-a-string": ("evaluation: {tasks: [words]}\n", ["evaluation.tasks[0]' must be a mapping"]),
    "task-name-missing": ("evaluation: {tasks: [{dataset: data/a.json}]}\n", ["evaluation.tasks[0].name' is missing"]),
    "task-name-int": ("evaluation: {tasks: [{name: 3, dataset: data/a.json}]}\n", ["tasks[0].name' must be a str, not int"]),
    "dataset-is-a-list": ("evaluation: {tasks: [{name: a, dataset: [x.json]}]}\n", ["tasks[0].dataset' must be a str, not list"]),
    "dataset-is-bool": ("evaluation: {tasks: [{name: a, dataset: true}]}\n", ["tasks[0].dataset' must be a str, not bool"]),
    "field-is-int": ("evaluation: {tasks: [{name: a, dataset: data/a.json, field: 7}]}\n", ["tasks[0].field' must be a string"]),
    "data-is-a-list": ("data: [1]\nevaluation: {tasks: [{name: a, dataset: data/a.json}]}\n", ["'data' must be a mapping"]),
    "training-is-a-string": ("data: {training: x}\nevaluation: {tasks: [{name: a}]}\n", ["'data.training' must be a mapping"]),
    "no-dataset-to-inherit": ("evaluation: {tasks: [{name: a}]}\n", ["task 'a' has no dataset"]),
    "duplicate-task-names": ("evaluation: {tasks: [{name: a, dataset: data/a.json}, {name: a, dataset: data/b.jsonl}]}\n",
                             ["task name 'a' appears twice"]),
    "unknown-extension": ("evaluation: {tasks: [{name: a, dataset: data/a.txt}]}\n", ["unknown extension '.txt'"]),
    "field-on-jsonl": ("evaluation: {tasks: [{name: a, dataset: data/b.jsonl, field: test}]}\n", ["no top-level fields"]),
    "binary-summary": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", ["not UTF-8 text"]),
}


@pytest.mark.parametrize("case", list(SUMMARY_CASES))
def test_broken_summary(built, case):
    content, phrases = SUMMARY_CASES[case]
    result = with_summary(built, content)
    one_error(result.stderr, *phrases)


def test_summary_path_is_a_folder_without_a_summary(built):
    """experiment=<folder holding experiment_summary.yaml> means that file (issue 12); a
    folder without one is one line, exit 2, nothing touched."""
    snap = Snapshot(built)
    result = run_agent(f"experiment={built['exp'] / 'data'}", env=built["env"])
    assert result.returncode == 2
    one_error(result.stderr, "a folder without experiment_summary.yaml")
    snap.unchanged()


def test_summary_path_does_not_exist(built):
    snap = Snapshot(built)
    result = run_agent(f"experiment={built['exp'] / 'nope.yaml'}", env=built["env"])
    assert result.returncode == 2
    one_error(result.stderr, "no such file")
    snap.unchanged()


# --- overrides: typos and bad enum values (exit 2) -------------------------------------------

OVERRIDE_CASES = {
    "typo-top-key": (["polcy=stop"], ["unknown key 'polcy'", "did you mean 'policy'"]),
    "typo-nested-key": (["site.lok=soft"], ["site.lok"]),
    "bad-group-option": (["policy=maybe"], ["policy=maybe", "choose one of"]),
    "bad-enum": (["site.lock=nfs"], ["site.lock"]),
    "bad-action": (["action=deploy"], ["action"]),
    "jobs-zero": (["jobs=0"], ["jobs=0"]),
    "jobs-not-int": (["jobs=many"], ["jobs"]),
    "not-an-override": (["stop"], ["is not an override"]),
    "non-interactive-ask": (["policy.non_interactive=ask"], ["nobody can answer"]),
}


@pytest.mark.parametrize("case", list(OVERRIDE_CASES))
def test_bad_override(built, case):
    args, phrases = OVERRIDE_CASES[case]
    snap = Snapshot(built)
    result = run_agent(f"experiment={built['summary']}", *args, env=built["env"], timeout=120)
    assert result.returncode == 2, result.stderr
    one_error(result.stderr, *phrases)
    snap.unchanged()


# --- the manifest: future schema, truncated, edited by hand ---------------------------------


def _break_manifest(b: Dict, how: str) -> bytes:
    doc = json.loads(b["manifest"].read_text())
    if how == "future-schema":
        doc["schema_version"] = 99
        return json.dumps(doc).encode()
    if how == "truncated":
        return b["manifest"].read_bytes()[: len(b["manifest"].read_bytes()) // 2]
    if how == "bad-status":
        doc["entries"][0]["status"] = "banana"
        return json.dumps(doc).encode()
    if how == "entries-not-a-list":
        doc["entries"] = {"a": 1}
        return json.dumps(doc).encode()
    if how == "entry-without-call":
        del doc["entries"][0]["call"]
        return json.dumps(doc).encode()
    if how == "json-array":
        return b"[]"
    raise AssertionError(how)


MANIFEST_CASES = {"future-schema": "newer than this cluster-agent", "truncated": "not valid JSON",
                  "bad-status": "'banana' is not one of", "entries-not-a-list": "'entries' must be a list",
                  "entry-without-call": "entries[0] lacks call", "json-array": "not a JSON object"}


@pytest.mark.parametrize("case", list(MANIFEST_CASES))
def test_broken_manifest_gate_refuses(built, case):
    good = built["manifest"].read_bytes()
    try:
        built["manifest"].write_bytes(_break_manifest(built, case))
        broken = built["manifest"].read_bytes()
        result = run_agent(f"experiment={built['summary']}", "action=check", env=built["env"])
        assert result.returncode == 3, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert MANIFEST_CASES[case] in lines[0], lines[0]
        assert built["manifest"].read_bytes() == broken  # the gate never writes
    finally:
        built["manifest"].write_bytes(good)


def test_future_schema_manifest_is_never_overwritten_by_prebuild(built):
    good = built["manifest"].read_bytes()
    try:
        future = _break_manifest(built, "future-schema")
        built["manifest"].write_bytes(future)
        caches = dataset_caches(built)
        result = run_agent(f"experiment={built['summary']}", env=built["env"])
        assert result.returncode == 2
        one_error(result.stderr, "newer than this cluster-agent", "upgrade")
        assert built["manifest"].read_bytes() == future
        assert dataset_caches(built) == caches
    finally:
        built["manifest"].write_bytes(good)


@pytest.mark.parametrize("case", ["truncated", "bad-status", "entries-not-a-list"])
def test_prebuild_rewrites_a_damaged_manifest_without_rebuilding(built, case):
    good = built["manifest"].read_bytes()
    try:
        built["manifest"].write_bytes(_break_manifest(built, case))
        caches = dataset_caches(built)
        result = run_agent(f"experiment={built['summary']}", "verify=false", env=built["env"])
        assert result.returncode == 0, result.stderr
        assert "MANIFEST_UNUSABLE" in result.stderr and "Traceback" not in result.stderr
        doc = json.loads(built["manifest"].read_text())
        assert [e["status"] for e in doc["entries"]] == ["unchanged", "unchanged"]
        assert dataset_caches(built) == caches  # records proved them: no rebuild
    finally:
        built["manifest"].write_bytes(good)


# --- data files: each bad file is one CACHE_FAILED / CACHE_MISSING line ------------------------


def _data_case(tmp_path: Path, name: str, make) -> Path:
    exp = tmp_path / "bad"
    data = exp / "data"
    data.mkdir(parents=True)
    write_records(data / "ok.json", 5)
    target = make(data)
    (exp / "experiment_summary.yaml").write_text(json.dumps(
        {"evaluation": {"tasks": [{"name": "ok", "dataset": "data/ok.json"}, {"name": "bad", "dataset": target}]}}))
    return exp / "experiment_summary.yaml"


def _loop(d: Path) -> str:
    os.symlink(d / "loop2.json", d / "loop1.json")
    os.symlink(d / "loop1.json", d / "loop2.json")
    return "data/loop1.json"


DATA_CASES = {
    "json-array": (lambda d: (d / "x.json").write_text('[{"input": 1}]') and "data/x.json", "is a JSON array"),
    "missing-field": (lambda d: (d / "x.json").write_text('{"train": [], "validation": []}') and "data/x.json",
                      "no field 'test'; fields: train, validation"),
    "binary-file": (lambda d: (d / "x.json").write_bytes(b"\x00\xff\xfe\x89" * 100) and "data/x.json", "not UTF-8"),
    "empty-file": (lambda d: ((d / "x.json").write_text(""), "data/x.json")[1], "empty file"),
    "truncated-json": (lambda d: (d / "x.json").write_text('{"test": [{"input": "a"') and "data/x.json", "invalid JSON"),
    "field-not-a-list": (lambda d: (d / "x.json").write_text('{"test": {"a": 1}}') and "data/x.json",
                         "field 'test' is a dict"),
    "folder-not-file": (lambda d: (d / "x.json").mkdir() or "data/x.json", "is a folder"),
    "symlink-loop": (_loop, "symlink loop"),
    "missing-file": (lambda d: "data/gone.json", "no such file"),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data_file(tmp_path, caches, case):
    make, phrase = DATA_CASES[case]
    summary = _data_case(tmp_path, case, make)
    result = run_agent(f"experiment={summary}", "consumer=datasets", "policy=stop", "verify=false")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    event = "CACHE_MISSING" if case == "missing-file" else "CACHE_FAILED"
    bad = [line for line in result.stderr.splitlines() if f"] {event}: " in line]
    assert len(bad) == 1 and phrase in bad[0], result.stderr
    doc = json.loads((summary.parent / ".cluster-agent" / "manifest.json").read_text())
    statuses = {e["tasks"][0]: e["status"] for e in doc["entries"]}
    assert statuses == {"ok": "built", "bad": "missing" if case == "missing-file" else "failed"}
    assert doc["decision"] == "stop"
    gate = run_agent(f"experiment={summary}", "action=check")
    assert gate.returncode == 3


# --- paths a shell would mangle: they must simply work -----------------------------------------


@pytest.mark.slow
def test_paths_with_spaces_quotes_newlines_and_non_ascii(tmp_path, caches):
    exp = tmp_path / "my exp 'q'"
    names = ["with space.json", "it's \"quoted\".json", "new\nline.json", "ñandú-日本.json"]
    for i, name in enumerate(names):
        write_records(exp / "data dir" / name, 3 + i)
    (exp / "experiment_summary.yaml").write_text(json.dumps(
        {"evaluation": {"tasks": [{"name": f"t{i}", "dataset": f"data dir/{n}"} for i, n in enumerate(names)]}}))
    summary = exp / "experiment_summary.yaml"
    result = run_agent(f"experiment={summary}", "policy=stop")  # verify=true: inspect-ai loads each
    assert result.returncode == 0, result.stderr
    doc = json.loads((exp / ".cluster-agent" / "manifest.json").read_text())
    assert [e["rows"] for e in doc["entries"]] == [3, 4, 5, 6]
    assert [e["call"]["data_files"] for e in doc["entries"]] == [str(exp / "data dir" / n) for n in names]
    gate = run_agent(f"experiment={summary}", "action=check", "output=shell")
    assert gate.returncode == 0, gate.stderr


# --- a huge file: the content hash streams --------------------------------------------------------


@pytest.mark.slow
def test_content_hash_of_a_1gb_file_uses_bounded_memory(tmp_path):
    """1 GiB sparse file (no disk used): peak RSS of the hashing process grows by less
    than 64 MiB over the same process before hashing."""
    big = tmp_path / "huge.json"
    with open(big, "wb") as fh:
        fh.truncate(1 << 30)
    code = ("import resource, sys\n"
            "from agent.fingerprint import content_hash\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            f"digest = content_hash({str(big)!r})\n"
            "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "print(before, after, digest)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    before_kb, after_kb, digest = out.stdout.split()
    assert (int(after_kb) - int(before_kb)) < 64 * 1024, out.stdout
    h = hashlib.sha256()
    zeros = bytes(1 << 20)
    for _ in range(1024):
        h.update(zeros)
    assert digest == h.hexdigest()
