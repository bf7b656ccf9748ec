"""Eval jobs of bench/sharedfs_trials.py, run "on a node" of the shared-FS rig.

    python bench/sharedfs_job.py N GO DATA[,DATA2...] CONSUMER [MANIFEST]

One process per node imports the libraries once (in the job environment it was given,
as a job that exported the manifest's `env` would), then forks N jobs, writes GO.ready.<pid>, and the jobs wait until
the file GO exists (local disk: the caller creates it once every node is ready, so the
jobs of both nodes start together, each after a random 0-0.3 s), then: with
MANIFEST, the launch gate (agent.gate.check, what `action=check` runs; a refusal ends
the job), and the real consumer call on its DATA. N imports of inspect-ai would cost
N x 3 s of CPU on a 2-core machine; forking keeps the node's mount namespace.
Prints one JSON line per job: gate, rows, error.
"""

from __future__ import annotations

import json
import os
import sys
import time


def job(data: str, consumer: str, manifest: str, go: str) -> dict:
    import random

    out = {"gate": None, "rows": None, "error": None, "host": os.uname().nodename}
    while not os.path.exists(go):
        time.sleep(0.01)
    time.sleep(random.Random(os.getpid()).uniform(0, 0.3))
    try:
        if manifest:
            from pathlib import Path

            from agent.gate import check

            res = check(Path(manifest))
            out["gate"] = "ok" if res["ok"] else "refused"
            if not res["ok"]:
                out["problems"] = res["problems"][:2]
                return out
            wrong = {k: v for k, v in res["env"].items() if os.environ.get(k) != v}
            if wrong:
                out["error"] = f"job environment differs from the manifest's: {sorted(wrong)}"
                return out
        if consumer == "inspect":
            from inspect_ai.dataset import Sample, hf_dataset

            ds = hf_dataset(path="json", data_files=data, field="test", split="train", retry=False,
                            sample_fields=lambda r: Sample(input=r["input"], target=r["output"]))
        else:
            import datasets

            ds = datasets.load_dataset("json", data_files=data, field="test", split="train")
        out["rows"] = len(ds)
    except BaseException as exc:  # noqa: BLE001 - the job's failure is the measurement
        out["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    return out


def main() -> int:
    n, go, data, consumer = int(sys.argv[1]), sys.argv[2], sys.argv[3].split(","), sys.argv[4]
    manifest = sys.argv[5] if len(sys.argv) > 5 else ""
    import agent.gate  # noqa: F401
    import datasets  # noqa: F401

    if consumer == "inspect":
        import inspect_ai.dataset  # noqa: F401
    pids = []
    for i in range(n):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            res = job(data[i % len(data)], consumer, manifest, go)
            os.write(w, json.dumps(res).encode())
            os._exit(0)
        os.close(w)
        pids.append((pid, r))
    with open(f"{go}.ready.{os.getpid()}", "w"):
        pass
    for pid, r in pids:
        chunks = []
        while chunk := os.read(r, 65536):
            chunks.append(chunk)
        _, status = os.waitpid(pid, 0)
        text = b"".join(chunks).decode()
        if not text:
            text = json.dumps({"gate": None, "rows": None, "error": f"job died (status {status})"})
        print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
