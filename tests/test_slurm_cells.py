"""Issue 10 on the real single-node SLURM cluster: the client's scaffolded cells, launched
as they are.

The pre-build runs as a SLURM job (`cluster-agent launcher=slurm`); `recipes/submit.py
--cells EXP --after JOB` then submits every cell.slurm at once (no stagger), each a gated
copy whose gate (`action=check cell=…`) runs right before its `inspect eval`. Every cell
runs the real `inspect eval` of its task script from its own folder. The one cell whose
call cannot work (a literal '~') is refused by its own gate (exit 3) and never reaches
inspect-ai; every other cell completes, reads its rows, and no cache file is written
after the pre-build.

Why the task scripts' solver is swapped: inspect's mockllm/model counts tokens with
tiktoken, which downloads its encoding on first use, and this machine has no network.
The solver copies each target into the output; the data call (`hf_dataset(...)`, what this
test is about) is the client's, untouched.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, files_under, run_agent
from scaffold import build

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SUBMIT = REPO / "recipes" / "submit.py"
ACTIVATE = f"source {Path(sys.executable).parent / 'activate'}"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
# the no-model solver of tests/slurm_support/echo_task.py (the inspect recipe's test task)
_ECHO_TASK = (REPO / "tests" / "slurm_support" / "echo_task.py").read_text()
ECHO = "\nfrom inspect_ai.solver import Generate, TaskState, solver\n\n" + _ECHO_TASK[
    _ECHO_TASK.index("@solver"):_ECHO_TASK.index("\n\n\n@task")] + "\n"


def _states(job_ids):
    out = {}
    for job in job_ids:
        proc = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True)
        for line in proc.stdout.splitlines():
            fields = dict(w.split("=", 1) for w in line.split() if "=" in w)
            out[fields["JobId"]] = fields
    return out


def _wait(job_ids, timeout=1500):
    deadline = time.time() + timeout
    while time.time() < deadline:
        states = _states(job_ids)
        if len(states) >= len(job_ids) and all(s["JobState"] in TERMINAL for s in states.values()):
            return states
        time.sleep(3)
    pytest.fail(f"jobs {job_ids} did not finish in {timeout} s: {_states(job_ids)}")


def test_cells_submitted_at_once_after_a_prebuild_job(tmp_path, caches):
    if shutil.which("sbatch") is None or subprocess.run(["scontrol", "ping"], capture_output=True).returncode != 0:
        pytest.fail("the SLURM cluster is not up: run scripts/slurm-up.sh (scripts/test.sh does)")
    scaffold = build(tmp_path, model="mockllm/model", setup=[ACTIVATE])
    for script in (scaffold.experiment / "tasks").glob("*.py"):
        text = script.read_text().replace("generate()]", "echo_target()]")
        script.write_text(text.replace("\n@task", ECHO + "\n\n@task", 1))
    setup = f'site.slurm.setup=["{ACTIVATE}"]'
    pre = run_agent(f"experiment={scaffold.summary}", "launcher=slurm", "policy=continue", setup, cwd=tmp_path)
    assert pre.returncode == 0, pre.stderr
    prebuild_job = pre.stdout.strip()
    sub = subprocess.run([sys.executable, str(SUBMIT), "--cells", str(scaffold.experiment), "--after", prebuild_job,
                          "--json"], capture_output=True, text=True, cwd=tmp_path, timeout=300, stdin=subprocess.DEVNULL)
    assert sub.returncode == 0, sub.stderr
    doc = json.loads(sub.stdout)
    jobs = {j["cell"]: j["job_id"] for j in doc["jobs"]}
    assert len(jobs) == len(scaffold.cells) == 14, doc
    states = _wait([prebuild_job, *jobs.values()])
    assert states[prebuild_job]["JobState"] == "COMPLETED", states[prebuild_job]
    manifest = scaffold.experiment / ".cluster-agent" / "manifest.json"
    built_at = manifest.stat().st_mtime_ns
    for cell_path, job in jobs.items():
        state = states[job]
        if cell_path.endswith("cap_tilde_epoch1"):
            assert state["JobState"] == "FAILED" and state["ExitCode"].startswith("3:"), state
            continue
        assert state["JobState"] == "COMPLETED", (cell_path, state)
    # no stagger and no queue cap: every cell was queued on the pre-build alone, so none
    # started before it ended (sbatch is called back to back; no timing is asserted)
    ended = states[prebuild_job]["EndTime"]
    assert all(states[j]["StartTime"] >= ended for j in jobs.values())
    # every job read the cache: nothing under either root is newer than the manifest
    newest = max([*files_under(caches["hf"]).values(), *files_under(caches["xdg"] / "inspect_ai").values()])
    assert newest <= built_at
    for cell in scaffold.cells.values():
        out = "".join(p.read_text() for p in cell.glob("slurm-*.out"))
        if cell.name == "cap_tilde_epoch1":
            assert "GATE_REFUSED" in out and "starts with '~'" in out and "not run: the launch gate refused" in out
        else:
            assert "GATE_OK: 1 dataset(s) ready for this job's call" in out, (cell, out[-2000:])
            assert list((cell / "logs").glob("*.eval")), f"{cell}: inspect eval wrote no log"
