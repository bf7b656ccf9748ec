"""Pre-building the bundled example for real: log lines (DESIGN §6), manifest (§5), JSON
output (§7), idempotence (no `datasets` import on an unchanged re-run), the `cp -p` stale
case, an mtime-only change, bad data files and an unwritable cache root.

One real pre-build of the example (real datasets + inspect-ai builds + verification into
module-scoped temporary caches) is shared by the read-only tests below; the tests that
change a data file build their own small experiment.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import socket
import subprocess
import time
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import files_under, run_agent, write_records, write_summary, source_of
from corehelp import LINE, assert_one_error_line, cache_env, copy_example, events, messages, load_rows, run_python

from agent import __version__
from agent.manifest import SCHEMA_VERSION


def _roots(env):
    """The cache roots jobs read: HF's, and inspect-ai's <XDG_CACHE_HOME>/inspect_ai (the rest of
    XDG_CACHE_HOME is other programs' business, e.g. the agent's own config memo)."""
    return [Path(env["HF_DATASETS_CACHE"]), Path(env["XDG_CACHE_HOME"]) / "inspect_ai"]


def _cache_files(env):
    out = {}
    for root in _roots(env):
        out.update(files_under(root))
    return out


def _expected_rows(call: dict) -> int:
    """Rows the consumer should get, counted from the data file itself."""
    path = source_of(call)
    if call["field"]:
        return len(json.loads(Path(path).read_text())[call["field"]])
    return sum(1 for line in Path(path).read_text().splitlines() if line.strip())


def _imported(stderr: str, module: str) -> bool:
    """From PYTHONPROFILEIMPORTTIME output: was `module` (top-level) imported?"""
    return any(re.search(rf"\|\s+{re.escape(module)}$", line) for line in stderr.splitlines()
               if line.startswith("import time:"))


@pytest.fixture(scope="module")
def ex(tmp_path_factory):
    root = tmp_path_factory.mktemp("prebuild")
    env = cache_env(root / "cache")
    summary = copy_example(root / "exp")
    cwd = root / "cwd"
    cwd.mkdir()
    proc = run_agent(f"experiment={summary}", env=env, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    manifest = summary.parent / ".cluster-agent" / "manifest.json"
    return SimpleNamespace(root=root, env=env, summary=summary, cwd=cwd, proc=proc, manifest=manifest,
                           doc=json.loads(manifest.read_text()), log=summary.parent / "logs" / "cluster-agent.log")


def test_first_run_logs_design_lines_on_stderr(ex):
    lines = [ln for ln in ex.proc.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in ex.proc.stderr
    for i, line in enumerate(lines):  # every line is an event line or the 'Unique datasets' continuation
        assert LINE.match(line) or (line.startswith("Unique datasets: ") and i and "CACHE_PREBUILD" in lines[i - 1]), line
    ev = events(ex.proc.stderr)
    names = [e for e, _ in ev]
    assert names.index("CACHE_PREBUILD") < names.index("CACHE_BUILT") < names.index("CACHE_PREBUILD_COMPLETE")
    entries = ex.doc["entries"]
    assert f"Unique datasets: {len(entries)}" in lines
    built = messages(ex.proc.stderr, "CACHE_BUILT")
    assert len(built) == len(entries) == 4
    for entry in entries:
        call = entry["call"]
        detail = f"field={call['field']}, " if call["field"] else ""
        pattern = rf"^{re.escape(call['data_files'])} \({detail}{_expected_rows(call)} rows, \d+\.\d s\)$"
        assert any(re.match(pattern, m) for m in built), (pattern, built)
    assert messages(ex.proc.stderr, "CACHE_PREBUILD_COMPLETE")[0].startswith("4 ready, 0 missing, 0 failed")
    assert ex.proc.stdout.startswith("proceed: 4 built, 0 unchanged, 0 rebuilt, 0 missing, 0 failed -> "
                                     + str(ex.manifest))


def test_first_run_log_file_holds_the_same_lines(ex):
    logged = ex.log.read_text().splitlines()
    for line in ex.proc.stderr.splitlines():
        if LINE.match(line):
            assert line in logged, line
    assert "Unique datasets: 4" in logged


def test_no_outputs_folder_in_the_cwd(ex):
    assert list(ex.cwd.iterdir()) == [], "nothing (outputs/, .hydra/, logs/) in the user's cwd"


def test_manifest_fields(ex):
    doc = ex.doc
    assert doc["schema_version"] == SCHEMA_VERSION
    assert doc["agent_version"] == __version__
    assert re.fullmatch(r"[0-9a-f]{16,64}", doc["config_digest"])
    assert doc["site"] == "local"
    assert doc["host"] == socket.gethostname()
    assert doc["user"] == getpass.getuser()
    created = time.mktime(time.strptime(doc["created"][:19], "%Y-%m-%dT%H:%M:%S"))
    assert abs(time.time() - created) < 3600
    assert doc["slurm_job_id"] == os.environ.get("SLURM_JOB_ID")
    assert doc["env"]["HF_DATASETS_CACHE"] == ex.env["HF_DATASETS_CACHE"]
    assert doc["env"]["XDG_CACHE_HOME"] == ex.env["XDG_CACHE_HOME"]  # consumer=inspect needs it
    assert doc["env"]["HF_HUB_OFFLINE"] == "1" and doc["env"]["HF_DATASETS_OFFLINE"] == "1"
    assert doc["versions"]["datasets"] == version("datasets")
    assert doc["versions"]["pyarrow"] == version("pyarrow")
    assert doc["versions"]["inspect_ai"] == version("inspect_ai")
    assert doc["decision"] == "proceed"
    assert doc["summary"] == {"built": 4, "unchanged": 0, "rebuilt": 0, "missing": 0, "failed": 0}
    folder = ex.summary.parent
    by_tasks = {tuple(e["tasks"]): e for e in doc["entries"]}
    assert set(by_tasks) == {("capitalization", "capitalization_strict"), ("acs_income",), ("arithmetic",),
                             ("capitalization_train_fit",)}
    assert by_tasks[("capitalization_train_fit",)]["call"]["field"] == "validation"
    assert by_tasks[("arithmetic",)]["call"]["field"] is None
    for e in doc["entries"]:
        call = e["call"]
        assert set(call) >= {"builder", "data_files", "field", "split"}
        assert call["builder"] == "json" and call["split"] == "train"
        assert call["data_files"].startswith(str(folder / "data") + "/") and "cwd" not in call
        data = source_of(call)
        assert e["source"]["size"] == data.stat().st_size
        assert e["source"]["mtime_ns"] == data.stat().st_mtime_ns
        assert e["source"]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
        assert e["rows"] == _expected_rows(call)
        assert e["status"] == "built" and e["error"] is None
        assert isinstance(e["seconds"], (int, float)) and e["seconds"] >= 0
        assert set(e["layers"]) == {"hf", "inspect"}
        for kind, root in (("hf", ex.env["HF_DATASETS_CACHE"]), ("inspect", ex.env["XDG_CACHE_HOME"])):
            layer = e["layers"][kind]
            assert layer["dir"].startswith(root + "/")
            assert any(name.endswith(".arrow") for name in layer["files"])
            for name, size in layer["files"].items():
                assert (Path(layer["dir"]) / name).stat().st_size == size
        assert e["layers"]["inspect"]["dir"].startswith(ex.env["XDG_CACHE_HOME"] + "/inspect_ai/hf_datasets/json-")


def test_consumer_calls_with_the_manifest_env_are_pure_cache_hits(ex):
    """What a job does: export the manifest's env, make the call; same rows, nothing written."""
    before = _cache_files(ex.env)
    from corehelp import load_rows_many

    got = load_rows_many([e["call"] for e in ex.doc["entries"]], ex.doc["env"])
    for e, rows in zip(ex.doc["entries"], got):
        assert len(rows) == e["rows"]
        field = e["call"]["field"]
        if field:
            assert rows == json.loads(source_of(e["call"]).read_text())[field]
    assert _cache_files(ex.env) == before, "a job's load_dataset call wrote into the cache"


