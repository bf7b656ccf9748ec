"""consumer=inspect: the folder inspect-ai reads, staleness, job env, verification, gate.

Everything here is real: real `datasets` and inspect-ai calls in fresh processes, the
installed console script, real older releases of inspect-ai / datasets downloaded from
PyPI where a test needs one (skipped if PyPI cannot be reached). The one exception is
marked where it is.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from importlib.metadata import version
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from agent.layers import INSPECT_REVISION_IN_KEY, CacheRoots, inspect_folder, inspect_key_message
from agent.plan import LoadCall
from conftest import read_manifest, run_agent, write_records, write_summary

PY = sys.executable

# A job's call, run in a fresh interpreter: prints one JSON line per call.
_CONSUMER = r"""
import contextlib, io, json, os, sys
from inspect_ai.dataset import Sample, hf_dataset
out = []
for call in json.loads(sys.argv[1]):
    root = call.pop("watch", None)
    want_sha = call.pop("rows_sha", False)  # a digest of every row, for the tests that ask
    before = set(os.listdir(root)) if root and os.path.isdir(root) else set()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        ds = hf_dataset(path=call.pop("builder"), split=call.pop("split"),
                        sample_fields=lambda r: Sample(input=str(r["input"]), target=str(r["output"])), **call)
    after = set(os.listdir(root)) if root and os.path.isdir(root) else set()
    out.append({"rows": len(ds), "first": ds[0].input, "missed": "Loading dataset" in printed.getvalue(),
                "new_folders": sorted(after - before)})
    if want_sha:
        out[-1]["rows_sha"] = __import__("hashlib").sha256("\n".join(f"{s.input}\t{s.target}" for s in ds).encode()).hexdigest()
