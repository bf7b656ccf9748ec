"""Failure policies on a real pre-build with one missing dataset file: continue, stop, ask
without a terminal (never hangs) and ask under a real pseudo-terminal (answer y / n).

The terminal is the one thing that cannot be "real" in a test run, so it is a real pty
from os.openpty(): the agent's stdin/stdout/stderr are the pty's slave side, exactly what
an interactive shell gives it, and the test types the answer on the master side.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_agent, write_records, write_summary
from corehelp import cache_env, events, messages, run_on_pty as _run_on_pty

from agent import policy

PROMPT = "Continue with eval submission anyway? [y/N]"


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    """Two good files and one missing, first pre-built with policy=continue."""
    root = tmp_path_factory.mktemp("policy")
    env = cache_env(root / "cache")
    folder = root / "exp"
    write_records(folder / "data" / "a.json", 3)
    write_records(folder / "data" / "b.json", 4)
    summary = write_summary(folder, [{"name": "a", "dataset": "data/a.json"},
                                     {"name": "gone", "dataset": "data/gone.json"},
                                     {"name": "b", "dataset": "data/b.json"}])
    first = run_agent(f"experiment={summary}", "consumer=datasets", "policy=continue", env=env)
    return {"summary": summary, "env": env, "first": first,
            "manifest": folder / ".cluster-agent" / "manifest.json", "log": folder / "logs" / "cluster-agent.log",
            "gone": str(folder / "data" / "gone.json")}


def _run(exp, *args, **kw):
    return run_agent(f"experiment={exp['summary']}", "consumer=datasets", *args, env=exp["env"], **kw)


def _decision(exp):
    return json.loads(exp["manifest"].read_text())["decision"]


def test_missing_file_is_reported_and_the_others_still_build(exp):
    proc = exp["first"]
    assert proc.returncode == 0, proc.stderr
    # the line names the field and the task that needs the file (two calls of one file differ)
    assert messages(proc.stderr, "CACHE_MISSING") == [f"{exp['gone']} (field=test: no such file); needed by task gone"]
    built = messages(proc.stderr, "CACHE_BUILT")
    assert len(built) == 2 and {Path(m.split(" ")[0]).name for m in built} == {"a.json", "b.json"}
    assert messages(proc.stderr, "CACHE_PREBUILD_COMPLETE")[0].startswith("2 ready, 1 missing, 0 failed")
    assert "1 missing" in proc.stdout
    doc = json.loads(exp["manifest"].read_text())
    assert doc["summary"]["missing"] == 1 and doc["summary"]["built"] == 2
    gone = next(e for e in doc["entries"] if e["tasks"] == ["gone"])
    assert gone["status"] == "missing" and "no such file" in gone["error"] and gone["rows"] is None
    assert doc["decision"] == "proceed"
    assert messages(proc.stderr, "DECISION")[0].startswith("proceed: policy=continue")


def test_policy_stop_exits_1_and_records_stop(exp):
    proc = _run(exp, "policy=stop", timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert messages(proc.stderr, "CACHE_MISSING") and len(messages(proc.stderr, "CACHE_UNCHANGED")) == 2
    assert _decision(exp) == "stop"
    assert proc.stdout.startswith("stop: ")


def test_policy_stop_with_json_output(exp):
    proc = _run(exp, "policy=stop", "output=json", timeout=300)
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["decision"] == "stop" and doc["manifest"] == str(exp["manifest"])
    assert doc["summary"] == {"built": 0, "unchanged": 2, "rebuilt": 0, "missing": 1, "failed": 0}
    gone = next(e for e in doc["entries"] if e["tasks"] == ["gone"])
    assert gone == {"source": exp["gone"], "cwd": None, "field": "test", "split": "train", "tasks": ["gone"],
                    "status": "missing", "rows": None, "error": f"{exp['gone']} (no such file)"}


def test_policy_continue_exits_0_and_records_proceed(exp):
    proc = _run(exp, "policy=continue", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert _decision(exp) == "proceed"


def test_ask_without_a_terminal_does_non_interactive_and_says_so(exp):
    start = exp["log"].stat().st_size
    proc = _run(exp, "policy=ask", timeout=120)  # stdin is a closed pipe: no terminal; must not hang
    assert proc.returncode == 1, proc.stderr
    assert PROMPT not in proc.stderr + proc.stdout, "no prompt without a terminal"
    decision = messages(proc.stderr, "DECISION")
    assert decision == ["stop: policy=ask without a terminal: doing policy.non_interactive=stop"]
    with open(exp["log"]) as fh:
        fh.seek(start)
        assert any(ev == "DECISION" and "without a terminal" in msg for ev, msg in events(fh.read()))
    assert _decision(exp) == "stop"


def test_ask_without_a_terminal_can_be_told_to_continue(exp):
    proc = _run(exp, "policy=ask", "policy.non_interactive=continue", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "policy.non_interactive=continue" in messages(proc.stderr, "DECISION")[0]
    assert _decision(exp) == "proceed"


@pytest.mark.parametrize("answer,code,decision", [("y", 0, "proceed"), ("n", 1, "stop")])
def test_ask_on_a_real_terminal(exp, answer, code, decision):
    rc, out, answered = _run_on_pty([f"experiment={exp['summary']}", "consumer=datasets", "policy=ask"],
                                    exp["env"], answer)
    assert answered, f"no prompt on the terminal: {out[-2000:]}"
    assert out.count(PROMPT) == 1
    assert rc == code, out[-3000:]
    assert "Traceback" not in out
    assert _decision(exp) == decision
    said = "answered yes" if answer == "y" else "answered no"
    last = [msg for ev, msg in events(exp["log"].read_text()) if ev == "DECISION"][-1]
    assert last == f"{decision}: policy=ask: {said}"


def test_ask_on_a_terminal_is_not_asked_when_everything_is_ready(tmp_path, caches):
    write_records(tmp_path / "d.json", 2)
    summary = write_summary(tmp_path, [{"name": "t", "dataset": str(tmp_path / "d.json")}])
    rc, out, answered = _run_on_pty([f"experiment={summary}", "consumer=datasets", "policy=ask", "verify=false"], {}, "n")
    assert rc == 0 and not answered and PROMPT not in out


@pytest.mark.parametrize("problems,mode,non_interactive,interactive,answer,expected", [
    (0, "stop", "stop", False, None, "proceed"),
    (0, "ask", "stop", True, None, "proceed"),  # nothing to ask about
    (2, "continue", "stop", False, None, "proceed"),
    (1, "stop", "continue", True, None, "stop"),
    (1, "ask", "stop", False, None, "stop"),
    (1, "ask", "continue", False, None, "proceed"),
    (1, "ask", "stop", True, True, "proceed"),
    (1, "ask", "continue", True, False, "stop"),
])
def test_decide_table(problems, mode, non_interactive, interactive, answer, expected):
    asked = []

    def ask():
        asked.append(True)
        return answer

    verdict, why = policy.decide(problems, mode, non_interactive, interactive=interactive, ask=ask)
    assert verdict == expected and why
    assert bool(asked) == (answer is not None)


@pytest.mark.parametrize("typed,yes", [("y\n", True), ("YES\n", True), (" y \n", True), ("\n", False),
                                       ("n\n", False), ("maybe\n", False), ("", False)])
def test_ask_terminal_only_y_means_yes(typed, yes):
    import io

    err = io.StringIO()
    assert policy.ask_terminal(io.StringIO(typed), err) is yes
    assert err.getvalue().startswith(PROMPT)