def test_rerun_is_unchanged_writes_nothing_and_never_imports_datasets(ex):
    before = _cache_files(ex.env)
    # once so that this test's (private) config memo holds the command line, as a user's does
    assert run_agent(f"experiment={ex.summary}", env=ex.env, cwd=ex.cwd).returncode == 0
    proc = run_agent(f"experiment={ex.summary}", env={**ex.env, "PYTHONPROFILEIMPORTTIME": "1"}, cwd=ex.cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    unchanged = messages(proc.stderr, "CACHE_UNCHANGED")
    assert len(unchanged) == 4
    assert not [e for e, _ in events(proc.stderr) if e in ("CACHE_BUILT", "CACHE_REBUILT", "CACHE_FAILED")]
    assert _cache_files(ex.env) == before, "an unchanged re-run created or modified cache files"
    assert not _imported(proc.stderr, "datasets"), "the unchanged re-run imported datasets"
    assert not _imported(proc.stderr, "inspect_ai")
    # nor the libraries that only building, verbose logs or composing need (issue 14: each
    # costs 15-40 ms of a re-run that should take a tenth of the baseline's)
    for heavy in ("loguru", "filelock", "hydra", "omegaconf", "pyarrow"):
        assert not _imported(proc.stderr, heavy), f"the unchanged re-run imported {heavy}"
    assert _imported(proc.stderr, "agent.run"), "the import-time probe works (agent.run is imported)"
    doc = json.loads(ex.manifest.read_text())
    assert doc["summary"]["unchanged"] == 4 and doc["decision"] == "proceed"
    logged = ex.log.read_text()
    assert logged.count("CACHE_BUILT: ") >= 4 and all(f"CACHE_UNCHANGED: {m}" in logged for m in unchanged), \
        "the log file is appended to, not rewritten"
    assert all(e["status"] == "unchanged" for e in doc["entries"])
    # the same probe does see a datasets import (so the assertion above can fail)
    probe = run_python("import datasets", {"PYTHONPROFILEIMPORTTIME": "1"})
    assert _imported(probe.stderr, "datasets")


def test_output_json_is_exactly_one_document(ex):
    proc = run_agent(f"experiment={ex.summary}", "output=json", env={**ex.env, "SLURM_JOB_ID": "4242"}, cwd=ex.cwd)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # raises if there is anything but one document
    assert proc.stdout.strip().count("\n") == 0
    assert set(doc) == {"decision", "manifest", "summary", "entries"}
    assert doc["decision"] == "proceed" and doc["manifest"] == str(ex.manifest)
    assert doc["summary"] == {"built": 0, "unchanged": 4, "rebuilt": 0, "missing": 0, "failed": 0}
    manifest = json.loads(ex.manifest.read_text())
    assert manifest["slurm_job_id"] == "4242"
    for out, rec in zip(doc["entries"], manifest["entries"]):
        assert set(out) == {"source", "cwd", "field", "split", "tasks", "status", "rows", "error"}
        assert out == {"source": rec["call"]["data_files"], "cwd": rec["call"].get("cwd"), "field": rec["call"]["field"],
                       "split": "train",
                       "tasks": rec["tasks"], "status": "unchanged", "rows": rec["rows"], "error": None}
    assert messages(proc.stderr, "CACHE_UNCHANGED"), "logs still go to stderr"


def test_plan_after_prebuild_skips_everything_and_writes_nothing(ex):
    manifest_bytes, log_bytes, caches = ex.manifest.read_bytes(), ex.log.read_bytes(), _cache_files(ex.env)
    proc = run_agent(f"experiment={ex.summary}", "action=plan", "output=json", env=ex.env, cwd=ex.cwd)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert [e["action"] for e in plan["entries"]] == ["skip"] * 4
    assert ex.manifest.read_bytes() == manifest_bytes and ex.log.read_bytes() == log_bytes
    assert _cache_files(ex.env) == caches


def test_unwritable_cache_root_is_one_line_and_touches_nothing(ex, tmp_path):
    """As root, chmod 0500 does not stop writes (root bypasses permission bits), so the
    unwritable root here is a path below a regular file: mkdir fails with ENOTDIR for every
    user, which is what an unusable site.hf_cache really looks like to the agent."""
    blocker = tmp_path / "regular-file"
    blocker.write_text("not a folder")
    manifest_bytes, caches = ex.manifest.read_bytes(), _cache_files(ex.env)
    for key in ("site.hf_cache", "site.xdg_cache_home"):
        proc = run_agent(f"experiment={ex.summary}", f"{key}={blocker}/sub", env=ex.env, cwd=ex.cwd)
        line = assert_one_error_line(proc, 2)
        assert f"{blocker}/sub" in line and "not writable" in line
        assert ex.manifest.read_bytes() == manifest_bytes
        assert _cache_files(ex.env) == caches
    assert blocker.read_text() == "not a folder"


# --- tests that change data files: their own small experiments ---------------------------


def _inspect_rows(call: dict, env: dict) -> list:
    code = ("import json, contextlib, io\n"
            "from inspect_ai.dataset import hf_dataset, Sample\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    ds = hf_dataset(path={call['builder']!r}, split={call['split']!r}, data_files={call['data_files']!r},"
            f" field={call['field']!r}, sample_fields=lambda r: Sample(input=r['input'], target=r['output']))\n"
            "print(json.dumps([s.input for s in ds]))\n")
    proc = run_python(code, env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_cp_p_same_size_same_mtime_new_content_is_rebuilt(tmp_path, caches):
    """`cp -p` keeps the mtime, so both HF and inspect keys stay the same: only the content
    hash in the manifest can tell, and both layers must be replaced with the new rows."""
    data = write_records(tmp_path / "exp" / "data" / "a.json", 6, prefix="old")
    other = write_records(tmp_path / "incoming" / "a.json", 6, prefix="new")
    assert data.stat().st_size == other.stat().st_size
    st = data.stat()
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))  # the same mtime, to the nanosecond
    summary = write_summary(tmp_path / "exp", [{"name": "a", "dataset": str(data)}])
    first = run_agent(f"experiment={summary}")
    assert first.returncode == 0, first.stderr
    old_doc = json.loads((summary.parent / ".cluster-agent" / "manifest.json").read_text())
    call = old_doc["entries"][0]["call"]
    assert [r["input"] for r in load_rows(call, old_doc["env"])][:2] == ["old0", "old1"]

    subprocess.run(["cp", "-p", str(other), str(data)], check=True)
    assert data.stat().st_mtime_ns == st.st_mtime_ns and data.stat().st_size == st.st_size

    proc = run_agent(f"experiment={summary}")
    assert proc.returncode == 0, proc.stderr
    assert messages(proc.stderr, "CACHE_REBUILT") and messages(proc.stderr, "CACHE_REBUILT")[0].startswith(str(data))
    doc = json.loads((summary.parent / ".cluster-agent" / "manifest.json").read_text())
    entry = doc["entries"][0]
    assert entry["status"] == "rebuilt"
    assert entry["source"]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert entry["layers"]["hf"]["dir"] == old_doc["entries"][0]["layers"]["hf"]["dir"], "same HF key"
    new_inputs = [f"new{i}" for i in range(6)]
    assert [r["input"] for r in load_rows(call, doc["env"])] == new_inputs
    assert _inspect_rows(call, doc["env"]) == new_inputs

    again = run_agent(f"experiment={summary}")
    assert again.returncode == 0 and len(messages(again.stderr, "CACHE_UNCHANGED")) == 1