print(json.dumps(out))
"""


def consume(calls: List[dict], env: Dict[str, str], pythonpath: Optional[str] = None) -> List[dict]:
    """The real inspect-ai call(s) in a fresh process with exactly `env` (+ PYTHONPATH)."""
    env = dict(env)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    proc = subprocess.run([PY, "-c", _CONSUMER, json.dumps(calls)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def job_call(call: LoadCall, watch: Optional[Path] = None) -> dict:
    doc = {"builder": call.builder, "split": call.split, **call.kwargs()}
    if watch is not None:
        doc["watch"] = str(watch)
    return doc


def tree(*roots: Path) -> Dict[str, tuple]:
    """Every file and folder under the roots with (size, mtime_ns); lock files excluded
    (they hold no data and their mtime moves on every acquisition)."""
    out = {}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            for d in dirs:
                out[os.path.join(folder, d) + "/"] = (0, 0)
            for f in files:
                if not f.endswith(".lock"):
                    st = os.stat(os.path.join(folder, f))
                    out[os.path.join(folder, f)] = (st.st_size, st.st_mtime_ns)
    return out


def pypi_release(tmp_path_factory: pytest.TempPathFactory, dist: str, ver: str) -> Path:
    """An older release unpacked into a temp folder (to put first on PYTHONPATH); skip offline."""
    dest = tmp_path_factory.mktemp(f"{dist}-{ver}")
    proc = subprocess.run([PY, "-m", "pip", "download", "-q", "--no-deps", f"{dist}=={ver}", "-d", str(dest / "whl")],
                          capture_output=True, text=True, timeout=600)
    wheels = list((dest / "whl").glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        pytest.skip(f"cannot download {dist}=={ver} from PyPI: {proc.stderr.strip()[-200:]}")
    with zipfile.ZipFile(wheels[0]) as zf:
        zf.extractall(dest / "site")
    shutil.rmtree(dest / "whl")
    return dest / "site"


@pytest.fixture(scope="module")
def inspect_0_3_220(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pypi_release(tmp_path_factory, "inspect-ai", "0.3.220")


@pytest.fixture(scope="module")
def inspect_0_3_221(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pypi_release(tmp_path_factory, "inspect-ai", "0.3.221")


def awkward_calls(folder: Path) -> List[LoadCall]:
    """Paths with spaces and non-ASCII, two fields of one file, JSON Lines without a field."""
    a = write_records(folder / "with space" / "dätä ünï.json", 30)
    b = write_records(folder / "plain.json", 20, field="validation")
    c = folder / "lines 2.jsonl"
    c.write_text("".join(json.dumps({"input": f"l{i}", "output": str(i)}) + "\n" for i in range(15)))
    return [LoadCall("json", str(a), "test", "train"), LoadCall("json", str(a), "train", "train"),
            LoadCall("json", str(b), "validation", "train"), LoadCall("json", str(c), None, "train")]


def job_env_for(caches: Dict[str, Path]) -> Dict[str, str]:
    return {"HF_DATASETS_CACHE": str(caches["hf"]), "XDG_CACHE_HOME": str(caches["xdg"]),
            "HF_HOME": str(caches["hf_home"]), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


# --- 1. the key --------------------------------------------------------------------------


def test_inspect_folder_equals_inspect_ai_own_helpers(tmp_path: Path, caches: Dict[str, Path]) -> None:
    from inspect_ai._util.appdirs import inspect_cache_dir
    from inspect_ai._util.file import safe_filename
    from inspect_ai._util.hash import mm3_hash

    roots = CacheRoots(hf=caches["hf"], xdg=caches["xdg"])
    installed = version("inspect_ai")
    seen = set()
    for call in awkward_calls(tmp_path / "data"):
        # hf.py: mm3_hash(f"{path}{name}{data_dir}{split}{revision}{kwargs}"), name/data_dir/revision None
        name = data_dir = revision = None
        kwargs = call.kwargs()
        theirs = os.path.join(inspect_cache_dir("hf_datasets"),
                              f"{safe_filename(call.builder)}-{mm3_hash(f'{call.builder}{name}{data_dir}{call.split}{revision}{kwargs}')}")
        assert str(inspect_folder(roots, call, installed)) == theirs
        seen.add(theirs)
    assert len(seen) == 4  # every call its own folder
    assert inspect_cache_dir("hf_datasets") == caches["xdg"] / "inspect_ai" / "hf_datasets"


def test_inspect_folder_is_where_the_real_call_writes(tmp_path: Path, caches: Dict[str, Path]) -> None:
    """Cold caches: each real hf_dataset call creates exactly the folder we compute."""
    roots = CacheRoots(hf=caches["hf"], xdg=caches["xdg"])
    calls = awkward_calls(tmp_path / "data")
    results = consume([job_call(c, roots.inspect) for c in calls], job_env_for(caches))
    for call, got in zip(calls, results):
        assert got["missed"], "cold cache: inspect-ai must have loaded from the source"
        assert got["new_folders"] == [inspect_folder(roots, call, version("inspect_ai")).name]


@pytest.mark.slow
def test_both_key_forms_against_real_releases(tmp_path: Path, caches: Dict[str, Path], inspect_0_3_220: Path,
                                              inspect_0_3_221: Path) -> None:
    """0.3.220 hashes no {revision}, 0.3.221 does (INSPECT_REVISION_IN_KEY): run each
    release's own hf_dataset on a cold cache and compare the folder it writes."""
    assert INSPECT_REVISION_IN_KEY == (0, 3, 221)
    call = awkward_calls(tmp_path / "data")[0]
    folders = {}
    for ver, site in (("0.3.220", inspect_0_3_220), ("0.3.221", inspect_0_3_221)):
        xdg = tmp_path / f"xdg-{ver}"
        env = {**job_env_for(caches), "XDG_CACHE_HOME": str(xdg)}
        roots = CacheRoots(hf=caches["hf"], xdg=xdg)
        probe = subprocess.run([PY, "-c", "from importlib.metadata import version; import inspect_ai; "
                                "print(version('inspect_ai'), inspect_ai.__file__)"],
                               capture_output=True, text=True, env={**env, "PYTHONPATH": str(site)})
        assert probe.stdout.split()[0] == ver and probe.stdout.split()[1].startswith(str(site))
        got = consume([job_call(call, roots.inspect)], env, pythonpath=str(site))[0]
        assert got["missed"] and got["rows"] == 30
        assert got["new_folders"] == [inspect_folder(roots, call, ver).name]
        folders[ver] = got["new_folders"][0]
    assert folders["0.3.220"] != folders["0.3.221"]  # the two forms really differ
    assert inspect_key_message(call, "0.3.221") == inspect_key_message(call, "0.3.220").replace("train{", "trainNone{")


@pytest.mark.parametrize("release", [pytest.param("0.3.220", marks=pytest.mark.slow),
                                     pytest.param("0.3.221", marks=pytest.mark.slow), "installed"])
