"""The command line as a user meets it: --help, --cfg job, bad overrides (one line, exit 2),
and no Hydra `outputs/` or `.hydra/` folders in the user's current folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from conftest import run_agent
from corehelp import assert_one_error_line

from agent.config import GROUPS, group_options


@pytest.fixture(autouse=True)
def _private_user_cache(tmp_path_factory, monkeypatch):
    """Whatever the agent keeps under XDG_CACHE_HOME (e.g. a config memo) goes to a temporary
    folder, never the developer's ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))


def _no_hydra_litter(folder):
    assert not (folder / "outputs").exists(), "Hydra's outputs/ folder was created in the cwd"
    assert not (folder / ".hydra").exists()
    assert not (folder / "multirun").exists()


def test_help_lists_groups_options_and_three_examples(tmp_path):
    proc = run_agent("--help", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr == ""
    out = proc.stdout
    for group in GROUPS:
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(group + " "))
        for option in group_options(group):
            assert option in line, (group, option, line)
    examples = out.split("Examples:", 1)[1].split("\n\n", 1)[0]
    invocations = [ln for ln in examples.splitlines() if ln.strip().startswith("cluster-agent")]
    assert len(invocations) == 3, examples
    assert "--cfg job" in out
    _no_hydra_litter(tmp_path)


def test_help_examples_are_valid_invocations(tmp_path):
    """Each example's overrides compose (with --cfg job), so the help never shows a broken command."""
    out = run_agent("--help").stdout
    examples = out.split("Examples:", 1)[1].split("\n\n", 1)[0]
    for line in examples.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "cluster-agent":
            continue
        proc = run_agent(*words[1:], "--cfg", "job", cwd=tmp_path)
        assert proc.returncode == 0, (line, proc.stderr)


