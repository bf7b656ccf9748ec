"""Crash safety: `kill -9` an agent at random moments during builds, then check.

    python bench/kill_trials.py [--trials 24] [--seed 7] [--json results.json]

Each trial starts a real `cluster-agent` (its own process group, as a SLURM job or a
shell job is), kills the whole group with SIGKILL after a random delay, and checks:

1. after the kill: a manifest, if there is one, parses (it is written atomically); and if
   the launch gate (`action=check`) says go, every layer it vouches for is whole: the HF
   Arrow files hold the rows dataset_info.json promises, the inspect-ai folder loads
   with `load_from_disk`, and both hold exactly the rows in the source file now. The same
   for every shared record (`<hf root>/.cluster-agent/entries`) that another agent would
   trust. Any miss is a VIOLATION.
2. the next run (not killed, verify=true) exits 0 with every entry ready, the gate says
   go, the deep check above passes, and no temporary folder of the dead agent is left:
   nothing named `*.tmp-*`, `*.stale-*`, `*.new-*` or `*.incomplete` under the cache
   roots or the state folder.

Trials cycle through lock set-ups (flock, soft, soft on a lock-less file system: see
tests/lockless/sitecustomize.py) and scenarios: `cold` (empty caches), `force`
(force=true over whole caches: old folders are moved aside and replaced), and `rewrite`
(one source rewritten with new rows: new HF key, inspect folder replaced in place).
The killed runs use verify=false so that kills land in the build phase: the delay is
counted from the agent's CACHE_PREBUILD line and is uniform over 1.1 x the build phase of
an unkilled run of the same scenario, measured at the start (whole seconds, +0.5 s). The
recovery run keeps verify=true, so each consumer call is proved a pure cache hit. Prints one line per trial and a summary; no timing assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
CLI = str(Path(sys.executable).parent / "cluster-agent")
LOCKLESS = REPO / "tests" / "lockless"
MODES = [("flock", False), ("soft", False), ("soft", True)]
SCENARIOS = ["cold", "force", "rewrite"]
LEFTOVER_MARKS = (".tmp-", ".stale-", ".new-", ".incomplete")


def write_data(folder: Path, scale: int, generation: int = 0) -> List[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, n in enumerate((4 * scale, 6 * scale, 8 * scale)):
        doc = {"train": [{"input": "t", "output": "t"}],
               "test": [{"input": f"g{generation}-f{i}-q{j} " + "w" * 40, "output": f"a{j}"} for j in range(n + generation)]}
        path = folder / f"d{i}.json"
        path.write_text(json.dumps(doc))
        files.append(path)
    lines = folder / "lines.jsonl"
    lines.write_text("".join(json.dumps({"input": f"l{j}", "output": "x"}) + "\n" for j in range(5 * scale)))
    return files + [lines]


def expected_rows(path: str) -> int:
    if path.endswith(".jsonl"):
        return sum(1 for line in open(path) if line.strip())
    return len(json.load(open(path))["test"])


class Trialist:
    def __init__(self, base: Path, scale: int) -> None:
        self.base = base
        self.data = base / "data"
        self.files = write_data(self.data, scale)
        self.scale = scale
        self.exp = base / "exp"
        self.exp.mkdir(parents=True, exist_ok=True)
        import yaml

        tasks = [{"name": f"t{i}", "dataset": str(p)} for i, p in enumerate(self.files)]
        self.summary = self.exp / "experiment_summary.yaml"
        self.summary.write_text(yaml.safe_dump({"experiment": {"name": "kill"}, "evaluation": {"tasks": tasks}}))
        self.hf = base / "cache" / "hf"
        self.xdg = base / "cache" / "xdg"
        self.generation = 0

    def env(self, lockless: bool) -> Dict[str, str]:
        env = dict(os.environ, HF_DATASETS_CACHE=str(self.hf), XDG_CACHE_HOME=str(self.xdg),
                   HF_HOME=str(self.base / "cache" / "hf-home"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
        env.pop("PYTHONPATH", None)
        if lockless:
            env["PYTHONPATH"] = str(LOCKLESS)
        return env

    def args(self, kind: str, force: bool = False) -> List[str]:
        return [CLI, f"experiment={self.summary}", f"site.lock={kind}", "policy=stop"] + (["force=true"] if force else [])

    def prepare(self, scenario: str) -> None:
        if scenario == "cold":
            shutil.rmtree(self.base / "cache", ignore_errors=True)
            shutil.rmtree(self.exp / ".cluster-agent", ignore_errors=True)
        elif scenario == "rewrite":
            self.generation += 1
            target = self.files[self.generation % 3]
            doc = json.loads(target.read_text())
            doc["test"].append({"input": f"new-{self.generation}", "output": "n"})
            target.write_text(json.dumps(doc))

    def leftovers(self) -> List[str]:
        out = []
        for root in (self.base / "cache", self.exp):
            for dirpath, dirs, files in os.walk(root):
                for name in dirs + files:
                    if name.endswith(".incomplete") or any(m in name for m in LEFTOVER_MARKS[:-1]):
                        out.append(os.path.join(dirpath, name))
        return sorted(out)


def deep_check_layers(layers: Dict, rows: Optional[int], source: str, split: str) -> Optional[str]:
    from agent.build import hf_layer_whole

    want = expected_rows(source)
    if rows != want:
        return f"{source}: recorded {rows} rows, the file has {want}"
    hf = layers.get("hf")
    if not hf or not hf_layer_whole(Path(hf["dir"]), split):
        return f"{source}: HF layer {hf and hf['dir']} not whole"
    ins = layers.get("inspect")
    if ins is not None:
        import datasets

        try:
            got = datasets.load_from_disk(ins["dir"]).num_rows
        except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
            return f"{source}: inspect layer {ins['dir']} does not load ({type(exc).__name__}: {exc})"
        if got != want:
            return f"{source}: inspect layer holds {got} rows, the file has {want}"
    return None


def check_after_kill(t: Trialist, env: Dict[str, str]) -> Dict:
    """What a job would see right after the kill."""
    from agent import manifest as mf
    from agent.build import record_still_valid
    from agent.errors import ManifestError
    from agent.fingerprint import fingerprint

    out = {"manifest": "none", "gate": None, "violations": []}
    path = t.exp / ".cluster-agent" / "manifest.json"
    try:
        doc = mf.read(path)
        out["manifest"] = "ok" if doc else "none"
    except ManifestError as exc:
        out["manifest"] = "unparseable"
        out["violations"].append(f"manifest unreadable after kill: {exc}")
        doc = None
    gate = subprocess.run([CLI, f"experiment={t.summary}", "action=check"], capture_output=True, text=True, env=env)
    out["gate"] = gate.returncode
    if gate.returncode == 0 and doc:
        for e in doc["entries"]:
            bad = deep_check_layers(e["layers"], e["rows"], e["call"]["data_files"], e["call"]["split"])
            if bad:
                out["violations"].append(f"gate said go but {bad}")
    for rec_path in (t.hf / ".cluster-agent" / "entries").glob("*.json"):
        try:
            rec = json.loads(rec_path.read_text())
        except ValueError:
            out["violations"].append(f"shared record {rec_path} unparseable")
            continue
        src = rec["call"]["data_files"]
        if record_still_valid(rec, fingerprint(src), rec["consumer"]):
            bad = deep_check_layers(rec["layers"], rec["rows"], src, rec["call"]["split"])
            if bad:
                out["violations"].append(f"shared record trusted but {bad}")
    return out


def run_trial(t: Trialist, i: int, rng: random.Random, durations: Dict[str, float]) -> Dict:
    kind, lockless = MODES[i % len(MODES)]
    scenario = SCENARIOS[(i // len(MODES)) % len(SCENARIOS)]
    env = t.env(lockless)
    t.prepare(scenario)
    delay = rng.uniform(0.0, 1.1 * durations[scenario])
    proc = subprocess.Popen(t.args(kind, force=scenario == "force") + ["verify=false"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env,
                            start_new_session=True)
    lines: List[str] = []
    building = threading.Event()

    def pump() -> None:
        for line in proc.stderr:
            lines.append(line)
            if "CACHE_PREBUILD:" in line:
                building.set()
        building.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    building.wait(timeout=600)  # the kill delay counts from the start of the build phase
    time.sleep(delay)
    finished = proc.poll() is not None
    if not finished:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    reader.join(timeout=10)
    err = "".join(lines)
    events = [line.split("] ", 1)[1].split(":", 1)[0] for line in err.splitlines() if line.startswith("[") and "] " in line]
    last = events[-1] if events else "(nothing logged)"
    left_after_kill = t.leftovers()
    after = check_after_kill(t, env)
    rec = subprocess.run(t.args(kind), capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    from agent import manifest as mf

    problems = list(after["violations"])
    doc = mf.read(t.exp / ".cluster-agent" / "manifest.json") if rec.returncode == 0 else None
    if rec.returncode != 0:
        problems.append(f"recovery run exit {rec.returncode}: {rec.stderr.strip().splitlines()[-1:]}")
    elif doc:
        for e in doc["entries"]:
            bad = deep_check_layers(e["layers"], e["rows"], e["call"]["data_files"], e["call"]["split"])
            if e["status"] not in mf.READY or bad:
                problems.append(f"after recovery: {e['status']} {bad or ''}")
    gate = subprocess.run([CLI, f"experiment={t.summary}", "action=check"], capture_output=True, text=True, env=env)
    if gate.returncode != 0:
        problems.append(f"gate after recovery: {gate.stderr.strip()[:200]}")
    left = t.leftovers()
    if left:
        problems.append(f"leftovers after recovery: {left}")
    notes = [line for line in rec.stderr.splitlines() if "CACHE_NOTE: removed" in line]
    return {"trial": i, "lock": kind + ("-lockless" if lockless else ""), "scenario": scenario,
            "kill_at_s": round(delay, 2), "killed": not finished, "last_event": last,
            "manifest_after_kill": after["manifest"], "gate_after_kill": after["gate"],
            "leftovers_after_kill": len(left_after_kill), "cleaned_by_recovery": len(notes),
            "recovery_exit": rec.returncode, "problems": problems}


def _seconds(line: str) -> float:
    return time.mktime(time.strptime(line[1:20], "%Y-%m-%d %H:%M:%S"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--scale", type=int, default=15000, help="records per unit (files hold 4,6,8,5 units)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    opts = ap.parse_args()
    rng = random.Random(opts.seed)
    base = Path(tempfile.mkdtemp(prefix="kill-trials-"))
    t = Trialist(base, opts.scale)
    durations = {}
    for scenario in SCENARIOS:  # an unkilled run of each scenario sets the kill window
        t.prepare(scenario)
        r = subprocess.run(t.args("flock", force=scenario == "force") + ["verify=false"], capture_output=True,
                           text=True, env=t.env(False))
        if r.returncode != 0:
            sys.stderr.write(r.stderr)
            return 1
        stamps = [line for line in r.stderr.splitlines() if "CACHE_PREBUILD" in line]
        durations[scenario] = _seconds(stamps[-1]) - _seconds(stamps[0]) + 0.5
    print("build-phase durations of unkilled runs (s): " + ", ".join(f"{k} {v:.1f}" for k, v in durations.items()),
          flush=True)
    results = []
    for i in range(opts.trials):
        res = run_trial(t, i, rng, durations)
        results.append(res)
        flag = "OK " if not res["problems"] else "BAD"
        print(f"{flag} #{i:02d} {res['lock']:<13} {res['scenario']:<7} kill@{res['kill_at_s']:>5.2f}s "
              f"{'killed' if res['killed'] else 'finished'} last={res['last_event']:<16} "
              f"manifest={res['manifest_after_kill']:<5} gate={res['gate_after_kill']} "
              f"leftovers={res['leftovers_after_kill']} cleaned={res['cleaned_by_recovery']} "
              f"recovery={res['recovery_exit']} {'; '.join(res['problems'])}", flush=True)
    killed = sum(r["killed"] for r in results)
    bad = [r for r in results if r["problems"]]
    print(f"\n{len(results)} trials, {killed} killed mid-run, {len(bad)} with problems; "
          f"gate said go right after the kill in {sum(r['gate_after_kill'] == 0 for r in results)}, "
          f"refused in {sum(r['gate_after_kill'] == 3 for r in results)}; "
          f"leftovers found after a kill in {sum(r['leftovers_after_kill'] > 0 for r in results)} trials, "
          f"all removed by the next run: {all(not any('leftovers' in p for p in r['problems']) for r in results)}")
    if opts.json:
        opts.json.write_text(json.dumps({"durations": durations, "results": results}, indent=1))
    if not opts.keep:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