def test_limit_leaves_the_inspect_cache_lookup_untouched(tmp_path: Path, caches: Dict[str, Path], release: str,
                                                        request: pytest.FixtureRequest) -> None:
    """The verifier stops early with hf_dataset(..., limit=1). In both key forms (0.3.220
    without {revision}, 0.3.221 and later with it), limit must not move the folder: a
    cold limit=1 call writes the folder of the job's call without limit, and the job's
    call then hits it, and the other way round."""
    site = None if release == "installed" else str(request.getfixturevalue(f"inspect_{release.replace('.', '_')}"))
    ver = version("inspect_ai") if site is None else release
    calls = awkward_calls(tmp_path / "data")[:2]
    for first, then in ((calls[0], calls[0]), (calls[1], calls[1])):
        xdg = tmp_path / f"xdg-{ver}-{first.field}"
        env = {**job_env_for(caches), "XDG_CACHE_HOME": str(xdg)}
        roots = CacheRoots(hf=caches["hf"], xdg=xdg)
        limited = {**job_call(first, roots.inspect), "limit": 1}
        whole = job_call(then, roots.inspect)
        order = [limited, whole] if first.field == "test" else [whole, limited]
        cold, warm = consume(order, env, pythonpath=site)
        assert cold["missed"] and cold["new_folders"] == [inspect_folder(roots, first, ver).name]
        assert not warm["missed"] and warm["new_folders"] == []
        assert {cold["rows"], warm["rows"]} == {1, 30 if first.field == "test" else 1}
        snapshot = tree(caches["hf"], xdg)
        assert consume([limited], env, pythonpath=site)[0] == {"rows": 1, "first": cold["first"], "missed": False,
                                                                "new_folders": []}
        assert tree(caches["hf"], xdg) == snapshot  # a pure cache hit


@pytest.mark.slow
def test_agent_builds_the_old_key_form_for_an_old_inspect(tmp_path: Path, caches: Dict[str, Path],
                                                          inspect_0_3_220: Path) -> None:
    """cluster-agent running where inspect-ai 0.3.220 is installed builds the old-form
    folder, and that release's real hf_dataset (in the verification) hits it."""
    data = write_records(tmp_path / "data" / "old.json", 40)
    summary = write_summary(tmp_path / "exp", [{"name": "old", "dataset": str(data)}])
    proc = run_agent(f"experiment={summary}", "policy=stop", env={"PYTHONPATH": str(inspect_0_3_220)})
    assert proc.returncode == 0, proc.stderr
    doc = read_manifest(summary)
    assert doc["versions"]["inspect_ai"] == "0.3.220"
    entry = doc["entries"][0]
    assert entry["status"] == "built"
    roots = CacheRoots(hf=caches["hf"], xdg=caches["xdg"])
    call = LoadCall("json", str(data), "test", "train")
    assert entry["layers"]["inspect"]["dir"] == str(inspect_folder(roots, call, "0.3.220"))
    assert entry["layers"]["inspect"]["dir"] != str(inspect_folder(roots, call, "0.3.285"))
    got = consume([job_call(call, roots.inspect)], doc["env"], pythonpath=str(inspect_0_3_220))[0]
    assert got == {"rows": 40, "first": "q0", "missed": False, "new_folders": []}


# --- 2. staleness ------------------------------------------------------------------------


_READER = r"""
import json, os, sys, time
import datasets
folder, stop = sys.argv[1], sys.argv[2]
seen, errors = {}, []
while not os.path.exists(stop):
    if os.path.exists(folder):  # what inspect-ai checks before it trusts the folder
        try:
            n = datasets.load_from_disk(folder).num_rows
            seen[n] = seen.get(n, 0) + 1
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}"[:200])
    else:
        errors.append("folder missing")
print(json.dumps({"seen": seen, "errors": errors}))
"""