def test_cfg_job_prints_the_resolved_config(tmp_path):
    proc = run_agent("site=della", "policy=stop", "consumer=datasets", "jobs=2", "--cfg", "job",
                     env={"USER": "alice"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["site"]["name"] == "della" and cfg["site"]["lock"] == "soft"
    assert cfg["site"]["hf_cache"].startswith("/scratch/gpfs/alice/"), "interpolations are resolved"
    assert cfg["policy"]["mode"] == "stop" and cfg["consumer"]["kind"] == "datasets" and cfg["jobs"] == 2
    assert set(cfg) >= {"experiment", "site", "policy", "consumer", "launcher", "action", "output"}
    assert "${" not in proc.stdout
    _no_hydra_litter(tmp_path)


@pytest.mark.parametrize("args,needles", [
    (["polcy=stop"], ["'polcy'", "did you mean 'policy'", "valid keys"]),
    (["site.hf_cach=/x"], ["site.hf_cach", "did you mean 'hf_cache'"]),
    (["consumer.default_feild=x"], ["default_feild", "did you mean 'default_field'"]),
    (["expriment=x.yaml"], ["'expriment'", "did you mean 'experiment'"]),
    (["verbose"], ["'verbose' is not an override", "key=value"]),
    (["--frobnicate"], ["--frobnicate"]),
])
def test_unknown_override_one_line_exit_2(args, needles, tmp_path):
    proc = run_agent(*args, cwd=tmp_path)
    line = assert_one_error_line(proc, 2)
    for needle in needles:
        assert needle in line, line
    assert proc.stdout == ""
    _no_hydra_litter(tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args,needles", [
    (["policy=maybe"], ["policy=maybe", "ask", "continue", "stop"]),
    (["policy.mode=maybe"], ["policy.mode", "'maybe'", "ask", "continue", "stop"]),
    (["policy.non_interactive=ask"], ["policy.non_interactive", "continue", "stop"]),
    (["site=nowhere"], ["site=nowhere", "local"]),
    (["consumer=inspect_ai"], ["consumer=inspect_ai", "did you mean 'inspect'", "datasets"]),
    (["action=build"], ["action", "prebuild", "plan", "check"]),
    (["jobs=many"], ["jobs", "many"]),
])
def test_bad_value_names_valid_choices(args, needles, tmp_path):
    proc = run_agent(*args, cwd=tmp_path)
    line = assert_one_error_line(proc, 2)
    for needle in needles:
        assert needle in line, line
    assert list(tmp_path.iterdir()) == []


def test_verbose_shows_a_traceback_for_an_expected_error(tmp_path):
    proc = run_agent(f"experiment={tmp_path / 'missing.yaml'}", "verbose=true", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("cluster-agent: error: ")


def test_python_dash_m_agent_is_the_same_cli(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "agent", "policy=maybe"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    line = assert_one_error_line(proc, 2)
    assert "policy=maybe" in line
    proc = subprocess.run([sys.executable, "-m", "agent", "--help"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0 and "Config groups" in proc.stdout


def test_version_flag():
    from agent import __version__

    proc = run_agent("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"cluster-agent {__version__}"


def test_configs_are_found_outside_a_checkout(tmp_path):
    """The console script composes conf/ from wherever it is installed, not from the cwd."""
    (tmp_path / "conf").mkdir()  # a decoy conf/ in the cwd must not be picked up
    (tmp_path / "conf" / "config.yaml").write_text("defaults: []\nbroken: [\n")
    proc = run_agent("--cfg", "job", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["policy"]["mode"] == "ask"
    _no_hydra_litter(tmp_path)


def test_tilde_and_parentheses_in_a_path_override(tmp_path):
    """`experiment=~/...` (as the help shows) and `(1)` in a folder name reach the agent as typed;
    Hydra's grammar alone rejects both."""
    from conftest import write_records, write_summary

    folder = tmp_path / "home" / "sweep (1)"
    write_records(folder / "d.json", 2)
    write_summary(folder, [{"name": "t", "dataset": "d.json"}])
    proc = run_agent("experiment=~/sweep (1)/experiment_summary.yaml", "action=plan", "consumer=datasets",
                     "output=json", env={"HOME": str(tmp_path / "home")}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    import json

    assert json.loads(proc.stdout)["entries"][0]["source"] == str(folder / "d.json")


def test_third_party_logging_goes_to_both_sinks_in_the_design_format(tmp_path):
    """std `logging` records (datasets, filelock, hydra) are routed into loguru: same format,
    on stderr and in the log file; below WARNING they stay quiet unless verbose=true."""
    log = tmp_path / "logs" / "cluster-agent.log"
    code = (
        "import logging, sys\n"
        "from pathlib import Path\n"
        "from agent import logs\n"
        f"logs.setup(Path({str(log)!r}), verbose=sys.argv[1] == 'true')\n"
        "logging.getLogger('datasets.builder').warning('from datasets %s', 1)\n"
        "logging.getLogger('filelock').warning('from filelock')\n"
        "logging.getLogger('hydra.core').info('hydra info')\n"
        "logs.event('CACHE_BUILT', 'mine')\n")
    from corehelp import LINE

    for verbose in ("false", "true"):
        log.unlink(missing_ok=True)
        proc = subprocess.run([sys.executable, "-c", code, verbose], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stderr.splitlines()
        assert all(LINE.match(ln) for ln in lines), lines
        got = [LINE.match(ln).groups() for ln in lines]
        want = [("DATASETS", "from datasets 1"), ("FILELOCK", "from filelock")]
        want += [("HYDRA", "hydra info")] if verbose == "true" else []
        assert got == want + [("CACHE_BUILT", "mine")]
        assert log.read_text().splitlines() == lines


@pytest.mark.slow
def test_the_wheel_ships_configs_and_the_example_and_nothing_else(tmp_path):
    """Build the real wheel from a copy of the checkout that also holds run-time leftovers
    (a manifest, a log) and a per-user override, then run the CLI from the unpacked wheel
    only: it must compose its own conf/ and default to its own example, and none of the
    leftovers may ship."""
    import shutil
    import zipfile

    from conftest import REPO

    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info",
                                                             ".pytest_cache", "bench", "tests"))
    (src / "examples" / ".cluster-agent").mkdir(exist_ok=True)
    (src / "examples" / ".cluster-agent" / "manifest.json").write_text("{}")
    (src / "examples" / "logs").mkdir(exist_ok=True)
    (src / "examples" / "logs" / "cluster-agent.log").write_text("old\n")
    (src / "conf" / "user" / "default.yaml").write_text("# @package _global_\npolicy: {mode: stop}\n")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "whl"), str(src)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (tmp_path / "whl").glob("cluster_agent-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for group in GROUPS:
        for option in group_options(group):
            assert f"agent/conf/{group}/{option}.yaml" in names
    assert "agent/conf/config.yaml" in names and "agent/examples/experiment_summary.yaml" in names
    assert {"agent/examples/data/words.json", "agent/examples/data/acs.json", "agent/examples/data/arith.jsonl"} <= set(names)
    assert {f"agent/examples/tasks/{t}.py" for t in ("capitalization", "acs_income", "arithmetic")} <= set(names)
    leftovers = [n for n in names if ".cluster-agent/" in n or "/logs/" in n or n.endswith("user/default.yaml")]
    assert leftovers == []

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site))  # the unpacked wheel shadows the editable checkout
    proc = subprocess.run([sys.executable, "-m", "agent", "action=plan", "output=json", "consumer=datasets"],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert all(e["source"].startswith(str(site / "agent" / "examples" / "data")) for e in plan["entries"])
    proc = subprocess.run([sys.executable, "-m", "agent", "--cfg", "job"], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)
    assert proc.returncode == 0 and yaml.safe_load(proc.stdout)["policy"]["mode"] == "ask", proc.stderr
    assert list(cwd.iterdir()) == []
