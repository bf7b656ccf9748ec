"""One eval job's consumer call, in LOCK-LESS mode, waiting at a barrier first.

Run by the eval jobs of tests/test_slurm_e2e.py and bench/submit.py (the command given to
recipes/submit.py), after the job's gate passed and the manifest's environment was exported.

Lock-less: filelock's acquire/release become no-ops in this process. This is a stand-in
for the shared file systems (NFS, GPFS, Lustre mounts) whose locks do not hold across
nodes, where `datasets`' own locking protects nothing; the tests' file system is local,
so a real lock-less mount cannot be had here. (tests/test_race.py patches the same way.)

Barrier: the job writes <barrier>/<index> and waits until --n jobs have arrived, so that
all of them make the consumer call at the same instant; if fewer than --n are running at
once it gives up after --timeout seconds with exit 4. Each job records its timestamps and
the rows the consumer returned in <results>/<index>.json (written atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time


def make_lockless() -> None:
    import filelock
    from filelock import AcquireReturnProxy, BaseFileLock

    def acquire(self, *args, **kwargs):  # noqa: ANN001 - filelock's signature
        return AcquireReturnProxy(lock=self)

    def release(self, *args, **kwargs) -> None:  # noqa: ANN001
        return None

    BaseFileLock.acquire = acquire  # type: ignore[method-assign]
    BaseFileLock.release = release  # type: ignore[method-assign]
    assert filelock.FileLock.acquire is acquire


def consume(consumer: str, builder: str, data_files: str, field: str | None, split: str) -> int:
    kwargs = {"data_files": data_files}
    if field:
        kwargs["field"] = field
    if consumer == "inspect":
        from inspect_ai.dataset import Sample, hf_dataset

        return len(hf_dataset(path=builder, split=split, **kwargs,
                              sample_fields=lambda r: Sample(input=str(r["input"]), target=str(r["output"]))))
    import datasets

    return datasets.load_dataset(builder, split=split, **kwargs).num_rows


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--consumer", choices=("inspect", "datasets"), required=True)
    p.add_argument("--builder", required=True)
    p.add_argument("--data-files", required=True)
    p.add_argument("--field", default="")
    p.add_argument("--split", default="train")
    p.add_argument("--barrier", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--results", required=True)
    p.add_argument("--timeout", type=float, default=150.0)
    a = p.parse_args()
    index = os.environ.get("SLURM_ARRAY_TASK_ID", "0")
    started = time.time()
    make_lockless()
    # import the consumer before the barrier, so the calls themselves start together
    if a.consumer == "inspect":
        import inspect_ai.dataset  # noqa: F401
    import datasets  # noqa: F401

    os.makedirs(a.barrier, exist_ok=True)
    open(os.path.join(a.barrier, index), "w").close()
    arrived = time.time()
    deadline = arrived + a.timeout
    while len(os.listdir(a.barrier)) < a.n:
        if time.time() > deadline:
            print(f"barrier: only {len(os.listdir(a.barrier))}/{a.n} jobs running at once", file=sys.stderr)
            return 4
        time.sleep(0.05)
    released = time.time()
    rows = consume(a.consumer, a.builder, a.data_files, a.field or None, a.split)
    ended = time.time()
    doc = {"index": int(index), "job": os.environ.get("SLURM_JOB_ID"), "host": socket.gethostname(),
           "pid": os.getpid(), "rows": rows, "started": started, "arrived": arrived, "released": released,
           "ended": ended, "hf_cache": os.environ.get("HF_DATASETS_CACHE"),
           "xdg_cache": os.environ.get("XDG_CACHE_HOME")}
    os.makedirs(a.results, exist_ok=True)
    tmp = os.path.join(a.results, f".{index}.tmp")
    with open(tmp, "w") as fh:
        json.dump(doc, fh)
    os.replace(tmp, os.path.join(a.results, f"{index}.json"))
    print(f"rows: {rows}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