def test_cp_p_rewrite_serves_old_rows_until_cluster_agent_runs(tmp_path: Path, caches: Dict[str, Path]) -> None:
    data = write_records(tmp_path / "data" / "set.json", 3000, prefix="old")
    summary = write_summary(tmp_path / "exp", [{"name": "t", "dataset": str(data)}])
    assert run_agent(f"experiment={summary}", "policy=stop").returncode == 0
    before = read_manifest(summary)
    env = before["env"]
    call = LoadCall("json", str(data), "test", "train")
    layers = {k: Path(v["dir"]) for k, v in before["entries"][0]["layers"].items()}
    inode_before = {k: p.stat().st_ino for k, p in layers.items()}

    # New content, same mtime: `cp -p` of a file that carries the old file's mtime.
    new = write_records(tmp_path / "incoming" / "set.json", 4500, prefix="new")
    subprocess.run(["touch", "-r", str(data), str(new)], check=True)
    subprocess.run(["cp", "-p", str(new), str(data)], check=True)
    assert data.stat().st_mtime_ns == before["entries"][0]["source"]["mtime_ns"]

    # The hazard: without cluster-agent, inspect-ai keeps serving the old rows.
    stale = consume([job_call(call)], env)[0]
    assert (stale["rows"], stale["first"], stale["missed"]) == (3000, "old0", False)
    gate = run_agent(f"experiment={summary}", "action=check")
    assert gate.returncode == 3 and "changed since the pre-build" in gate.stderr

    # cluster-agent again, while a reader keeps opening the inspect-ai folder the way
    # inspect-ai does: it must only ever see a whole old or a whole new dataset.
    stop = tmp_path / "stop"
    reader = subprocess.Popen([PY, "-c", _READER, str(layers["inspect"]), str(stop)], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, **env})
    time.sleep(2.0)  # the reader has imported datasets and is looping
    again = run_agent(f"experiment={summary}", "policy=stop", "output=json")
    stop.touch()
    seen = json.loads(reader.communicate(timeout=120)[0].strip().splitlines()[-1])
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["entries"][0]["status"] == "rebuilt"
    assert seen["errors"] == []
    assert set(int(k) for k in seen["seen"]) <= {3000, 4500} and "3000" in seen["seen"]

    after = read_manifest(summary)["entries"][0]
    assert after["rows"] == 4500 and after["source"]["sha256"] != before["entries"][0]["source"]["sha256"]
    assert after["layers"]["inspect"]["dir"] == str(layers["inspect"])  # same key, new folder
    assert layers["inspect"].stat().st_ino != inode_before["inspect"]  # replaced by a rename, not rewritten
    fresh = consume([job_call(call)], env)[0]
    assert (fresh["rows"], fresh["first"], fresh["missed"]) == (4500, "new0", False)
    # the HF layer holds the new rows too (a datasets-consumer job), and nothing half-made is left behind
    hf = subprocess.run([PY, "-c", f"import datasets; d = datasets.load_dataset('json', data_files={str(data)!r}, "
                         "field='test', split='train'); print(d.num_rows, d[0]['input'])"],
                        capture_output=True, text=True, env={**os.environ, **env})
    assert hf.stdout.split() == ["4500", "new0"], hf.stderr[-500:]
    leftovers = [p.name for k in layers for p in Path(after["layers"][k]["dir"]).parent.iterdir()
                 if ".tmp-" in p.name or ".stale-" in p.name or p.name.endswith(".incomplete")]
    assert leftovers == []


# --- 3. the job environment ---------------------------------------------------------------


def test_job_env_alone_finds_both_layers(tmp_path: Path, caches: Dict[str, Path], example: Path) -> None:
    assert run_agent(f"experiment={example}", "policy=stop").returncode == 0
    doc = read_manifest(example)
    env = doc["env"]
    assert env["HF_DATASETS_CACHE"] == str(caches["hf"]) and env["XDG_CACHE_HOME"] == str(caches["xdg"])
    assert env["HF_HUB_OFFLINE"] == "1" and env["HF_DATASETS_OFFLINE"] == "1"
    snapshot = tree(caches["hf"], caches["xdg"])
    assert any("/inspect_ai/hf_datasets/json-" in p for p in snapshot)
    calls = [{"builder": e["call"]["builder"], "split": e["call"]["split"], "data_files": e["call"]["data_files"],
              **({"field": e["call"]["field"]} if e["call"]["field"] else {})} for e in doc["entries"]]
    # exactly the manifest's env: no HOME, no HF_HOME, nothing inherited from this process
    results = consume(calls, env)
    assert [r["rows"] for r in results] == [e["rows"] for e in doc["entries"]]
    assert not any(r["missed"] for r in results)
    assert tree(caches["hf"], caches["xdg"]) == snapshot  # a pure cache hit: nothing created or modified