def test_touch_is_a_new_hf_key_rebuilt_then_a_cache_hit(tmp_path, caches):
    data = write_records(tmp_path / "exp" / "d.json", 4)
    summary = write_summary(tmp_path / "exp", [{"name": "t", "dataset": str(data)}])
    first = run_agent(f"experiment={summary}", "consumer=datasets")
    assert first.returncode == 0, first.stderr
    manifest = summary.parent / ".cluster-agent" / "manifest.json"
    old = json.loads(manifest.read_text())["entries"][0]
    st = data.stat()
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # touch: content unchanged

    proc = run_agent(f"experiment={summary}", "consumer=datasets")
    assert proc.returncode == 0, proc.stderr
    assert len(messages(proc.stderr, "CACHE_REBUILT")) == 1
    doc = json.loads(manifest.read_text())
    entry = doc["entries"][0]
    assert entry["status"] == "rebuilt" and entry["source"]["mtime_ns"] == st.st_mtime_ns + 5_000_000_000
    assert entry["layers"]["hf"]["dir"] != old["layers"]["hf"]["dir"], "mtime is part of the HF key"
    assert Path(entry["layers"]["hf"]["dir"]).is_dir()
    before = files_under(caches["hf"])
    rows = load_rows(entry["call"], doc["env"])
    assert len(rows) == 4 == entry["rows"]
    assert files_under(caches["hf"]) == before, "the consumer call after the rebuild was not a cache hit"


