"""The config memo on an unchanged re-run (issue 12/14): the first run of a new command line
vs a repeated one, at 100 tiny datasets.

    .venv/bin/python bench/config_memo.py [--runs 5] [--n 100]

Everything is built once (consumer=datasets, verify=false), then, each a median of --runs:
- repeated:          the same command line again (memo hit);
- new command line:  a command line never run before that differs only in plain values
                     (jobs=K, a new K each time): reuses the memo of the same profiles;
- new profile value: a key inside a group (site.lock_timeout_s=K, new each time): composes;
- memo off:          CLUSTER_AGENT_CONFIG_CACHE=0 (what every new command line cost before).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = str(Path(sys.executable).parent / "cluster-agent")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--n", type=int, default=100)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="memo-bench-"))
    data = work / "exp" / "data"
    data.mkdir(parents=True)
    tasks = []
    for i in range(args.n):
        (data / f"d{i}.json").write_text(json.dumps({"test": [{"input": f"q{i}", "output": "a"}]}))
        tasks.append(f"  - name: t{i}\n    dataset: data/d{i}.json\n")
    summary = work / "exp" / "experiment_summary.yaml"
    summary.write_text("evaluation:\n  tasks:\n" + "".join(tasks))
    env = dict(os.environ, HF_DATASETS_CACHE=str(work / "c" / "hf"), XDG_CACHE_HOME=str(work / "c" / "xdg"),
               HF_HOME=str(work / "c" / "hfh"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               CLUSTER_AGENT_CONFIG_MEMO=str(work / "memo"), XDG_CONFIG_HOME=str(work / "xdg-config"))
    base = [CLI, f"experiment={summary}", "consumer=datasets", "verify=false"]

    def timed(cmd, extra_env=None) -> float:
        t = time.perf_counter()
        subprocess.run(cmd, env=dict(env, **(extra_env or {})), check=True, capture_output=True)
        return time.perf_counter() - t

    timed(base)  # build everything
    timed(base)  # the memo for this command line
    # interleaved (one of each per round), so that a busy machine weighs on every row alike
    rows = {"repeated": [], "new command line (plain values)": [], "new profile value (composes)": [], "memo off": []}
    for k in range(args.runs):
        rows["repeated"].append(timed(base))
        rows["new command line (plain values)"].append(timed(base + [f"jobs={k + 2}"]))
        rows["new profile value (composes)"].append(timed(base + [f"site.lock_timeout_s={900 + k}"]))
        rows["memo off"].append(timed(base, {"CLUSTER_AGENT_CONFIG_CACHE": "0"}))
    rep = statistics.median(rows["repeated"])
    print(f"{args.n} datasets, unchanged re-run, median of {args.runs} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    for name, values in rows.items():
        med = statistics.median(values)
        print(f"  {name:<34} {med:6.3f} s   {med / rep:4.2f}x repeated   (min {min(values):.3f} s)")


if __name__ == "__main__":
    main()