# --- 4. verification with the real consumer -------------------------------------------------


def test_verification_fails_when_jobs_look_elsewhere(tmp_path: Path, caches: Dict[str, Path]) -> None:
    """A site env that points the jobs' XDG_CACHE_HOME elsewhere: the real call misses."""
    data = write_records(tmp_path / "data" / "v.json", 25)
    summary = write_summary(tmp_path / "exp", [{"name": "v", "dataset": str(data)}])
    elsewhere = tmp_path / "elsewhere"
    proc = run_agent(f"experiment={summary}", "policy=stop", f"+site.env.XDG_CACHE_HOME={elsewhere}")
    assert proc.returncode == 1
    failed = [ln for ln in proc.stderr.splitlines() if "CACHE_FAILED" in ln]
    assert len(failed) == 1 and "verification: the consumer missed the inspect-ai cache" in failed[0]
    assert str(elsewhere / "inspect_ai" / "hf_datasets") in failed[0]
    assert "Traceback" not in proc.stderr
    entry = read_manifest(summary)["entries"][0]
    assert entry["status"] == "failed" and "verification" in entry["error"]


def test_verification_fails_when_jobs_open_another_folder(tmp_path: Path, caches: Dict[str, Path]) -> None:
    """Jobs pointed at another inspect cache that already holds this call's folder (from an
    earlier run there): their call is a pure cache hit with the right rows, but it does not
    read what the agent built. The verifier names the folder the call opened."""
    data = write_records(tmp_path / "data" / "o.json", 25)
    summary = write_summary(tmp_path / "exp", [{"name": "o", "dataset": str(data)}])
    elsewhere = tmp_path / "elsewhere"
    call = LoadCall("json", str(data), "test", "train")
    other = CacheRoots(hf=caches["hf"], xdg=elsewhere)
    assert consume([job_call(call, other.inspect)], {**job_env_for(caches), "XDG_CACHE_HOME": str(elsewhere)})[0]["missed"]
    proc = run_agent(f"experiment={summary}", "policy=stop", f"+site.env.XDG_CACHE_HOME={elsewhere}")
    assert proc.returncode == 1
    failed = [ln for ln in proc.stderr.splitlines() if "CACHE_FAILED" in ln]
    built = inspect_folder(CacheRoots(hf=caches["hf"], xdg=caches["xdg"]), call, version("inspect_ai"))
    assert len(failed) == 1
    assert f"verification: the consumer opened {inspect_folder(other, call, version('inspect_ai'))}, the build wrote {built}" in failed[0]
    assert "Traceback" not in proc.stderr


def test_verification_overlapping_builds_passes_and_still_sees_misses(tmp_path: Path, caches: Dict[str, Path]) -> None:
    """jobs=1, six entries: each is verified while the next one builds (that build writes
    under both roots meanwhile), and every entry verifies. With the jobs pointed elsewhere,
    every entry's call misses while the others build, and each is failed for it: what the
    builds wrote meanwhile is set aside, what the consumer wrote is not."""
    paths = [write_records(tmp_path / "data" / f"e{i}.json", 10 + i) for i in range(6)]
    summary = write_summary(tmp_path / "exp", [{"name": f"e{i}", "dataset": str(p)} for i, p in enumerate(paths)])
    proc = run_agent(f"experiment={summary}", "policy=stop", "jobs=1")
    assert proc.returncode == 0, proc.stderr
    doc = read_manifest(summary)
    assert [e["status"] for e in doc["entries"]] == ["built"] * 6
    assert [e["rows"] for e in doc["entries"]] == [10 + i for i in range(6)]
    assert "Loaded 6 dataset(s) with the real inspect call in a fresh process: 6 pure cache hit(s)" in proc.stderr

    elsewhere = tmp_path / "elsewhere"
    proc = run_agent(f"experiment={summary}", "policy=stop", "jobs=1", "force=true",
                     f"+site.env.XDG_CACHE_HOME={elsewhere}")
    assert proc.returncode == 1
    failed = [ln for ln in proc.stderr.splitlines() if "CACHE_FAILED" in ln]
    assert len(failed) == 6
    assert all("verification: the consumer missed the inspect-ai cache and loaded the source again (it wrote "
               f"{elsewhere / 'inspect_ai' / 'hf_datasets'}" in ln for ln in failed)