def test_bad_data_files_fail_per_entry_with_a_reason(tmp_path, caches):
    d = tmp_path / "exp" / "data"
    good = write_records(d / "good.json", 3)
    (d / "array.json").write_text(json.dumps([{"input": "a", "output": "b"}]))
    (d / "nofield.json").write_text(json.dumps({"train": [{"input": "a", "output": "b"}], "validation": []}))
    (d / "empty.json").write_bytes(b"")
    (d / "latin1.json").write_bytes('{"test": [{"input": "café", "output": "x"}]}'.encode("latin-1"))
    names = ["good", "array", "nofield", "empty", "latin1"]
    summary = write_summary(tmp_path / "exp", [{"name": n, "dataset": str(d / f"{n}.json")} for n in names])
    proc = run_agent(f"experiment={summary}", "consumer=datasets", "policy=stop")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    failed = messages(proc.stderr, "CACHE_FAILED")
    reasons = {Path(m.split(" ", 1)[0]).stem: m for m in failed}
    assert set(reasons) == {"array", "nofield", "empty", "latin1"}, failed
    assert "JSON array" in reasons["array"] and "'test'" in reasons["array"]
    assert "no field 'test'" in reasons["nofield"] and "fields: train, validation" in reasons["nofield"]
    assert "empty" in reasons["empty"]
    assert "not UTF-8" in reasons["latin1"]
    assert len(messages(proc.stderr, "CACHE_BUILT")) == 1
    doc = json.loads((summary.parent / ".cluster-agent" / "manifest.json").read_text())
    assert doc["decision"] == "stop" and doc["summary"]["failed"] == 4 and doc["summary"]["built"] == 1
    for e in doc["entries"]:
        name = Path(e["call"]["data_files"]).stem
        if name == "good":
            assert e["status"] == "built" and e["rows"] == 3
        else:
            assert e["status"] == "failed" and not e["layers"]
            # the log line adds the field and the tasks that need the file to the manifest's error
            reason = e["error"].split(" (", 1)[1]
            assert reason[:-1] in reasons[name] and "field=test" in reasons[name] and f"task {name}" in reasons[name]
    # a failed build leaves no data in the cache: every data file belongs to the good entry
    good_dir = next(e for e in doc["entries"] if e["status"] == "built")["layers"]["hf"]["dir"]
    stray = [p for p in files_under(caches["hf"]) if not p.startswith(good_dir) and "/.cluster-agent/" not in p]
    assert stray == []
    assert good.exists()


