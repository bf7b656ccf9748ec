"""The launch gate (action=check) on the pre-built example: exit 0 when ready, exit 3 with
GATE_REFUSED lines when the manifest is missing, the pre-build decided stop, a source
changed or a cache file is gone. The version gate is tested with the inspect layer
(tests/test_inspect_layer.py).

One pre-build of the example is shared (verify=false: verification has its own tests in
test_prebuild.py; here only the gate's reading of manifest + disk matters). Tests that
break something restore it in a `finally`, and the gate must then pass again.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import files_under, run_agent, source_of
from corehelp import LINE, copy_example, events, messages, prebuilt_example


@pytest.fixture(scope="module")
def ex(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate")
    env, summary = prebuilt_example(root)
    manifest = summary.parent / ".cluster-agent" / "manifest.json"
    return SimpleNamespace(root=root, env=env, summary=summary, manifest=manifest,
                           doc=json.loads(manifest.read_text()))


def _check(ex, *args, env=None):
    return run_agent(f"experiment={ex.summary}", "action=check", *args, env={**ex.env, **(env or {})}, timeout=120)


def _refused(proc):
    assert proc.returncode == 3, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert lines and all(LINE.match(ln) and LINE.match(ln).group(1) == "GATE_REFUSED" for ln in lines), lines
    return messages(proc.stderr, "GATE_REFUSED")


def _imported(stderr, module):
    return any(re.search(rf"\|\s+{re.escape(module)}$", ln) for ln in stderr.splitlines() if ln.startswith("import time:"))


def test_check_passes_after_prebuild_without_heavy_imports(ex):
    manifest_bytes = ex.manifest.read_bytes()
    caches = files_under(ex.root / "cache")
    proc = _check(ex, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    ok = messages(proc.stderr, "GATE_OK")
    assert len(ok) == 1 and ok[0].startswith("4 dataset(s) ready for all tasks")
    assert proc.stdout == ""
    for heavy in ("datasets", "inspect_ai", "hydra", "omegaconf", "pyarrow"):
        assert not _imported(proc.stderr, heavy), f"the gate imported {heavy}"
    assert _imported(proc.stderr, "json"), "the import-time probe works"
    assert ex.manifest.read_bytes() == manifest_bytes, "the gate never writes the manifest"
    assert files_under(ex.root / "cache") == caches


def test_check_through_the_full_config_path_agrees(ex):
    """A non-gate key (site=local) sends check through Hydra; same verdict."""
    proc = _check(ex, "site=local", "consumer=inspect")
    assert proc.returncode == 0, proc.stderr
    assert messages(proc.stderr, "GATE_OK")


def test_check_json_and_shell_outputs(ex):
    proc = _check(ex, "output=json")
    assert proc.returncode == 0
    doc = json.loads(proc.stdout)
    assert doc["gate"] == "ok" and doc["entries"] == 4 and doc["problems"] == []
    assert doc["manifest"] == str(ex.manifest) and doc["env"] == ex.doc["env"]
    proc = _check(ex, "output=shell")
    assert proc.returncode == 0
    exported = dict(shlex.split(line)[1].split("=", 1) for line in proc.stdout.splitlines())
    assert exported == ex.doc["env"]
    assert exported["HF_DATASETS_CACHE"] == ex.env["HF_DATASETS_CACHE"]


def test_check_narrowed_to_one_task(ex):
    proc = _check(ex, "task=capitalization_strict")
    assert proc.returncode == 0, proc.stderr
    assert messages(proc.stderr, "GATE_OK")[0].startswith("1 dataset(s) ready for task capitalization_strict")
    (line,) = _refused(_check(ex, "task=nope"))
    assert "task 'nope'" in line and "capitalization" in line and "arithmetic" in line


def test_missing_manifest_is_refused(ex, tmp_path):
    other = copy_example(tmp_path / "never-built")
    proc = run_agent(f"experiment={other}", "action=check", env=ex.env)
    (line,) = _refused(proc)
    assert "no manifest" in line and str(other.parent / ".cluster-agent" / "manifest.json") in line
    (line,) = _refused(_check(ex, f"manifest={tmp_path / 'nowhere.json'}"))
    assert str(tmp_path / "nowhere.json") in line
    assert not (other.parent / ".cluster-agent").exists(), "the gate creates nothing"


def test_a_stop_decision_is_refused(ex, tmp_path):
    doc = dict(ex.doc, decision="stop")
    stopped = tmp_path / "manifest.json"
    stopped.write_text(json.dumps(doc))
    lines = _refused(_check(ex, f"manifest={stopped}"))
    assert any("decided 'stop'" in ln for ln in lines)


def test_truncated_manifest_is_refused(ex, tmp_path):
    cut = tmp_path / "manifest.json"
    cut.write_bytes(ex.manifest.read_bytes()[:200])
    (line,) = _refused(_check(ex, f"manifest={cut}"))
    assert str(cut) in line and "run cluster-agent again" in line


def test_changed_source_is_refused_until_restored(ex):
    entry = ex.doc["entries"][1]
    path = source_of(entry["call"])
    original, st = path.read_bytes(), path.stat()
    try:
        doc = json.loads(original)
        doc[entry["call"]["field"]][0]["output"] = "tampered"
        path.write_text(json.dumps(doc))
        lines = _refused(_check(ex))
        assert lines == [f"{path} changed since the pre-build (content hash differs): its caches hold the old rows; "
                         "run cluster-agent again"]
        # a task that does not read the file is still allowed to start
        assert _check(ex, "task=arithmetic").returncode == 0
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _check(ex).returncode == 0, "same content again: the gate passes"


def test_deleted_source_is_refused(ex, tmp_path):
    path = source_of(ex.doc["entries"][2]["call"])
    aside = tmp_path / path.name
    shutil.move(path, aside)
    try:
        (line,) = _refused(_check(ex))
        assert str(path) in line and "no such file" in line
    finally:
        shutil.move(aside, path)
    assert _check(ex).returncode == 0


@pytest.mark.parametrize("kind", ["hf", "inspect"])
def test_missing_cache_file_is_refused(ex, kind, tmp_path):
    layer = ex.doc["entries"][0]["layers"][kind]
    arrow = Path(layer["dir"]) / next(n for n in layer["files"] if n.endswith(".arrow"))
    aside = tmp_path / arrow.name
    os.rename(arrow, aside)
    try:
        lines = _refused(_check(ex, "task=capitalization"))
        assert any(arrow.name in ln and layer["dir"] in ln for ln in lines), lines
        assert _check(ex, "task=arithmetic").returncode == 0
    finally:
        os.rename(aside, arrow)
    assert _check(ex).returncode == 0


def test_gate_lines_have_the_design_format(ex):
    proc = _check(ex)
    assert [e for e, _ in events(proc.stderr)] == ["GATE_OK"]
    assert len(proc.stderr.splitlines()) == 1