@pytest.fixture(scope="module")
def datasets_5_1_0(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pypi_release(tmp_path_factory, "datasets", "5.1.0")


def test_consumer_datasets_verifies_with_load_dataset(tmp_path: Path, caches: Dict[str, Path]) -> None:
    data = write_records(tmp_path / "data" / "d.json", 33)
    summary = write_summary(tmp_path / "exp", [{"name": "d", "dataset": str(data)}])
    proc = run_agent(f"experiment={summary}", "policy=stop", "consumer=datasets")
    assert proc.returncode == 0, proc.stderr
    assert "with the real datasets call" in proc.stderr
    doc = read_manifest(summary)
    assert set(doc["entries"][0]["layers"]) == {"hf"} and "XDG_CACHE_HOME" not in doc["env"]
    assert not (caches["xdg"] / "inspect_ai").exists()


@pytest.mark.slow
def test_consumer_datasets_verification_fails_for_another_datasets_release(
        tmp_path: Path, caches: Dict[str, Path], datasets_5_1_0: Path) -> None:
    """Jobs whose environment loads another datasets release (here: a site env PYTHONPATH)
    look under another cache key; the load_dataset verification sees it build again."""
    assert version("datasets") != "5.1.0"
    data = write_records(tmp_path / "data" / "d.json", 33)
    summary = write_summary(tmp_path / "exp", [{"name": "d", "dataset": str(data)}])
    proc = run_agent(f"experiment={summary}", "policy=stop", "consumer=datasets",
                     f"+site.env.PYTHONPATH={datasets_5_1_0}")
    assert proc.returncode == 1
    failed = [ln for ln in proc.stderr.splitlines() if "CACHE_FAILED" in ln]
    assert len(failed) == 1 and "verification: the consumer's call was not a pure cache hit: it wrote" in failed[0]
    assert str(caches["hf"] / "json") in failed[0]


# --- 5. path hazards -----------------------------------------------------------------------


def test_path_hazards_warn_and_record_the_exact_string(tmp_path: Path, caches: Dict[str, Path]) -> None:
    exp = tmp_path / "exp"
    for name in ("rel", "dot", "dbl", "sym", "abs"):
        write_records(exp / "data" / f"{name}.json", 12)
    (exp / "linked").symlink_to(exp / "data")
    tasks = [{"name": "rel", "dataset": "data/rel.json"}, {"name": "dot", "dataset": "./data/dot.json"},
             {"name": "dbl", "dataset": f"{exp}/data//dbl.json"}, {"name": "sym", "dataset": f"{exp}/linked/sym.json"},
             {"name": "abs", "dataset": f"{exp}/data/abs.json"}]
    summary = write_summary(exp, tasks)
    proc = run_agent(f"experiment={summary}", "policy=stop")
    assert proc.returncode == 0, proc.stderr
    hazards = [ln for ln in proc.stderr.splitlines() if "PATH_HAZARD" in ln]
    assert len(hazards) == 4
    expect = {"data/rel.json": "relative path", "./data/dot.json": "contains './'",
              f"{exp}/data//dbl.json": "contains '//'", f"{exp}/linked/sym.json": "passes through a symlink"}
    for written, why in expect.items():
        line = next(ln for ln in hazards if f"PATH_HAZARD: {written}:" in ln)
        assert why in line
    doc = read_manifest(summary)
    by_task = {e["tasks"][0]: e for e in doc["entries"]}
    for name in ("rel", "dot", "dbl"):
        assert by_task[name]["call"]["data_files"] == f"{exp}/data/{name}.json"
        assert f"must pass exactly '{exp}/data/{name}.json'" in next(ln for ln in hazards if f"/{name}.json:" in ln)
    assert by_task["sym"]["call"]["data_files"] == f"{exp}/linked/sym.json"
    assert by_task["abs"]["hazards"] == [] and by_task["dot"]["written"] == "./data/dot.json"
    assert by_task["dot"]["python"] == (f"inspect_ai.dataset.hf_dataset(path='json', data_files='{exp}/data/dot.json', "
                                        "field='test', split='train')")
    # Why it matters: the recorded string hits the cache, the './' spelling misses it.
    roots = CacheRoots(hf=caches["hf"], xdg=caches["xdg"])
    exact = LoadCall("json", f"{exp}/data/dot.json", "test", "train")
    dotted = LoadCall("json", f"{exp}/./data/dot.json", "test", "train")
    hit, miss = consume([job_call(exact, roots.inspect), job_call(dotted, roots.inspect)], doc["env"])
    assert not hit["missed"] and hit["new_folders"] == []
    assert miss["missed"] and miss["new_folders"] == [inspect_folder(roots, dotted, version("inspect_ai")).name]


# --- 6. the version gate -------------------------------------------------------------------


@pytest.mark.parametrize("lib", ["datasets", "inspect_ai"])
def test_gate_refuses_a_manifest_built_with_other_versions(tmp_path: Path, caches: Dict[str, Path], lib: str) -> None:
    data = write_records(tmp_path / "data" / "g.json", 10)
    summary = write_summary(tmp_path / "exp", [{"name": "g", "dataset": str(data)}])
    assert run_agent(f"experiment={summary}", "policy=stop").returncode == 0
    assert run_agent(f"experiment={summary}", "action=check").returncode == 0
    path = summary.parent / ".cluster-agent" / "manifest.json"
    doc = json.loads(path.read_text())
    doc["versions"][lib] = "0.0.1"  # what a manifest built in another environment looks like
    path.write_text(json.dumps(doc))
    proc = run_agent(f"experiment={summary}", "action=check")
    assert proc.returncode == 3
    refused = [ln for ln in proc.stderr.splitlines() if "GATE_REFUSED" in ln]
    assert len(refused) == 1
    assert f"{lib} {version(lib)} here, but the caches were built with {lib} 0.0.1" in refused[0]
    assert "re-run cluster-agent in the job's environment" in refused[0]


@pytest.mark.slow
def test_gate_refuses_in_a_job_env_with_another_datasets(tmp_path: Path, caches: Dict[str, Path],
                                                         datasets_5_1_0: Path) -> None:
    """The same, for real: the job's environment imports datasets 5.1.0."""
    data = write_records(tmp_path / "data" / "g.json", 10)
    summary = write_summary(tmp_path / "exp", [{"name": "g", "dataset": str(data)}])
    assert run_agent(f"experiment={summary}", "policy=stop").returncode == 0
    proc = run_agent(f"experiment={summary}", "action=check", env={"PYTHONPATH": str(datasets_5_1_0)})
    assert proc.returncode == 3
    assert f"datasets 5.1.0 here, but the caches were built with datasets {version('datasets')}" in proc.stderr


# --- 7. packaging ----------------------------------------------------------------------------


def test_inspect_is_an_optional_extra() -> None:
    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
    assert not any(d.lower().startswith(("inspect-ai", "inspect_ai")) for d in project["dependencies"])
    assert any(d.startswith("inspect-ai") for d in project["optional-dependencies"]["inspect"])


@pytest.fixture
def venv_without_inspect(tmp_path: Path) -> Path:
    """A real venv holding every package of ours except inspect-ai.

    Not a shim: `python -m venv` plus symlinks to each entry of our site-packages
    (including the editable install of cluster-agent) except inspect_ai's package and
    dist-info, so `import inspect_ai` and importlib.metadata fail as on a machine
    that never installed the extra. Cheaper than re-installing datasets/pyarrow."""
    venv = tmp_path / "venv"
    subprocess.run([PY, "-m", "venv", "--without-pip", str(venv)], check=True)
    ours = Path(subprocess.run([PY, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    theirs = next((venv / "lib").glob("python3*/site-packages"))
    for entry in ours.iterdir():
        if entry.name.startswith(("inspect_ai", "inspect-ai")) or entry.name == "__pycache__":
            continue
        (theirs / entry.name).symlink_to(entry)
    return venv / "bin" / "python"


def test_consumer_inspect_without_the_extra_is_one_line_exit_2(tmp_path: Path, caches: Dict[str, Path],
                                                             venv_without_inspect: Path) -> None:
    py = str(venv_without_inspect)
    assert subprocess.run([py, "-c", "import inspect_ai"], capture_output=True).returncode != 0
    assert subprocess.run([py, "-c", "import agent, datasets"], capture_output=True).returncode == 0
    data = write_records(tmp_path / "data" / "p.json", 10)
    summary = write_summary(tmp_path / "exp", [{"name": "p", "dataset": str(data)}])
    proc = subprocess.run([py, "-m", "agent", f"experiment={summary}"], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "cluster-agent: error: consumer=inspect needs inspect-ai: pip install 'cluster-agent[inspect]', "
        "or pass consumer=datasets"]
    assert not (summary.parent / ".cluster-agent" / "manifest.json").exists()
    ok = subprocess.run([py, "-m", "agent", f"experiment={summary}", "consumer=datasets", "policy=stop"],
                        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert read_manifest(summary)["versions"]["inspect_ai"] is None


# --- 5. one copy of the bytes -------------------------------------------------------------


def _rows_sha(n: int) -> str:
    import hashlib

    return hashlib.sha256("\n".join(f"q{i}\ta{i}" for i in range(n)).encode()).hexdigest()


def _arrow(folder: Path) -> os.stat_result:
    (arrow,) = folder.glob("*.arrow")
    return arrow.stat()


def test_inspect_layer_shares_the_hf_arrow_file_and_outlives_hf_cleanups(tmp_path: Path,
                                                                           caches: Dict[str, Path]) -> None:
    """On one file system the inspect layer's Arrow file is a hard link to the HF layer's
    (save_to_disk wrote the same bytes): the cache takes half the disk. The real inspect-ai
    call reads every row from it; after the HF folder is deleted (a clean-up, a purge) it
    still does, and a rebuild of the HF layer leaves it readable."""
    write_records(tmp_path / "exp" / "data" / "a.json", 500)
    summary = write_summary(tmp_path / "exp", [{"name": "a", "dataset": "data/a.json"}])
    assert run_agent(f"experiment={summary}").returncode == 0  # verified with the real call
    doc = read_manifest(summary)
    entry = doc["entries"][0]
    hf_dir, ins_dir = Path(entry["layers"]["hf"]["dir"]), Path(entry["layers"]["inspect"]["dir"])
    assert _arrow(hf_dir).st_ino == _arrow(ins_dir).st_ino and _arrow(ins_dir).st_nlink == 2
    call = {"builder": "json", "split": "train", "data_files": entry["call"]["data_files"], "field": "test",
            "rows_sha": True}
    read = consume([call], doc["env"])[0]
    assert (read["rows"], read["rows_sha"], read["missed"]) == (500, _rows_sha(500), False)

    shutil.rmtree(hf_dir)  # the HF layer cleaned away
    before = tree(caches["xdg"])
    read = consume([call], doc["env"])[0]
    assert (read["rows"], read["rows_sha"], read["missed"]) == (500, _rows_sha(500), False)
    assert tree(caches["xdg"]) == before  # still a pure cache hit of the inspect layer

    rerun = run_agent(f"experiment={summary}", "output=json")
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["summary"]["rebuilt"] == 1  # the HF layer was gone
    read = consume([call], doc["env"])[0]
    assert (read["rows"], read["rows_sha"], read["missed"]) == (500, _rows_sha(500), False)
    assert _arrow(hf_dir).st_ino == _arrow(ins_dir).st_ino


def test_inspect_layer_on_another_file_system_keeps_its_copy(tmp_path: Path, caches: Dict[str, Path],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """No hard link across file systems: the inspect root on tmpfs keeps save_to_disk's copy."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK) or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs a writable /dev/shm on another file system than the temp folder")
    xdg = Path(__import__("tempfile").mkdtemp(prefix="ca-xdg-", dir=shm))
    try:
        monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
        write_records(tmp_path / "exp" / "data" / "a.json", 300)
        summary = write_summary(tmp_path / "exp", [{"name": "a", "dataset": "data/a.json"}])
        assert run_agent(f"experiment={summary}").returncode == 0
        doc = read_manifest(summary)
        entry = doc["entries"][0]
        ins_dir = Path(entry["layers"]["inspect"]["dir"])
        assert str(ins_dir).startswith(str(xdg)) and _arrow(ins_dir).st_nlink == 1
        assert _arrow(ins_dir).st_size == _arrow(Path(entry["layers"]["hf"]["dir"])).st_size
        call = {"builder": "json", "split": "train", "data_files": entry["call"]["data_files"], "field": "test",
            "rows_sha": True}
        read = consume([call], doc["env"])[0]
        assert (read["rows"], read["rows_sha"], read["missed"]) == (300, _rows_sha(300), False)
    finally:
        shutil.rmtree(xdg, ignore_errors=True)