def test_progress_on_a_terminal_plain_lines_otherwise(tmp_path, caches):
    """stderr a terminal: a tqdm display 'N/M datasets <current file>' besides the log lines;
    stderr a pipe: plain log lines only (checked on every run above: no carriage returns)."""
    from corehelp import run_on_pty

    d = tmp_path / "exp"
    for name in ("a", "b", "c"):
        write_records(d / f"{name}.json", 2)
    summary = write_summary(d, [{"name": n, "dataset": str(d / f"{n}.json")} for n in ("a", "b", "c")])
    rc, out, _ = run_on_pty([f"experiment={summary}", "consumer=datasets", "verify=false"], {})
    assert rc == 0, out
    assert re.search(r"[0-3]/3 datasets", out), out  # tqdm redraws at most every 0.1 s: any count
    assert "\r" in out
    assert len(re.findall(r"CACHE_BUILT: ", out)) == 3
    piped = run_agent(f"experiment={summary}", "consumer=datasets", "verify=false")
    assert piped.returncode == 0 and "\r" not in piped.stderr and "datasets |" not in piped.stderr
    assert all(LINE.match(ln) or ln.startswith("Unique datasets") for ln in piped.stderr.splitlines())


def test_unwritable_cache_root_for_an_ordinary_user():
    """chmod 0500 on the HF cache root, with the agent run as an ordinary user (setpriv to
    nobody when the tests run as root, since root ignores permission bits)."""
    import shutil as _shutil

    from conftest import CLI
    from corehelp import as_unprivileged, shared_tmp

    prefix = as_unprivileged()
    base = shared_tmp("ca-perm-")
    try:
        env = dict(os.environ, **cache_env(base / "cache"), HOME=str(base))
        data = write_records(base / "exp" / "d.json", 3)
        summary = write_summary(base / "exp", [{"name": "t", "dataset": str(data)}])
        for p in [base / "exp", *base.joinpath("exp").rglob("*")]:
            p.chmod(0o777 if p.is_dir() else 0o666)

        def run(*args):
            return subprocess.run([*prefix, CLI, f"experiment={summary}", "consumer=datasets", "verify=false", *args],
                                  capture_output=True, text=True, env=env, cwd=base, timeout=600)

        first = run()
        assert first.returncode == 0, first.stderr
        manifest = summary.parent / ".cluster-agent" / "manifest.json"
        before, caches = manifest.read_bytes(), files_under(base / "cache")
        hf_root = Path(env["HF_DATASETS_CACHE"])
        hf_root.chmod(0o500)
        proc = run()
        line = assert_one_error_line(proc, 2)
        assert str(hf_root) in line and "not writable" in line and "Permission denied" in line
        assert manifest.read_bytes() == before
        assert files_under(base / "cache") == caches
        hf_root.chmod(0o755)
    finally:
        _shutil.rmtree(base, ignore_errors=True)
