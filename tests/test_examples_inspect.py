"""The bundled example's task scripts (examples/tasks/, the client's shape) under a real inspect-ai.

The default `inspect eval` command recipes/submit.py renders must make exactly the call
the pre-build plans, and the example must run end to end. The model is inspect's mockllm
with outputs given as a function: `inspect eval --model mockllm/model` from the command
line counts tokens with tiktoken, which downloads its o200k_base encoding on first use and
fails offline (measured here, HF_HUB_OFFLINE=1, no network), so the run goes through
inspect_ai.eval(), which loads and runs the task exactly as the CLI does.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from agent import config, launcher
from agent.plan import make_plan
from agent.summary import read_summary
from agent.taskscript import read_task


def _jobs(example: Path):
    cfg = config.load([f"experiment={example}"])
    _, jobs = launcher.eval_jobs(cfg, model="mockllm/model")
    entries = make_plan(read_summary(example), cfg.consumer.split, cfg.consumer.default_field)
    call_of = {t: e.call for e in entries for t in e.tasks}
    return jobs, call_of


def _task_args(argv):
    return dict(argv[i + 1].split("=", 1) for i, tok in enumerate(argv) if tok == "-T")


def test_default_command_makes_the_planned_call(example: Path) -> None:
    jobs, call_of = _jobs(example)
    assert len(jobs) == 13
    for job in jobs:
        argv = shlex.split(job.command)
        assert argv[:2] == ["inspect", "eval"]
        call = read_task(example.parent / argv[2])
        bound = dict(call.bind(_task_args(argv)))
        planned = call_of[job.task]
        assert (bound["path"], bound["data_files"], bound.get("field"), bound["split"]) == \
            (planned.builder, planned.data_files, planned.field, planned.split), job.task


_RUN = r"""
import json, sys
from inspect_ai import eval as inspect_eval
from inspect_ai.model import ModelOutput, ModelUsage, get_model

def answer(messages, tools, tool_choice, config):
    text = messages[-1].text
    content = str(eval(text.rstrip("="))) if text.endswith("=") else text.title()  # sums / capitalization
    out = ModelOutput.from_content(model="mockllm", content=content)
    out.usage = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)
    return out

out = []
for job in json.loads(sys.argv[1]):
    log = inspect_eval(job["script"], model=get_model("mockllm/model", custom_outputs=answer),
                       task_args=job["args"], log_dir=job["logs"], display="none")[0]
    out.append({"status": log.status, "samples": log.results.completed_samples,
                "accuracy": log.results.scores[0].metrics["accuracy"].value})
print(json.dumps(out))
"""


def test_bundled_example_runs_end_to_end(example: Path, caches, tmp_path: Path) -> None:
    jobs, _ = _jobs(example)
    picked = {j.task: j for j in jobs if j.run == "Llama-3.2-1B_base"}  # one of each script
    runs = []
    for task in ("capitalization", "arithmetic"):
        argv = shlex.split(picked[task].command)
        runs.append({"script": argv[2], "args": _task_args(argv), "logs": str(tmp_path / "logs")})
    proc = subprocess.run([sys.executable, "-c", _RUN, json.dumps(runs)], capture_output=True, text=True,
                          cwd=example.parent, env=dict(os.environ), timeout=600)  # cwd: the jobs' --chdir
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results == [{"status": "success", "samples": 100, "accuracy": 1.0},   # words.json "test"
                       {"status": "success", "samples": 80, "accuracy": 1.0}]    # arith.jsonl, every line
    assert len(list((caches["xdg"] / "inspect_ai" / "hf_datasets").iterdir())) == 2
