"""Shared fixtures: temporary cache roots, a copy of the bundled example, the console script.

Tests run the installed `cluster-agent` console script as a subprocess (what a user
runs), with HF_DATASETS_CACHE / HF_HOME / XDG_CACHE_HOME pointed into tmp_path so
real `datasets` and inspect-ai builds never touch the developer's caches.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
CLI = str(Path(sys.executable).parent / "cluster-agent")


@pytest.fixture(autouse=True)
def no_user_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test is isolated from the developer's own config files and config memo: an
    empty XDG_CONFIG_HOME, no CLUSTER_AGENT_CONFIG_PATH, a private memo folder (both beside
    tmp_path, not in it: tests check that nothing else appears there)."""
    home = tmp_path_factory.mktemp("xdg-config")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    monkeypatch.delenv("CLUSTER_AGENT_CONFIG_PATH", raising=False)
    monkeypatch.setenv("CLUSTER_AGENT_CONFIG_MEMO", str(tmp_path_factory.mktemp("config-memo")))
    return home / "cluster-agent"


@pytest.fixture
def caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Dict[str, Path]:
    """Fresh cache roots for this test, exported so subprocesses inherit them."""
    roots = {"hf": tmp_path / "cache" / "hf-datasets", "xdg": tmp_path / "cache" / "xdg",
             "hf_home": tmp_path / "cache" / "hf-home"}
    monkeypatch.setenv("HF_DATASETS_CACHE", str(roots["hf"]))
    monkeypatch.setenv("HF_HOME", str(roots["hf_home"]))
    monkeypatch.setenv("XDG_CACHE_HOME", str(roots["xdg"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    return roots


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """A private copy of the bundled example; returns its experiment_summary.yaml."""
    dest = tmp_path / "exp"
    shutil.copytree(EXAMPLES, dest, ignore=shutil.ignore_patterns(".cluster-agent", "logs"))
    return dest / "experiment_summary.yaml"


def run_agent(*args: str, env: Optional[Dict[str, str]] = None, input: Optional[str] = None,
              timeout: float = 600, cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    """Run the installed console script; stdin is closed (no terminal) unless input is given."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=full_env, timeout=timeout,
                          input=input if input is not None else "", cwd=cwd)


def read_manifest(summary: Path) -> dict:
    return json.loads((summary.parent / ".cluster-agent" / "manifest.json").read_text())


def write_summary(folder: Path, tasks: List[dict], training: Optional[str] = None) -> Path:
    """A minimal cruijff_kit-style summary with the given tasks; returns its path."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    doc: dict = {"experiment": {"name": "test"}, "evaluation": {"tasks": tasks}}
    if training is not None:
        doc["data"] = {"training": {"path": training}}
    path = folder / "experiment_summary.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def write_records(path: Path, n: int, field: str = "test", prefix: str = "q") -> Path:
    """A {"train": [...], "validation": [...], field: [n records]} data file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"train": [{"input": "t", "output": "t"}], "validation": [{"input": "v", "output": "v"}]}
    doc[field] = [{"input": f"{prefix}{i}", "output": f"a{i}"} for i in range(n)]
    path.write_text(json.dumps(doc))
    return path


def source_of(call: dict) -> Path:
    """The file a manifest call names: data_files (verbatim) taken in the call's folder."""
    return Path(os.path.join(call.get("cwd") or os.getcwd(), call["data_files"]))


def files_under(root: Path) -> Dict[str, int]:
    """Every file under root with its mtime_ns (lock files excluded: they hold no data)."""
    out = {}
    if root.exists():
        for p in root.rglob("*"):
            if p.is_file() and not p.name.endswith(".lock"):
                out[str(p)] = p.stat().st_mtime_ns
    return out
